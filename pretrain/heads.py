"""The DINO projection head (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"), as in Oquab et al. 2023, "DINOv2": MLP, bottleneck, L2 normalisation and a
weight-normalised linear layer onto the prototypes. iBOT uses the same class, shared with DINO or as
a second instance.

Parameter names, initialisation and numerics follow the official ``dinov2.layers.DINOHead``. The
last layer uses ``torch.nn.utils.parametrizations.weight_norm``, so our state dict names its two
parameters ``last_layer.parametrizations.weight.original0`` / ``original1`` where the official head
(the deprecated ``torch.nn.utils.weight_norm``) has ``last_layer.weight_g`` / ``weight_v``. An official
state dict still loads with ``strict=True`` (torch renames the keys when loading);
`dino_head_state_dict_to_official` and `dino_head_state_dict_from_official` convert explicitly.

Layering: torch only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["DINOHead", "dino_head_state_dict_to_official", "dino_head_state_dict_from_official"]

# Official (torch.nn.utils.weight_norm) key suffix -> ours (parametrizations.weight_norm).
_WEIGHT_NORM_KEYS = {
    "last_layer.weight_g": "last_layer.parametrizations.weight.original0",
    "last_layer.weight_v": "last_layer.parametrizations.weight.original1",
}


def _mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int, use_bn: bool, bias: bool) -> nn.Module:
    """Linear (+ BatchNorm1d) + GELU blocks ending in a Linear to `bottleneck_dim`; one Linear if nlayers == 1."""
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    dims = [in_dim] + [hidden_dim] * (nlayers - 1)
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out, bias=bias))
        if use_bn:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.GELU())
    layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
    return nn.Sequential(*layers)


def _init_linear(module: nn.Module) -> None:
    """The official init of the MLP: truncated normal (std 0.02) weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


class DINOHead(nn.Module):
    """Projection head: (..., in_dim) backbone tokens -> (..., out_dim) prototype scores.

    Args:
        in_dim: width of the backbone tokens.
        out_dim: K, the number of prototypes.
        use_bn: BatchNorm1d after each hidden Linear (inputs must then be (n, in_dim)).
        nlayers: Linear layers of the MLP (at least 1).
        hidden_dim: width of the hidden layers.
        bottleneck_dim: width of the L2-normalised bottleneck.
        mlp_bias: biases in the MLP's Linear layers.

    Init as the official head: MLP Linear weights trunc_normal(std=0.02), biases 0; ``last_layer`` a
    bias-free Linear with torch's default init, weight-normalised with its norm ``g`` set to 1 (and,
    as in DINOv2, left trainable).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        use_bn: bool = False,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        self.mlp = _mlp(max(nlayers, 1), in_dim, bottleneck_dim, hidden_dim, use_bn, mlp_bias)
        self.apply(_init_linear)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) -> (..., out_dim)."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def _rename(state_dict: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """Copy of `state_dict` with every key ending in a `mapping` key given the mapped suffix."""
    out = {}
    for key, value in state_dict.items():
        for old, new in mapping.items():
            if key == old or key.endswith("." + old):
                key = key[: len(key) - len(old)] + new
                break
        out[key] = value
    return out


def dino_head_state_dict_to_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Our head's keys (also under a prefix, e.g. ``dino_head.``) renamed to the official
    ``last_layer.weight_g`` / ``weight_v``, for ``dinov2.layers.DINOHead.load_state_dict``."""
    return _rename(state_dict, {ours: official for official, ours in _WEIGHT_NORM_KEYS.items()})


def dino_head_state_dict_from_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An official head's keys renamed to ours (``load_state_dict`` also does this by itself)."""
    return _rename(state_dict, _WEIGHT_NORM_KEYS)
