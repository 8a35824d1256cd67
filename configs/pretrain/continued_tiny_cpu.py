# The continued-pretraining recipe (continued_vits14.py) at the scale of this 2-core CPU: start from
# the backbone tiny_cpu.py exported (192 wide, 6 blocks), fresh DINO / iBOT heads warmed up for 100
# iterations on the frozen backbone, then the backbone at a tenth of the heads' rate with a slower
# teacher (momentum 0.996); batch 32, 300 iterations (a few minutes), the monitor every 50.
# Run tiny_cpu.py first, or point student.pretrained_weights at another export or a zoo name.
#   dinov2-dense pretrain configs/pretrain/continued_tiny_cpu.py
#   -> work_dirs/pretrain/continued_tiny_cpu/training_curves.png: losses, schedules and monitor scores
_base_ = ["./tiny_cpu.py"]  # the same architecture, crops, head sizes and monitor scenes
student = dict(pretrained_weights="work_dirs/pretrain/tiny_cpu/export/backbone.safetensors")
train = dict(OFFICIAL_EPOCH_LENGTH=50, checkpoint_period=100, log_freq=10,
             dataset=[dict(type="synthetic", num_scenes=20000, seed=1), dict(type="skimage")])
optim = dict(epochs=6, freeze_backbone_iters=100, backbone_lr_mult=0.1)
teacher = dict(momentum_teacher=0.996, warmup_teacher_temp_epochs=1)
monitor = dict(period=50)
