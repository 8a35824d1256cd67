"""Entry points shared by ``tools/train.py``, ``tools/test.py`` and ``dinov2-dense train|test``.

Everything a user can get wrong is checked before a model is built: the config's syntax and
values, the work dir (one run at a time; another run's checkpoints are not mixed with ours), the
checkpoint and the output folder.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
from numbers import Number
from pathlib import Path

from mmengine.config import Config, DictAction

from ..options import nonnegative_int, positive_int


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file and the key."""


class OptionsAction(DictAction):
    """mmengine's ``--cfg-options KEY=VALUE ...``, whose mistakes become argparse errors (one line,
    exit code 2) instead of tracebacks."""

    def __call__(self, parser, namespace, values, option_string=None):
        for item in values if isinstance(values, list) else [values]:
            if "=" not in item or not item.split("=", 1)[0]:
                pretraining = any(word in parser.prog.split() for word in ("pretrain", "distill", "pretrain.py"))
                example = "optim.epochs=10" if pretraining else "train_cfg.max_iters=100"
                parser.error(f"{option_string} {item!r}: expected KEY=VALUE, e.g. {example}")
        try:
            super().__call__(parser, namespace, values, option_string)
        except (ValueError, SyntaxError, TypeError) as exc:
            parser.error(f"{option_string}: {exc}")
        # mmengine splits at every comma outside [] and (), so a dict ("distill.students=[{'embed_dim': 32,
        # 'num_heads': 2}]") came apart into strings: a value holding a dict is read as a Python literal
        options = getattr(namespace, self.dest)
        for item in values if isinstance(values, list) else [values]:
            key, value = item.split("=", 1)
            if "{" in value and value.strip()[:1] in ("[", "(", "{"):
                try:
                    options[key] = ast.literal_eval(value.strip())
                except (ValueError, SyntaxError):
                    parser.error(f"{option_string} {item!r}: a value with a dict must be a Python literal, e.g. "
                                 "distill.students=[{'embed_dim':384,'num_heads':6}]")


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="an mmengine config file (configs/...)")
    parser.add_argument("--work-dir",
                        help="where logs and checkpoints go (default: work_dirs/<config folder>/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="resume from the newest complete checkpoint in the work dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a work dir that holds another run's checkpoints (they are deleted)")
    return _common_run_arguments(parser, "train_cfg.max_iters=100")


def _common_run_arguments(parser: argparse.ArgumentParser, example: str) -> argparse.ArgumentParser:
    parser.add_argument("--partial-load", action="store_true",
                        help="load the checkpoint's keys that fit and keep the rest as built (default: refuse)")
    parser.add_argument("--other-backbone", action="store_true",
                        help="load a head trained on another backbone than the config's (default: refuse)")
    parser.add_argument("--cfg-options", nargs="+", action=OptionsAction, default={},
                        help=f"override config entries, e.g. {example}")
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
    parser.add_argument("--num-workers", type=nonnegative_int, default=None,
                        help="DataLoader workers that read and decode the test images (default: the config's "
                             "test_dataloader.num_workers)")
    return _common_run_arguments(parser, "test_dataloader.dataset.root=data/ade")


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
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            keys = " ".join(cfg_options)
            raise ConfigError(f"--cfg-options {keys}: does not fit {path} ({_one_line(exc)[:160]})") from None
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


def _check_registered(cfg, key: str, registry, errors: list[str]) -> None:
    name = _get(cfg, key)
    if name is None:
        return
    if not isinstance(name, str):
        errors.append(f"{key} = {name!r}: expected a registered class name")
    elif registry.get(name) is None:
        errors.append(f"{key} = {name!r}: no such class (known: {', '.join(sorted(registry.module_dict)[:12])}, ...)")


def validate_config(cfg, source: str, train: bool) -> None:
    """Refuse config values that would run and mean nothing (``max_iters=0`` trains nothing) or fail
    late (a mistyped class name, a root that is not a path, a metric with other classes than the
    head), naming the key."""
    from dinov2_dense.engine import register_all
    from dinov2_dense.engine.registry import DATASETS, FUNCTIONS, METRICS, MODELS, PARAM_SCHEDULERS

    register_all()
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
        schedulers = cfg.get("param_scheduler") or []
        if isinstance(schedulers, dict):
            schedulers = [schedulers]
        if not isinstance(schedulers, (list, tuple)) or not all(hasattr(x, "get") for x in schedulers):
            errors.append(f"param_scheduler = {cfg.get('param_scheduler')!r}: expected a list of dict(type=...)")
            schedulers = []
        for i, sched in enumerate(schedulers):
            _check_registered(sched, "type", PARAM_SCHEDULERS, errors)
            begin, end = sched.get("begin", 0), sched.get("end")
            if end is not None and isinstance(end, int) and isinstance(begin, int) and end <= begin:
                errors.append(f"param_scheduler.{i}: end = {end} is not after begin = {begin}")
    splits = ("train", "val", "test") if train else ("test",)
    for split in splits:
        _check_int(cfg, f"{split}_dataloader.batch_size", 1, errors, source)
        _check_int(cfg, f"{split}_dataloader.num_workers", 0, errors, source)
        _check_registered(cfg, f"{split}_dataloader.dataset.type", DATASETS, errors)
        _check_registered(cfg, f"{split}_dataloader.collate_fn.type", FUNCTIONS, errors)
        root = _get(cfg, f"{split}_dataloader.dataset.root")
        if root is not None and not isinstance(root, (str, os.PathLike)):
            errors.append(f"{split}_dataloader.dataset.root = {root!r}: expected a folder path")
    _check_registered(cfg, "model.type", MODELS, errors)
    for key in ("val_evaluator.type", "test_evaluator.type"):
        _check_registered(cfg, key, METRICS, errors)
    classes = _get(cfg, "model.head.num_classes")
    for key in ("val_evaluator.num_classes", "test_evaluator.num_classes"):
        metric = _get(cfg, key)
        if classes is not None and metric is not None and metric != classes:
            errors.append(f"{key} = {metric} but model.head.num_classes = {classes}: give both the same number")
    if not train and cfg.get("test_dataloader") is None:
        errors.append("no test_dataloader: this config cannot test")
    if cfg.get("launcher", "none") == "pytorch" and not all(k in os.environ for k in ("RANK", "WORLD_SIZE")):
        errors.append("--launcher pytorch: start the command with torchrun (RANK and WORLD_SIZE are not set)")
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))


