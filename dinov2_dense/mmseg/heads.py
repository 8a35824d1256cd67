"""Decode heads for mmseg with the official ``decode_head.*`` keys: the linear BNHead (lin. and +ms)
and the DPT head as mmseg ``BaseDecodeHead``s for segmentation, and the linear and DPT depth heads for
:class:`DINOv2DepthEstimator`. The computations are those of :mod:`heads` (shared code, not copies)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heads.dpt import DPTHead
from heads.linear import LinearDepthHead, _sync_bn_default, resize_to, split_pair, with_class_token
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

CE = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0, avg_non_ignore=False)  # mmseg 0.x mean
#: What trained the released depth heads (lin.1, lin.4 and DPT alike): SigLoss with its 100-iteration
#: warm-up on each GPU's 2 images (group_size=2: the same with 16 on one GPU) (their configs' 0.5 x GradientLoss is exactly 0 at 2 images per GPU:
#: configs/_base_/models/depth_linear.py says why).
DEPTH_LOSSES = (dict(type="SigLoss", loss_weight=1.0, warm_up=True, warm_iter=100, group_size=2),)


def _check_widths(head: str, key: str, widths: Sequence[int], inputs, indices: Sequence[int]) -> None:
    """Refuse, naming the config key and both sizes, inputs that the head was not built for: ``inputs[i]``
    for i in ``indices`` (a map, or a (map, class token) pair) must have ``widths[k]`` channels (torch's
    own error, a BatchNorm's or a conv's, names neither)."""
    if len(indices) and max(indices) >= len(inputs):
        raise ValueError(f"{head}: reads backbone outputs {list(indices)} but the backbone gives {len(inputs)} "
                         "(its out_indices): set decode_head.in_index to fit them")
    for k, (i, width) in enumerate(zip(indices, widths)):
        item = inputs[i]
        x = item[0] if isinstance(item, (tuple, list)) else item
        if x.dim() == 4 and x.shape[1] != width:
            raise ValueError(f"{head}: {key.format(k=k)}={width} but the backbone's output {i} has {x.shape[1]} "
                             f"channels: set {key.format(k=k)} to the backbone's width ({x.shape[1]})")


@MODELS.register_module()
class DINOv2BNHead(BaseDecodeHead):
    """Resize-concat, BatchNorm, 1x1 conv (DINOv2 lin.: one map; +ms: four), keys ``bn.*`` and
    ``conv_seg.*``. ``with_cls_token``: inputs are (map, class token) pairs, the token broadcast over
    the map and concatenated after it (twice the channels). ``sync_bn``: SyncBatchNorm (the released
    heads' SyncBN, statistics over every GPU's images) or BatchNorm2d; None (default): SyncBatchNorm when
    torch.distributed is initialised and CUDA is available (as :class:`heads.LinearHead`)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, in_index: Sequence[int] | None = None,
                 with_cls_token: bool = False, sync_bn: bool | None = None, align_corners: bool = False,
                 loss_decode=CE, ignore_index: int = 255, **kwargs):
        in_channels = [int(c) for c in in_channels]
        in_index = list(range(len(in_channels))) if in_index is None else [int(i) for i in in_index]
        channels = sum(in_channels) * (2 if with_cls_token else 1)
        super().__init__(in_channels=in_channels, channels=channels, num_classes=num_classes, in_index=in_index,
                         input_transform="resize_concat", dropout_ratio=0.0, align_corners=align_corners,
                         loss_decode=loss_decode, ignore_index=ignore_index, **kwargs)
        self.with_cls_token, self.in_widths = with_cls_token, in_channels  # (mmseg keeps only their sum)
        sync = _sync_bn_default() if sync_bn is None else sync_bn
        self.bn = nn.SyncBatchNorm(channels) if sync else nn.BatchNorm2d(channels)

    def forward(self, inputs) -> Tensor:
        _check_widths("DINOv2BNHead", "decode_head.in_channels[{k}]", self.in_widths, inputs, self.in_index)
        maps = []
        for i in self.in_index:
            item = inputs[i]
            maps.append(with_class_token(*split_pair(item, f"DINOv2BNHead input {i}")) if self.with_cls_token
                        else item)
        size = maps[0].shape[-2:]
        x = torch.cat([resize_to(m, size, self.align_corners) for m in maps], dim=1)
        return self.cls_seg(self.bn(x))


