# dinov2_vitb14 synthetic DPT head ending in class logits, on the depth blocks with class tokens.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitb14",
    backbone_weights="official",
    head=dict(type="DPTHead", embed_dim=768, post_process_channels=[96, 192, 384, 768], task="segmentation", num_classes=5),
    task="segmentation",
    layers=[2, 5, 8, 11],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
