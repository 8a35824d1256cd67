"""mmseg's ``DepthEstimator`` with its test modes fixed: in mmseg 1.2.2 ``inference`` computes the
slide prediction and then overwrites it with the whole-image one (an ``if`` where an ``elif`` was
meant), which is moreover resized to the last window's shape (``slide_inference`` leaves that in the
image metadata): ``test_cfg=dict(mode="slide")`` gave a crop-sized whole-image prediction."""

from __future__ import annotations

from torch import Tensor

from mmseg.models.segmentors import DepthEstimator
from mmseg.registry import MODELS


@MODELS.register_module()
class DINOv2DepthEstimator(DepthEstimator):
    """``DepthEstimator`` whose ``test_cfg.mode`` ``whole``, ``slide`` and ``slide_flip`` each do what they say."""

    def inference(self, inputs: Tensor, batch_img_metas: list[dict]) -> Tensor:
        mode = self.test_cfg.get("mode", "whole")
        if mode == "slide":
            return self.slide_inference(inputs, batch_img_metas)
        if mode == "slide_flip":
            return self.slide_flip_inference(inputs, batch_img_metas)
        if mode == "whole":
            return self.whole_inference(inputs, batch_img_metas)
        raise ValueError(f"test_cfg.mode={mode!r}: expected 'whole', 'slide' or 'slide_flip'")
