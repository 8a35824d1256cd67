# dinov2_vits14, kitti: lin.4: four blocks and their class tokens, 256 bins.
_base_ = ["../_base_/models/depth_linear4.py", "../_base_/datasets/kitti.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[2, 5, 8, 11],
             head=dict(in_channels=[384, 384, 384, 384], min_depth=0.001, max_depth=80.0))
