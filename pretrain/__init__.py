"""The DINOv2 pretraining core: DINO + iBOT + KoLeo self-supervised training of a student and an EMA
teacher, distillation, continued pretraining on one's own images, and (``pretrain.curation``) data
curation. Its exports load with ``dinov2_dense.load_backbone``.

Layer 2: torch, third-party libraries and ``dinov2_dense``'s layer-1 modules only.
"""

from .config import DEFAULTS, ConfigError, resolve
from .data import (DataAugmentationDINO, ImageFiles, MaskingGenerator, PretrainDataset, SyntheticScenes, build_dataset,
                   collate_data_and_cast, seed_worker)
from .heads import DINOHead, dino_head_state_dict_from_official, dino_head_state_dict_to_official
from .loss import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp
from .meta_arch import SSLMetaArch
from .schedules import CosineScheduler, build_schedules, params_groups, scaled_lr

__all__ = [
    "DEFAULTS", "ConfigError", "CosineScheduler", "DINOHead", "DINOLoss", "DataAugmentationDINO", "ImageFiles",
    "KoLeoLoss", "MaskingGenerator", "PretrainDataset", "SSLMetaArch", "SyntheticScenes", "build_dataset",
    "build_schedules", "collate_data_and_cast", "dino_head_state_dict_from_official",
    "dino_head_state_dict_to_official", "iBOTPatchLoss", "params_groups", "resolve", "scaled_lr", "seed_worker",
    "sinkhorn_knopp",
]
