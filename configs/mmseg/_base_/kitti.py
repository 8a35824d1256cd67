# KITTI (Eigen split) in the depth toolboxes' layout: split files of "rgb depth focal" lines under
# data_root, depth PNGs in 1/256 m. Random 352 x 704 crops and flip for training; DepthMetric over
# 0.001-80 m. mmseg has neither the KB crop (352 x 1216, bottom-centred) nor the Garg evaluation crop
# of the released protocol: crop the images beforehand (or use `dinov2-dense test` for the exact
# protocol); these configs run mmseg's own pieces only.
_base_ = ["./nyu.py"]
data_root = "data/kitti"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1 / 256),
    dict(type="RandomCrop", crop_size=(352, 704)),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs", meta_keys={{_base_.depth_meta_keys}}),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1 / 256),
    dict(type="PackSegInputs", meta_keys={{_base_.depth_meta_keys}}),
]
train_dataloader = dict(dataset=dict(data_root=data_root, split_file="kitti_eigen_train.txt", pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root, split_file="kitti_eigen_test.txt", pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth_eval=0.001, max_depth_eval=80.0, crop_type=None)
test_evaluator = val_evaluator
