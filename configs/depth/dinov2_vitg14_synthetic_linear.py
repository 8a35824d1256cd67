# dinov2_vitg14 lin.1 depth head on synthetic scenes.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_depth.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="LinearDepthHead", in_channels=[1536], min_depth=0.001, max_depth=10.0),
    task="depth",
    layers=[39],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
