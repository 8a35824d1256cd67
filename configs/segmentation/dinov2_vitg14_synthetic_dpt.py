# dinov2_vitg14, synthetic: a DPT head ending in class logits.
_base_ = ["../_base_/models/seg_dpt.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_vitg14", layers=[9, 19, 29, 39],
             head=dict(embed_dim=1536, post_process_channels=[192, 384, 768, 1536], num_classes=5),
             test_cfg=dict(_delete_=True, mode="whole"))
