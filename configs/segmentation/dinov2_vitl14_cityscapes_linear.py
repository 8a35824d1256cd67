# dinov2_vitl14 cityscapes lin.: BatchNorm + 1x1 conv on the last of the four blocks.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_40k.py", "../_base_/datasets/cityscapes.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1024], num_classes=19, in_index=[3]),
    task="segmentation",
    layers=[20, 21, 22, 23],
    norm=True,
    class_token=False,
    test_cfg=dict(mode="slide", crop_size=(512, 1024), stride=(341, 682)),
)
