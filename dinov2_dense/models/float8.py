"""FP8 matrix products for the backbone's linear layers: an opt-in inference path for speed on
H100/Ada-class GPUs (compute capability 8.9+), whose FP8 tensor cores run about twice the bf16 rate.

:func:`float8_linears` swaps every ``nn.Linear`` inside ``model.blocks`` (attention ``qkv`` and
``proj``, MLP ``fc1`` and ``fc2``, SwiGLU ``w12`` and ``w3`` of ViT-g) for a :class:`Float8Linear`.
Its weight is quantised once to ``float8_e4m3fn``; its input is quantised on every call; one
``torch._scaled_mm`` multiplies them with float32 accumulation and adds the bias.

Scaling is rowwise: one float32 scale per weight row (output channel) and one per input row
(token), ``amax(|row|) / 448`` (448: the largest e4m3 value), so a large value in one token or one
channel costs precision only in its own row. A row of zeros gets scale 1 (it stays zeros).

It changes the numerics: e4m3 keeps 3 mantissa bits, so one layer's output differs from its float
result by about 3.5-3.7% (relative RMS, random data). The last layer's tokens keep a cosine similarity
with the unquantised model's of 0.998-0.999 (class token) and 0.99997 (patch tokens) on the 3-block
test models, 0.995 and 0.99999 on the embedded ``dinov2_dense_tiny`` (trained weights), and 0.996
(patch tokens, random weights, against bf16) on ViT-L/14 (tests/test_float8.py,
benchmarks/gpu_speed.py). That is why it is off by default: ``load_backbone(..., float8=True)``, best
with ``compile=True``: uncompiled, quantising the inputs takes kernels of its own and runs slower than
bf16 (on an H100, ViT-L/14 at 518 batch 32: 488 images/s compiled with FP8, 410 compiled in bf16,
191 with FP8 uncompiled). The patch embedding, the norms and everything outside the blocks stay as
they are. It runs on CPUs with torch 2.13+ too (for tests; older CPU builds have only per-tensor
scaling, and :func:`float8_linears` says so).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

__all__ = ["FP8", "Float8Linear", "check_float8_device", "float8_linears", "quantize_rows"]

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448.0
#: ``_scaled_mm`` wants K and N (the weight's two sizes) to be multiples of this.
ALIGN = 16


def quantize_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    """(M, K) -> e4m3 values (M, K) and float32 scales (M, 1), with ``x ~ values * scales``."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


class Float8Linear(nn.Module):
    """``y = x W^T + b`` through FP8 tensor cores, rowwise scaled (see the module docstring).

    Buffers: ``weight8`` (N, K) e4m3, stored row-major so that its transpose is the column-major
    operand ``_scaled_mm`` needs; ``weight_scale`` (1, N) float32; ``bias`` (N,) in the dtype the
    Linear had, or None. Inputs (..., K) of any float dtype; the output (..., N) has the input's
    dtype (computed in bfloat16 where that is not bfloat16 or float16).
    """

    def __init__(self, weight8: Tensor, weight_scale: Tensor, bias: Tensor | None, name: str = ""):
        super().__init__()
        self.out_features, self.in_features = weight8.shape
        self.name = name  # where it sits in the model (for error messages)
        self.register_buffer("weight8", weight8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @staticmethod
    def fits(linear: nn.Linear) -> bool:
        """Whether ``_scaled_mm`` takes this layer's shape (K and N multiples of 16)."""
        return linear.in_features % ALIGN == 0 and linear.out_features % ALIGN == 0

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, name: str = "") -> Float8Linear:
        if not cls.fits(linear):
            raise ValueError(f"{name or 'Linear'}({linear.in_features}, {linear.out_features}): FP8 matrix products "
                             f"need both sizes to be multiples of {ALIGN}")
        weight8, scale = quantize_rows(linear.weight.detach())
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(weight8.contiguous(), scale.reshape(1, -1).contiguous(), bias, name)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight8.dtype != FP8:  # Module.to(dtype) casts every floating buffer, float8 ones too
            raise RuntimeError(f"Float8Linear {self.name or '(unnamed)'} weights were cast to {self.weight8.dtype} "
                               "(model.to(dtype) after float8_linears?): set the dtype first, then convert")
        shape = x.shape
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        a8, scale = quantize_rows(x.reshape(-1, shape[-1]))
        bias = None if self.bias is None else self.bias.to(out_dtype)
        out = torch._scaled_mm(a8, self.weight8.t(), scale_a=scale, scale_b=self.weight_scale, bias=bias,
                               out_dtype=out_dtype)
        return out.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def check_float8_device(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> None:
    """Raise a ValueError when ``device`` cannot run rowwise-scaled FP8 matrix products with
    outputs for a model of ``dtype`` (float16 outputs came to rowwise scaling later than bfloat16)."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            raise ValueError("FP8 matrix products need an H100/Ada-class GPU (compute capability 8.9+), found "
                             f"{torch.cuda.get_device_name(device)} ({major}.{minor}); load the backbone without float8")
    try:  # the capability is not all: the build of torch must have the kernel too
        a8, scale = quantize_rows(torch.ones(ALIGN, ALIGN, device=device))
        out_dtype = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        torch._scaled_mm(a8, a8.t(), scale_a=scale, scale_b=scale.reshape(1, -1), out_dtype=out_dtype)
    except (RuntimeError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"FP8 matrix products for a {str(dtype).removeprefix('torch.')} model do not run on {device} "
                         f"with torch {torch.__version__} ({first[:200]}); load the backbone without float8") from None


def float8_linears(model: nn.Module) -> int:
    """Replace, in place, every ``nn.Linear`` inside ``model.blocks`` whose shape fits by a
    :class:`Float8Linear` (quantised from its current weights: set the dtype first); returns how
    many were replaced; a warning names those whose shape does not fit. The state dict changes
    (``weight8``, ``weight_scale``): this is for inference."""
    param = next(model.parameters())
    check_float8_device(param.device, param.dtype)
    swap, kept = [], []
    for path, parent in model.blocks.named_modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                where = ".".join(part for part in ("blocks", path, name) if part)
                if Float8Linear.fits(child):
                    swap.append((parent, name, child, where))
                else:
                    kept.append(f"{where} ({child.in_features}x{child.out_features})")
    if kept:
        warnings.warn(f"float8: {len(kept)} of {len(swap) + len(kept)} linear layers stay in "
                      f"{str(param.dtype).removeprefix('torch.')}: both sizes must be multiples of {ALIGN} "
                      f"({', '.join(kept[:4])}{' ...' if len(kept) > 4 else ''})", stacklevel=2)
    for parent, name, child, where in swap:
        setattr(parent, name, Float8Linear.from_linear(child, where))
    return len(swap)
