"""iBOT masked-patch loss (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer";
as used by Oquab et al. 2023, "DINOv2: Learning Robust Visual Features without Supervision").

The student sees the image with some patches masked and must predict, at each masked patch, the
teacher's target distribution over the prototypes; the per-patch cross-entropies are weighted by
1 / (number of masked patches of that image) and averaged over the images. Class name, constructor,
method names and call signatures are those of the official ``dinov2.loss.iBOTPatchLoss``, with the
same numerics.

Layering: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._common import all_reduce_, at_least_float32, distributed
from .centering import TeacherCentering, sinkhorn_knopp

__all__ = ["iBOTPatchLoss"]


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


class iBOTPatchLoss(TeacherCentering):  # noqa: N801 (the official name)
    """Cross-entropy between teacher targets and student softmax at masked patches.

    Args:
        patch_out_dim: K, the number of prototypes of the (iBOT or shared DINO) head.
        student_temp: temperature of the student softmax.
        center_momentum: m of the center EMA ``c <- m c + (1 - m) mean(t)``.

    The ``center`` buffer has shape (1, 1, K). `update_center` takes teacher patch outputs and
    averages them over dim 1 before the batch mean, as the official code does.
    """

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__((1, 1, patch_out_dim), student_temp, center_momentum)

    def _batch_center_sum(self, teacher_output: Tensor) -> Tensor:
        return torch.sum(teacher_output.mean(1), dim=0, keepdim=True)

    # The official argument names, for keyword calls.
    def softmax_center_teacher(self, teacher_patch_tokens: Tensor, teacher_temp: float) -> Tensor:
        """Centred, sharpened targets ``softmax((t - center) / teacher_temp)``, e.g. (B, N, K) -> (B, N, K)."""
        return super().softmax_center_teacher(teacher_patch_tokens, teacher_temp)

    def update_center(self, teacher_patch_tokens: Tensor) -> None:
        """Start the center update with this step's raw teacher patch outputs (B, N, K)."""
        super().update_center(teacher_patch_tokens)

    def reduce_center_update(self, teacher_patch_tokens: Tensor) -> None:
        """Sum this rank's per-image patch means and launch their asynchronous all-reduce."""
        super().reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_output: Tensor,
        teacher_temp: float,
        n_masked_patches_tensor: Tensor | int,
        n_iterations: int = 3,
    ) -> Tensor:
        """Sinkhorn-Knopp targets (n, K) float32 for the teacher scores (n, K) of this rank's masked patches.

        `n_masked_patches_tensor` holds this rank's number of masked patches; B is its sum over the
        ranks. Unlike the official code it is not all-reduced in place (the caller's tensor is left
        as is), and no process group is needed.
        """
        n_samples = torch.as_tensor(n_masked_patches_tensor, device=teacher_output.device)
        if distributed():
            n_samples = all_reduce_(n_samples.clone())
        return sinkhorn_knopp(teacher_output, teacher_temp, n_samples, n_iterations)

    def forward(self, student_patch_tokens: Tensor, teacher_patch_tokens: Tensor, student_masks_flat: Tensor) -> Tensor:
        """Loss over all patches, masked ones selected by `student_masks_flat`.

        Args:
            student_patch_tokens: (B, N, K) student scores.
            teacher_patch_tokens: (B, N, K) teacher targets.
            student_masks_flat: (B, N) bool, True at masked patches.

        Returns:
            A scalar: ``-mean_b sum_{masked i} sum_k t log_softmax(s / student_temp) / max(n_masked_b, 1)``.
        """
        s, t, masks = student_patch_tokens, teacher_patch_tokens, student_masks_flat
        if s.shape != t.shape or s.dim() != 3 or _shape(masks) != _shape(s)[:2]:
            raise ValueError(
                f"iBOTPatchLoss: expected student and teacher (B, N, K) and masks (B, N), got "
                f"{_shape(s)}, {_shape(t)} and {_shape(masks)}"
            )
        loss = torch.sum(t * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)  # (B, N)
        loss = torch.sum(loss * masks.float(), dim=-1) / masks.sum(dim=-1).clamp(min=1.0)
        return -loss.mean()

    def forward_masked(
        self,
        student_patch_tokens_masked: Tensor,
        teacher_patch_tokens_masked: Tensor,
        student_masks_flat: Tensor,
        n_masked_patches: int | None = None,
        masks_weight: Tensor | None = None,
    ) -> Tensor:
        """Loss on the masked patches only, gathered over the batch (the official training path).

        Args:
            student_patch_tokens_masked: (M, K) student scores of the masked patches (M may include
                padding rows after the first `n_masked_patches`).
            teacher_patch_tokens_masked: (M, K) teacher targets.
            student_masks_flat: (B, N) bool masks; B is the number of images.
            n_masked_patches: keep the first n rows (drops the padding), None keeps all.
            masks_weight: (n,) weight per masked patch; default 1 / (masked patches of its image).

        Returns:
            A scalar: ``-sum_i w_i sum_k t_ik log_softmax(s_i / student_temp)_k / B``, computed in at
            least float32 (as the official code does with xformers' cross-entropy).
        """
        s, t = at_least_float32(student_patch_tokens_masked), at_least_float32(teacher_patch_tokens_masked)
        if s.shape != t.shape or s.dim() != 2 or student_masks_flat.dim() != 2:
            raise ValueError(
                f"iBOTPatchLoss.forward_masked: expected student and teacher (M, K) and masks (B, N), got "
                f"{_shape(s)}, {_shape(t)} and {_shape(student_masks_flat)}"
            )
        loss = torch.sum(t * F.log_softmax(s / self.student_temp, dim=-1), dim=-1)  # (M,)
        if masks_weight is None:
            masks = student_masks_flat.bool()
            masks_weight = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        if loss.shape != masks_weight.shape:
            raise ValueError(
                f"iBOTPatchLoss.forward_masked: {loss.shape[0]} masked patches but {_shape(masks_weight)} weights "
                "(the masks hold one True per masked row; pass n_masked_patches to drop padding rows)"
            )
        return -(loss * masks_weight).sum() / student_masks_flat.shape[0]
