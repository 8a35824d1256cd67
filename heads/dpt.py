"""DPT head (Ranftl et al. 2021, "Vision Transformers for Dense Prediction") on DINOv2 features.

The parameter layout is the official DINOv2 depth DPTHead's (mmcv ``ConvModule`` wrappers keep
their conv at ``.conv``), so ``dinov2_vit{s,b,l,g}14_{nyu,kitti}_dpt_head.pth`` loads with
``strict=True`` once ``decode_head.`` is stripped:

    reassemble_blocks.{readout_projects.i.0, projects.i.conv, resize_layers.i}
    convs.i.conv                     3x3 c_i -> 256, no bias
    fusion_blocks.i.{project.conv, res_conv_unit1.conv{1,2}.conv, res_conv_unit2.conv{1,2}.conv}
    project.conv                     3x3 256 -> 256 + ReLU
    conv_depth.head.{0,2,4}          depth output (or conv_seg: 1x1 to class logits)

Four (map, class token) pairs go in, from 4 blocks (``BackboneSettings.depth_layers``): each is
reassembled to 4x, 2x, 1x and 1/2x the patch grid, fused coarse to fine with x2 upsampling at
every stage, and read out at 8x the patch grid (16x after the depth head's own x2).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .linear import resize_to, split_pair
from dinov2_dense.settings import DPT_CHANNELS, backbone_settings


class ConvUnit(nn.Module):
    """A conv at ``.conv`` with an optional ReLU after it (the mmcv ``ConvModule`` layout)."""

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True, act: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=padding, bias=bias)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return F.relu(x) if self.act else x


class PreActResidualConvUnit(nn.Module):
    """y = conv2(relu(conv1(relu(x)))) + x, 3x3 convs without bias or norm."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvUnit(channels, channels, 3, padding=1, bias=False)
        self.conv2 = ConvUnit(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    """Adds a (resized, refined) skip feature, refines, upsamples x2 (align_corners=True), projects 1x1."""

    def __init__(self, channels: int, with_skip: bool = True):
        super().__init__()
        self.res_conv_unit1 = PreActResidualConvUnit(channels) if with_skip else None
        self.res_conv_unit2 = PreActResidualConvUnit(channels)
        self.project = ConvUnit(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            if self.res_conv_unit1 is None:
                raise ValueError("this fusion block (the coarsest) takes no skip feature")
            x = x + self.res_conv_unit1(resize_to(skip, x.shape[-2:], align_corners=False))
        x = self.res_conv_unit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class ReassembleBlocks(nn.Module):
    """Per input i: readout of the class token, 1x1 projection D -> c_i, resize by 4, 2, 1, 1/2."""

    def __init__(self, embed_dim: int, out_channels: Sequence[int], readout: str = "project"):
        super().__init__()
        if readout not in ("project", "add", "ignore"):
            raise ValueError(f"readout {readout!r}: use 'project', 'add' or 'ignore'")
        c = list(out_channels)
        self.readout = readout
        self.projects = nn.ModuleList(ConvUnit(embed_dim, ci, 1) for ci in c)
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(c[0], c[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(c[1], c[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(c[3], c[3], kernel_size=3, stride=2, padding=1),
        ])
        if readout == "project":
            self.readout_projects = nn.ModuleList(
                nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU()) for _ in c
            )

    def forward(self, inputs: Sequence[tuple[Tensor, Tensor]]) -> list[Tensor]:
        out = []
        for i, item in enumerate(inputs):
            x, cls_token = split_pair(item, f"DPT input {i}")
            b, d, h, w = x.shape
            if self.readout == "project":
                tokens = x.flatten(2).transpose(1, 2)  # (B, hw, D)
                tokens = torch.cat((tokens, cls_token[:, None].expand_as(tokens)), dim=-1)
                x = self.readout_projects[i](tokens).transpose(1, 2).reshape(b, d, h, w)
            elif self.readout == "add":
                x = x + cls_token[:, :, None, None]
            out.append(self.resize_layers[i](self.projects[i](x)))
        return out


class DPTHead(nn.Module):
    """DPT decoder for depth (official DINOv2 layout) or segmentation (``conv_seg`` logits).

    Args:
        embed_dim: backbone width D.
        channels: fusion width (256).
        post_process_channels: reassemble widths; default [D/8, D/4, D/2, D].
        readout: how the class token enters: "project" (official), "add" or "ignore".
        task: "depth" (``conv_depth`` head, depth = ReLU + min_depth) or "segmentation".
        num_classes: segmentation classes (required for segmentation).
        min_depth, max_depth: depth range in metres; the head adds min_depth, the predictor
            clamps to [min_depth, max_depth].

    Forward: 4 pairs (map (B, D, h, w), cls (B, D)), same grid for all -> depth
    (B, 1, 32*ceil(h/2), 32*ceil(w/2)) or logits (B, num_classes, 16*ceil(h/2), 16*ceil(w/2)):
    the coarsest reassembled map is ceil(h/2) x ceil(w/2), each fusion block doubles it, and
    the depth output doubles it once more. Resizing to the image is the predictor's job.
    """

    def __init__(
        self,
        embed_dim: int,
        channels: int = DPT_CHANNELS,
        post_process_channels: Sequence[int] | None = None,
        readout: str = "project",
        task: str = "depth",
        num_classes: int | None = None,
        min_depth: float = 0.001,
        max_depth: float = 10.0,
    ) -> None:
        super().__init__()
        if task not in ("depth", "segmentation"):
            raise ValueError(f"task {task!r}: use 'depth' or 'segmentation'")
        if task == "segmentation" and (not num_classes or int(num_classes) < 1):
            raise ValueError(f"num_classes={num_classes}: a segmentation DPT head needs at least 1 class")
        d = int(embed_dim)
        pp = [d // 8, d // 4, d // 2, d] if post_process_channels is None else [int(c) for c in post_process_channels]
        if len(pp) != 4 or min(pp) < 1 or d < 1:
            raise ValueError(f"embed_dim={d}, post_process_channels={pp}: expected a positive width and 4 positive widths")
        if not 0 < float(min_depth) < float(max_depth):
            raise ValueError(f"min_depth={min_depth}, max_depth={max_depth}: expected 0 < min_depth < max_depth")
        self.embed_dim, self.channels, self.post_process_channels = d, channels, pp
        self.task, self.num_classes = task, num_classes
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

        self.reassemble_blocks = ReassembleBlocks(d, pp, readout)
        self.convs = nn.ModuleList(ConvUnit(c, channels, 3, padding=1, bias=False) for c in pp)
        self.fusion_blocks = nn.ModuleList(FeatureFusionBlock(channels, with_skip=i > 0) for i in range(4))
        self.project = ConvUnit(channels, channels, 3, padding=1, act=True)
        if task == "depth":
            self.conv_depth = DepthOutput(channels)
            # With PyTorch's default init the last conv gives a negative value at every pixel for about
            # half of the seeds (10 of 20 measured on random ViT features): the ReLU then passes no
            # gradient and the head never trains. Its bias starts mid-range instead (loaded weights
            # replace it, so the official heads are unaffected).
            nn.init.constant_(self.conv_depth.head[-1].bias, (self.min_depth + self.max_depth) / 2)
        else:
            self.conv_seg = nn.Conv2d(channels, int(num_classes), kernel_size=1)

    @classmethod
    def preset(cls, size: str, **kwargs) -> "DPTHead":
        """The official head for a backbone size ("s", "b", "l", "g")."""
        s = backbone_settings(size)
        return cls(s.embed_dim, post_process_channels=s.post_process_channels, **kwargs)

    def decode(self, inputs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        """Reassemble, fuse and project: the (B, channels, 16*ceil(h/2), 16*ceil(w/2)) map the output
        layer reads (shared with the mmseg plugin's heads, which have the same modules)."""
        if len(inputs) != 4:
            raise ValueError(f"DPTHead expects 4 (map, cls) pairs (one per depth layer), got {len(inputs)}")
        feats = self.reassemble_blocks(inputs)
        feats = [conv(f) for conv, f in zip(self.convs, feats)]
        out = self.fusion_blocks[0](feats[-1])
        for i in range(1, 4):
            out = self.fusion_blocks[i](out, feats[-(i + 1)])
        return self.project(out)

    def forward(self, inputs: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
        out = self.decode(inputs)
        if self.task == "segmentation":
            return self.conv_seg(out)
        return torch.relu(self.conv_depth(out)) + self.min_depth


class DepthOutput(nn.Module):
    """Official ``HeadDepth``: conv 3x3 C -> C/2, x2 upsample, conv 3x3 -> 32, ReLU, conv 1x1 -> 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            Upsample2x(),
            nn.Conv2d(channels // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(x)


class Upsample2x(nn.Module):
    """Bilinear x2 with align_corners=True (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
