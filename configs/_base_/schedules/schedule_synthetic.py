# A short schedule for synthetic scenes on one CPU: the released segmentation optimiser and poly
# decay (seg_40k.py), scaled down to 600 iterations with a 50-iteration warm-up.
_base_ = ["./seg_40k.py"]
max_iters = 600
param_scheduler = [
    dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0, end=50),
    dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=200)
