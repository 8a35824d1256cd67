# The continued-pretraining recipe (continued_vits14.py) at the scale of this 2-core CPU: start from
# the backbone tiny_cpu.py exported (192 wide, 6 blocks), fresh DINO / iBOT heads warmed up for 100
# iterations on the frozen backbone, then the backbone at a tenth of the heads' rate with a slower
# teacher (momentum 0.996); batch 32, 300 iterations (a few minutes), the monitor every 50.
# Run tiny_cpu.py first, or point student.pretrained_weights at another export or a zoo name.
#   dinov2-dense pretrain configs/pretrain/continued_tiny_cpu.py
#   -> work_dirs/pretrain/continued_tiny_cpu/training_curves.png: losses, schedules and monitor scores
student = dict(arch="custom", embed_dim=192, depth=6, num_heads=3, patch_size=14, drop_path_rate=0.1,
               pretrained_weights="work_dirs/pretrain/tiny_cpu/export/backbone.safetensors")
dino = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)
ibot = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)
crops = dict(global_crops_size=112, local_crops_size=56, local_crops_number=4)
train = dict(batch_size_per_gpu=32, num_workers=2, OFFICIAL_EPOCH_LENGTH=50, checkpoint_period=100, log_freq=10,
             dataset=[dict(type="synthetic", num_scenes=20000, seed=1), dict(type="skimage")])
optim = dict(epochs=6, warmup_epochs=1, base_lr=5.0e-4, min_lr=1.0e-6, freeze_last_layer_epochs=1,
             freeze_backbone_iters=100, backbone_lr_mult=0.1)
teacher = dict(momentum_teacher=0.996, warmup_teacher_temp_epochs=1)
monitor = dict(period=50, pca_size=112, probe_size=112, probe_scenes=(8, 32), knn_scenes=(200, 100))
