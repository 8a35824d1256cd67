# dinov2_vitl14 ade20k +ms: the four blocks concatenated; multi-scale + flip test.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_40k.py", "../_base_/datasets/ade20k.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1024] * 4, num_classes=150, in_index=[0, 1, 2, 3]),
    task="segmentation",
    layers=[20, 21, 22, 23],
    norm=True,
    class_token=False,
    test_cfg=dict(mode="slide", crop_size=512, stride=341, scales=(1.0, 1.32, 1.73, 2.28, 3.0), flip=True),
)
