# dinov2_vitg14 voc2012 +ms: the four blocks concatenated; multi-scale + flip test.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_40k.py", "../_base_/datasets/voc2012.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[1536] * 4, num_classes=21, in_index=[0, 1, 2, 3]),
    task="segmentation",
    layers=[36, 37, 38, 39],
    norm=True,
    class_token=False,
    test_cfg=dict(mode="slide", crop_size=512, stride=341, scales=(1.0, 1.32, 1.73, 2.28, 3.0), flip=True),
)
