# Distillation at the scale of this 2-core CPU: the backbone tiny_cpu.py exported (192 wide, 6 blocks)
# teaches a 96-wide, 4-block ViT/14 for 400 iterations (a few minutes), with the teacher's own trained
# DINO head from the run's newest training checkpoint (the paper's distillation: the teacher's head outputs are
# the targets). Run tiny_cpu.py first, or point distill.teacher / distill.teacher_head elsewhere.
#   dinov2-dense pretrain configs/pretrain/distill_tiny_cpu.py       # -> work_dirs/pretrain/distill_tiny_cpu/export/student0.*
#   python benchmarks/distill_tiny.py                                # what it buys: kNN and probe against the student's init
student = dict(arch="custom", embed_dim=96, depth=4, num_heads=3, patch_size=14, drop_path_rate=0.0, layerscale=0.1)
distill = dict(teacher="work_dirs/pretrain/tiny_cpu/export/backbone.safetensors",
               teacher_head="work_dirs/pretrain/tiny_cpu",
               students=[dict()])  # add entries (e.g. dict(embed_dim=48, num_heads=2)) to train several at once
dino = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)  # as the teacher's head
ibot = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)
crops = dict(global_crops_size=112, local_crops_size=56, local_crops_number=4)
train = dict(
    batch_size_per_gpu=32,
    num_workers=2,
    OFFICIAL_EPOCH_LENGTH=100,
    checkpoint_period=100,
    log_freq=20,
    dataset=[dict(type="synthetic", num_scenes=20000), dict(type="skimage")],
)
optim = dict(epochs=4, warmup_epochs=1, base_lr=0.001, min_lr=1.0e-6, freeze_last_layer_epochs=0)
teacher = dict(warmup_teacher_temp_epochs=1)
monitor = dict(period=100, pca_size=112, probe_size=112, probe_scenes=(8, 32), knn_scenes=(200, 100))
