# DPT depth (the released dinov2_vitl14_nyu_dpt_config.py: DPTHead channels=256,
# post_process_channels=[D/8, D/4, D/2, D], readout_type='project', blocks [4, 11, 17, 23] for ViT-L,
# final_norm=False; the losses and test of lin.1). No copy of a released KITTI DPT config, nor of any
# ViT-g config, was found: they take the NYU DPT head with KITTI's range and pipelines. ViT-S values.
_base_ = ["./depth_linear.py"]
model = dict(
    head=dict(_delete_=True, type="DPTHead", embed_dim=384, post_process_channels=[48, 96, 192, 384],
              min_depth=0.001, max_depth=10.0),
    layers=[2, 5, 8, 11],
)
