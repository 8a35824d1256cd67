# voc2012: VOCDataset in its standard layout under data_root; training and test pipelines of the
# official segmentation protocol (dinov2_dense.data.pipelines).
data_root = "data/VOCdevkit/VOC2012"
num_classes = 21
crop_size = 512
train_dataloader = dict(
    batch_size=16,  # the official total batch; with N processes use 16 // N per process
    num_workers=4,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="VOCDataset", root=data_root, split="trainaug",
                 pipeline=dict(type="seg_train_pipeline", crop_size=crop_size, scale=(2048, 512))),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="VOCDataset", root=data_root, split="val",
                 pipeline=dict(type="seg_test_pipeline", scale=(2048, 512))),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="SegMetric", num_classes=num_classes)
test_evaluator = val_evaluator
