"""The whole curation pipeline (``dinov2-dense curate``): embed, deduplicate, retrieve, cluster, sample.

Order, as in the DINOv2 paper: the pool's near-duplicates are removed first; with a curated seed set,
the pool is then reduced to the seeds' neighbours (retrieval); what remains is clustered by
hierarchical k-means with resampling, and ``target`` rows are drawn with an equal share per cluster,
recursively down the tree.

The output folder receives (after every step has run, each file written to a temporary beside it, then all
renamed together: a failure while writing, a full disk say, leaves an earlier run's results, never some of
each run's; only a kill between two renames could):
``selected.txt`` (one name a line: for images, absolute paths, so that a pretraining config takes
the file as its data set; a relative name of a names file that is a file relative to that names file's
folder is written as that file's absolute path, other names as given), ``duplicates.txt`` (each removed
name, a tab, the name it duplicates),
``clusters.npy`` (int64 (N, levels): every pool row's cluster at every level, -1 for rows removed
before clustering), ``cluster_sizes.png``, ``report.md`` and ``report.html`` (self-contained), and
``summary.json``. Embeddings of images go to ``<out>/embeddings`` (resumable).
"""

from __future__ import annotations

import base64
import html
import io
import fnmatch
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from dinov2_dense.fileio import MARKER, AtomicFiles

from .dedup import DEFAULT_NPROBE, IVF_ABOVE, deduplicate, retrieve
from .kmeans import HierarchicalClusters, balanced_sample, cluster_tree_sizes, hierarchical_kmeans
from .store import (ROW_SETTINGS, CurationError, EmbeddingStore, NothingReadable, check_size, embed_images,
                    embedding_settings, list_images, load_embeddings, made_with, partial_progress)

__all__ = ["Rows", "curate", "default_clusters", "interrupted_stores", "is_embeddings", "normalized_entropy",
           "shortfall"]

STORES = ("embeddings", "seed_embeddings")  # the embedding stores of images, in the output folder

RESULTS = ("selected.txt", "duplicates.txt", "clusters.npy", "cluster_sizes.png", "report.md", "report.html",
           "summary.json")


class Rows:
    """Rows ``indices`` of a (memory-mapped) array, read on demand (slices and index arrays)."""

    def __init__(self, x: np.ndarray, indices: np.ndarray):
        self.x, self.indices = x, np.asarray(indices, dtype=np.int64)
        self.shape = (len(self.indices), x.shape[1])
        self.dtype = x.dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key) -> np.ndarray:
        return np.asarray(self.x[self.indices[key]])


def is_embeddings(path: str | os.PathLike) -> bool:
    """An ``.npy`` file or a store folder (``embeddings.npy`` inside, or what an interrupted embedding run
    leaves: ``partial.json``, ``embeddings.partial.npy``; read, it says so), rather than images."""
    p = Path(path)
    return p.suffix.lower() == ".npy" or (p.is_dir() and any(
        (p / name).is_file() for name in ("embeddings.npy", "store.json", "partial.json", "embeddings.partial.npy")))


def _per_level(steps: Sequence[int] | int, levels: int) -> list[int]:
    return [steps] * levels if isinstance(steps, int) else list(steps)


