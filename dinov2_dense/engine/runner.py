"""mmengine Runner for dinov2-dense: strict, safe loading; atomic checkpoints; resume on torch >= 2.6.

mmengine 0.10.7 pickles its MessageHub (HistoryBuffer objects, numpy arrays, bound methods) into
every checkpoint, which ``torch.load(weights_only=True)`` — the default since torch 2.6 — refuses,
so ``--resume`` fails. We keep ``weights_only`` on and instead write checkpoints that need no
unsafe globals: ``CheckpointSanitizerHook`` turns the MessageHub state and numpy values into
tensors and plain Python before saving, and back after loading. Checkpoints are written to a
temporary file and renamed, so a run killed at any moment never leaves a half-written file, and
resuming finds the newest complete checkpoint even when ``last_checkpoint`` is stale, and falls
back past a corrupt one with a warning. A resumed run keeps its checkpoint's schedule and says where it
differs from the config; each checkpoint records the number of processes that wrote it and their
per-process batch size (``meta.world_size``, ``meta.train_batch_size``), and a run resumed on another
number of processes says so too: it continues on this run's processes, so its batches are not the
uninterrupted run's (a checkpoint without the record says nothing). A resumed run's seeded sample stream
(``SeededInfiniteSampler``) starts at the checkpoint's sample, loading none before it.

Loading (``test``, ``--resume``, ``load_from``) is strict: a checkpoint whose keys or shapes do not
fit the model is refused with our key report, and a head trained on another backbone than the one
the config builds (checkpoints record the backbone's SHA-256) is refused too; ``partial_load`` and
``other_backbone`` say explicitly that this is wanted. mmengine would load such files with a
"missing keys" line among hundreds and go on with a random head.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import pickle
import re
import shutil
import sys
import warnings
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from dinov2_dense.checkpoints import CheckpointError, refuse_nonfinite
from dinov2_dense.fileio import atomic_path, write_json

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


def _without_functions(obj: Any) -> Any:
    """Schedulers' states without the functions they hold (OneCycleLR's ``anneal_func``): torch.load with
    weights_only refuses a checkpoint holding one (a OneCycleLR run could not be resumed: "not a checkpoint of
    ours"); a resumed scheduler keeps the one it was built with (load_state_dict updates only what it is given)."""
    if isinstance(obj, dict):
        return {k: _without_functions(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, list):
        return [_without_functions(v) for v in obj]
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
    """Makes checkpoints loadable with ``torch.load(weights_only=True)`` (see the module docstring), and
    records in their meta the backbone the head was trained on, the number of processes of the run
    (``world_size``) and each one's training batch size (``train_batch_size``), which ``--resume`` compares."""

    priority = "VERY_HIGH"

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        from mmengine.dist import get_world_size

        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        meta = checkpoint.setdefault("meta", {})
        if hasattr(model, "backbone_info"):  # which backbone the head was trained on, and what it read of it
            meta["backbone"] = model.backbone_info()
            meta["head_inputs"] = model.head_inputs()
            if model.head_output():
                meta["head_output"] = model.head_output()
        meta["world_size"] = int(get_world_size())  # the processes whose batches made the batch of a step
        batch = _train_batch_size(runner)
        if batch is not None:
            meta["train_batch_size"] = batch
        data = _data_record(runner.cfg)
        if data is not None:
            meta["data"] = data
        if not isinstance(runner, DenseRunner):  # (ours checks in save_checkpoint: the mmseg plugin's runner here)
            _refuse_diverged(runner.model, "the checkpoint")
        for key in ("message_hub", "meta"):
            if key in checkpoint:
                checkpoint[key] = to_plain(checkpoint[key])
        if "param_schedulers" in checkpoint:  # a scheduler's state may hold a function (OneCycleLR's anneal_func),
            checkpoint["param_schedulers"] = _without_functions(checkpoint["param_schedulers"])  # which it rebuilds

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])


#: The config keys whose values a checkpoint records (``meta.data``), which ``--resume`` compares: the data
#: sets a run trains and validates on, and its losses.
DATA_KEYS = ("train_dataloader.dataset", "val_dataloader.dataset", "model.losses")


def _absolute_roots(value: Any) -> Any:
    """``value`` with the folders its ``root``, ``data_root`` and ``*_root`` keys name made absolute (from this
    process's folder, as the data sets read them): one folder spelled two ways is one. (``*_dir`` keys are
    read below the root: left as they are.)"""
    if isinstance(value, dict):
        return {k: os.path.abspath(os.path.expanduser(v)) if isinstance(v, str) and v and (
            k in ("root", "data_root") or k.endswith("_root")) else _absolute_roots(v)
            for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_absolute_roots(v) for v in value]
    return value


def _data_record(cfg) -> str | None:
    """What a run trains and validates on, and with which losses (:data:`DATA_KEYS` of its config: root,
    split, pipeline, ...; folders absolute), as JSON text; None without a config."""
    if cfg is None:
        return None
    record = {}
    for key in DATA_KEYS:
        section, field_ = key.split(".")
        value = (cfg.get(section) or {}).get(field_)
        if value is not None:
            value = value.to_dict() if hasattr(value, "to_dict") else value
            record[key] = _absolute_roots(json.loads(json.dumps(value, default=str)))
    return json.dumps(record, sort_keys=True, default=str)


def data_differences(recorded: str, now: str | None) -> list[str]:
    """``key: recorded -> now`` for each setting of the data (:func:`_data_record` texts) that differs."""
    try:
        # (a record of an earlier version kept roots as written: taken from this folder, as the run likely was)
        was, new = _absolute_roots(json.loads(recorded)), json.loads(now or "{}")
    except (TypeError, ValueError):
        return []
    from dinov2_dense.distributed import flatten

    # (what the checkpoint recorded: one of an earlier version recorded fewer keys)
    old_items = flatten({key: was[key] for key in DATA_KEYS if key in was})
    new_items = flatten({key: new[key] for key in DATA_KEYS if key in was and key in new})
    return [f"{k}: {old_items.get(k, '(unset)')} -> {new_items.get(k, '(unset)')}"
            for k in sorted(set(old_items) | set(new_items)) if old_items.get(k) != new_items.get(k)]


#: The work dir's record of the last validation a training run finished (``{"iter": N}``): mmengine saves
#: ``iter_N.pth`` before it validates at N, so a run stopped during that validation was resumed past it.
VALIDATION_RECORD = "last_validation.json"


def _validation_due(loop, iteration: int) -> bool:
    """Whether ``loop`` (an IterBasedTrainLoop) validates after ``iteration`` (mmengine's rule)."""
    interval, begin = getattr(loop, "val_interval", None), getattr(loop, "val_begin", 1)
    max_iters = getattr(loop, "max_iters", None)
    if not isinstance(interval, int) or interval <= 0 or iteration < begin:
        return False
    return iteration % interval == 0 or iteration == max_iters


@HOOKS.register_module()
class ResumedValidationHook(Hook):
    """Runs the validation a resumed run's checkpoint was saved before, where it did not finish: mmengine saves
    ``iter_N.pth`` before it validates at N, and resumes from N + 1, so a run stopped during validation N (a
    reviewer's Ctrl-C there) never did it, and one stopped during its last one resumed as complete, its best
    checkpoint left at an earlier iteration. Each finished validation of a training run is recorded in the work
    dir (:data:`VALIDATION_RECORD`); a resume from a checkpoint at a validation iteration that the record does not
    show (a run of an earlier version shows none) validates first. DenseRunner adds it to every run."""

    priority = "LOWEST"  # after the CheckpointHook's save_best (after_val_epoch) and its before_train

    def after_val_epoch(self, runner, metrics=None) -> None:
        from mmengine.dist import is_main_process

        loop = runner.__dict__.get("_train_loop")
        if loop is None or isinstance(loop, dict) or not is_main_process():  # (a test run has none)
            return
        write_json(Path(runner.work_dir) / VALIDATION_RECORD, {"iter": int(runner.iter)})

    def before_train(self, runner) -> None:
        from mmengine.dist import broadcast_object_list, is_main_process

        if runner.iter == 0 or runner.val_loop is None or not _validation_due(runner.train_loop, runner.iter):
            return
        done = [None]
        if is_main_process():
            try:
                done[0] = json.loads((Path(runner.work_dir) / VALIDATION_RECORD).read_text()).get("iter")
            except (OSError, ValueError, AttributeError):
                done[0] = None
        broadcast_object_list(done)  # every process decides alike
        if isinstance(done[0], int) and done[0] >= runner.iter:  # (resumed from an older checkpoint: done too)
            return
        why = ("did not finish before the run stopped (a checkpoint is saved before its validation)"
               if isinstance(done[0], int) else
               f"is not recorded in {VALIDATION_RECORD} (a run of an earlier version keeps no record, and one stopped "
               "in its first validation has none)")
        runner.logger.warning(f"--resume: the validation at iteration {runner.iter} {why}: it runs now")
        runner.val_loop.run()


