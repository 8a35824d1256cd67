# A ViT-S/14 trained from scratch with the released defaults (dinov2/configs/ssl_default_config.yaml:
# 100 epochs of 1,250 iterations, base_lr 4e-3 for a batch of 1,024, 64 images per GPU, weight decay
# 0.04 -> 0.4, teacher momentum 0.992 -> 1, drop path 0.3, 65,536 prototypes, 8 local crops). The
# released ViT-S/14 was distilled from ViT-g rather than trained this way (configs/pretrain/
# distill_vitg14_to_vits14.py); the release has no ViT-S training config, so these are the defaults.
#   torchrun --nproc_per_node 8 tools/pretrain.py configs/pretrain/vits14_imagenet.py
student = dict(arch="vit_small", patch_size=14)
train = dict(dataset=dict(type="folder", root="data/imagenet/train"))
