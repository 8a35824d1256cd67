# ADE20K for the +ms head. No copy of the released dinov2_vit*14_ade20k_ms_config.py was found (see
# dinov2_dense/settings.py, [ms]): the five test ratios are the released config's (as the DINOv2
# segmentation notebook reads them), the rest a derivative config's that keeps DINOv2's pipelines:
# training resize of the short side to 640 x ratio 1.0-3.0, crop 640; test with mmseg's TTA
# (tools/test.py --tta): short side 640 x (1.0, 1.32, 1.73, 2.28, 3.0), each with and without a
# horizontal flip, slide with 640 crops. The slide stride 426 (the model's test_cfg) is our choice:
# two thirds of the crop, as lin.'s 512 / 341 and mmseg's own 640-crop ADE20K configs.
_base_ = ["./ade20k.py"]
crop_size = (640, 640)
train_pipeline = [
    dict(type="SeedAugmentation"),  # mmcv's random transforms seeded by the sample: resume, workers
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # reduce_zero_label: the data set's (True for ADE20K)
    dict(type="RandomResize", scale=(99999999, 640), ratio_range=(1.0, 3.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(99999999, 640), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
img_ratios = [1.0, 1.32, 1.73, 2.28, 3.0]
tta_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="TestTimeAug", transforms=[
        [dict(type="Resize", scale=(99999999, int(640 * r)), keep_ratio=True) for r in img_ratios],
        [dict(type="RandomFlip", prob=0.0, direction="horizontal"),
         dict(type="RandomFlip", prob=1.0, direction="horizontal")],
        [dict(type="LoadAnnotations")],
        [dict(type="PackSegInputs")],
    ]),
]
tta_model = dict(type="SegTTAModel")
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