@HOOKS.register_module()
class DivergenceHook(Hook):
    """For runners of models other than ours (the mmseg plugin's): stops a run whose training loss became NaN
    or infinite, on every process, before that iteration's checkpoint (a run went on through NaN losses, saved
    NaN heads and validated them as plausible). :class:`~dinov2_dense.engine.model.DenseModel` stops before the
    step itself; a model of mmseg's takes it first, so this stops after it (the checkpoints before it are
    sound). The plugin's runtime (``configs/mmseg/_base_/runtime.py``) adds it."""

    priority = "HIGH"  # before the CheckpointHook (VERY_LOW) saves this iteration

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        from mmengine.dist import all_reduce, get_world_size

        from .model import DIVERGED_ADVICE, TrainingDiverged

        logged = {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
                  for k, v in (outputs or {}).items() if isinstance(v, (torch.Tensor, float, int))}
        if "loss" not in logged:
            return
        bad = torch.tensor([0.0 if math.isfinite(logged["loss"]) else 1.0])
        if get_world_size() > 1:  # one process's NaN stops them all (the others would wait for it)
            all_reduce(bad, op="max")
        if float(bad) == 0.0:
            return
        values = ", ".join(f"{k} {v:.4g}" for k, v in logged.items() if k != "loss")
        where = f"{logged['loss']}" if not math.isfinite(logged["loss"]) else "finite here, NaN or infinite on another process"
        raise TrainingDiverged(f"the loss is {where} at iteration {runner.iter + 1} ({values}); stopped before this "
                               f"iteration's checkpoint: {DIVERGED_ADVICE}")


@HOOKS.register_module()
class ResumedLogHook(Hook):
    """A resumed run logs only the losses its model gives: mmengine restores the run's logged values with its
    checkpoint, and logs every one it holds, so a loss the config no longer has (a depth run of an earlier
    version resumed without its GradientLoss) was logged at its last value at every iteration, and counted in
    nothing. At the first resumed iteration, the restored training losses this model does not give are
    dropped. DenseRunner adds it to every run."""

    priority = "NORMAL"  # after the RuntimeInfoHook (VERY_HIGH) records the iteration's values, before the logger

    def __init__(self):
        self.first: int | None = None

    def before_train(self, runner) -> None:
        self.first = runner.iter if runner.iter > 0 else None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.first is None or batch_idx != self.first:
            return
        self.first = None
        given = {f"train/{k}" for k in (outputs or {})}
        scalars = runner.message_hub.log_scalars
        for key in [k for k in scalars if k.startswith("train/loss") and k not in given]:
            del scalars[key]


@HOOKS.register_module()
class LossWarmUpHook(Hook):
    """Continues a loss's warm-up where the run is: ``SigLoss`` counts its forward calls in
    ``warm_up_counter`` (not in its state dict, so official head files load strictly), one per
    training iteration, and a resumed run started the count, and the warm-up loss, afresh. At the
    start of training every loss with a warm-up counter is set to the runner's iteration (0 for a
    new run, ``load_from`` included), as if the run had not stopped. DenseRunner adds it to every run."""

    priority = "VERY_LOW"

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for module in model.modules():
            if hasattr(module, "warm_up_counter") and hasattr(module, "warm_iter"):
                module.warm_up_counter = min(int(runner.iter), int(module.warm_iter))


def _train_batch_size(runner) -> int | None:
    """The training batch size of one process (its DataLoader's, or its batch sampler's), if built."""
    loop = runner.__dict__.get("_train_loop")
    loader = getattr(loop, "dataloader", None) if loop is not None and not isinstance(loop, dict) else None
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return int(size) if isinstance(size, int) else None


def _processes_text(world: int, batch: int | None) -> str:
    """``2 processes (a batch of 4 x 2 = 8 over all processes)``; without the batch size when unknown."""
    text = f"{world} process{'es' if world != 1 else ''}"
    return text + (f" (a batch of {batch} x {world} = {batch * world} over all processes)" if batch else "")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


class _Skipped:
    """A train loop's data iterator whose first ``skip`` items are not loaded (None): the batches a
    resumed run with nothing left to train would load only to pass over them."""

    def __init__(self, iterator, skip: int):
        self.iterator, self.skip = iterator, skip

    @property
    def _iterator(self):
        """The DataLoader iterator within (mmengine's ``_InfiniteDataloaderIterator._iterator``): the runner
        shuts its workers down when training ends."""
        return getattr(self.iterator, "_iterator", None)

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip > 0:
            self.skip -= 1
            return None
        return next(self.iterator)


def _initial_rates(optim_wrapper) -> list[float] | None:
    """The base learning rate of each parameter group (``initial_lr``, which the schedulers scale; else ``lr``)."""
    optimizer = getattr(optim_wrapper, "optimizer", None)
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    try:
        return [float(g.get("initial_lr", g["lr"])) for g in groups]
    except (KeyError, TypeError, ValueError):
        return None


def _rate_text(rates: list[float]) -> str:
    distinct = sorted(set(rates), reverse=True)
    return f"{distinct[0]:g}" if len(distinct) == 1 else f"{distinct[0]:g} (groups {', '.join(f'{r:g}' for r in distinct)})"


def continue_trained_data(runner, meta: dict | None) -> None:
    """Continue a resumed run's training data where its checkpoint left it. mmengine's loop advances the
    data by every trained iteration, loading and augmenting each batch again to pass over it (a 40k-iteration
    ADE20K run resumed at 30k: 480,000 images), and logs that it does. A seeded sample stream
    (:class:`~dinov2_dense.engine.data.SeededInfiniteSampler`) starts at the checkpoint's sample instead
    (``meta``: the checkpoint's, whose ``world_size`` and ``train_batch_size`` say where), and a run with
    nothing left to train loads no batch; another sampler keeps mmengine's advance, for the uninterrupted
    run's data order. Call it after the resume, before the loop's first batch (DenseRunner does; in mmseg's
    Runner, :class:`ResumeDataHook`); a second call changes nothing."""
    from mmengine.dist import get_world_size
    from mmengine.runner.loops import _InfiniteDataloaderIterator

    from .data import SeededInfiniteSampler

    loop = runner.__dict__.get("_train_loop")
    if loop is None or isinstance(loop, dict) or runner.iter == 0 or not hasattr(loop, "dataloader_iterator"):
        return
    if isinstance(loop.dataloader_iterator, _Skipped):  # done already
        return
    if runner.iter < getattr(loop, "max_iters", runner.iter + 1):  # something left to train
        sampler = getattr(loop.dataloader, "sampler", None)
        if not isinstance(sampler, SeededInfiniteSampler):
            return
        meta = meta or {}
        world, batch = meta.get("world_size"), meta.get("train_batch_size")
        if not (_is_count(world) and _is_count(batch)):  # a checkpoint written before the record
            world, batch = int(get_world_size()), _train_batch_size(runner)
        if batch is None:
            return
        sampler.continue_at(runner.iter * world * batch)
        old = getattr(loop.dataloader_iterator, "_iterator", None)
        if not loop.dataloader.persistent_workers and callable(getattr(old, "_shutdown_workers", None)):
            old._shutdown_workers()  # its workers read from the old start (persistent ones start again)
        loop.dataloader_iterator = _InfiniteDataloaderIterator(loop.dataloader)  # from the new start
        runner.logger.info(f"--resume: the training data continues at sample {runner.iter * world * batch} of "
                           "the run's stream; the samples before it are not loaded again")
    loop.dataloader_iterator = _Skipped(loop.dataloader_iterator, runner.iter)
    runner.logger.addFilter(lambda record: not record.getMessage().startswith("Advance dataloader"))


