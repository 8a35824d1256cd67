"""Data for dense prediction: standard data sets, albumentations pipelines, synthetic scenes.

Data sets (samples are dicts ``{"image": (3, H, W) normalised, "seg": (H, W) int64 | "depth":
(1, H, W) metres, "meta": {...}}``): :class:`ADE20KDataset`, :class:`VOCDataset`,
:class:`CityscapesDataset`, :class:`NYUDepthDataset`, :class:`KITTIDepthDataset`,
:class:`FolderSegmentationDataset`, :class:`FolderDepthDataset`.
Pipelines: :func:`seg_train_pipeline`, :func:`seg_test_pipeline`, :func:`depth_train_pipeline`,
:func:`depth_test_pipeline`. Synthetic scenes: :func:`generate_scene` and the layout writers.
"""

from .classes import (ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, DATASET_CLASSES,
                      DATASET_PALETTES, VOC_CLASSES, VOC_PALETTE, palette_array, voc_palette)
from .datasets import (IGNORE_INDEX, ADE20KDataset, CityscapesDataset, DenseDataset, DepthDataset, FolderDepthDataset,
                       FolderSegmentationDataset, KITTIDepthDataset, NYUDepthDataset, SegmentationDataset, VOCDataset,
                       collate)
from .files import DataError, read_depth, read_image, read_label
from .pipelines import (CatMaxRandomCrop, DepthColorAug, PhotoMetricDistortion, RandomRescale, depth_test_pipeline,
                        depth_train_pipeline, seed_pipeline, seed_worker, seg_test_pipeline, seg_train_pipeline)
from .synthetic import (Scene, SceneConfig, class_colors, class_names, generate_scene, scene_seed, write_ade20k_layout,
                        write_folder_layout, write_nyu_layout)

__all__ = [
    "ADE20KDataset", "ADE20K_CLASSES", "ADE20K_PALETTE", "CITYSCAPES_CLASSES", "CITYSCAPES_PALETTE", "CatMaxRandomCrop",
    "CityscapesDataset", "DATASET_CLASSES", "DATASET_PALETTES", "DataError", "DenseDataset", "DepthColorAug",
    "DepthDataset", "FolderDepthDataset", "FolderSegmentationDataset", "IGNORE_INDEX", "KITTIDepthDataset",
    "NYUDepthDataset", "PhotoMetricDistortion", "RandomRescale", "Scene", "SceneConfig", "SegmentationDataset",
    "VOCDataset", "VOC_CLASSES", "VOC_PALETTE", "class_colors", "class_names", "collate", "depth_test_pipeline",
    "depth_train_pipeline", "generate_scene", "palette_array", "read_depth", "read_image", "read_label",
    "scene_seed", "seed_pipeline", "seed_worker", "seg_test_pipeline", "seg_train_pipeline", "voc_palette",
    "write_ade20k_layout", "write_folder_layout", "write_nyu_layout",
]
