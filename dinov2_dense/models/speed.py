"""The inference fast path of a backbone, chosen by the user: the attention kernel and
``torch.compile`` of the blocks (weights in bf16/fp16 are ``load_backbone(dtype=...)``).

* :func:`set_attention`: the kernels ``scaled_dot_product_attention`` may use, in order of
  preference: ``"auto"`` (torch's own choice, the default), ``"flash"``, ``"efficient"``
  (memory-efficient), ``"cudnn"`` or ``"math"``. A kernel that cannot run the inputs falls back to
  the next one that can (math last), so a choice never fails on a device that lacks it.
* :func:`compile_blocks`: ``torch.compile`` of each transformer block in place (state-dict keys
  unchanged). Mode ``"default"`` or ``"max-autotune"`` (GEMM autotuning, without CUDA graphs) mark
  shapes dynamic, so a new image size or batch does not compile again; ``"reduce-overhead"``
  compiles the whole block stack as one graph and records CUDA graphs, one per input shape (best
  for a fixed size, small batches on a GPU); its outputs are copied out of the graph's buffers, so results of earlier calls stay valid. Where no compiler is present (no C++ compiler for CPUs, no
  Triton for GPUs) or compiling fails, the blocks stay as they are and a warning says why.

Both keep the numerics within float tolerance of the plain path (the compiler may reorder
floating-point sums); both are off by default.
"""

from __future__ import annotations

import shutil
import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend

from ..options import ATTENTION_KERNEL_NAMES, COMPILE_MODES
from .float8 import Float8Linear
from .layers import Attention

__all__ = ["ATTENTION_KERNELS", "COMPILE_MODES", "compile_blocks", "compiler_missing", "set_attention"]

ATTENTION_KERNELS = dict(zip(ATTENTION_KERNEL_NAMES, (None, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                        SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)))


#: What each mode of :func:`compile_blocks` asks ``torch.compile`` for, block by block.
BLOCK_COMPILE_MODES = {"max-autotune": "max-autotune-no-cudagraphs"}
#: Inductor options for blocks with FP8 layers (models/float8.py). The fc2 input is quantised per
#: 4096-wide row after the GELU; inductor keeps rows of at most 1024 in registers and reads wider ones
#: twice in a loop (0.79 ms of a 2.8 ms ViT-L block at 518 batch 32 on an H100). With multi_kernel it
#: also builds the one-pass kernel and picks the faster at run time: ViT-L 434 -> 488 images/s there.
#: Without the FX graph cache: in torch 2.11 a multi-kernel graph loaded from it fails ("'NoneType'
#: object does not support the context manager protocol").
FLOAT8_OPTIONS = {"triton.multi_kernel": 1, "fx_graph_cache": False}


def set_attention(model: nn.Module, kernel: str = "auto") -> nn.Module:
    """Prefer ``kernel`` (see the module docstring) in every attention layer of ``model``; the
    other kernels follow in torch's order, so inputs it cannot take still run. Returns ``model``."""
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"attention={kernel!r}: expected one of {', '.join(ATTENTION_KERNELS)}")
    first = ATTENTION_KERNELS[kernel]
    order = None if first is None else [first] + [b for b in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                                            SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
                                                  if b != first]
    for module in model.modules():
        if isinstance(module, Attention):
            module.sdpa_backends = order
    return model


def compiler_missing(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or None when it can."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python"
    kind = torch.device(device).type
    if kind == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton is not installed (pip install triton)"
    if kind == "cpu":
        return None if any(shutil.which(c) for c in ("c++", "g++", "clang++")) else "no C++ compiler found (c++, g++, clang++)"
    return f"compiling for {kind} devices is not supported here"


def compile_blocks(model: nn.Module, mode: str = "default", *, check: bool = True) -> bool:
    """``torch.compile`` each block of ``model`` (a DinoVisionTransformer) in place; see the module
    docstring. ``check``: run a small forward now, so a compiler failure shows here (and falls back)
    rather than in the first real call. Returns whether the blocks are compiled."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode {mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    param = next(model.parameters())
    why = compiler_missing(param.device)
    if why is not None:
        warnings.warn(f"torch.compile asked for, but {why}: the backbone runs uncompiled", stacklevel=2)
        return False
    blocks = list(model.blocks)
    if mode == "reduce-overhead" and param.device.type != "cuda":
        warnings.warn(f"compile mode reduce-overhead records CUDA graphs, which the {param.device.type} has not: "
                      "it compiles the blocks as one graph for each input shape (each new size compiles again) "
                      "and replays no graph; the default mode suits this device", stacklevel=2)
    if mode == "reduce-overhead":
        # One graph for all blocks: blocks compiled one by one would share one CUDA graph (same code),
        # each replay overwriting the output the next block is reading.
        graph = torch.compile(type(model).forward_layers.__get__(model), mode=mode, dynamic=False)

        def forward_layers(x, layers, norm=True):
            torch.compiler.cudagraph_mark_step_begin()
            return [t.clone() for t in graph(x, layers, norm)]

        model.forward_layers = forward_layers  # an instance attribute: no module, the state dict is unchanged
    else:
        # torch's "max-autotune" records CUDA graphs too, which per-block compiling cannot use (the same
        # overwrite as above: measured on an H100, the first forward failed); autotuning is kept.
        settings = dict(mode=None if mode == "default" else BLOCK_COMPILE_MODES[mode], dynamic=True)
        if mode == "default" and any(isinstance(m, Float8Linear) for m in model.modules()):
            settings = dict(settings, options=FLOAT8_OPTIONS)  # (torch takes options or a mode, not both)
        for block in blocks:
            block.compile(**settings)
    if not check:
        return True
    p = model.patch_size
    try:
        with torch.no_grad():
            model.intermediate_maps(torch.zeros(2, 3, 3 * p, 4 * p, device=param.device, dtype=param.dtype), None)
    except Exception as exc:  # a compiler error of any kind: fall back to the plain blocks
        for block in blocks:
            block._compiled_call_impl = None
        model.__dict__.pop("forward_layers", None)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"torch.compile failed ({type(exc).__name__}: {first[:200]}): the backbone runs uncompiled",
                      stacklevel=2)
        return False
    return True
