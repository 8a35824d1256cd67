# A short schedule for synthetic scenes on one CPU: the official optimiser and poly decay, scaled down.
max_iters = 600
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=200)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
