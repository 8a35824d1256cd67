# Cityscapes (leftImg8bit + gtFine labelTrainIds under data_root). DINOv2 released no Cityscapes
# head or config: these are mmseg's Cityscapes settings (configs/_base_/datasets/cityscapes.py:
# Resize(img_scale=(2048, 1024), ratio_range=(0.5, 2.0)), RandomCrop(512x1024, cat_max_ratio=0.75),
# flip, photometric distortion) on the ADE20K lin. pipeline; tested by the model at (2048, 1024).
_base_ = ["./ade20k.py"]
data_root = "data/cityscapes"
train_dataloader = dict(dataset=dict(type="CityscapesDataset", root=data_root, split="train",
                                     pipeline=dict(crop_size=(512, 1024), scale=(2048, 1024))))
val_dataloader = dict(dataset=dict(type="CityscapesDataset", root=data_root, split="val"))
test_dataloader = val_dataloader
val_evaluator = dict(num_classes=19)
test_evaluator = val_evaluator
