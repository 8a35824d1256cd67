# "+ms" (DINOv2 paper, Sec. 7): the lin. head on the four blocks concatenated, tested with
# multi-scale (ratios 1.0, 1.32, 1.73, 2.28, 3.0) and flip. No copy of the released +ms configs was
# found; see dinov2_dense/settings.py for what is known and what we chose (640 crops, stride 426).
_base_ = ["./seg_linear.py"]
model = dict(
    head=dict(in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3]),
    test_cfg=dict(mode="slide", crop_size=640, stride=426, scale=(99999999, 640),
                  scales=(1.0, 1.32, 1.73, 2.28, 3.0), flip=True),
)
