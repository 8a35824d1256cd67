# dinov2_dense_tiny, the backbone shipped inside the package (``load_backbone("dinov2_dense_tiny")``):
# the tiny_cpu recipe (192 wide, 6 blocks, 3 heads; DINO + iBOT + KoLeo, EMA teacher, multi-crop)
# trained longer, on synthetic scenes whose classes show only through their texture (every surface
# draws a random colour: SceneConfig.appearance="texture") plus the images scikit-image ships.
# On such scenes random features are near chance, so what the heads get out of it was learnt.
#   dinov2-dense pretrain configs/pretrain/embedded_tiny.py --work-dir work_dirs/embedded_tiny
_base_ = "tiny_cpu.py"
train = dict(
    dataset=[dict(type="synthetic", num_scenes=20000, config=dict(appearance="texture")), dict(type="skimage")],
    checkpoint_period=500,
)
optim = dict(epochs=40, warmup_epochs=2)
teacher = dict(warmup_teacher_temp_epochs=10)
monitor = dict(period=500, probe_scenes=(32, 32), appearance="texture")
