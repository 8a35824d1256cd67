# DINOv2 + the linear BNHead in mmseg's EncoderDecoder (the released lin. setup): frozen ViT-S/14
# (official weights), the last block's map after the final norm, BatchNorm + 1x1 conv, mmseg 0.x's
# cross-entropy mean over all pixels; slide inference 512 / 341 (ADE20K and VOC test protocol).
data_preprocessor = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                         bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(512, 512))
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(type="DINOv2", arch="dinov2_vits14", weights="official", out_indices=[11], norm=True),
    decode_head=dict(type="DINOv2BNHead", in_channels=[384], in_index=[0], num_classes=150,
                     loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                      avg_non_ignore=False)),
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)
