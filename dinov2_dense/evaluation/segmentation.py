"""Semantic segmentation metrics: aAcc, mIoU, mAcc and a per-class table.

The conventions are those of mmsegmentation's ``IoUMetric``, which produced the DINOv2
segmentation numbers (paper Sec. 7):

- Statistics are accumulated over the whole data set (pooled, not per image): for each class
  ``c``, the pixel counts ``intersect[c] = #(pred == c & gt == c)``, ``pred_area[c]``,
  ``label_area[c]`` and ``union[c] = pred_area[c] + label_area[c] - intersect[c]``.
- Pixels whose ground truth is ``ignore_index`` (255) are skipped, so an image whose pixels are
  all ignored contributes nothing.
- ``IoU[c] = intersect / union``, ``Acc[c] = intersect / label_area``,
  ``aAcc = sum(intersect) / sum(label_area)``.
- A class absent from both the ground truth and the predictions has ``IoU = NaN`` (0 / 0) and is
  left out of the mean (``nanmean``). A class that is predicted but absent from the ground truth
  has ``IoU = 0`` and counts in the mean; its ``Acc`` is NaN.
- Everything is reported in percent, as mmseg prints it (no rounding here).

Labels must be integers. A ground-truth label outside ``[0, num_classes)`` that is not the ignore
index, or a prediction outside ``[0, num_classes)`` on a non-ignored pixel, raises ``ValueError``
(mmseg silently drops such predictions; a wrong ``num_classes`` is the usual cause, so we say so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "SegmentationAccumulator",
    "format_table",
    "intersect_and_union",
    "metrics_from_areas",
    "segmentation_metrics",
]


def _as_labels(x, name: str) -> np.ndarray | torch.Tensor:
    """Check that ``x`` holds integer labels; keep CUDA tensors on their device."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.is_complex():
            raise TypeError(f"{name} must hold integer class labels, got a {x.dtype} tensor (use argmax first)")
        return x.detach().long() if x.is_cuda else x.detach().cpu().numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise TypeError(f"{name} must hold integer class labels, got dtype {x.dtype} (use argmax first)")
    return x


def _out_of_range(values, num_classes: int) -> list[int]:
    """The distinct values outside ``[0, num_classes)`` (at most five, for the message)."""
    if isinstance(values, torch.Tensor):
        bad = values[(values < 0) | (values >= num_classes)].unique()[:5].tolist()
    else:
        bad = np.unique(values[(values < 0) | (values >= num_classes)])[:5].tolist()
    return [int(v) for v in bad]


