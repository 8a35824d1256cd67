"""What mmseg lacks of the released DINOv2 depth protocols, as mmseg transforms and a metric, sharing
dinov2-dense's code: ``DINOv2DepthAugment`` (the depth toolbox's NYU pre-crop, 2.5-degree rotation,
flip, random crop and ColorAug: :func:`dinov2_dense.data.pipelines.depth_train_pipeline`, seeded from
the run's seed), ``KBCrop`` (KITTI benchmark crop, 352 x 1216, bottom-centred) and ``DINOv2DepthMetric``
(our :class:`dinov2_dense.evaluation.DepthMetric`: the toolbox's metrics and silog, the evaluation crops
``"eigen"`` for NYU and ``"garg"`` for KITTI, under mmseg's argument names)."""

from __future__ import annotations

import os
import os.path as osp
import random

import numpy as np
import torch
from mmcv.transforms import BaseTransform

from dinov2_dense.data.pipelines import seed_pipeline
from dinov2_dense.engine.data import build_pipeline
from dinov2_dense.evaluation.depth import depth_png_units, kb_crop_origin
from dinov2_dense.evaluation.mmengine_metrics import DepthMetric
from dinov2_dense.fileio import write_image
from mmseg.registry import METRICS, TRANSFORMS


def sample_augment_seed(results: dict) -> int | None:
    """The augmentation seed of the sample's place in the run's sample stream, or None: the indices of
    :class:`~dinov2_dense.engine.data.SeededInfiniteSampler` carry it, and mmengine's data sets keep the
    index as ``results["sample_idx"]``."""
    seed = getattr(results.get("sample_idx"), "augment_seed", None)
    return None if seed is None else int(seed)


@TRANSFORMS.register_module()
class SeedAugmentation(BaseTransform):
    """First in a training pipeline of mmcv's random transforms (``RandomResize``, ``RandomCrop``,
    ``RandomFlip``, ``PhotoMetricDistortion`` draw from numpy's and Python's global generators): seeds both
    from the sample's seed (:func:`sample_augment_seed`), so that a resumed run, which starts its data at
    the checkpoint's sample (``SeededInfiniteSampler``, ``ResumeDataHook``), and a run with any number of
    DataLoader workers draw the crops of the uninterrupted run. A sample without a seed (from another
    sampler) leaves the generators as they are. (With ``num_workers=0`` the generators are the main
    process's, and they keep the last sample's seeding.)"""

    def transform(self, results: dict) -> dict:
        seed = sample_augment_seed(results)
        if seed is not None:
            np.random.seed(seed % 2**32)
            random.seed(seed)
        return results


@TRANSFORMS.register_module()
class DINOv2DepthAugment(BaseTransform):
    """The released depth training augmentation on ``img`` and ``gt_depth_map`` (after mmseg's
    ``LoadDepthAnnotation``); the keyword arguments of :func:`depth_train_pipeline` (NYU defaults:
    ``pre_crop=(45, 472, 43, 608)``, crop (416, 544); KITTI: crop (352, 704), brightness (0.9, 1.1)).

    Seeded as our engine seeds its pipelines (:func:`dinov2_dense.engine.data.build_pipeline`): ``seed``
    None takes the run's seed (mmengine's ``randomness.seed``, which the Runner gives torch before it
    builds the data sets; each rank its own stream), so two runs of one config train on the same crops.
    In a DataLoader worker the copy is reseeded from the worker's torch seed (mmengine's
    ``worker_init_fn``: run seed + worker id + rank x workers) at its first sample, so workers do not
    repeat each other's draws. A sample from ``SeededInfiniteSampler`` (the plugin's configs) is augmented
    from its own seed instead (:func:`sample_augment_seed`): resumed runs and any number of workers draw
    the uninterrupted run's crops."""

    def __init__(self, seed: int | None = None, **kwargs):
        self.kwargs = kwargs
        self.pipeline = build_pipeline(dict(type="depth_train_pipeline", seed=seed, **kwargs))
        self._worker_seed: int | None = None

    def transform(self, results: dict) -> dict:
        seed = sample_augment_seed(results)
        if seed is not None:
            seed_pipeline(self.pipeline, seed)
        else:
            self._seed_in_worker()
        out = self.pipeline(image=results["img"], mask=results["gt_depth_map"])
        results["img"], results["gt_depth_map"] = out["image"], out["mask"]
        results["img_shape"] = out["image"].shape[:2]
        return results

    def _seed_in_worker(self) -> None:
        if torch.utils.data.get_worker_info() is None:
            return
        seed = torch.initial_seed() % 2**32
        if self._worker_seed != seed:
            self._worker_seed = seed
            seed_pipeline(self.pipeline, seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kwargs})"


