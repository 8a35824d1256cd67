# dinov2_dense_tiny, stage 4: from stage 3's export, cell loss weight 8. 3,000 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s3_cell4/export/backbone.safetensors")
cell = dict(loss_weight=8.0)
optim = dict(epochs=30, base_lr=0.002)
monitor = dict(period=3000)
