# dinov2_dense_tiny, stage 1 (tools/pretrain_dinov2_dense_tiny.sh runs them all): a 96-wide,
# 4-block ViT/14 learns the scenes' textures in its class token. Object-centric texture scenes (1-2
# large shapes, every surface a random colour: the class shows by texture only), grey views (colour is
# the nuisance), eight one-patch (14-px) local crops whose class token must match the teacher's view of
# the whole 84-px global crop, a sharp teacher (0.015) over 256 prototypes, no blur (it erases stripes).
# 9,000 iterations, about 31 minutes on a 2-core CPU with nothing else running. Why each departure from the recipe: README,
# "What it does not learn yet".
student = dict(arch="custom", embed_dim=96, depth=4, num_heads=3, patch_size=14, drop_path_rate=0.0, layerscale=0.1)
dino = dict(head_n_prototypes=256, head_bottleneck_dim=128, head_hidden_dim=512)
ibot = dict(head_n_prototypes=256, head_bottleneck_dim=128, head_hidden_dim=512)
crops = dict(global_crops_size=84, global_crops_scale=(0.5, 0.63), local_crops_size=14, local_crops_number=8,
             local_crops_scale=(0.012, 0.025), blur_probabilities=(0.0, 0.0, 0.0), color_jitter=(0.4, 0.4, 0.7, 0.5),
             color_jitter_probability=1.0, grayscale_probability=1.0)
train = dict(
    batch_size_per_gpu=32,
    num_workers=1,
    OFFICIAL_EPOCH_LENGTH=100,
    checkpoint_period=1000,
    max_to_keep=2,
    log_freq=20,
    dataset=[dict(type="synthetic", num_scenes=50000,
                  config=dict(appearance="texture", size=(112, 112), min_shapes=1, max_shapes=2, shape_size=(0.45, 0.8)))],
)
optim = dict(epochs=90, warmup_epochs=2, base_lr=0.001, min_lr=1.0e-6, freeze_last_layer_epochs=1)
teacher = dict(warmup_teacher_temp_epochs=2, warmup_teacher_temp=0.015, teacher_temp=0.015)
monitor = dict(period=1000, pca_size=112, probe_size=112, probe_scenes=(128, 48), knn_scenes=(200, 100),
               appearance="texture")
