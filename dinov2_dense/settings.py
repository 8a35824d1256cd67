"""The official per-size and per-data-set settings of DINOv2 and its dense protocols, in one table.

Sources: the DINOv2 paper (Oquab et al. 2023, Sec. 7), the released head configs
(``dinov2_vit{s,b,l,g}14_{ade20k,voc2012}_{linear,ms}_config.py`` and
``dinov2_vit{s,b,l,g}14_{nyu,kitti}_{linear,linear4,dpt}_config.py``) and ``dinov2/hub``.
The model factories, the weight lookup, the checkpoint converters, the heads, the zoo, the config
generator and the tests read their numbers from here; nothing else should repeat them. (Layer 1:
plain data, importable from everywhere; ``heads.settings`` re-exports it.)

The NYU trap: the official hub builder of the *linear* depth heads takes ``min_depth`` and
``max_depth`` arguments but hard-codes ``min_depth=0.001, max_depth=80`` for every data set,
while the NYU configs the NYU heads were trained with use 0.001-10 m (KITTI: 0.001-80 m).
With 80 m bins an NYU linear head predicts depths 8x too large. We use the configs' ranges
(``DATASET_SETTINGS[...].min_depth / max_depth``) for every head type.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BACKBONE_SETTINGS", "DATASET_SETTINGS", "DEPTH_N_BINS", "DPT_CHANNELS", "MS_FLIP", "MS_RATIOS", "PATCH_SIZE",
    "BackboneSettings", "DatasetSettings", "backbone_settings", "dataset_settings", "size_of_width", "test_protocol",
]

# Shared head constants.
PATCH_SIZE = 14
DEPTH_N_BINS = 256  # linear depth heads: uniform ("UD") bins, 'linear' normalisation
DPT_CHANNELS = 256  # DPT fusion width
MS_RATIOS = (1.0, 1.32, 1.73, 2.28, 3.0)  # "+ms" segmentation: multi-scale test ratios, with flip
MS_FLIP = True


@dataclass(frozen=True)
class BackboneSettings:
    """One backbone size: architecture name (a ``dinov2_dense.models`` factory), width, blocks,
    attention heads, feed-forward layer, and the blocks whose outputs the segmentation and depth
    heads read (0-based)."""

    arch: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn_layer: str  # "mlp" (fc1/fc2, ratio 4) or "swiglufused" (w12/w3, ViT-g)
    params: str  # for documentation
    seg_layers: tuple[int, ...]  # "lin." reads the last one, "+ms" all four
    depth_layers: tuple[int, ...]  # linear4 and DPT; "linear" (lin.1) reads the last block

    @property
    def name(self) -> str:
        """The zoo name of this size's backbone (``dinov2_vits14``)."""
        return next(f"dinov2_vit{k}{PATCH_SIZE}" for k, v in BACKBONE_SETTINGS.items() if v is self)

    @property
    def post_process_channels(self) -> tuple[int, ...]:
        """DPT reassemble widths [D/8, D/4, D/2, D]."""
        d = self.embed_dim
        return (d // 8, d // 4, d // 2, d)


@dataclass(frozen=True)
class DatasetSettings:
    """One data set of the protocol: its task and the numbers its heads, inference and configs need.

    Segmentation, "lin." (sources in :data:`DATASET_SETTINGS`): ``test_scale`` is the test
    ``Resize(img_scale=(long, short))``, ``crop_size`` / ``stride`` the slide windows, ``train_scale``,
    ``ratio_range``, ``train_crop`` the training rescale and crop. "+ms": the same with ``ms_``.
    Depth: the valid range in metres, the PNG units per metre, the evaluation crop, the KITTI
    benchmark crop, the training crop and colour augmentation, and test-time flip averaging.
    """

    task: str  # "segmentation" or "depth"
    num_classes: int | None = None
    reduce_zero_label: bool = False  # ADE20K: label 0 ("other") becomes ignore, classes shift by -1
    ignore_index: int = 255
    test_scale: tuple[int, int] | None = None  # (long, short) bounds; None: whole image as given
    crop_size: int | tuple[int, int] | None = None  # slide window (None: whole-image inference)
    stride: int | tuple[int, int] | None = None
    train_scale: tuple[int, int] | None = None
    ratio_range: tuple[float, float] | None = None
    train_crop: int | tuple[int, int] | None = None
    ms_scale: tuple[int, int] | None = None
    ms_ratio_range: tuple[float, float] | None = None
    ms_crop: int | tuple[int, int] | None = None
    ms_stride: int | tuple[int, int] | None = None
    min_depth: float | None = None  # depth, metres
    max_depth: float | None = None
    depth_scale: float | None = None  # PNG units per metre
    eval_crop: str | None = None  # "eigen" (NYU), "garg" (KITTI) or None
    kb_crop: bool = False  # KITTI benchmark crop (352x1216) of images and ground truth
    depth_train_crop: tuple[int, int] | None = None
    depth_pre_crop: tuple[int, int, int, int] | None = None  # (top, bottom, left, right), NYUCrop
    brightness_range: tuple[float, float] | None = None  # ColorAug; gamma and colour are 0.9-1.1
    color_prob: float | None = None
    test_flip: bool = False  # depth: average the prediction with that of the flipped image


BACKBONE_SETTINGS: dict[str, BackboneSettings] = {
    "s": BackboneSettings("vit_small", 384, 12, 6, "mlp", "21 M", (8, 9, 10, 11), (2, 5, 8, 11)),
    "b": BackboneSettings("vit_base", 768, 12, 12, "mlp", "86 M", (8, 9, 10, 11), (2, 5, 8, 11)),
    "l": BackboneSettings("vit_large", 1024, 24, 16, "mlp", "300 M", (20, 21, 22, 23), (4, 11, 17, 23)),
    "g": BackboneSettings("vit_giant2", 1536, 40, 24, "swiglufused", "1.1 B", (36, 37, 38, 39), (9, 19, 29, 39)),
}

# Sources. [ade-lin]: the released dinov2_vitb14_{ade20k,voc2012}_linear_config.py as copied in
# Jiawei-Yang/Denoising-ViT evaluation/configs/vitb_{ade20k,voc2012}_linear_config.py and
# ywyue/FiT3D evaluation/baseline_configs/vitb_{ade20k,voc2012}_sem_linear_config.py:
# Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0)), RandomCrop(512, cat_max_ratio=0.75),
# test MultiScaleFlipAug(img_scale=(2048, 512)), test_cfg slide crop (512, 512) stride (341, 341).
# [ms]: no copy of the released +ms configs was found. The DINOv2 segmentation notebook reads
# five img_ratios from the released config (1.0, 1.32, 1.73, ...); a derivative config that keeps
# DINOv2's pipelines has Resize(img_scale=(99999999, 640), ratio_range=(1.0, 3.0)), crop 640 and
# MultiScaleFlipAug(img_scale=(99999999, 640), img_ratios=[1.0, 1.32, 1.73, 2.28, 3.0], flip=True).
# The slide stride of the 640 crops is our choice: 426, two thirds of the crop as in lin. (512/341)
# and in mmseg's own 640-crop ADE20K configs.
# [cityscapes]: DINOv2 released no Cityscapes head or config; these are mmseg's Cityscapes
# settings (configs/_base_/datasets/cityscapes.py: img_scale (2048, 1024), crop 512x1024; slide
# 512x1024 with stride 341x682, two thirds as above).
# [depth]: the released dinov2_vit*14_{nyu,kitti}_*_config.py as copied in ywyue/FiT3D
# evaluation/baseline_configs/vit{s,b}_{nyu,kitti}_depth_linear_config.py and an unmodified
# dinov2_vitl14_nyu_dpt_config.py: NYU NYUCrop (the toolbox's rows 45:472, columns 43:608),
# RandomCrop (416, 544), ColorAug(prob=0.5,
# brightness_range=[0.75, 1.25]), eigen_crop, depth_scale 1000, 0.001-10 m; KITTI KBCrop,
# RandomCrop (352, 704), ColorAug(prob=0.5, brightness_range=[0.9, 1.1]), garg_crop, depth_scale
# 256, 0.001-80 m; test MultiScaleFlipAug(flip=True) with no Resize: the image as it is, and flipped.
_ADE_LIN = dict(test_scale=(2048, 512), crop_size=512, stride=341, train_scale=(2048, 512), ratio_range=(0.5, 2.0),
                train_crop=512, ms_scale=(99999999, 640), ms_ratio_range=(1.0, 3.0), ms_crop=640, ms_stride=426)

DATASET_SETTINGS: dict[str, DatasetSettings] = {
    "ade20k": DatasetSettings("segmentation", num_classes=150, reduce_zero_label=True, **_ADE_LIN),
    "voc2012": DatasetSettings("segmentation", num_classes=21, **_ADE_LIN),
    "cityscapes": DatasetSettings(
        "segmentation", num_classes=19, test_scale=(2048, 1024), crop_size=(512, 1024), stride=(341, 682),
        train_scale=(2048, 1024), ratio_range=(0.5, 2.0), train_crop=(512, 1024), ms_scale=(2048, 1024),
        ms_ratio_range=(0.5, 2.0), ms_crop=(512, 1024), ms_stride=(341, 682)),
    "nyu": DatasetSettings("depth", min_depth=0.001, max_depth=10.0, depth_scale=1000.0, eval_crop="eigen",
                           depth_train_crop=(416, 544), depth_pre_crop=(45, 472, 43, 608),
                           brightness_range=(0.75, 1.25), color_prob=0.5, test_flip=True),
    "kitti": DatasetSettings("depth", min_depth=0.001, max_depth=80.0, depth_scale=256.0, eval_crop="garg",
                             kb_crop=True, depth_train_crop=(352, 704), brightness_range=(0.9, 1.1), color_prob=0.5,
                             test_flip=True),
    # synthetic scenes (dinov2_dense.data.synthetic): small images, whole-image inference
    "synthetic_seg": DatasetSettings("segmentation", num_classes=5, reduce_zero_label=True, train_scale=(448, 224),
                                     ratio_range=(0.75, 1.5), train_crop=224, ms_scale=(448, 224),
                                     ms_ratio_range=(0.75, 1.5), ms_crop=224),
    "synthetic_depth": DatasetSettings("depth", min_depth=0.001, max_depth=10.0, depth_scale=1000.0,
                                       depth_train_crop=(224, 224), brightness_range=(0.75, 1.25), color_prob=0.5,
                                       test_flip=True),
}


def test_protocol(dataset: str, head: str) -> dict:
    """``DensePredictor.predict`` settings (a model's ``test_cfg``) of a data set's official test
    protocol for a head kind ("linear", "ms", "dpt", "linear4"): slide windows, the test Resize
    scale, the +ms ratios and flip, depth flip averaging."""
    data = dataset_settings(dataset)
    if data.task == "depth":
        return dict(mode="whole", flip=data.test_flip)
    ms = head == "ms"
    crop, stride = (data.ms_crop, data.ms_stride) if ms else (data.crop_size, data.stride)
    cfg: dict = dict(mode="whole") if crop is None or stride is None else dict(mode="slide", crop_size=crop,
                                                                                stride=stride)
    scale = data.ms_scale if ms else data.test_scale
    if scale is not None and cfg["mode"] == "slide":
        cfg["scale"] = scale
    if ms:  # whole-image data sets too (the synthetic scenes): the ratios resize the image itself
        cfg.update(scales=MS_RATIOS, flip=MS_FLIP)
    return cfg


def size_of_width(embed_dim: int) -> str | None:
    """The size key ("s", "b", "l", "g") of a released width, or None."""
    return next((k for k, v in BACKBONE_SETTINGS.items() if v.embed_dim == embed_dim), None)


def backbone_settings(size: str) -> BackboneSettings:
    """Settings for a size key "s", "b", "l" or "g" (also accepts "vits14", "vit_small", ...)."""
    key = size.lower().removeprefix("dinov2_")
    for k, s in BACKBONE_SETTINGS.items():
        if key in (k, f"vit{k}14", f"vit{k}", s.arch):
            return BACKBONE_SETTINGS[k]
    raise KeyError(f"unknown backbone size {size!r}: use one of {sorted(BACKBONE_SETTINGS)} (or vits14, vit_small, ...)")


def dataset_settings(name: str) -> DatasetSettings:
    """Settings for a data set name ("ade20k", "voc2012", "nyu", "kitti")."""
    try:
        return DATASET_SETTINGS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown data set {name!r}: use one of {sorted(DATASET_SETTINGS)}") from None
