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
import re
import sys
from collections.abc import Callable
from numbers import Number
from pathlib import Path
from typing import Any

from mmengine.config import Config, DictAction

from ..options import nonnegative_int, positive_int


class ConfigError(ValueError):
    """A config that cannot be used: the message names the file and the key."""


class OptionsAction(DictAction):
    """mmengine's ``--cfg-options KEY=VALUE ...``, whose mistakes become argparse errors (one line,
    exit code 2) instead of tracebacks. A plain string keeps its spaces (mmengine drops every space of
    a value: a path ``data/ade 2`` became ``data/ade2``), and a value in quotes is one string, commas and
    all (``root='/data/ade,v2'``: mmengine strips the quotes, then splits it at the comma into a list);
    lists, tuples and numbers read as mmengine's (``scales=[1,2]``, ``a=1,2``, also in quotes)."""

    @staticmethod
    def _parse_iterable(val: str):
        text = val.strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" and text[1:2] not in ("[", "("):
            return text[1:-1]  # quoted: a string as given
        text = text.strip("'\"")
        compact = text.replace(" ", "")
        if not compact.startswith(("(", "[")) and "," not in compact:
            value = DictAction._parse_int_float_bool(compact)
            return text if isinstance(value, str) else value  # a string as given, spaces and all
        return DictAction._parse_iterable(val)

    def __call__(self, parser, namespace, values, option_string=None):
        items = values if isinstance(values, list) else [values]
        for item in items:
            if "=" not in item or not item.split("=", 1)[0]:
                pretraining = any(word in parser.prog.split() for word in ("pretrain", "distill", "pretrain.py"))
                example = "optim.epochs=10" if pretraining else "train_cfg.max_iters=100"
                parser.error(f"{option_string} {item!r}: expected KEY=VALUE, e.g. {example}")
        options = dict(getattr(namespace, self.dest, None) or {})
        for item in items:
            key, value = item.split("=", 1)
            # mmengine splits at every comma outside [] and (), so a dict ("distill.students=[{'embed_dim': 32,
            # 'num_heads': 2}]") came apart into strings, and dict(...) recursed until Python stopped it: a value
            # holding a dict, as a literal or as the configs write it (dict(depth=3, embed_dim=48)), is read whole
            if value.strip()[:1] in ("[", "(", "{", "d") and ("{" in value or "dict(" in value.replace(" ", "")):
                try:
                    options[key] = _literal_with_dicts(value.strip())
                    continue
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    # (a string that only holds one, data/dict(x), is read as mmengine reads strings)
                    if value.strip()[:1] != "d" or value.replace(" ", "").startswith("dict("):
                        parser.error(f"{option_string} {item!r}: a value with a dict must be a Python literal, e.g. "
                                     f"{key}={{'name': 1}}, {key}=dict(name=1) or {key}=[dict(name=1)]")
            try:
                options[key] = self._parse_iterable(value)
            except (ValueError, SyntaxError, TypeError, AssertionError, RecursionError) as exc:
                why = "unbalanced brackets" if isinstance(exc, AssertionError) else _one_line(exc)[:120]
                parser.error(f"{option_string} {item!r}: cannot read the value ({why})")
        setattr(namespace, self.dest, options)


def _literal_with_dicts(text: str):
    """A Python literal in which ``dict(key=value, ...)`` may stand for ``{'key': value, ...}``, as the configs
    write dicts (no other call is taken: ValueError)."""

    class Dicts(ast.NodeTransformer):
        def visit_Call(self, node: ast.Call):
            self.generic_visit(node)
            names = [k.arg for k in node.keywords]
            if not (isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args
                    and None not in names and len(set(names)) == len(names)):  # (Python refuses a repeated key)
                raise ValueError("a call other than dict(key=value, ...) with each key once")
            return ast.Dict(keys=[ast.Constant(k.arg) for k in node.keywords], values=[k.value for k in node.keywords])

    tree = Dicts().visit(ast.parse(text, mode="eval"))
    return ast.literal_eval(ast.fix_missing_locations(tree))


#: the configs installed with the package (a link to the checkout's configs/ folder, copied into the wheel)
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config_path(path: str) -> str:
    """The config argument's type: ``path``, or, where that is no file and it names one of the configs installed
    with the package as the README and the messages write them (``configs/segmentation/...``, from a folder
    without them, as after ``pip install``), that copy, said in a note."""
    given = Path(path)
    if given.is_file() or given.is_absolute() or given.parts[:1] != ("configs",) or len(given.parts) < 2:
        return path
    packaged = PACKAGED_CONFIGS.joinpath(*given.parts[1:])
    if not packaged.is_file():
        return path
    # once, by process 0 (torchrun's RANK; Slurm's and Open MPI's, read before the launcher sets RANK)
    if all(os.environ.get(key, "0") == "0" for key in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")):
        print(f"note: {path} is not in this folder: the copy installed with dinov2-dense, {packaged}", file=sys.stderr)
    return str(packaged)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", type=config_path, help="an mmengine config file (configs/...)")
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
                        help="load a head trained on another backbone than the config's, or on other blocks of "
                             "it (model.layers, norm, class_token) (default: refuse)")
    parser.add_argument("--cfg-options", nargs="+", action=OptionsAction, default={},
                        help=f"override config entries, e.g. {example}")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="'pytorch' under torchrun for DDP")
    return parser


def add_test_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", type=config_path, help="an mmengine config file (configs/...)")
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


# Top-level names a run reads (DenseRunner.from_cfg) that a config may leave out and --cfg-options may set
RUNNER_KEYS = frozenset({
    "model", "work_dir", "train_dataloader", "val_dataloader", "test_dataloader", "train_cfg", "val_cfg", "test_cfg",
    "auto_scale_lr", "optim_wrapper", "param_scheduler", "val_evaluator", "test_evaluator", "default_hooks",
    "custom_hooks", "data_preprocessor", "load_from", "resume", "env_cfg", "log_processor", "log_level",
    "visualizer", "default_scope", "randomness", "experiment_name", "activation_checkpointing",
    "efficient_conv_bn_eval", "compile",
})


def _check_option_sections(cfg, cfg_options: dict, path: str, known: frozenset[str]) -> None:
    """A --cfg-options key whose first part is no section of the config (``trian_cfg.max_iters``) would
    add a section nothing reads, and the run would go on without the change: refuse it."""
    import difflib

    names = set(cfg.keys()) | set(known)
    for key in cfg_options:
        top = str(key).split(".", 1)[0]
        if top in names:
            continue
        close = difflib.get_close_matches(top, sorted(names), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}{key[len(top):]}?" if close else "check the spelling"
        raise ConfigError(f"--cfg-options {key}: {path} has no section {top!r} ({hint})")


def load_config(path: str, cfg_options: dict | None = None, work_dir: str | None = None, launcher: str = "none",
                known_sections: frozenset[str] | None = RUNNER_KEYS, notes: list[str] | None = None):
    """The config at ``path`` with ``cfg_options`` merged in. ``known_sections``: top-level names that
    --cfg-options may set besides the config's own (None: any name, as for pretraining configs,
    which check their sections themselves). A ``train_cfg.max_iters`` among the options moves the
    learning-rate schedule's ends that were the config's max_iters with it (unless the options set them
    too); ``notes`` receives a line saying so."""
    if not Path(path).is_file():
        installed = f" (those installed with dinov2-dense: {PACKAGED_CONFIGS})" if PACKAGED_CONFIGS.is_dir() else ""
        raise FileNotFoundError(f"{path}: no such config file{installed}")
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
        if known_sections is not None:
            _check_option_sections(cfg, cfg_options, path, known_sections)
        max_iters = _get(cfg, "train_cfg.max_iters")
        try:
            cfg.merge_from_dict(cfg_options)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(_merge_error(cfg, cfg_options, path, exc)) from None
        if "train_cfg.max_iters" in cfg_options:
            moved = _follow_max_iters(cfg, max_iters, cfg_options)
            if moved and notes is not None:
                notes.append(f"--cfg-options train_cfg.max_iters={_get(cfg, 'train_cfg.max_iters')}: the schedule "
                             f"follows it ({', '.join(moved)}; was {max_iters})")
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = default_work_dir(path)
    cfg.launcher = launcher
    return cfg


def _merge_error(cfg, cfg_options: dict, path: str, exc: BaseException) -> str:
    """The message of --cfg-options that mmengine could not merge: the keys that fail alone (not every key
    given), and where a key goes through a list by name (``train.dataset.root`` where ``train.dataset``
    is a list), the list and the ways to set it."""
    failing = []
    for key, value in cfg_options.items():
        try:
            cfg.copy().merge_from_dict({key: value})
        except (KeyError, IndexError, TypeError, ValueError):
            failing.append(key)
    failing = failing or list(cfg_options)
    for key in failing:
        parts = key.split(".")
        for i in range(1, len(parts)):
            node = _get(cfg, ".".join(parts[:i]))
            if isinstance(node, (list, tuple)) and not parts[i].isdigit():
                head, rest = ".".join(parts[:i]), ".".join(parts[i:])
                # an entry's key, where an entry has it (a data set list's synthetic entry has no root)
                entries = [n for n, e in enumerate(node) if hasattr(e, "get") and e.get(parts[i]) is not None]
                entry = f" or an entry's ({head}.{entries[0]}.{rest}=...)" if entries else ""
                return (f"--cfg-options {key}: {head} is a list in {path} ({len(node)} entries), so it has no key "
                        f"{parts[i]!r}: give the whole value ({head}=...){entry}")
    return f"--cfg-options {' '.join(failing)}: does not fit {path} ({_one_line(exc)[:160]})"


SCHEDULE_LENGTH_KEYS = ("end", "T_max", "total_steps")  # where an iteration-based scheduler states its length


def _follow_max_iters(cfg, before, cfg_options: dict) -> list[str]:
    """Set to the new ``train_cfg.max_iters`` each scheduler length that was the config's ``before``
    (a config writes ``end=max_iters``, fixed when the file is read; ``T_max``/``total_steps`` of a
    scheduler starting at ``begin`` are ``max_iters - begin``), unless the options set it, or it would
    end at or before the scheduler's ``begin``; the keys moved. Without this a shorter run never
    finished its decay (poly 600 cut at 100: lr still 83%)."""
    after = _get(cfg, "train_cfg.max_iters")
    if not isinstance(before, int) or not isinstance(after, int) or before == after:
        return []
    moved = []
    for prefix, scheduler in _scheduler_entries(cfg):
        begin = scheduler.get("begin", 0)
        if not isinstance(begin, int) or after <= begin:
            continue  # it would end before it starts: left as it is (schedule_cut_notes names it)
        for key in SCHEDULE_LENGTH_KEYS:
            offset = 0 if key == "end" else begin
            if scheduler.get(key) == before - offset and f"{prefix}{key}" not in cfg_options:
                scheduler[key] = after - offset
                moved.append(f"{prefix}{key}")
    return moved


def _scheduler_entries(cfg) -> list[tuple[str, object]]:
    """The config's iteration-based schedulers and the --cfg-options prefix of each (``param_scheduler.i.``,
    or ``param_scheduler.`` for a config that gives one scheduler as a dict)."""
    schedulers = cfg.get("param_scheduler")
    pairs = ([("param_scheduler.", schedulers)] if hasattr(schedulers, "get") else
             [(f"param_scheduler.{i}.", s) for i, s in enumerate(schedulers or [])])
    return [(prefix, s) for prefix, s in pairs if hasattr(s, "get") and s.get("by_epoch", True) is False]


def schedule_cut_notes(cfg) -> list[str]:
    """One line for each iteration-based scheduler that ends after ``train_cfg.max_iters`` (its ``end``, or
    ``begin + T_max`` / ``total_steps``): the run stops part-way through it (a warm-up not finished, a decay
    cut short)."""
    max_iters = _get(cfg, "train_cfg.max_iters")
    if not isinstance(max_iters, int):
        return []
    notes = []
    for prefix, scheduler in _scheduler_entries(cfg):
        begin = scheduler.get("begin", 0) if isinstance(scheduler.get("begin", 0), int) else 0
        for key in SCHEDULE_LENGTH_KEYS:
            value = scheduler.get(key)
            if isinstance(value, int) and (value if key == "end" else begin + value) > max_iters:
                notes.append(f"note: {prefix}{key} = {value} ({scheduler.get('type')}) ends after "
                             f"train_cfg.max_iters={max_iters}: the run stops part-way through it ({prefix}{key} "
                             "sets it)")
                break
    return notes


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


def _takes(obj) -> tuple[set[str], bool]:
    """The keyword arguments a class or function takes: ``(names, any_name)``. A class's ``**kwargs``
    are followed up its MRO (mmengine's mixins pass them on); ``any_name`` when they end nowhere known."""
    import inspect

    def named(sig, skip_first: bool) -> tuple[set[str], bool]:
        params = list(sig.parameters.values())[1 if skip_first else 0:]
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return ({p.name for p in params if p.kind in kinds},
                any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params))

    if not inspect.isclass(obj):
        try:
            return named(inspect.signature(obj), skip_first=False)
        except (TypeError, ValueError):
            return set(), True
    names: set[str] = set()
    for klass in obj.__mro__:
        if klass is object:
            break
        if "__init__" not in klass.__dict__:
            continue
        try:
            found, more = named(inspect.signature(klass.__dict__["__init__"]), skip_first=True)
        except (TypeError, ValueError):
            break
        names |= found
        if not more:
            return names, False
    return names, True


