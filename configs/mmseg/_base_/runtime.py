# mmseg 1.x runtime for the plugin's configs: our runtime (logging, checkpoints, seeding) in mmseg's
# scope, our classes imported, checkpoints that torch.load(weights_only=True) reads
# (CheckpointSanitizerHook), a resumed run that continues SigLoss's warm-up where it stopped instead of
# starting it again (LossWarmUpHook: the count is not in the checkpoint), a resumed run whose data starts
# at the checkpoint's sample instead of loading every trained batch again (ResumeDataHook, with the data
# configs' SeededInfiniteSampler and SeedAugmentation), a run stopped at a NaN or infinite loss before its
# checkpoint, and no checkpoint of NaN heads written (DivergenceHook, CheckpointSanitizerHook), mmseg's
# visualiser. Keep the four hooks in a config of your own.
_base_ = ["../../_base_/default_runtime.py"]
custom_imports = dict(imports=["dinov2_dense.mmseg"], allow_failed_imports=False)
default_scope = "mmseg"
env_cfg = dict(mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
default_hooks = dict(visualization=dict(type="SegVisualizationHook"))
custom_hooks = [dict(type="CheckpointSanitizerHook"), dict(type="LossWarmUpHook"), dict(type="ResumeDataHook"),
                dict(type="DivergenceHook")]
