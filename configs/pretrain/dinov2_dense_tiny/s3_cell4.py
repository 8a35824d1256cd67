# dinov2_dense_tiny, stage 3: from stage 2's export, cell loss weight 4, base lr 0.002. 4,000 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s2_cell1/export/backbone.safetensors")
cell = dict(loss_weight=4.0)
optim = dict(epochs=40, base_lr=0.002)
monitor = dict(period=2000)
