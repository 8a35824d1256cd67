# dinov2_vitg14 synthetic +ms: the four blocks concatenated.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1536] * 4, num_classes=5, in_index=[0, 1, 2, 3]),
    task="segmentation",
    layers=[36, 37, 38, 39],
    norm=True,
    class_token=False,
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
