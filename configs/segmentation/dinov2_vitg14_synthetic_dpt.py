# dinov2_vitg14 synthetic DPT head ending in class logits, on the depth blocks with class tokens.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_synthetic.py", "../_base_/datasets/synthetic_seg.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitg14",
    backbone_weights="official",
    head=dict(type="DPTHead", embed_dim=1536, post_process_channels=[192, 384, 768, 1536], task="segmentation", num_classes=5),
    task="segmentation",
    layers=[9, 19, 29, 39],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="whole"),
)
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
