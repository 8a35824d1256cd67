"""Teacher targets shared by the DINO and iBOT losses: EMA centring and Sinkhorn-Knopp.

Centring (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers", DINO):
the teacher's prototype scores are shifted by a center ``c`` and sharpened by a temperature,
``softmax((t - c) / teacher_temp)``; after each step ``c <- m c + (1 - m) mean_batch(t)``. As in
the official DINOv2 code the new batch mean is summed with an asynchronous all-reduce that is only
waited for, and applied, at the next ``softmax_center_teacher`` (or ``apply_center_update``) call.

Sinkhorn-Knopp (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting Cluster
Assignments", SwAV; used by Oquab et al. 2023, DINOv2, with 3 iterations): the teacher's
``exp(t / teacher_temp)`` is scaled alternately so that every prototype gets 1/K of the mass and every
sample 1/B, in float32. Under torch.distributed the sums that run over samples are all-reduced, so each
rank gets its rows of the assignment of the global batch; without a process group nothing is reduced.

Layering: torch only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import all_reduce_, distributed, world_size

__all__ = ["sinkhorn_knopp", "TeacherCentering"]


@torch.no_grad()
def sinkhorn_knopp(
    teacher_output: Tensor, teacher_temp: float, n_samples: int | Tensor, n_iterations: int = 3
) -> Tensor:
    """Balanced soft assignment of samples to prototypes (SwAV's Sinkhorn-Knopp), in float32.

    Args:
        teacher_output: (n, K) teacher scores of this rank's n samples over K prototypes.
        teacher_temp: temperature of ``exp(t / teacher_temp)``.
        n_samples: B, the number of samples over all ranks (an int or a tensor holding it).
        n_iterations: rounds of (prototype, sample) normalisation.

    Returns:
        (n, K) float32; every row sums to 1 (the teacher target of that sample).
    """
    if teacher_output.dim() != 2:
        raise ValueError(
            "sinkhorn_knopp: teacher_output must have shape (n_samples, n_prototypes), "
            f"got {tuple(teacher_output.shape)}"
        )
    q = torch.exp(teacher_output.float() / teacher_temp).t()  # (K, n) as in the paper's notation
    n_prototypes = q.shape[0]
    q /= all_reduce_(torch.sum(q))
    for _ in range(n_iterations):
        q /= all_reduce_(torch.sum(q, dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= n_prototypes
        q /= torch.sum(q, dim=0, keepdim=True)  # each sample: total mass 1/B (a sample lives on one rank)
        q /= n_samples
    q *= n_samples  # columns sum to 1: an assignment per sample
    return q.t()


class TeacherCentering(nn.Module):
    """Base of `DINOLoss` and `iBOTPatchLoss`: the ``center`` buffer and its EMA update.

    Subclasses give the center's shape and `_batch_center_sum`, the sum over this rank's batch of the
    per-sample teacher means; the batch center is that sum, all-reduced, over ``len(batch) * world_size``.
    The attributes ``center``, ``updated``, ``reduce_handle`` and ``async_batch_center`` carry the
    official meanings.
    """

    def __init__(self, center_shape: tuple[int, ...], student_temp: float, center_momentum: float) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(center_shape))
        self.updated = True
        self.reduce_handle: dist.Work | None = None
        self.async_batch_center: Tensor | None = None
        self.len_teacher_output: int | None = None
        self._update_world_size = 1

    def _batch_center_sum(self, teacher_output: Tensor) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output: Tensor, teacher_temp: float) -> Tensor:
        """``softmax((teacher_output - center) / teacher_temp)`` over the last dim, after applying a
        pending center update. Same shape as `teacher_output`; float32 (the center is float32)."""
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_output: Tensor) -> None:
        """Start the center update with this step's raw teacher output (applied at the next centring)."""
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output: Tensor) -> None:
        """Sum this rank's batch statistics and launch their asynchronous all-reduce."""
        self.updated = False
        self.len_teacher_output = len(teacher_output)
        self._update_world_size = world_size()
        self.async_batch_center = self._batch_center_sum(teacher_output)
        if distributed():
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self) -> None:
        """Wait for the pending all-reduce, then ``center <- m center + (1 - m) batch_center``."""
        if self.updated:
            return
        if self.reduce_handle is not None:
            self.reduce_handle.wait()
            self.reduce_handle = None
        batch_center = self.async_batch_center / (self.len_teacher_output * self._update_world_size)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)
        self.updated = True
