# The released DINOv2 depth schedule (dinov2_vit*14_{nyu,kitti}_*_config.py, as copied in ywyue/FiT3D
# evaluation/baseline_configs/vits_kitti_depth_linear_config.py and an unmodified
# dinov2_vitl14_nyu_dpt_config.py): AdamW lr 1e-4, betas (0.9, 0.999), weight decay 0.01 with no
# decay on pos_embed, cls_token and norm (and lr x0.1 on the backbone, which is frozen here);
# gradient clipping max_norm 35; CosineAnnealing over 38,400 iterations with min_lr_ratio 1e-8 after
# a linear warm-up of 12,800 iterations from ratio 1e-3 (mmcv's warm-up multiplies the regular
# rate: mmengine chains the two schedulers the same way); momentum_config OneCycle (mmcv defaults:
# beta_1 0.95 -> 0.85 over the first 30% -> 0.95). 2 images per GPU on 8 GPUs, a total of 16
# (configs/_base_/datasets/nyu.py; Denoising-ViT's copy says lr 5e-3; the unmodified files say 1e-4).
max_iters = 38400
optim_wrapper = dict(
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys=dict(pos_embed=dict(decay_mult=0.0), cls_token=dict(decay_mult=0.0),
                                        norm=dict(decay_mult=0.0), backbone=dict(lr_mult=0.1))),
    clip_grad=dict(max_norm=35, norm_type=2),
)
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=12800),
    dict(type="CosineAnnealingLR", T_max=max_iters, eta_min_ratio=1e-8, by_epoch=False, begin=0, end=max_iters),
    dict(type="OneCycleMomentum", base_momentum=0.85, max_momentum=0.95, pct_start=0.3, by_epoch=False, begin=0,
         end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=1600)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
