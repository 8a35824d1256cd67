# dinov2_vitl14, synthetic: lin.: BatchNorm + 1x1 conv on the last of the four blocks.
_base_ = ["../_base_/models/seg_linear.py", "../_base_/datasets/synthetic_seg.py",
          "../_base_/schedules/schedule_synthetic.py", "../_base_/synthetic_runtime.py"]
model = dict(backbone="dinov2_vitl14", layers=[20, 21, 22, 23],
             head=dict(in_channels=[1024], num_classes=5),
             test_cfg=dict(_delete_=True, mode="whole"))
