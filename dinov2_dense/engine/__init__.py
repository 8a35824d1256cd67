"""mmengine glue: registries, the model wrapper, the runner with a safe resume, hooks, data glue.

Importing the package is cheap (the CLI builds its parser from ``engine.entry``); mmengine, the
model and the data sets load when a name is first used, and ``register_all()`` puts our classes
into mmengine's registries (the runner calls it).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "DenseModel": "model", "DenseRunner": "runner", "CheckpointSanitizerHook": "runner",
    "LossWarmUpHook": "runner", "ResumeDataHook": "runner", "continue_trained_data": "runner",
    "latest_checkpoint": "runner", "DATASETS": "registry", "FUNCTIONS": "registry", "HOOKS": "registry",
    "METRICS": "registry", "MODELS": "registry", "DATA_SAMPLERS": "registry", "SeededInfiniteSampler": "data",
    "PARAM_SCHEDULERS": "registry", "OneCycleMomentum": "schedulers", "HeadCheckpointLoader": "runner",
    "load_trained": "trained",
}
__all__ = [*_NAMES, "register_all"]


def register_all() -> None:
    """Import every module that registers a class or function in mmengine's registries."""
    importlib.import_module("dinov2_dense.evaluation.mmengine_metrics")  # SegMetric, DepthMetric
    for module in ("data", "hooks", "model", "runner", "schedulers"):  # collate + data sets, hooks, DenseModel, ...
        importlib.import_module(f"{__name__}.{module}")


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_all()
    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