def intersect_and_union(pred, gt, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """Per-class pixel counts of one prediction (or a batch) against its ground truth.

    Args:
        pred: predicted labels, numpy array or tensor of any shape, e.g. ``(H, W)`` or ``(B, H, W)``.
        gt: ground-truth labels of the same shape; ``ignore_index`` marks pixels to skip.
        num_classes: number of classes ``C``.
        ignore_index: the ground-truth value that is not evaluated (mmseg: 255).

    Returns:
        ``(4, C)`` int64 array: area_intersect, area_union, area_pred, area_label.
    """
    pred, gt = _as_labels(pred, "pred"), _as_labels(gt, "gt")
    if tuple(pred.shape) != tuple(gt.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != ground-truth shape {tuple(gt.shape)}; "
                         "resize the prediction to the ground truth (nearest) before evaluation")
    is_torch = isinstance(gt, torch.Tensor)
    if is_torch != isinstance(pred, torch.Tensor):  # one CUDA tensor, one host array
        pred, gt = (x.cpu().numpy() if isinstance(x, torch.Tensor) else x for x in (pred, gt))
        is_torch = False
    keep = gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    bad = _out_of_range(gt, num_classes)
    if bad:
        raise ValueError(f"ground-truth label(s) {bad} outside [0, {num_classes}) and not the ignore index "
                         f"{ignore_index}; check num_classes, reduce_zero_label or the ignore index")
    bad = _out_of_range(pred, num_classes)
    if bad:
        raise ValueError(f"predicted label(s) {bad} outside [0, {num_classes}) on evaluated pixels; "
                         "check num_classes of the head and of the metric")
    if is_torch:
        count = lambda v: torch.bincount(v, minlength=num_classes).cpu().numpy()  # noqa: E731
    else:
        gt, pred = gt.astype(np.int64, copy=False), pred.astype(np.int64, copy=False)
        count = lambda v: np.bincount(v, minlength=num_classes)  # noqa: E731
    inter, area_pred, area_label = count(gt[gt == pred]), count(pred), count(gt)
    out = np.stack([inter, area_pred + area_label - inter, area_pred, area_label]).astype(np.int64)
    return out


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in float64, NaN where den == 0, without warnings."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def metrics_from_areas(areas: np.ndarray) -> dict:
    """aAcc, mIoU, mAcc (percent) and per-class IoU / Acc from summed ``(4, C)`` areas.

    Returns a dict with the scalars ``aAcc``, ``mIoU``, ``mAcc`` (floats, percent; NaN when
    nothing was evaluated), the ``(C,)`` float arrays ``IoU`` and ``Acc`` (percent, NaN where
    undefined) and the ``(C,)`` int64 arrays ``area_intersect``, ``area_union``, ``area_pred``,
    ``area_label``.
    """
    inter, union, area_pred, area_label = np.asarray(areas, np.int64)
    iou, acc = 100 * _div(inter, union), 100 * _div(inter, area_label)
    return {
        "aAcc": float(100 * _div(inter.sum(), area_label.sum())),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "IoU": iou,
        "Acc": acc,
        "area_intersect": inter,
        "area_union": union,
        "area_pred": area_pred,
        "area_label": area_label,
    }


class SegmentationAccumulator:
    """Accumulates per-class pixel counts over a data set (mmseg ``IoUMetric`` conventions).

    >>> acc = SegmentationAccumulator(num_classes=150)
    >>> for pred, gt in pairs:          # (H, W) integer arrays or tensors
    ...     acc.update(pred, gt)
    >>> acc.compute()["mIoU"]           # percent

    Args:
        num_classes: number of classes ``C``.
        ignore_index: ground-truth value that is skipped (255 in the official protocols).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.ignore_index = int(num_classes), ignore_index
        self.reset()

    def reset(self) -> None:
        self.areas = np.zeros((4, self.num_classes), np.int64)
        self.num_images = 0

    def update(self, pred, gt) -> np.ndarray:
        """Add one prediction (or a batch of the same shape as ``gt``); returns its ``(4, C)`` areas."""
        areas = intersect_and_union(pred, gt, self.num_classes, self.ignore_index)
        self.areas += areas
        self.num_images += 1
        return areas

    def compute(self) -> dict:
        """The metrics of everything seen so far (see :func:`metrics_from_areas`)."""
        return metrics_from_areas(self.areas)


def segmentation_metrics(preds: Sequence, gts: Sequence, num_classes: int, ignore_index: int = 255) -> dict:
    """aAcc, mIoU, mAcc and per-class IoU / Acc (percent) of a list of predictions against ground truths."""
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predictions but {len(gts)} ground-truth maps")
    acc = SegmentationAccumulator(num_classes, ignore_index)
    for pred, gt in zip(preds, gts):
        acc.update(pred, gt)
    return acc.compute()


def format_table(results: dict, class_names: Sequence[str] | None = None, digits: int = 2) -> str:
    """A printable per-class table (class, IoU, Acc in percent) followed by aAcc / mIoU / mAcc.

    Classes absent from both ground truth and predictions show ``nan`` (excluded from the means).
    """
    iou, acc = np.asarray(results["IoU"]), np.asarray(results["Acc"])
    if class_names is None:
        class_names = [str(i) for i in range(len(iou))]
    if len(class_names) != len(iou):
        raise ValueError(f"{len(class_names)} class names for {len(iou)} classes")
    fmt = lambda v: "nan" if math.isnan(v) else f"{v:.{digits}f}"  # noqa: E731
    rows = [(str(n), fmt(i), fmt(a)) for n, i, a in zip(class_names, iou, acc)]
    w = [max(len(r[k]) for r in [("Class", "IoU", "Acc"), *rows]) for k in range(3)]
    line = "+" + "+".join("-" * (x + 2) for x in w) + "+"
    row = lambda r: "| " + r[0].ljust(w[0]) + " | " + r[1].rjust(w[1]) + " | " + r[2].rjust(w[2]) + " |"  # noqa: E731
    body = [line, row(("Class", "IoU", "Acc")), line, *map(row, rows), line]
    body.append("  ".join(f"{k}: {fmt(results[k])}" for k in ("aAcc", "mIoU", "mAcc")))
    return "\n".join(body)
