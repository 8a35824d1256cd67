"""mmseg's ``DepthEstimator`` with its test modes fixed, and the depth protocols' flip averaging.

In mmseg 1.2.2 ``inference`` computes the slide prediction and then overwrites it with the whole-image
one (an ``if`` where an ``elif`` was meant), which is moreover resized to the last window's shape
(``slide_inference`` leaves that in the image metadata): ``test_cfg=dict(mode="slide")`` gave a
crop-sized whole-image prediction. And mmseg has no whole-image flip test, which the released NYU and
KITTI protocols use (``MultiScaleFlipAug(flip=True)``: the image and its mirror, depths averaged):
``test_cfg=dict(mode="whole", flip=True)`` here, as ``DensePredictor.predict(flip=True)`` does it."""

from __future__ import annotations

import torch
from torch import Tensor

from mmseg.models.segmentors import DepthEstimator
from mmseg.registry import MODELS

MODES = ("whole", "slide", "slide_flip")


@MODELS.register_module()
class DINOv2DepthEstimator(DepthEstimator):
    """``DepthEstimator`` whose ``test_cfg.mode`` ``whole``, ``slide`` and ``slide_flip`` each do what
    they say, and ``test_cfg.flip=True`` averages the depth of every image with that of its mirror
    (flipped back) in ``whole`` and ``slide`` mode: the image and its mirror go through the model as one
    batch, each view's depth is flipped back and the two averaged, as :class:`DensePredictor` does."""

    def inference(self, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        mode = self.test_cfg.get("mode", "whole")
        if mode not in MODES:
            raise ValueError(f"test_cfg.mode={mode!r}: expected 'whole', 'slide' or 'slide_flip'")
        flip = self.test_cfg.get("flip", False)
        if not isinstance(flip, bool):
            raise ValueError(f"test_cfg.flip={flip!r}: true or false")
        if not flip:
            return self._view(mode, inputs, batch_img_metas)
        if mode == "slide_flip":
            raise ValueError("test_cfg: mode='slide_flip' already averages each window with its mirror; "
                             "use mode='slide' with flip=True (or slide_flip without flip)")
        n = len(inputs)
        both = self._view(mode, torch.cat([inputs, inputs.flip(-1)]), list(batch_img_metas) * 2)
        return (both[:n] + both[n:].flip(-1)) / 2

    def _view(self, mode: str, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        if mode == "slide":
            return self.slide_inference(inputs, batch_img_metas)
        if mode == "slide_flip":
            return self.slide_flip_inference(inputs, batch_img_metas)
        return self.whole_inference(inputs, batch_img_metas)
