"""Entry points shared by ``tools/train.py``, ``tools/test.py`` and ``dinov2-dense train|test``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from mmengine.config import Config, DictAction


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="an mmengine config file (configs/...)")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: work_dirs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the newest complete checkpoint in the work dir")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config entries, e.g. train_cfg.max_iters=100")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="'pytorch' under torchrun for DDP")
    return parser


def add_test_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="an mmengine config file (configs/...)")
    parser.add_argument("checkpoint", help="a checkpoint of ours or an official head file")
    parser.add_argument("--work-dir", help="where logs and predictions go")
    parser.add_argument("--out", help="directory for predicted masks / depth maps and figures")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none")
    return parser


def load_config(path: str, cfg_options: dict | None = None, work_dir: str | None = None, launcher: str = "none"):
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", Path(path).stem)
    cfg.launcher = launcher
    return cfg


def run_train(args: argparse.Namespace) -> int:
    from dinov2_dense.engine.runner import DenseRunner

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    cfg.resume = bool(args.resume)
    runner = DenseRunner.from_cfg(cfg)
    runner.train()
    return 0


def run_test(args: argparse.Namespace) -> int:
    from dinov2_dense.engine.runner import DenseRunner

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"{args.checkpoint}: no such checkpoint")
    cfg.load_from = args.checkpoint
    if args.out:
        hooks = list(cfg.get("custom_hooks") or [])
        hooks.append(dict(type="SavePredictionsHook", out_dir=args.out))
        cfg.custom_hooks = hooks
    runner = DenseRunner.from_cfg(cfg)
    metrics = runner.test()
    print({k: round(float(v), 4) if isinstance(v, (int, float)) else v for k, v in (metrics or {}).items()})
    return 0
