# dinov2_vits14, synthetic: +ms: the four blocks concatenated; multi-scale + flip test.
_base_ = ["../_base_/models/seg_ms.py", "../_base_/datasets/synthetic_seg_ms.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[8, 9, 10, 11],
             head=dict(in_channels=[384, 384, 384, 384], num_classes=5),
             test_cfg=dict(_delete_=True, mode="whole", scales=(1.0, 1.32, 1.73, 2.28, 3.0), flip=True))
