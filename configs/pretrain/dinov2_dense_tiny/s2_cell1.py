# dinov2_dense_tiny, stage 2: from stage 1's export (fresh heads), the cell loss at weight 1 hands
# the class token's reading of each 14-px cell to the patch tokens (cell.loss_weight: README). The cell
# targets only teach once the class token reads texture: from scratch the cell loss stays at log K.
# 2,000 iterations.
_base_ = ["./s1_cls.py"]
student = dict(pretrained_weights="work_dirs/dinov2_dense_tiny/s1_cls/export/backbone.safetensors")
cell = dict(loss_weight=1.0)
optim = dict(epochs=20)
monitor = dict(period=2000)
