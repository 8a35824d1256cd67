# dinov2_dense_tiny, stage 7: from stage 6's export, the colour views of stage 5 again (grey 20%, the
# hue jitter over the whole circle, brightness, contrast and saturation jitter) at half stage 6's
# rate: stage 6's hue-only views let colour back into the features, and a PCA fitted over scenes of
# random colours then splits colours rather than objects. Cell loss weight 8. 1,500 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s6_hue/export/backbone.safetensors")
crops = dict(grayscale_probability=0.2)
cell = dict(loss_weight=8.0)
optim = dict(epochs=15, base_lr=0.001)
monitor = dict(period=1500)
