"""The pretraining loop: one process, or many under torchrun (DDP, or FSDP with torch's own
``fully_shard``), with atomic checkpoints, resume after ``kill -9``, progress with images/s and ETA,
the loss terms logged, and the dense-quality monitor.

A resumed run equals the uninterrupted one with the same seed and number of processes: every random
draw is seeded by ``dinov2_dense.data.sampling.stream_seed`` from ``train.seed`` and a sample's place in the data stream
(crops, and masks by a batch's first sample: whichever DataLoader worker makes them) or the iteration
(each process's torch draws: drop path), and a checkpoint holds the last step's centre update.

Per iteration, as the released ``dinov2/train/train.py``: the scheduled learning rate, weight decay
and last-layer rate are set on the parameter groups; the student's gradients are computed
(:meth:`SSLMetaArch.forward_backward`), clipped per part to ``optim.clip_grad`` and applied
(AdamW); the teacher moves towards the student with the scheduled momentum. A NaN loss stops the
run, naming the iteration (counted from 1, as the log and the checkpoint names), before anything is
written for it.

Files in the work dir: ``checkpoint_<iteration>.pth`` (the newest ``train.max_to_keep``; each written
to a temporary name and renamed; the model's state dict under ``model`` holds ``teacher.backbone.*``,
so ``load_backbone`` reads a checkpoint as it reads an official training checkpoint),
``backbone.json`` (the architecture), ``config.json`` (the settings in force; ``_resumes``: the resumes
that changed any, each with its iteration and the values before), ``training_metrics.jsonl`` (one line per log
step), ``training_curves.png`` (redrawn at each checkpoint, :func:`plot_training`), ``export/`` at
the end (:mod:`pretrain.export`), ``monitor/`` (:mod:`pretrain.monitor`) and the hidden
``.dinov2-dense-pretrain`` marker, which tells a run's folder from one holding other files.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dinov2_dense.data.sampling import InfiniteStream, stream_seed
from dinov2_dense.distributed import agree_to_start, check_same_checkpoint, check_same_settings, under_torchrun
from dinov2_dense.fileio import DirLock, atomic_path, write_json

from .config import resolve
from .export import save_torch
from .meta_arch import SSLMetaArch
from .schedules import apply_optim_scheduler, build_schedules, scaled_lr, unwrap

__all__ = ["TrainingDiverged", "arch_dict", "checkpoint_files", "is_run_dir", "plot_training", "pretrain",
           "setup_distributed"]

_CKPT = re.compile(r"^checkpoint_(\d+)\.pth$")


# -- processes ---------------------------------------------------------------------------------
def setup_distributed(device: str | None = None) -> tuple[torch.device, int, int]:
    """(device, rank, world size); under torchrun the process group is started here (NCCL on CUDA,
    gloo on CPUs), one GPU per local rank."""
    from dinov2_dense.options import check_device

    dist = torch.distributed
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device, "compute.device")  # one that this machine does not have: a ValueError naming the key
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    from dinov2_dense.distributed import local_device

    dev = local_device(torch.device(device))
    if dev.type == "cuda":
        dev = torch.device("cuda", 0) if dev.index is None else dev  # (one process without torchrun: GPU 0)
        torch.cuda.set_device(dev)
    return dev, rank, world


def _autocast(precision: str, device: torch.device) -> tuple[Callable | None, Any]:
    """(autocast context factory or None, grad scaler or None) for ``compute.precision``."""
    if precision == "auto":
        if device.type == "cuda":
            # native bf16 only (compute capability 8.0+): torch's default counts the emulation of a T4 or V100,
            # slow there, where fp16 with a gradient scaler is the fast choice
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        else:
            from dinov2_dense.features import cpu_has_native_bf16

            precision = "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp32":
        return None, None
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("compute.precision=fp16 needs a CUDA device (with a gradient scaler); use bf16 or fp32")
        return partial(torch.autocast, "cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return partial(torch.autocast, device.type, dtype=torch.bfloat16), None


def _wrap(model: SSLMetaArch, mode: str, device: torch.device, world: int) -> None:
    """Each student part in DDP, or every block and part of both student and teacher in FSDP
    (``fully_shard``: the same sharding on both, so the teacher's EMA update stays local)."""
    if world == 1:
        return
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        unused = bool(getattr(model, "ibot_separate_head", False))  # a step may skip iBOT (no masked patch)
        # distillation never masks: a student backbone's mask_token gets no gradient (DDP's next step raised
        # "Expected to have finished reduction in the prior iteration")
        distilling = any(k.endswith("_backbone") for k in model.student.keys())  # DistillArch's student<i>_backbone
        for key in list(model.student.keys()):
            model.student[key] = DDP(model.student[key], device_ids=ids,
                                     find_unused_parameters=(unused and key == "ibot_head") or
                                     (distilling and key.endswith("backbone")))
        return
    from torch.distributed.fsdp import fully_shard

    for part in (model.student, model.teacher):
        for key, module in part.items():
            for block in getattr(module, "blocks", []):
                fully_shard(block)
            module.register_forward_hook(_outputs_of_their_own)  # before fully_shard's: runs first
            fully_shard(module)


def _outputs_of_their_own(module: nn.Module, args: Any, output: Any) -> Any:
    """A forward hook for a module that FSDP wraps: its outputs that are views, as tensors of their own.

    A backbone's ``x_norm_clstoken``, ``x_norm_regtokens`` and ``x_norm_patchtokens`` slice one normed
    tensor. FSDP2 hangs the hook that gathers the parameters again for the backward pass on each output
    tensor, and warns of a view (an in-place op on one would drop that hook). The loop never modifies
    these outputs in place, so the hook did fire (DDP and FSDP trained the same weights); the copy makes
    that hold whatever uses the outputs, and silences the warning. It is exact (its gradient passes
    through unchanged) and cheap: the tokens are copied once per student forward, beside a ViT's work.
    Without gradients (the teacher) nothing is hooked, nor copied."""
    if not torch.is_grad_enabled():
        return None

    def own(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.clone() if value.requires_grad and value._base is not None else value
        if isinstance(value, dict):
            return {k: own(v) for k, v in value.items()}
        if isinstance(value, list):
            return [own(v) for v in value]
        if type(value) is tuple:
            return tuple(own(v) for v in value)
        return value

    return own(output)


def _plain(backbone: nn.Module, sharded: bool, device: torch.device) -> nn.Module | None:
    """``backbone`` itself, or under FSDP a plain copy holding the full weights on the main process
    (None elsewhere): a collective, so every process calls it."""
    backbone = unwrap(backbone)
    if not sharded:
        return backbone
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from dinov2_dense.models import DinoVisionTransformer

    full = get_model_state_dict(backbone, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    copy = DinoVisionTransformer(**arch_dict(backbone))
    copy.load_state_dict(full, strict=True)
    return copy.to(device).train(backbone.training)


def arch_dict(backbone: nn.Module) -> dict[str, Any]:
    """The keyword arguments that rebuild ``backbone`` (``DinoVisionTransformer(**arch)``): what
    ``backbone.json`` holds and ``load_backbone`` reads."""
    return unwrap(backbone).arch_kwargs()


# -- data --------------------------------------------------------------------------------------
#: The run's random streams (keys of :func:`stream_seed`): crops, masks, and torch's (drop path).
_CROPS, _MASKS, _TORCH = 1, 2, 3


class _Positioned(torch.utils.data.Dataset):
    """``dataset`` read at the sampler's ``(position, index)``: the augmentation is seeded from the
    position, so a sample's crops do not depend on the iteration a run started at nor on the
    DataLoader worker that makes them. Items are ``(sample, position)``."""

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[Any, int]:
        position, index = item
        self.dataset.transform.set_random_seed(stream_seed(self.seed, _CROPS, position))
        return self.dataset[index], position


def _collate_at(batch: list[tuple[Any, int]], collate: Callable, seed: int) -> dict[str, Any]:
    """``collate`` of a batch of ``(sample, position)``: its masks (Python's ``random``) drawn from a
    seed of the batch's first position; the caller's ``random`` state is left as it was."""
    import random

    state = random.getstate()
    random.seed(stream_seed(seed, _MASKS, batch[0][1]))
    try:
        return collate([sample for sample, _ in batch])
    finally:
        random.setstate(state)


def _loader(cfg: dict, start_iter: int, rank: int, world: int):
    from .data import DataAugmentationDINO, MaskingGenerator, build_dataset, collate_data_and_cast

    crops, train = cfg["crops"], cfg["train"]
    patch = cfg["student"]["patch_size"]
    grid = crops["global_crops_size"] // patch
    seed = train["seed"]
    transform = DataAugmentationDINO(crops["global_crops_scale"], crops["local_crops_scale"],
                                     crops["local_crops_number"], global_crops_size=crops["global_crops_size"],
                                     local_crops_size=crops["local_crops_size"],
                                     blur_probabilities=tuple(crops["blur_probabilities"]),
                                     color_jitter=tuple(crops["color_jitter"]),
                                     color_jitter_probability=crops["color_jitter_probability"],
                                     grayscale_probability=crops["grayscale_probability"], seed=seed)
    dataset = build_dataset(train["dataset"], transform=transform)
    masks = MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    masking = 0.0 if cfg["distill"]["teacher"] else cfg["ibot"]["mask_sample_probability"]  # distillation: none
    collate = partial(collate_data_and_cast, mask_ratio_tuple=tuple(cfg["ibot"]["mask_ratio_min_max"]),
                      mask_probability=masking, n_tokens=grid * grid,
                      mask_generator=masks, dtype=torch.float32)
    batch = train["batch_size_per_gpu"]
    sampler = InfiniteStream(len(dataset), seed, rank, world, start=start_iter * batch * world)
    # crops and masks are seeded by the samples' positions in the stream (not by the start or the worker)
    return dataset, torch.utils.data.DataLoader(_Positioned(dataset, seed), batch_size=batch, sampler=sampler,
                                                drop_last=True, num_workers=train["num_workers"],
                                                collate_fn=partial(_collate_at, collate=collate, seed=seed),
                                                persistent_workers=train["num_workers"] > 0, pin_memory=False,
                                                generator=torch.Generator().manual_seed(seed))


# -- checkpoints -------------------------------------------------------------------------------
def checkpoint_files(work_dir: str | os.PathLike) -> list[Path]:
    """``checkpoint_<iteration>.pth`` files of a work dir, newest first."""
    found = [(int(m.group(1)), p) for p in Path(work_dir).glob("checkpoint_*.pth") if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _read(path: Path) -> dict | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged file: the caller takes an older one
        return None
    return ckpt if isinstance(ckpt, dict) and "model" in ckpt and "iteration" in ckpt else None


def _resume_state(work_dir: Path, main: bool) -> tuple[dict | None, Path | None]:
    """The newest readable checkpoint of ``work_dir`` and its path ((None, None) without checkpoints: a
    run stopped before its first one starts again, and the main process says so, naming the work dir, for a
    mistyped one starts a new run too). Unreadable newer ones are named and passed over;
    where none is readable the resume is refused before anything is written (starting again from
    iteration 0 would trim the run's log and, in the end, replace its checkpoints)."""
    found = checkpoint_files(work_dir)
    for n, path in enumerate(found):
        state = _read(path)
        if state is not None:
            if main:
                for bad in found[:n]:
                    print(f"warning: {bad} is unreadable; resuming from an older checkpoint", file=sys.stderr)
                print(f"resuming from {path} (iteration {int(state['iteration'])})", file=sys.stderr)
            return state, path
    if found:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ValueError(f"work dir {work_dir}: none of its {len(found)} checkpoints is readable ({names}), so "
                         "--resume has nothing to continue; nothing was changed. Put a readable checkpoint back, or "
                         "start afresh with --overwrite (the checkpoints, logs and export are deleted)")
    if main:  # started as documented, but said: a mistyped work dir would otherwise start a new run unnoticed
        print(f"--resume: {work_dir} holds no checkpoint yet; starting a new run there", file=sys.stderr)  # as train says
    return None, None


def _check_same_teacher(model: nn.Module, state: dict, cfg: dict, path: Path) -> None:
    """A resumed distillation goes on with the checkpoint's frozen teacher: one whose command names another
    (other weights than the checkpoint's ``teacher.backbone.*``) is refused, naming both, rather than recorded
    in config.json while the run keeps the old one. The teacher head is not compared: a resume goes on with
    the one its checkpoint holds (:func:`_keep_starting_points`)."""
    saved = state.get("config")
    saved = (saved.get("distill") or {}) if isinstance(saved, dict) else {}
    ckpt, now = state["model"], cfg["distill"]
    backbone = model.teacher.backbone
    if any("teacher.backbone." + k in ckpt and
           not torch.equal(ckpt["teacher.backbone." + k].to(v.dtype), v.detach().cpu())
           for k, v in backbone.state_dict().items()):
        raise ValueError(f"{path}: this distillation was written with another frozen teacher than this command "
                         f"gives (distill.teacher {saved.get('teacher')!r} -> {now['teacher']!r}: other weights); "
                         "resume it with the teacher it was written with, or start afresh with --overwrite")


#: What only a new run starts from: a resume goes on with its checkpoint's weights, whatever the command gives
#: (the run folder a teacher head came from may hold other checkpoints by then). config.json keeps the run's.
STARTING_POINTS = ("distill.teacher_head", "student.pretrained_weights")


def _same_start(key: str, recorded: Any, given: Any) -> bool:
    """Whether a command's value of a starting point names the one the run recorded: the same value, or for a
    teacher head the run folder that gave the recorded checkpoint."""
    if recorded == given:
        return True
    if not (isinstance(recorded, str) and isinstance(given, str)):
        return False
    recorded, given = os.path.normpath(recorded), os.path.normpath(given)
    return recorded == given or (key == "distill.teacher_head" and _CKPT.match(os.path.basename(recorded)) is not None
                                 and os.path.dirname(recorded) == given)


def _keep_starting_points(saved: Any, cfg: dict, path: Path) -> list[str]:
    """Put the run's recorded :data:`STARTING_POINTS` back into ``cfg`` (they are what it started from, and
    its checkpoint carries on from there); a note for each that the command gives otherwise."""
    if not isinstance(saved, dict):
        return []
    notes = []
    for key in STARTING_POINTS:
        section, name = key.split(".")
        if not isinstance(saved.get(section), dict) or name not in saved[section]:
            continue
        recorded, given = saved[section][name], cfg[section][name]
        if key == "distill.teacher_head" and not cfg["distill"]["teacher"]:
            continue
        cfg[section][name] = recorded
        if _same_start(key, recorded, given):
            continue
        if key == "distill.teacher_head":
            began = (f"it started from the head of {recorded!r}" if recorded else
                     "it started from a random head, drawn at its start")
            notes.append(f"note: --resume: this command's distill.teacher_head ({given!r}) is not used: a resumed "
                         f"distillation goes on with the frozen teacher head stored in {path.name} ({began}); a "
                         "teacher head is only a new run's starting point (config.json keeps the run's)")
        else:
            began = f"it started from {recorded!r}" if recorded else "it started from a random initialisation"
            notes.append(f"note: --resume: this command's student.pretrained_weights ({given!r}) is not used: a "
                         f"resumed run goes on with the weights stored in {path.name} ({began}); pretrained weights "
                         "are only a new run's starting point (config.json keeps the run's)")
    return notes


def _state(model: SSLMetaArch) -> dict[str, torch.Tensor]:
    """The full state dict (student, teacher, loss centres), gathered on every rank under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k.replace("module.", "", 1) if ".module." not in k else k.replace(".module.", "."): v.detach().cpu()
            for k, v in sd.items()}


def _load_state(model: SSLMetaArch, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    own = {k.replace(".module.", "."): k for k in model.state_dict()}
    state = {own.get(k, k): v for k, v in state.items()}
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=True))


# -- the loop ----------------------------------------------------------------------------------
def pretrain(config: dict, work_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
             progress: bool = True, max_iters: int | None = None, source: str = "config") -> dict[str, Any]:
    """Run (or resume) a pretraining run; returns the last logged metrics and the export paths.

    ``config``: the user's sections (see :mod:`pretrain.config`); ``max_iters`` stops early (tests).
    ``work_dir`` is a new or empty folder, or one that a pretraining run wrote (:func:`is_run_dir`):
    a folder holding other files (an export copied there, a user's data) is refused, and so is one
    inside the training data's folder. One holding another run's checkpoints is refused unless
    ``resume`` (continue it) or ``overwrite`` (start afresh: that run's checkpoints, export and logs
    are deleted, but only once the config and the data set are checked and the model built, so that
    a refused start deletes nothing). A new work dir is created only then, too: a refused start
    leaves no empty folder behind; one that cannot be made or written is refused first of all. A
    ``resume`` takes the newest readable checkpoint and is refused where none is readable. It goes on with
    the checkpoint's weights: a distillation's ``distill.teacher_head`` (and ``student.pretrained_weights``)
    is only a new run's starting point, not read again (config.json keeps the run's value; a run folder given
    as the head is recorded as the checkpoint it gave). Other settings than the checkpoint's are named in one
    warning (but :data:`RESUME_FREE_SETTINGS`; the schedule's in their own) and recorded in config.json's
    ``_resumes``: the iteration from which the command's values apply, and the values before.

    Under torchrun the process group starts first; the processes then refuse together, with one line, a
    start that one of them refuses (a config error; the work dir, which the main process checks) and
    settings that differ between them (other ``--cfg-options`` on one machine; :data:`PER_PROCESS_SETTINGS`
    aside), before any model is built or anything written.
    """
    work_dir = Path(work_dir)
    launched = under_torchrun()
    if launched:  # the process group first: a start that one process refuses then stops every process at once
        device, rank, world = setup_distributed(_given_device(config))
        cfg = agree_to_start(partial(_resolve_command, config, source, resume, overwrite, max_iters), main=True)
    else:
        cfg = _resolve_command(config, source, resume, overwrite, max_iters)
        _check_work_dir(work_dir, resume, overwrite)  # first of all, before the device
        device, rank, world = setup_distributed(cfg["compute"]["device"])
    main = rank == 0
    # processes given other settings would train models that drift apart: refused before anything is built
    check_same_settings(_shared_settings(cfg, device, work_dir, resume, overwrite, max_iters), source,
                        ignore=PER_PROCESS_SETTINGS)
    claim = _Claim(work_dir, resume or overwrite) if main else None
    try:
        # the work dir is the main process's (it writes the run's files): checked and held there
        agree_to_start(partial(_hold_work_dir, claim, resume, overwrite, check=launched), main)
        return _run(cfg, work_dir, device, rank, world, resume, progress, max_iters, fresh=overwrite, claim=claim,
                    given=_given_student_keys(config), source=source)
    finally:
        if claim is not None:
            claim.release()


def _resolve_command(config: dict, source: str, resume: bool, overwrite: bool, max_iters: int | None) -> dict:
    """The resolved config (:func:`pretrain.config.resolve`), once the command's options are checked."""
    if resume and overwrite:
        raise ValueError("resume continues the run in the work dir, overwrite starts afresh: give one of them")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters={max_iters}: expected at least 1")
    return resolve(config, source)


def _given_device(config: Any) -> str | None:
    """``compute.device`` as the user's config gives it (checked by :func:`resolve` just after)."""
    compute = config.get("compute") if isinstance(config, dict) else None
    device = compute.get("device") if isinstance(compute, dict) else None
    return device if isinstance(device, str) else None


#: Settings that each process of a distributed run may give its own value: DataLoader workers (a sample's
#: crops and masks are seeded by its place in the data stream, not by the worker that makes them).
#: ``compute.device`` is compared by its kind only (cuda:0 on one process, cuda:1 on another).
PER_PROCESS_SETTINGS = ("train.num_workers",)


def _shared_settings(cfg: dict, device: torch.device, work_dir: Path, resume: bool, overwrite: bool,
                     max_iters: int | None) -> dict[str, Any]:
    """What every process of a run must be given alike: the resolved config (after --cfg-options, --teacher),
    the work dir (only process 0 writes there; the others look there for the checkpoint to resume) and the
    command's options that change what is trained."""
    shared: dict[str, Any] = {section: dict(values) for section, values in cfg.items()}
    shared["compute"]["device"] = device.type
    return {**shared, "--work-dir": str(work_dir), "--resume": resume, "--overwrite": overwrite,
            "--max-iters": max_iters}


def _hold_work_dir(claim: "_Claim", resume: bool, overwrite: bool, check: bool) -> None:
    """The main process's start checks of the work dir (``check``: under a process group, where they were
    not made before the device) and its hold on an existing folder (two resumes of one run never mix)."""
    if check:
        _check_work_dir(claim.work_dir, resume, overwrite)
    if claim.work_dir.is_dir():
        claim.take()


def _given_student_keys(config: dict | None) -> frozenset[str]:
    """The student settings the user's config itself gives (a value, not None), be it the default's value
    or not: with ``student.pretrained_weights`` such a setting must agree with the weights."""
    student = (config or {}).get("student")
    return frozenset(k for k, v in student.items() if v is not None) if isinstance(student, dict) else frozenset()


#: Written into a pretraining work dir before anything else: the folder is a run's (see :func:`is_run_dir`).
RUN_MARKER = ".dinov2-dense-pretrain"
#: What a run writes at the top of its work dir (besides ``checkpoint_<iteration>.pth``).
RUN_FILES = ("config.json", "backbone.json", "training_metrics.jsonl", "training_curves.png",
             "teacher_fingerprints.json")
_EXPORT_FILE = re.compile(r"^(backbone|student\d+)\.(pth|safetensors|json)$")  # export/: pretrain.export's files
_MONITOR_FILE = re.compile(r"^(monitor\.jsonl|pca_\d+\.png)$")  # monitor/: pretrain.monitor's files


def is_run_dir(work_dir: str | os.PathLike) -> bool:
    """Whether ``work_dir`` is a pretraining run's folder: it holds :data:`RUN_MARKER`, or (a run of an
    earlier version, unmarked) checkpoints, or nothing but a run's entries among which a run's
    ``config.json`` (a run stopped early). A lone ``backbone.json`` (an export's, copied) or a
    ``config.json`` of another tool is no run's: a run would write over it."""
    work_dir = Path(work_dir)
    if (work_dir / RUN_MARKER).is_file() or checkpoint_files(work_dir):
        return True
    entries = [p.name for p in work_dir.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(e in _RUN_ENTRIES for e in entries) and _is_run_config(work_dir / "config.json")


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is the ``config.json`` of a pretraining run (its resolved sections)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("student", "train", "optim"))


#: The top-level entries a run writes (besides its checkpoints).
_RUN_ENTRIES = frozenset(RUN_FILES) | {"export", "monitor"}


def _check_work_dir(work_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is built or written, a work dir that is a file, that is not a run's folder
    but holds entries a run would write over (an export copied there), or that holds another run's
    checkpoints (without ``resume`` or ``overwrite``). Other files of the user's (a config kept in its
    run's folder) stay beside the run's."""
    if work_dir.exists() and not work_dir.is_dir():
        raise FileExistsError(f"work dir {work_dir} is a file; give a folder (checkpoints, logs and the export go "
                              "into it)")
    from dinov2_dense.fileio import check_writable_dir

    check_writable_dir(work_dir, "work dir")  # (no permission, a read-only or virtual file system such as /proc)
    if not work_dir.is_dir():
        return
    clashes = sorted(p.name for p in work_dir.iterdir() if p.name in _RUN_ENTRIES)
    if clashes and not is_run_dir(work_dir):
        raise FileExistsError(f"work dir {work_dir} is not a pretraining run's folder, but holds "
                              f"{', '.join(clashes)}, which a run would write over: give another --work-dir "
                              "(a new or empty folder)")
    old = checkpoint_files(work_dir)
    if old and not (resume or overwrite):
        raise FileExistsError(f"work dir {work_dir} holds the checkpoints of another run ({old[0].name}, ...): resume "
                              "it (--resume), start afresh (--overwrite: they are deleted) or choose another work dir")


def _check_outside_data(work_dir: Path, spec: Any) -> None:
    """Refuse a work dir in a folder that the training data set reads (recursively): a resumed run
    would train on its own figures, and an overwrite would change the data."""
    from dinov2_dense.fileio import is_inside

    from .data.datasets import dataset_folders

    for folder in dataset_folders(spec):
        if is_inside(work_dir, folder):
            raise ValueError(f"work dir {work_dir} is inside the training data's folder {folder} "
                             "(train.dataset): the run's own files would become training images; give a "
                             "--work-dir outside it")


class _Claim:
    """The main process's hold on the work dir: its lock, taken at the start where the folder exists,
    else just before the first write (:meth:`ready`), when the folder is created; it is marked as a
    run's folder only then, so that a refused start leaves the folder as it found it."""

    def __init__(self, work_dir: Path, may_hold_checkpoints: bool):
        self.work_dir, self.may_hold_checkpoints = work_dir, may_hold_checkpoints
        self.lock: DirLock | None = None

    def take(self) -> None:
        if self.lock is not None:
            return
        created = not self.work_dir.exists()
        self.lock = DirLock(self.work_dir).acquire()  # creates the folder
        if not created and not self.may_hold_checkpoints and checkpoint_files(self.work_dir):
            # written meanwhile by another run (that has finished: it no longer holds the lock)
            old = checkpoint_files(self.work_dir)[0].name
            raise FileExistsError(f"work dir {self.work_dir} holds the checkpoints of another run ({old}, ...), "
                                  "written while this one started: choose another work dir")

    def ready(self) -> None:
        """Hold and mark the work dir: the run writes into it next. The temporary files of a run killed while
        it wrote (kill -9: a checkpoint's, as large as one) go now: under the lock, nobody writes them."""
        from dinov2_dense.fileio import discard_stale_temporaries_in

        self.take()
        (self.work_dir / RUN_MARKER).touch()
        for folder in (self.work_dir, self.work_dir / "export"):
            discard_stale_temporaries_in(folder, idle_s=0.0)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def _clear_run(work_dir: Path) -> None:
    """Delete what a run wrote in ``work_dir`` (``overwrite``): checkpoints, the export, the logs, the
    monitor's records and figures; anything else in the folder, in ``export/`` and ``monitor/`` too,
    is the user's and stays."""
    for path in checkpoint_files(work_dir):
        path.unlink(missing_ok=True)
    for name, ours in (("export", _EXPORT_FILE), ("monitor", _MONITOR_FILE)):
        folder = work_dir / name
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                if ours.match(path.name) and path.is_file():
                    path.unlink()
            if not any(folder.iterdir()):
                folder.rmdir()
    for name in RUN_FILES:
        (work_dir / name).unlink(missing_ok=True)


def _load_any(weights: str) -> nn.Module:
    """A backbone from a zoo name (official weights) or a file (an export, a checkpoint, ...)."""
    from dinov2_dense.hub import BACKBONES, load_backbone

    from .export import load_exported

    return load_backbone(weights) if isinstance(weights, str) and weights in BACKBONES else load_exported(weights)


#: How every refused ``distill.teacher_head`` ends: the way to a fresh head. Setting it to None, not leaving it
#: out: a config (or its ``_base_``) may set one, as distill_tiny_cpu.py does. The command line replaces this
#: with its own options, saying where the value came from.
FRESH_HEAD_HINT = "distill.teacher_head=None trains a fresh random head instead"


def _build(cfg: dict, device: torch.device, given: frozenset[str] = frozenset(), source: str = "config",
           resuming: bool = False, arch: dict | None = None) -> nn.Module:
    """The model of ``cfg``. ``resuming``: a checkpoint gives the weights next, so a distillation's
    ``distill.teacher_head`` (a new run's starting point) is neither resolved nor read: the frozen head is
    built at random (the same draws as a loaded one) and the checkpoint's replaces it; and ``arch`` (the
    resumed run's ``backbone.json``) builds the backbones that ``student.pretrained_weights`` would
    otherwise be read again for, only to settle their sizes (a file that may be gone by then)."""
    distill = cfg["distill"]
    if distill["teacher"]:
        from .config import resolve_student
        from .distill import DistillArch

        teacher = _load_any(distill["teacher"])
        head = None
        if distill["teacher_head"] and not resuming:
            source = Path(distill["teacher_head"])
            if source.is_dir():  # a pretraining run's work dir: its newest checkpoint
                found = checkpoint_files(source)
                if not found:
                    raise FileNotFoundError(f"distill.teacher_head={source}: a folder without checkpoint_*.pth files; "
                                            f"{FRESH_HEAD_HINT}")
                source = found[0]
                # config.json (and the checkpoints) record the file the folder gave, which the folder's newest
                # checkpoint may no longer be once that run goes on
                distill["teacher_head"] = str(source)
            if not source.is_file():
                raise FileNotFoundError(f"distill.teacher_head={source}: no such file; {FRESH_HEAD_HINT}")
            from dinov2_dense.checkpoints import first_sentence

            try:
                state = torch.load(source, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - not a torch file, damaged, or holding code
                raise ValueError(f"distill.teacher_head={source}: not a readable pretraining checkpoint "
                                 f"({type(exc).__name__}: {first_sentence(str(exc))}); {FRESH_HEAD_HINT}") from None
            state = state.get("model", state) if isinstance(state, dict) else {}
            head = {k[len("teacher.dino_head."):]: v for k, v in state.items() if k.startswith("teacher.dino_head.")}
            if not head:
                raise ValueError(f"distill.teacher_head={distill['teacher_head']}: no teacher.dino_head.* tensors in "
                                 f"it; {FRESH_HEAD_HINT}")
            _check_head_teacher(state, teacher, source, distill["teacher"])
        overrides = list(distill["students"])
        students = [resolve_student(cfg["student"], s) for s in overrides] or [cfg["student"]]
        starts = []
        for i, section in enumerate(students):  # a student with pretrained_weights starts from them
            start = _load_any(section["pretrained_weights"]) if section["pretrained_weights"] else None
            if start is not None:  # the weights settle the student's section, as in continued pretraining
                own = {k for k, v in overrides[i].items() if v is not None} if overrides else set()
                _check_loaded_arch(section, start, given | own)
            starts.append(start)
        if overrides:  # config.json records each student as trained
            distill["students"] = [{**o, **{k: v for k, v in sec.items() if v != cfg["student"].get(k)}}
                                   for o, sec in zip(overrides, students)]
        return DistillArch(cfg, teacher, students, head, starts).to(device)
    student = teacher = None
    weights = cfg["student"]["pretrained_weights"]
    if weights and resuming and arch is not None:  # the checkpoint gives the weights: the run's architecture
        from dinov2_dense.models import DinoVisionTransformer

        student, teacher = DinoVisionTransformer(**arch), DinoVisionTransformer(**arch)
    elif weights:
        student, teacher = _load_any(weights), _load_any(weights)
    if weights:
        _check_loaded_arch(cfg["student"], student, given)
        _check_crops(cfg, source)
    model = SSLMetaArch(cfg, student, teacher)
    if weights:
        _set_drop_path(model.student.backbone, cfg["student"])
    return model.to(device)


def _check_head_teacher(state: dict, teacher: nn.Module, source: Path, teacher_name: str) -> None:
    """A distillation teacher head must be the one trained with the teacher backbone: the checkpoint's
    ``teacher.backbone.*`` must equal the teacher's weights, tensor for tensor (a head of another run,
    of an earlier iteration, or a distillation checkpoint's head of its own frozen teacher would give
    targets unrelated to the teacher's features, and the students would learn them silently)."""
    from dinov2_dense.checkpoints import distilled_students

    prefix = "teacher.backbone."
    saved = {k[len(prefix):]: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefix)}
    own = {k: v.detach().cpu() for k, v in teacher.state_dict().items()}
    differing = [k for k, v in own.items() if k in saved and not (saved[k].shape == v.shape and
                                                                   torch.equal(saved[k].to(v.dtype), v))]
    if saved.keys() == own.keys() and not differing:
        return
    where = f"distill.teacher_head={source}"
    if not saved:
        raise ValueError(f"{where}: it holds no teacher.backbone.* tensors, so nothing shows that its head was trained "
                         f"with the teacher distill.teacher={teacher_name}; give the pretraining checkpoint (or run "
                         f"folder) of that teacher; {FRESH_HEAD_HINT}")
    students = distilled_students(state)
    why = (f"it is a distillation checkpoint: its teacher.dino_head.* belongs to its own frozen teacher "
           f"(teacher.backbone.*), not to the students it exports ({', '.join(f'student{i}' for i in students)}); "
           if students else "")
    differ = (f"{len(differing)} of its {len(own)} tensors differ" if saved.keys() == own.keys() else
              "another architecture: other tensor names")
    raise ValueError(f"{where}: {why}its teacher.backbone.* is not the teacher distill.teacher={teacher_name} "
                     f"({differ}), so its DINO head was trained with another backbone; give the checkpoint (or run "
                     f"folder) that trained this teacher; {FRESH_HEAD_HINT}")


def _check_crops(cfg: dict, source: str) -> None:
    """The crop sizes against the patch size that the loaded weights settled (the config was checked
    against the patch size it gave, or the default): refused before anything is written."""
    from .config import ConfigError

    patch = cfg["student"]["patch_size"]
    for key in ("global_crops_size", "local_crops_size"):
        size = cfg["crops"][key]
        if size < patch or size % patch:
            raise ConfigError(f"{source}: crops.{key} = {size!r}: a multiple of the patch size {patch} (that of "
                              f"student.pretrained_weights={cfg['student']['pretrained_weights']})")


def _check_loaded_arch(section: dict, backbone: nn.Module, given_keys: frozenset[str] = frozenset()) -> None:
    """Settle the student section on its ``pretrained_weights``, which decide the model: a setting the
    config leaves at its default takes the weights' value (so config.json records the model trained:
    the sizes, a released ``arch`` or "custom", patch size, registers, FFN kind, biases); one it sets
    to something else is refused, naming the value the weights need. ``given_keys``: the settings the
    user's config names itself, which are held to the weights even where they equal the default (an
    explicit ``patch_size=14`` is not overridden by weights of patch 16)."""
    from .config import DEFAULTS
    from .meta_arch import ARCHS

    arch = backbone.arch_kwargs()
    loaded = dict(embed_dim=int(backbone.embed_dim), depth=len(backbone.blocks), num_heads=int(backbone.num_heads),
                  patch_size=arch["patch_size"], num_register_tokens=arch["num_register_tokens"],
                  ffn_layer=arch["ffn_layer"], **{k: arch.get(k, True) for k in ("qkv_bias", "proj_bias", "ffn_bias")})
    default = DEFAULTS["student"]
    given = {k: section.get(k) for k in loaded  # what the config itself says
             if section.get(k) != default.get(k) or (k in given_keys and section.get(k) is not None)}
    if given.get("ffn_layer") == "swiglu":  # the same layer as swiglufused
        given["ffn_layer"] = "swiglufused"
    named = section["arch"] if section["arch"] != default["arch"] or "arch" in given_keys else None
    if named in ARCHS:
        given.update({k: v for k, v in zip(("embed_dim", "depth", "num_heads"), ARCHS[named])})
    source = f"student.pretrained_weights={section['pretrained_weights']}"
    sizes = ("embed_dim", "depth", "num_heads")
    released = [name for name, dims in ARCHS.items() if dims == tuple(loaded[k] for k in sizes)]
    for key, value in loaded.items():
        if key in given and given[key] != value:
            if named in ARCHS and key in sizes:  # the arch's sizes: the fix is another arch, not a size
                fix = (f"student.arch={released[0]}" if released else
                       "student.arch=custom with " + " ".join(f"student.{k}={loaded[k]}" for k in sizes))
                raise ValueError(f"student.arch = {named!r} has {key} {given[key]!r}, but {source} has {key} "
                                 f"{value!r}: the weights decide the model; set {fix}, or leave student.arch out")
            raise ValueError(f"student.{key} = {section.get(key)!r}, but {source} has {key} {value!r}: the weights "
                             f"decide the model; set student.{key}={value!r} or leave it out")
    section.update(loaded)
    section["arch"] = released[0] if released else "custom"
    if released:
        section.update(embed_dim=None, depth=None, num_heads=None)


def _set_drop_path(backbone: nn.Module, student: dict) -> None:
    """Give a loaded student backbone the config's drop path (loaded backbones are built without)."""
    import numpy as np

    depth = len(backbone.blocks)
    rate = student["drop_path_rate"]
    rates = [rate] * depth if student["drop_path_uniform"] else np.linspace(0, rate, depth).tolist()
    from dinov2_dense.models.layers import DropPath

    for block, r in zip(backbone.blocks, rates):
        block.drop_path = DropPath(float(r)) if r > 0 else nn.Identity()


def _run(cfg, work_dir, device, rank, world, resume, progress, max_iters, fresh=False, claim=None,
         given=frozenset(), source="config"):
    from tqdm.auto import tqdm

    main = rank == 0
    state, path = (None, None)
    if resume:  # every process reads the checkpoint itself: one that cannot, or finds another, stops them all
        state, path = agree_to_start(partial(_resume_state, work_dir, main), True)
        check_same_checkpoint(path.name if path else None, int(state["iteration"]) if state else 0, work_dir)
    torch.manual_seed(cfg["train"]["seed"])  # the same initial student and teacher in every process
    arch = None  # a resume builds a continued run's backbones from its backbone.json, not its starting weights
    if state is not None and (work_dir / "backbone.json").is_file():
        arch = json.loads((work_dir / "backbone.json").read_text())
    model = _build(cfg, device, given, source, resuming=state is not None, arch=arch)  # nor a teacher head
    train, optim_cfg = cfg["train"], cfg["optim"]
    total_batch = train["batch_size_per_gpu"] * world
    cfg["optim"]["lr"] = lr = scaled_lr(optim_cfg["base_lr"], total_batch, optim_cfg["scaling_rule"])
    epoch_length = train["OFFICIAL_EPOCH_LENGTH"]
    total_iters = int(optim_cfg["epochs"] * epoch_length)
    schedules = build_schedules(optim_cfg, cfg["teacher"], epoch_length, lr)
    start = 0
    history: list[dict] = []  # the run's resumes with other settings (config.json's _resumes)
    if state is not None:
        start = int(state["iteration"])
        from dinov2_dense.checkpoints import key_mismatches

        problems = key_mismatches(model.state_dict(), state["model"])
        if problems:
            raise ValueError(f"{path}: the checkpoint does not fit this config's model ({'; '.join(problems)}); "
                             f"resume with the config it was written with ({work_dir / 'config.json'}), or start "
                             "afresh with --overwrite")
        if cfg["distill"]["teacher"]:
            _check_same_teacher(model, state, cfg, path)
        _load_state(model, state["model"])
        saved = state.get("config")
        notes = _keep_starting_points(saved, cfg, path)  # the run's, which its checkpoint goes on from
        before = state.get("processes")  # None: a checkpoint of an older version, which did not record them
        changed = _schedule_changes(saved, cfg, before, world)
        if changed and main:
            scales = " (optim.lr scales with the batch of all processes)" if any(
                c.startswith("optim.lr ") for c in changed) else ""
            processes = (" and as many processes" if before is None else "" if before == world else
                         f" on {before} process{'es' if before != 1 else ''}")
            print(f"warning: --resume: this command's schedule settings differ from those {path} was written with: "
                  f"{', '.join(changed)}; the run continues on this command's schedules{scales}. To continue it as "
                  f"it was, give its settings again (its checkpoints hold them under 'config'){processes}",
                  file=sys.stderr)
        settings = _setting_changes(saved, cfg)
        history = list(saved.get(RESUMES) or []) if isinstance(saved, dict) else []
        if settings:  # config.json keeps the values before, and the iteration the command's apply from
            history.append({"iteration": start, "checkpoint": path.name, "changed": settings})
        others = [f"{key} {old!r} -> {new!r}" for key, (old, new) in settings.items()
                  if not _is_schedule_key(key) and not _is_free(key)]
        if others and main:
            print(f"warning: --resume: this command's settings differ from those {path} was written with: "
                  f"{', '.join(others)}; the run continues with this command's from iteration {start} on "
                  f"(config.json records the values before under '{RESUMES}'). To continue it as it was, give its "
                  "settings again (its checkpoints hold them under 'config')", file=sys.stderr)
        if main:
            for note in notes:
                print(note, file=sys.stderr)
    _wrap(model, cfg["compute"]["distributed"], device, world)
    sharded = world > 1 and cfg["compute"]["distributed"] == "fsdp"
    model.train()
    optimizer = torch.optim.AdamW(model.get_params_groups(), betas=(optim_cfg["adamw_beta1"], optim_cfg["adamw_beta2"]))
    autocast, scaler = _autocast(cfg["compute"]["precision"], device)
    if state is not None:
        _load_optimizer(model, optimizer, state, sharded, path)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
    dataset, loader = _loader(cfg, start, rank, world)  # a bad data set fails here, before anything is written
    _check_outside_data(work_dir, cfg["train"]["dataset"])

    def start_writing():  # the main process's last checks and first writes
        monitor = None
        if cfg["monitor"]["period"]:  # its images are checked here too
            from .monitor import DenseMonitor

            monitor = DenseMonitor(cfg["monitor"], work_dir / "monitor", device,
                                   watched="student0 (EMA)" if cfg["distill"]["teacher"] else "teacher")
        if claim is not None:
            claim.ready()  # a new work dir is made, and marked, only now that the start is checked
        if fresh:  # the model is built and the config checked: the run replaced goes now, before any write
            _clear_run(work_dir)
        _trim_logs(work_dir, start)
        write_json(work_dir / "config.json", _record(cfg, history))
        if not cfg["distill"]["teacher"]:  # the architecture of the checkpoints' teacher.backbone.*
            write_json(work_dir / "backbone.json", arch_dict(model.teacher.backbone))
        return monitor

    monitor = agree_to_start(start_writing, main)  # refused there: every process stops now
    stop = min(total_iters, max_iters) if max_iters is not None else total_iters
    metrics_path = work_dir / "training_metrics.jsonl"
    last: dict[str, Any] = {}
    bar = tqdm(total=stop, initial=start, desc="pretrain", unit="it", disable=not (progress and main), dynamic_ncols=True)
    t0, seen = time.time(), 0
    window_t, window_seen = t0, 0  # images/s of the last log interval (the bar shows the run's mean)
    it = start
    watch = UniformTeacher(after=int(optim_cfg["warmup_epochs"] * epoch_length), window=UNIFORM_TEACHER_WINDOW)
    for data in loader:
        if it >= stop:
            break
        values = schedules.at(it)
        apply_optim_scheduler(optimizer, values["lr"], values["wd"], values["last_layer_lr"])
        backbone_lr = _freeze_backbone(model, optimizer, it, optim_cfg, values["lr"])
        optimizer.zero_grad(set_to_none=True)
        # each process's torch draws (drop path) of this iteration: the same after a resume
        torch.manual_seed(stream_seed(train["seed"], _TORCH, rank, it))
        losses = model.forward_backward(data, teacher_temp=values["teacher_temp"], autocast=autocast, scaler=scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if optim_cfg["clip_grad"]:
            for part in model.student.values():
                nn.utils.clip_grad_norm_(part.parameters(), optim_cfg["clip_grad"])
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        model.update_teacher(values["mom"])
        if world > 1:
            for v in losses.values():
                torch.distributed.all_reduce(v)
        reduced = {k: v.item() / world for k, v in losses.items()}
        total = sum(v for k, v in reduced.items() if k.endswith("loss"))
        if not math.isfinite(total):
            raise TrainingDiverged(f"the loss is {total} at iteration {it + 1} ({reduced}); stopped before writing "
                                   "anything: lower optim.base_lr, or check the data")
        it += 1
        seen += total_batch
        if main and watch.update(it, reduced.get("dino_teacher_entropy"), values["teacher_temp"]):
            print(watch.message, file=sys.stderr)
        if main:
            rate = seen / max(time.time() - t0, 1e-9)
            bar.set_postfix(loss=f"{total:.3f}", img_s=f"{rate:.1f}", refresh=False)
            bar.update(1)
            if it % train["log_freq"] == 0 or it == stop:
                now = time.time()
                last = {"iteration": it, "total_loss": total, **reduced, **values,
                        "images_per_s": (seen - window_seen) / max(now - window_t, 1e-9),
                        "eta_s": (stop - it) / max(it - start, 1) * (now - t0)}
                window_t, window_seen = now, seen
                if scaler is not None:
                    last["grad_scale"] = float(scaler.get_scale())
                if backbone_lr is not None:
                    last["backbone_lr"] = backbone_lr
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(last) + "\n")
        if cfg["monitor"]["period"] and it % cfg["monitor"]["period"] == 0:
            watched = _plain(next(iter(_exported(model).values())), sharded, device)  # every process, under FSDP
            if monitor is not None:
                last.update(monitor.run(watched, it))
        if it % train["checkpoint_period"] == 0 or it == stop:
            _save(model, optimizer, scaler, cfg, work_dir, it, main, sharded, history, processes=world)
    bar.close()
    if it == start and start > 0:  # a resume that trained nothing (the run had ended): its last logged values
        logged = [r for r in _jsonl(metrics_path) if r.get("iteration") == start]
        last = logged[-1] if logged else {"iteration": start}
        checked = [r for r in _jsonl(work_dir / "monitor" / "monitor.jsonl") if r.get("iteration") == start]
        if checked:  # the monitor's scores at that iteration (probe_miou, knn_top1), as the original end gave them
            last = {**last, **{k: v for k, v in checked[-1].items() if k not in ("iteration", "seconds")}}
        if main and it >= total_iters:
            print(f"the run in {work_dir} had already ended (iteration {start} of {total_iters}): nothing to train; "
                  "its export is written again", file=sys.stderr)
        elif main:  # --max-iters at or below the checkpoint's iteration
            print(f"the run in {work_dir} is at iteration {start} of {total_iters}, already at or past --max-iters "
                  f"{max_iters}: nothing to train (raise --max-iters, or leave it out, to go on)", file=sys.stderr)
    result: dict[str, Any] = dict(last, iterations=it, skipped_images=list(getattr(dataset, "skipped", [])))
    if it > start:  # this command's rate over all it trained (the log's images_per_s is each interval's)
        result["run_images_per_s"] = seen / max(time.time() - t0, 1e-9)
    if world > 1:
        result["teacher_fingerprints"] = _check_in_sync(model, work_dir, main)
    elif main:  # an earlier stage's on several processes: its teachers are not this run's
        (work_dir / "teacher_fingerprints.json").unlink(missing_ok=True)
    if it >= total_iters:
        from .export import export_backbone

        plain = {name: _plain(b, sharded, torch.device("cpu")) for name, b in _exported(model).items()}  # collective
        _refuse_diverged_export(plain, it, work_dir)
        if main:
            exports = {name: {k: str(v) for k, v in export_backbone(b, work_dir / "export", name).items()}
                       for name, b in plain.items()}
            result["export"] = exports["backbone"] if list(exports) == ["backbone"] else exports
    if main and result["skipped_images"]:
        print(f"warning: {len(result['skipped_images'])} unreadable image(s) were skipped: "
              f"{', '.join(map(str, result['skipped_images'][:5]))}", file=sys.stderr)
    return result


def _refuse_diverged_export(backbones: dict[str, nn.Module], it: int, work_dir: Path) -> None:
    """Refuse to export a backbone whose last step diverged: each iteration's loss is checked, but the weights
    that the last step left were not (a reviewer's run at base_lr 1e30 exported weights up to 7.07e26, finite,
    whose features were NaN throughout). Checked: every weight finite, and the patch tokens of a fixed input."""
    from dinov2_dense.features import kept_modes

    for name, backbone in backbones.items():
        if backbone is None:  # (under FSDP, a process other than the main one: it holds no whole copy)
            continue
        weights = list(backbone.parameters())
        worst = max((float(w.detach().abs().max()) for w in weights if w.numel()), default=0.0)
        finite = math.isfinite(worst)
        if finite:
            p = backbone.patch_size
            x = torch.randn(1, 3, 2 * p, 2 * p, generator=torch.Generator().manual_seed(0)).to(weights[0])
            with torch.no_grad(), kept_modes(backbone):
                backbone.eval()
                finite = bool(torch.isfinite(backbone.forward_features(x)["x_norm_patchtokens"]).all())
        if not finite:
            raise TrainingDiverged(
                f"the weights of {name!r} after iteration {it} give NaN or infinite features (largest: {worst:.3g}): "
                f"the last step diverged, so it was not exported; the checkpoint of iteration {it} in {work_dir} "
                "holds it too. Lower optim.base_lr and train again (or from an earlier checkpoint)")


#: Iterations in a row of uniform DINO teacher targets, past the warm-up, before the run says so.
UNIFORM_TEACHER_WINDOW = 200


class UniformTeacher:
    """Watches the DINO teacher's targets for the silent failure of small-scale runs: targets at the
    uniform distribution (relative entropy >= ``threshold``). Then the head's outputs vary across
    images by less than the teacher temperature, the centred softmax flattens them, the student
    learns to output uniform distributions too and the DINO loss teaches the backbone nothing (iBOT
    and KoLeo still may), while that loss sits at log K and nothing else looks wrong. :meth:`update`
    is True once, when ``window`` iterations in a row past iteration ``after`` (the learning-rate
    warm-up) have been uniform."""

    def __init__(self, after: int, window: int = UNIFORM_TEACHER_WINDOW, threshold: float = 0.99):
        self.after, self.window, self.threshold = after, window, threshold
        self.streak, self.warned, self.message = 0, False, ""

    def update(self, iteration: int, entropy: float | None, teacher_temp: float) -> bool:
        if entropy is None or iteration <= self.after or entropy < self.threshold:
            self.streak = 0
            return False
        self.streak += 1
        if self.warned or self.streak < self.window:
            return False
        self.warned = True
        self.message = (
            f"warning: the DINO teacher's targets have been uniform for {self.streak} iterations (iteration "
            f"{iteration}: entropy {entropy:.3f} of log K), so the student learns nothing from them: the head's "
            f"outputs vary across images by less than the teacher temperature ({teacher_temp:g}). Lower "
            "teacher.warmup_teacher_temp and teacher.teacher_temp (0.01 brought a 96-wide, 4-block ViT out of it "
            "here), or train on more varied images")
        return True


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; nothing was written for that iteration."""


def _check_in_sync(model: nn.Module, work_dir: Path, main: bool) -> list[str]:
    """Every process's teacher must be the same: their SHA-256s (``teacher_fingerprints.json``). The
    settings were compared at the start, so teachers that differ here are a fault of the run, not of
    the user's command."""
    import hashlib

    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    digest = hashlib.sha256()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # on every process
    for name, tensor in sorted(full.items()):
        tensor = tensor.detach().cpu()
        if name.startswith("teacher."):
            digest.update(name.encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    prints: list[str] = [""] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(prints, digest.hexdigest())
    if main:
        write_json(work_dir / "teacher_fingerprints.json", prints)
    if len(set(prints)) != 1:  # their settings were compared at the start: the processes fell out of step
        raise RuntimeError(f"the processes' teachers differ after training (SHA-256 {', '.join(p[:12] for p in prints)}"
                           f" in processes 0 to {len(prints) - 1}; {work_dir / 'teacher_fingerprints.json'}), although "
                           "they started with the same settings and weights: their updates went out of step; the "
                           "checkpoints hold process 0's model")
    return prints


def _exported(model: nn.Module) -> dict[str, nn.Module]:
    """The backbones a run exports: the teacher of pretraining, the students' EMAs of distillation."""
    return model.export_backbones() if hasattr(model, "export_backbones") else {"backbone": model.teacher.backbone}


def _freeze_backbone(model: nn.Module, optimizer, it: int, optim_cfg: dict, lr: float) -> float | None:
    """Continued pretraining: no backbone update during the first ``freeze_backbone_iters`` (the new
    heads warm up on the given features), then the backbone at ``backbone_lr_mult`` times the rate.
    Returns the backbone's rate (before layer decay), or None where the recipe does not apply."""
    if "backbone" not in model.student or (not optim_cfg["freeze_backbone_iters"] and optim_cfg["backbone_lr_mult"] == 1):
        return None
    frozen = it < optim_cfg["freeze_backbone_iters"]
    backbone_params = {id(p) for p in model.student.backbone.parameters()}
    for group in optimizer.param_groups:
        if any(id(p) in backbone_params for p in group["params"]):
            group["lr"] = 0.0 if frozen else group["lr"] * optim_cfg["backbone_lr_mult"]
            if frozen:
                group["weight_decay"] = 0.0
    return 0.0 if frozen else lr * optim_cfg["backbone_lr_mult"]


def plot_training(work_dir: str | os.PathLike) -> Path | None:
    """``training_curves.png``: the loss terms, the schedules, images/s and (with the monitor) kNN and
    probe mIoU against the iteration, from ``training_metrics.jsonl`` and ``monitor/monitor.jsonl``."""
    from dinov2_dense.viz import save_curves

    work_dir = Path(work_dir)
    records = _jsonl(work_dir / "training_metrics.jsonl")
    if not records:
        return None
    series = {k: ([r["iteration"] for r in records if k in r], [r[k] for r in records if k in r])
              for k in records[-1] if k not in ("iteration", "eta_s") and isinstance(records[-1][k], (int, float))}
    monitor = _jsonl(work_dir / "monitor" / "monitor.jsonl")
    for key in ("knn_top1", "probe_miou"):
        rows = [r for r in monitor if isinstance(r.get(key), (int, float)) and "iteration" in r]
        if rows:
            series[f"monitor {key}"] = ([r["iteration"] for r in rows], [r[key] for r in rows])
    losses = [k for k in series if k.endswith("loss")]
    entropies = ["dino_teacher_entropy", "ibot_teacher_entropy", "cell_teacher_entropy"]
    groups = [losses, entropies, ["lr", "last_layer_lr", "backbone_lr"], ["wd"], ["mom"], ["teacher_temp"],
              ["images_per_s"], ["monitor knn_top1", "monitor probe_miou"]]
    return save_curves(series, work_dir / "training_curves.png", groups=groups, title=str(work_dir.name))


def _trim_logs(work_dir: Path, start: int) -> None:
    """Drop what an earlier run logged after iteration ``start`` (all of it on a fresh start; after
    ``kill -9``, the lines written after the checkpoint resumed from), so no iteration appears twice."""
    for path in (work_dir / "training_metrics.jsonl", work_dir / "monitor" / "monitor.jsonl"):
        if path.is_file():
            kept = [r for r in _jsonl(path) if isinstance(r.get("iteration"), int) and r["iteration"] <= start]
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    for figure in (work_dir / "monitor").glob("pca_*.png") if (work_dir / "monitor").is_dir() else ():
        number = figure.stem.removeprefix("pca_")
        if number.isdigit() and int(number) > start:
            figure.unlink(missing_ok=True)


def _jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines log; a line cut short by a crash is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _optimizer_state(model, optimizer, sharded: bool) -> dict:
    """The optimizer's state: torch's own layout, or under FSDP the full (gathered) state keyed by
    parameter names (a collective: every process takes part). Either resumes in either kind of run,
    on any number of processes (:func:`_load_optimizer`)."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return {"sharded_by_names": get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))}


def _load_optimizer(model, optimizer, state: dict, sharded: bool, path: Path | str = "the checkpoint") -> None:
    """Load the optimizer state of checkpoint ``path``; one that does not fit this run's parameter groups
    (another grouping, e.g. ``optim.layerwise_decay`` 1.0 after 0.9, or written by a version whose groups
    under DDP differed) is refused, naming the file. The checkpoint gives the state (AdamW's moments and steps); each
    group's settings (``lr_multiplier``, ``wd_multiplier``, ``is_last_layer``, betas, ...) stay this run's,
    built from its config: a resume with another ``optim.layerwise_decay`` or ``optim.patch_embed_lr_mult``
    trains with the new multipliers, as its warning says and its config.json records.

    A state written under FSDP (full tensors keyed by parameter names) loads into a run of one process or
    DDP, and one written so (torch's layout: integer ids in the groups' order) into an FSDP run, on any
    number of processes: the names are this run's parameters' in its groups' order."""
    settings = [{k: v for k, v in group.items() if k not in ("params", "param_names")}
                for group in optimizer.param_groups]
    _load_optimizer_state(model, optimizer, state, sharded, path)
    for group, own in zip(optimizer.param_groups, settings):  # load_state_dict brought back the checkpoint's
        group.update(own)


def _group_names(model: nn.Module, optimizer) -> list[list[str]]:
    """The names of each optimizer group's parameters, in its order, as torch's ``get_optimizer_state_dict``
    gives them (the model's parameter names, without the ``module.`` of a DDP wrapper; FSDP's
    ``fully_shard`` keeps the names)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    wrapped = [f"{name}.module." if name else "module." for name, m in model.named_modules() if isinstance(m, DDP)]

    def own(name: str) -> str:
        for prefix in wrapped:
            if name.startswith(prefix):
                return prefix[: -len("module.")] + name[len(prefix):]
        return name

    names = {id(p): own(n) for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in optimizer.param_groups]


def _check_same_groups(saved: dict, groups: list[list[str]]) -> None:
    """ValueError unless the groups of a state keyed by names hold the parameters ``groups`` names
    (torch's loading pairs parameters by name alone, whatever group they are in)."""
    got = [list(g["params"]) for g in saved["param_groups"]]
    if [len(g) for g in got] != [len(g) for g in groups] or any(set(a) != set(b) for a, b in zip(got, groups)):
        raise ValueError("other parameter groups")


def _by_ids(saved: dict, groups: list[list[str]]) -> dict:
    """A state keyed by names (FSDP's) in torch's layout for an optimizer whose groups hold ``groups``
    (names): ids in the groups' order. KeyError or ValueError where the groups do not match."""
    _check_same_groups(saved, groups)
    ids = {name: i for i, name in enumerate(n for group in groups for n in group)}
    param_groups, start = [], 0
    for group, names in zip(saved["param_groups"], groups):
        param_groups.append({**group, "params": list(range(start, start + len(names)))})
        start += len(names)
    return {"state": {ids[name]: value for name, value in saved["state"].items()}, "param_groups": param_groups}


def _by_names(saved: dict, groups: list[list[str]]) -> dict:
    """A state in torch's layout (ids) keyed by this run's parameter names (``groups``), as FSDP writes it:
    torch's ``load_state_dict`` pairs the ids with the parameters in the groups' order, and so does this."""
    names = dict(zip((i for g in saved["param_groups"] for i in g["params"]), (n for g in groups for n in g)))
    return {"state": {names[i]: value for i, value in saved["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in saved["param_groups"]]}


def _load_optimizer_state(model, optimizer, state: dict, sharded: bool, path: Path | str) -> None:
    saved = state["optimizer"]
    advice = ("resume with the config it was written with, or start afresh with --overwrite (an older version "
              "wrote other groups under DDP)")
    by_names = isinstance(saved, dict) and "sharded_by_names" in saved  # written under FSDP
    if by_names:
        saved = saved["sharded_by_names"]
    groups = saved.get("param_groups", []) if isinstance(saved, dict) else []
    have = [len(g["params"]) for g in optimizer.param_groups]
    got = [len(g.get("params", ())) for g in groups]
    if have != got:
        raise ValueError(f"{path}: its optimizer state has {len(got)} parameter groups of {got} parameters, this "
                         f"run's optimizer {len(have)} of {have}; {advice}")

    def refuse(exc: Exception) -> ValueError:
        return ValueError(f"{path}: its optimizer state does not fit this run "
                          f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); {advice}")

    names = _group_names(model, optimizer)
    if not sharded:
        try:
            optimizer.load_state_dict(_by_ids(saved, names) if by_names else saved)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise refuse(exc) from None
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    try:
        full = saved if by_names else _by_names(saved, names)
        _check_same_groups(full, names)
        set_optimizer_state_dict(model, optimizer, full, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=False, strict=False))
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise refuse(exc) from None
    # torch gives a parameter without saved state (never updated: a distilled student's mask_token) a first
    # step's zeros; a plain optimizer has none for it, and starts its count at its first update
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param, name in zip(params, (n for group in names for n in group)):
        if name not in full["state"]:
            optimizer.state.pop(param, None)


#: What sets a run's schedules (learning rate, weight decay, teacher momentum and temperature, length).
SCHEDULE_SECTIONS = ("optim", "teacher")
SCHEDULE_TRAIN_KEYS = ("batch_size_per_gpu", "OFFICIAL_EPOCH_LENGTH")


def _schedule_changes(saved: Any, cfg: dict, processes_before: int | None = None, processes: int = 1) -> list[str]:
    """``key old -> new`` for each schedule setting a resumed checkpoint's config (``saved``) has otherwise
    than this run's: the schedules are rebuilt from this run's, so a resume that does not repeat the first
    command's ``--cfg-options`` (or runs on another number of processes: ``optim.lr``) changes the run. The
    batch is named with the processes that the checkpoint was written by (``processes_before``; None: not
    recorded, by an older version) and this run's: see :func:`_batch_change`."""
    if not isinstance(saved, dict):
        return []
    pairs = [(f"{section}.{k}", (saved.get(section) or {}).get(k), v)
             for section in SCHEDULE_SECTIONS for k, v in (cfg.get(section) or {}).items()]
    pairs += [(f"train.{k}", (saved.get("train") or {}).get(k), cfg["train"].get(k)) for k in SCHEDULE_TRAIN_KEYS
              if k != "batch_size_per_gpu"]
    changes = [f"{key} {old!r} -> {new!r}" for key, old, new in pairs
               if old is not None and _jsonable(old) != _jsonable(new)]
    batch = _batch_change((saved.get("train") or {}).get("batch_size_per_gpu"), cfg["train"]["batch_size_per_gpu"],
                          processes_before, processes)
    return ([batch] if batch else []) + changes


def _batch_change(before: Any, after: int, processes_before: int | None, processes: int) -> str | None:
    """The change of a resumed run's batch, or None: ``train.batch_size_per_gpu`` and the number of processes,
    each where it changed, and the batch of all processes that they make (which ``optim.lr`` scales with), also
    where it stays: ``processes 2 -> 1, train.batch_size_per_gpu 4 -> 8 (the batch of all processes stays 8)``.
    Without ``processes_before`` (not recorded) the batch per process alone, where it changed."""
    if processes_before is None or not isinstance(before, int):
        changed = before is not None and _jsonable(before) != after
        return f"train.batch_size_per_gpu {before!r} -> {after!r}" if changed else None
    if (before, processes_before) == (after, processes):
        return None
    parts = [f"{name} {old} -> {new}" for name, old, new in (("processes", processes_before, processes),
                                                             ("train.batch_size_per_gpu", before, after)) if old != new]
    total_before, total = before * processes_before, after * processes
    total_said = f"stays {total}" if total == total_before else f"{total_before} -> {total}"
    return f"{', '.join(parts)} (the batch of all processes {total_said})"


#: Settings that a resume may change freely (nothing said; config.json's ``_resumes`` still records them): the
#: DataLoader workers (a sample's crops are seeded by its place in the stream), how often the run logs and
#: writes checkpoints and how many it keeps, the monitor (an observer on its own random state), the device and
#: the kind of sharding (ddp / fsdp: their checkpoints resume each other), and ``distill.teacher``, whose
#: weights a resume compares (:func:`_check_same_teacher`): another path to the same weights.
RESUME_FREE_SETTINGS = ("train.num_workers", "train.log_freq", "train.checkpoint_period", "train.max_to_keep",
                        "monitor.*", "compute.device", "compute.distributed", "distill.teacher")
#: The key of config.json (and of a checkpoint's ``config``) that lists the run's resumes with other settings:
#: ``{"iteration": N, "checkpoint": NAME, "changed": {KEY: [value before, value from N on]}}``, oldest first.
RESUMES = "_resumes"
_MISSING = object()


def _setting_changes(saved: Any, cfg: dict) -> dict[str, list]:
    """``{key: [old, new]}`` for each setting of this run's ``cfg`` that a resumed checkpoint's config
    (``saved``) has otherwise (JSON values; one the checkpoint does not name, of an older version, is left
    out)."""
    if not isinstance(saved, dict):
        return {}
    changes = {}
    for section, values in cfg.items():
        before = saved.get(section)
        if not isinstance(values, dict) or not isinstance(before, dict):
            continue
        for key, value in values.items():
            old = before.get(key, _MISSING)
            if old is not _MISSING and _jsonable(old) != _jsonable(value):
                changes[f"{section}.{key}"] = [_jsonable(old), _jsonable(value)]
    return changes


def _is_schedule_key(key: str) -> bool:
    section, name = key.split(".", 1)
    return section in SCHEDULE_SECTIONS or (section == "train" and name in SCHEDULE_TRAIN_KEYS)


def _is_free(key: str) -> bool:
    return key in RESUME_FREE_SETTINGS or f"{key.split('.', 1)[0]}.*" in RESUME_FREE_SETTINGS


def _record(cfg: dict, history: list[dict]) -> dict:
    """What config.json and each checkpoint's ``config`` hold: the settings in force, and the run's history
    of resumes with other settings (:data:`RESUMES`), where there is one."""
    return {**_jsonable(cfg), RESUMES: history} if history else _jsonable(cfg)


def _save(model, optimizer, scaler, cfg, work_dir: Path, it: int, main: bool, sharded: bool = False,
          history: list[dict] | None = None, processes: int = 1) -> None:
    """Write ``checkpoint_<it>.pth`` and keep it with the newest ``train.max_to_keep - 1`` older ones
    (newer numbers, unreadable ones a resume passed over, stay until the run writes over them). It records the
    number of ``processes`` that trained it: a resume on another number names the change (:func:`_batch_change`)."""
    from .loss.centering import TeacherCentering

    for module in model.modules():  # this step's centre update, pending until the next step: in the checkpoint
        if isinstance(module, TeacherCentering):
            module.apply_center_update()
    state = _state(model)  # a collective under FSDP: every process takes part
    optim_state = _optimizer_state(model, optimizer, sharded)
    if not main:
        return
    ckpt = {"model": state, "optimizer": optim_state, "iteration": it,
            "scaler": scaler.state_dict() if scaler is not None else None, "config": _record(cfg, history or []),
            "processes": processes}
    save_torch(ckpt, work_dir / f"checkpoint_{it:07d}.pth")
    older = [p for p in checkpoint_files(work_dir) if int(_CKPT.match(p.name).group(1)) < it]
    for old in older[cfg["train"]["max_to_keep"] - 1:]:
        old.unlink(missing_ok=True)
    try:  # a figure is a convenience: it never stops a run
        plot_training(work_dir)
    except Exception as exc:  # noqa: BLE001
        print(f"warning: training_curves.png not drawn: {exc}", file=sys.stderr)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)
