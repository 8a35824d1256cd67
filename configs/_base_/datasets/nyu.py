# NYU-Depth v2 (the depth toolboxes' layout and split files under data_root), the released
# pipelines (dinov2_vit*14_nyu_*_config.py, as copied in ywyue/FiT3D
# evaluation/baseline_configs/vits_nyu_depth_linear_config.py and an unmodified
# dinov2_vitl14_nyu_dpt_config.py): NYUCrop (rows 45:472, columns 43:608), RandomRotate(0.5, 2.5),
# RandomFlip(0.5), RandomCrop(416, 544), ColorAug(prob=0.5, gamma 0.9-1.1, brightness 0.75-1.25,
# colour 0.9-1.1, on 0-255 values); depth PNGs in millimetres; 2 images per GPU on 8 GPUs (REFERENCE:
# a total of 16, as for segmentation). Test: the image as it
# is (the model averages it with its flip); evaluation with the Eigen crop in (0.001, 10) m.
data_root = "data/nyu"
train_dataloader = dict(
    batch_size=16,  # the released total batch (2 x 8 GPUs); with N processes use 16 // N per process. SigLoss
    # (group_size=2) pools each 2 images as each GPU did: the released objective on any number of processes
    num_workers=2,
    sampler=dict(type="SeededInfiniteSampler", shuffle=True),  # a seed per sample: resume and workers change nothing
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_train.txt", depth_scale=1000.0,
                 pipeline=dict(type="depth_train_pipeline", crop_size=(416, 544), pre_crop=(45, 472, 43, 608),
                               rotate_degree=2.5, color_prob=0.5, brightness_range=(0.75, 1.25))),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_test.txt", depth_scale=1000.0,
                 pipeline=None),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth=0.001, max_depth=10.0, crop="eigen")
test_evaluator = val_evaluator
