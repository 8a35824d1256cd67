"""What the processes of one torch.distributed run (torchrun) agree on before they start work.

:func:`under_torchrun` tells a command started by torchrun (or by hand with its variables);
:func:`check_same_settings` refuses, on every process, a run whose processes were given different
settings (a command line that differs between machines), naming the keys; :func:`agree_to_start`
shares the outcome of start checks, so a start that one process refuses stops every process at once
with a line naming it, instead of leaving the others waiting in a collective until a timeout or a kill.

The objects these exchange go through a gloo group: the default one, or a side group beside an NCCL one
(NCCL moves CUDA tensors only).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class StartRefused(ValueError):
    """Another process of the run refused the start; its own error says why."""


def under_torchrun() -> bool:
    """True when torchrun's variables say this process is one of several (WORLD_SIZE above 1)."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def implied_launcher(launcher: str) -> str:
    """The launcher a command runs with: ``launcher`` as given, or "pytorch" where it is "none" and torchrun
    started several processes (each would otherwise run the whole command alone)."""
    return "pytorch" if launcher == "none" and under_torchrun() else launcher


def local_device(device):
    """``device`` (a torch.device, or None) for this process: a CUDA device without an index is this process's
    GPU under torchrun (``cuda:$LOCAL_RANK``), not every process's GPU 0; others as they are."""
    import torch

    if device is not None and device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def say_distributed(what: str) -> None:
    """On process 0 of a started group, the note that torchrun's processes run ``what`` together although
    no --launcher was given (see :func:`implied_launcher`)."""
    import torch.distributed as dist

    if _started() and dist.get_rank() == 0:
        print(f"note: torchrun started {dist.get_world_size()} processes: the {what} is distributed over them, "
              "as with --launcher pytorch")


def _started() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _group_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if _started() else 1


_SIDE_GROUP: list[Any] = [None, None]  # (the default group it was made beside, the gloo group)


