# Runtime shared by every run: logging, checkpoints, seeding. Our classes live in mmengine's root
# registries (no scope). DDP on CPUs uses gloo; on GPUs pass
# --cfg-options env_cfg.dist_cfg.backend=nccl.
default_scope = None
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=4000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="gloo"))
log_processor = dict(by_epoch=False)
log_level = "INFO"
randomness = dict(seed=0)
load_from = None
resume = False