def _check_keys(section, key: str, what: str, names: set[str], any_name: bool, errors: list[str]) -> None:
    """Each key of the dict ``section`` (at ``key`` in the config) must be one of ``names``."""
    import difflib

    if any_name or not hasattr(section, "keys"):
        return
    for name in section.keys():
        if name in names or name == "_delete_":
            continue
        close = difflib.get_close_matches(str(name), sorted(names), n=1, cutoff=0.6)
        hint = f"did you mean {key}.{close[0]}?" if close else f"it takes: {', '.join(sorted(names))}"
        errors.append(f"{key}.{name}: {what} has no setting {name!r} ({hint})")


def _check_built(section, key: str, registry, default: str | None, exclude: set[str], extra: set[str],
                 errors: list[str]):
    """The keys of ``dict(type=..., ...)`` against the signature of the class the registry builds;
    returns that class (None when unknown: ``_check_registered`` reports a bad type)."""
    if not hasattr(section, "get"):
        return None
    name = section.get("type", default)
    if name is None:
        return None
    cls = name if not isinstance(name, str) else registry.get(name)
    if cls is None:
        return None
    names, any_name = _takes(getattr(cls, "dataset_class", cls))
    if hasattr(cls, "dataset_class"):  # our data-set builders: pipeline=dict(...) becomes transform=
        names = (names - {"transform"}) | {"pipeline"}
    names = (names - exclude) | extra | {"type"}
    what = getattr(name, "__name__", str(name))
    _check_keys(section, key, what, names, any_name, errors)
    return cls


