"""The segmentation and depth metrics as mmengine metrics (``BaseMetric``), for Runner evaluation.

Both are registered in mmengine's root ``METRICS`` registry, so a config can say
``val_evaluator = dict(type="SegMetric", num_classes=150)`` under any default scope (scoped child
registries fall back to the root). Registration uses ``force=True``, so importing this module
twice (or reloading it) is harmless.

Each data sample (a dict; mmengine's ``Evaluator`` turns data elements into dicts) carries the
prediction and the ground truth:

- ``SegMetric``: ``pred_sem_seg`` and ``gt_sem_seg``, integer ``(H, W)`` or ``(1, H, W)`` tensors,
  or mmseg-style ``{"data": tensor}`` dicts.
- ``DepthMetric``: ``pred_depth`` and ``gt_depth``, float ``(H, W)`` or ``(1, H, W)`` (mmseg's
  ``pred_depth_map`` / ``gt_depth_map`` are accepted too).

A ground truth missing from the sample is looked up in ``data_batch["data_samples"][i]``.
``process`` keeps one small record per image (``(4, C)`` int64 areas for segmentation; for depth
the nine floats and the invalid-prediction counts), never the maps, so collecting results across
ranks stays cheap, and mmengine's ``size`` truncation of padded duplicates (one record per sample)
stays correct.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from mmengine.evaluator import BaseMetric
from mmengine.logging import print_log
from mmengine.registry import METRICS

from .depth import (
    CLIPPED_PREDICTION_PREFIX,
    DEPTH_METRIC_KEYS,
    GROUND_TRUTH_PREFIX,
    INVALID_PREDICTION_PREFIX,
    _check_args,
    _check_crop,
    _evaluate_image,
    average_depth_metrics,
    ground_truth_warning,
    sum_clipped_predictions,
    sum_ground_truth,
    sum_invalid_predictions,
)
from .segmentation import format_table, intersect_and_union, metrics_from_areas

__all__ = ["DepthMetric", "SegMetric"]


def _field(sample: dict, keys: Sequence[str], data_batch, index: int, what: str):
    """The first of ``keys`` in the sample (or in the batch's data sample), unwrapped to a tensor/array."""
    sources = [sample]
    if isinstance(data_batch, dict) and isinstance(data_batch.get("data_samples"), Sequence):
        if index < len(data_batch["data_samples"]):
            extra = data_batch["data_samples"][index]
            sources.append(extra.to_dict() if hasattr(extra, "to_dict") else extra)
    for src in sources:
        if not isinstance(src, dict):
            continue
        for key in keys:
            if key in src and src[key] is not None:
                value = src[key]
                if isinstance(value, dict):  # PixelData.to_dict() -> {"data": tensor}
                    value = value.get("data")
                elif hasattr(value, "data") and not hasattr(value, "shape"):
                    value = value.data
                return value
    raise KeyError(f"data sample {index} has no {what} (looked for {list(keys)} in the sample and in "
                   f"data_batch['data_samples']); available keys: {sorted(sample) if isinstance(sample, dict) else type(sample)}")


def _squeeze(x):
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    return x


@METRICS.register_module(force=True)
class SegMetric(BaseMetric):
    """aAcc, mIoU, mAcc (percent) over the data set, mmseg ``IoUMetric`` conventions.

    The per-class IoU / Acc table is logged through mmengine's current logger. Class names come
    from ``class_names`` or, failing that, ``dataset_meta["classes"]``.

    Args:
        num_classes: number of classes.
        ignore_index: ground-truth value not evaluated (255).
        class_names: optional names for the table.
        collect_device, prefix, collect_dir: as in ``mmengine.evaluator.BaseMetric``.
    """

    default_prefix = ""  # metric names stay "mIoU" etc., as mmseg reports them

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None,
                 collect_device: str = "cpu", prefix: str | None = None, collect_dir: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.class_names = list(class_names) if class_names is not None else None

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for i, sample in enumerate(data_samples):
            pred = _squeeze(_field(sample, ("pred_sem_seg",), data_batch, i, "prediction"))
            gt = _squeeze(_field(sample, ("gt_sem_seg",), data_batch, i, "ground truth"))
            self.results.append(intersect_and_union(pred, gt, self.num_classes, self.ignore_index))

    def compute_metrics(self, results: list) -> dict:
        areas = np.sum(np.stack([np.asarray(r) for r in results]), axis=0) if results else \
            np.zeros((4, self.num_classes), np.int64)
        res = metrics_from_areas(areas)
        names = self.class_names or (self.dataset_meta or {}).get("classes")
        if names is not None and len(names) != self.num_classes:
            names = None
        print_log("per-class results:\n" + format_table(res, names), logger="current")
        return {k: res[k] for k in ("aAcc", "mIoU", "mAcc")}


@METRICS.register_module(force=True)
class DepthMetric(BaseMetric):
    """Per-image depth metrics averaged over images (see :mod:`dinov2_dense.evaluation.depth`).

    Returns the nine metrics plus ``count`` (images with valid pixels) and the invalid-prediction
    counts ``invalid_pred_nonfinite_pixels``, ``invalid_pred_negative_pixels``,
    ``invalid_pred_zero_pixels``, ``invalid_pred_images``, ``invalid_pred_all_zero_images`` (on the
    evaluated pixels, before clipping; see :mod:`dinov2_dense.evaluation.depth`), which are also
    logged as a warning when not zero, and ``clipped_pred_below_min_pixels`` and
    ``clipped_pred_above_max_pixels`` (finite positive pixels the clipping moves; logged when not
    zero). Images without a valid pixel are skipped and their number is logged. ``gt_measured_pixels``
    and ``gt_outside_range_pixels`` count the measured ground truth (inside the crop) and what of it lies
    outside the range and is not evaluated; more than a tenth outside is logged as a warning (wrong units).

    Args:
        min_depth, max_depth, crop, median_scaling, silog, resize: as in ``depth_metrics``.
        collect_device, prefix, collect_dir: as in ``mmengine.evaluator.BaseMetric``.
    """

    default_prefix = ""
    #: where the ground truth's units are set, for the warning of a ground truth mostly out of range
    scale_option = "the data set's depth_scale"

    def __init__(self, min_depth: float = 1e-3, max_depth: float = 10.0, crop=None, median_scaling: bool = False,
                 silog: str = "toolbox", resize: bool = False, collect_device: str = "cpu",
                 prefix: str | None = None, collect_dir: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix, collect_dir=collect_dir)
        self.kwargs = dict(min_depth=min_depth, max_depth=max_depth, crop=_check_crop(crop),
                           median_scaling=median_scaling, silog=silog, resize=resize)
        _check_args(min_depth, max_depth, silog)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        for i, sample in enumerate(data_samples):
            pred = _field(sample, ("pred_depth", "pred_depth_map"), data_batch, i, "prediction")
            gt = _field(sample, ("gt_depth", "gt_depth_map"), data_batch, i, "ground truth")
            self.results.append(_evaluate_image(pred, gt, **self.kwargs))  # (metrics, invalid counts)

    def compute_metrics(self, results: list) -> dict:
        out = average_depth_metrics([metrics for metrics, _ in results])
        invalid = sum_invalid_predictions([counts for _, counts in results])
        print_log("depth: " + "  ".join(f"{k}: {out[k]:.4f}" for k in DEPTH_METRIC_KEYS)
                  + f"  (images: {out['count']}, skipped without valid pixels: {out['skipped']})", logger="current")
        if invalid["images"]:
            print_log(f"depth: invalid predictions on evaluated pixels in {invalid['images']} of {out['count']} "
                      f"image(s), clipped to [{self.kwargs['min_depth']:g}, {self.kwargs['max_depth']:g}] m: "
                      f"{invalid['nonfinite_pixels']} non-finite, {invalid['negative_pixels']} negative, "
                      f"{invalid['zero_pixels']} zero pixel(s); {invalid['all_zero_images']} image(s) zero on "
                      "every evaluated pixel", logger="current", level=logging.WARNING)
        truth = sum_ground_truth([counts for _, counts in results])
        if warning := ground_truth_warning(truth, self.kwargs["min_depth"], self.kwargs["max_depth"],
                                           self.scale_option):
            print_log(f"depth: {warning}", logger="current", level=logging.WARNING)
        clipped = sum_clipped_predictions([counts for _, counts in results])
        if any(clipped.values()):
            print_log(f"depth: {clipped['below_min_pixels']} prediction pixel(s) below {self.kwargs['min_depth']:g} m "
                      f"and {clipped['above_max_pixels']} above {self.kwargs['max_depth']:g} m clipped to the range",
                      logger="current")
        out.pop("skipped")
        out.update({INVALID_PREDICTION_PREFIX + k: v for k, v in invalid.items()})
        out.update({CLIPPED_PREDICTION_PREFIX + k: v for k, v in clipped.items()})
        out.update({GROUND_TRUTH_PREFIX + k: v for k, v in truth.items()})
        return out
