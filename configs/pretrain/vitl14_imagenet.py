# The released ViT-L/14 recipe (dinov2/configs/train/vitl14.yaml over ssl_default_config.yaml), on an
# ImageNet-style folder (any folder of images: labels are not used). 500 epochs of 1,250 iterations,
# batch 32 per GPU (1,024 on 32 GPUs: base_lr 2e-4 is for that total, scaled by sqrt(batch / 1024)).
# The released training config uses the SwiGLU FFN for ViT-L, while the released ViT-L/14 weights
# use the MLP FFN; we keep the config's value. Run with torchrun, e.g. 8 processes a node:
#   torchrun --nnodes 4 --nproc_per_node 8 tools/pretrain.py configs/pretrain/vitl14_imagenet.py
student = dict(arch="vit_large", patch_size=14, drop_path_rate=0.4, ffn_layer="swiglufused")
teacher = dict(momentum_teacher=0.994)
dino = dict(head_n_prototypes=131072, head_bottleneck_dim=384)
ibot = dict(separate_head=True, head_n_prototypes=131072)
train = dict(batch_size_per_gpu=32, centering="sinkhorn_knopp", dataset=dict(type="folder", root="data/imagenet/train"))
optim = dict(epochs=500, weight_decay_end=0.2, base_lr=2.0e-4, warmup_epochs=80, layerwise_decay=1.0)
crops = dict(local_crops_size=98)
compute = dict(distributed="fsdp")
