"""Monocular depth metrics: abs_rel, sq_rel, rmse, rmse_log, log10, d1, d2, d3, silog.

Conventions (those of the depth toolboxes that produced the DINOv2 numbers:
Monocular-Depth-Estimation-Toolbox, BTS, AdaBins):

- Metrics are computed **per image**, then averaged over images (not pooled over all pixels).
- Valid pixels: ``min_depth < gt < max_depth`` (so zero, negative, NaN and inf ground truth are
  invalid), compared in the ground truth's precision (float32 ground truth, as the toolbox reads it,
  against float32 bounds), intersected with the evaluation crop. The measured ground-truth pixels
  outside the range are counted (:data:`GROUND_TRUTH_KEYS`), and a share above a tenth is warned of.
  An image with no valid pixel gives ``None`` and is skipped by the averaging; the number of images
  averaged is reported as ``count``.
- Crops (a mask on the ground truth, applied after the validity test):
  ``"eigen"``: NYU Eigen crop, rows 45:471, cols 41:601. It is defined in pixels of the original
  480x640 NYU frame only; any other ground-truth size raises ``ValueError`` (evaluate at the
  original resolution, or give an explicit ``(top, bottom, left, right)`` crop).
  ``"garg"``: KITTI Garg crop, rows ``int(0.40810811 H):int(0.99189189 H)``, cols
  ``int(0.03594771 W):int(0.96405229 W)``, of any size (the toolboxes apply it to the
  352x1216 kb-cropped ground truth: see :func:`kb_crop`).
  ``"kitti_eigen"``: the KITTI Eigen crop of the BTS and AdaBins evaluations (their ``eigen_crop`` on
  KITTI), rows ``int(0.3324324 H):int(0.91351351 H)``, cols ``int(0.0359477 W):int(0.96405229 W)``.
  ``(top, bottom, left, right)``: rows ``top:bottom``, cols ``left:right``.
- Optional median scaling for relative depth (Monodepth2 / Zhou et al.): on the valid pixels,
  ``pred *= median(gt) / median(pred)``.
- The prediction is then clipped to ``[min_depth, max_depth]`` (BTS / AdaBins; +inf becomes
  ``max_depth``). The DINOv2 heads already clamp their output to this range, so for them this is
  a no-op. A NaN prediction pixel becomes ``min_depth``, as in the BTS and AdaBins evaluations
  (counted with the non-finite pixels; it raised ``ValueError`` before, so one NaN pixel in one map
  stopped a whole evaluation).
- Clipping is the protocol, but it must not hide a broken prediction, so :class:`DepthAccumulator`
  counts, on the evaluated (valid, cropped) pixels only and before median scaling and clipping,
  the prediction pixels that are non-finite (+inf or -inf), negative (finite and < 0) and zero
  (three disjoint classes), the images with any of them, and separately the images whose
  prediction is zero on every evaluated pixel (a blank output). Pixels outside the ground truth's
  valid mask or the crop are not counted. See :data:`INVALID_PREDICTION_KEYS`.
- ``d_k``: fraction of valid pixels with ``max(gt / pred, pred / gt) < 1.25 ** k``;
  ``abs_rel = mean(|gt - pred| / gt)``; ``sq_rel = mean((gt - pred)^2 / gt)``;
  ``rmse = sqrt(mean((gt - pred)^2))``; ``rmse_log = sqrt(mean((log gt - log pred)^2))``;
  ``log10 = mean(|log10 gt - log10 pred|)``; with ``d = log pred - log gt``:
  ``silog="toolbox"``: ``100 * sqrt(mean(d^2) - mean(d)^2)`` (the toolbox, BTS);
  ``silog="depth_anything"``: ``sqrt(mean(d^2) - 0.5 * mean(d)^2)`` (Depth-Anything's
  ``metric_depth/util/metric.py``; no factor 100 there, none here).
- Shapes: ``pred`` and ``gt`` are ``(H, W)`` (leading singleton dims, e.g. ``(1, H, W)``, are
  dropped). If they differ, ``ValueError`` unless ``resize=True``, which resizes the prediction
  bilinearly (``align_corners=False``, as the heads resize to the input) to the ground truth.
- Arithmetic in float64.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DEPTH_METRIC_KEYS",
    "CLIPPED_PREDICTION_KEYS",
    "INVALID_PREDICTION_KEYS",
    "GROUND_TRUTH_KEYS",
    "DepthAccumulator",
    "average_depth_metrics",
    "ground_truth_warning",
    "crop_mask",
    "depth_metrics",
    "kb_crop",
    "sum_clipped_predictions",
    "sum_ground_truth",
    "sum_invalid_predictions",
]

#: The nine metrics, in the order the tables print them.
DEPTH_METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "d1", "d2", "d3", "silog")
#: Lower is better for all but d1, d2, d3.
HIGHER_IS_BETTER = frozenset({"d1", "d2", "d3"})

NYU_EIGEN_CROP = (45, 471, 41, 601)  # rows top:bottom, cols left:right of a 480x640 frame
NYU_SHAPE = (480, 640)
GARG_FRACTIONS = (0.40810811, 0.99189189, 0.03594771, 0.96405229)
KITTI_EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)  # BTS / AdaBins: eigen_crop on KITTI
CROP_NAMES = ("eigen", "garg", "kitti_eigen")
KB_CROP_SHAPE = (352, 1216)
SILOG_CONVENTIONS = ("toolbox", "depth_anything")
#: Counts of invalid predictions over a data set (on evaluated pixels, before clipping):
#: pixels that are +-inf, negative (finite) or zero; images with any of them; images that are
#: zero on every evaluated pixel (also counted in ``images``). ``DepthAccumulator.compute()``
#: and ``DepthMetric`` report them flat as ``"invalid_pred_" + key``.
INVALID_PREDICTION_KEYS = ("nonfinite_pixels", "negative_pixels", "zero_pixels", "images", "all_zero_images")
INVALID_PREDICTION_PREFIX = "invalid_pred_"
#: Finite positive prediction pixels that the clipping to ``[min_depth, max_depth]`` changes (on the
#: evaluated pixels, after median scaling): not invalid (any model's output may reach past the
#: range), but a count near the image's size says the units are wrong (millimetres read as metres).
#: Reported flat as ``"clipped_pred_" + key``.
CLIPPED_PREDICTION_KEYS = ("below_min_pixels", "above_max_pixels")
CLIPPED_PREDICTION_PREFIX = "clipped_pred_"
#: Measured ground-truth pixels (finite, positive, inside the crop) and those of them outside
#: ``(min_depth, max_depth)``, which are not evaluated: a large share says the ground truth was read in
#: the wrong units (a wrong ``--gt-scale`` / ``depth_scale``), which would otherwise only drop pixels.
#: Reported flat as ``"gt_" + key``; more than :data:`GROUND_TRUTH_WARN_SHARE` outside is warned of.
GROUND_TRUTH_KEYS = ("measured_pixels", "outside_range_pixels")
GROUND_TRUTH_PREFIX = "gt_"
GROUND_TRUTH_WARN_SHARE = 0.1


def _as_depth_map(x, name: str) -> np.ndarray:
    """A float64 ``(H, W)`` numpy array from an array or tensor of shape (H, W), (1, H, W), ..."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    while x.ndim > 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise ValueError(f"{name} must be one depth map of shape (H, W) or (1, H, W), got shape {x.shape}")
    return x