def _check_pipeline(pipeline, key: str, errors: list[str]) -> None:
    """A data set's ``pipeline=dict(type=..., ...)``: its keys, its crop size, and that it builds."""
    from dinov2_dense.data import pipelines

    from .data import build_pipeline

    if not hasattr(pipeline, "get"):
        return
    fn = getattr(pipelines, str(pipeline.get("type")), None)
    if fn is None or not str(pipeline.get("type")).endswith("_pipeline"):
        errors.append(f"{key}.type = {pipeline.get('type')!r}: no such pipeline (seg_train_pipeline, "
                      "seg_test_pipeline, depth_train_pipeline, depth_test_pipeline)")
        return
    names, any_name = _takes(fn)
    before = len(errors)
    _check_keys(pipeline, key, str(pipeline.get("type")), names | {"type"}, any_name, errors)
    size = pipeline.get("crop_size")
    if size is not None:
        parts = list(size) if isinstance(size, (list, tuple)) else [size]
        if (len(parts) not in (1, 2) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                 for v in parts)):
            errors.append(f"{key}.crop_size = {size!r}: expected a positive integer or (height, width)")
    if len(errors) > before:
        return
    settings = dict(pipeline)
    if "seed" in names and settings.get("seed") is None:
        settings["seed"] = 0  # a check only: the run's seed is drawn when the data set is built
    try:
        build_pipeline(settings)
    except Exception as exc:  # noqa: BLE001 - albumentations refuses values in its own words (pydantic)
        errors.append(f"{key} = {dict(pipeline)!r}: refused ({_one_line(exc)[:200]})")


