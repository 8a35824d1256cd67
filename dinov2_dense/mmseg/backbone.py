"""The DINOv2 backbone for mmseg configs: a :class:`DinoVisionTransformer` (same parameter names, so an
mmseg checkpoint's ``backbone.*`` keys are the official ones) that returns what the decode heads read."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from dinov2_dense.features import center_pad
from dinov2_dense.hub import architecture, load_backbone
from dinov2_dense.models import DinoVisionTransformer
from mmseg.registry import MODELS


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

    Forward: a (B, 3, H, W) normalised batch, centre-padded to a multiple of 14 inside (the official
    evaluation's ``CenterPadding``) -> a tuple of (B, D, h, w) maps, or of (map, (B, D)) pairs.
    """

    def __init__(self, arch: str | None = "dinov2_vits14", weights: str | None = "official",
                 out_indices: Sequence[int] = (-1,), norm: bool = True, with_cls_token: bool = False,
                 frozen: bool = True, init_cfg: dict | None = None):
        loaded = load_backbone(arch, weights=weights) if weights is not None else architecture(arch)
        super().__init__(**loaded.arch_kwargs())
        self.load_state_dict(loaded.state_dict(), strict=True)  # built or loaded: never re-initialised (is_init)
        self.out_indices = self.resolve_layers(list(out_indices))
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
