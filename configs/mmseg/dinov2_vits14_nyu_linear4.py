# NYU-Depth v2 with the linear4 head: 256 bins over 0.001-10 m on blocks 2, 5, 8, 11 (map + class token);
# the DPT config's loss (SigLoss 1.0 with warm-up) and flip test.
_base_ = ["./dinov2_vits14_nyu_dpt.py"]
model = dict(decode_head=dict(_delete_=True, type="DINOv2LinearDepthHead", in_channels=[384] * 4, min_depth=0.001,
                              max_depth=10.0, loss_decode={{_base_.depth_losses}}))