def _object_group():
    """The group that carries Python objects: None (the default group) when that one runs gloo, else a gloo
    group of every process, made once per default group (every process calls this at the same point)."""
    import torch.distributed as dist

    if "gloo" in str(dist.get_backend()).lower():
        return None
    if _SIDE_GROUP[0] is not dist.group.WORLD:
        _SIDE_GROUP[:] = [dist.group.WORLD, dist.new_group(backend="gloo")]
    return _SIDE_GROUP[1]


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _text(value: Any) -> str:
    """A value as text that is the same in every process: a function or class by its name (not its
    address), a set sorted, other objects by their repr without memory addresses."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return repr(value)
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(_text(v) for v in value)) + "}"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    return _ADDRESS.sub("", repr(value))


def flatten(settings: Any, prefix: str = "") -> dict[str, str]:
    """``{"a.b": text of the value}`` for each leaf of nested mappings; a list or tuple that holds mappings
    is followed too, by index (``param_scheduler.1.end``, as --cfg-options names it); other values are leaves."""
    if isinstance(settings, Mapping) or (isinstance(settings, (list, tuple)) and
                                         any(isinstance(v, Mapping) for v in settings)):
        items = settings.items() if isinstance(settings, Mapping) else enumerate(settings)
        out: dict[str, str] = {}
        for key, value in items:
            out.update(flatten(value, f"{prefix}{key}."))
        empty = "{}" if isinstance(settings, Mapping) else "[]"
        return out if out or not prefix else {prefix[:-1]: empty}
    return {prefix[:-1] if prefix else "value": _text(settings)}


def check_same_settings(settings: Mapping, what: str, shown: int = 3, ignore: Iterable[str] = (),
                        given: str = "command and config", names: Mapping[str, str] | None = None) -> None:
    """Call on every process of a started process group: raise :class:`ValueError` on every process when
    their ``settings`` (nested mappings of plain values) differ, naming up to ``shown`` keys with process 0's
    value and the first other process's. ``ignore``: patterns (fnmatch, on the dotted keys and each of their
    prefixes) of settings that are each process's own (``*_dataloader.num_workers``). One small all-gather when
    they agree; a no-op in one process. ``what``: the command or file they come from, to begin the message
    with (empty: none); ``given``: what the user gave them, for the advice that ends it ("start every process
    with the same ..."); ``names``: the option a dotted key came from, where the user gave it so and not as that
    key (``{"load_from": "the checkpoint (load_from)"}``), to name it by."""
    world = _group_size()
    if world == 1:
        return
    import torch.distributed as dist

    patterns = list(ignore)

    def ignored(key: str) -> bool:
        parts = key.split(".")
        return any(fnmatch.fnmatchcase(".".join(parts[:n]), p) for n in range(1, len(parts) + 1) for p in patterns)

    flat = {k: v for k, v in flatten(settings).items() if not ignored(k)}
    digest = hashlib.sha256(json.dumps(sorted(flat.items())).encode()).hexdigest()
    group = _object_group()
    digests: list[Any] = [None] * world
    dist.all_gather_object(digests, digest, group=group)
    if len(set(digests)) == 1:
        return
    every: list[Any] = [None] * world
    dist.all_gather_object(every, flat, group=group)
    other = next(r for r in range(1, world) if digests[r] != digests[0])
    keys = sorted(k for k in set(every[0]) | set(every[other]) if every[0].get(k) != every[other].get(k))
    missing = "(not set)"
    names = names or {}
    said = "; ".join(f"{names.get(k, k)}: {every[0].get(k, missing)} in process 0, {every[other].get(k, missing)} in "
                     f"process {other}" for k in keys[:shown])
    more = f" (and {len(keys) - shown} more)" if len(keys) > shown else ""
    raise ValueError(f"{what + ': ' if what else ''}the {world} processes of this run were given different settings: "
                     f"{said}{more}; start every process with the same {given}")


def check_same_checkpoint(name: str | None, iteration: int, work_dir: str | os.PathLike) -> None:
    """Call on every process of a started process group after each found the checkpoint it resumes from
    (``name`` None: none, iteration 0): raise :class:`ValueError` on every process unless all found the same.
    Only process 0 writes checkpoints, so on machines that do not share the work dir the others found none
    (or an old copy) and would have started at another iteration than process 0: their loops fell out of step."""
    check_same_settings({"--resume": {"checkpoint": name, "iteration": iteration}}, f"--resume in {work_dir}",
                        given="checkpoints: a work dir that every machine reads (process 0 writes them)")


#: The longest refusal that the other processes repeat (``stopped: process N refused the start (...)``).
SAID_LENGTH = 400


def _said(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    text = " ".join(str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc).split())
    if len(text) > SAID_LENGTH:  # the others' line names it; the whole of it is process N's own line
        text = text[:SAID_LENGTH - 3].rstrip() + "..."
    return text if text else type(exc).__name__


def agree_to_start(check: Callable[[], T], main: bool, share: bool = False) -> T | None:
    """Run ``check`` on the processes where ``main`` is true (process 0 for checks of what all share, such as
    the work dir; every process for checks of its own) and tell every process how it went. When all passed:
    ``check``'s result where it ran, None elsewhere (``share``: process 0's result on every process; it must
    pickle). When one raised, the first such process (lowest rank) raises its error again, and every other
    one :class:`StartRefused` naming it, so every process stops at once. Outside a process group it runs
    ``check``. Every process of the group must call it at the same point."""
    if _group_size() == 1:
        return check()
    import torch.distributed as dist

    result = None
    error: BaseException | None = None
    said = None
    if main:
        try:
            result = check()
        except BaseException as exc:  # Ctrl-C included: the others must not wait for a start that will not come
            error, said = exc, _said(exc)
    group = _object_group()
    outcomes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(outcomes, said, group=group)
    failed = [rank for rank, outcome in enumerate(outcomes) if outcome is not None]
    if failed:
        first = failed[0]
        if first == dist.get_rank() and error is not None:
            raise error
        raise StartRefused(f"stopped: process {first} refused the start ({outcomes[first]})")
    if share:
        shared = [result]
        dist.broadcast_object_list(shared, src=0, group=group)
        result = shared[0]
    return result
