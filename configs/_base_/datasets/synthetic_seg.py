# Synthetic scenes (dinov2_dense.data.synthetic) in the ADE20K layout: write them first with
#   dinov2-dense synth data/synthetic/ade --layout ade20k --train 400 --val 50
# Labels are stored as class + 1 (0 unused), so reduce_zero_label gives classes 0..4 back.
data_root = "data/synthetic/ade"
num_classes = 5
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=dict(type="ADE20KDataset", root=data_root, split="training",
                 pipeline=dict(type="seg_train_pipeline", crop_size=224, scale=(448, 224), ratio_range=(0.75, 1.5))),
    collate_fn=dict(type="dense_collate"),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(type="ADE20KDataset", root=data_root, split="validation", pipeline=None),
    collate_fn=dict(type="dense_collate"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="SegMetric", num_classes=num_classes)
test_evaluator = val_evaluator
