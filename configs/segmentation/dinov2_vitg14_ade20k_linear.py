# dinov2_vitg14, ade20k: lin.: BatchNorm + 1x1 conv on the last of the four blocks.
_base_ = ["../_base_/models/seg_linear.py", "../_base_/datasets/ade20k.py",
          "../_base_/schedules/seg_40k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitg14", layers=[36, 37, 38, 39],
             head=dict(in_channels=[1536], num_classes=150),
             test_cfg=dict(_delete_=True, mode="slide", crop_size=512, stride=341, scale=(2048, 512)))
