"""Heads on frozen DINOv2 patch features: linear and DPT, for segmentation and depth."""

from .dpt import DPTHead
from .linear import LinearDepthHead, LinearHead
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
from .losses import CrossEntropyLoss, GradientLoss, ScaleShiftInvariantLoss, SigLoss
from .predictor import DensePredictor
from .zoo import MODELS, ModelSpec, build_model, load_head_weights, load_model

__all__ = [
    "BACKBONE_SETTINGS", "DATASET_SETTINGS", "DEPTH_N_BINS", "DPT_CHANNELS", "MS_FLIP", "MS_RATIOS",
    "BackboneSettings", "DatasetSettings", "backbone_settings", "dataset_settings",
    "DPTHead", "LinearDepthHead", "LinearHead", "DensePredictor",
    "CrossEntropyLoss", "GradientLoss", "ScaleShiftInvariantLoss", "SigLoss",
    "MODELS", "ModelSpec", "build_model", "load_head_weights", "load_model",
]