@HOOKS.register_module()
class ResumeDataHook(Hook):
    """:func:`continue_trained_data` for a Runner other than ours (mmseg's): a resumed run whose training
    loader draws from :class:`~dinov2_dense.engine.data.SeededInfiniteSampler` starts its data at the
    checkpoint's sample instead of loading every trained batch again. The plugin's runtime
    (``configs/mmseg/_base_/runtime.py``) adds it; DenseRunner needs none."""

    priority = "VERY_HIGH"

    def __init__(self):
        self.meta: dict | None = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get("meta")
        self.meta = meta if isinstance(meta, dict) else None

    def before_train(self, runner) -> None:
        if runner.iter > 0:  # resumed (load_from starts at 0)
            continue_trained_data(runner, self.meta)


_ITER_FILE = re.compile(r"^(?:iter|epoch)_(\d+)\.pth$")


def checkpoint_candidates(work_dir: str | os.PathLike) -> list[str]:
    """Checkpoints of a work dir, newest first: the one ``last_checkpoint`` names (if it exists),
    then ``iter_N.pth`` / ``epoch_N.pth`` by decreasing N (temporary files of a save are ignored)."""
    work_dir = Path(work_dir)
    found = sorted(((int(m.group(1)), p) for p in work_dir.glob("*.pth") if (m := _ITER_FILE.match(p.name))),
                   reverse=True)
    paths = [str(p) for _, p in found]
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if named.name and named.is_file() and str(named) in paths:
            paths.remove(str(named))
            paths.insert(0, str(named))
    return paths


def latest_checkpoint(work_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint: ``last_checkpoint`` if it names an existing file, else the highest
    ``iter_N.pth`` / ``epoch_N.pth``."""
    paths = checkpoint_candidates(work_dir)
    return paths[0] if paths else None


def read_run_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint of ours or an official head file, read with ``weights_only=True``; every
    failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    from safetensors import SafetensorError  # (torch.load reads a .safetensors file through safetensors)

    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: not a checkpoint of ours nor an official head file (it is not a PyTorch "
                              "file of tensors, or it holds Python objects that are not loaded, for safety)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, SafetensorError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    state = checkpoint.get("state_dict", checkpoint)
    if "state_dict" not in checkpoint and isinstance(checkpoint.get("model"), dict) and "iteration" in checkpoint:
        from dinov2_dense.checkpoints import distillation_refusal, distilled_students

        students = distilled_students(checkpoint["model"])
        if students:
            raise CheckpointError(f"{path}: not a head checkpoint of `train` but " + distillation_refusal(students, path))
        raise CheckpointError(f"{path}: a pretraining checkpoint (a backbone and its DINO/iBOT heads), not a head "
                              "checkpoint of `train`: give it as the backbone's weights (model.backbone_weights, or "
                              "--weights of the other commands) and a checkpoint that `train` wrote here")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors in it (keys: {', '.join(list(checkpoint)[:6])})")
    if path.suffix == ".safetensors" and "meta" not in checkpoint:
        # a from-mmseg file's records of the backbone its head was trained on and of what it read of it
        meta = {key: record for key in ("backbone", "head_inputs")
                if (record := _safetensors_record(path, key)) is not None}
        if meta:
            checkpoint = {"state_dict": state, "meta": meta}
    return checkpoint


def _safetensors_record(path: Path, key: str) -> dict | None:
    """The record ``key`` (JSON) in a .safetensors file's metadata, as ``from-mmseg`` keeps a train
    checkpoint's ``meta.backbone`` and ``meta.head_inputs``; None without one."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        text = (f.metadata() or {}).get(key)
    try:
        record = json.loads(text) if text else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _replaces_backbone(state: dict, model) -> bool:
    """Whether loading ``state`` changes a DenseModel's frozen backbone (its ``backbone.*`` tensors
    differ from the backbone's, compared in the backbone's dtypes)."""
    if not hasattr(model, "backbone_info") or not model.predictor.freeze_backbone:
        return False  # (a trained backbone's checkpoints hold it anyway)
    own = model.backbone.state_dict()
    given = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return any(k in own and not torch.equal(own[k], v.to(device=own[k].device, dtype=own[k].dtype))
               for k, v in given.items())


def _scheduler_lengths(schedulers) -> list[tuple[str, dict]]:
    """Each built scheduler's name (``param_scheduler.i``) and length settings (end, T_max, total_steps)."""
    flat = _flat_schedulers(schedulers)
    from .entry import SCHEDULE_LENGTH_KEYS

    return [(f"{name} ({type(s).__name__})", {k: getattr(s, k) for k in SCHEDULE_LENGTH_KEYS
                                                if isinstance(getattr(s, k, None), int)}) for name, s in flat]


def _flat_schedulers(schedulers) -> list[tuple[str, Any]]:
    """``[(param_scheduler.i, scheduler), ...]``; ``{key}.i`` for one list per optimizer."""
    if isinstance(schedulers, dict):
        return [(f"{key}.{i}", s) for key, group in schedulers.items() for i, s in enumerate(group)]
    return [(f"param_scheduler.{i}", s) for i, s in enumerate(schedulers or [])]


def _iterations_at_rate_zero(schedulers, steps: int) -> list[int]:
    """Which of the next ``steps`` iterations (0 = the next one) train with every parameter group's learning rate
    at 0: the schedulers are stepped on their own state and the optimizers' values, both put back after."""
    flat = [s for _, s in _flat_schedulers(schedulers)]
    optimizers = list({id(s.optimizer): s.optimizer for s in flat}.values())
    if not optimizers:
        return []  # no schedule: the rate is the configured one
    groups = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] for opt in optimizers]
    states = [s.state_dict() for s in flat]

    def zero() -> bool:
        return not any(float(g.get("lr", 0.0)) > 0.0 for opt in optimizers for g in opt.param_groups)

    try:
        at_zero = []
        for step in range(steps):
            if zero():
                at_zero.append(step)
            if step < steps - 1:
                for scheduler in flat:
                    scheduler.step()
        return at_zero
    finally:
        for opt, saved in zip(optimizers, groups):
            for group, values in zip(opt.param_groups, saved):
                group.update(values)
        for scheduler, state in zip(flat, states):
            scheduler.load_state_dict(state)


def _lengths_text(lengths: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in lengths.items())


