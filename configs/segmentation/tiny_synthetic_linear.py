# A tiny random-weight ViT and a linear head on synthetic scenes: runs in a minute on one CPU.
# Used by the tests (training, kill -9 and resume, DDP) and as a smoke test of a new setup.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone=dict(img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2),
    backbone_weights=None,
    head=dict(type="LinearHead", in_channels=[64], num_classes=5),
    task="segmentation",
    layers=[1],
    test_cfg=dict(mode="whole"),
)
train_dataloader = dict(batch_size=8, num_workers=0,
                        dataset=dict(pipeline=dict(crop_size=112, scale=(224, 112), photometric=False)))
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
