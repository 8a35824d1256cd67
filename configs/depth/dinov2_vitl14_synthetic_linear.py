# dinov2_vitl14 synthetic lin.1: the last block, class token concatenated, 256 bins.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_depth.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="LinearDepthHead", in_channels=[1024], min_depth=0.001, max_depth=10.0),
    task="depth",
    layers=[23],
    norm=False,
    class_token=True,
    losses=[dict(type="SigLoss", loss_weight=10.0), dict(type="GradientLoss", loss_weight=0.5)],
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
