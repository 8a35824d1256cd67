"""Heads on frozen DINOv2 patch features: linear and DPT, for segmentation and depth."""

from dinov2_dense.settings import (
    BACKBONE_SETTINGS,
    DATASET_SETTINGS,
    DEPTH_N_BINS,
    DPT_CHANNELS,
    MS_FLIP,
    MS_RATIOS,
    BackboneSettings,
    DatasetSettings,
    backbone_settings,
    dataset_settings,
)

from .dpt import DPTHead
from .linear import LinearDepthHead, LinearHead
from .losses import CrossEntropyLoss, GradientLoss, ScaleShiftInvariantLoss, SigLoss
from .predictor import DensePredictor

_MOVED_TO_ZOO = ("MODELS", "ModelSpec", "build_model", "load_head_weights", "load_model")


def __getattr__(name: str):
    """``heads.load_model`` and the other zoo names moved to ``dinov2_dense.zoo`` (deprecated here)."""
    if name in _MOVED_TO_ZOO:
        from . import zoo

        return getattr(zoo, name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")


__all__ = [
    "BACKBONE_SETTINGS", "DATASET_SETTINGS", "DEPTH_N_BINS", "DPT_CHANNELS", "MS_FLIP", "MS_RATIOS",
    "BackboneSettings", "DatasetSettings", "backbone_settings", "dataset_settings",
    "DPTHead", "LinearDepthHead", "LinearHead", "DensePredictor",
    "CrossEntropyLoss", "GradientLoss", "ScaleShiftInvariantLoss", "SigLoss",
]
