# Synthetic scenes (dinov2_dense.data.synthetic) in the ADE20K layout: write them first with
#   dinov2-dense synth data/synthetic/ade --layout ade20k --train 400 --val 50
# Labels are stored as class + 1 (0 unused), so reduce_zero_label gives classes 0..4 back. The ADE20K
# pipelines at the scenes' scale (224 pixels); whole-image tests.
_base_ = ["./ade20k.py"]
data_root = "data/synthetic/ade"
train_dataloader = dict(batch_size=8, num_workers=2, dataset=dict(
    root=data_root, pipeline=dict(crop_size=224, scale=(448, 224), ratio_range=(0.75, 1.5))))
val_dataloader = dict(num_workers=0, dataset=dict(root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(num_classes=5)
test_evaluator = val_evaluator
