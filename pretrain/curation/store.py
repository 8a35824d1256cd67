"""Embedding stores: the rows every curation step reads, and the images they come from.

A store is a folder holding ``embeddings.npy`` (float32 or float16 rows, one per image, read
memory-mapped), ``names.txt`` (one name a line, the image's path), ``unreadable.txt`` (images that
could not be read, with the reason) and ``store.json`` (how the rows were made). A plain ``.npy`` of
shape (N, D) with a ``.txt`` of N names beside it (same stem) is read the same way.

:func:`embed_images` writes a store in batches and can be interrupted at any point (Ctrl-C, kill -9):
rows already written are kept (``embeddings.partial.npy`` and ``status.partial.npy``, both
memory-mapped; a row counts as stored only once its status says so, and the status is written after
the row), and the next call with the same inputs, backbone and settings computes only the others.
A partial store counts from when ``partial.json`` (its settings, the weights' hash among them) is
written; into a fresh folder the hash is computed in a thread while the first batches run, so a kill -9
in those first moments (0.2 s for ViT-B) leaves nothing to resume; Ctrl-C waits for the hash.

Each input file's size and modification time are recorded (``stats.npy``, ``stats.partial.npy``:
int64 (N, 2), -1 for a file that was missing), taken before any image is read. A finished store made
with the same settings keeps the rows of the images still listed and unchanged, matched by name (one
image added to or removed from the pool costs that image, not the pool), and embeds the new and changed
ones; an image listed unreadable and unchanged stays listed with its reason, not read again (a partial
store keeps those in ``unreadable.partial.txt``); one line says how many are new, gone, changed and kept.
A store made with other settings is embedded again whole, one line saying which. ``store.json`` and
``partial.json`` also record the pixel limit in force (``max_pixels``: :func:`dinov2_dense.images.max_pixels`,
the default too; not a row setting: it changes no readable image's row). A rerun with the pool unchanged
reads no image (a repaired file has a new size or time): the images listed unreadable are read again only
under a limit raised above the recorded one (a store without the record: the default), as any image to
embed (the workers, the progress bar), and the new limit is recorded; under the same or a lower limit the
store is used as it is. A partial store whose files changed since embeds those again. A store made
before the record counts a file modified after its ``store.json`` was written, or gone since, as
changed; the record is then written.

A finished store is ``store.json`` with its files: finishing removes ``store.json`` first and writes it
last, so a finish cut short is never taken for a finished store (the partial store stays and is resumed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import glob
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from dinov2_dense.fileio import atomic_path, new_memmap, read_names_text, write_json, write_npy, write_text

__all__ = ["CurationError", "EmbeddingStore", "NothingReadable", "embed_images", "embedding_settings", "list_images",
           "load_embeddings", "partial_progress"]

PENDING, DONE, UNREADABLE = 0, 1, 2
SYNC_SECONDS = 5.0  # how often finished rows are flushed to disk and marked done (and at the end)
_PARTIAL = ("embeddings.partial.npy", "status.partial.npy", "inputs.partial.txt", "stats.partial.npy",
            "unreadable.partial.txt", "partial.json")


class CurationError(ValueError):
    """A user's input that curation cannot use (the message names the file and the problem)."""


class NothingReadable(CurationError):
    """None of the images given could be read (all missing, say): nothing to embed. :func:`embed_images`
    leaves no store of its own behind (an earlier run's is kept)."""


@dataclass
class EmbeddingStore:
    """Rows (memory-mapped where read from a file) and their names. ``settings``: how a store folder's
    rows were made (its ``store.json``; None for an ``.npy`` or a folder without one); ``root``: the
    folder of the names file, against which relative names are files."""

    embeddings: np.ndarray
    names: list[str]
    source: str = "embeddings"
    unreadable: tuple[str, ...] = ()
    settings: dict | None = None
    root: str | None = None

    def __len__(self) -> int:
        return len(self.names)


