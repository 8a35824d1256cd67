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
    "BackboneSettings", "DatasetSettings", "backbone_settings", "dataset_settings", "size_of_width",
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
    """One data set of the protocol: its task and the numbers its heads and inference need."""

    task: str  # "segmentation" or "depth"
    num_classes: int | None = None  # segmentation
    crop_size: int | None = None  # segmentation slide inference window (square)
    stride: int | None = None  # segmentation slide inference stride
    reduce_zero_label: bool = False  # ADE20K: label 0 ("other") becomes ignore, classes shift by -1
    ignore_index: int = 255
    min_depth: float | None = None  # depth, metres
    max_depth: float | None = None


BACKBONE_SETTINGS: dict[str, BackboneSettings] = {
    "s": BackboneSettings("vit_small", 384, 12, 6, "mlp", "21 M", (8, 9, 10, 11), (2, 5, 8, 11)),
    "b": BackboneSettings("vit_base", 768, 12, 12, "mlp", "86 M", (8, 9, 10, 11), (2, 5, 8, 11)),
    "l": BackboneSettings("vit_large", 1024, 24, 16, "mlp", "300 M", (20, 21, 22, 23), (4, 11, 17, 23)),
    "g": BackboneSettings("vit_giant2", 1536, 40, 24, "swiglufused", "1.1 B", (36, 37, 38, 39), (9, 19, 29, 39)),
}

DATASET_SETTINGS: dict[str, DatasetSettings] = {
    "ade20k": DatasetSettings("segmentation", num_classes=150, crop_size=512, stride=341, reduce_zero_label=True),
    "voc2012": DatasetSettings("segmentation", num_classes=21, crop_size=512, stride=341),
    "nyu": DatasetSettings("depth", min_depth=0.001, max_depth=10.0),
    "kitti": DatasetSettings("depth", min_depth=0.001, max_depth=80.0),
}


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