def _check_crop(crop):
    if crop is None or (isinstance(crop, str) and crop.lower() == "none"):
        return None
    if isinstance(crop, str):
        if crop not in CROP_NAMES:
            raise ValueError(f"unknown crop {crop!r}; use None, 'eigen', 'garg', 'kitti_eigen' or (top, bottom, left, "
                             "right)")
        return crop
    crop = tuple(int(v) for v in crop)
    if len(crop) != 4:
        raise ValueError(f"a crop is (top, bottom, left, right), got {crop}")
    return crop


def _check_args(min_depth: float, max_depth: float, silog: str) -> None:
    if silog not in SILOG_CONVENTIONS:
        raise ValueError(f"unknown silog convention {silog!r}; use one of {SILOG_CONVENTIONS}")
    if not 0 <= min_depth < max_depth:
        raise ValueError(f"need 0 <= min_depth < max_depth, got min_depth={min_depth}, max_depth={max_depth}")


def crop_mask(shape: tuple[int, int], crop) -> np.ndarray | None:
    """The boolean evaluation mask of ``crop`` on a ``(H, W)`` ground truth, or None for no crop.

    See the module docstring for the ``"eigen"``, ``"garg"`` and ``"kitti_eigen"`` crops.
    """
    crop = _check_crop(crop)
    if crop is None:
        return None
    h, w = shape
    if crop == "eigen":
        if (h, w) != NYU_SHAPE:
            raise ValueError(
                f"the NYU Eigen crop (rows 45:471, cols 41:601) is defined on 480x640 ground truth, got {h}x{w}; "
                "evaluate at the original resolution (resize the prediction to the ground truth), "
                "or turn the crop off (`--crop none` in eval-depth, val_evaluator.crop=None / test_evaluator.crop=None "
                "in a config, crop=None in Python) "
                "or, in Python, give an explicit crop=(top, bottom, left, right)"
                + ("; for KITTI, the Eigen crop of the BTS and AdaBins evaluations is 'kitti_eigen' (`--crop "
                   "kitti_eigen`)" if w > 2 * h else ""))
        top, bottom, left, right = NYU_EIGEN_CROP
    elif crop in ("garg", "kitti_eigen"):
        ft, fb, fl, fr = GARG_FRACTIONS if crop == "garg" else KITTI_EIGEN_FRACTIONS
        top, bottom, left, right = int(ft * h), int(fb * h), int(fl * w), int(fr * w)
    else:
        top, bottom, left, right = crop
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ValueError(f"crop (top, bottom, left, right) = {crop} does not fit a {h}x{w} depth map")
    mask = np.zeros((h, w), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def depth_png_units(depth: np.ndarray, scale: float, option: str = "depth_scale") -> np.ndarray:
    """Depth in metres as the values of a 16-bit depth PNG: ``depth x scale`` (e.g. 1000 for millimetres,
    256 for KITTI) rounded, negatives 0; a ValueError, naming ``option`` (the setting that gives ``scale``),
    where a depth does not fit."""
    units = np.round(depth * scale)
    if units.max(initial=0) > 65535:
        raise ValueError(f"depth up to {float(np.max(depth)):.1f} m does not fit a 16-bit PNG at {option}={scale:g} "
                         f"(units per metre); use a smaller {option}")
    return np.clip(units, 0, 65535).astype(np.uint16)


def kb_crop_origin(h: int, w: int, height: int = KB_CROP_SHAPE[0], width: int = KB_CROP_SHAPE[1]) -> tuple[int, int]:
    """(top, left) of the KITTI benchmark crop of an (h, w) frame: the bottom ``height`` rows and the
    centred ``width`` columns, as in the toolboxes (``top = H - 352``, ``left = (W - 1216) // 2``)."""
    if h < height or w < width:
        raise ValueError(f"kb-crop needs a frame of at least {width}x{height} (WxH), got {w}x{h}")
    return h - height, (w - width) // 2


def kb_crop(depth, height: int = KB_CROP_SHAPE[0], width: int = KB_CROP_SHAPE[1]):
    """KITTI benchmark crop (:func:`kb_crop_origin`) of ``(..., H, W)`` arrays or tensors; a map
    already 352x1216 is returned unchanged."""
    top, left = kb_crop_origin(*depth.shape[-2:], height, width)
    return depth[..., top:top + height, left:left + width]


def _resize_bilinear(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(pred)[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def depth_metrics(
    pred,
    gt,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 10.0,
    crop=None,
    median_scaling: bool = False,
    silog: str = "toolbox",
    resize: bool = False,
) -> dict[str, float] | None:
    """The nine depth metrics of ONE image, or None when it has no valid ground-truth pixel.

    Args:
        pred: predicted depth in metres, ``(H, W)`` or ``(1, H, W)``, numpy or torch.
        gt: ground-truth depth in metres, same layout; values outside ``(min_depth, max_depth)``
            (zero = no measurement) are not evaluated.
        min_depth, max_depth: the valid range (NYU 1e-3..10, KITTI 1e-3..80); the prediction is
            clipped to it (inf, negative and zero predictions included: this function returns the
            metrics only; :class:`DepthAccumulator` also counts such pixels).
        crop: None, ``"eigen"`` (NYU, 480x640 only), ``"garg"`` (KITTI), ``"kitti_eigen"`` (KITTI, BTS and
            AdaBins) or ``(top, bottom, left, right)``.
        median_scaling: scale the prediction by ``median(gt) / median(pred)`` on valid pixels
            (relative-depth models).
        silog: ``"toolbox"`` (x100, variance of d) or ``"depth_anything"`` (lambda 0.5, no x100).
        resize: resize a prediction of another size bilinearly to the ground truth instead of raising.

    Returns:
        ``{"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "d1", "d2", "d3", "silog"}`` as floats
        (d1..d3 as fractions in [0, 1]), or None if no pixel is valid.
    """
    _check_args(min_depth, max_depth, silog)
    selected, _ = _valid_pixels(pred, gt, min_depth=min_depth, max_depth=max_depth, crop=crop, resize=resize)
    if selected is None:
        return None
    return _scores(*selected, min_depth=min_depth, max_depth=max_depth, median_scaling=median_scaling, silog=silog)


def _valid_pixels(pred, gt, *, min_depth: float, max_depth: float, crop, resize: bool):
    """``((pred, gt) on the valid pixels (1-D float64), or None when no pixel is valid; the ground truth's
    counts, :data:`GROUND_TRUTH_KEYS`)``: the measured pixels inside the crop (finite, positive: zero is
    no measurement) and those of them outside ``(min_depth, max_depth)``, which are not evaluated.

    Raises ``ValueError`` for mismatched shapes (without ``resize``).
    """
    in_range = _in_range(gt, min_depth, max_depth)
    pred, gt = _as_depth_map(pred, "pred"), _as_depth_map(gt, "gt")
    if pred.shape != gt.shape:
        if not resize:
            raise ValueError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}; resize the "
                             "prediction to the ground truth first, or resize it bilinearly: --resize (eval-depth), resize=True (Python)")
        pred = _resize_bilinear(pred, gt.shape)

    valid = in_range.reshape(gt.shape)
    with np.errstate(invalid="ignore"):
        measured = np.isfinite(gt) & (gt > 0)
    mask = crop_mask(gt.shape, crop)
    if mask is not None:
        valid &= mask
        measured &= mask
    truth = {"measured_pixels": int(np.count_nonzero(measured)),
             "outside_range_pixels": int(np.count_nonzero(measured & ~valid))}
    if not valid.any():
        return None, truth
    return (pred[valid], gt[valid]), truth


def _in_range(gt, min_depth: float, max_depth: float) -> np.ndarray:
    """``min_depth < gt < max_depth``, compared in the ground truth's own precision: float32 ground truth
    (the data sets', and the toolbox's ``astype(np.float32) / scale``) against float32 bounds, as the
    toolbox compares, so that a stored value of exactly ``min_depth`` (1 mm on NYU: 0.0010000000475 in
    float32) is invalid whether it was read in float32 (``test``) or float64 (``eval-depth``)."""
    if isinstance(gt, torch.Tensor):
        gt = gt.detach().cpu()
        gt = gt.numpy() if gt.dtype in (torch.float32, torch.float64) else gt.double().numpy()
    gt = np.asarray(gt)
    dtype = np.float32 if gt.dtype == np.float32 else np.float64
    gt = gt.astype(dtype, copy=False)
    with np.errstate(invalid="ignore"):
        return np.asarray((gt > dtype(min_depth)) & (gt < dtype(max_depth)))


def ground_truth_warning(counts: dict[str, int], min_depth: float, max_depth: float, scale_option: str) -> str | None:
    """A warning when more than a tenth of the measured ground-truth pixels lie outside the range (summed
    :data:`GROUND_TRUTH_KEYS`): they are not evaluated, and so many say the ground truth's units are
    wrong (``scale_option``: where they are set); None otherwise."""
    measured, outside = counts["measured_pixels"], counts["outside_range_pixels"]
    if measured == 0 or outside <= GROUND_TRUTH_WARN_SHARE * measured:
        return None
    return (f"{outside} of the {measured} measured ground-truth pixels ({100.0 * outside / measured:.1f}%) lie outside "
            f"({min_depth:g}, {max_depth:g}) m and are not evaluated: wrong units ({scale_option}) or depth range?")


def _invalid_counts(pred: np.ndarray) -> dict[str, int]:
    """Invalid values among the evaluated prediction pixels ``pred`` (1-D, non-empty; NaN is non-finite)."""
    finite = np.isfinite(pred)
    zero = int(np.count_nonzero(pred == 0))
    counts = {"nonfinite_pixels": int(pred.size - np.count_nonzero(finite)),
              "negative_pixels": int(np.count_nonzero(finite & (pred < 0))),
              "zero_pixels": zero}
    counts["images"] = int(any(counts.values()))
    counts["all_zero_images"] = int(zero == pred.size)
    return counts


def _median_scaled(pred: np.ndarray, gt: np.ndarray, median_scaling: bool) -> np.ndarray:
    if not median_scaling:
        return pred
    med = float(np.nanmedian(pred))  # (NaN pixels become min_depth after the scaling)
    if not (math.isfinite(med) and med > 0):
        raise ValueError(f"median scaling needs a positive finite median prediction, got {med}")
    return pred * (float(np.median(gt)) / med)


def _clipped_counts(pred: np.ndarray, min_depth: float, max_depth: float) -> dict[str, int]:
    """Finite positive pixels of ``pred`` (1-D, scaled) outside ``[min_depth, max_depth]``."""
    finite = np.isfinite(pred)
    return {"below_min_pixels": int(np.count_nonzero(finite & (pred > 0) & (pred < min_depth))),
            "above_max_pixels": int(np.count_nonzero(finite & (pred > max_depth)))}


def _scores(pred: np.ndarray, gt: np.ndarray, *, min_depth: float, max_depth: float, median_scaling: bool,
            silog: str) -> dict[str, float]:
    """The nine metrics on valid pixels (1-D arrays from :func:`_valid_pixels`)."""
    pred = np.clip(_median_scaled(pred, gt, median_scaling), min_depth, max_depth)  # +inf -> max_depth
    pred[np.isnan(pred)] = min_depth  # as BTS and AdaBins
    if min_depth == 0:  # keep logs and ratios finite for a zero prediction
        pred = np.maximum(pred, np.finfo(np.float64).tiny)

    thresh = np.maximum(gt / pred, pred / gt)
    diff, d = gt - pred, np.log(pred) - np.log(gt)
    # mean(d^2) - mean(d)^2 computed as var(d), which does not cancel catastrophically
    mean_d, var_d = float(d.mean()), float(d.var())
    si = 100.0 * math.sqrt(var_d) if silog == "toolbox" else math.sqrt(var_d + 0.5 * mean_d**2)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / gt)),
        "sq_rel": float(np.mean(diff**2 / gt)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean(d**2))),
        "log10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
        "d1": float(np.mean(thresh < 1.25)),
        "d2": float(np.mean(thresh < 1.25**2)),
        "d3": float(np.mean(thresh < 1.25**3)),
        "silog": si,
    }


