# dinov2_vitg14 synthetic DPT head.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_depth.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="DPTHead", embed_dim=1536, post_process_channels=[192, 384, 768, 1536], min_depth=0.001, max_depth=10.0),
    task="depth",
    layers=[9, 19, 29, 39],
    norm=False,
    class_token=True,
    losses=[dict(type="SigLoss", loss_weight=10.0), dict(type="GradientLoss", loss_weight=0.5)],
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