def _check_section_keys(cfg, train: bool, errors: list[str]) -> None:
    """Keys of the sections mmengine builds only once training starts (loops, data loaders, data sets,
    pipelines, optimiser, schedulers, metrics, hooks) against the classes they build: a typo there
    failed with a traceback, or, in a checkpoint hook's settings, at the first save."""
    from mmengine.hooks import CheckpointHook
    from mmengine.registry import DATA_SAMPLERS, HOOKS, LOOPS, OPTIM_WRAPPERS, OPTIMIZERS
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    from .registry import DATASETS, FUNCTIONS, METRICS, PARAM_SCHEDULERS

    loops = {"train_cfg": None, "val_cfg": "ValLoop", "test_cfg": "TestLoop"} if train else {"test_cfg": "TestLoop"}
    for key, default in loops.items():
        loop = cfg.get(key)
        if not hasattr(loop, "get"):
            continue
        if key == "train_cfg" and "type" not in loop:
            default = "EpochBasedTrainLoop" if loop.get("by_epoch") else "IterBasedTrainLoop"
        extra = {"by_epoch"} if key == "train_cfg" and "type" not in loop else set()
        _check_built(loop, key, LOOPS, default, {"runner", "dataloader", "evaluator"}, extra, errors)

    loader_names, _ = _takes(DataLoader)
    loader_names |= {"num_batch_per_epoch", "disable_subprocess_warning"}
    for split in ("train", "val", "test") if train else ("test",):
        key = f"{split}_dataloader"
        loader = cfg.get(key)
        if not hasattr(loader, "get"):
            continue
        _check_keys(loader, key, "a data loader", loader_names, False, errors)
        dataset = loader.get("dataset")
        if _check_built(dataset, f"{key}.dataset", DATASETS, None, set(), set(), errors) is not None:
            if dataset.get("pipeline") is not None:
                _check_pipeline(dataset.get("pipeline"), f"{key}.dataset.pipeline", errors)
        _check_built(loader.get("sampler"), f"{key}.sampler", DATA_SAMPLERS, None, {"dataset", "seed"}, set(), errors)
        collate = loader.get("collate_fn")
        if hasattr(collate, "get") and isinstance(collate.get("type"), str) and FUNCTIONS.get(collate["type"]):
            names, any_name = _takes(FUNCTIONS.get(collate["type"]))
            _check_keys(collate, f"{key}.collate_fn", collate["type"], names | {"type"}, any_name, errors)

    for split in ("val", "test") if train else ("test",):
        key = f"{split}_evaluator"
        evaluator = cfg.get(key)
        metrics = evaluator if isinstance(evaluator, (list, tuple)) else [evaluator]
        for i, metric in enumerate(metrics):
            where = key if len(metrics) == 1 and not isinstance(evaluator, (list, tuple)) else f"{key}.{i}"
            _check_built(metric, where, METRICS, None, set(), set(), errors)

    if train:
        wrapper = cfg.get("optim_wrapper")
        if hasattr(wrapper, "get") and wrapper.get("constructor") is None:  # a constructor of one's own: its keys
            _check_built(wrapper, "optim_wrapper", OPTIM_WRAPPERS, "OptimWrapper", {"optimizer"},
                         {"optimizer", "constructor", "paramwise_cfg"}, errors)
            _check_built(wrapper.get("optimizer"), "optim_wrapper.optimizer", OPTIMIZERS, None, {"params"}, set(),
                         errors)
        schedulers = cfg.get("param_scheduler")
        schedulers = [schedulers] if hasattr(schedulers, "keys") else list(schedulers or [])
        for i, sched in enumerate(schedulers):
            _check_built(sched, f"param_scheduler.{i}", PARAM_SCHEDULERS, None, {"optimizer"},
                         {"convert_to_iter_based"}, errors)

    # CheckpointHook passes its **kwargs on to Runner.save_checkpoint, next to the arguments it gives itself
    save_names, _ = _takes(Runner.save_checkpoint)
    save_names -= {"self", "out_dir", "filename", "file_client_args", "save_optimizer", "save_param_scheduler",
                   "meta", "by_epoch", "backend_args"}
    hooks = cfg.get("default_hooks")
    named = [(f"default_hooks.{name}", hook) for name, hook in hooks.items()] if hasattr(hooks, "items") else []
    named += [(f"custom_hooks.{i}", hook) for i, hook in enumerate(cfg.get("custom_hooks") or [])]
    for key, hook in named:
        if not hasattr(hook, "get"):
            continue
        cls = HOOKS.get(hook["type"]) if isinstance(hook.get("type"), str) else hook.get("type")
        if cls is None:
            errors.append(f"{key}.type = {hook.get('type')!r}: no such hook")
            continue
        names, any_name = _takes(cls)
        if isinstance(cls, type) and issubclass(cls, CheckpointHook):
            names, any_name = names | save_names, False
        _check_keys(hook, key, getattr(cls, "__name__", str(cls)), names | {"type", "priority"}, any_name, errors)


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
        if lr is not None and (not isinstance(lr, Number) or not math.isfinite(lr) or lr <= 0 or lr > 3.4e38):
            errors.append(f"optim_wrapper.optimizer.lr = {lr!r}: expected a positive number (within float32's "
                          "range, 3.4e38)")
        if _get(cfg, "optim_wrapper.type") in ("AmpOptimWrapper", "mmengine.AmpOptimWrapper"):
            from mmengine.device import get_device

            if get_device() == "cpu":  # (mmengine asserts, a traceback)
                errors.append("optim_wrapper.type = 'AmpOptimWrapper': mmengine's mixed precision trains on a GPU "
                              "alone (CUDA, NPU, MLU or MUSA), and none is here; use 'OptimWrapper'")
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
            start = sched.get("start_factor")
            if sched.get("type") in ("LinearLR", "LinearMomentum", "LinearParamScheduler") and \
                    isinstance(start, (int, float)) and not isinstance(start, bool) and start <= 0:
                # (mmengine divides by the factor it reached: a ZeroDivisionError at the second iteration)
                errors.append(f"param_scheduler.{i}.start_factor = {start}: {sched.get('type')} needs it above 0 "
                              "(mmengine divides by it); start a warm-up from a small factor, e.g. 1e-6")
    splits = ("train", "val", "test") if train else ("test",)
    missing: dict[str, list[str]] = {}  # a root that is not there: the splits that name it
    for split in splits:
        _check_int(cfg, f"{split}_dataloader.batch_size", 1, errors, source)
        _check_int(cfg, f"{split}_dataloader.num_workers", 0, errors, source)
        _check_registered(cfg, f"{split}_dataloader.dataset.type", DATASETS, errors)
        _check_registered(cfg, f"{split}_dataloader.collate_fn.type", FUNCTIONS, errors)
        root = _get(cfg, f"{split}_dataloader.dataset.root")
        if root is not None and not isinstance(root, (str, os.PathLike)):
            errors.append(f"{split}_dataloader.dataset.root = {root!r}: expected a folder path")
        elif root is not None and not (train and split == "test") and not Path(root).exists():
            missing.setdefault(str(root), []).append(split)  # (a training run reads no test data)
    errors += [_missing_root(cfg, splits_of, root) for root, splits_of in missing.items()]
    _check_registered(cfg, "model.type", MODELS, errors)
    weights = _get(cfg, "model.backbone_weights")  # a local file: checked here, in the start the processes agree on
    if isinstance(weights, (str, os.PathLike)) and str(weights) != "official" and "://" not in str(weights) \
            and not Path(weights).exists():
        errors.append(f"model.backbone_weights = {str(weights)!r}: no such file")
    for key in ("val_evaluator.type", "test_evaluator.type"):
        _check_registered(cfg, key, METRICS, errors)
    classes = _get(cfg, "model.head.num_classes")
    # a test reads test_evaluator only; a training run validates with val_evaluator, and its config is tested next
    for key in (("val_evaluator.num_classes",) if train else ()) + ("test_evaluator.num_classes",):
        metric = _get(cfg, key)
        if classes is not None and metric is not None and metric != classes:
            errors.append(f"{key} = {metric} but model.head.num_classes = {classes}: give both the same number")
    if not train and cfg.get("test_dataloader") is None:
        errors.append("no test_dataloader: this config cannot test")
    if not errors:
        _check_section_keys(cfg, train, errors)
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(errors))