def _evaluate_image(pred, gt, *, min_depth: float = 1e-3, max_depth: float = 10.0, crop=None,
                    median_scaling: bool = False, silog: str = "toolbox", resize: bool = False):
    """``(metrics, counts)`` of one image (``counts``: :data:`INVALID_PREDICTION_KEYS`,
    :data:`CLIPPED_PREDICTION_KEYS`, :data:`GROUND_TRUTH_KEYS` and ``pixels``, the evaluated pixels);
    ``(None, counts)`` when no pixel is valid (the counts then all zero but the ground truth's)."""
    selected, truth = _valid_pixels(pred, gt, min_depth=min_depth, max_depth=max_depth, crop=crop, resize=resize)
    if selected is None:
        return None, {**dict.fromkeys(INVALID_PREDICTION_KEYS + CLIPPED_PREDICTION_KEYS, 0), **truth, "pixels": 0}
    pred, gt = selected
    scaled = _median_scaled(pred, gt, median_scaling)
    scores = _scores(scaled, gt, min_depth=min_depth, max_depth=max_depth, median_scaling=False, silog=silog)
    counts = _invalid_counts(pred) | _clipped_counts(scaled, min_depth, max_depth) | truth
    counts["pixels"] = int(selected[0].size)  # evaluated
    return scores, counts


