# A tiny random-weight ViT and a linear head on synthetic scenes: runs in a minute on one CPU.
# Used by the tests (training, kill -9 and resume, DDP) and as a smoke test of a new setup.
_base_ = ["../_base_/models/seg_linear.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone=dict(_delete_=True, img_size=112, patch_size=14, embed_dim=64, depth=2, num_heads=2), backbone_weights=None,
             layers=[1], head=dict(in_channels=[64], num_classes=5, in_index=[0]), test_cfg=dict(_delete_=True, mode="whole"))
train_dataloader = dict(num_workers=0, dataset=dict(pipeline=dict(crop_size=112, scale=(224, 112), photometric=False)))
