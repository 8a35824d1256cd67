# KITTI with the DPT head (0.001-80 m); see _base_/kitti.py for what mmseg lacks of the protocol.
_base_ = ["./_base_/depth_model.py", "./_base_/kitti.py", "../_base_/schedules/depth_38k.py", "./_base_/runtime.py"]
model = dict(data_preprocessor=dict(size=(352, 704)), decode_head=dict(max_depth=80.0))
