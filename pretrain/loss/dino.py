"""DINO loss on the class tokens (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
Transformers"; as used by Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without
Supervision").

The student's prototype scores are turned into ``log_softmax(s / student_temp)`` and compared by
cross-entropy with the teacher's targets, either centred (`softmax_center_teacher`) or balanced by
Sinkhorn-Knopp (`sinkhorn_knopp_teacher`). Class name, constructor, method names and call signatures
are those of the official ``dinov2.loss.DINOLoss``, with the same numerics.

Layering: torch only.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import world_size
from .centering import TeacherCentering, sinkhorn_knopp

__all__ = ["DINOLoss"]


class DINOLoss(TeacherCentering):
    """Cross-entropy between teacher targets and student softmax over ``out_dim`` prototypes.

    Args:
        out_dim: K, the number of prototypes (the DINO head's output size).
        student_temp: temperature of the student softmax.
        center_momentum: m of the center EMA ``c <- m c + (1 - m) mean(t)``.

    The ``center`` buffer has shape (1, K). Under torch.distributed the Sinkhorn-Knopp sums and the
    center's batch mean run over all ranks (every rank must hold the same number of samples, as
    in the official code); without a process group they stay local.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, out_dim), student_temp, center_momentum)

    def _batch_center_sum(self, teacher_output: Tensor) -> Tensor:
        return torch.sum(teacher_output, dim=0, keepdim=True)  # (1, K)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
        """Sinkhorn-Knopp targets (n, K) float32 for this rank's teacher scores (n, K); B = n * world_size."""
        n_samples = teacher_output.shape[0] * world_size()
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples, n_iterations)

    def forward(
        self, student_output_list: Iterable[Tensor], teacher_out_softmaxed_centered_list: Iterable[Tensor]
    ) -> Tensor:
        """Sum over every (student, teacher) pair of ``-mean_i sum_k t_ik log_softmax(s_i / student_temp)_k``.

        Args:
            student_output_list: student scores, each (n, K) (e.g. the local crops' ``chunk``).
            teacher_out_softmaxed_centered_list: teacher targets, each (n, K); a (n_crops, n, K)
                tensor counts as a list of its n_crops slices, as in the official training loop.

        Returns:
            A scalar: the sum (not the mean) over the pairs, as in the official code.
        """
        students, teachers = list(student_output_list), list(teacher_out_softmaxed_centered_list)
        if not students or not teachers:
            raise ValueError(
                f"DINOLoss: got {len(students)} student and {len(teachers)} teacher outputs; "
                "both lists need at least one"
            )
        total_loss: Tensor | int = 0
        for s in students:
            lsm = F.log_softmax(s / self.student_temp, dim=-1)
            for t in teachers:
                if s.shape != t.shape or s.dim() != 2:
                    raise ValueError(
                        f"DINOLoss: every student output and teacher target must have the same shape (n, K), got "
                        f"{tuple(s.shape)} and {tuple(t.shape)}; pass lists of (n, K) tensors, e.g. x.chunk(n_crops)"
                    )
                total_loss = total_loss - torch.sum(t * lsm, dim=-1).mean()
        return total_loss
