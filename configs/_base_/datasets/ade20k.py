# ade20k: ADE20KDataset in its standard layout under data_root; training and test pipelines of the
# official segmentation protocol (dinov2_dense.data.pipelines).
data_root = "data/ade/ADEChallengeData2016"
num_classes = 150
crop_size = 512
train_dataloader = dict(
    batch_size=16,  # the official total batch; with N processes use 16 // N per process
    num_workers=4,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="ADE20KDataset", root=data_root, split="training",
                 pipeline=dict(type="seg_train_pipeline", crop_size=crop_size, scale=(2048, 512))),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="ADE20KDataset", root=data_root, split="validation",
                 pipeline=dict(type="seg_test_pipeline", scale=(2048, 512))),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="SegMetric", num_classes=num_classes)
test_evaluator = val_evaluator
