# ADE20K (ADEChallengeData2016 under data_root) with mmseg's data set, pipelines and IoUMetric: the
# released lin. pipelines (see configs/_base_/datasets/ade20k.py for the sources): resize in ratio
# 0.5-2.0 of (2048, 512), crop 512 (cat_max_ratio 0.75), flip, photometric distortion; test resize to
# (2048, 512) keeping the ratio. Batch: mmseg's batch_size is per GPU (per process). 16 gives one GPU
# the released total of 16 images a step (released: 2 per GPU x 8 GPUs); on N GPUs each gets 16, 16 x N
# a step: for the released 16, set train_dataloader.batch_size=16 // N (2 on 8 GPUs).
dataset_type = "ADE20KDataset"
data_root = "data/ade/ADEChallengeData2016"
crop_size = (512, 512)
train_pipeline = [
    dict(type="SeedAugmentation"),  # mmcv's random transforms seeded by the sample: resume, workers
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),  # reduce_zero_label: the data set's (True for ADE20K)
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(
    batch_size=16,  # per GPU: 16 // N on N GPUs for the released total of 16
    num_workers=4, persistent_workers=True, sampler=dict(type="SeededInfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/training", seg_map_path="annotations/training"),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 data_prefix=dict(img_path="images/validation", seg_map_path="annotations/validation"),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator
