# dinov2_vitl14 cityscapes DPT head ending in class logits, on the depth blocks with class tokens.
_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/schedule_40k.py", "../_base_/datasets/cityscapes.py"]
model = dict(
    type="DenseModel",
    backbone="dinov2_vitl14",
    backbone_weights="official",
    head=dict(type="DPTHead", embed_dim=1024, post_process_channels=[128, 256, 512, 1024], task="segmentation", num_classes=19),
    task="segmentation",
    layers=[4, 11, 17, 23],
    norm=False,
    class_token=True,
    test_cfg=dict(mode="slide", crop_size=(512, 1024), stride=(341, 682)),
)
