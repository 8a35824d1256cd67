# dinov2_vitl14, synthetic: a DPT head ending in class logits.
_base_ = ["../_base_/models/seg_dpt.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_vitl14", layers=[4, 11, 17, 23],
             head=dict(embed_dim=1024, post_process_channels=[128, 256, 512, 1024], num_classes=5),
             test_cfg=dict(_delete_=True, mode="whole"))