def _missing_root(cfg, splits: list[str], root: str) -> str:
    """The error of a data set root that is not there: the keys that name it, and for the synthetic configs'
    scenes the command that writes them."""
    keys = [f"{split}_dataloader.dataset.root" for split in splits]
    layout = {"ADE20KDataset": "ade20k", "NYUDepthDataset": "nyu"}.get(_get(cfg, f"{splits[0]}_dataloader.dataset.type"))
    if layout is not None and "synthetic" in Path(root).parts:
        way = f"write the synthetic scenes first: dinov2-dense synth {root} --layout {layout}"
    else:
        way = "give the data set's folder: --cfg-options " + " ".join(f"{key}=DIR" for key in keys)
    return f"{', '.join(keys)} = {root!r}: no such folder ({way})"


def _dataset_roots(cfg) -> list[str]:
    return [str(r) for split in ("train", "val", "test") if (r := _get(cfg, f"{split}_dataloader.dataset.root"))]


def _check_outside_data(work_dir: Path, cfg) -> None:
    """Refuse a work dir that is a data set's root (pretraining refuses one in its data): the run's checkpoints,
    logs and figures would lie among the data, which a later ``synth`` of the same set then refuses as foreign.
    (A work dir below a root, such as ``work_dirs/`` under a root of ".", is beside the folders the data sets
    read, and allowed.)"""
    for split in ("train", "val", "test"):
        root = _get(cfg, f"{split}_dataloader.dataset.root")
        if root and Path(root).resolve() == work_dir.resolve():
            raise ValueError(f"--work-dir {work_dir} is the data set's root ({split}_dataloader.dataset.root): the "
                             "run's checkpoints and logs would lie among the data; give another --work-dir")


def _rank() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


#: Settings of a train/test config that are each process's own (its machine's workers, memory, threads): the
#: processes of a run may differ in them; in anything else they must agree.
PER_PROCESS_SETTINGS = ("launcher", "*_dataloader.num_workers", "*_dataloader.persistent_workers",
                        "*_dataloader.pin_memory", "env_cfg.mp_cfg", "env_cfg.cudnn_benchmark", "log_level")


#: Settings that the command derives from others that are compared: named once, by what the user gave.
DERIVED_SETTINGS = ("custom_hooks.*.protect",)  # test --out's protected inputs: the config, checkpoint and data


def load_together(load: Callable[[], Any], start_group: Callable[[Any], Any]) -> Any:
    """``load()`` (a command's config) on every process of a distributed run, with the process group started
    (``start_group(the config, or None where it did not load)``) before the outcome is known, so that a config
    that a process refuses (a mistyped --cfg-options key, a missing config file) stops every process at once, as
    any refused start does (:func:`~dinov2_dense.distributed.agree_to_start`): the first process that refused
    says why, the others stop naming it. (Refused before the group was up, every process printed the same error;
    one that refused alone, given another command line on its machine, left the others waiting for it in the
    group's start.) Outside a process group: ``load()``."""
    from dinov2_dense.distributed import agree_to_start

    error: Exception | None = None
    try:
        cfg = load()
    except Exception as exc:  # noqa: BLE001 - raised again below, on this process, once the others know
        cfg, error = None, exc
    try:
        start_group(cfg)
    except ValueError:  # no group (a launcher without its variables, a missing device): the config's error first
        if error is None:
            raise

    def check() -> None:  # on every process: each reads its own config
        if error is not None:
            raise error

    agree_to_start(check, main=True)
    return cfg


def load_run_config(args: argparse.Namespace, notes: list[str] | None = None):
    """``train``/``test``'s config (:func:`load_config`), read by every process with the group of the launcher
    started (:func:`load_together`); a process whose config does not load starts it with the default ``env_cfg``."""
    from dinov2_dense.distributed import implied_launcher

    from .runner import start_process_group

    def start_group(cfg) -> None:
        start_process_group(implied_launcher(args.launcher), cfg.get("env_cfg") if cfg is not None else None)

    return load_together(lambda: load_config(args.config, args.cfg_options, args.work_dir, args.launcher,
                                             notes=notes), start_group)


def _build_loops(runner, train: bool) -> None:
    """Build the runner's data loops now, on every process, rather than in ``train()``/``test()``: a wrong data
    root or pipeline (each process reads its own data) then stops every process at once, naming it, instead of
    each printing the same error (``train()``/``test()`` take the loops built here)."""
    from dinov2_dense.distributed import agree_to_start

    def build() -> None:
        try:
            if train:
                runner._train_loop = runner.build_train_loop(runner._train_loop)
                if runner._val_loop is not None:
                    runner._val_loop = runner.build_val_loop(runner._val_loop)
            else:
                runner._test_loop = runner.build_test_loop(runner._test_loop)
        except BaseException:
            runner.discard_unstarted_log_dir()
            raise

    agree_to_start(build, main=True)


def start_distributed(cfg, command: str, names: dict[str, str] | None = None) -> None:
    """Start the process group of a distributed ``train``/``test`` (``cfg.launcher``), before anything is
    checked or built: the processes then agree on the start (one refusing stops all at once), and compare
    their configs. Under torchrun without --launcher (WORLD_SIZE above 1) the run is distributed as with
    --launcher pytorch, and the main process says so: every process would otherwise run the whole command
    alone, in the same work dir. ``names``: the command's options by the config keys they set, for the
    message that names settings the processes were given differently (:func:`_option_names`)."""
    from dinov2_dense.distributed import check_same_settings, implied_launcher, say_distributed

    from .runner import start_process_group

    given = cfg.get("launcher", "none")
    cfg.launcher = implied_launcher(given)
    if not start_process_group(cfg.launcher, cfg.get("env_cfg")):
        return
    if cfg.launcher != given:
        say_distributed(command)
    names = {**_option_names(cfg), **(names or {})}
    check_same_settings(cfg.to_dict(), cfg.filename or command, ignore=PER_PROCESS_SETTINGS + DERIVED_SETTINGS,
                        names=names)


