# dinov2_vitg14, nyu: lin.4: four blocks and their class tokens, 256 bins.
_base_ = ["../_base_/models/depth_linear4.py", "../_base_/datasets/nyu.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitg14", layers=[9, 19, 29, 39],
             head=dict(in_channels=[1536, 1536, 1536, 1536], min_depth=0.001, max_depth=10.0))
