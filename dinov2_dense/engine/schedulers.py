"""Parameter schedulers that mmengine lacks, for the released configs' schedules.

``OneCycleMomentum``: mmcv 1.x's ``momentum_config = dict(policy='OneCycle')``, which the released
DINOv2 depth configs keep from the depth toolbox beside their cosine learning rate: the momentum
(beta_1 of AdamW) starts at ``max_momentum``, anneals (cosine) to ``base_momentum`` over the first
``pct_start`` of the run and back to ``max_momentum`` by its end. mmcv's phases end at iterations
``pct_start * total - 1`` and ``total - 1``; the value at iteration i of a phase running from s to e
is ``end + (start - end) / 2 * (cos(pi * (i - s) / (e - s)) + 1)``.
"""

from __future__ import annotations

import math

from mmengine.optim.scheduler.momentum_scheduler import MomentumSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import _ParamScheduler

from .registry import PARAM_SCHEDULERS


def one_cycle_momentum(step: int, total: int, base_momentum: float = 0.85, max_momentum: float = 0.95,
                       pct_start: float = 0.3) -> float:
    """mmcv's OneCycle momentum (two phases, cosine annealing) at 0-based iteration ``step``."""
    phases = [(float(pct_start * total) - 1, max_momentum, base_momentum), (total - 1, base_momentum, max_momentum)]
    start = 0.0
    for i, (end, first, last) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return last + (first - last) / 2 * (math.cos(math.pi * pct) + 1)
        start = end
    raise AssertionError("unreachable")


@PARAM_SCHEDULERS.register_module()
class OneCycleMomentum(MomentumSchedulerMixin, _ParamScheduler):
    """mmcv's OneCycle momentum schedule over iterations ``begin`` .. ``end`` (see the module docstring)."""

    def __init__(self, optimizer, base_momentum: float = 0.85, max_momentum: float = 0.95, pct_start: float = 0.3,
                 begin: int = 0, end: int = 1000, last_step: int = -1, by_epoch: bool = False, verbose: bool = False):
        if not 0 < pct_start < 1:
            raise ValueError(f"OneCycleMomentum: pct_start={pct_start} must be in (0, 1)")
        self.base_momentum, self.max_momentum, self.pct_start = base_momentum, max_momentum, pct_start
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step, by_epoch=by_epoch, verbose=verbose)

    def _get_value(self) -> list[float]:
        value = one_cycle_momentum(self.last_step, self.end - self.begin, self.base_momentum, self.max_momentum,
                                   self.pct_start)
        return [value for _ in self.optimizer.param_groups]
