# Pascal VOC 2012 lin. (21 classes).
_base_ = ["./_base_/seg_model.py", "./_base_/voc2012.py", "../_base_/schedules/seg_40k.py", "./_base_/runtime.py"]
model = dict(decode_head=dict(num_classes=21))
