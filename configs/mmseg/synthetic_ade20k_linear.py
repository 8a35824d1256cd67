# The lin. setup on `dinov2-dense synth --layout ade20k` scenes (data_root=...): mmseg's Runner, its
# pipelines and IoUMetric, the plugin's data set (class names from synthetic.json). Small crops and a
# short schedule: a smoke test of a setup, and what the plugin's tests run (with a tiny backbone).
_base_ = ["./dinov2_vits14_ade20k_linear.py"]
dataset_type = "SyntheticADE20KDataset"
data_root = "data/synthetic_ade20k"
crop = (224, 224)
train_pipeline = [
    dict(type="SeedAugmentation"),  # mmcv's random transforms seeded by the sample: resume, workers
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomResize", scale=(448, 224), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type="RandomCrop", crop_size=crop),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(data_preprocessor=dict(size=crop), decode_head=dict(num_classes=5),
             test_cfg=dict(mode="slide", crop_size=crop, stride=(149, 149)))
max_iters = 200
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=20),
                   dict(type="PolyLR", power=1.0, eta_min=0.0, by_epoch=False, begin=0, end=max_iters)]
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=max_iters))