def sync_norm_stats(model: torch.nn.Module) -> None:
    """Average the BatchNorm running statistics over the processes of a distributed run (a collective).

    A head's BatchNorm is SyncBatchNorm on CUDA only; on CPUs (gloo) each process keeps statistics of its
    own batches, and the DDP wrapper does not broadcast buffers. Validation ran with each process's own,
    while the checkpoint held process 0's, so `test` of the checkpoint reported other metrics than the
    run's own validation. Averaged before each validation and each save, both use the same statistics."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return
    world = dist.get_world_size()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for stats in (module.running_mean, module.running_var):
                if stats is not None:
                    dist.all_reduce(stats, op=dist.ReduceOp.SUM)
                    stats.div_(world)


#: For each launcher: the variables it sets (all needed), and how a user starts a command with it.
LAUNCHERS = {
    "pytorch": (("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"), "start the command with torchrun"),
    "slurm": (("SLURM_PROCID", "SLURM_NTASKS"), "start the command with srun, in a Slurm allocation"),
    "mpi": (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
            "start the command with Open MPI's mpirun"),
}


def _not_set(names: list[str]) -> str:
    return (f"{', '.join(names[:-1])} and {names[-1]} are" if len(names) > 1 else f"{names[0]} is") + " not set"


def _launcher_environment(launcher: str) -> dict[str, str]:
    """torch.distributed's ``env://`` variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) from
    those of ``launcher``, as mmengine's init_dist reads them; a ValueError naming --launcher and what is
    missing."""
    names, how = LAUNCHERS[launcher]
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise ValueError(f"--launcher {launcher}: {how} ({_not_set(missing)})")
    env = os.environ
    if launcher == "pytorch":
        return {"LOCAL_RANK": env.get("LOCAL_RANK", "0")}
    port = env.get("MASTER_PORT", "29500")  # torch.distributed's default, as mmengine
    if launcher == "mpi":
        if "MASTER_ADDR" not in env:
            raise ValueError("--launcher mpi: MASTER_ADDR is not set: set it to the host of process 0 (and "
                             "MASTER_PORT, default 29500) for every process of mpirun (-x MASTER_ADDR)")
        return {"RANK": env["OMPI_COMM_WORLD_RANK"], "WORLD_SIZE": env["OMPI_COMM_WORLD_SIZE"],
                "LOCAL_RANK": env["OMPI_COMM_WORLD_LOCAL_RANK"], "MASTER_ADDR": env["MASTER_ADDR"],
                "MASTER_PORT": port}
    addr = env.get("MASTER_ADDR")
    if addr is None:  # the first host of the allocation, as mmengine finds it
        import subprocess

        nodes = env.get("SLURM_NODELIST") or env.get("SLURM_JOB_NODELIST")
        try:
            addr = subprocess.run(["scontrol", "show", "hostnames", nodes or ""], capture_output=True, text=True,
                                  timeout=60).stdout.split()[0] if nodes else None
        except (OSError, subprocess.SubprocessError, IndexError):
            addr = None
        if not addr:
            raise ValueError("--launcher slurm: MASTER_ADDR is not set and the first host of SLURM_NODELIST could "
                             "not be read with scontrol: set MASTER_ADDR to the host of process 0")
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"],
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "MASTER_ADDR": addr, "MASTER_PORT": port}


def start_process_group(launcher: str, env_cfg: dict | None = None) -> bool:
    """Start torch.distributed for ``launcher`` ("pytorch": torchrun, "slurm": srun, "mpi": Open MPI's mpirun;
    "none": nothing) with the config's ``env_cfg.dist_cfg``, unless a group is running; whether one runs.

    On CUDA machines this is mmengine's ``init_dist`` (one GPU per local rank, the config's backend), called
    as its Runner would, only earlier: the commands start the group before they check the work dir, so that
    a start the main process refuses stops the others at once. On CPUs (gloo) mmengine's would set a CUDA
    device: the launcher's variables become torch.distributed's env:// ones (RANK, WORLD_SIZE, ...) and the
    group is started here. A launcher whose variables are missing is a ValueError naming --launcher."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    if launcher == "none":
        return False
    if launcher not in LAUNCHERS:
        raise ValueError(f"--launcher {launcher}: expected none, {', '.join(LAUNCHERS)}")
    env_cfg = dict(env_cfg or {})
    dist_cfg = dict(env_cfg.get("dist_cfg") or {})
    variables = _launcher_environment(launcher)
    if torch.cuda.is_available():
        from mmengine.dist import init_dist
        from mmengine.utils.dl_utils import set_multi_processing

        if launcher == "pytorch" and "LOCAL_RANK" not in os.environ:
            os.environ["LOCAL_RANK"] = variables["LOCAL_RANK"]  # torchrun sets it; a start by hand may not
        if launcher == "slurm" and "SLURM_NODELIST" not in os.environ:  # mmengine's slurm start reads it
            raise ValueError("--launcher slurm: start the command with srun, in a Slurm allocation (SLURM_NODELIST "
                             "is not set)")
        set_multi_processing(**env_cfg.get("mp_cfg", {}), distributed=True)  # mmengine's order: before init_dist
        init_dist(launcher, **dist_cfg)
        return True
    os.environ.update(variables)
    backend = dist_cfg.pop("backend", "gloo")
    backend = "gloo" if backend == "nccl" else backend  # NCCL needs CUDA
    timeout = dist_cfg.pop("timeout", None)
    if timeout is not None:
        import datetime

        dist_cfg["timeout"] = datetime.timedelta(seconds=timeout)
    dist_cfg.pop("init_backend", None)
    dist_cfg.pop("port", None)  # (mmengine's slurm port: MASTER_PORT here)
    dist.init_process_group(backend=backend, **dist_cfg)
    return True


#: Runners built by this process: from the second on, each gets its own experiment name (below).
_RUNNERS = itertools.count()


def _json_tags(tags: dict):
    """mmengine's LoggerHook's tags for its JSON log, numpy numbers first made Python's: it keeps int, float,
    str, bool, lists and tensors and drops anything else, so a metric's integer counts read back from the
    message hub (numpy ints there) were written as null (a depth test's count, gt_measured_pixels, ...)."""
    import numpy as np
    from mmengine.hooks import LoggerHook

    def plain(value):
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return LoggerHook._process_tags(plain(tags))


def _refuse_diverged(model: torch.nn.Module, filename: str) -> None:
    """Refuse to save weights that training made NaN or infinite (a step on an infinite gradient from a finite
    loss; the next loss, NaN, would stop the run, but the checkpoint would hold them): the trained parameters
    and the buffers outside the backbone (BatchNorm statistics)."""
    from .model import DIVERGED_ADVICE, TrainingDiverged

    from dinov2_dense.checkpoints import nonfinite_keys

    module = getattr(model, "module", model)
    bad = nonfinite_keys({**{n: t for n, t in module.named_parameters() if t.requires_grad},
                          **{n: t for n, t in module.named_buffers() if "backbone" not in n.split(".")}})
    if bad:
        shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
        raise TrainingDiverged(f"{len(bad)} trained tensor(s) hold NaN or infinite values ({shown}); stopped before "
                               f"writing {filename}: {DIVERGED_ADVICE}")


