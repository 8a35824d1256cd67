# Synthetic scenes (dinov2_dense.data.synthetic) in the NYU layout (16-bit millimetre PNGs and split
# files): write them first with
#   dinov2-dense synth data/synthetic/nyu --layout nyu --train 400 --val 50
# The NYU pipelines at the scenes' scale (224 pixels, no NYUCrop); evaluation without a crop.
_base_ = ["./nyu.py"]
data_root = "data/synthetic/nyu"
train_dataloader = dict(batch_size=8, dataset=dict(root=data_root, pipeline=dict(crop_size=(224, 224), pre_crop=None)))
val_dataloader = dict(num_workers=0, dataset=dict(root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(crop=None)
test_evaluator = val_evaluator
