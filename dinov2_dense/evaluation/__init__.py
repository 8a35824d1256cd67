"""Segmentation and depth metrics, as plain functions and as mmengine metrics.

- :mod:`.segmentation`: aAcc / mIoU / mAcc with the ignore index (mmseg ``IoUMetric`` conventions).
- :mod:`.depth`: per-image depth metrics with the Eigen / Garg crops (depth-toolbox conventions),
  and counts of the invalid predictions (inf, negative, zero) that the protocol's clipping hides.
- :mod:`.depth_files`: evaluate directories of saved depth maps (``tools/eval_depth.py``).
- :mod:`.knn`: what pretraining bought: weighted k-NN (DINO protocol) and linear-probe accuracy of
  frozen global features, and image folders (folder name = label) turned into those features.
- :mod:`.mmengine_metrics`: ``SegMetric`` and ``DepthMetric`` registered in mmengine's ``METRICS``;
  imported lazily (attribute access or an explicit import), so the plain functions do not import
  mmengine.
"""

from .depth import (
    CLIPPED_PREDICTION_KEYS,
    DEPTH_METRIC_KEYS,
    INVALID_PREDICTION_KEYS,
    DepthAccumulator,
    average_depth_metrics,
    crop_mask,
    depth_metrics,
    kb_crop,
)
from .depth_files import DATASET_PRESETS, evaluate_depth_dirs, read_depth, write_metrics_json
from .knn import (
    DEFAULT_WEIGHT_DECAYS,
    KnnResult,
    LabelledFeatures,
    evaluate_folder,
    fit_linear,
    folder_features,
    folder_split_features,
    knn_accuracy,
    knn_classify,
    linear_probe,
    list_image_folder,
    stratified_split,
    topk_accuracy,
)
from .segmentation import SegmentationAccumulator, format_table, intersect_and_union, segmentation_metrics

__all__ = [
    "CLIPPED_PREDICTION_KEYS",
    "DATASET_PRESETS",
    "DEFAULT_WEIGHT_DECAYS",
    "DEPTH_METRIC_KEYS",
    "DepthAccumulator",
    "DepthMetric",
    "INVALID_PREDICTION_KEYS",
    "KnnResult",
    "LabelledFeatures",
    "SegMetric",
    "SegmentationAccumulator",
    "average_depth_metrics",
    "crop_mask",
    "depth_metrics",
    "evaluate_depth_dirs",
    "evaluate_folder",
    "fit_linear",
    "folder_features",
    "folder_split_features",
    "format_table",
    "intersect_and_union",
    "kb_crop",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "list_image_folder",
    "read_depth",
    "segmentation_metrics",
    "stratified_split",
    "topk_accuracy",
    "write_metrics_json",
]


def __getattr__(name: str):
    if name in ("SegMetric", "DepthMetric"):
        from . import mmengine_metrics

        return getattr(mmengine_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
