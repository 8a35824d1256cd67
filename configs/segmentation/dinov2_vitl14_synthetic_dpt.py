# dinov2_vitl14 synthetic DPT head ending in class logits, on the depth blocks with class tokens.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="DPTHead", embed_dim=1024, post_process_channels=[128, 256, 512, 1024], task="segmentation", num_classes=5),
    task="segmentation",
    layers=[4, 11, 17, 23],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
