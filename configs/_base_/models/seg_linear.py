# "lin." (DINOv2 paper, Sec. 7): a frozen backbone, LayerNorm-ed patch tokens of four blocks, of
# which the head reads the last; BatchNorm + 1x1 conv ("BNHead" with in_index=[3],
# input_transform='resize_concat' in the released dinov2_vitb14_ade20k_linear_config.py, as copied
# in Jiawei-Yang/Denoising-ViT evaluation/configs/vitb_ade20k_linear_config.py). Loss:
# CrossEntropyLoss(use_sigmoid=False, loss_weight=1.0) of mmseg 0.x, whose mean runs over all
# pixels, ignored ones included (avg_non_ignore=False, its default). ViT-S values; each leaf config
# sets its backbone, widths, blocks, classes and test protocol.
model = dict(
    type="DenseModel",
    backbone="dinov2_vits14",
    backbone_weights="official",
    head=dict(type="LinearHead", in_channels=[384], num_classes=150, in_index=[3]),
    task="segmentation",
    layers=[8, 9, 10, 11],
    norm=True,
    class_token=False,
    losses=[dict(type="CrossEntropyLoss", ignore_index=255, avg_non_ignore=False)],
    test_cfg=dict(mode="slide", crop_size=512, stride=341, scale=(2048, 512)),
)
