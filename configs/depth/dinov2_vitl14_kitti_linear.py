# dinov2_vitl14, kitti: lin.1: the last block and its class token, 256 bins.
_base_ = ["../_base_/models/depth_linear.py", "../_base_/datasets/kitti.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitl14", layers=[23],
             head=dict(in_channels=[1024], min_depth=0.001, max_depth=80.0))