def average_depth_metrics(per_image: Iterable[dict | None]) -> dict:
    """Mean over images of each metric; None entries (no valid pixel) are skipped and counted.

    Returns the nine metrics plus ``count`` (images averaged) and ``skipped``. With no image
    to average, the metrics are NaN and ``count`` is 0.
    """
    per_image = list(per_image)
    kept = [r for r in per_image if r is not None]
    out = {k: (float(np.mean([r[k] for r in kept])) if kept else math.nan) for k in DEPTH_METRIC_KEYS}
    out["count"] = len(kept)
    out["skipped"] = len(per_image) - len(kept)
    return out


def sum_invalid_predictions(per_image: Iterable[dict | None]) -> dict[str, int]:
    """Sum per-image invalid-prediction counts (None entries: images without a valid pixel)."""
    return _sum_counts(per_image, INVALID_PREDICTION_KEYS)


def sum_clipped_predictions(per_image: Iterable[dict | None]) -> dict[str, int]:
    """Sum per-image counts of out-of-range predictions (:data:`CLIPPED_PREDICTION_KEYS`)."""
    return _sum_counts(per_image, CLIPPED_PREDICTION_KEYS)


def sum_ground_truth(per_image: Iterable[dict | None]) -> dict[str, int]:
    """Sum per-image ground-truth counts (:data:`GROUND_TRUTH_KEYS`)."""
    return _sum_counts(per_image, GROUND_TRUTH_KEYS)


