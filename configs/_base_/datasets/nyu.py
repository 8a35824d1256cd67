# nyu: NYUDepthDataset; depth training augmentation of the depth toolboxes, evaluation with the
# eigen crop, valid depth in (0.001, 10.0) m, metrics per image then averaged.
data_root = "data/nyu"
min_depth = 0.001
max_depth = 10.0
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_train.txt",
                 pipeline=dict(type="depth_train_pipeline", crop_size=(416, 544))),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_test.txt",
                 pipeline=dict(type="depth_test_pipeline")),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth=min_depth, max_depth=max_depth, crop="eigen")
test_evaluator = val_evaluator
