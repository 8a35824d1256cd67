"""Linear heads on frozen DINOv2 patch features, in the official parameter layout.

``LinearHead`` is the segmentation BNHead of the DINOv2 paper (Sec. 7, "lin." and "+ms"):
resize-concat of chosen feature maps, batch norm, 1x1 convolution to class logits.
``LinearDepthHead`` is the depth BNHead with ``classify=True`` ("lin.1" / "lin.4"): class token
concatenated to every patch, x4 upsampling, 1x1 convolution to depth-bin logits, depth as the
expectation over uniform bins (AdaBins-style 'linear' normalisation).

Both take feature tensors only; the official checkpoints load with ``strict=True`` once the
``decode_head.`` prefix is stripped (``bn.*``, ``conv_seg.*``; ``conv_depth.*``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_dense.settings import DEPTH_N_BINS

FeatureInput = Tensor | tuple[Tensor, Tensor] | list[Tensor]


def resize_to(x: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (B, C, h, w) to ``size``; a no-op when the size already matches."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def with_class_token(x: Tensor, cls_token: Tensor) -> Tensor:
    """Concatenate a (B, D) class token, broadcast to every patch, after a (B, D, h, w) map -> (B, 2D, h, w)."""
    if x.dim() != 4 or cls_token.dim() != 2 or cls_token.shape != x.shape[:2]:
        raise ValueError(
            f"expected a (B, D, h, w) map and a (B, D) class token, got {tuple(x.shape)} and {tuple(cls_token.shape)}"
        )
    return torch.cat((x, cls_token[:, :, None, None].expand_as(x)), dim=1)


def split_pair(item: FeatureInput, where: str) -> tuple[Tensor, Tensor]:
    if isinstance(item, Tensor) or len(item) != 2:
        raise ValueError(
            f"{where}: expected a (map (B, D, h, w), class token (B, D)) pair, as returned by "
            "get_intermediate_layers(..., reshape=True, return_class_token=True)"
        )
    return item[0], item[1]


def _sync_bn_default() -> bool:
    # SyncBatchNorm needs an accelerator: CPU (gloo) runs keep per-process BatchNorm2d
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return distributed and torch.cuda.is_available()


class LinearHead(nn.Module):
    """Segmentation BNHead: resize-concat, batch norm, 1x1 conv (DINOv2 "lin." and "+ms").

    Args:
        in_channels: channels of each selected feature map (before any class token).
        num_classes: number of output classes (150 for ADE20K, 21 for VOC 2012).
        in_index: which of the forward inputs to use (default: all, in order).
        use_cls_token: inputs are (map, class token) pairs; the token is broadcast over the map
            and concatenated after it on channels, doubling each input's width.
        sync_bn: SyncBatchNorm instead of BatchNorm2d; None: when torch.distributed is initialised
            and CUDA is available (SyncBatchNorm has no CPU kernel).
        align_corners: for the bilinear resize to the first selected map's size.

    Forward: a list of (B, C_i, h_i, w_i) maps (or (map, (B, C_i) cls) pairs) -> logits
    (B, num_classes, h_0, w_0) at the first selected map's resolution; resizing them to the
    image is the predictor's job.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        in_index: Sequence[int] | None = None,
        use_cls_token: bool = False,
        sync_bn: bool | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        self.in_index = list(range(len(self.in_channels))) if in_index is None else [int(i) for i in in_index]
        if len(self.in_index) != len(self.in_channels):
            raise ValueError(f"in_index {self.in_index} and in_channels {self.in_channels} must have the same length")
        if not self.in_channels or min(self.in_channels) < 1:
            raise ValueError(f"in_channels={self.in_channels}: give one positive width per input map")
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: expected at least 1 class")
        self.use_cls_token = use_cls_token
        self.align_corners = align_corners
        self.channels = sum(self.in_channels) * (2 if use_cls_token else 1)
        sync = _sync_bn_default() if sync_bn is None else sync_bn
        self.bn = nn.SyncBatchNorm(self.channels) if sync else nn.BatchNorm2d(self.channels)
        self.conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)

    @classmethod
    def preset(cls, variant: str, embed_dim: int, num_classes: int, **kwargs) -> "LinearHead":
        """The paper's heads on the 4 ``seg_layers`` outputs: "lin." (the last only) or "+ms" (all 4)."""
        variant = variant.lower().strip(".+")
        if variant in ("lin", "linear"):
            return cls([embed_dim], num_classes, in_index=[3], **kwargs)
        if variant in ("ms", "linear4", "lin4"):
            return cls([embed_dim] * 4, num_classes, in_index=[0, 1, 2, 3], **kwargs)
        raise ValueError(f"unknown segmentation head variant {variant!r}: use 'lin.' or '+ms'")

    def _select(self, inputs: Sequence[FeatureInput]) -> list[Tensor]:
        if max(self.in_index) >= len(inputs):
            raise ValueError(f"LinearHead reads inputs {self.in_index} but got {len(inputs)} feature maps")
        maps = []
        for i, c in zip(self.in_index, self.in_channels):
            item = inputs[i]
            if self.use_cls_token:
                x = with_class_token(*split_pair(item, f"LinearHead input {i}"))
                c = 2 * c
            elif isinstance(item, Tensor):
                x = item
            else:
                raise ValueError(f"LinearHead input {i}: expected a (B, C, h, w) map; pass use_cls_token=True for pairs")
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"LinearHead input {i}: expected (B, {c}, h, w), got {tuple(x.shape)}")
            maps.append(x)
        return maps

    def forward(self, inputs: Sequence[FeatureInput]) -> Tensor:
        maps = self._select(inputs)
        size = maps[0].shape[-2:]
        x = torch.cat([resize_to(m, size, self.align_corners) for m in maps], dim=1)
        return self.conv_seg(self.bn(x))


