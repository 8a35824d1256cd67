"""Entry points shared by ``tools/train.py``, ``tools/test.py`` and ``dinov2-dense train|test``.

Everything a user can get wrong is checked before a model is built: the config's syntax and
values, the work dir (one run at a time; another run's checkpoints are not mixed with ours), the
checkpoint and the output folder.
"""

from __future__ import annotations

import argparse
import math
import os
from numbers import Number
from pathlib import Path

from mmengine.config import Config, DictAction


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file and the key."""


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="an mmengine config file (configs/...)")
    parser.add_argument("--work-dir",
                        help="where logs and checkpoints go (default: work_dirs/<config folder>/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the newest complete checkpoint in the work dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a work dir that holds another run's checkpoints (they are deleted)")
    parser.add_argument("--partial-load", action="store_true",
                        help="load_from / resume: load the keys that fit and keep the rest as built (default: refuse)")
    parser.add_argument("--other-backbone", action="store_true",
                        help="load_from / resume a head trained on another backbone than the config's")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. train_cfg.max_iters=100")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="'pytorch' under torchrun for DDP")
    return parser


def add_test_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="an mmengine config file (configs/...)")
    parser.add_argument("checkpoint", help="a checkpoint of ours or an official head file")
    parser.add_argument("--work-dir", help="where logs go (default: work_dirs/<config folder>/<config name>)")
    parser.add_argument("--out", help="folder for predicted masks / depth maps (named after the ground-truth "
                                      "files, as eval-depth reads them) and colour figures")
    parser.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out folder")
    parser.add_argument("--partial-load", action="store_true",
                        help="load the checkpoint's keys that fit and keep the rest as built (default: refuse)")
    parser.add_argument("--other-backbone", action="store_true",
                        help="evaluate a head trained on another backbone than the config's")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    return parser


def default_work_dir(config: str | os.PathLike) -> str:
    """``work_dirs/<config folder>/<config name>``: configs of the same name in segmentation/ and
    depth/ (``tiny_synthetic_linear.py``) get their own work dirs."""
    path = Path(config)
    return os.path.join("work_dirs", path.parent.name or ".", path.stem)


def load_config(path: str, cfg_options: dict | None = None, work_dir: str | None = None, launcher: str = "none"):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as exc:
        where = f"line {exc.lineno}: " if exc.lineno else ""
        raise ConfigError(f"{path}: {where}{exc.msg} (Python syntax of the config)") from None
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: a file it names does not exist ({exc.filename or exc})") from None
    except Exception as exc:  # noqa: BLE001 - the config is a user's Python file: any failure is theirs
        raise ConfigError(f"{path}: the config fails to load: {type(exc).__name__}: {exc}") from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = default_work_dir(path)
    cfg.launcher = launcher
    return cfg


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif hasattr(node, "get"):
            node = node.get(part)
        else:
            return None
        if node is None:
            return None
    return node


def _check_int(cfg, key: str, minimum: int, errors: list[str], source: str) -> None:
    value = _get(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        errors.append(f"{key} = {value!r}: expected an integer >= {minimum}")


def validate_config(cfg, source: str, train: bool) -> None:
    """Refuse config values that would run and mean nothing (``max_iters=0`` trains nothing)."""
    errors: list[str] = []
    if train:
        if cfg.get("train_cfg") is None or cfg.get("train_dataloader") is None:
            errors.append("no train_cfg / train_dataloader: this config cannot train")
        for key in ("train_cfg.max_iters", "train_cfg.max_epochs", "train_cfg.val_interval",
                    "default_hooks.checkpoint.interval", "default_hooks.logger.interval"):
            _check_int(cfg, key, 1, errors, source)
        lr = _get(cfg, "optim_wrapper.optimizer.lr")
        if lr is not None and (not isinstance(lr, Number) or not math.isfinite(lr) or lr <= 0):
            errors.append(f"optim_wrapper.optimizer.lr = {lr!r}: expected a positive number")
        for i, sched in enumerate(cfg.get("param_scheduler") or []):
            begin, end = sched.get("begin", 0), sched.get("end")
            if end is not None and isinstance(end, int) and isinstance(begin, int) and end <= begin:
                errors.append(f"param_scheduler.{i}: end = {end} is not after begin = {begin}")
    for split in ("train", "val", "test") if train else ("test",):
        _check_int(cfg, f"{split}_dataloader.batch_size", 1, errors, source)
        _check_int(cfg, f"{split}_dataloader.num_workers", 0, errors, source)
    if not train and cfg.get("test_dataloader") is None:
        errors.append("no test_dataloader: this config cannot test")
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _build_runner(cfg, source: str):
    from dinov2_dense.engine.runner import DenseRunner

    try:
        return DenseRunner.from_cfg(cfg)
    except TypeError as exc:  # a class in the config given arguments it does not take
        raise ConfigError(f"{source}: {exc}") from None


def _previous_run_files(work_dir: Path) -> list[Path]:
    from dinov2_dense.engine.runner import checkpoint_candidates

    files = [Path(p) for p in checkpoint_candidates(work_dir)]
    return files + ([work_dir / "last_checkpoint"] if (work_dir / "last_checkpoint").is_file() else [])


def run_train(args: argparse.Namespace) -> int:
    from dinov2_dense.fileio import DirLock

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    validate_config(cfg, args.config, train=True)
    cfg.resume = bool(args.resume)
    cfg.partial_load = bool(getattr(args, "partial_load", False))
    cfg.other_backbone = bool(getattr(args, "other_backbone", False))
    work_dir = Path(cfg.work_dir)
    if work_dir.exists() and not work_dir.is_dir():
        raise FileExistsError(f"--work-dir {work_dir} is a file, not a folder")
    if args.resume and getattr(args, "overwrite", False):
        raise ValueError("--resume continues the run in the work dir, --overwrite starts afresh: give one of them")
    if _rank() != 0:  # the main process checks and locks the work dir for all of them
        _build_runner(cfg, args.config).train()
        return 0
    with DirLock(work_dir) as lock:
        if lock.note:
            print(f"{work_dir}: {lock.note}")
        old = _previous_run_files(work_dir)
        if old and not args.resume:
            if not getattr(args, "overwrite", False):
                shown = ", ".join(p.name for p in old[:3]) + (", ..." if len(old) > 3 else "")
                raise FileExistsError(f"--work-dir {work_dir} holds the checkpoints of another run ({shown}): pass "
                                      "--resume to continue it, --overwrite to delete them and start afresh, or "
                                      "choose another --work-dir")
            for path in old:
                path.unlink(missing_ok=True)
        _build_runner(cfg, args.config).train()
    return 0


def run_test(args: argparse.Namespace) -> int:
    from dinov2_dense.engine.runner import read_run_checkpoint
    from dinov2_dense.fileio import check_output_dir

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    validate_config(cfg, args.config, train=False)
    read_run_checkpoint(args.checkpoint)  # a missing or corrupt file stops us before the model is built
    cfg.load_from = args.checkpoint
    cfg.partial_load = bool(getattr(args, "partial_load", False))
    cfg.other_backbone = bool(getattr(args, "other_backbone", False))
    if args.out:
        check_output_dir(args.out, overwrite=getattr(args, "overwrite", False))
        hooks = list(cfg.get("custom_hooks") or [])
        hooks.append(dict(type="SavePredictionsHook", out_dir=args.out, overwrite=getattr(args, "overwrite", False)))
        cfg.custom_hooks = hooks
    runner = _build_runner(cfg, args.config)
    metrics = runner.test()
    print({k: round(float(v), 4) if isinstance(v, (int, float)) else v for k, v in (metrics or {}).items()})
    return 0