def _option_names(cfg) -> dict[str, str]:
    """The config keys that ``train``/``test`` set from their options, by the options' names (the processes'
    refusal of different settings names those, not keys the user never typed)."""
    names = {"work_dir": "--work-dir", "resume": "--resume", "partial_load": "--partial-load",
             "other_backbone": "--other-backbone"}
    for i, hook in enumerate(cfg.get("custom_hooks") or []):
        if isinstance(hook, dict) and hook.get("type") == "SavePredictionsHook":  # test --out
            names.update({f"custom_hooks.{i}.out_dir": "--out", f"custom_hooks.{i}.overwrite": "--overwrite"})
    return names


def _build_runner(cfg, source: str, config_copy: str = "work_dir"):
    from dinov2_dense.engine.runner import DenseRunner

    try:
        return DenseRunner.from_cfg(cfg, config_copy=config_copy)
    except TypeError as exc:  # a class in the config given arguments it does not take
        raise ConfigError(f"{source}: {exc}") from None
    except ValueError as exc:  # a value a class refuses (mmengine prefixes the class)
        raise ConfigError(f"{source}: {_one_line(exc)}") from None
    except OSError as exc:
        _raise_with_config_hint(exc)
        raise


def _raise_with_config_hint(exc: OSError) -> None:
    """Weights that are not here: raise ``exc`` again with the hint's options those of the commands that take a
    config (no --model or --weights). Returns where ``exc`` is another error."""
    from dinov2_dense.hub import NO_WEIGHTS_HINT, WeightsNotFoundError

    if NO_WEIGHTS_HINT in str(exc):
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, (
            "To go on without a download: --cfg-options model.backbone_weights=None (random weights: the metrics "
            "then mean nothing), or the backbone embedded in the package, dinov2_dense_tiny (trained): the configs "
            "configs/segmentation/embedded_synthetic_linear.py and configs/depth/embedded_synthetic_linear.py, "
            "whose model section has the settings of a head on it (its blocks and width)"))) from None


def fetch_backbone_weights(cfg) -> None:
    """Find or download the weights that a ``DenseModel`` config's backbone loads from elsewhere (the official
    file of a zoo backbone, an http(s) URL) in starts that the processes agree on: weights that are not here
    and cannot be fetched are then said once, by the first process, the others stopping with it (they were
    said by every process while the runner was built). One process a machine fetches first (LOCAL_RANK 0);
    the others then find the file in the cache, or fetch it where their machine does not share it."""
    from dinov2_dense import hub
    from dinov2_dense.distributed import _group_size, agree_to_start

    import inspect

    from .model import DenseModel

    model = cfg.get("model") or {}
    if not isinstance(model, dict) or model.get("type") != "DenseModel":
        return
    defaults = inspect.signature(DenseModel).parameters  # what the model takes where the config says nothing
    weights = model.get("backbone_weights", defaults["backbone_weights"].default)
    backbone = model.get("backbone", defaults["backbone"].default)
    if model.get("zoo") is not None:
        from dinov2_dense.zoo import MODELS

        if model["zoo"] not in MODELS:
            return  # the runner's build names it
        backbone = MODELS[model["zoo"]].backbone
    if isinstance(weights, str) and weights.startswith(("http://", "https://")):
        def fetch():
            hub._fetch_url(weights)
    elif isinstance(weights, str) and weights == "official" and isinstance(backbone, str) and backbone in hub.BACKBONES:
        def fetch():
            try:
                hub.resolve_weights(backbone)
            except OSError as exc:
                _raise_with_config_hint(exc)
                raise
    else:
        return
    local = next((os.environ[k] for k in ("LOCAL_RANK", "SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK",
                                          "MPI_LOCALRANKID") if os.environ.get(k, "").isdigit()), "0")
    first = int(local) == 0  # torchrun's, Slurm's, Open MPI's or MPICH's process number on its machine
    agree_to_start(fetch, main=first)
    if _group_size() > 1:
        agree_to_start(fetch, main=not first)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _previous_run_files(work_dir: Path) -> list[Path]:
    from dinov2_dense.engine.runner import checkpoint_candidates

    files = [Path(p) for p in checkpoint_candidates(work_dir)]
    return files + ([work_dir / "last_checkpoint"] if (work_dir / "last_checkpoint").is_file() else [])


#: The names mmengine's save_best gives a run's best checkpoint (``best_mIoU_iter_6.pth``).
_SAVE_BEST = re.compile(r"best_.+_(iter|epoch)_\d+\.pth")


def _best_files(work_dir: Path) -> list[Path]:
    """A run's save_best checkpoints, which ``--overwrite`` deletes with its checkpoints (a new run does not
    know them, and never removes them); a file of another name (``best_head_for_paper.pth``) is the user's."""
    return sorted(p for p in work_dir.glob("best_*.pth") if _SAVE_BEST.fullmatch(p.name) and p.is_file())


