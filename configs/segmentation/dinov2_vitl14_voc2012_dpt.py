# dinov2_vitl14, voc2012: a DPT head ending in class logits.
_base_ = ["../_base_/models/seg_dpt.py", "../_base_/datasets/voc2012.py",
          "../_base_/schedules/seg_40k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitl14", layers=[4, 11, 17, 23],
             head=dict(embed_dim=1024, post_process_channels=[128, 256, 512, 1024], num_classes=21),
             test_cfg=dict(_delete_=True, mode="slide", crop_size=512, stride=341, scale=(2048, 512)))
