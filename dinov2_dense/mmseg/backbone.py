"""The DINOv2 backbone for mmseg configs: a :class:`DinoVisionTransformer` (same parameter names, so an
mmseg checkpoint's ``backbone.*`` keys are the official ones) that returns what the decode heads read."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor

from dinov2_dense.features import center_pad
from dinov2_dense.hub import architecture, load_backbone
from dinov2_dense.models import DinoVisionTransformer
from mmseg.registry import MODELS


class _DefaultWeights(str):
    """The default of ``weights`` ("official"), told apart from an explicit ``weights="official"``: an
    ``init_cfg`` checkpoint replaces the default, never weights the user gave."""


_OFFICIAL_BY_DEFAULT = _DefaultWeights("official")


def _pretrained_checkpoint(init_cfg: object, weights: str | None) -> str:
    """The checkpoint of mmengine's ``init_cfg=dict(type="Pretrained", checkpoint=PATH)``, the one form the
    backbone takes (its weights are loaded in ``__init__``, as ``weights=PATH`` loads them); anything else,
    or a checkpoint beside ``weights`` the user gave, is a ValueError saying what to write instead."""
    use = "use weights=PATH (or init_cfg=dict(type='Pretrained', checkpoint=PATH))"
    if not isinstance(init_cfg, dict) or init_cfg.get("type") != "Pretrained":
        raise ValueError(f"DINOv2: init_cfg={init_cfg!r} is not supported (the backbone is built loaded, never "
                         f"initialised by mmengine); {use}")
    unknown = sorted(set(init_cfg) - {"type", "checkpoint", "prefix", "map_location"})
    if unknown:
        raise ValueError(f"DINOv2: init_cfg key(s) {', '.join(unknown)} not supported; {use}")
    checkpoint = init_cfg.get("checkpoint")
    if not isinstance(checkpoint, (str, os.PathLike)) or not str(checkpoint):
        raise ValueError(f"DINOv2: init_cfg={init_cfg!r} has no checkpoint; {use}")
    if init_cfg.get("prefix") not in (None, "backbone."):  # backbone.* is what weights= reads from an mmseg file
        raise ValueError(f"DINOv2: init_cfg prefix={init_cfg['prefix']!r} not supported: the backbone reads a "
                         "backbone file, or the backbone.* tensors of an mmseg checkpoint (prefix='backbone.' or none)")
    if weights is not None and type(weights) is not _DefaultWeights:
        raise ValueError(f"DINOv2: both weights={weights!r} and init_cfg checkpoint={str(checkpoint)!r} given; "
                         "which to load? keep one (weights=None with the init_cfg)")
    return str(checkpoint)


@MODELS.register_module()
class DINOv2(DinoVisionTransformer):
    """DINOv2 ViT/14 for mmseg (``type="DINOv2"``).

    Args:
        arch: a zoo name (``dinov2_vit{s,b,l,g}14`` and ``_reg``), an architecture JSON, or None with a
            ``weights`` file that has its JSON beside it (a pretraining export), as in ``load_backbone``.
        weights: ``"official"`` (found or downloaded), a file, or None (random: a checkpoint loaded by
            mmseg's ``load_from`` or ``--cfg-options`` fills it).
        out_indices: blocks whose outputs the heads read (negative counts from the end).
        norm: apply the final LayerNorm to them (the segmentation protocol; depth uses False).
        with_cls_token: give the heads (map, class token) pairs instead of maps (depth heads, DPT).
        frozen: no gradients and always in eval mode (the DINOv2 protocols).
        init_cfg: None, or mmengine's ``dict(type="Pretrained", checkpoint=PATH)`` (``prefix="backbone."``
            allowed): PATH loaded in ``__init__`` as ``weights=PATH`` would load it, with ``weights``
            left at its default or None (both given: a ValueError). Any other form is a ValueError.

    Forward: a (B, 3, H, W) normalised batch, centre-padded to a multiple of 14 inside (the official
    evaluation's ``CenterPadding``) -> a tuple of (B, D, h, w) maps, or of (map, (B, D)) pairs.
    """

    def __init__(self, arch: str | None = "dinov2_vits14", weights: str | None = _OFFICIAL_BY_DEFAULT,
                 out_indices: Sequence[int] = (-1,), norm: bool = True, with_cls_token: bool = False,
                 frozen: bool = True, init_cfg: dict | None = None):
        if init_cfg is not None:
            weights = _pretrained_checkpoint(init_cfg, weights)
        loaded = load_backbone(arch, weights=weights) if weights is not None else architecture(arch)
        super().__init__(**loaded.arch_kwargs())
        self.load_state_dict(loaded.state_dict(), strict=True)  # built or loaded: never re-initialised (is_init)
        try:
            self.out_indices = self.resolve_layers(list(out_indices))
        except ValueError as exc:  # "layer 7 out of range: this model has 4 blocks": say which setting
            raise ValueError(f"DINOv2: out_indices={list(out_indices)}: {exc}") from None
        self.norm_outputs, self.with_cls_token, self.frozen = bool(norm), bool(with_cls_token), bool(frozen)
        if self.frozen:
            self.requires_grad_(False)
            super().train(False)

    def init_weights(self) -> None:
        """Nothing: the backbone was built initialised or loaded with its weights in ``__init__``, so
        an ``init_weights()`` call (mmseg's, or a user's on the backbone itself) keeps them."""

    def train(self, mode: bool = True) -> "DINOv2":
        return super().train(False if self.frozen else mode)

    def forward(self, x: Tensor) -> tuple:
        padded, _ = center_pad(x, self.patch_size)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            maps, class_tokens, _ = self.intermediate_maps(padded, self.out_indices, norm=self.norm_outputs)
        if self.with_cls_token:
            return tuple(zip(maps, class_tokens))
        return tuple(maps)
