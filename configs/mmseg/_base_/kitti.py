# KITTI (Eigen split) in the depth toolboxes' layout: split files of "rgb depth focal" lines under
# data_root, images under data_root/input, depth PNGs under data_root/gt_depth in 1/256 m (KITTIToolboxDataset). The released protocol: the KB crop (352 x 1216, bottom-centred) of
# image and depth, rotation, flip, random 352 x 704 crops, ColorAug with brightness 0.9-1.1; the Garg
# crop and 0.001-80 m in DINOv2DepthMetric.
_base_ = ["./nyu.py"]
data_root = "data/kitti"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1 / 256),
    dict(type="KBCrop"),
    dict(type="DINOv2DepthAugment", crop_size=(352, 704), brightness_range=(0.9, 1.1)),
    dict(type="PackSegInputs", meta_keys={{_base_.depth_meta_keys}}),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1 / 256),
    dict(type="KBCrop"),
    dict(type="PackSegInputs", meta_keys={{_base_.depth_meta_keys}}),
]
train_dataloader = dict(dataset=dict(type="KITTIToolboxDataset", data_root=data_root, split_file="kitti_eigen_train.txt",
                                     pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(type="KITTIToolboxDataset", data_root=data_root, split_file="kitti_eigen_test.txt",
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type="DINOv2DepthMetric", min_depth_eval=0.001, max_depth_eval=80.0, crop="garg")
test_evaluator = val_evaluator
