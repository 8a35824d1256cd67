# dinov2_vitl14, kitti: DPT head.
_base_ = ["../_base_/models/depth_dpt.py", "../_base_/datasets/kitti.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitl14", layers=[4, 11, 17, 23],
             head=dict(embed_dim=1024, post_process_channels=[128, 256, 512, 1024], min_depth=0.001, max_depth=80.0))
