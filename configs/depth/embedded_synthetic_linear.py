# The backbone embedded in the package (dinov2_dense_tiny: a 96-wide, 4-block ViT/14 that our pretraining
# core trained on synthetic scenes; nothing to download) and the linear depth head (lin.1: its last block
# and class token, 256 bins) on synthetic scenes. Write the scenes first with
#   dinov2-dense synth data/synthetic/nyu --layout nyu --train 400 --val 50
_base_ = ["../_base_/models/depth_linear.py", "../_base_/datasets/synthetic_depth.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_dense_tiny", backbone_weights="official", layers=[3], head=dict(in_channels=[96]))
