# The released segmentation schedule (dinov2_vitb14_{ade20k,voc2012}_linear_config.py, as copied in
# Jiawei-Yang/Denoising-ViT evaluation/configs/vitb_ade20k_linear_config.py): AdamW lr 1e-3,
# weight decay 1e-4, betas (0.9, 0.999); poly decay (power 1, min_lr 0) over 40,000 iterations after
# a linear warm-up of 1,500 iterations from ratio 1e-6. mmengine chains overlapping schedulers
# multiplicatively, which is mmcv's warm-up-times-regular-rate rule.
max_iters = 40000
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
