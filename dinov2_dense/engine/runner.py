"""mmengine Runner for dinov2-dense: atomic checkpoints and resume on torch >= 2.6.

mmengine 0.10.7 pickles its MessageHub (HistoryBuffer objects, numpy arrays, bound methods) into
every checkpoint, which ``torch.load(weights_only=True)`` — the default since torch 2.6 — refuses,
so ``--resume`` fails. We keep ``weights_only`` on and instead write checkpoints that need no
unsafe globals: ``CheckpointSanitizerHook`` turns the MessageHub state and numpy values into
tensors and plain Python before saving, and back after loading. Checkpoints are written to a
temporary file and renamed, so a run killed at any moment never leaves a half-written file, and
resuming finds the newest complete checkpoint even when ``last_checkpoint`` is stale.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.runner import Runner

from .registry import HOOKS

_BUFFER_TAG = "__history_buffer__"


def to_plain(obj: Any) -> Any:
    """numpy scalars -> Python numbers, numpy arrays -> tensors, HistoryBuffers -> tagged dicts."""
    if isinstance(obj, HistoryBuffer):
        return {
            _BUFFER_TAG: True,
            "log_history": torch.from_numpy(np.asarray(obj._log_history, dtype=np.float64).copy()),
            "count_history": torch.from_numpy(np.asarray(obj._count_history, dtype=np.float64).copy()),
            "max_length": int(obj.max_length),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        plain = {k: to_plain(v) for k, v in obj.items()}
        return OrderedDict(plain) if isinstance(obj, OrderedDict) else plain
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of ``to_plain`` for the MessageHub's HistoryBuffers."""
    if isinstance(obj, dict):
        if obj.get(_BUFFER_TAG):
            buffer = HistoryBuffer(max_length=obj["max_length"])
            buffer._log_history = obj["log_history"].numpy()
            buffer._count_history = obj["count_history"].numpy()
            return buffer
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


@HOOKS.register_module()
class CheckpointSanitizerHook(Hook):
    """Makes checkpoints loadable with ``torch.load(weights_only=True)`` (see the module docstring)."""

    priority = "VERY_HIGH"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ("message_hub", "meta"):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])


_ITER_FILE = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


def latest_checkpoint(work_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint: ``last_checkpoint`` if it names an existing file, else the
    highest ``iter_N.pth`` / ``epoch_N.pth`` (temporary files of an interrupted save are ignored)."""
    work_dir = Path(work_dir)
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if named.name and named.is_file():
            return str(named)
    found = [(int(m.group(1)), p) for p in work_dir.glob("*.pth") if (m := _ITER_FILE.match(p.name))]
    return str(max(found)[1]) if found else None


class DenseRunner(Runner):
    """``mmengine.runner.Runner`` with atomic checkpoint writes and a weights_only-safe resume."""

    def __init__(self, *args, custom_hooks: list | None = None, **kwargs):
        from . import register_all

        register_all()  # configs name our classes: make sure the registries hold them
        launcher = kwargs.get("launcher", "none")
        if launcher != "none" and not torch.cuda.is_available() and not torch.distributed.is_initialized():
            # mmengine's init_dist calls torch.cuda.set_device unconditionally: on CPUs (gloo) we start
            # the process group ourselves, and mmengine then finds it already initialised.
            backend = ((kwargs.get("env_cfg") or {}).get("dist_cfg") or {}).get("backend", "gloo")
            torch.distributed.init_process_group(backend=backend)
        hooks = list(custom_hooks or [])
        if not any(isinstance(h, dict) and h.get("type") == "CheckpointSanitizerHook" for h in hooks):
            hooks.append(dict(type="CheckpointSanitizerHook"))
        super().__init__(*args, custom_hooks=hooks, **kwargs)

    @classmethod
    def from_cfg(cls, cfg) -> "DenseRunner":
        cfg = cfg.copy()
        return cls(
            model=cfg["model"], work_dir=cfg["work_dir"],
            train_dataloader=cfg.get("train_dataloader"), val_dataloader=cfg.get("val_dataloader"),
            test_dataloader=cfg.get("test_dataloader"), train_cfg=cfg.get("train_cfg"),
            val_cfg=cfg.get("val_cfg"), test_cfg=cfg.get("test_cfg"), auto_scale_lr=cfg.get("auto_scale_lr"),
            optim_wrapper=cfg.get("optim_wrapper"), param_scheduler=cfg.get("param_scheduler"),
            val_evaluator=cfg.get("val_evaluator"), test_evaluator=cfg.get("test_evaluator"),
            default_hooks=cfg.get("default_hooks"), custom_hooks=cfg.get("custom_hooks"),
            data_preprocessor=cfg.get("data_preprocessor"), load_from=cfg.get("load_from"),
            resume=cfg.get("resume", False), launcher=cfg.get("launcher", "none"),
            env_cfg=cfg.get("env_cfg", dict(dist_cfg=dict(backend="gloo"))), log_processor=cfg.get("log_processor"),
            log_level=cfg.get("log_level", "INFO"), visualizer=cfg.get("visualizer"),
            default_scope=cfg.get("default_scope"), randomness=cfg.get("randomness", dict(seed=None)),
            experiment_name=cfg.get("experiment_name"), cfg=cfg,
        )

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available() and model_wrapper_cfg is None:
            from mmengine.model import MMDistributedDataParallel

            # CPU DDP: no device_ids (mmengine passes the local rank as a GPU index)
            return MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                             find_unused_parameters=False)
        return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        tmp = f".{filename}.{os.getpid()}.tmp"
        try:
            super().save_checkpoint(out_dir, tmp, *args, **kwargs)
            if os.path.exists(os.path.join(out_dir, tmp)):  # only the main process writes checkpoints
                os.replace(os.path.join(out_dir, tmp), os.path.join(out_dir, filename))
        finally:
            if os.path.exists(os.path.join(out_dir, tmp)):
                os.unlink(os.path.join(out_dir, tmp))

    def load_or_resume(self) -> None:
        if self._has_loaded:
            return
        if self._resume and self._load_from is None:
            self._load_from = latest_checkpoint(self.work_dir)
            if self._load_from is None:
                self._resume = False  # nothing to resume: a fresh start, as mmengine does
        super().load_or_resume()