def default_clusters(n: int, levels: int) -> list[int]:
    """k per level for ``n`` rows: from ``min(n // 20, 10000)`` at level 1 down to ``sqrt(n) / 2`` at
    the top, geometrically (at least 2 each, never more than the level below, nor than ``n``: one row,
    what deduplication can leave of a pool of near-copies, is one cluster)."""
    if n < 2:
        return [1] * levels
    first = max(2, min(n // 20, 10_000))
    top = max(2, min(first, round(math.sqrt(n) / 2)))
    if levels == 1:
        return [first]
    ratio = (top / first) ** (1 / (levels - 1))
    ks = [max(2, round(first * ratio ** l)) for l in range(levels)]
    for l in range(1, levels):
        ks[l] = min(ks[l], ks[l - 1])
    return ks


def normalized_entropy(labels: np.ndarray, num_classes: int | None = None) -> float:
    """Entropy of the label distribution divided by log(number of classes): 1 for a uniform mix."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes or 0).astype(np.float64)
    k = len(counts) if num_classes is None else num_classes
    p = counts[counts > 0] / counts.sum()
    # (+ 0.0: one class gives -0.0, which printed as "-0.000")
    return float(-(p * np.log(p)).sum() / math.log(k)) + 0.0 if k > 1 else 1.0


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _broadcast(obj):
    """Rank 0's ``obj`` on every process (as it is in one process)."""
    rank, world = _rank()
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _lists_files_in(spec: str, out: Path) -> bool:
    """Whether the input ``spec`` would list files written in ``out``: a folder holding ``out`` (or
    equal to it), or a glob pattern that matches its cluster_sizes.png (a recursive one, ``**``, when
    ``out`` lies under its fixed folder and its file-name part matches that name)."""
    where = out.resolve()
    if Path(spec).is_dir():
        folder = Path(spec).resolve()
        return where == folder or folder in where.parents
    if Path(spec).is_file() or not any(c in spec for c in "*?["):
        return False  # a list file names its images one by one
    parts = Path(os.path.abspath(spec)).parts
    fixed = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
    if "**" in parts:  # any depth below the fixed folder: the file name decides
        folder = Path(*parts[:fixed]).resolve()
        return (where == folder or folder in where.parents) and fnmatch.fnmatch("cluster_sizes.png", parts[-1])
    return Path(os.path.abspath(out / "cluster_sizes.png")).match(os.path.abspath(spec))


def check_out_dir(out: Path, overwrite: bool, inputs: Sequence[str]) -> None:
    """Refuse a file in the way, a folder of someone else's files, our inputs inside it, ``out`` inside
    an input folder (a later run would take our outputs, e.g. cluster_sizes.png, for pool images), or
    earlier results without ``overwrite`` (the embeddings of an earlier run are kept and reused)."""
    if out.exists() and not out.is_dir():
        raise CurationError(f"--out {out} is a file; give a folder")
    for item in inputs:
        p = Path(item).resolve()
        if out.resolve() == p or out.resolve() in p.parents:
            raise CurationError(f"--out {out} holds this command's input {item}; choose another folder")
        if _lists_files_in(item, out):
            raise CurationError(f"--out {out} is inside the input {item}: a later run would take this run's outputs "
                                "(cluster_sizes.png) for images; choose a folder outside it")
    if not out.is_dir():
        return
    entries = {p.name for p in out.iterdir()}
    if entries and MARKER not in entries:
        raise CurationError(f"--out {out} holds files that dinov2-dense did not write ({', '.join(sorted(entries)[:3])}"
                            "); choose another folder")
    done = sorted(entries & set(RESULTS))
    if done and not overwrite:
        raise CurationError(f"--out {out} holds the results of an earlier run ({', '.join(done[:3])}): pass "
                            "--overwrite to replace them (its embeddings are reused), or choose another folder")


def _undo_out(out: Path, made: bool, marked: bool) -> None:
    """Remove the marker this run wrote (``marked``) and the folder it made (``made``), once nothing else is
    in it: the embeddings of an earlier run, or a pool store this run finished before its seeds failed, stay."""
    if {p.name for p in out.iterdir()} - {MARKER}:
        return
    if marked:
        (out / MARKER).unlink(missing_ok=True)
    if made:
        out.rmdir()


def interrupted_stores(out: str | os.PathLike) -> list[tuple[Path, int, int]]:
    """The embedding stores of ``out`` that an interrupted run left to resume: (folder, images
    embedded, images)."""
    found = [(Path(out) / what, partial_progress(Path(out) / what)) for what in STORES]
    return [(folder, *progress) for folder, progress in found if progress is not None]


def _setting(key: str, value) -> str:
    if key == "weights":
        return f"weights {str(value)[:12]}"
    if key == "weights_dtype":
        return f"weights_dtype {value or 'float32'}"
    if key in ("resize_8bit", "autocast"):
        return f"{key} {value or 'off'}" if value is not True else f"{key} on"
    return f"{key} {value}"


def _option(key: str, value, made: str) -> str:
    """The option that embeds images with ``value`` for setting ``key``; ``made``: what was made so."""
    if key == "weights":
        return f"the --model/--weights that made {made}"
    if key == "weights_dtype":
        name = {None: "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(value)
        return f"--dtype {name}" if name else f"weights in {value}"
    if key in ("size", "pooling"):
        return f"--{key} {value}"
    if key == "forward":
        return f"the architecture file that made {made} ({value})"
    if key == "resize_8bit":
        return "--resize-8bit" if value else "without --resize-8bit"
    return "--bf16" if value == "bfloat16" else ("without --bf16" if value is None else f"autocast {value} (API only)")


def _check_made_alike(pool: dict | None, seeds: dict | None, inputs: str, seeds_source: str, model,
                      embed_kw: dict) -> None:
    """Refuse seeds and a pool embedded with different settings (weights, size, pooling, 8-bit
    resize, autocast): their rows are compared by cosine similarity. ``pool`` / ``seeds``: the
    settings of a precomputed store (``{}`` when unknown: an .npy); None for images embedded here."""
    if pool is None and seeds is None or pool == {} or seeds == {}:
        return  # both embedded here alike; or an .npy, which records nothing (only its dimensions are compared)
    here = None if pool is not None and seeds is not None else embedding_settings(model, **embed_kw)
    a = made_with(pool if pool is not None else here, ROW_SETTINGS)
    b = made_with(seeds if seeds is not None else here, ROW_SETTINGS)
    differ = [k for k in ROW_SETTINGS if a[k] != b[k]]
    if not differ:
        return
    also = ""
    if "weights_dtype" in differ and "weights" in differ:  # their hash differs with the dtype: name the dtype
        differ.remove("weights")
        also = " (and the same --model/--weights, which their dtype alone tells apart)"
    what = "; ".join(f"{_setting(k, a[k])} for the pool, {_setting(k, b[k])[len(k) + 1:]} for the seeds" for k in differ)
    if pool is not None and seeds is not None:
        fix = "embed one of them again with the other's settings"
    else:
        made, theirs = (inputs, a) if pool is not None else (seeds_source, b)
        fix = f"embed the {'seeds' if pool is not None else 'pool'} as {made} was: " + ", ".join(
            _option(k, theirs[k], made) for k in differ) + also
    raise CurationError(f"--seeds {seeds_source}: seeds and pool embedded differently ({what}); {fix}")


def _load_or_embed(source: str, images: list[str] | None, what: str, out: Path, model, names, embed_kw: dict,
                   progress: bool) -> EmbeddingStore:
    """The rows of ``source``: read (embeddings) or made into ``out / what`` from ``images``, its listed images."""
    if images is None:
        return load_embeddings(source, names)
    from dinov2_dense.distributed import agree_to_start

    rank, _ = _rank()
    # process 0 embeds while the others wait; where it cannot (no readable image), it stops them all, saying why
    store = agree_to_start(lambda: embed_images(model, images, out / what, progress=progress, **embed_kw), rank == 0)
    return store if store is not None else load_embeddings(out / what)


def _read_inputs(inputs, out: Path, target: int, model, names, dedup_threshold, seeds, seeds_names, levels: int,
                 clusters, resample_steps, overwrite: bool, embed_kw: dict) -> tuple:
    """:func:`curate`'s options checked and its inputs read, before anything is written: (the pool's rows or
    None, its listed images or None, the seeds' rows or None, their listed images or None)."""
    if target < 1:
        raise CurationError(f"--target {target}: expected at least 1")
    if levels < 1:
        raise CurationError(f"--levels {levels}: expected at least 1")
    levels = len(clusters) if clusters is not None else levels
    if resample_steps is not None and not isinstance(resample_steps, int) and len(resample_steps) != levels:
        raise CurationError(f"--resample-steps {','.join(map(str, resample_steps))}: {len(resample_steps)} value(s) "
                            f"for {levels} k-means levels (--clusters, --levels); give one per level, finest first")
    if dedup_threshold is not None and not -1 <= dedup_threshold < 1:
        raise CurationError(f"--dedup-threshold {dedup_threshold}: expected a cosine similarity below 1")
    sources = [str(inputs)] + ([str(seeds)] if seeds is not None else [])
    check_out_dir(out, overwrite, sources)
    pool, listed, seed_store, seed_images = None, None, None, None
    for source in sources:
        if not is_embeddings(source) and model is None:
            raise CurationError(f"{source}: images need a backbone to embed them (--model or --weights)")
        if not is_embeddings(source):
            check_size(model, embed_kw.get("size", 224))
    if is_embeddings(inputs):
        pool = load_embeddings(inputs, names)
        if target > len(pool):
            raise CurationError(f"--target {target}: larger than the pool ({len(pool)} rows in {inputs})")
    else:
        listed = list_images(inputs)  # once: embed_images takes this list (a repeated path is told once)
        if target > len(listed):
            raise CurationError(f"--target {target}: larger than the pool ({len(listed)} images in {inputs})")
    pool_size = len(pool) if pool is not None else len(listed)
    if clusters is not None:
        ks = list(clusters)
        if min(ks) < 1 or any(b > a for a, b in zip(ks, ks[1:])) or ks[0] > pool_size:
            unit = "rows" if pool is not None else "images (fewer rows once unreadable and duplicate ones are out)"
            raise CurationError(f"--clusters {','.join(map(str, ks))}: expected at least 1 cluster a level, no more "
                                f"than the level below, and at most the pool's {pool_size} {unit} at level 1")
    if seeds is not None and is_embeddings(seeds):
        seed_store = load_embeddings(seeds, seeds_names)
    elif seeds is not None:
        seed_images = list_images(seeds)
    if seeds is not None:
        _check_made_alike(None if pool is None else pool.settings or {},
                          None if seed_store is None else seed_store.settings or {}, str(inputs), str(seeds), model,
                          embed_kw)
    return pool, listed, seed_store, seed_images


def curate(inputs: str | os.PathLike, out: str | os.PathLike, target: int, *, model=None,
           names: str | os.PathLike | None = None, dedup_threshold: float | None = 0.9, keep: str = "first",
           seeds: str | os.PathLike | None = None, seeds_names: str | os.PathLike | None = None,
           seeds_k: int | None = 8, seeds_threshold: float | None = None, levels: int = 4,
           clusters: Sequence[int] | None = None, resample_steps: Sequence[int] | int | None = None,
           sample_strategy: str = "closest", sampling: str = "random", n_iters: int = 20, seed: int = 0,
           ivf_above: int = IVF_ABOVE, nprobe: int = DEFAULT_NPROBE, overwrite: bool = False, progress: bool = True,
           embed_kw: dict | None = None) -> dict:
    """Run the pipeline (see the module's docstring); returns the summary written to ``summary.json``.

    Under torch.distributed every process reads and checks what the user gave; one that refuses it (a missing
    pool or names file) stops every process at once (:func:`~dinov2_dense.distributed.agree_to_start`)."""
    from dinov2_dense.distributed import agree_to_start

    out = Path(out)
    rank, _ = _rank()
    embed_kw = dict(embed_kw or {})
    # everything the user gave is read and checked before anything is written
    pool, listed, seed_store, seed_images = agree_to_start(lambda: _read_inputs(
        inputs, out, target, model, names, dedup_threshold, seeds, seeds_names, levels, clusters, resample_steps,
        overwrite, embed_kw), main=True)
    if clusters is not None:
        levels = len(clusters)
    if seeds_threshold is not None:
        seeds_k = None
    made_out, made_marker = not out.exists(), not (out / MARKER).exists()
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).touch()
    try:
        if pool is None:
            pool = _load_or_embed(str(inputs), listed, STORES[0], out, model, None, embed_kw, progress)
        if seed_store is None and seeds is not None:
            seed_store = _load_or_embed(str(seeds), seed_images, STORES[1], out, model, seeds_names, embed_kw,
                                        progress)
    except NothingReadable:  # bad input: the store this run began is gone (embed_images), and so is its folder
        if rank == 0:
            _undo_out(out, made_out, made_marker)
        raise
    if seed_store is not None and seed_store.embeddings.shape[1] != pool.embeddings.shape[1]:
        raise CurationError(f"{seeds}: {seed_store.embeddings.shape[1]}-dimensional seeds for a "
                            f"{pool.embeddings.shape[1]}-dimensional pool; embed both with the same backbone")
    x, n = pool.embeddings, len(pool)
    say = (lambda *a: print(*a, file=sys.stderr)) if progress and rank == 0 else (lambda *a: None)
    # what the results need read with (not progress): said with --no-progress too
    note = (lambda *a: print(*a, file=sys.stderr)) if rank == 0 else (lambda *a: None)

    # 1. near-duplicates (rank 0; the others wait for the result)
    dedup = None
    if dedup_threshold is not None:
        if rank == 0:
            say(f"deduplicating {n} rows (cosine similarity > {dedup_threshold})")
            dedup = deduplicate(x, pool.names, dedup_threshold, keep=keep, progress=progress, ivf_above=ivf_above,
                                nprobe=nprobe)
        dedup = _broadcast(dedup)
        rows = dedup.keep
        say(f"  {len(dedup.removed)} near-duplicates removed in {dedup.groups} groups; {len(rows)} rows left")
        if rank == 0 and 2 * len(dedup.removed) > n:
            warnings.warn(_crowded(x, len(dedup.removed), dedup_threshold), stacklevel=2)
    else:
        rows = np.arange(n)
    # 2. retrieval around the seeds
    retrieved = None
    if seed_store is not None:
        found = None
        if rank == 0:
            found = retrieve(Rows(x, rows), seed_store.embeddings, k=seeds_k, threshold=seeds_threshold,
                             ivf_above=ivf_above, nprobe=nprobe)
        rows = rows[_broadcast(found)]
        retrieved = len(rows)
        say(f"  retrieval: {retrieved} rows near the {len(seed_store)} seeds")
    if len(rows) == 0:
        raise CurationError("no rows left to sample from after deduplication and retrieval")
    # 3. hierarchical k-means with resampling (all processes share the rows)
    ks = list(clusters) if clusters is not None else default_clusters(len(rows), levels)
    if ks[0] > len(rows):
        raise CurationError(f"--clusters {','.join(map(str, ks))}: level 1 asks for {ks[0]} clusters of only "
                            f"{len(rows)} rows (those left after unreadable images, deduplication and retrieval; "
                            "the embeddings are kept: a rerun with fewer clusters reuses them)")
    steps = resample_steps if resample_steps is not None else [0] + [10] * (len(ks) - 1)
    say(f"hierarchical k-means: {len(ks)} levels, clusters {ks}, resampling steps {steps}")
    tree = hierarchical_kmeans(Rows(x, rows), ks, resample_steps=steps, sample_strategy=sample_strategy,
                               n_iters=n_iters, seed=seed, progress=progress)
    skipped = [level + 1 for level, (asked, run) in enumerate(zip(_per_level(steps, len(ks)), tree.resampled))
               if asked and not run]
    if skipped:
        note(f"  not resampled: level(s) {', '.join(map(str, skipped))}, whose clusters hold 2 points or fewer of the "
            "level below on average (a resampling step takes half of them, rounded up: one point a cluster leaves "
            "nothing to re-fit); fewer clusters at those levels (--clusters) or fewer --levels give them more")
    # 4. balanced sampling
    short = len(rows) < target
    picked = rows[balanced_sample(tree, min(target, len(rows)), strategy=sampling, seed=seed)]
    summary = {
        "pool": n, "target": target, "selected": int(len(picked)), "short_of_target": bool(short),
        "duplicates_removed": int(len(dedup.removed)) if dedup else 0, "duplicate_groups": dedup.groups if dedup else 0,
        "dedup_threshold": dedup_threshold, "retrieved": retrieved, "clustered": int(len(rows)), "clusters": ks,
        "resample_steps": steps, "resampled": tree.resampled, "sample_sizes": tree.sample_sizes,
        "sample_strategy": sample_strategy, "sampling": sampling, "seed": seed,
        "source": str(inputs), "unreadable": len(pool.unreadable),
    }
    if short:
        note(f"only {len(rows)} rows left ({shortfall(summary)}): all of them are selected (--target {target})")
    summary = _with_entropies(summary, tree, rows, picked, len(pool))
    if rank == 0:
        _write_results(out, pool, rows, picked, dedup, tree, summary)
        say(f"selected {len(picked)} of {n}: {out / 'selected.txt'} (report: {out / 'report.html'})")
    return summary


def _crowded(x: np.ndarray, removed: int, threshold: float, sample: int = 1000) -> str:
    """What to do when near-duplicate removal took ``removed`` rows, more than half of ``x``: the median
    cosine similarity of two rows (of ``sample`` rows at most, drawn at random) says how alike the
    backbone embeds any two images; weights early in training embed most images alike."""
    n = len(x)
    at = np.sort(np.random.default_rng(0).choice(n, min(n, sample), replace=False))
    rows = np.asarray(x[at], dtype=np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    median = float(np.median((rows @ rows.T)[np.triu_indices(len(rows), 1)]))
    drawn = f" ({len(rows):,} rows drawn)" if len(rows) < n else ""
    # (a threshold is below 1: above a median of 1 there is none to give; one just below it shows its digits)
    way = ("give a --dedup-threshold above that median, or --no-dedup" if median < 1 - 1e-6 else
           "--no-dedup (no --dedup-threshold, which is below 1, lies above that median)")
    shown = f"{median:.3f}" if median < 0.9995 or median >= 1 - 1e-6 else f"{median:.6f}"
    return (f"near-duplicate removal took {removed:,} of the {n:,} rows (cosine similarity > {threshold}); the "
            f"median similarity of two rows is {shown}{drawn}. That is right for a pool of copies; otherwise "
            f"the backbone embeds most images alike (weights early in training do): {way}")


def shortfall(summary: dict) -> str:
    """Why fewer rows than the target were left to select from (a ``summary`` short of its target): the
    steps that took rows away from the images or rows given."""
    why = []
    if summary["unreadable"]:
        why.append(f"{summary['unreadable']} of the {summary['pool'] + summary['unreadable']} images unreadable")
    if summary["duplicates_removed"]:
        why.append(f"{summary['duplicates_removed']} near-duplicates removed")
    if summary["retrieved"] is not None:
        why.append(f"{summary['retrieved']} retrieved near the seeds")
    return ", ".join(why) or "fewer rows than the target"


def _table(tree: HierarchicalClusters, rows: np.ndarray, n: int) -> np.ndarray:
    """(n, levels) cluster of every pool row at every level; -1 for rows not clustered."""
    table = np.full((n, len(tree.levels)), -1, dtype=np.int64)
    table[rows] = tree.row_clusters
    return table


def _with_entropies(summary: dict, tree: HierarchicalClusters, rows: np.ndarray, picked: np.ndarray, n: int) -> dict:
    table = _table(tree, rows, n)
    k = len(tree.levels[-1].centroids)
    return {**summary, "top_clusters": k, "top_cluster_entropy_pool": normalized_entropy(table[rows, -1], k),
            "top_cluster_entropy_selected": normalized_entropy(table[picked, -1], k)}


def _located(name: str, root: str | None) -> str:
    """``name`` as selected.txt gives it: the absolute path of a relative name that is a file relative to
    ``root`` (the names file's folder), for pretraining reads relative names against selected.txt's folder."""
    if root is None or os.path.isabs(name) or not os.path.isfile(os.path.join(root, name)):
        return name
    return os.path.abspath(os.path.join(root, name))


def _write_results(out: Path, pool: EmbeddingStore, rows: np.ndarray, picked: np.ndarray, dedup, tree:
                   HierarchicalClusters, summary: dict) -> None:
    """Every result into a temporary beside it, then all renamed together (selected.txt last): a failure
    (a full disk) leaves the earlier run's results, never some of each run's."""
    names = pool.names
    table = _table(tree, rows, len(pool))
    sizes = cluster_tree_sizes(tree)
    top = table[picked, -1]
    after = np.bincount(top, minlength=len(sizes[-1]))
    png = _plot_sizes(sizes[-1], after, sizes[0], np.bincount(table[picked, 0], minlength=len(sizes[0])))
    md, page = _report(summary, png)
    with AtomicFiles() as files:
        files.write_npy(out / "clusters.npy", table)
        files.write_text(out / "duplicates.txt", "".join(f"{names[r]}\t{names[k]}\n" for r, k in
                                                         zip(dedup.removed, dedup.kept_for)) if dedup else "")
        files.write_bytes(out / "cluster_sizes.png", png)
        files.write_text(out / "report.md", md)
        files.write_text(out / "report.html", page)
        files.write_json(out / "summary.json", summary)
        files.write_text(out / "selected.txt", "".join(_located(names[i], pool.root) + "\n" for i in picked))


def _plot_sizes(before_top: np.ndarray, after_top: np.ndarray, before_l1: np.ndarray, after_l1: np.ndarray) -> bytes:
    from dinov2_dense.viz.figures import _figure

    fig = _figure(10, 3.6, 100)
    axes = fig.subplots(1, 2)
    for ax, before, after, title in ((axes[0], before_top, after_top, "top-level clusters"),
                                     (axes[1], before_l1, after_l1, "level-1 clusters")):
        order = np.argsort(-before, kind="stable")
        ax.bar(np.arange(len(order)), before[order], width=1.0, color="#9bb7d4", label="pool (clustered rows)")
        ax.bar(np.arange(len(order)), after[order], width=0.6, color="#d9534f", label="selected")
        ax.set_yscale("log")
        ax.set_xlabel(f"{title}, largest first")
        ax.set_ylabel("rows")
        ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _report(summary: dict, png: bytes) -> tuple[str, str]:
    lines = [
        ("pool rows", summary["pool"]), ("unreadable images", summary["unreadable"]),
        ("near-duplicates removed", f"{summary['duplicates_removed']} in {summary['duplicate_groups']} groups "
                                    f"(threshold {summary['dedup_threshold']})"
         if summary["dedup_threshold"] is not None else "off (--no-dedup)"),
        ("retrieved near the seeds", summary["retrieved"] if summary["retrieved"] is not None else "no seeds"),
        ("rows clustered", summary["clustered"]), ("clusters per level", ", ".join(map(str, summary["clusters"]))),
        ("selected", f"{summary['selected']} (target {summary['target']})"),
        ("top-level cluster entropy, pool", f"{summary['top_cluster_entropy_pool']:.3f}"),
        ("top-level cluster entropy, selected", f"{summary['top_cluster_entropy_selected']:.3f}"),
    ]
    md = ["# Curation report", "", f"Source: `{summary['source']}`", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in lines]
    md += ["", "Normalised entropy of the top-level cluster of each row: 1.0 when every cluster is equally "
           "represented.", "", "![cluster sizes](cluster_sizes.png)", ""]
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in lines)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Curation report</title><style>body{{font-family:"
            f"sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}</style></head><body><h1>Curation report</h1>"
            f"<p>Source: <code>{html.escape(summary['source'])}</code></p><table>{rows}</table><p>Cluster sizes "
            f"before and after (log scale):</p><img alt='cluster sizes' src='data:image/png;base64,"
            f"{base64.b64encode(png).decode()}'></body></html>")
    return "\n".join(md), page