@MODELS.register_module()
class DINOv2DPTHead(BaseDecodeHead):
    """The DPT decoder with a segmentation output (``conv_seg``) on 4 (map, class token) pairs."""

    def __init__(self, embed_dim: int, num_classes: int, channels: int = 256,
                 post_process_channels: Sequence[int] | None = None, readout: str = "project",
                 loss_decode=CE, ignore_index: int = 255, align_corners: bool = False, **kwargs):
        super().__init__(in_channels=int(embed_dim), channels=channels, num_classes=num_classes, dropout_ratio=0.0,
                         loss_decode=loss_decode, ignore_index=ignore_index, align_corners=align_corners, **kwargs)
        dpt = DPTHead(embed_dim, channels, post_process_channels, readout, task="segmentation",
                      num_classes=num_classes)
        self.reassemble_blocks, self.convs = dpt.reassemble_blocks, dpt.convs
        self.fusion_blocks, self.project = dpt.fusion_blocks, dpt.project

    def forward(self, inputs) -> Tensor:
        _check_widths("DINOv2DPTHead", "decode_head.embed_dim", [self.in_channels] * 4, inputs,
                      range(min(len(inputs), 4)))
        return self.cls_seg(DPTHead.decode(self, list(inputs)))


class _DepthHead:
    """What mmseg's ``DepthEstimator`` asks of a head: ``loss`` on ``gt_depth_map`` and ``predict``
    (output clamped to the depth range and resized to the input, as :class:`DensePredictor`; the
    training losses see it unclamped)."""

    out_channels = num_classes = 1
    align_corners = False

    def forward(self, inputs) -> Tensor:
        linear = isinstance(self, LinearDepthHead)
        widths = self.in_channels if linear else [self.embed_dim] * 4
        key = "decode_head.in_channels[{k}]" if linear else "decode_head.embed_dim"
        _check_widths(type(self).__name__, key, widths, inputs, range(min(len(inputs), len(widths))))
        return super().forward(inputs)

    def _losses(self, loss_decode) -> None:
        configs = [loss_decode] if isinstance(loss_decode, dict) else list(loss_decode)
        self.loss_decode = nn.ModuleList(MODELS.build(c) for c in configs)

    def loss(self, inputs, batch_data_samples, train_cfg=None) -> dict[str, Tensor]:
        """The losses of the output resized to the targets, unclamped (as the official heads' training
        and :meth:`DensePredictor.head_losses`: a head beyond the range still gets a gradient)."""
        gt = torch.stack([s.gt_depth_map.data for s in batch_data_samples]).to(torch.float32)
        pred = F.interpolate(self(inputs), size=tuple(gt.shape[-2:]), mode="bilinear", align_corners=False)
        out: dict[str, Tensor] = {}
        for fn in self.loss_decode:
            value = fn(pred, gt)
            out[fn.loss_name] = out[fn.loss_name] + value if fn.loss_name in out else value
        return out

    def predict(self, inputs, batch_img_metas: list[dict], test_cfg=None) -> Tensor:
        out = self(inputs).clamp(min=self.min_depth, max=self.max_depth)
        return F.interpolate(out, size=tuple(batch_img_metas[0]["img_shape"]), mode="bilinear", align_corners=False)


@MODELS.register_module()
class DINOv2LinearDepthHead(_DepthHead, LinearDepthHead):
    """The linear depth head (lin.1 on one (map, class token) pair, lin.4 on four), ``conv_depth.*``."""

    def __init__(self, in_channels: Sequence[int], loss_decode=DEPTH_LOSSES, init_cfg=None, **kwargs):
        LinearDepthHead.__init__(self, in_channels, **kwargs)
        self._losses(loss_decode)


@MODELS.register_module()
class DINOv2DPTDepthHead(_DepthHead, DPTHead):
    """The official DPT depth head (``reassemble_blocks``, ``convs``, ``fusion_blocks``, ``project``,
    ``conv_depth``) on 4 (map, class token) pairs."""

    def __init__(self, embed_dim: int, loss_decode=DEPTH_LOSSES, init_cfg=None, **kwargs):
        DPTHead.__init__(self, embed_dim, task="depth", **kwargs)
        self._losses(loss_decode)
