"""The mmengine registries our classes live in: mmengine's own root registries, one level deep.

Our names are distinct (``DenseModel``, ``dense_collate``, ``CheckpointSanitizerHook``, ``SegMetric``,
...), so configs name them directly, beside mmengine's optimisers, hooks and loops, with no scope.
"""

from mmengine.registry import DATA_SAMPLERS, DATASETS, FUNCTIONS, HOOKS, METRICS, MODELS, PARAM_SCHEDULERS

__all__ = ["DATASETS", "DATA_SAMPLERS", "FUNCTIONS", "HOOKS", "METRICS", "MODELS", "PARAM_SCHEDULERS"]
