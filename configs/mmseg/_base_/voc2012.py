# Pascal VOC 2012 (VOCdevkit/VOC2012 under data_root, the train split as the released configs use:
# 1,464 images, no SBD) with mmseg's data set and the same lin. pipelines as ADE20K (21 classes; the
# data set does not reduce the zero label).
_base_ = ["./ade20k.py"]
dataset_type = "PascalVOCDataset"
data_root = "data/VOCdevkit/VOC2012"
train_dataloader = dict(dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                                     data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                                     ann_file="ImageSets/Segmentation/train.txt", pipeline={{_base_.train_pipeline}}))
val_dataloader = dict(dataset=dict(_delete_=True, type=dataset_type, data_root=data_root,
                                   data_prefix=dict(img_path="JPEGImages", seg_map_path="SegmentationClass"),
                                   ann_file="ImageSets/Segmentation/val.txt", pipeline={{_base_.test_pipeline}}))
test_dataloader = val_dataloader
