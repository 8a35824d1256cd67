"""Building blocks of the DINOv2 Vision Transformer.

Attribute names are the state-dict keys of the official release
(facebookresearch/dinov2, ``dinov2/layers``), so official checkpoints load with
``strict=True``. Attention goes through ``F.scaled_dot_product_attention`` only.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import sdpa_kernel


def _onednn_fusable(x: Tensor, weight: Tensor) -> bool:
    """oneDNN's fused linear kernels (bias, GELU, residual add in the GEMM epilogue) apply on CPU,
    in fp32 inference; elsewhere the plain ops run."""
    return (
        _HAS_ONEDNN_LINEAR
        and not torch.compiler.is_compiling()  # the compiler fuses on its own
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
# sdpa_kernel takes the order of its list as a priority from torch 2.6 on; before, the list is a set
_PRIORITY = {"set_priority": True} if "set_priority" in inspect.signature(sdpa_kernel).parameters else {}


def linear(x: Tensor, layer: nn.Module, activation: str = "none") -> Tensor:
    """``act(layer(x))`` with activation "none" or "gelu" (exact), fused on CPU when possible."""
    plain = isinstance(layer, nn.Linear)  # else e.g. a Float8Linear (models/float8.py), with its own kernel
    if plain and _onednn_fusable(x, layer.weight):
        shape = x.shape
        algorithm = "none" if activation == "gelu" else ""
        out = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, shape[-1]), layer.weight, layer.bias, activation, [], algorithm
        )
        return out.view(*shape[:-1], out.shape[-1])
    out = F.linear(x, layer.weight, layer.bias) if plain else layer(x)
    return F.gelu(out) if activation == "gelu" else out


def patch_embed_matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The patch embedding as one GEMM: (B, C, H, W) image, (D, C, p, q) conv weight -> (B, H/p * W/q, D).

    Equal to ``conv2d(x, weight, bias, stride=(p, q)).flatten(2).transpose(1, 2)`` up to the order of
    the sums (H and W multiples of p and q). Each patch becomes a row of C*p*q pixels in the weight's
    (c, i, j) order, and one ``addmm`` writes the tokens row-major, with no transpose after. On a GPU
    the strided convolution runs as a slow implicit GEMM in cuDNN: for ViT-L/14 in bf16, 32 crops of
    644x644 took 2.6 ms in a profile of the +ms protocol (H100), where a GEMM of that size needs
    about 0.15 ms (an estimate)."""
    b, c, height, width = x.shape
    d, _, p, q = weight.shape
    h, w = height // p, width // q
    rows = x.reshape(b, c, h, p, w, q).permute(0, 2, 4, 1, 3, 5).reshape(b * h * w, c * p * q)
    kernel = weight.reshape(d, c * p * q).t()
    out = torch.mm(rows, kernel) if bias is None else torch.addmm(bias, rows, kernel)
    return out.view(b, h * w, d)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) to patch tokens (B, H/p * W/p, D) by a strided convolution.

    On CUDA devices, when no gradient is wanted, the same product runs as one GEMM
    (:func:`patch_embed_matmul`); on the CPU the convolution stays (its numerics are the reference).
    """

    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 384, img_size: int = 518):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.img_size = (img_size, img_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size[0]
        if h % p or w % p:
            raise ValueError(
                f"input of {h}x{w} pixels is not a multiple of the patch size {p}; "
                "pad or resize it first (dinov2_dense.features.extract_features does this for you)"
            )
        proj = self.proj
        wants_grad = torch.is_grad_enabled() and (x.requires_grad or proj.weight.requires_grad)
        if x.is_cuda and isinstance(proj, nn.Conv2d) and not wants_grad:
            return self.norm(patch_embed_matmul(x, proj.weight, proj.bias))
        return self.norm(proj(x).flatten(2).transpose(1, 2))


class LayerScale(nn.Module):
    """Per-channel residual scaling (CaiT, Touvron et al. 2021); the parameter is ``gamma``."""

    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drops whole residual branches per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Two-layer MLP with GELU: ``fc1`` (D -> hidden), ``fc2`` (hidden -> D)."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    @property
    def out_layer(self) -> nn.Linear:
        return self.fc2

    def hidden(self, x: Tensor) -> Tensor:
        if self.training:
            return self.act(self.fc1(x))
        return linear(x, self.fc1, "gelu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.hidden(x))


def swiglu_hidden_features(hidden_features: int) -> int:
    """Width of the official fused SwiGLU: 2/3 of the MLP width, rounded up to a multiple of 8."""
    return (int(hidden_features * 2 / 3) + 7) // 8 * 8


class SwiGLUFFNFused(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020) as in ViT-g/14: ``w12`` packs gate and value, ``w3`` projects back."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True):
        super().__init__()
        hidden = swiglu_hidden_features(hidden_features)
        self.w12 = nn.Linear(in_features, 2 * hidden, bias=bias)
        self.w3 = nn.Linear(hidden, in_features, bias=bias)

    @property
    def out_layer(self) -> nn.Linear:
        return self.w3

    def hidden(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return F.silu(gate) * value

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(self.hidden(x))


class Attention(nn.Module):
    """Multi-head self-attention with a packed ``qkv`` projection and an output ``proj``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sdpa_backends: list | None = None  # None: torch's choice; else see dinov2_dense.models.speed
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    @property
    def out_layer(self) -> nn.Linear:
        return self.proj

    def hidden(self, x: Tensor) -> Tensor:
        """Attention output before ``proj``, (B, N, C)."""
        B, N, C = x.shape
        qkv = self.qkv(x) if self.training else linear(x, self.qkv)
        qkv = qkv.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.sdpa_backends is None:
            x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        else:
            with sdpa_kernel(self.sdpa_backends, **_PRIORITY):
                x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return x.transpose(1, 2).reshape(B, N, C)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.hidden(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float | None = None,
        ffn_layer: Callable[..., nn.Module] = Mlp,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = ffn_layer(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            x = _fused_residual(x, self.attn.hidden(self.norm1(x)), self.attn.out_layer, self.ls1)
            return _fused_residual(x, self.mlp.hidden(self.norm2(x)), self.mlp.out_layer, self.ls2)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


def _fused_residual(x: Tensor, hidden: Tensor, linear: nn.Module, scale: nn.Module) -> Tensor:
    """``x + scale(linear(hidden))`` in one GEMM: LayerScale is folded into the weights and the
    residual is the GEMM's accumulator (inference only; equal up to fp32 rounding, ~1e-7)."""
    if not isinstance(linear, nn.Linear):  # e.g. a Float8Linear: no float weights to fold
        return x + scale(linear(hidden))
    weight, bias = linear.weight, linear.bias
    if isinstance(scale, LayerScale):
        weight = weight * scale.gamma.unsqueeze(1)
        bias = bias * scale.gamma if bias is not None else None
    shape = x.shape
    x2, h2 = x.reshape(-1, shape[-1]), hidden.reshape(-1, hidden.shape[-1])
    if _onednn_fusable(h2, weight) and x2.dtype == torch.float32:
        return torch.ops.mkldnn._linear_pointwise.binary(h2, x2, weight, bias, "add").view(shape)
    out = torch.addmm(x2, h2, weight.t())
    if bias is not None:
        out.add_(bias)
    return out.view(shape)

