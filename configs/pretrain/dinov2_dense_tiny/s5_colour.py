# dinov2_dense_tiny, stage 5: from stage 4's export, colour views (grey 20%, the hue jitter over the
# whole circle): the scenes' random colours are the nuisance. Cell loss weight 8. 3,000 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s4_cell8/export/backbone.safetensors")
crops = dict(grayscale_probability=0.2)
cell = dict(loss_weight=8.0)
optim = dict(epochs=30, base_lr=0.002)
monitor = dict(period=3000)
