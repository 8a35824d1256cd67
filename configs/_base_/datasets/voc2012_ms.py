# Pascal VOC 2012 for "+ms": Resize(img_scale=(99999999, 640), ratio_range=(1.0, 3.0)), crop and pad 640
# (see dinov2_dense/settings.py for the sources and what is not known).
_base_ = ["./voc2012.py"]
train_dataloader = dict(dataset=dict(pipeline=dict(crop_size=640, scale=(99999999, 640), ratio_range=(1.0, 3.0))))
