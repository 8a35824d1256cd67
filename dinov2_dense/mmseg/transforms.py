"""What mmseg lacks of the released DINOv2 depth protocols, as mmseg transforms and a metric, sharing
dinov2-dense's code: ``DINOv2DepthAugment`` (the depth toolbox's NYU pre-crop, 2.5-degree rotation,
flip, random crop and ColorAug: :func:`dinov2_dense.data.pipelines.depth_train_pipeline`), ``KBCrop``
(KITTI benchmark crop, 352 x 1216, bottom-centred) and ``DINOv2DepthMetric`` (mmseg's ``DepthMetric``
with our evaluation crops: ``"eigen"`` for NYU, ``"garg"`` for KITTI)."""

from __future__ import annotations

import numpy as np
import torch
from mmcv.transforms import BaseTransform

from dinov2_dense.data.pipelines import depth_train_pipeline
from dinov2_dense.evaluation.depth import crop_mask, kb_crop_origin
from mmseg.evaluation.metrics import DepthMetric
from mmseg.registry import METRICS, TRANSFORMS


@TRANSFORMS.register_module()
class DINOv2DepthAugment(BaseTransform):
    """The released depth training augmentation on ``img`` and ``gt_depth_map`` (after mmseg's
    ``LoadDepthAnnotation``); the keyword arguments of :func:`depth_train_pipeline` (NYU defaults:
    ``pre_crop=(45, 472, 43, 608)``, crop (416, 544); KITTI: crop (352, 704), brightness (0.9, 1.1))."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.pipeline = depth_train_pipeline(**kwargs)

    def transform(self, results: dict) -> dict:
        out = self.pipeline(image=results["img"], mask=results["gt_depth_map"])
        results["img"], results["gt_depth_map"] = out["image"], out["mask"]
        results["img_shape"] = out["image"].shape[:2]
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kwargs})"


@TRANSFORMS.register_module()
class KBCrop(BaseTransform):
    """KITTI benchmark crop of the image and depth: ``height`` x ``width`` (352 x 1216), bottom rows,
    horizontally centred (:func:`dinov2_dense.evaluation.depth.kb_crop_origin`)."""

    def __init__(self, height: int = 352, width: int = 1216):
        self.height, self.width = int(height), int(width)

    def transform(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        top, left = kb_crop_origin(h, w, self.height, self.width)
        for key in ("img", "gt_depth_map"):
            if key in results:
                results[key] = np.ascontiguousarray(results[key][top:top + self.height, left:left + self.width])
        results["img_shape"] = results["img"].shape[:2]
        return results


@METRICS.register_module()
class DINOv2DepthMetric(DepthMetric):
    """mmseg's ``DepthMetric`` (its metrics, its output files) with the protocols' evaluation crops:
    ``crop="eigen"`` (NYU, 480 x 640 ground truth) or ``"garg"`` (KITTI), or None."""

    def __init__(self, crop: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.crop = crop

    def _get_eval_mask(self, gt_depth: torch.Tensor) -> torch.Tensor:
        valid = (gt_depth > self.min_depth_eval) & (gt_depth < self.max_depth_eval)
        mask = crop_mask(tuple(gt_depth.shape[-2:]), self.crop)
        return valid if mask is None else valid & torch.from_numpy(mask).to(valid.device)
