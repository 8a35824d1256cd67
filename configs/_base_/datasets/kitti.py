# KITTI (Eigen split files under data_root), the released pipelines (dinov2_vit*14_kitti_*_config.py,
# as copied in ywyue/FiT3D evaluation/baseline_configs/vits_kitti_depth_linear_config.py): KBCrop
# (the data set's kb_crop, 352x1216), RandomRotate(0.5, 2.5), RandomFlip(0.5), RandomCrop(352, 704),
# ColorAug(prob=0.5, gamma, brightness and colour 0.9-1.1); depth PNGs in 1/256 m. Test: the
# kb-cropped image as it is (the model averages it with its flip); evaluation with the Garg crop in
# (0.001, 80) m.
_base_ = ["./nyu.py"]
data_root = "data/kitti"
train_dataloader = dict(dataset=dict(
    type="KITTIDepthDataset", root=data_root, split_file="kitti_eigen_train.txt", depth_scale=256.0,
    pipeline=dict(crop_size=(352, 704), pre_crop=None, brightness_range=(0.9, 1.1))))
val_dataloader = dict(dataset=dict(type="KITTIDepthDataset", root=data_root, split_file="kitti_eigen_test.txt",
                                   depth_scale=256.0))
test_dataloader = val_dataloader
val_evaluator = dict(max_depth=80.0, crop="garg")
test_evaluator = val_evaluator
