# The DPT depth setup on `dinov2-dense synth --layout nyu` scenes: mmseg's Runner, LoadDepthAnnotation
# and DepthMetric, the plugin's NYUToolboxDataset and DINOv2DepthEstimator; small crops, a short schedule.
_base_ = ["./dinov2_vits14_nyu_dpt.py"]
data_root = "data/synthetic_nyu"
crop = (224, 224)
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadDepthAnnotation", depth_rescale_factor=1e-3),
    dict(type="DINOv2DepthAugment", crop_size=crop),  # no NYU pre-crop: the scenes are not NYU frames
    dict(type="PackSegInputs", meta_keys={{_base_.depth_meta_keys}}),
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
model = dict(data_preprocessor=dict(size=crop))
val_evaluator = dict(crop=None)
test_evaluator = val_evaluator
max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=20),
                   dict(type="CosineAnnealingLR", T_max=max_iters, eta_min_ratio=1e-8, by_epoch=False, begin=0,
                        end=max_iters)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