class LinearDepthHead(nn.Module):
    """Depth BNHead, classification into bins (DINOv2 depth "lin.1" / "lin.4"; AdaBins bins).

    Args:
        in_channels: width D of each input layer (the head sees 2D per layer: map and class token).
        n_bins: number of depth bins.
        min_depth, max_depth: the bin range in metres (NYU 0.001-10, KITTI 0.001-80; see
            ``dinov2_dense.settings`` for why not the official hub's 80 everywhere).
        upsample: the output is ``upsample`` x the first map's grid (the official head resizes the
            features, then applies the 1x1 conv; here the conv runs at the patch grid and its
            logits are resized: the same, as both are linear).
        bins_strategy: "UD" (uniform, ``linspace``) or "SID" (``logspace`` of the bounds, as the
            official code; rarely meaningful).
        norm_strategy: "linear" (ReLU, +0.1, divide by the sum), "softmax" or "sigmoid".

    Forward: a list of (map (B, D, h, w), cls (B, D)) pairs -> depth (B, 1, h*upsample, w*upsample).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        n_bins: int = DEPTH_N_BINS,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
        upsample: int = 4,
        bins_strategy: str = "UD",
        norm_strategy: str = "linear",
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        if bins_strategy not in ("UD", "SID"):
            raise ValueError(f"bins_strategy {bins_strategy!r}: use 'UD' or 'SID'")
        if norm_strategy not in ("linear", "softmax", "sigmoid"):
            raise ValueError(f"norm_strategy {norm_strategy!r}: use 'linear', 'softmax' or 'sigmoid'")
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {min_depth} and {max_depth}")
        self.in_channels = [int(c) for c in in_channels]
        self.n_bins, self.upsample = int(n_bins), int(upsample)
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.bins_strategy, self.norm_strategy = bins_strategy, norm_strategy
        self.align_corners = align_corners
        self.channels = 2 * sum(self.in_channels)
        # The official head declares a SyncBatchNorm but never uses it (commented out): no bn here.
        self.conv_depth = nn.Conv2d(self.channels, self.n_bins, kernel_size=1)

    @classmethod
    def preset(cls, variant: str, embed_dim: int, **kwargs) -> "LinearDepthHead":
        """Paper presets: "linear" (lin.1, the last block) or "linear4" (the 4 ``depth_layers``)."""
        layers = {"linear": 1, "lin1": 1, "linear1": 1, "linear4": 4, "lin4": 4}.get(variant.lower().replace(".", ""))
        if layers is None:
            raise ValueError(f"unknown depth head variant {variant!r}: use 'linear' or 'linear4'")
        return cls([embed_dim] * layers, **kwargs)

    def bins(self, device: torch.device | None = None) -> Tensor:
        """The (n_bins,) bin centres in metres."""
        if self.bins_strategy == "UD":
            return torch.linspace(self.min_depth, self.max_depth, self.n_bins, device=device)
        return torch.logspace(self.min_depth, self.max_depth, self.n_bins, device=device)

    def forward(self, inputs: Sequence[FeatureInput]) -> Tensor:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"LinearDepthHead expects {len(self.in_channels)} (map, cls) pairs, got {len(inputs)}")
        maps = []
        for i, (item, c) in enumerate(zip(inputs, self.in_channels)):
            x, cls_token = split_pair(item, f"LinearDepthHead input {i}")
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"LinearDepthHead input {i}: expected a (B, {c}, h, w) map, got {tuple(x.shape)}")
            maps.append(with_class_token(x, cls_token))
        size = [s * self.upsample for s in maps[0].shape[-2:]]
        # The official head resizes the features, then applies the 1x1 conv. Both are linear maps (one
        # mixes channels, the other pixels, with weights summing to 1), so they commute: the conv at the
        # patch grid, then the resize of n_bins logits, gives the same logits with upsample^2 times
        # fewer conv products and fewer channels to resize (float rounding apart).
        if all(m.shape[-2:] == maps[0].shape[-2:] for m in maps):
            logits = resize_to(self.conv_depth(torch.cat(maps, dim=1)), size, self.align_corners)
        else:  # maps of other grids: each map's share of the conv at its own grid, resized, summed
            weights = self.conv_depth.weight.split([m.shape[1] for m in maps], dim=1)
            logits = sum(resize_to(F.conv2d(m, w), size, self.align_corners) for m, w in zip(maps, weights))
            logits = logits + self.conv_depth.bias.view(1, -1, 1, 1)
        return self.depth_from_logits(logits)

    def depth_from_logits(self, logits: Tensor) -> Tensor:
        """(B, n_bins, H, W) bin logits -> (B, 1, H, W) expected depth."""
        if self.norm_strategy == "linear":
            probs = torch.relu(logits) + 0.1
            probs = probs / probs.sum(dim=1, keepdim=True)
        elif self.norm_strategy == "softmax":
            probs = torch.softmax(logits, dim=1)
        else:
            probs = torch.sigmoid(logits)
            probs = probs / probs.sum(dim=1, keepdim=True)
        bins = self.bins(logits.device).to(probs.dtype)
        return torch.einsum("bkhw,k->bhw", probs, bins).unsqueeze(1)
