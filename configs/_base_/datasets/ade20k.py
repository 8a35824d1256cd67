# ADE20K (ADEChallengeData2016 under data_root), the released lin. pipelines
# (dinov2_vitb14_ade20k_linear_config.py, as copied in Jiawei-Yang/Denoising-ViT
# evaluation/configs/vitb_ade20k_linear_config.py): LoadAnnotations(reduce_zero_label=True),
# Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)), RandomCrop(512, cat_max_ratio=0.75),
# RandomFlip(0.5), PhotoMetricDistortion, Pad(512, seg_pad_val=255); 2 images x 8 GPUs. The test
# Resize(img_scale=(2048, 512)) is done by the model (its test_cfg scale), from the image as it is.
data_root = "data/ade/ADEChallengeData2016"
train_dataloader = dict(
    batch_size=16,  # the released total batch (2 x 8 GPUs); with N processes use 16 // N per process
    num_workers=4,
    sampler=dict(type="SeededInfiniteSampler", shuffle=True),  # a seed per sample: resume and workers change nothing
    dataset=dict(type="ADE20KDataset", root=data_root, split="training",
                 pipeline=dict(type="seg_train_pipeline", crop_size=512, scale=(2048, 512), ratio_range=(0.5, 2.0),
                               cat_max_ratio=0.75)),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="ADE20KDataset", root=data_root, split="validation", pipeline=None),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="SegMetric", num_classes=150)
test_evaluator = val_evaluator
