# dinov2_vitl14 lin. head on synthetic scenes (a quick end-to-end check of a real backbone on one machine).
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1024], num_classes=5, in_index=[3]),
    task="segmentation",
    layers=[20, 21, 22, 23],
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
