# dinov2_vitg14, nyu: DPT head.
_base_ = ["../_base_/models/depth_dpt.py", "../_base_/datasets/nyu.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitg14", layers=[9, 19, 29, 39],
             head=dict(embed_dim=1536, post_process_channels=[192, 384, 768, 1536], min_depth=0.001, max_depth=10.0))