def _sum_counts(per_image: Iterable[dict | None], keys: tuple[str, ...]) -> dict[str, int]:
    total = dict.fromkeys(keys, 0)
    for counts in per_image:
        if counts is not None:
            for k in keys:
                total[k] += counts[k]
    return total


class DepthAccumulator:
    """Per-image depth metrics, averaged over images (the toolbox convention).

    >>> acc = DepthAccumulator(max_depth=10.0, crop="eigen")
    >>> for pred, gt in pairs:
    ...     acc.update(pred, gt)
    >>> acc.compute()  # {"abs_rel": ..., ..., "silog": ..., "count": n, "skipped": k, "invalid_pred_...": ...}

    Keyword arguments are those of :func:`depth_metrics` and are checked here. Besides the metrics,
    :meth:`compute` reports the invalid predictions that the clipping hides (module docstring):
    ``invalid_pred_nonfinite_pixels``, ``invalid_pred_negative_pixels``, ``invalid_pred_zero_pixels``,
    ``invalid_pred_images`` and ``invalid_pred_all_zero_images``; :meth:`invalid_predictions` gives
    them without the prefix, and ``per_image_invalid`` per image.
    """

    def __init__(self, **depth_metric_kwargs) -> None:
        self.kwargs = dict(depth_metric_kwargs)
        unknown = set(self.kwargs) - {"min_depth", "max_depth", "crop", "median_scaling", "silog", "resize"}
        if unknown:
            raise TypeError(f"unknown depth metric argument(s): {sorted(unknown)}")
        _check_args(self.kwargs.get("min_depth", 1e-3), self.kwargs.get("max_depth", 10.0),
                    self.kwargs.get("silog", "toolbox"))
        self.kwargs["crop"] = _check_crop(self.kwargs.get("crop"))
        self.reset()

    def reset(self) -> None:
        self.per_image: list[dict | None] = []
        self.per_image_invalid: list[dict | None] = []

    def update(self, pred, gt) -> dict | None:
        """Evaluate one image; returns its metrics (None if it has no valid pixel)."""
        result, counts = _evaluate_image(pred, gt, **self.kwargs)
        self.per_image.append(result)
        self.per_image_invalid.append(counts)
        return result

    def invalid_predictions(self) -> dict[str, int]:
        """The invalid-prediction counts so far, keyed by :data:`INVALID_PREDICTION_KEYS`."""
        return sum_invalid_predictions(self.per_image_invalid)

    def clipped_predictions(self) -> dict[str, int]:
        """The out-of-range counts so far, keyed by :data:`CLIPPED_PREDICTION_KEYS`."""
        return sum_clipped_predictions(self.per_image_invalid)

    def ground_truth(self) -> dict[str, int]:
        """The ground-truth counts so far, keyed by :data:`GROUND_TRUTH_KEYS`."""
        return sum_ground_truth(self.per_image_invalid)

    def compute(self) -> dict:
        """See :func:`average_depth_metrics`; plus the ``invalid_pred_*`` counts (class docstring)."""
        out = average_depth_metrics(self.per_image)
        out.update({INVALID_PREDICTION_PREFIX + k: v for k, v in self.invalid_predictions().items()})
        out.update({CLIPPED_PREDICTION_PREFIX + k: v for k, v in self.clipped_predictions().items()})
        out.update({GROUND_TRUTH_PREFIX + k: v for k, v in self.ground_truth().items()})
        return out
