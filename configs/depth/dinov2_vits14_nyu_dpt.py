# dinov2_vits14, nyu: DPT head.
_base_ = ["../_base_/models/depth_dpt.py", "../_base_/datasets/nyu.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[2, 5, 8, 11],
             head=dict(embed_dim=384, post_process_channels=[48, 96, 192, 384], min_depth=0.001, max_depth=10.0))
