"""Segmentation and depth metrics, as plain functions and as mmengine metrics.

- :mod:`.segmentation`: aAcc / mIoU / mAcc with the ignore index (mmseg ``IoUMetric`` conventions).
- :mod:`.depth`: per-image depth metrics with the Eigen / Garg crops (depth-toolbox conventions),
  and counts of the invalid predictions (inf, negative, zero) that the protocol's clipping hides.
- :mod:`.depth_files`: evaluate directories of saved depth maps (``tools/eval_depth.py``).
- :mod:`.mmengine_metrics`: ``SegMetric`` and ``DepthMetric`` registered in mmengine's ``METRICS``;
  imported lazily (attribute access or an explicit import), so the plain functions do not import
  mmengine.
"""

from .depth import (
    DEPTH_METRIC_KEYS,
    INVALID_PREDICTION_KEYS,
    DepthAccumulator,
    average_depth_metrics,
    crop_mask,
    depth_metrics,
    kb_crop,
)
from .depth_files import DATASET_PRESETS, evaluate_depth_dirs, read_depth, write_metrics_json
from .segmentation import SegmentationAccumulator, format_table, intersect_and_union, segmentation_metrics

__all__ = [
    "DATASET_PRESETS",
    "DEPTH_METRIC_KEYS",
    "DepthAccumulator",
    "DepthMetric",
    "INVALID_PREDICTION_KEYS",
    "SegMetric",
    "SegmentationAccumulator",
    "average_depth_metrics",
    "crop_mask",
    "depth_metrics",
    "evaluate_depth_dirs",
    "format_table",
    "intersect_and_union",
    "kb_crop",
    "read_depth",
    "segmentation_metrics",
    "write_metrics_json",
]


def __getattr__(name: str):
    if name in ("SegMetric", "DepthMetric"):
        from . import mmengine_metrics

        return getattr(mmengine_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
