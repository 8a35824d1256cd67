# A small ViT/14 pretrained from scratch on this 2-core CPU in about 20 minutes: synthetic scenes
# (exact labels for the monitor's kNN and segmentation probe) plus the images scikit-image ships.
# The DINOv2 recipe (DINO + iBOT + KoLeo, EMA teacher, multi-crop, block masking) at a small scale:
# 192 wide, 6 blocks, 3 heads; 112-pixel global and 56-pixel local crops (4 of them); 4,096 prototypes.
#   dinov2-dense pretrain configs/pretrain/tiny_cpu.py            # -> work_dirs/pretrain/tiny_cpu/export/
student = dict(arch="custom", embed_dim=192, depth=6, num_heads=3, patch_size=14, drop_path_rate=0.1,
               layerscale=0.1)  # 1e-5 (the released value) keeps the class token blind to the image for too long here
dino = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)
ibot = dict(head_n_prototypes=4096, head_bottleneck_dim=128, head_hidden_dim=1024)
crops = dict(global_crops_size=112, local_crops_size=56, local_crops_number=4)
train = dict(
    batch_size_per_gpu=32,
    num_workers=2,
    OFFICIAL_EPOCH_LENGTH=100,  # iterations per "epoch" of the schedules
    checkpoint_period=200,
    log_freq=20,
    dataset=[dict(type="synthetic", num_scenes=20000), dict(type="skimage")],
)
optim = dict(epochs=12, warmup_epochs=1, base_lr=0.0005, min_lr=1.0e-6, freeze_last_layer_epochs=1)
# Teacher temperature 0.015 throughout (released: 0.04 rising to 0.07): at 0.04 this model's head outputs vary
# across scenes by less than the temperature, so the DINO targets were uniform from about iteration 250 on
# (README, "Measured cause"); at 0.015 they stay peaked (entropy about 0.6 of log K) and the run measured
# kNN 75.0% (the same) and probe 78.35 mIoU (77.70 at 0.04).
teacher = dict(warmup_teacher_temp_epochs=3, warmup_teacher_temp=0.015, teacher_temp=0.015)
monitor = dict(period=300, pca_size=112, probe_size=112, probe_scenes=(8, 32), knn_scenes=(200, 100))
