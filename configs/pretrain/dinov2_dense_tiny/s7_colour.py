# dinov2_dense_tiny, stage 7: from stage 6's export, stage 5's colour views again (grey 20%, the hue
# jitter over the whole circle, brightness, contrast and saturation jitter) at half stage 6's rate:
# stage 6's hue-only views let colour back into the features, and a PCA fitted over scenes of random
# colours then splits colours rather than objects. Cell loss weight 8. 1,500 iterations.
_base_ = ["./s5_colour.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s6_hue/export/backbone.safetensors")
optim = dict(epochs=15, base_lr=0.001)
monitor = dict(period=1500)
