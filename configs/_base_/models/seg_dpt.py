# A DPT head ending in class logits (readout 'project', 256 channels), on the depth protocol's four
# blocks with class tokens and without the final LayerNorm. Not a released DINOv2 head: the
# segmentation counterpart of the depth DPT head. ViT-S values.
_base_ = ["./seg_linear.py"]
model = dict(
    head=dict(_delete_=True, type="DPTHead", embed_dim=384, post_process_channels=[48, 96, 192, 384],
              task="segmentation", num_classes=150),
    layers=[2, 5, 8, 11],
    norm=False,
    class_token=True,
)
