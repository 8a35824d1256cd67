"""Evaluate saved depth maps against ground truth on disk (the library behind ``dinov2-dense eval-depth``,
whose options live in ``dinov2_dense.cli``).

Files: 16-bit single-channel PNGs (or TIFFs), where ``value / scale`` is metres (NYU-Depth v2: 1000,
KITTI: 256; 0 = no measurement), ``.npy`` arrays of floats already in metres (no scale applied),
or ``.npy`` arrays of integers in the same units as the PNGs (divided by the scale).
Predictions are matched to ground truth by name: first by the path relative to each directory
without its extension (``drive_1/0005`` matches ``drive_1/0005``), and if nothing matches that
way, by file stem alone (flat prediction folders against nested ground truth; a stem that occurs
twice is then an error). Files on only one side are reported (``strict=True`` makes them an error);
no match at all is an error.

Dataset presets (from dinov2_dense.settings): see :data:`DATASET_PRESETS`. KITTI ground truth
is kb-cropped to 352x1216 before the Garg crop, as in the toolboxes; a prediction of the raw
ground-truth size is kb-cropped with it, one of the crop's size is taken as it is, and with
``resize=True`` one of another size is resized to the raw frame, then cropped, when it has the
frame's aspect ratio, or resized onto the crop when it has the crop's. Against ground truth that
is kb-cropped already, a prediction of a whole frame at a raw frame's size (370-376 x 1224-1242) is
kb-cropped as it was; one of a frame's shape at another size is refused (its place on the crop is not known).
Hidden files and folders (names starting with ".") are not read.

Predictions are clipped to the depth range (the protocol), but never silently: non-finite,
negative and zero prediction pixels on the evaluated pixels, and predictions that are zero on
every evaluated pixel, are counted (:class:`DepthDirReport`), printed as warnings and written to
the JSON (:func:`depth_results_json`); so are the finite positive pixels below or above the range.

"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


from ..fileio import files_below, write_json
from ..images import DEPTH_EXTENSIONS, read_depth
from ..settings import DATASET_SETTINGS
from .depth import (CLIPPED_PREDICTION_KEYS, DEPTH_METRIC_KEYS, GROUND_TRUTH_KEYS, INVALID_PREDICTION_KEYS, KB_CROP_SHAPE, DepthAccumulator, _resize_bilinear,
                    kb_crop)

__all__ = [
    "DATASET_PRESETS",
    "DepthDirReport",
    "depth_results_json",
    "eval_depth_options",
    "evaluate_depth_dirs",
    "format_depth_table",
    "match_depth_files",
    "read_depth",
    "write_metrics_json",
]

#: Evaluation settings per data set; ``gt_scale`` None means "must be given for PNGs".
def _preset(name: str) -> dict:
    d = DATASET_SETTINGS[name]
    return dict(min_depth=d.min_depth, max_depth=d.max_depth, crop=d.eval_crop, gt_scale=d.depth_scale,
                kb_crop=d.kb_crop)


DATASET_PRESETS: dict[str, dict] = {
    "nyu": _preset("nyu"),
    "kitti": _preset("kitti"),
    "folder": dict(min_depth=1e-3, max_depth=10.0, crop=None, gt_scale=None, kb_crop=False),
}
KITTI_FRAME_SHAPE = (375, 1242)  # the most common raw KITTI frame (others: 370x1224, 374x1238, 376x1241)
KITTI_FRAME_SIZES = ((370, 376), (1224, 1242))  # the raw frames' heights and widths, smallest to largest


def _frame_shaped(shape: tuple[int, int], frame: tuple[int, int]) -> bool:
    """Whether a prediction of ``shape`` has the aspect ratio of the raw ground-truth ``frame`` (as
    against the 352x1216 kb-crop's): the two differ by 4% on KITTI (1242/375 against 1216/352)."""
    aspect = shape[1] / shape[0]
    return abs(math.log(aspect / (frame[1] / frame[0]))) < abs(math.log(aspect / (KB_CROP_SHAPE[1] / KB_CROP_SHAPE[0])))


def _crop_shaped(shape: tuple[int, int]) -> bool:
    """Whether a map has the 352x1216 kb-crop's aspect ratio rather than a raw KITTI frame's (375x1242)."""
    return not _frame_shaped(shape, KITTI_FRAME_SHAPE)


def _frame_onto_kb_crop(pred, resize: bool):
    """A prediction of the whole frame against ground truth that is kb-cropped already: kb-cropped as the
    ground truth was, where it is at the size of a raw KITTI frame (370-376 x 1224-1242). Of another size
    it cannot be placed (the frame's size is unknown here): resized onto the crop, its rows and columns
    would not be the ground truth's, so it is refused even with ``resize`` (a 1.16x frame, 434x1442,
    kb-cropped as a frame, scored abs_rel 0.13 for a perfect prediction)."""
    h, w = pred.shape
    (h_lo, h_hi), (w_lo, w_hi) = KITTI_FRAME_SIZES
    if h_lo <= h <= h_hi and w_lo <= w <= w_hi:
        return kb_crop(pred)
    raise ValueError(f"the ground truth is kb-cropped already ({KB_CROP_SHAPE[0]}x{KB_CROP_SHAPE[1]}) and the "
                     f"prediction ({h}x{w}) has a whole frame's shape at another size: it cannot be placed on the "
                     "crop without the frame's size" + (" (--resize would stretch the frame over the crop)" if resize
                                                        else "")
                     + "; evaluate against the raw ground truth, where --resize resizes it to the frame first, or "
                     "resize the predictions to the frame and kb-crop them")


def _scan(root: Path) -> dict[str, Path]:
    """Depth files under ``root`` by relative path without extension (posix)."""
    if not root.is_dir():
        raise FileNotFoundError(f"depth directory {root} does not exist or is not a directory")
    files: dict[str, Path] = {}
    # as every command reads a folder: hidden files and folders (.ipynb_checkpoints/, macOS ._ files, our
    # writers' temp files) are not data, linked folders are followed
    for relative in files_below(root, DEPTH_EXTENSIONS):
        path = root / relative
        if path.is_file():
            key = relative.with_suffix("").as_posix()
            if key in files:
                raise ValueError(f"two depth files for the same name in {root}: {files[key].name} and {path.name}")
            files[key] = path
    return files


def _by_stem(files: dict[str, Path], wanted: set[str], root: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for path in files.values():
        stem = path.stem
        if stem in out and stem in wanted:
            raise ValueError(f"the name {stem!r} occurs twice under {root} ({out[stem]} and {path}); "
                             "keep the same sub-folders in both directories to match by relative path")
        out.setdefault(stem, path)
    return out


def match_depth_files(pred_dir: str | Path, gt_dir: str | Path) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """Pair predictions with ground truth by name (see the module docstring).

    Returns ``(pairs, unmatched_pred, unmatched_gt)`` with ``pairs`` as ``(name, pred_path, gt_path)``,
    sorted by name. Raises ``ValueError`` if no pair is found.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    preds, gts = _scan(pred_dir), _scan(gt_dir)
    common = sorted(preds.keys() & gts.keys())
    if common:
        pairs = [(k, preds[k], gts[k]) for k in common]
    else:
        wanted = {p.stem for p in preds.values()} & {p.stem for p in gts.values()}
        p_stem, g_stem = _by_stem(preds, wanted, pred_dir), _by_stem(gts, wanted, gt_dir)
        pairs = [(s, p_stem[s], g_stem[s]) for s in sorted(wanted)]
    if not pairs:
        sample = lambda d: ", ".join(sorted(d)[:3]) or f"no {'/'.join(DEPTH_EXTENSIONS)} files"  # noqa: E731
        raise ValueError(f"no prediction matches a ground-truth file by name: {pred_dir} has {len(preds)} depth "
                         f"file(s) ({sample(preds)}), {gt_dir} has {len(gts)} ({sample(gts)})")
    used_p, used_g = {p for _, p, _ in pairs}, {g for _, _, g in pairs}
    return pairs, [p for p in preds.values() if p not in used_p], [g for g in gts.values() if g not in used_g]


@dataclass
class DepthDirReport:
    """What :func:`evaluate_depth_dirs` found: the nine averaged metrics and the bookkeeping.

    ``invalid_predictions`` counts, on the evaluated pixels (valid ground truth inside the crop)
    and before clipping, the prediction pixels that are non-finite (+-inf), negative or zero, the
    images with any of them and the images zero on every evaluated pixel (keys
    :data:`~dinov2_dense.evaluation.depth.INVALID_PREDICTION_KEYS`); ``invalid_images`` and
    ``all_zero_images`` name those images. ``clipped_predictions`` counts the finite positive pixels
    below ``min_depth`` and above ``max_depth`` that the clipping moves
    (:data:`~dinov2_dense.evaluation.depth.CLIPPED_PREDICTION_KEYS`). ``ground_truth`` counts the measured
    ground-truth pixels inside the crop and those of them outside the depth range, not evaluated
    (:data:`~dinov2_dense.evaluation.depth.GROUND_TRUTH_KEYS`).
    """

    metrics: dict[str, float]
    count: int  # images averaged
    skipped: list[str] = field(default_factory=list)  # names of images without a valid pixel
    unmatched_pred: list[Path] = field(default_factory=list)
    unmatched_gt: list[Path] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    invalid_predictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INVALID_PREDICTION_KEYS, 0))
    invalid_images: list[str] = field(default_factory=list)
    all_zero_images: list[str] = field(default_factory=list)
    clipped_predictions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLIPPED_PREDICTION_KEYS, 0))
    evaluated_pixels: int = 0  # valid ground truth inside the crop, over all images
    ground_truth: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUND_TRUTH_KEYS, 0))
    metre_predictions: int = 0  # predictions read as .npy floats (metres): pred_scale is not applied to them


def eval_depth_options(dataset: str, *, pred_scale: float, gt_scale: float | None = None, kb_crop: bool = False,
                       min_depth: float = 1e-3, max_depth: float = 10.0, crop=None, median_scaling: bool = False,
                       silog: str = "toolbox", resize: bool = False) -> list[str]:
    """The ``dinov2-dense eval-depth`` options that evaluate as these settings do: ``--dataset`` and
    ``--pred-scale``, then each setting where it differs from the data set's preset. A crop box
    (top, bottom, left, right) has no option: ValueError."""
    from .depth import _check_crop

    preset = DATASET_PRESETS[dataset]
    crop = _check_crop(crop)
    if isinstance(crop, tuple):
        raise ValueError(f"eval-depth has no option for the crop box {crop}; evaluate with depth_metrics(crop=...)")
    opts = ["--dataset", dataset]
    if gt_scale is not None and gt_scale != preset["gt_scale"]:
        opts += ["--gt-scale", f"{gt_scale:g}"]
    opts += ["--pred-scale", f"{pred_scale:g}"]
    if min_depth != preset["min_depth"]:
        opts += ["--min-depth", f"{min_depth:g}"]
    if max_depth != preset["max_depth"]:
        opts += ["--max-depth", f"{max_depth:g}"]
    if crop != preset["crop"]:
        opts += ["--crop", crop or "none"]
    if bool(kb_crop) != preset["kb_crop"]:
        opts += ["--kb-crop" if kb_crop else "--no-kb-crop"]
    if median_scaling:
        opts += ["--median-scaling"]
    if silog != "toolbox":
        opts += ["--silog", silog]
    if resize:
        opts += ["--resize"]
    return opts


def evaluate_depth_dirs(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    dataset: str = "nyu",
    gt_scale: float | None = None,
    pred_scale: float | None = None,
    min_depth: float | None = None,
    max_depth: float | None = None,
    crop="preset",
    kb: bool | None = None,
    median_scaling: bool = False,
    silog: str = "toolbox",
    resize: bool = False,
    strict: bool = False,
    progress: bool = True,
) -> DepthDirReport:
    """Per-image depth metrics of every matched file pair, averaged over images.

    Args:
        pred_dir, gt_dir: directories of predictions and ground truth (searched recursively).
        dataset: ``"nyu"``, ``"kitti"`` or ``"folder"``: the defaults of :data:`DATASET_PRESETS`.
        gt_scale, pred_scale: PNG value per metre (defaults: the preset's; predictions default to
            the ground-truth scale). ``.npy`` files of floats are metres and ignore the scale;
            ``.npy`` files of integers are divided by it, like PNGs.
        min_depth, max_depth, crop: override the preset (``crop=None`` for no crop).
        kb: kb-crop the ground truth (and a prediction of its raw size) to 352x1216; preset default.
        median_scaling, silog, resize: as in :func:`~dinov2_dense.evaluation.depth.depth_metrics`.
        strict: unmatched files on either side are an error instead of a warning.
        progress: show a progress bar.
    """
    if dataset not in DATASET_PRESETS:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {sorted(DATASET_PRESETS)}")
    preset = DATASET_PRESETS[dataset]
    settings = dict(
        dataset=dataset,
        min_depth=preset["min_depth"] if min_depth is None else float(min_depth),
        max_depth=preset["max_depth"] if max_depth is None else float(max_depth),
        crop=preset["crop"] if isinstance(crop, str) and crop == "preset" else crop,
        kb_crop=preset["kb_crop"] if kb is None else bool(kb),
        gt_scale=preset["gt_scale"] if gt_scale is None else float(gt_scale),
        median_scaling=median_scaling, silog=silog, resize=resize,
    )
    settings["pred_scale"] = settings["gt_scale"] if pred_scale is None else float(pred_scale)
    acc = DepthAccumulator(min_depth=settings["min_depth"], max_depth=settings["max_depth"], crop=settings["crop"],
                           median_scaling=median_scaling, silog=silog, resize=resize)

    pairs, unmatched_pred, unmatched_gt = match_depth_files(pred_dir, gt_dir)
    if strict and (unmatched_pred or unmatched_gt):
        raise ValueError(f"{len(unmatched_pred)} prediction(s) without ground truth (e.g. "
                         f"{[str(p) for p in unmatched_pred[:3]]}) and {len(unmatched_gt)} ground-truth file(s) "
                         f"without prediction (e.g. {[str(p) for p in unmatched_gt[:3]]})")

    from tqdm.auto import tqdm

    skipped, invalid_images, all_zero_images = [], [], []
    metres = 0
    for name, pred_path, gt_path in tqdm(pairs, desc="eval-depth", unit="img", disable=not progress):
        gt = read_depth(gt_path, settings["gt_scale"])
        pred = read_depth(pred_path, settings["pred_scale"])
        metres += _float_npy(pred_path)
        cropped = ""
        try:
            if settings["kb_crop"] and gt.shape != KB_CROP_SHAPE:
                cropped = f" (the ground truth's kb-crop; the file is {gt.shape[0]}x{gt.shape[1]})"
                if resize and pred.shape not in (gt.shape, KB_CROP_SHAPE) and _frame_shaped(pred.shape, gt.shape):
                    # a prediction of the whole frame at another size: to the frame's size, then the crop
                    # (resized onto the crop, its rows and columns would not be the ground truth's); one
                    # shaped as the crop is resized onto the crop
                    pred = _resize_bilinear(pred, gt.shape)
                if pred.shape == gt.shape:
                    pred = kb_crop(pred)
                gt = kb_crop(gt)
            elif settings["kb_crop"] and pred.shape != gt.shape and not _crop_shaped(pred.shape):
                pred = _frame_onto_kb_crop(pred, resize)
            elif not settings["kb_crop"] and pred.shape == KB_CROP_SHAPE and gt.shape != pred.shape:
                raise ValueError(f"the prediction is {pred.shape[0]}x{pred.shape[1]}, the KITTI benchmark crop's size: "
                                 "evaluate with the kb-crop (--kb-crop, on for --dataset kitti), which crops the ground "
                                 "truth to it; --resize would stretch the crop over the whole frame")
            result = acc.update(pred, gt)
        except ValueError as exc:
            raise ValueError(f"{pred_path} against {gt_path}: {exc}{cropped}") from exc
        invalid = acc.per_image_invalid[-1]
        if result is None:
            skipped.append(name)
        elif invalid["images"]:
            invalid_images.append(name)
            if invalid["all_zero_images"]:
                all_zero_images.append(name)
    averaged = acc.compute()
    if averaged["count"] == 0:
        raise ValueError(f"none of the {len(pairs)} ground-truth maps has a valid pixel in "
                         f"({settings['min_depth']}, {settings['max_depth']}) m inside the crop; "
                         "check --gt-scale and the depth range")
    return DepthDirReport(metrics={k: averaged[k] for k in DEPTH_METRIC_KEYS}, count=averaged["count"],
                          skipped=skipped, unmatched_pred=unmatched_pred, unmatched_gt=unmatched_gt, settings=settings,
                          invalid_predictions=acc.invalid_predictions(), invalid_images=invalid_images,
                          all_zero_images=all_zero_images, clipped_predictions=acc.clipped_predictions(),
                          evaluated_pixels=sum(c["pixels"] for c in acc.per_image_invalid if c is not None),
                          ground_truth=acc.ground_truth(), metre_predictions=metres)


def _float_npy(path: Path) -> bool:
    """Whether a depth file is a .npy of floats (metres, read without a scale)."""
    import numpy as np

    return path.suffix.lower() == ".npy" and np.issubdtype(np.load(path, mmap_mode="r").dtype, np.floating)


def format_depth_table(metrics: dict[str, float], digits: int = 4) -> str:
    """One header row of metric names and one row of values (the toolboxes round to 4 digits)."""
    cells = [(k, "nan" if math.isnan(metrics[k]) else f"{metrics[k]:.{digits}f}") for k in DEPTH_METRIC_KEYS]
    widths = [max(len(a), len(b)) for a, b in cells]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    row = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join([line, row([a for a, _ in cells]), line, row([b for _, b in cells]), line])


def depth_results_json(report: DepthDirReport) -> dict:
    """What ``eval-depth --out`` writes: the nine metrics at the top level (as always), then
    ``"images"`` (images averaged), ``"skipped_images"`` (no valid ground-truth pixel) and
    ``"invalid_predictions"``: ``{"nonfinite_pixels", "negative_pixels", "zero_pixels", "images",
    "all_zero_images"}``, ``"clipped_predictions"``: ``{"below_min_pixels", "above_max_pixels"}`` and
    ``"ground_truth"``: ``{"measured_pixels", "outside_range_pixels", "evaluated_pixels"}`` (see
    :class:`DepthDirReport`)."""
    return {**{k: report.metrics[k] for k in DEPTH_METRIC_KEYS}, "images": report.count,
            "skipped_images": len(report.skipped), "invalid_predictions": dict(report.invalid_predictions),
            "clipped_predictions": dict(report.clipped_predictions),
            "ground_truth": {**report.ground_truth, "evaluated_pixels": report.evaluated_pixels}}


def write_metrics_json(path: str | Path, metrics: dict) -> None:
    """Write ``metrics`` as JSON atomically (temp file in the same directory, then rename)."""
    write_json(path, metrics)