@TRANSFORMS.register_module()
class KBCrop(BaseTransform):
    """KITTI benchmark crop of the image and depth: ``height`` x ``width`` (352 x 1216), bottom rows,
    horizontally centred (:func:`dinov2_dense.evaluation.depth.kb_crop_origin`). The crop is the
    protocol's original image: ``ori_shape`` becomes its size, so that mmseg's ``DepthEstimator`` gives
    the prediction at the size of the cropped ground truth (the Garg crop is taken of that)."""

    def __init__(self, height: int = 352, width: int = 1216):
        self.height, self.width = int(height), int(width)

    def transform(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        top, left = kb_crop_origin(h, w, self.height, self.width)
        for key in ("img", "gt_depth_map"):
            if key in results:
                results[key] = np.ascontiguousarray(results[key][top:top + self.height, left:left + self.width])
        results["img_shape"] = results["ori_shape"] = results["img"].shape[:2]
        return results


@METRICS.register_module()
class DINOv2DepthMetric(DepthMetric):
    """Our depth metric (:class:`dinov2_dense.evaluation.DepthMetric`, the toolbox's conventions: per
    image, then averaged; silog ``100 * sqrt(mean d^2 - mean(d)^2)``; predictions clipped to the range;
    ``count`` and the invalid-prediction counts) under mmseg's argument names, so an mmseg test reports
    the numbers ``dinov2-dense test`` reports, key for key. (mmseg's own ``DepthMetric`` also averages
    per-image metrics, in float32, but its silog is Depth-Anything's ``sqrt(mean d^2 - 0.5 mean(d)^2)``,
    without the x100, and it reports neither ``count`` nor the invalid-prediction counts.)

    Args:
        min_depth_eval, max_depth_eval: the valid ground-truth range (NYU 0.001-10, KITTI 0.001-80).
        crop: ``"eigen"`` (NYU, 480 x 640 ground truth), ``"garg"`` (KITTI), ``(top, bottom, left,
            right)`` or None.
        output_dir: as mmseg's: each prediction written there (atomically) as a 16-bit PNG of depth x
            ``depth_scale_factor`` (e.g. 1000 for millimetres), rounded, named after its image.
        depth_metrics: as mmseg's: the metrics to report (default all), besides ``count`` and the
            invalid-prediction counts; a name we do not compute is refused.
        format_only: as mmseg's: only write ``output_dir``, no metrics (no ground truth needed).
        keep_results: what mmseg's ``tools/test.py --out`` adds; the files in ``output_dir`` are kept anyway.
        silog, median_scaling, resize, collect_device, prefix, collect_dir: of our metric.
    """

    scale_option = "LoadDepthAnnotation's depth_rescale_factor"

    def __init__(self, min_depth_eval: float = 1e-3, max_depth_eval: float = 10.0, crop=None,
                 output_dir: str | None = None, depth_scale_factor: float = 1.0, crop_type: str | None = None,
                 depth_metrics=None, format_only: bool = False, keep_results: bool = False, **kwargs):
        from dinov2_dense.evaluation.depth import DEPTH_METRIC_KEYS

        if crop_type is not None:  # mmseg's DepthMetric argument: say which of ours it is
            raise ValueError(f"DINOv2DepthMetric: crop_type={crop_type!r} is mmseg's DepthMetric argument; use "
                             "crop='eigen' (NYU), crop='garg' (KITTI) or crop=(top, bottom, left, right)")
        ours = ("silog", "median_scaling", "resize", "collect_device", "prefix", "collect_dir")
        if unknown := sorted(set(kwargs) - set(ours)):
            raise ValueError(f"DINOv2DepthMetric: {', '.join(unknown)}: not an argument of this metric (it takes "
                             "min_depth_eval, max_depth_eval, crop, output_dir, depth_scale_factor, depth_metrics, "
                             f"format_only, keep_results, {', '.join(ours)})")
        names = list(DEPTH_METRIC_KEYS) if depth_metrics is None else list(depth_metrics)
        if other := [m for m in names if m not in DEPTH_METRIC_KEYS]:
            raise ValueError(f"DINOv2DepthMetric: depth_metrics {other}: expected names among "
                             f"{', '.join(DEPTH_METRIC_KEYS)}")
        if format_only and not output_dir:
            raise ValueError("DINOv2DepthMetric: format_only=True writes the predictions only: give output_dir")
        super().__init__(min_depth=min_depth_eval, max_depth=max_depth_eval, crop=crop, **kwargs)
        self.crop = crop
        self.depth_metrics, self.format_only = names, bool(format_only)
        self.output_dir, self.depth_scale_factor = output_dir, float(depth_scale_factor)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)

    def compute_metrics(self, results: list) -> dict:
        if self.format_only:
            return {}
        from dinov2_dense.evaluation.depth import DEPTH_METRIC_KEYS

        left_out = set(DEPTH_METRIC_KEYS) - set(self.depth_metrics)
        return {k: v for k, v in super().compute_metrics(results).items() if k not in left_out}

    def process(self, data_batch, data_samples) -> None:
        if not self.format_only:
            super().process(data_batch, data_samples)
        if not self.output_dir:
            return
        for sample in data_samples:
            depth = sample["pred_depth_map"]["data"].squeeze().float().cpu().numpy()
            try:
                units = depth_png_units(depth, self.depth_scale_factor, "depth_scale_factor")
            except ValueError as exc:
                raise ValueError(f"DINOv2DepthMetric: {exc}") from None
            name = osp.splitext(osp.basename(sample["img_path"]))[0] + ".png"
            write_image(osp.join(self.output_dir, name), units)
