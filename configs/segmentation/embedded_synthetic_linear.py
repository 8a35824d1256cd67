# The backbone embedded in the package (dinov2_dense_tiny: a 96-wide, 4-block ViT/14 that our pretraining
# core trained on synthetic scenes; nothing to download) and a linear head on its last block, on synthetic
# scenes: a head on trained features in minutes on a CPU. Write the scenes first with
#   dinov2-dense synth data/synthetic/ade --layout ade20k --train 400 --val 50
_base_ = ["../_base_/models/seg_linear.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_dense_tiny", backbone_weights="official", layers=[3],
             head=dict(in_channels=[96], num_classes=5, in_index=[0]), test_cfg=dict(_delete_=True, mode="whole"))