def run_train(args: argparse.Namespace) -> int:
    import contextlib

    from dinov2_dense.distributed import agree_to_start
    from dinov2_dense.fileio import DirLock, _check_creatable, discard_stale_temporaries_in

    notes: list[str] = []
    cfg = load_run_config(args, notes)
    cfg.resume = bool(args.resume)
    cfg.partial_load = bool(getattr(args, "partial_load", False))
    cfg.other_backbone = bool(getattr(args, "other_backbone", False))
    start_distributed(cfg, "training run")
    work_dir = Path(cfg.work_dir)
    main = _rank() == 0

    with contextlib.ExitStack() as stack:
        def start() -> list[Path]:
            """The main process checks the config and the work dir, and locks it for all: the old checkpoints
            that a new run (--overwrite) deletes once it has started."""
            validate_config(cfg, args.config, train=True)
            _check_creatable(work_dir, "--work-dir")
            _check_outside_data(work_dir, cfg)
            if work_dir.exists() and not work_dir.is_dir():
                raise FileExistsError(f"--work-dir {work_dir} is a file, not a folder")
            if args.resume and getattr(args, "overwrite", False):
                raise ValueError("--resume continues the run in the work dir, --overwrite starts afresh: give one "
                                 "of them")
            lock = stack.enter_context(DirLock(work_dir))
            if lock.note:
                print(f"{work_dir}: {lock.note}")
            # a run killed while it saved (kill -9) left its checkpoint's temporary file: under the lock, nobody
            # writes it
            discard_stale_temporaries_in(work_dir, idle_s=0.0)
            old = _previous_run_files(work_dir)
            # a resumed run's schedulers come back as its checkpoint saved them (the runner says where they differ)
            for note in ([] if args.resume and old else notes + schedule_cut_notes(cfg)):
                print(note)
            load_from = cfg.get("load_from")
            if args.resume and not old:
                since = f" from the weights of load_from {load_from}" if load_from else ""
                print(f"--resume: {work_dir} holds no checkpoint yet; starting a new run there{since}")
            delete = old if not args.resume else []
            if delete and getattr(args, "overwrite", False):
                delete = delete + _best_files(work_dir)
            if delete and not getattr(args, "overwrite", False):
                shown = ", ".join(p.name for p in old[:3]) + (", ..." if len(old) > 3 else "")
                raise FileExistsError(f"--work-dir {work_dir} holds the checkpoints of another run ({shown}): pass "
                                      "--resume to continue it, --overwrite to delete them and start afresh, or "
                                      "choose another --work-dir")
            if load_from and not (args.resume and old):  # the starting weights of a new run
                if delete and Path(load_from).resolve() in {p.resolve() for p in delete}:
                    raise ValueError(f"load_from {load_from} is a checkpoint of {work_dir}, whose checkpoints "
                                     "--overwrite deletes: copy it elsewhere first, or choose another --work-dir")
                from dinov2_dense.engine.runner import read_run_checkpoint

                read_run_checkpoint(load_from)  # a missing or corrupt file stops us before anything is deleted
            from dinov2_dense.engine.runner import VALIDATION_RECORD

            record = work_dir / VALIDATION_RECORD  # which validation the run in the work dir finished: a new run's
            if not (args.resume and old) and record.is_file():  # is its own
                delete = delete + [record]
            return delete

        delete = agree_to_start(start, main, share=True) or []
        fetch_backbone_weights(cfg)
        runner = _build_runner(cfg, args.config)
        # the model is built; the data sets are built now, not at train(): a wrong root or pipeline stops every
        # process at once, and fails while the previous run's checkpoints are still there. Every process builds
        # its own (their samplers agree on a seed); the old files go once the run has started (its weights
        # loaded and checked: a load_from refused there, or a disk full, kept the old run)
        _build_loops(runner, train=True)
        runner.delete_on_start = delete if main else []
        runner.train()  # the config's copy <work_dir>/<config>.py is written once the run has started
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
    from dinov2_dense.distributed import agree_to_start
    from dinov2_dense.engine.runner import read_run_checkpoint
    from dinov2_dense.fileio import check_output_dir

    cfg = load_run_config(args)
    if getattr(args, "num_workers", None) is not None:
        cfg.test_dataloader.num_workers = args.num_workers
        if args.num_workers == 0:
            cfg.test_dataloader.persistent_workers = False  # torch refuses persistent workers without workers
    cfg.load_from = args.checkpoint
    cfg.resume = False  # a config's resume=True would test the work dir's newest checkpoint, not this one
    if (cfg.get("test_cfg") or {}).get("fp16") and _rank() == 0:
        from mmengine.device import get_device

        if get_device() == "cpu":  # (mmengine's autocast takes bfloat16 there, with no word)
            print("note: test_cfg.fp16 on the CPU: mmengine's autocast computes in bfloat16 there (float16 is for "
                  "GPUs)")
    cfg.partial_load = bool(getattr(args, "partial_load", False))
    cfg.other_backbone = bool(getattr(args, "other_backbone", False))
    protect = [args.config, args.checkpoint] + [str(r) for r in _dataset_roots(cfg)]
    if args.out is not None:
        hooks = list(cfg.get("custom_hooks") or [])
        hooks.append(dict(type="SavePredictionsHook", out_dir=args.out, overwrite=getattr(args, "overwrite", False),
                          protect=protect))
        cfg.custom_hooks = hooks
    start_distributed(cfg, "test", names={"load_from": "the checkpoint"})

    def start() -> None:  # on the main process: the others stop with it when it refuses
        validate_config(cfg, args.config, train=False)
        read_run_checkpoint(args.checkpoint)  # a missing or corrupt file stops us before the model is built
        if args.out is not None:
            check_output_dir(args.out, overwrite=getattr(args, "overwrite", False), what="--out", protect=protect)

    agree_to_start(start, _rank() == 0)
    fetch_backbone_weights(cfg)
    pin_test_batches(cfg)
    # the config's copy goes beside the test's log: the default work dir is the training run's, whose
    # <work_dir>/<config>.py records what was trained
    runner = _build_runner(cfg, args.config, config_copy="log_dir")
    try:
        _build_loops(runner, train=False)
        metrics = runner.test()
    finally:
        if args.out is not None and _rank() == 0:
            from dinov2_dense.engine.hooks import test_stage
            from dinov2_dense.fileio import discard_stage

            discard_stage(test_stage(args.out))  # left only when the test failed or was interrupted
    if _rank() == 0:  # under torchrun every process has the (gathered) metrics: one line of them
        print({k: _printed_metric(v) for k, v in (metrics or {}).items()})
    return 0


def _printed_metric(value):
    """A metric as `test` prints it: a count as a whole number (it said 16.0 images), a measure to 4 decimals."""
    import numbers

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return round(float(value), 4) if isinstance(value, numbers.Real) else value


