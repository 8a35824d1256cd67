# dinov2_vits14, cityscapes: lin.: BatchNorm + 1x1 conv on the last of the four blocks.
_base_ = ["../_base_/models/seg_linear.py", "../_base_/datasets/cityscapes.py",
          "../_base_/schedules/seg_40k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[8, 9, 10, 11],
             head=dict(in_channels=[384], num_classes=19),
             test_cfg=dict(_delete_=True, mode="slide", crop_size=(512, 1024), stride=(341, 682), scale=(2048, 1024)))
