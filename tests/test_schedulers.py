"""OneCycleMomentum: mmcv 1.x's OneCycle momentum (the released depth configs' momentum_config)."""

import math

import pytest
import torch

from dinov2_dense.engine import OneCycleMomentum
from dinov2_dense.engine.schedulers import one_cycle_momentum


def _mmcv(step: int, total: int, base=0.85, top=0.95, pct=0.3) -> float:
    """mmcv's rule written out: phase ends at pct * total - 1 and total - 1, cosine annealing."""
    end1 = pct * total - 1
    if step <= end1:
        start, end, a, b = 0.0, end1, top, base
    else:
        start, end, a, b = end1, total - 1, base, top
    t = (step - start) / (end - start)
    return b + (a - b) / 2 * (math.cos(math.pi * t) + 1)


def test_formula_and_phases():
    total = 1000
    assert one_cycle_momentum(0, total) == pytest.approx(0.95)
    assert one_cycle_momentum(299, total) == pytest.approx(0.85)
    assert one_cycle_momentum(999, total) == pytest.approx(0.95)
    for step in (0, 1, 150, 298, 299, 300, 650, 998, 999):
        assert one_cycle_momentum(step, total) == pytest.approx(_mmcv(step, total), abs=1e-12)


def test_scheduler_sets_adamw_beta1_every_iteration():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-4, betas=(0.9, 0.999))
    sched = OneCycleMomentum(opt, begin=0, end=50)
    seen = []
    for _ in range(50):
        seen.append(opt.param_groups[0]["betas"])
        opt.step()
        sched.step()
    assert [b[0] for b in seen] == pytest.approx([_mmcv(i, 50) for i in range(50)], abs=1e-12)
    assert all(b[1] == 0.999 for b in seen)
    with pytest.raises(ValueError, match="pct_start"):
        OneCycleMomentum(opt, pct_start=1.5, end=10)
