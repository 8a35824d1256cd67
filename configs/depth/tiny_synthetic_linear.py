# A tiny random-weight ViT and a linear depth head on synthetic scenes (tests and smoke checks).
_base_ = ["../_base_/models/depth_linear.py", "../_base_/datasets/synthetic_depth.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone=dict(_delete_=True, img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2), backbone_weights=None,
             layers=[1], head=dict(in_channels=[64]))
train_dataloader = dict(num_workers=0, dataset=dict(pipeline=dict(crop_size=(112, 112))))
