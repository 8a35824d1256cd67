# ADE20K +ms: the last four blocks (8-11) concatenated; 640 crops; test with --tta (5 ratios x flip).
_base_ = ["./_base_/seg_model.py", "./_base_/ade20k_ms.py", "../_base_/schedules/seg_40k.py", "./_base_/runtime.py"]
data_preprocessor = dict(size=(640, 640))
model = dict(data_preprocessor=data_preprocessor, backbone=dict(out_indices=[8, 9, 10, 11]),
             decode_head=dict(in_channels=[384, 384, 384, 384], in_index=[0, 1, 2, 3]),
             test_cfg=dict(mode="slide", crop_size=(640, 640), stride=(426, 426)))  # stride: our choice (settings)