def _dataset_roots(cfg) -> list[str]:
    return [str(r) for split in ("train", "val", "test") if (r := _get(cfg, f"{split}_dataloader.dataset.root"))]


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _build_runner(cfg, source: str):
    from dinov2_dense.engine.runner import DenseRunner

    from dinov2_dense.hub import NO_WEIGHTS_HINT, WeightsNotFoundError

    try:
        return DenseRunner.from_cfg(cfg)
    except TypeError as exc:  # a class in the config given arguments it does not take
        raise ConfigError(f"{source}: {exc}") from None
    except ValueError as exc:  # a value a class refuses (mmengine prefixes the class)
        raise ConfigError(f"{source}: {_one_line(exc)}") from None
    except OSError as exc:
        if NO_WEIGHTS_HINT not in str(exc):
            raise
        # the backbone's weights are not here: the options of the hint are those of the commands without a config
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, (
            "To go on without a download: --cfg-options model.backbone_weights=None (random weights: the metrics "
            "then mean nothing), or a config of the tiny_synthetic_* kind, on the backbone embedded in the "
            "package"))) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _previous_run_files(work_dir: Path) -> list[Path]:
    from dinov2_dense.engine.runner import checkpoint_candidates

    files = [Path(p) for p in checkpoint_candidates(work_dir)]
    return files + ([work_dir / "last_checkpoint"] if (work_dir / "last_checkpoint").is_file() else [])


def run_train(args: argparse.Namespace) -> int:
    from dinov2_dense.fileio import DirLock

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    validate_config(cfg, args.config, train=True)
    cfg.resume = bool(args.resume)
    from dinov2_dense.fileio import _check_creatable

    _check_creatable(Path(cfg.work_dir), "--work-dir")
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
        if args.resume and not old:
            print(f"--resume: {work_dir} holds no checkpoint yet; starting a new run there")
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


def pin_test_batches(cfg, cuda: bool | None = None) -> None:
    """On a CUDA machine, test batches decoded by workers come in pinned memory (copies to the GPU
    overlap the next batch's decoding), unless the config says otherwise."""
    import torch

    loader = cfg.test_dataloader
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda and loader.get("num_workers", 0) > 0 and "pin_memory" not in loader:
        loader.pin_memory = True


def run_test(args: argparse.Namespace) -> int:
    from dinov2_dense.engine.runner import read_run_checkpoint
    from dinov2_dense.fileio import check_output_dir

    cfg = load_config(args.config, args.cfg_options, args.work_dir, args.launcher)
    if getattr(args, "num_workers", None) is not None:
        cfg.test_dataloader.num_workers = args.num_workers
        if args.num_workers == 0:
            cfg.test_dataloader.persistent_workers = False  # torch refuses persistent workers without workers
    validate_config(cfg, args.config, train=False)
    pin_test_batches(cfg)
    read_run_checkpoint(args.checkpoint)  # a missing or corrupt file stops us before the model is built
    cfg.load_from = args.checkpoint
    cfg.partial_load = bool(getattr(args, "partial_load", False))
    cfg.other_backbone = bool(getattr(args, "other_backbone", False))
    if args.out is not None:
        protect = [args.config, args.checkpoint] + [str(r) for r in _dataset_roots(cfg)]
        check_output_dir(args.out, overwrite=getattr(args, "overwrite", False), what="--out", protect=protect)
        hooks = list(cfg.get("custom_hooks") or [])
        hooks.append(dict(type="SavePredictionsHook", out_dir=args.out, overwrite=getattr(args, "overwrite", False),
                          protect=protect))
        cfg.custom_hooks = hooks
    runner = _build_runner(cfg, args.config)
    try:
        metrics = runner.test()
    finally:
        if args.out is not None and _rank() == 0:
            from dinov2_dense.engine.hooks import test_stage
            from dinov2_dense.fileio import discard_stage

            discard_stage(test_stage(args.out))  # left only when the test failed or was interrupted
    print({k: round(float(v), 4) if isinstance(v, (int, float)) else v for k, v in (metrics or {}).items()})
    return 0


