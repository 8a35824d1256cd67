# Distillation at the scale of this 2-core CPU: the backbone tiny_cpu.py exported (192 wide, 6 blocks)
# teaches a 96-wide, 4-block ViT/14 for 400 iterations (about 6 minutes), with the teacher's own trained
# DINO head from the run's newest training checkpoint (the paper's distillation: the teacher's head outputs
# are the targets). Run tiny_cpu.py first, or give --teacher / --teacher-head.
#   dinov2-dense distill configs/pretrain/distill_tiny_cpu.py     # -> work_dirs/pretrain/distill_tiny_cpu/export/student0.*
#   python benchmarks/distill_tiny.py                               # what it buys: kNN and probe against the student's init
_base_ = ["./tiny_cpu.py"]  # the same data, crops, head sizes and monitor
student = dict(embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.0)
distill = dict(teacher="work_dirs/pretrain/tiny_cpu/export/backbone.safetensors",
               teacher_head="work_dirs/pretrain/tiny_cpu",
               students=[dict()])  # add entries (e.g. dict(embed_dim=48, num_heads=2)) to train several at once
train = dict(checkpoint_period=100)
optim = dict(epochs=4, base_lr=0.001, freeze_last_layer_epochs=0)
teacher = dict(warmup_teacher_temp_epochs=1)
monitor = dict(period=100)
