# dinov2_dense_tiny, stage 6: from stage 5's export, hue jitter only (no brightness, contrast or
# saturation jitter; grey 10%): the depth fog of the scenes pales far surfaces, and views that
# keep their brightness and saturation let the features keep that cue. Cell loss weight 8.
# 3,000 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s5_colour/export/backbone.safetensors")
crops = dict(color_jitter=(0.0, 0.0, 0.0, 0.5), grayscale_probability=0.1)
cell = dict(loss_weight=8.0)
optim = dict(epochs=30, base_lr=0.002)
monitor = dict(period=1000)
