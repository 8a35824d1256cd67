"""The DINOv2 pretraining schedules and optimiser parameter groups (Oquab et al. 2023, Sec. 4 and the
released ``ssl_default_config.yaml``).

* :class:`CosineScheduler`: optional frozen start (value 0), a linear warm-up from
  ``start_warmup_value`` to ``base_value``, then a half cosine from ``base_value`` to ``final_value``
  over the remaining iterations; past ``total_iters`` the final value. Used for the learning rate
  (warm-up 10 epochs, to ``min_lr``), the weight decay (0.04 -> 0.4), the teacher momentum
  (0.992 -> 1), the teacher temperature (0.04 -> 0.07 over 30 epochs, then constant; in a run of
  fewer epochs it ends part way, as the official schedule does) and the
  last-layer learning rate (the learning rate, 0 during the first epoch).
* :func:`params_groups`: one group per parameter with the layer-wise learning-rate decay
  (``decay ** (depth + 1 - layer)``, layer 0 for the patch embedding, position embedding, class,
  register and mask tokens, layer i + 1 for block i, depth + 1 for the rest), the patch-embedding
  multiplier (0.2), no weight decay on biases, norms and LayerScale gammas, and the head's
  ``last_layer`` marked; :func:`fuse_params_groups` merges groups of equal settings.
* :func:`scaled_lr`: the learning rate for a total batch, ``base_lr * sqrt(batch / 1024)``
  (``scaling_rule: sqrt_wrt_1024``).
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from torch import nn

__all__ = ["CosineScheduler", "Schedules", "apply_optim_scheduler", "build_schedules", "fuse_params_groups",
           "layer_decay", "params_groups", "scaled_lr", "student_params_groups", "unwrap"]


class CosineScheduler:
    """Per-iteration values: ``freeze_iters`` zeros, a linear warm-up over ``warmup_iters``, then a
    half cosine from ``base_value`` to ``final_value``; ``final_value`` from ``total_iters`` on."""

    def __init__(self, base_value: float, final_value: float, total_iters: int, warmup_iters: int = 0,
                 start_warmup_value: float = 0.0, freeze_iters: int = 0):
        if total_iters < warmup_iters + freeze_iters or min(total_iters, warmup_iters, freeze_iters) < 0:
            raise ValueError(f"CosineScheduler: total_iters={total_iters} must cover warmup_iters={warmup_iters} "
                             f"and freeze_iters={freeze_iters}, all >= 0")
        self.final_value = float(final_value)
        self.total_iters = int(total_iters)
        cosine_iters = total_iters - warmup_iters - freeze_iters
        steps = np.arange(cosine_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * steps / max(cosine_iters, 1)))
        self.schedule = np.concatenate([np.zeros(freeze_iters), np.linspace(start_warmup_value, base_value, warmup_iters),
                                        cosine])

    def __getitem__(self, it: int) -> float:
        return self.final_value if it >= self.total_iters else float(self.schedule[it])

    def __len__(self) -> int:
        return self.total_iters


class Schedules:
    """The five schedules of a run, indexed by iteration."""

    def __init__(self, lr: CosineScheduler, wd: CosineScheduler, momentum: CosineScheduler,
                 teacher_temp: CosineScheduler, last_layer_lr: CosineScheduler):
        self.lr, self.wd, self.momentum, self.teacher_temp, self.last_layer_lr = lr, wd, momentum, teacher_temp, last_layer_lr

    def at(self, it: int) -> dict[str, float]:
        return {"lr": self.lr[it], "wd": self.wd[it], "mom": self.momentum[it], "teacher_temp": self.teacher_temp[it],
                "last_layer_lr": self.last_layer_lr[it]}


def scaled_lr(base_lr: float, total_batch: int, rule: str = "sqrt_wrt_1024") -> float:
    """The learning rate for ``total_batch`` images per step (the official ``scaling_rule``)."""
    if rule == "sqrt_wrt_1024":
        return base_lr * math.sqrt(total_batch / 1024.0)
    if rule == "linear_wrt_256":
        return base_lr * total_batch / 256.0
    if rule == "none":
        return base_lr
    raise ValueError(f"optim.scaling_rule={rule!r}: use sqrt_wrt_1024, linear_wrt_256 or none")


def build_schedules(optim: dict, teacher: dict, epoch_length: int, lr: float) -> Schedules:
    """The official schedules (``dinov2/train/train.py``'s ``build_schedulers``) from the ``optim``
    and ``teacher`` config sections, ``epoch_length`` iterations an epoch and the scaled ``lr``."""
    total = int(optim["epochs"] * epoch_length)
    lr_kw = dict(base_value=lr, final_value=optim["min_lr"], total_iters=total,
                 warmup_iters=int(optim["warmup_epochs"] * epoch_length), start_warmup_value=0.0)
    # the warm-up runs its own length, as the official one: a run shorter than it ends part way up
    temp_iters = int(teacher["warmup_teacher_temp_epochs"] * epoch_length)
    last_layer = CosineScheduler(**lr_kw)
    last_layer.schedule[: int(optim["freeze_last_layer_epochs"] * epoch_length)] = 0.0
    return Schedules(
        lr=CosineScheduler(**lr_kw),
        wd=CosineScheduler(optim["weight_decay"], optim["weight_decay_end"], total),
        momentum=CosineScheduler(teacher["momentum_teacher"], teacher["final_momentum_teacher"], total),
        teacher_temp=CosineScheduler(teacher["teacher_temp"], teacher["teacher_temp"], temp_iters,
                                     warmup_iters=temp_iters, start_warmup_value=teacher["warmup_teacher_temp"]),
        last_layer_lr=last_layer,
    )


_TOKENS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def layer_decay(name: str, decay: float, depth: int) -> float:
    """The learning-rate multiplier of a backbone parameter: ``decay ** (depth + 1 - layer)``."""
    if depth == 0:
        return 1.0
    if any(token in name for token in _TOKENS):
        layer = 0
    elif name.startswith("blocks.") or ".blocks." in name:
        layer = int(name[name.index("blocks.") :].split(".")[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (which has no ``blocks`` of its own and
    prefixes every parameter name with ``module.``); any other module as it is."""
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def params_groups(model: nn.Module, lr_decay_rate: float = 1.0, patch_embed_lr_mult: float = 1.0) -> list[dict]:
    """One optimiser group per trainable parameter of ``model`` (a backbone or a head), with
    ``lr_multiplier``, ``wd_multiplier`` and ``is_last_layer`` (see the module docstring). A module
    wrapped in DistributedDataParallel gives the groups of the module it wraps: the groups, and so
    the checkpoints' optimizer state, never depend on how the run was launched."""
    model = unwrap(model)
    depth = len(model.blocks) if hasattr(model, "blocks") else 0
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = {"params": param, "name": name, "is_last_layer": "last_layer" in name,
                 "lr_multiplier": layer_decay(name, lr_decay_rate, depth), "wd_multiplier": 1.0}
        if name.endswith(".bias") or "norm" in name or "gamma" in name:
            group["wd_multiplier"] = 0.0
        if "patch_embed" in name:
            group["lr_multiplier"] *= patch_embed_lr_mult
        groups.append(group)
    return groups


def fuse_params_groups(groups: Iterable[dict]) -> list[dict]:
    """Merge groups with the same (lr_multiplier, wd_multiplier, is_last_layer)."""
    fused: dict[tuple, dict] = {}
    for g in groups:
        key = (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"])
        entry = fused.setdefault(key, {"params": [], "lr_multiplier": key[0], "wd_multiplier": key[1],
                                       "is_last_layer": key[2]})
        entry["params"].append(g["params"])
    return list(fused.values())


def student_params_groups(student: nn.ModuleDict, optim: dict) -> list[dict]:
    """The fused groups of every student part (``optim``: the config's ``optim`` section)."""
    groups = []
    for part in student.values():
        groups += fuse_params_groups(params_groups(part, optim["layerwise_decay"], optim["patch_embed_lr_mult"]))
    return groups


def apply_optim_scheduler(optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    """Set every group's rate and decay for this iteration (the official ``apply_optim_scheduler``)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = wd * group["wd_multiplier"]
        group["lr"] = (last_layer_lr if group["is_last_layer"] else lr) * group["lr_multiplier"]
