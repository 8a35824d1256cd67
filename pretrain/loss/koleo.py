"""KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search"; used by
Oquab et al. 2023, DINOv2, on the student class tokens).

The Kozachenko-Leonenko differential-entropy estimator, up to constants, is the mean log distance of
each point to its nearest neighbour; minimising its negative spreads the embeddings over the sphere.
Class name and call are those of the official ``dinov2.loss.KoLeoLoss`` with the same numerics for
ordinary inputs (see `KoLeoLoss` for the degenerate cases).

Layering: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import at_least_float32

__all__ = ["KoLeoLoss"]


class KoLeoLoss(nn.Module):
    """``-mean_i log(||x_i - x_nn(i)|| + eps)`` over L2-normalised embeddings.

    The nearest neighbour nn(i) is the row of largest inner product other than i. The distance is
    torch's pairwise distance ``||x_i - x_j + 1e-8||``, so it never reaches 0.

    Degenerate inputs (where the official code differs, its result in brackets):
    - Exact duplicates (x_i == x_nn(i) after normalisation): the distance is ``1e-8 * sqrt(D)``, so
      the term is ``-log(1e-8 * (sqrt(D) + 1))`` with eps=1e-8 (about 15.4 for D=384), the official
      value. The term gets no gradient: no direction separates two equal rows [a gradient of about
      1 / (B * 1e-8 * D) along the arbitrary direction (1, ..., 1), inf in float16].
    - One row: it is its own neighbour, so it counts as a duplicate (same value, zero gradient).
      An empty batch raises ValueError [NaN].
    - Two opposite rows (inner product -1): each is the other's neighbour [the row itself].
    - float16 / bfloat16 input is computed in float32 and returns a float32 loss [in the input dtype,
      where eps=1e-8 underflows in float16 and a duplicate gives inf].
    """

    def __init__(self) -> None:
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)  # ||x1 - x2 + eps||, never 0

    def pairwise_NNs_inner(self, x: Tensor) -> Tensor:  # noqa: N802 (the official name)
        """Index (B,) of each row's nearest neighbour among the other rows of L2-normalised x (B, D)."""
        with torch.no_grad():
            dots = torch.mm(x, x.t())
            dots.fill_diagonal_(float("-inf"))
            return torch.max(dots, dim=1).indices

    def forward(self, student_output: Tensor, eps: float = 1e-8) -> Tensor:
        """Scalar KoLeo loss of `student_output` (B, D); `eps` goes to the normalisation and the log."""
        if student_output.dim() != 2 or student_output.shape[0] == 0:
            raise ValueError(
                f"KoLeoLoss: expected a non-empty (B, D) batch of embeddings, got {tuple(student_output.shape)}"
            )
        with torch.autocast(device_type=student_output.device.type, enabled=False):
            x = F.normalize(at_least_float32(student_output), eps=eps, p=2, dim=-1)
            neighbours = x[self.pairwise_NNs_inner(x)]
            distances = self.pdist(x, neighbours)  # (B,)
            duplicate = (x == neighbours).all(dim=-1)
            distances = torch.where(duplicate, distances.detach(), distances)
            return -torch.log(distances + eps).mean()
