# dinov2_vitb14, kitti: DPT head.
_base_ = ["../_base_/models/depth_dpt.py", "../_base_/datasets/kitti.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitb14", layers=[2, 5, 8, 11],
             head=dict(embed_dim=768, post_process_channels=[96, 192, 384, 768], min_depth=0.001, max_depth=80.0))
