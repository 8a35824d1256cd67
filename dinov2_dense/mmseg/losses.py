"""The depth toolbox's SigLoss (the DINOv2 depth protocols), which mmseg lacks, and our spatial GradientLoss, in
mmseg's registry: ``dict(type="SigLoss", loss_weight=1.0, warm_up=True)``. Same computation as
:mod:`heads.losses`; mmseg reads each loss's ``loss_name``."""

from __future__ import annotations

from heads import losses
from mmseg.registry import MODELS


def _named(base: type, default: str) -> type:
    class Named(base):
        def __init__(self, *args, loss_name: str = default, **kwargs):
            super().__init__(*args, **kwargs)
            self._loss_name = loss_name

        @property
        def loss_name(self) -> str:
            return self._loss_name

    Named.__name__ = Named.__qualname__ = base.__name__
    Named.__doc__ = f"{base.__doc__}\n\n    mmseg: the loss is logged as ``loss_name`` (default {default!r})."
    return Named


SigLoss = MODELS.register_module(name="SigLoss")(_named(losses.SigLoss, "loss_sig"))
GradientLoss = MODELS.register_module(name="GradientLoss")(_named(losses.GradientLoss, "loss_grad"))