# -- pretraining -------------------------------------------------------------------------------
def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", help="a pretraining config (configs/pretrain/...)")
    parser.add_argument("--work-dir", help="checkpoints, logs, monitor figures and the export "
                                           "(default: work_dirs/pretrain/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a work dir that holds another run's checkpoints (they are deleted)")
    parser.add_argument("--max-iters", type=positive_int, default=None,
                        help="stop after this many iterations (a try run)")
    parser.add_argument("--cfg-options", nargs="+", action=OptionsAction, default={},
                        help="override config entries, e.g. optim.epochs=10 train.batch_size_per_gpu=32")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (training_metrics.jsonl still gets every log line)")
    return parser


def run_pretrain(args: argparse.Namespace) -> int:
    """``dinov2-dense pretrain``: load the config and run ``pretrain.train.pretrain`` (which checks the work dir)."""
    from pretrain.train import pretrain

    cfg = load_config(args.config, args.cfg_options, args.work_dir)
    work_dir = Path(cfg.work_dir)
    sections = {k: v for k, v in cfg.to_dict().items() if k not in ("work_dir", "launcher")}
    if getattr(args, "distill_only", False) and not (sections.get("distill") or {}).get("teacher"):
        raise ValueError(f"{args.config}: distill.teacher is not set; give --teacher (a zoo name or a weights "
                         "file) or set it in the config")
    # pretrain() refuses a work dir holding another run unless --resume or --overwrite (it deletes that run
    # once the config is checked and the model built)
    try:
        result = pretrain(sections, work_dir, resume=args.resume, overwrite=args.overwrite, max_iters=args.max_iters,
                          source=args.config, progress=not args.no_progress)
    except OSError as exc:
        from dinov2_dense.hub import DEFAULT_EMBEDDED, NO_WEIGHTS_HINT, WeightsNotFoundError

        if NO_WEIGHTS_HINT not in str(exc):
            raise
        # a teacher's or a pretrained student's weights are not here: the options of the hint are this command's
        embedded = f"{DEFAULT_EMBEDDED} (a small backbone embedded in the package, pretrained by us on synthetic scenes)"
        hint = (f"To go on without a download: --teacher {embedded} for the teacher; for a student, "
                f"student.pretrained_weights={DEFAULT_EMBEDDED} in --cfg-options, or none (from scratch)"
                if getattr(args, "distill_only", False) else
                f"To go on without a download: --cfg-options student.pretrained_weights={embedded}, or leave "
                "student.pretrained_weights out to train from scratch")
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, hint)) from None
    if _rank() == 0:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                 if k in ("iteration", "total_loss", "images_per_s", "knn_top1", "probe_miou")}
        print(f"pretraining: {shown}")
        exports = result.get("export", {})
        if "safetensors" in exports:
            print(f"exported the teacher backbone: {exports['safetensors']} (architecture "
                  f"{exports['json']}); load it with load_backbone(None, weights=...)")
        for name, files in exports.items():  # a distillation run: one entry per student
            if isinstance(files, dict):
                print(f"exported {name}: {files['safetensors']} (architecture {files['json']}); load it with "
                      "load_backbone(None, weights=...)")
    return 0


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_pretrain_arguments(parser)
    parser.add_argument("--teacher", default=None,
                        help="the frozen teacher: a zoo name (official weights) or a weights file; sets "
                             "distill.teacher")
    parser.add_argument("--teacher-head", default=None,
                        help="a pretraining checkpoint (or its run folder: the newest) whose trained DINO head "
                             "gives the targets; sets distill.teacher_head (default: a fresh head)")
    return parser


def run_distill(args: argparse.Namespace) -> int:
    """``dinov2-dense distill``: ``pretrain`` with a frozen teacher (``distill.teacher`` required)."""
    options = dict(args.cfg_options or {})
    if args.teacher is not None:
        options["distill.teacher"] = args.teacher
    if args.teacher_head is not None:
        options["distill.teacher_head"] = args.teacher_head
    args.cfg_options, args.distill_only = options, True
    return run_pretrain(args)
