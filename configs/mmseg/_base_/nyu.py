# NYU-Depth v2 in the depth toolboxes' layout (sync/ + official_splits/test/, split files
# nyu_train.txt / nyu_test.txt under data_root), read by the plugin's NYUToolboxDataset, mmseg's
# LoadDepthAnnotation (millimetre PNGs) and DepthMetric (Eigen crop, 0.001-10 m). From the released
# depth pipelines (see configs/_base_/datasets/nyu.py): random 416 x 544 crops and flip; test on the
# whole 480 x 640 image; 2 images per step and GPU. mmseg has no transform for the released NYU
# pre-crop, 2.5-degree rotation or the toolbox's colour augmentation: `dinov2-dense train` with
# configs/depth/ has them all.
dataset_type = "NYUToolboxDataset"
depth_meta_keys = ("img_path", "depth_map_path", "ori_shape", "img_shape", "pad_shape", "scale_factor", "flip",
                   "flip_direction", "category_id")
data_root = "data/nyu"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="RandomCrop", crop_size=(416, 544)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs", meta_keys=depth_meta_keys),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="PackSegInputs", meta_keys=depth_meta_keys),
]
train_dataloader = dict(
    batch_size=2, num_workers=4, persistent_workers=True, sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, split_file="nyu_train.txt", pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=2, persistent_workers=True, sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, split_file="nyu_test.txt", test_mode=True,
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth_eval=0.001, max_depth_eval=10.0, crop_type="nyu_crop")
test_evaluator = val_evaluator
