# Pascal VOC 2012 (VOCdevkit/VOC2012 under data_root, the train split as the released configs use:
# 1,464 images, no SBD) with mmseg's data set and the same lin. pipelines as ADE20K (21 classes, no
# reduce_zero_label).
_base_ = ["./ade20k.py"]
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type="RandomCrop", crop_size=(512, 512), cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="Resize", scale=(2048, 512), keep_ratio=True),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                                     data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                                     ann_file="ImageSets/Segmentation/train.txt", pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                                   data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                                   ann_file="ImageSets/Segmentation/val.txt", pipeline=test_pipeline))
test_dataloader = val_dataloader
