# dinov2_vits14, synthetic: a DPT head ending in class logits.
_base_ = ["../_base_/models/seg_dpt.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[2, 5, 8, 11],
             head=dict(embed_dim=384, post_process_channels=[48, 96, 192, 384], num_classes=5),
             test_cfg=dict(_delete_=True, mode="whole"))
