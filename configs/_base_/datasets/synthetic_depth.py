# Synthetic scenes in the NYU layout (16-bit millimetre PNGs and split files): write them first with
#   dinov2-dense synth data/synthetic/nyu --layout nyu --train 400 --val 50
data_root = "data/synthetic/nyu"
min_depth = 0.001
max_depth = 10.0
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_train.txt",
                 pipeline=dict(type="depth_train_pipeline", crop_size=(224, 224), rotate_degree=0.0)),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="NYUDepthDataset", root=data_root, split_file="nyu_test.txt", pipeline=None),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="DepthMetric", min_depth=min_depth, max_depth=max_depth, crop=None)
test_evaluator = val_evaluator
