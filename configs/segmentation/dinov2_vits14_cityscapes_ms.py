# dinov2_vits14, cityscapes: +ms: the four blocks concatenated; multi-scale + flip test.
_base_ = ["../_base_/models/seg_ms.py", "../_base_/datasets/cityscapes_ms.py",
          "../_base_/schedules/seg_40k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vits14", layers=[8, 9, 10, 11],
             head=dict(in_channels=[384, 384, 384, 384], num_classes=19),
             test_cfg=dict(_delete_=True, mode="slide", crop_size=(512, 1024), stride=(341, 682), scale=(2048, 1024), scales=(1.0, 1.32, 1.73, 2.28, 3.0), flip=True))
