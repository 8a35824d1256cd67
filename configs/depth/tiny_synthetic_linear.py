# A tiny random-weight ViT and a linear depth head on synthetic scenes (tests and smoke checks).
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_depth.py"]
model = dict(
    type="DenseModel",
    backbone=dict(img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2),
    backbone_weights=None,
    head=dict(type="LinearDepthHead", in_channels=[64], min_depth=0.001, max_depth=10.0),
    task="depth",
    layers=[1],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="whole"),
)
train_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(pipeline=dict(crop_size=(112, 112))))
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
