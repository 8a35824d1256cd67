# NYU-Depth v2 with the DPT head (blocks 2, 5, 8, 11; SigLoss; 0.001-10 m).
_base_ = ["./_base_/depth_model.py", "./_base_/nyu.py", "../_base_/schedules/depth_38k.py", "./_base_/runtime.py"]