class DenseRunner(Runner):
    """``mmengine.runner.Runner`` with atomic checkpoint writes and a weights_only-safe resume."""

    def __init__(self, *args, custom_hooks: list | None = None, partial_load: bool = False,
                 other_backbone: bool = False, config_copy: str = "work_dir", **kwargs):
        from . import register_all

        if config_copy not in ("work_dir", "log_dir"):
            raise ValueError(f"config_copy = {config_copy!r}: expected 'work_dir' or 'log_dir'")
        self.config_copy = config_copy
        self.partial_load = partial_load
        self.other_backbone = other_backbone
        self._read_cache: dict[str, dict] = {}

        register_all()  # configs name our classes: make sure the registries hold them
        # (the commands start it before they check the work dir; mmengine then finds it already started)
        start_process_group(kwargs.get("launcher", "none"), kwargs.get("env_cfg"))
        hooks = list(custom_hooks or [])
        for name in ("CheckpointSanitizerHook", "SyncNormStatsHook", "LossWarmUpHook", "ResumedValidationHook",
                     "ResumedLogHook"):
            if not any(isinstance(h, dict) and h.get("type") == name for h in hooks):
                hooks.append(dict(type=name))
        # mmengine names a runner's MessageHub (a per-process singleton by name) "<config>_<timestamp to the
        # second>": a second runner of the process built within the same second shared the first's, whose
        # CheckpointHook ids (keep_ckpt_ids) then made it delete its own new checkpoints (max_keep_ckpts)
        number = next(_RUNNERS)
        if number:
            cfg = kwargs.get("cfg")
            base = kwargs.get("experiment_name") or (Path(cfg.filename).stem if getattr(cfg, "filename", None)
                                                     else "run")
            kwargs["experiment_name"] = f"{base}.{number}"
        try:
            super().__init__(*args, custom_hooks=hooks, **kwargs)
        except BaseException:
            self.discard_unstarted_log_dir()
            raise

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        from mmengine.hooks import LoggerHook

        for hook in self._hooks:  # numpy integers as Python's in the JSON log (mmengine wrote the counts as null)
            if isinstance(hook, LoggerHook):
                hook._process_tags = _json_tags

    def setup_env(self, env_cfg: dict) -> None:
        super().setup_env(env_cfg)
        # mmengine makes the log folder <work_dir>/<timestamp> next: a start that fails removes it, unless
        # another runner of the same second made it (a test right after its training, say)
        self._log_dir_is_new = not os.path.exists(os.path.join(self._work_dir, self._timestamp))
        if self.distributed:  # every process makes the folder: none before all have looked
            from mmengine.dist import barrier

            barrier()

    def discard_unstarted_log_dir(self) -> None:
        """Remove the log folder ``<work_dir>/<timestamp>/`` of a run or test whose start failed (a data set
        that does not build, a checkpoint that does not load): it holds the environment's log and nothing
        of a run, and the work dir would fill with such folders. A started run keeps it, and a folder that
        was there before this runner is left alone."""
        from mmengine.dist import is_main_process

        log_dir = self.__dict__.get("_log_dir")
        if self.__dict__.get("_started") or not self.__dict__.get("_log_dir_is_new") or log_dir is None \
                or not is_main_process():
            return
        logger = self.__dict__.get("logger")
        for handler in list(getattr(logger, "handlers", [])):  # its log file is in the folder
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == Path(log_dir):
                handler.close()
                logger.removeHandler(handler)
        shutil.rmtree(log_dir, ignore_errors=True)

    @classmethod
    def from_cfg(cls, cfg, config_copy: str = "work_dir") -> "DenseRunner":
        """The runner of a config; ``config_copy="log_dir"`` (``test``) writes the config's copy beside the
        run's log (``<work_dir>/<timestamp>/``), not over the training run's ``<work_dir>/<config>.py``."""
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
            # our classes live in mmengine's root registries: say so, rather than inherit whatever scope an
            # earlier runner of the process left current (an mmseg run's "mmseg" would swap DepthMetric & co.)
            default_scope=cfg.get("default_scope") or "mmengine", randomness=cfg.get("randomness", dict(seed=None)),
            experiment_name=cfg.get("experiment_name"), cfg=cfg,
            partial_load=bool(cfg.get("partial_load", False)), other_backbone=bool(cfg.get("other_backbone", False)),
            config_copy=config_copy,
        )

    def train(self):
        try:
            return super().train()
        except BaseException:
            self.discard_unstarted_log_dir()
            raise
        finally:
            self._stop_data_workers()

    def test(self):
        try:
            return super().test()
        except BaseException:
            self.discard_unstarted_log_dir()
            raise
        finally:
            self._stop_data_workers()

    def _stop_data_workers(self) -> None:
        """End the DataLoader workers with the command that used them. Left to the garbage collector (the
        runner, its loops and loaders form reference cycles), torch's shutdown found the workers' queues
        already closed and waited 5 s for each worker before killing it; until then they stayed alive."""
        for name in ("_train_loop", "_val_loop", "_test_loop"):
            loop = self.__dict__.get(name)
            if loop is None or isinstance(loop, dict):  # not built
                continue
            loader = getattr(loop, "dataloader", None)
            iterators = (getattr(getattr(loop, "dataloader_iterator", None), "_iterator", None),  # training's
                         getattr(loader, "_iterator", None))  # persistent workers
            for iterator in iterators:
                if callable(getattr(iterator, "_shutdown_workers", None)):
                    iterator._shutdown_workers()
            if getattr(loader, "_iterator", None) is not None:
                loader._iterator = None  # a later pass starts new workers

    def dump_config(self) -> None:
        """The config's copy. A run's, ``<work_dir>/<config>.py``, records what the work dir's checkpoints
        were trained with: mmengine writes it when the runner is built, before the data sets, the optimizer
        and the checkpoint to resume are; a start that failed then (a wrong data root) replaced the copy of
        the run it did not replace. It is written once the start has succeeded (:meth:`load_or_resume`).
        A test's goes beside its log (``config_copy="log_dir"``) at once. Both are written atomically."""
        if self.config_copy == "work_dir":
            self._config_pending = True
            return
        self._write_config_copy(self.log_dir)

    def _write_config_copy(self, folder: str) -> None:
        from mmengine.dist import is_main_process

        if is_main_process():
            name = Path(self.cfg.filename).name if self.cfg.filename is not None else f"{self.timestamp}.py"
            with atomic_path(Path(folder) / name) as tmp:  # (same suffix: the same format)
                self.cfg.dump(str(tmp))

    def wrap_model(self, model_wrapper_cfg, model):
        # broadcast_buffers=False (mmengine's default wrapper too) keeps each process's buffers as built, at the
        # start as well; torch >= 2.13 calls it deprecated in a warning of every process, which its replacement
        # forward_sync_buffers=False cannot silence without syncing the buffers at the start: the warning is left out
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
            if self.distributed and not torch.cuda.is_available() and model_wrapper_cfg is None:
                from mmengine.model import MMDistributedDataParallel

                # CPU DDP: no device_ids (mmengine passes the local rank as a GPU index)
                return MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                                 find_unused_parameters=False)
            return super().wrap_model(model_wrapper_cfg, model)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        from mmengine.dist import is_main_process

        sync_norm_stats(self.model)  # every process takes part: the file holds the statistics validation uses
        _refuse_diverged(self.model, filename)  # (the processes' replicas are equal: all stop)
        if not is_main_process():  # mmengine writes from the main process only
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        with atomic_path(Path(out_dir) / filename) as tmp:
            super().save_checkpoint(out_dir, tmp.name, *args, **kwargs)

    def load_or_resume(self) -> None:
        """``resume``: continue from the newest readable checkpoint of the work dir; ``load_from`` only
        gives the starting weights of a fresh run (mmengine resumed from ``load_from`` when both were
        set: another run's optimizer, scheduler and iteration, whose saves then overwrote ours). A work
        dir without a checkpoint starts a new run there, from ``load_from``'s weights if given. A resumed run
        keeps its checkpoint's schedule, and says where it differs from the config and when the checkpoint was
        written by another number of processes than this run's (see the module docstring)."""
        if not self._has_loaded:
            self._load_or_resume()
        self._check_eval_data()
        self._started = True  # the loops, data sets, optimizer and weights are built: the start succeeded
        for path in self.__dict__.pop("delete_on_start", []):  # an earlier run's checkpoints (train --overwrite)
            path.unlink(missing_ok=True)
        if self.__dict__.get("_config_pending"):
            self._config_pending = False
            self._write_config_copy(self.work_dir)

    def _check_eval_data(self) -> None:
        """What failed only at the first validation, after ``val_interval`` iterations of training (at the end of
        a short run), is checked at the start: the validation set's map sizes against their images, from the
        files' headers (a training run; about 0.3 ms a pair), and the first sample of each data set evaluated,
        loaded whole (its label range, its depth file); for a depth evaluator, whether its crop fits that sample's
        ground truth (the NYU Eigen crop on maps not 480 x 640) and whether any of its measured depth lies in the
        evaluated range (millimetres in a float .npy left every metric NaN). Errors name the file, or the
        evaluator's key."""
        from dinov2_dense.evaluation.depth import crop_mask
        from dinov2_dense.evaluation.mmengine_metrics import DepthMetric

        train_loop = self.__dict__.get("_train_loop")
        training = train_loop is not None and not isinstance(train_loop, dict)
        for name in ("val", "test"):
            loop = self.__dict__.get(f"_{name}_loop")
            if loop is None or isinstance(loop, dict):
                continue
            dataset = getattr(getattr(loop, "dataloader", None), "dataset", None)
            load = getattr(dataset, "load_item", None)
            if load is None or len(dataset) == 0:
                continue
            if name == "val" and training and hasattr(dataset, "check_sizes"):
                dataset.check_sizes()
            sample = load(0)
            path = sample["meta"].get("target_path") or sample["meta"].get("path")
            for metric in getattr(getattr(loop, "evaluator", None), "metrics", []):
                if not isinstance(metric, DepthMetric):
                    continue
                depth = np.asarray(sample["depth"], dtype=np.float64)
                crop = metric.kwargs["crop"]
                if crop is not None:
                    try:
                        depth = depth[crop_mask(tuple(depth.shape[-2:]), crop)]
                    except ValueError as exc:
                        raise ValueError(f"{name}_evaluator.crop={crop!r} does not fit the ground truth of {path}: "
                                         f"{exc}") from None
                measured = depth[np.isfinite(depth) & (depth > 0)]
                low, high = metric.kwargs["min_depth"], metric.kwargs["max_depth"]
                if measured.size and not ((measured > low) & (measured < high)).any():
                    raise ValueError(
                        f"{path}: none of its {measured.size} measured ground-truth depths lies in "
                        f"{name}_evaluator's range ({low:g}, {high:g}) m (they are {measured.min():g} to "
                        f"{measured.max():g} m), so every metric would be NaN: wrong units (the data set's "
                        "depth_scale; a .npy of floats holds metres) or depth range?")

    def _load_or_resume(self) -> None:
        if self._resume:
            from dinov2_dense.distributed import agree_to_start, check_same_checkpoint

            # every process reads its checkpoint: one that cannot, or that finds another, stops them all
            newest = agree_to_start(self._newest_readable_checkpoint, True)
            meta = self._read_cache[newest].get("meta") if newest is not None else None
            check_same_checkpoint(os.path.basename(newest) if newest is not None else None,
                                  int(meta.get("iter", 0)) if isinstance(meta, dict) else 0, self.work_dir)
            if newest is None:
                self._resume = False  # nothing to resume: a fresh start (from load_from, if set)
            else:
                if self._load_from is not None and str(self._load_from) != newest:
                    self.logger.info(f"--resume: continuing from {newest}; load_from ({self._load_from}) gives the "
                                     "starting weights of a new run only, and is not used")
                self._load_from = newest
        super().load_or_resume()
        if self._resume:
            self._say_if_nothing_to_train()
            continue_trained_data(self, self.__dict__.get("_resumed_meta"))

    def _say_if_nothing_to_train(self) -> None:
        """A resumed run already at (or past) ``train_cfg.max_iters`` trains nothing: say so."""
        loop = self._train_loop
        max_iters = getattr(loop, "max_iters", None) if loop is not None and not isinstance(loop, dict) else None
        if max_iters is None or self.iter < max_iters:
            return
        what = "is complete" if self.iter == max_iters else f"is past train_cfg.max_iters = {max_iters}"
        note = (f"--resume: the checkpoint of {self.work_dir} is at iteration {self.iter}: the run {what}, nothing "
                f"is trained (raise train_cfg.max_iters to go on)")
        self.logger.warning(note)
        from mmengine.dist import is_main_process

        if is_main_process():
            print(f"note: {note}", file=sys.stderr)

    def _newest_readable_checkpoint(self) -> str | None:
        """The newest checkpoint of the work dir that reads; a corrupt newer one is skipped with a
        warning naming both (a crash while writing cannot leave one, a broken disk can)."""
        candidates = checkpoint_candidates(self.work_dir)
        bad: list[tuple[str, str]] = []
        for path in candidates:
            try:
                self._read_cache[path] = read_run_checkpoint(path)
            except CheckpointError as exc:
                bad.append((path, str(exc)))
                continue
            for skipped, why in bad:
                why = why.removeprefix(f"{skipped}: ")
                self.logger.warning(f"{skipped} is unreadable ({why}); resuming from {path} instead")
                print(f"warning: {skipped} is unreadable ({why}); resuming from {path} instead", file=sys.stderr)
            return path
        if bad:
            raise CheckpointError(f"no readable checkpoint to resume in {self.work_dir}: "
                                  + "; ".join(why for _, why in bad))
        return None

    def resume(self, filename: str, *args, **kwargs) -> None:
        checkpoint = self._read_cache.get(str(filename)) or read_run_checkpoint(filename)
        meta = checkpoint.get("meta")
        self._resumed_meta = meta if isinstance(meta, dict) else None
        if not isinstance(meta, dict) or "iter" not in meta or "optimizer" not in checkpoint:
            raise CheckpointError(f"{filename}: not a training checkpoint of dinov2-dense train (no optimizer "
                                  "state or iteration): --resume continues a run; use it as load_from instead")
        configured = _scheduler_lengths(self.param_schedulers)
        rates = _initial_rates(self.optim_wrapper)
        try:
            super().resume(filename, *args, **kwargs)
        except CheckpointError:
            raise
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from {filename}: {exc}") from None
        restored = _scheduler_lengths(self.param_schedulers)
        loop = self._train_loop
        max_iters = getattr(loop, "max_iters", None) if loop is not None and not isinstance(loop, dict) else None
        for (name, was), (_, now) in zip(configured, restored):
            if was != now:  # mmengine restores each scheduler whole, its end too
                end = now.get("end")
                after = ("the run stops at train_cfg.max_iters = {0} before that schedule's end, so its rate stops "
                         "short of where the schedule takes it" if isinstance(end, int) and max_iters is not None
                         and end > max_iters else "iterations past its end run at the rate it ended with")
                self.logger.warning(
                    f"--resume: {name} continues as {filename} saved it ({_lengths_text(now)}; the config says "
                    f"{_lengths_text(was)}): a resumed run keeps its schedule, so {after.format(max_iters)}")
        if configured != restored:
            self._refuse_training_at_rate_zero(filename)
        self._say_if_other_processes(filename, meta)
        self._say_what_the_checkpoint_keeps(filename, meta, rates)
        self._say_if_other_data(filename, meta)

    def _say_if_other_data(self, filename: str, meta: dict) -> None:
        """A resume given other data sets than its checkpoint trained and validated on (``meta.data``; a
        checkpoint from before the record says nothing) goes on with this config's: say which settings differ
        (a reviewer's resume on another root said nothing, and save_best then compared the scores of two
        validation sets)."""
        from mmengine.dist import is_main_process

        recorded = meta.get("data")
        if not isinstance(recorded, str) or not is_main_process():
            return
        differ = data_differences(recorded, _data_record(self.cfg))
        if not differ:
            return
        shown = "; ".join(differ[:6]) + (f"; and {len(differ) - 6} more" if len(differ) > 6 else "")
        best = (", and save_best compares this validation set's scores with the best of the other"
                if any(d.startswith("val_dataloader.") for d in differ) else "")
        what = " and ".join(w for w, keys in (("other data", ("train_dataloader.", "val_dataloader.")),
                                              ("other losses", ("model.losses",)))
                            if any(d.startswith(keys) for d in differ))
        self.logger.warning(
            f"--resume: {filename} was trained with {what} than this config gives ({shown}): the run goes on with "
            f"this config's{best}. To train its head on other data or losses, start a new run from its weights: "
            "load_from=FILE without --resume")

    def _say_what_the_checkpoint_keeps(self, filename: str, meta: dict, rates: list | None) -> None:
        """Settings a resume takes from the checkpoint, not the config, said where they differ (a reviewer's
        resume given another rate trained at the checkpoint's with no word, and one given another batch size
        went on at it): the optimizer's base rates, which mmengine restores with its state (the config copy keeps
        the config's); and the per-process batch size, with which the run goes on (its batches are not the
        uninterrupted run's; a checkpoint from before the record cannot tell where its data stopped)."""
        from mmengine.dist import get_world_size, is_main_process

        if not is_main_process():
            return
        now = _initial_rates(self.optim_wrapper)
        if rates is not None and now is not None and len(rates) == len(now) and \
                any(not math.isclose(a, b, rel_tol=1e-9) for a, b in zip(rates, now)):
            lr = (self.cfg.get("optim_wrapper") or {}).get("optimizer", {}).get("lr")
            scaled = bool((self.cfg.get("auto_scale_lr") or {}).get("enable", False))
            key = (f": optim_wrapper.optimizer.lr={lr}{' before auto_scale_lr' if scaled else ''}"
                   f"{', with the groups multipliers' if len(set(rates)) > 1 else ''}") if lr is not None else ""
            self.logger.warning(
                f"--resume: the optimizer continues as {filename} saved it, at base rate {_rate_text(now)} (the "
                f"config gives {_rate_text(rates)}{key}), "
                "which a resume does not change; to train on at another rate, start a new run from its weights: "
                "load_from=FILE without --resume")
        was, batch = meta.get("train_batch_size"), _train_batch_size(self)
        if batch is None or meta.get("world_size") not in (None, int(get_world_size())):
            return  # (another number of processes: _say_if_other_processes names both batches)
        if _is_count(was) and was != batch:
            self.logger.warning(
                f"--resume: {filename} was trained with train_dataloader.batch_size={was}; this run's is {batch}, with "
                "which it goes on: its batches are not the uninterrupted run's (resume with the batch size it was run "
                "with to continue it as it was)")
        elif not _is_count(was):
            self.logger.warning(
                f"--resume: {filename} does not record its batch size (written by an earlier version): the data "
                f"continues as if it had trained with this run's batch size, {batch}; resumed with another batch size "
                "than it was run with, samples are skipped or read twice")

    def _refuse_training_at_rate_zero(self, filename: str) -> None:
        """A run given ``train_cfg.max_iters=300`` on the command line and resumed without it took the config's
        600, and trained 300 iterations at the rate 0 its ended schedule had left (a warning said only "the rate
        it ended with"): new checkpoints of unchanged weights, and older ones pruned. Where the checkpoint's
        schedule is not the config's, the resume is refused, before anything is trained or written, when that
        schedule, stepped through the iterations to come (on a copy of its state), puts every parameter group's
        rate at 0 for more than one of them (a warm-up that ends later multiplies a rate of 0): a run stopped
        before the end of a shortened schedule and resumed without the shortening (a reviewer's: 16 iterations
        of 40 at rate 0) as well as one already at 0. (The config's own schedule may reach 0 on its last
        iteration: mmengine's PolyLR does; so does the uninterrupted run.)"""
        loop = self._train_loop
        max_iters = getattr(loop, "max_iters", None) if loop is not None and not isinstance(loop, dict) else None
        if max_iters is None or self.iter >= max_iters:
            return
        to_come = max_iters - self.iter
        lengths = _scheduler_lengths(self.param_schedulers)
        ends = [v["end"] for _, v in lengths if isinstance(v.get("end"), int)]
        # the schedule's own last iteration may be at 0 (a poly decay to 0 reaches it there in its uninterrupted
        # run too); an iteration at 0 anywhere else is one the uninterrupted run did not have
        own_last = max(ends) - 1 if ends else None
        at_zero = [k for k in _iterations_at_rate_zero(self.param_schedulers, to_come) if self.iter + k != own_last]
        if not at_zero:
            return
        names = ", ".join(n for n, _ in lengths) or "no schedule"
        if len(at_zero) == to_come:
            what = (f"{filename} is at learning rate 0 ({names}), and its schedule keeps it there, so the {to_come} "
                    f"iteration{'s' * (to_come != 1)} to train_cfg.max_iters = {max_iters} would not change the weights: that run is "
                    f"complete at {self.iter}")
        else:  # (iterations counted from 1, as the log's [n/max_iters])
            what = (f"{filename}'s schedule ({names}) ends at iteration {max(ends) if ends else '?'} at learning rate "
                    f"0, so {len(at_zero)} of the {to_come} iterations to train_cfg.max_iters = {max_iters} (from "
                    f"iteration {self.iter + at_zero[0] + 1}) would train at rate 0 and not change the weights (only "
                    "BatchNorm statistics would move)")
        raise CheckpointError(
            f"--resume: {what} (give the train_cfg.max_iters it was run with), or train on from its weights with a new "
            "schedule: load_from=FILE without --resume")

    def _say_if_other_processes(self, filename: str, meta: dict) -> None:
        """A run resumed on another number of processes than its checkpoint was written by (``meta.world_size``;
        a checkpoint from before the record says nothing) continues on this run's: say so, on the main process."""
        from mmengine.dist import get_world_size, is_main_process

        was, now = meta.get("world_size"), int(get_world_size())
        if not _is_count(was) or was == now or not is_main_process():
            return
        was_batch = meta.get("train_batch_size") if _is_count(meta.get("train_batch_size")) else None
        self.logger.warning(
            f"--resume: {filename} was written by {_processes_text(was, was_batch)}; this run has "
            f"{_processes_text(now, _train_batch_size(self))}: a resumed run continues on this run's processes, so "
            "its batches are not the uninterrupted run's. To continue it as "
            f"it was, resume with {was} process{'es' if was != 1 else ''}")

    def load_checkpoint(self, filename: str, map_location: Any = "cpu", strict: bool = False,
                        revise_keys: list = [(r"^module\.", "")]) -> dict:  # noqa: B006 - mmengine's signature
        """mmengine's load, made strict through our key report (see the module docstring)."""
        checkpoint = self._read_cache.pop(str(filename), None) or read_run_checkpoint(filename, map_location)
        self.call_hook("after_load_checkpoint", checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        zoo = isinstance(self.cfg.get("model"), dict) and self.cfg["model"].get("zoo") is not None
        HeadCheckpointLoader(partial_load=self.partial_load, other_backbone=self.other_backbone, zoo=zoo,
                             warn=self.logger.warning).load(filename, checkpoint, model, revise_keys)
        self._has_loaded = True
        self.logger.info(f"Load checkpoint from {filename}")
        return checkpoint


class HeadCheckpointLoader:
    """Loads a head checkpoint into a DenseModel as ``test``, ``--resume`` and ``load_from`` do (and
    :func:`dinov2_dense.engine.load_trained`): strictly through our key report, refusing non-finite
    tensors, a head trained on another backbone (``meta.backbone``), fed other blocks (``meta.head_inputs``)
    or built for another depth range (``meta.head_output``); ``partial_load`` and ``other_backbone`` say
    that this is meant. ``zoo``: the config names a zoo model (whose blocks and head are its own); ``warn``
    takes the warnings (the runner's logger); ``python``: the advice names the arguments of
    ``load_trained`` (``other_backbone=True``, ``cfg_options={...}``) instead of the command's options."""

    def __init__(self, *, partial_load: bool = False, other_backbone: bool = False, zoo: bool = False,
                 warn=None, python: bool = False) -> None:
        self.partial_load, self.other_backbone, self.zoo, self.python = partial_load, other_backbone, zoo, python
        self.warn = warn or (lambda message: warnings.warn(message, stacklevel=3))

    def _flag(self, option: str) -> str:
        """A command's flag (``--other-backbone``) as the caller gives it."""
        return f"{option[2:].replace('-', '_')}=True" if self.python else option

    def _options(self, pairs: list[tuple[str, Any]]) -> str:
        """Config values to give, as ``--cfg-options k=v ...`` or ``cfg_options={...}``."""
        if self.python:
            return "cfg_options={" + ", ".join(f"{key!r}: {value!r}" for key, value in pairs) + "}"
        return "--cfg-options " + " ".join(f"{key}={value}" for key, value in pairs)

    def load(self, filename: str, checkpoint: dict, model, revise_keys=((r"^module\.", ""),)) -> None:
        """Load ``checkpoint`` (read from ``filename``, which messages name) into ``model``."""
        state = dict(checkpoint.get("state_dict", checkpoint))
        for pattern, replacement in revise_keys:
            state = OrderedDict((re.sub(pattern, replacement, k), v) for k, v in state.items())
        problems = model.state_dict_problems(state) if hasattr(model, "state_dict_problems") else []
        if problems:
            own = model.state_dict()
            if hasattr(model, "backbone"):
                own.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
            fitting = OrderedDict((k, v) for k, v in state.items() if k in own and own[k].shape == v.shape)
            # a head of another backbone has other shapes: that is said first (a partial load would keep a
            # part-random head), judged by the keys that would load (backbone.* tensors that do not fit bring
            # no backbone)
            self._check_backbone(filename, checkpoint, fitting, model)
            if not self.partial_load:
                # (where no key fits, a partial load would load nothing: it is not offered)
                way = (f"\n  (pass {self._flag('--partial-load')} to load the keys that fit and keep the rest as built)"
                       if fitting else "\n  (none of its keys fits: is it a checkpoint of this config's task and head?)")
                raise CheckpointError(f"{filename} does not fit the model of this config:\n  " + "\n  ".join(problems)
                                      + self._class_count_hint(state, own) + way)
            self.warn(f"partial load of {filename}: " + "; ".join(problems))
            state = fitting
            if not state:  # the model would run as built: a random head, scored as if it were the file's
                raise CheckpointError(f"{filename}: none of its keys fits the model of this config, so "
                                      f"{self._flag('--partial-load')} would load nothing and keep the model as "
                                      "built:\n  " + "\n  ".join(problems))
        refuse_nonfinite(state, str(filename))
        if not problems:
            self._check_backbone(filename, checkpoint, state, model)
        self._check_head_inputs(filename, checkpoint, model)
        self._check_head_output(filename, checkpoint, model)
        self._say_unrecorded(filename, checkpoint, model)
        replaced = _replaces_backbone(state, model)
        model.load_state_dict(state, strict=not problems)
        if replaced:
            # the checkpoint's backbone.* tensors are the backbone now: recorded as such, and kept in this
            # run's checkpoints (a frozen backbone's are left out of them otherwise, and the config's is not it)
            was = model.backbone_source
            recorded = ((checkpoint.get("meta") or {}).get("backbone") or {}).get("weights")
            # a checkpoint of such a run names where its backbone came from (a resumed run keeps that name)
            model.backbone_source = recorded if isinstance(recorded, str) and recorded.startswith("the backbone.*") \
                else f"the backbone.* tensors of {filename}"
            model._fingerprint = None
            model.keep_backbone = True
            self.warn(f"{filename} holds backbone.* tensors other than this config's backbone ({was}): "
                      "the model runs on those (and a training run's checkpoints keep them)")

    def _class_count_hint(self, state: dict, own: dict) -> str:
        """For a segmentation head of another number of classes (its classifier's outputs, alone of its shape,
        differ), the key that sets them: the shapes alone named ``decode_head.conv_seg.*``."""
        key = "decode_head.conv_seg.weight"
        theirs, ours = state.get(key), own.get(key)
        if theirs is None or ours is None or theirs.shape[1:] != ours.shape[1:] or theirs.shape[0] == ours.shape[0]:
            return ""
        n = int(theirs.shape[0])
        keys = ("model.head.num_classes", "val_evaluator.num_classes", "test_evaluator.num_classes")
        give = "the config of its run" if self.zoo else f"{self._options([(k, n) for k in keys])} (as the config of its run)"
        return (f"\n  (a head of {n} classes, and this config's model.head.num_classes is {int(ours.shape[0])}: "
                f"give {give} to run it as trained)")

    def _as_its_run(self, differ: list[tuple[str, Any, Any]], zoo_builds: str) -> str:
        """How to give the values of a head's run: the config of its run for a zoo model (``zoo_builds``:
        what the zoo model sets itself), else the options."""
        if self.zoo:
            return f"the config of its run (a model.zoo model {zoo_builds})"
        return f"{self._options([(key, theirs) for key, theirs, _ in differ])} (as the config of its run)"

    def _check_head_inputs(self, filename: str, checkpoint: dict, model) -> None:
        """Refuse (unless ``other_backbone``) a head checkpoint whose ``meta.head_inputs`` records other blocks,
        norm or class tokens than this config feeds the head: a head of the same width then loaded and ran on
        features it was not trained on, with no error (a checkpoint from before the record is not checked)."""
        recorded = (checkpoint.get("meta") or {}).get("head_inputs")
        if not isinstance(recorded, dict) or not hasattr(model, "head_inputs"):
            return
        ours = model.head_inputs()
        keys = {"layers": "model.layers", "norm": "model.norm", "class_token": "model.class_token"}
        differ = [(keys[k], recorded[k], ours[k]) for k in keys if k in recorded and recorded[k] != ours[k]]
        if not differ:
            return
        said = "; ".join(f"{key} {theirs} in its run, {mine} here" for key, theirs, mine in differ)
        message = (f"{filename} holds a head trained on other features of its backbone than this config feeds it "
                   f"({said})")
        self._refuse_other_backbone(message, f": give {self._as_its_run(differ, 'reads its own blocks')}, or pass "
                                    f"{self._flag('--other-backbone')} to use it so anyway")

    def _check_head_output(self, filename: str, checkpoint: dict, model) -> None:
        """Refuse (unless ``other_backbone``: fine-tuning a head for another range from ``load_from``) a depth
        head checkpoint whose ``meta.head_output`` records another depth range (or bin settings) than this
        config builds the head with: a linear head's bins span the range, so a head trained for 0.001-10 m
        built for 80 m predicted every depth x8, with no error (a checkpoint from before the record is not
        checked). The evaluated range (``test_evaluator.max_depth``) is another setting, and may differ."""
        from dinov2_dense.checkpoints import head_output_difference

        if not hasattr(model, "head_output"):
            return
        recorded = (checkpoint.get("meta") or {}).get("head_output")
        differ = [(f"model.head.{k}", theirs, mine) for k, theirs, mine in
                  head_output_difference(recorded, model.head_output())]
        if not differ:
            return
        said = "; ".join(f"{key} {theirs!r} in its run, {mine!r} here" for key, theirs, mine in differ)
        message = (f"{filename} holds a depth head trained for another output than this config builds ({said}): "
                   "its predictions would be rescaled")
        evaluated = "" if self.python else " (the range evaluated is test_evaluator.min_depth / max_depth)"
        start = "use it so anyway" if self.python else "start from it so anyway (a head to fine-tune for another " \
            "range, from load_from)"
        self._refuse_other_backbone(message, f"; give {self._as_its_run(differ, 'builds its own head')}{evaluated}, "
                                    f"or pass {self._flag('--other-backbone')} to {start}")

    def _say_unrecorded(self, filename: str, checkpoint: dict, model) -> None:
        """A checkpoint of ``train`` from before the head records (it records its backbone) is loaded unchecked
        for the blocks its head read and a depth head's range: a reviewer's old depth head tested at
        max_depth=80 scored abs_rel 2.08 against 0.66, with no word. Said, naming what is not checked."""
        meta = checkpoint.get("meta") or {}
        if not isinstance(meta.get("backbone"), dict):  # not one of train's (official head files, mmseg's)
            return
        missing = [what for key, what, applies in (
            ("head_inputs", "the blocks, norm and class tokens its head read (model.layers, model.norm, "
             "model.class_token)", hasattr(model, "head_inputs")),
            ("head_output", "its depth head's range and bins (model.head.min_depth, max_depth, ...)",
             hasattr(model, "head_output") and bool(model.head_output()))) if applies and key not in meta]
        if missing:
            self.warn(f"{filename} was written by an earlier version, which did not record {' or '.join(missing)}: "
                      "they are not checked; give the values of the config of its run")

    def _refuse_other_backbone(self, message: str, way: str) -> None:
        """Raise ``message + way`` as a CheckpointError, or with ``other_backbone`` warn of ``message`` and go on."""
        if not self.other_backbone:
            raise CheckpointError(message + way)
        self.warn(message + f" ({self._flag('--other-backbone')}: going on)")

    def _check_backbone(self, filename: str, checkpoint: dict, state: dict, model) -> None:
        """Refuse (unless ``other_backbone``) a head checkpoint whose ``meta.backbone`` records another
        backbone than this config builds: by ``features_sha256`` where both record it (the same weights
        read from a timm or Hugging Face file are the same backbone), else by the weights' ``sha256``
        (a checkpoint of an older version, which tells those formats apart too)."""
        from dinov2_dense.checkpoints import backbone_difference, difference_reason, forward_difference

        recorded = (checkpoint.get("meta") or {}).get("backbone")
        if not isinstance(recorded, dict) or not hasattr(model, "backbone_info"):
            return  # an official head file, or a checkpoint from before fingerprints
        if any(k.startswith("backbone.") for k in state):
            return  # the checkpoint brings its backbone (to-mmseg records that one, and checks the head's)
        ours = model.backbone_info()
        difference = backbone_difference(recorded, ours)
        other = self._flag("--other-backbone")
        if difference is None:
            settings = forward_difference(recorded, ours)  # the same weights, built with other settings
            if settings is None:
                return
            message = (f"{filename} holds a head trained on the same backbone weights built with other settings "
                       f"({settings}: another model.backbone or architecture file), whose features differ")
            self._refuse_other_backbone(message, f"; build it as its run did, or pass {other} to use this one anyway")
            return
        label, theirs, mine = difference
        differ = difference_reason(label) + ("" if label.startswith("features") else
                                             f": if they are the same weights, {other} is safe")
        message = (f"{filename} holds a head trained on another backbone ({recorded.get('weights')}, {label} "
                   f"{theirs[:12]}) than this config builds ({ours['weights']}, {label} {mine[:12]}): {differ}")
        give = self._options([("model.backbone_weights", "...")]) if self.python else "model.backbone_weights=..."
        self._refuse_other_backbone(message, f"; give the same backbone weights ({give}), or pass {other} to use "
                                    "this one anyway")
