# dinov2_vitg14, cityscapes: a DPT head ending in class logits.
_base_ = ["../_base_/models/seg_dpt.py", "../_base_/datasets/cityscapes.py",
          "../_base_/schedules/seg_40k.py", "../_base_/default_runtime.py"]
model = dict(backbone="dinov2_vitg14", layers=[9, 19, 29, 39],
             head=dict(embed_dim=1536, post_process_channels=[192, 384, 768, 1536], num_classes=19),
             test_cfg=dict(_delete_=True, mode="slide", crop_size=(512, 1024), stride=(341, 682), scale=(2048, 1024)))
