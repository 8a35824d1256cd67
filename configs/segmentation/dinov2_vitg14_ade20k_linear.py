# dinov2_vitg14 ade20k lin.: BatchNorm + 1x1 conv on the last of the four blocks.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_40k.py", "../_base_/datasets/ade20k.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1536], num_classes=150, in_index=[3]),
    task="segmentation",
    layers=[36, 37, 38, 39],
    norm=True,
    class_token=False,
    test_cfg=dict(mode="slide", crop_size=512, stride=341),
)
