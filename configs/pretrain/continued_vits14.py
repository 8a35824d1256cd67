# Continued pretraining of the official ViT-S/14 on your own images (a folder, searched recursively),
# on one GPU (batch 64) or, slowly, on a CPU (use --cfg-options train.batch_size_per_gpu=32). The
# DINO / iBOT heads were never released: they start fresh and warm up for 500 iterations on the frozen
# backbone (optim.freeze_backbone_iters), then the backbone trains at a tenth of the head's rate
# (optim.backbone_lr_mult), with a slower teacher (momentum 0.996) so that it keeps what it knows.
# The monitor draws PCA maps and scores a frozen linear probe and kNN every 250 iterations
# (work_dir/monitor/): if the maps lose their objects, stop and lower the rate.
#   dinov2-dense pretrain configs/pretrain/continued_vits14.py --cfg-options train.dataset.root=my_images
student = dict(arch="vit_small", patch_size=14, drop_path_rate=0.1, pretrained_weights="dinov2_vits14")
teacher = dict(momentum_teacher=0.996, warmup_teacher_temp_epochs=1)
train = dict(batch_size_per_gpu=64, num_workers=8, OFFICIAL_EPOCH_LENGTH=500, checkpoint_period=500, log_freq=20,
             dataset=dict(type="folder", root="data/my_images"))
optim = dict(epochs=10, base_lr=5.0e-4, warmup_epochs=1, freeze_last_layer_epochs=1, freeze_backbone_iters=500,
             backbone_lr_mult=0.1, layerwise_decay=0.9)
crops = dict(local_crops_size=98)
monitor = dict(period=250)
