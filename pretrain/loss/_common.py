"""Small helpers shared by the pretraining losses: the process group and floating-point precision."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def distributed() -> bool:
    """True inside an initialised torch.distributed process group (the losses all-reduce then)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks of the default process group; 1 without one."""
    return dist.get_world_size() if distributed() else 1


def all_reduce_(tensor: Tensor) -> Tensor:
    """Sum `tensor` over all ranks in place (a no-op without a process group) and return it."""
    if distributed():
        dist.all_reduce(tensor)
    return tensor


def at_least_float32(x: Tensor) -> Tensor:
    """`x` in float32 when it is float16 / bfloat16 (logs and small distances need the range), else as is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@torch.no_grad()
def relative_entropy(probs: Tensor) -> Tensor:
    """Mean entropy of the rows of ``probs`` (..., K) over log K: 1 for uniform rows, 0 for one-hot
    ones. A teacher whose targets sit at 1 teaches nothing (see ``pretrain.train``'s warning)."""
    p = probs.float().flatten(0, -2)
    k = p.shape[-1]
    if k < 2 or p.shape[0] == 0:
        return p.new_zeros(())
    return -(p * p.clamp_min(1e-30).log()).sum(-1).mean() / torch.log(p.new_tensor(float(k)))
