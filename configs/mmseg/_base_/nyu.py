# NYU-Depth v2 in the depth toolboxes' layout (sync/ + official_splits/test/, split files
# nyu_train.txt / nyu_test.txt under data_root), read by the plugin's NYUToolboxDataset and mmseg's
# LoadDepthAnnotation (millimetre PNGs). The released depth pipelines (see configs/_base_/datasets/nyu.py
# for the sources): the NYU crop (45:472, 43:608), rotation by up to 2.5 degrees (p 0.5), flip, random
# 416 x 544 crops, the toolbox's ColorAug (p 0.5, gamma 0.9-1.1, brightness 0.75-1.25, colour 0.9-1.1),
# all in DINOv2DepthAugment (mmseg has no such transforms); test on the whole 480 x 640 image; the
# Eigen crop and 0.001-10 m in DINOv2DepthMetric (our depth metric). Batch: mmseg's batch_size is per
# GPU (per process), as the released configs' samples_per_gpu=2: 2 images a step on one GPU, 2 x N on N
# GPUs; the released runs had 2 x 8 = 16 (the Denoising-ViT copy; the GPU count is not in the released
# files): on one GPU set train_dataloader.batch_size=16 for that total, on N GPUs 16 // N.
dataset_type = "NYUToolboxDataset"
depth_meta_keys = ("img_path", "depth_map_path", "ori_shape", "img_shape", "pad_shape", "scale_factor", "flip",
                   "flip_direction", "category_id")
data_root = "data/nyu"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="DINOv2DepthAugment", crop_size=(416, 544), pre_crop=(45, 472, 43, 608), brightness_range=(0.75, 1.25)),
    dict(type="PackSegInputs", meta_keys=depth_meta_keys),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs", meta_keys=depth_meta_keys),
]
train_dataloader = dict(
    batch_size=2,  # per GPU: 2 x N a step on N GPUs
    num_workers=4, persistent_workers=True, sampler=dict(type="SeededInfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split_file="nyu_train.txt", pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split_file="nyu_test.txt", test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="DINOv2DepthMetric", min_depth_eval=0.001, max_depth_eval=10.0, crop="eigen")
test_evaluator = val_evaluator
