# dinov2_vits14, nyu: lin.1: the last block and its class token, 256 bins.
_base_ = ["../_base_/models/depth_linear.py", "../_base_/datasets/nyu.py",
          "../_base_/schedules/depth_38k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[11],
             head=dict(in_channels=[384], min_depth=0.001, max_depth=10.0))
