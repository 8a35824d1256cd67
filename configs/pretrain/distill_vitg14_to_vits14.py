# Distillation as the paper's Sec. 5: the frozen ViT-g/14 teaches a ViT-S/14 (add more students to the
# list to train several at once from one teacher pass), with no masking and no stochastic depth for the
# students, the iBOT loss on every patch of the global crops, and a spare EMA of each student that is
# exported (work_dir/export/student0.safetensors ...). The teacher's DINO head was never released: it is
# drawn at random and frozen, a fixed projection onto the prototypes (or give distill.teacher_head, a
# pretraining checkpoint whose teacher.dino_head.* was trained with that teacher).
#   torchrun --nproc_per_node 8 tools/pretrain.py configs/pretrain/distill_vitg14_to_vits14.py
student = dict(arch="vit_small", patch_size=14, drop_path_rate=0.0)
distill = dict(teacher="dinov2_vitg14", students=[dict(arch="vit_small")])
teacher = dict(momentum_teacher=0.994)
dino = dict(head_n_prototypes=131072, head_bottleneck_dim=384)
train = dict(batch_size_per_gpu=64, dataset=dict(type="folder", root="data/imagenet/train"))
optim = dict(epochs=100, base_lr=2.0e-4, warmup_epochs=10, layerwise_decay=1.0)
crops = dict(local_crops_size=98)
