# DINOv2 + the DPT depth head in mmseg's DepthEstimator (ours, whose test modes do what they say):
# frozen ViT-S/14 (official weights), blocks 2, 5, 8, 11 without the final norm, (map, class token)
# pairs; SigLoss (100-iteration warm-up), what trained the released depth heads (their configs' 0.5
# GradientLoss is exactly 0 at 2 images per GPU: see configs/_base_/models/depth_linear.py); depth
# 0.001-10 m (NYU); test on the whole image averaged with its horizontal mirror (the released
# MultiScaleFlipAug(flip=True), as configs/_base_/models/depth_linear.py and settings test_flip).
data_preprocessor = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=0, size=(416, 544))  # training batches: the crop
depth_losses = [dict(type="SigLoss", loss_weight=1.0, warm_up=True, warm_iter=100, group_size=2)]
model = dict(
    type="DINOv2DepthEstimator",
    data_preprocessor=data_preprocessor,
    backbone=dict(type="DINOv2", arch="dinov2_vits14", weights="official", out_indices=[2, 5, 8, 11], norm=False,
                  with_cls_token=True),
    decode_head=dict(type="DINOv2DPTDepthHead", embed_dim=384, post_process_channels=[48, 96, 192, 384],
                     min_depth=0.001, max_depth=10.0, loss_decode=depth_losses),
    train_cfg=dict(),
    test_cfg=dict(mode="whole", flip=True),
)
