# Pascal VOC 2012 (VOCdevkit/VOC2012 under data_root): the pipelines of ADE20K lin. without
# reduce_zero_label, on the train split of ImageSets/Segmentation (the released
# dinov2_vitb14_voc2012_linear_config.py, as copied in Jiawei-Yang/Denoising-ViT
# evaluation/configs/vitb_voc2012_linear_config.py).
_base_ = ["./ade20k.py"]
data_root = "data/VOCdevkit/VOC2012"
train_dataloader = dict(dataset=dict(type="VOCDataset", root=data_root, split="train"))
val_dataloader = dict(dataset=dict(type="VOCDataset", root=data_root, split="val"))
test_dataloader = val_dataloader
val_evaluator = dict(num_classes=21)
test_evaluator = val_evaluator
