"""mmengine glue: registries, the model wrapper, the runner with a safe resume, hooks, data glue."""

from dinov2_dense.evaluation import mmengine_metrics  # noqa: F401  (registers SegMetric, DepthMetric)

from . import data, hooks  # noqa: F401  (registers dense_collate, SavePredictionsHook)
from .model import DenseModel
from .registry import DATASETS, FUNCTIONS, HOOKS, METRICS, MODELS
from .runner import CheckpointSanitizerHook, DenseRunner, latest_checkpoint

__all__ = ["DenseModel", "DenseRunner", "CheckpointSanitizerHook", "latest_checkpoint",
           "DATASETS", "FUNCTIONS", "HOOKS", "METRICS", "MODELS"]