# -- reading -----------------------------------------------------------------------------------
def _read_names(path: Path) -> list[str]:
    try:
        text = read_names_text(path)
    except FileNotFoundError:
        raise CurationError(f"{path}: no such names file (one name a line, as many as the rows)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CurationError(f"{path}: not a readable text file of names ({exc})") from None
    return _lines(text)


def _lines(text: str) -> list[str]:
    """The lines of a names file as written (each name and a "\\n"; a "\\r\\n" file's "\\r" dropped): a name
    may hold the other characters that ``str.splitlines`` breaks at (U+2028, U+0085, form feed ...)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_unique(names: list[str], where: str, unit: str) -> None:
    """Refuse a name given twice (each row is one image: a repeated name could be selected twice)."""
    first: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name in first:
            raise CurationError(f"{where}: {unit} {i} repeats the name {name!r} of {unit} {first[name]}; each row "
                                "needs its own name (remove the repeated row and its name, or rename it)")
        first[name] = i


def check_rows(x: np.ndarray, what: str, chunk: int = 65536) -> None:
    """Refuse rows that are not finite or are all zero (they have no direction), naming the first."""
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk], dtype=np.float32)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            rows = np.flatnonzero(bad) + start
            raise CurationError(f"{what}: {len(rows)}+ row(s) with NaN or inf values (first: row {rows[0]}); "
                                "remove them or recompute those embeddings")
        zero = ~block.any(axis=1)
        if zero.any():
            raise CurationError(f"{what}: row {np.flatnonzero(zero)[0] + start} is all zeros (no direction for a "
                                "cosine similarity)")


def load_embeddings(path: str | os.PathLike, names: str | os.PathLike | Sequence[str] | None = None,
                    check: bool = True) -> EmbeddingStore:
    """A store folder (``embeddings.npy`` + ``names.txt``) or an ``.npy`` of shape (N, D) with its
    names: ``names`` (a file or a list) or the ``.txt`` of the same stem beside it. Memory-mapped;
    ``check`` refuses NaN / inf / all-zero rows, naming the file and the row; a name given twice is
    refused (naming it and its line). A store folder beside an interrupted run's partial store is read
    only with its ``store.json`` (a finish cut short is refused)."""
    path = Path(path)
    if path.is_dir():
        partial = (path / "embeddings.partial.npy").is_file() or (path / "partial.json").is_file()
        finished = (path / "store.json").is_file()
        missing = None
        if not (path / "embeddings.npy").is_file():
            missing = "embeddings.npy"
        elif partial and not finished:  # beside a partial store, embeddings.npy may be from a finish cut short
            missing = "store.json"
        if missing:
            raise CurationError(f"{path}: no {missing} in this folder"
                                + (" (an interrupted embedding run: run it again to finish it)" if partial else ""))
        unreadable = path / "unreadable.txt"
        bad = tuple(_lines(read_names_text(unreadable))) if unreadable.is_file() else ()
        store = load_embeddings(path / "embeddings.npy", names if names is not None else path / "names.txt", check)
        store.unreadable = bad
        if finished:
            try:
                store.settings = _stored_settings(path / "store.json")
            except (OSError, ValueError) as exc:
                raise CurationError(f"{path / 'store.json'}: not readable ({exc}); embed the images again") from None
        return store
    if path.suffix.lower() != ".npy":
        raise CurationError(f"{path}: expected an .npy file of embeddings (N, D) or an embedding store folder")
    if not path.is_file():
        raise CurationError(f"{path}: no such file")
    try:
        x = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CurationError(f"{path}: not a readable .npy array ({str(exc)[:120]})") from None
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise CurationError(f"{path}: expected a 2-D array of embeddings (N, D), found shape {tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise CurationError(f"{path}: expected float embeddings, found dtype {x.dtype}")
    if names is None:
        names_file = path.with_suffix(".txt")
        if not names_file.is_file():
            raise CurationError(f"{path}: no names file beside it ({names_file.name}); give one with --names")
        names = names_file
    root = None
    if isinstance(names, (str, os.PathLike)):
        where, root = str(names), os.path.dirname(os.path.abspath(names))
        listed = _read_names(Path(names))
    else:
        where, listed = "the names given", [str(n) for n in names]
    if len(listed) != x.shape[0]:
        raise CurationError(f"{where}: {len(listed)} names for the {x.shape[0]} rows of {path}")
    _check_unique(listed, where, "line" if root is not None else "name")
    if check:
        check_rows(x, str(path))
    return EmbeddingStore(x, listed, source=str(path), root=root)


# -- images ------------------------------------------------------------------------------------
def list_images(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    """The images of a folder (recursive, sorted; of the root of ``dinov2-dense synth --layout folder``,
    its ``images/`` only, with a warning, as pretraining reads it), a text file of paths (one a line,
    relative to the file's folder), a glob pattern, or a list of paths; absolute paths. A path holding a line break
    ("\\n" or "\\r") is refused, naming it: a store lists its images one a line."""
    return _one_a_line(_list_images(spec))


def _one_a_line(paths: list[str]) -> list[str]:
    for p in paths:
        if "\n" in p or "\r" in p:
            raise CurationError(f"{p!r}: a file name with a line break cannot be listed one a line (names.txt, "
                                "selected.txt); rename the file or move it out of the pool")
    return paths


def _list_images(spec: str | os.PathLike | Sequence[str]) -> list[str]:
    from dinov2_dense.data.files import IMAGE_EXTENSIONS, check_list_encoding, image_files_below, list_file_entries

    if not isinstance(spec, (str, os.PathLike)):
        return _once([os.path.abspath(p) for p in spec], "the list of images")
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        path = _images_of(path)
        found = [os.path.abspath(path / p) for p in image_files_below(path)]
        if not found:
            raise CurationError(f"{path}: found no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        return found
    if path.is_file():
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return [os.path.abspath(path)]
        entries = list_file_entries("\n".join(_read_names(path)))
        if not entries:
            raise CurationError(f"{path}: the list names no images (one path a line; # starts a comment)")
        found = [os.path.abspath(e if os.path.isabs(e) else path.parent / e) for e in entries]
        try:
            check_list_encoding(path, entries, found)
        except ValueError as exc:
            raise CurationError(str(exc)) from None
        return _once(found, str(path))
    if any(c in text for c in "*?["):
        found = sorted(os.path.abspath(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not found:
            raise CurationError(f"{text}: the pattern matches no files")
        return found
    raise CurationError(f"{text}: no such folder, list file or glob pattern")


def _images_of(folder: Path) -> Path:
    """The folder whose images a pool folder gives: the root of ``dinov2-dense synth --layout folder``
    (``images/`` beside ``masks/`` or ``depth/``) gives its ``images/`` only, as pretraining reads it
    (:class:`pretrain.data.datasets.ImageFiles`), saying so: label and depth maps are not photographs."""
    from pretrain.data.datasets import _is_synthetic_layout

    if not _is_synthetic_layout(folder):
        return folder
    warnings.warn(f"{folder}: the layout of `dinov2-dense synth --layout folder`; taking its images only "
                  f"({folder / 'images'}), not its masks/ and depth/", stacklevel=4)
    return folder / "images"


def _once(paths: list[str], source: str) -> list[str]:
    """``paths`` without repeats (the first of each kept, in order): a file named twice is one image of the
    pool, embedded, counted and selected once; the repeats are named in a warning."""
    unique = list(dict.fromkeys(paths))
    if len(unique) < len(paths):
        seen, repeated = set(), []
        for p in paths:
            if p in seen and p not in repeated:
                repeated.append(p)
            seen.add(p)
        warnings.warn(f"{source}: {len(paths) - len(unique)} repeated path(s), each taken once: "
                      + ", ".join(repeated[:3]) + (" ..." if len(repeated) > 3 else ""), stacklevel=3)
    return unique


def _autocast_name(autocast: bool | torch.dtype) -> str | None:
    """``autocast`` as a store records it: None (off) or the dtype's name (True is bfloat16)."""
    if not autocast:
        return None
    return "bfloat16" if autocast is True else str(autocast).removeprefix("torch.")


def _weights_dtype(model: torch.nn.Module) -> str | None:
    """The dtype of the model's weights (``--dtype``; ``+float8`` with FP8 linears), None for float32."""
    from dinov2_dense.checkpoints import weights_form

    form = weights_form(model)
    return None if form == "float32" else form


def _settings(model: torch.nn.Module, size: int, pooling: str, dtype: str, resize_8bit: bool = False,
              weights: str | None = None, autocast: bool | torch.dtype = False) -> dict:
    """How a store's rows are made; ``weights``: the model's fingerprint when already known."""
    from dinov2_dense.checkpoints import fingerprint, forward_settings

    # forward: what changes the rows but no tensor of the weights (num_heads, the position embedding's resampling)
    settings = {"version": 1, "weights": weights or fingerprint(model), "forward": forward_settings(model),
                "size": size, "pooling": pooling, "dtype": dtype, "resize_8bit": bool(resize_8bit)}
    if autocast:  # only when set: stores made before the option (all without autocast) stay valid
        settings["autocast"] = _autocast_name(autocast)
    if _weights_dtype(model) is not None:  # likewise (the weights' hash differs with their dtype too)
        settings["weights_dtype"] = _weights_dtype(model)
    return settings


def embedding_settings(model: torch.nn.Module, **embed_kw) -> dict:
    """The settings :func:`embed_images` records for ``model`` with these keyword arguments (its
    defaults for the others)."""
    import inspect

    kw = {k: p.default for k, p in inspect.signature(embed_images).parameters.items() if p.kind is p.KEYWORD_ONLY}
    kw.update(embed_kw)
    return _settings(model, kw["size"], kw["pooling"], kw["dtype"], kw["resize_8bit"], autocast=kw["autocast"])


def _fingerprint_beside(model: torch.nn.Module) -> concurrent.futures.Future:
    """The model's fingerprint, hashed in a thread beside the embedding: the weights are copied to the
    host here first (the device is idle now; a copy in the thread would wait behind every batch queued
    since), and the thread hashes them (SHA-256 lets other threads run)."""
    from dinov2_dense.checkpoints import fingerprint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fingerprint")
    try:
        return pool.submit(fingerprint, state)
    finally:
        pool.shutdown(wait=False)


# settings added since the first stores, with the value those stores were made with
_SETTINGS_BEFORE = {"resize_8bit": False, "autocast": None, "weights_dtype": None}
# what makes the rows themselves (two stores alike in these hold comparable rows), and what else a store is
ROW_SETTINGS = ("weights", "forward", "weights_dtype", "size", "pooling", "resize_8bit", "autocast")
_STORE_SETTINGS = ("version", *ROW_SETTINGS, "dtype", "count")
_REUSE_SETTINGS = ("version", *ROW_SETTINGS, "dtype")  # a finished store alike in these gives rows of its images


class _Unrecorded:
    """A setting that stores predate and whose value then is not known (``forward``: the backbone's settings
    that change no tensor): alike any value, so that their rows stay valid."""

    def __eq__(self, other) -> bool:
        return True

    def __ne__(self, other) -> bool:
        return False

    __hash__ = None

    def __repr__(self) -> str:
        return "unrecorded"


def made_with(settings: dict, keys: Sequence[str] = _STORE_SETTINGS) -> dict:
    """``settings`` (of a store, or to make one) in ``keys``, those a store predates as they were then (for
    comparisons only: an unrecorded ``forward`` is alike any)."""
    return {k: settings.get(k, _Unrecorded() if k == "forward" else _SETTINGS_BEFORE.get(k)) for k in keys}


def _stored_settings(path: Path) -> dict:
    """The settings a store (``store.json``) or a partial one (``partial.json``) records, those it
    predates filled in as they were then: a store made before an option stays valid without it."""
    data = json.loads(path.read_text())
    return {**_SETTINGS_BEFORE, **data} if isinstance(data, dict) else {}


def _dim(model: torch.nn.Module, pooling: str) -> int:
    return int(model.embed_dim) * (2 if pooling == "cls+mean" else 1)


def _file_stats(paths: Sequence[str]) -> np.ndarray:
    """(N, 2) int64: each file's size and modification time in ns (:func:`~dinov2_dense.fileio.file_stamp`,
    as knn's feature cache keys them); -1, -1 for a file that cannot be looked at (missing)."""
    from dinov2_dense.fileio import file_stamp

    return np.array([file_stamp(path) or (-1, -1) for path in paths], dtype=np.int64).reshape(len(paths), 2)


def _changed(record: Path, made: Path, stats: np.ndarray) -> tuple[np.ndarray, bool]:
    """Which files (a mask) changed since their rows were made, and whether that is known from a
    record (``record``: the stats when the rows were made). Without one (a store made before it), a
    file modified since ``made`` (its store.json or partial.json) was written, or gone, counts as changed."""
    with contextlib.suppress(OSError, ValueError):
        before = np.load(record, allow_pickle=False)
        if before.shape == stats.shape:
            return (before != stats).any(axis=1), True
    return (stats[:, 1] >= made.stat().st_mtime_ns) | (stats[:, 0] < 0), False


def _say_changed(out: Path, n: int, known: bool, kept: int, changed: int = 0, new: int = 0, gone: int = 0,
                 unreadable: int = 0, raised: str | None = None, listed: int = 0) -> None:
    """One line: how the ``n`` images differ from those whose rows are kept (``kept`` of them), and what is
    embedded; ``unreadable``: images listed unreadable before and unchanged, ``listed`` of them staying so
    (not read again), the others tried again (``raised``: how the pixel limit was raised, why)."""
    how = "size or modification time" if known else "modified since this store, which has no record of its files, was made"
    why = f": the pixel limit is raised, {raised}" if raised else ""
    notes = []
    if listed:
        notes.append(f"{listed} unchanged and listed unreadable, not read again")
    if unreadable - listed:
        notes.append(f"{unreadable - listed} of them unreadable before, tried again{why}")
    again = f" ({'; '.join(notes)})" if notes else ""
    print(f"{out}: {new} new image(s), {gone} gone, {changed} changed since they were embedded ({how}), {kept} kept; "
          f"embedding {n - kept - listed} of the {n}{again}", file=sys.stderr)


def _limit_recorded(settings: dict) -> int:
    """The pixel limit a store's settings record (0 = none); a store made before the record, or with an
    unreadable one, was made under the default."""
    value = settings.get("max_pixels")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    from dinov2_dense.images import default_max_pixels

    return default_max_pixels()


def _raised(before: int, now: int) -> str | None:
    """How the pixel limit went from ``before`` to ``now`` when it is higher now (0 = none: above any); else None."""
    if before == 0 or (now != 0 and now <= before):
        return None
    return f"{before:,} -> {f'{now:,}' if now else 'none'}"


def _say_settings(out: Path, done: dict, settings: dict, n: int) -> None:
    """One line: which settings the finished store in ``out`` was made with, unlike ``settings``."""
    a, b = made_with(done, _REUSE_SETTINGS), made_with(settings, _REUSE_SETTINGS)

    def shown(key: str, value) -> str:
        if key == "weights_dtype":
            return str(value or "float32")
        return str(value)[:12] if key == "weights" else ("off" if value in (None, False) else str(value))

    differ = ", ".join(f"{k} {shown(k, a[k])} -> {shown(k, b[k])}" for k in _REUSE_SETTINGS if a[k] != b[k])
    why = f"its rows were made with other settings ({differ})" if done else "its store.json cannot be read"
    print(f"{out}: {why}; embedding all {n} images again", file=sys.stderr)


def partial_progress(folder: str | os.PathLike) -> tuple[int, int] | None:
    """(images embedded, images) of the resumable partial store in ``folder``; None when there is none."""
    folder = Path(folder)
    if not ((folder / "partial.json").is_file() and (folder / "status.partial.npy").is_file()):
        return None
    try:
        status = np.load(folder / "status.partial.npy", mmap_mode="r", allow_pickle=False)
        return int((status == DONE).sum()), len(status)
    except (OSError, ValueError):
        return None


def check_size(model: torch.nn.Module, size: int) -> None:
    """Refuse an image size off the model's patch grid: each image would be resized twice (to the size,
    then onto the grid), into other rows than one resize to the grid gives."""
    from dinov2_dense.features import check_on_grid

    try:
        check_on_grid((size,), int(getattr(model, "patch_size", 1)), f"--size {size}")
    except ValueError as exc:
        raise CurationError(str(exc)) from None


def embed_images(model: torch.nn.Module, images: str | os.PathLike | Sequence[str], out: str | os.PathLike, *,
                 size: int = 224, pooling: str = "cls", batch_size: int = 32, dtype: str = "float32",
                 autocast: bool | torch.dtype = False, progress: bool | None = None,
                 num_workers: int = 0, chunk: int = 65536, resize_8bit: bool = False) -> EmbeddingStore:
    """Embed every image of ``images`` (see :func:`list_images`) into the store folder ``out``.

    Each image is read upright, resized to ``size`` x ``size`` and run through ``model``
    (:func:`dinov2_dense.features.extract_features`); ``pooling`` ``cls`` (default) keeps the class
    token after the final norm. Rows are ``dtype`` (``float32`` or ``float16``). An unreadable image
    is listed in ``unreadable.txt`` with its reason and counted, never fatal. Resumable: see the
    module's docstring. ``num_workers``: DataLoader workers that decode and resize the images while
    the model runs (pinned memory and non-blocking copies on CUDA). ``resize_8bit``: resize 8-bit
    images in 8 bits (:func:`dinov2_dense.features.load_resized`: about 4x faster decoding on a CPU,
    rows slightly changed; default False); ``autocast`` (True: bfloat16, or a dtype): the forward pass
    under torch.autocast. Both are part of the store's settings (with the weights, ``size``,
    ``pooling`` and ``dtype``), so a store made with another setting is neither reused nor resumed.
    Returns the finished store (memory-mapped). When no image can be read, :class:`NothingReadable`:
    all of them gone, before anything is written; all unreadable, once read, with the partial store this
    call began removed (and ``out``, if this call made it): an earlier run's store stays as it was."""
    from dinov2_dense.evaluation.knn import POOLINGS, read_rows
    from dinov2_dense.features import batch_parts, map_in_workers
    from dinov2_dense.images import max_pixels

    if pooling not in POOLINGS:
        raise CurationError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
    if dtype not in ("float32", "float16"):
        raise CurationError(f"dtype={dtype!r}: expected float32 or float16")
    if batch_size < 1 or size < 14:
        raise CurationError(f"batch_size={batch_size}, size={size}: expected batch_size >= 1 and size >= 14")
    check_size(model, size)
    try:
        limit = max_pixels()  # recorded: a store's unreadable images are read again only under a raised limit
    except ValueError as exc:
        raise CurationError(str(exc)) from None
    out = Path(out)
    paths = list_images(images)
    n, d = len(paths), _dim(model, pooling)
    stats = _file_stats(paths)  # before any image is read: a file changed after this is embedded again next time
    if n and (stats[:, 0] < 0).all():  # every file gone (deleted, unmounted): nothing is read, nor written
        raise NothingReadable(f"none of the {n} images could be read (first: {paths[0]}: {_why_not_there(paths[0])})")
    device = next(model.parameters()).device
    # a bf16/fp16 model casts its input anyway: the workers hand over that dtype (half the bytes to move);
    # 8-bit resized images travel as uint8 (a quarter) and are normalised on the model's device
    weights = next(model.parameters()).dtype
    carry = weights if weights in (torch.bfloat16, torch.float16) and not autocast else torch.float32
    read = functools.partial(read_rows, paths=paths, hw=(size, size), dtype=carry, resize_8bit=resize_8bit)
    loader = None

    def start(todo: np.ndarray):
        parts, ends = batch_parts(todo, batch_size, num_workers)
        return map_in_workers(read, parts, num_workers, pin_memory=device), ends

    def settings_of(weights: str | None = None) -> dict:
        return {**_settings(model, size, pooling, dtype, resize_8bit, weights, autocast), "count": n,
                "max_pixels": limit}

    made = not out.exists()  # on no readable image, what this call made is removed (_undo_partial)
    fresh = not (out / "partial.json").is_file()  # no resumable partial store of an earlier run
    hashing = None
    if not (out / "store.json").is_file() and not (out / "partial.json").is_file():
        # nothing to reuse or resume: the workers start decoding now, and the weights are hashed beside
        # the embedding (partial.json, which makes the partial store resumable, is written once known)
        loader = start(np.arange(n))
        hashing = _fingerprint_beside(model)
    try:
        settings = None if hashing is not None else settings_of()
        out.mkdir(parents=True, exist_ok=True)
        partial = None  # (rows, status) of the partial store to complete
        if settings is not None:
            # an interrupted run with these inputs and settings first (it is newer than a finished store
            # beside it: a finish removes it), then a finished store, with its changed images to do again
            partial = _resume(out, paths, d, settings, stats)
            if partial is None and (out / "embeddings.npy").is_file() and (out / "store.json").is_file():
                try:
                    done = _stored_settings(out / "store.json")
                except (OSError, ValueError):  # unreadable: embedded afresh
                    done = {}
                if made_with(done, _REUSE_SETTINGS) != made_with(settings, _REUSE_SETTINGS):
                    _say_settings(out, done, settings, n)
                else:
                    partial = _refresh(out, paths, d, settings, stats, chunk, _raised(_limit_recorded(done), limit))
                    if partial is None:  # finished with the same inputs, files, settings and limit
                        if progress is not False:
                            print(f"{out}: the {n} image(s) are unchanged since they were embedded: the store is "
                                  "used as it is", file=sys.stderr)
                        return load_embeddings(out)
        if partial is None:
            if (out / "partial.json").is_file():
                warnings.warn(f"{out}: an interrupted embedding run with other inputs or settings is there; "
                              "starting afresh", stacklevel=2)
            partial = _new_partial(out, paths, d, dtype, stats, settings)
        rows, status = partial
        # images listed unreadable with their reason (carried over from a finished store) are not read again;
        # others marked unreadable (by a run cut short, the reasons not kept) are tried again
        bad = np.flatnonzero(status[:] == UNREADABLE)
        listed = _listed_reasons(out / "unreadable.partial.txt", {paths[i]: int(i) for i in bad})
        status[bad[~np.isin(bad, list(listed))]] = PENDING
        todo = np.flatnonzero(status[:] == PENDING)
        if loader is None:
            loader = start(todo)
        settled = _Settings(out, settings, hashing, settings_of)
        try:
            return _embed(model, loader, out, paths, stats, rows, status, settled, len(todo), batch_size=batch_size,
                          dtype=dtype, pooling=pooling, autocast=autocast, progress=progress, chunk=chunk,
                          carry=carry, reasons=listed)
        except NothingReadable:
            _undo_partial(out, fresh, made)
            raise
    finally:
        if loader is not None:
            loader[0].close()  # its workers stop (a no-op once done)


def _why_not_there(path: str) -> str:
    """Why ``path``, which cannot be looked at, is no image, as reading it would say."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return "no such image file"
    except OSError as exc:
        return exc.strerror or str(exc)
    return "no such image file"  # there now


def _undo_partial(out: Path, fresh: bool, made: bool) -> None:
    """After no image could be read: remove the partial store this call made (``fresh``: there was no
    resumable one before; one of an earlier interrupted run stays, to resume), and ``out`` itself if this
    call ``made`` it and it is left empty. A finished store beside it is untouched (its ``store.json`` is
    removed only once a row is to be written)."""
    if fresh:
        for name in _PARTIAL:
            with contextlib.suppress(OSError):
                (out / name).unlink(missing_ok=True)
    if made:
        with contextlib.suppress(OSError):  # not empty: kept
            out.rmdir()


def _new_partial(out: Path, paths: list[str], d: int, dtype: str, stats: np.ndarray, settings: dict | None,
                 keep: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None, chunk: int = 65536,
                 bad: dict[int, str] | None = None):
    """A partial store for ``paths`` (any other removed), its files allocated on disk (a full disk is an
    error here); ``keep``: (rows of ``paths``, rows of a finished store's array holding them, which to
    keep) copied in and marked done; ``bad``: {row: reason} of images a finished store lists unreadable,
    marked so with their reasons (``unreadable.partial.txt``), not to be read again. ``partial.json`` last
    (once ``settings`` are known): the partial store is complete from there on."""
    for name in _PARTIAL:
        (out / name).unlink(missing_ok=True)
    write_text(out / "inputs.partial.txt", "\n".join(paths) + "\n")
    rows = new_memmap(out / "embeddings.partial.npy", (len(paths), d), np.dtype(dtype))
    status = new_memmap(out / "status.partial.npy", (len(paths),), np.uint8)
    if keep is not None:
        where, old, stay = keep
        for start in range(0, len(where), chunk):
            take = stay[start:start + chunk]
            rows[where[start:start + chunk][take]] = np.asarray(old[start:start + chunk])[take]
        rows.flush()
        status[where[stay]] = DONE
    if bad:
        write_text(out / "unreadable.partial.txt", "".join(f"{paths[i]}\t{why}\n" for i, why in sorted(bad.items())))
        status[sorted(bad)] = UNREADABLE
    status.flush()
    write_npy(out / "stats.partial.npy", stats)
    if settings is not None:
        write_json(out / "partial.json", settings)
    return rows, status


def _resume(out: Path, paths: list[str], d: int, settings: dict, stats: np.ndarray):
    """(rows, status) of the partial store in ``out`` when made from ``paths`` with ``settings``, the
    images changed since marked to do again; None when there is no such partial store."""
    rows_file, status_file = out / "embeddings.partial.npy", out / "status.partial.npy"
    if not ((out / "partial.json").is_file() and rows_file.is_file() and status_file.is_file()):
        return None
    try:
        made = _stored_settings(out / "partial.json")
        if made_with(made) != made_with(settings) or _read_names(out / "inputs.partial.txt") != paths:
            return None
        rows = np.lib.format.open_memmap(rows_file, mode="r+")
        status = np.lib.format.open_memmap(status_file, mode="r+")
    except (OSError, ValueError, CurationError):
        return None
    n = len(paths)
    if rows.shape != (n, d) or status.shape != (n,):
        return None
    if _raised(_limit_recorded(made), settings["max_pixels"]):  # the images listed unreadable are read again
        (out / "unreadable.partial.txt").unlink(missing_ok=True)
    changed, known = _changed(out / "stats.partial.npy", out / "partial.json", stats)
    changed &= status[:] != PENDING  # (an unreadable one listed with its reason is read again too)
    if changed.any():
        bad = np.flatnonzero((status[:] == UNREADABLE) & ~changed)
        listed = len(_listed_reasons(out / "unreadable.partial.txt", {paths[i]: int(i) for i in bad}))
        _say_changed(out, n, known, int(((status[:] == DONE) & ~changed).sum()), changed=int(changed.sum()),
                     unreadable=listed, listed=listed)
        status[changed] = PENDING
        status.flush()  # before the new record: a row of a changed file is never left done under it
    if changed.any() or not known:
        write_npy(out / "stats.partial.npy", stats)
    done = int((status[:] == DONE).sum())
    if done:
        print(f"{out}: resuming; {done} of {n} images already embedded", file=sys.stderr)
    return rows, status


def _refresh(out: Path, paths: list[str], d: int, settings: dict, stats: np.ndarray, chunk: int,
             raised: str | None):
    """A finished store made with ``settings``: None when it holds the rows of ``paths`` as they are (the
    same images in the same order, none changed since, and, unless the pixel limit is ``raised`` (how, for
    the message), none listed unreadable: no image is read to tell); else a partial store of ``paths``
    holding the store's rows of the images still listed and unchanged (matched by name), to embed the
    others: new, changed, or unreadable before."""
    try:
        before = _read_names(out / "inputs.txt")
        names = _read_names(out / "names.txt")
        old = np.load(out / "embeddings.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):  # CurationError among them
        before, names, old = None, [], None
    line = {p: i for i, p in enumerate(before or ())}  # each earlier input's line in inputs.txt
    if old is None or old.shape != (len(names), d) or len(line) != len(before) or any(m not in line for m in names):
        print(f"{out}: the store's files do not agree (rows, names.txt, inputs.txt); embedding all {len(paths)} "
              "images again", file=sys.stderr)
        return _new_partial(out, paths, d, settings["dtype"], stats, settings)
    at = np.array([line.get(p, -1) for p in paths], dtype=np.int64)  # -1: new
    was = at >= 0
    changed = np.zeros(len(paths), dtype=bool)
    recorded = None
    with contextlib.suppress(OSError, ValueError):
        recorded = np.load(out / "stats.npy", allow_pickle=False)
    known = recorded is not None and recorded.shape == (len(before), 2)
    if known:
        changed[was] = (recorded[at[was]] != stats[was]).any(axis=1)
    else:  # a store made before the record: a file modified since its store.json was written, or gone
        changed[was] = (stats[was, 1] >= (out / "store.json").stat().st_mtime_ns) | (stats[was, 0] < 0)
    index = {p: i for i, p in enumerate(paths)}
    where = np.array([index.get(name, -1) for name in names], dtype=np.int64)  # each row's image now; -1: gone
    has_row = np.zeros(len(paths), dtype=bool)
    has_row[where[where >= 0]] = True
    unreadable = was & ~has_row & ~changed  # listed unreadable before, unchanged since
    keep = has_row & ~changed
    if before == paths and not changed.any() and not (raised and unreadable.any()):
        if not known:  # the record from now on
            write_npy(out / "stats.npy", stats)
        return None
    # under the same limit an unchanged unreadable image stays listed with its reason, not read again
    bad = {} if raised else _listed_reasons(out / "unreadable.txt", {paths[i]: i for i in np.flatnonzero(unreadable)})
    _say_changed(out, len(paths), known, int(keep.sum()), changed=int(changed.sum()), new=int((~was).sum()),
                 gone=len(before) - int(was.sum()), unreadable=int(unreadable.sum()), raised=raised, listed=len(bad))
    stay = np.zeros(len(where), dtype=bool)
    stay[where >= 0] = keep[where[where >= 0]]
    return _new_partial(out, paths, d, settings["dtype"], stats, settings, keep=(where, old, stay), chunk=chunk,
                        bad=bad)


def _listed_reasons(path: Path, wanted: dict[str, int]) -> dict[int, str]:
    """{row: reason} of the ``wanted`` names ({name: row}) that ``path`` (``unreadable.txt``: a name, a tab,
    the reason, a line) lists; names it does not list (or an unreadable file) are left out."""
    found: dict[int, str] = {}
    if not wanted:
        return found
    try:
        lines = _lines(read_names_text(path))
    except (OSError, UnicodeDecodeError):
        return found
    for line in lines:
        at = line.find("\t")
        while at >= 0:  # a name may hold a tab: the first split that gives a wanted name
            if line[:at] in wanted:
                found[wanted[line[:at]]] = line[at + 1:]
                break
            at = line.find("\t", at + 1)
    return found


class _Settings:
    """A store's settings, known at once or once the weights' hash (a future) is done; the first
    time they are known here, ``partial.json`` is written: the partial store is complete from then on."""

    def __init__(self, out: Path, settings: dict | None, hashing: concurrent.futures.Future | None, settings_of):
        self.out, self.value, self.hashing, self.settings_of = out, settings, hashing, settings_of

    def settle(self, wait: bool = False) -> dict | None:
        """The settings (waiting for the hash with ``wait``; else None while it runs)."""
        if self.value is None and (wait or self.hashing.done()):
            self.value = self.settings_of(self.hashing.result())
            write_json(self.out / "partial.json", self.value)
        return self.value


def _embed(model: torch.nn.Module, loader, out: Path, paths: list[str], stats: np.ndarray, rows: np.ndarray,
           status: np.ndarray, settings: _Settings, count: int, *, batch_size: int, dtype: str, pooling: str,
           autocast: bool | torch.dtype, progress: bool | None, chunk: int, carry: torch.dtype,
           reasons: dict[int, str]) -> EmbeddingStore:
    """:func:`embed_images`' loop over ``loader`` (``count`` images to do) into the partial store;
    ``carry``: the dtype of the decoded batches (see :func:`dinov2_dense.features.join_parts`); ``reasons``:
    why the images already marked unreadable are (grows with those found here)."""
    from tqdm.auto import tqdm

    from dinov2_dense.evaluation.knn import pool_features
    from dinov2_dense.features import HostCopy, NonfiniteFeaturesError, extract_features, join_parts, to_model_input

    device = next(model.parameters()).device
    show = progress if progress is not None else count > batch_size
    model_was_training = model.training
    model.eval()
    pending: list[np.ndarray] = []  # rows written but not yet marked done on disk
    last_sync = time.monotonic()

    def sync() -> None:
        """Rows to disk first, then their done marks: a row marked done is on disk (a kill or a crash
        between the two leaves it to do again). Batched, since each flush waits for the disk."""
        nonlocal last_sync
        if pending:
            rows.flush()
            status[np.concatenate(pending)] = DONE
            pending.clear()
        status.flush()
        last_sync = time.monotonic()

    in_flight: list = []  # (rows, pooled features on their way to this process): at most one batch

    def store_in_flight() -> None:
        for where, pooled in in_flight:
            rows[where] = pooled.wait().numpy().astype(dtype)  # waits for that batch's copy, not for the next batch
            pending.append(np.asarray(where))
        in_flight.clear()

    batch_rows: list[int] = []  # the readable rows of the batch being gathered, and their images on the device
    batch: list[Tensor] = []
    try:
        with torch.no_grad(), tqdm(total=count, desc="embedding images", unit="img", disable=not show) as bar:
            for (where, x, bad), ends in zip(*loader):
                for i, reason in bad:  # missing, corrupt, unknown format, over the pixel limit: listed, never fatal
                    reasons[i] = reason
                    status[i] = UNREADABLE
                if where:
                    batch_rows += where
                    batch.append(to_model_input(x, device))
                if ends and batch:
                    x = join_parts(batch, carry)
                    try:
                        feats = extract_features(model, x, fit="resize", autocast=autocast, progress=False)
                    except NonfiniteFeaturesError as exc:
                        raise exc.named([paths[r] for r in batch_rows]) from None
                    pooled = HostCopy(pool_features(feats, pooling).float())
                    store_in_flight()  # the previous batch, while this one runs on the device
                    in_flight.append((batch_rows, pooled))
                    batch_rows, batch = [], []
                settings.settle()  # partial.json once the weights' hash is known
                if time.monotonic() - last_sync > SYNC_SECONDS:
                    sync()
                bar.update(len(where) + len(bad))
        store_in_flight()
    except BaseException:
        with contextlib.suppress(Exception):  # a failed device: that batch is embedded again on resuming
            store_in_flight()  # interrupted while the next batch was queued: this one is done
        with contextlib.suppress(Exception):  # the rows done so far stay resumable
            settings.settle(wait=True)
        raise
    finally:
        sync()
        model.train(model_was_training)
    return _finish(out, paths, stats, rows, status, reasons, settings.settle(wait=True), chunk)


def _finish(out: Path, paths: list[str], stats: np.ndarray, rows: np.ndarray, status: np.ndarray,
            reasons: dict[int, str], settings: dict, chunk: int) -> EmbeddingStore:
    """Copy the readable rows into ``embeddings.npy`` (in chunks), write the names, the unreadable
    list, the inputs and their stats, each atomically, and ``store.json`` last, then drop the partial
    files. ``store.json`` is removed first: a finish cut short (a full disk, a kill) leaves no
    finished store, only the partial one, which the next run completes (or replaces)."""
    good = np.flatnonzero(status[:] == DONE)
    bad = np.flatnonzero(status[:] == UNREADABLE)
    if len(good) == 0:
        first = f"{paths[bad[0]]}{': ' + reasons[int(bad[0])] if int(bad[0]) in reasons else ''}" if len(bad) else "?"
        raise NothingReadable(f"none of the {len(paths)} images could be read (first: {first})")
    (out / "store.json").unlink(missing_ok=True)
    with atomic_path(out / "embeddings.npy") as tmp:
        final = new_memmap(tmp, (len(good), rows.shape[1]), rows.dtype)
        for start in range(0, len(good), chunk):
            final[start:start + chunk] = rows[good[start:start + chunk]]
        final.flush()
        del final
    write_text(out / "names.txt", "".join(paths[i] + "\n" for i in good))
    write_text(out / "unreadable.txt", "".join(f"{paths[i]}\t{reasons.get(int(i), 'unreadable')}\n" for i in bad))
    write_text(out / "inputs.txt", "\n".join(paths) + "\n")
    write_npy(out / "stats.npy", stats)
    write_json(out / "store.json", {**settings, "rows": int(len(good)), "unreadable": int(len(bad))})
    for name in _PARTIAL:
        (out / name).unlink(missing_ok=True)
    if len(bad):
        warnings.warn(f"{out}: {len(bad)} of {len(paths)} images could not be read; listed in "
                      f"{out / 'unreadable.txt'}", stacklevel=4)
    return load_embeddings(out)
