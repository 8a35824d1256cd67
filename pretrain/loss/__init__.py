"""Pretraining losses of DINOv2 (Oquab et al. 2023): DINO on class tokens, iBOT on masked patches,
KoLeo on the student's class tokens. Names, constructors and call signatures are the official
``dinov2.loss`` ones, with the same numerics; they run with or without a torch.distributed process
group (all-reducing the Sinkhorn-Knopp sums and the centers when there is one).

Layering: torch only.
"""

from ._common import relative_entropy
from .centering import sinkhorn_knopp
from .dino import DINOLoss
from .ibot import iBOTPatchLoss
from .koleo import KoLeoLoss

__all__ = ["DINOLoss", "iBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp", "relative_entropy"]