# -- pretraining -------------------------------------------------------------------------------
def add_pretrain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("config", type=config_path, help="a pretraining config (configs/pretrain/...)")
    parser.add_argument("--work-dir", help="checkpoints, logs, monitor figures and the export (default: the "
                                           "config's work_dir, else work_dirs/<config folder>/<config name>, e.g. "
                                           "work_dirs/pretrain/tiny_cpu for configs/pretrain/tiny_cpu.py)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest readable checkpoint (settings other than its own are named "
                             "in a warning and recorded in config.json's _resumes)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a work dir that holds another run's checkpoints (they are deleted)")
    parser.add_argument("--max-iters", type=positive_int, default=None,
                        help="stop after this many iterations (a try run)")
    parser.add_argument("--cfg-options", nargs="+", action=OptionsAction, default={},
                        help="override config entries, e.g. optim.epochs=10 train.batch_size_per_gpu=32")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (training_metrics.jsonl still gets every log line)")
    return parser


def _option_named(message: str, config: str, options: dict) -> str:
    """A config error of ``pretrain`` about a key that ``--cfg-options`` gave (``optim.base_lrr=0.1``), named
    as that option rather than as a key of the config file; other messages as they are."""
    prefix = f"{config}: unknown key "
    if not message.startswith(prefix):
        return message
    key = message[len(prefix):].split(" ", 1)[0]
    given = [str(name) for name in options if str(name) == key or str(name).startswith(key + ".")]
    return f"--cfg-options {given[0]}: unknown key {message[len(prefix):]}" if given else message


def run_pretrain(args: argparse.Namespace) -> int:
    """``dinov2-dense pretrain``: load the config and run ``pretrain.train.pretrain`` (which checks the work dir)."""
    from dinov2_dense.distributed import under_torchrun
    from pretrain.config import ConfigError
    from pretrain.train import _given_device, pretrain, setup_distributed

    def load():
        cfg = load_config(args.config, args.cfg_options, args.work_dir, known_sections=None)
        if getattr(args, "distill_only", False) and not (cfg.get("distill") or {}).get("teacher"):
            raise ValueError(f"{args.config}: distill.teacher is not set; give --teacher (a zoo name or a weights "
                             "file) or set it in the config")
        return cfg

    def start_group(cfg) -> None:  # pretrain() starts it too, where it is not yet
        if under_torchrun():
            setup_distributed(_given_device(cfg.to_dict()) if cfg is not None else None)

    cfg = load_together(load, start_group)
    work_dir = Path(cfg.work_dir)
    sections = {k: v for k, v in cfg.to_dict().items() if k not in ("work_dir", "launcher")}
    distilling = bool((sections.get("distill") or {}).get("teacher"))  # what the run is, whichever command runs it
    # pretrain() refuses a work dir holding another run unless --resume or --overwrite (it deletes that run
    # once the config is checked and the model built)
    try:
        result = pretrain(sections, work_dir, resume=args.resume, overwrite=args.overwrite, max_iters=args.max_iters,
                          source=args.config, progress=not args.no_progress)
    except ConfigError as exc:
        raise ConfigError(_option_named(str(exc), args.config, args.cfg_options or {})) from None
    except OSError as exc:
        from dinov2_dense.hub import DEFAULT_EMBEDDED, NO_WEIGHTS_HINT, WeightsNotFoundError, architecture

        if NO_WEIGHTS_HINT not in str(exc):
            raise
        # a teacher's or a pretrained student's weights are not here: the options of the hint are this
        # command's, and the embedded backbone's sizes (the config may name another size of student)
        arch = architecture(DEFAULT_EMBEDDED).arch_kwargs()
        embedded = (f"student.pretrained_weights={DEFAULT_EMBEDDED} student.arch=custom "
                    + " ".join(f"student.{k}={arch[k]}" for k in ("embed_dim", "depth", "num_heads")))
        small = "a small backbone embedded in the package, pretrained by us on synthetic scenes"
        if getattr(args, "distill_only", False):
            hint = (f"To go on without a download: --teacher {DEFAULT_EMBEDDED} for the teacher ({small}); a student "
                    f"from scratch: student.pretrained_weights=None in --cfg-options, or from that backbone: "
                    f"--cfg-options {embedded}")
        else:
            hint = (f"To go on without a download: a student from scratch: --cfg-options "
                    f"student.pretrained_weights=None; or from {DEFAULT_EMBEDDED} ({small}): --cfg-options {embedded}")
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, hint)) from None
    if _rank() == 0:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()
                 if k in ("iteration", "total_loss", "knn_top1", "probe_miou")}
        print(f"{'distillation' if distilling else 'pretraining'}: {shown}")
        if isinstance(result.get("run_images_per_s"), float):
            print(f"{result['run_images_per_s']:.1f} images/s over this command's iterations (monitor and "
                  "checkpoints included; training_metrics.jsonl has each log interval's)")
        exports = result.get("export", {})
        if "safetensors" in exports:
            print(f"exported the teacher backbone: {exports['safetensors']} (architecture "
                  f"{exports['json']}); load it with load_backbone(None, weights=...)")
        for name, files in exports.items():  # a distillation run: one entry per student
            if isinstance(files, dict):
                print(f"exported {name}: {files['safetensors']} (architecture {files['json']}); load it with "
                      "load_backbone(None, weights=...)")
        if not exports and "iterations" in result:  # --max-iters stopped it before the schedule's end
            checkpoint = work_dir / f"checkpoint_{result['iterations']:07d}.pth"
            use = (f"--weights {checkpoint} gives its teacher backbone to the other commands, "
                   if (work_dir / "backbone.json").is_file() else "")
            print(f"stopped at iteration {result['iterations']} (--max-iters), before the end of the schedule: no "
                  f"export yet (it is written when the schedule ends); {use}--resume continues the run")
    return 0


def add_distill_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_pretrain_arguments(parser)
    parser.add_argument("--teacher", default=None,
                        help="the frozen teacher: a zoo name (official weights) or a weights file; sets "
                             "distill.teacher")
    parser.add_argument("--teacher-head", default=None,
                        help="a pretraining checkpoint (or its run folder: the newest) whose trained DINO head "
                             "gives the targets; sets distill.teacher_head (default: the config's, else a fresh "
                             "head; --cfg-options distill.teacher_head=None: a fresh head). Read at a new run's "
                             "start only: --resume goes on with the head its checkpoint holds")
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
