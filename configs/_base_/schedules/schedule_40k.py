# The official linear-probe optimisation (DINOv2 ADE20K linear configs): AdamW lr 1e-3, wd 1e-4;
# poly decay (power 1) over 40k iterations with a linear warm-up over the first 1500 (ratio 1e-6).
# mmengine chains overlapping schedulers multiplicatively, which is mmcv's warm-up-times-poly rule.
max_iters = 40000
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4, betas=(0.9, 0.999)))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=4000)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
