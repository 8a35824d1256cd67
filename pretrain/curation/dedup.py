"""Near-duplicate removal and retrieval on L2-normalised embeddings, through faiss.

Similarities are cosine similarities (inner products of L2-normalised rows). The index is
``IndexFlatIP`` (exact) up to ``ivf_above`` rows (default 200,000) and ``IndexIVFFlat`` above it
(inner product, ``nlist`` = 2 sqrt(N) lists trained on 64 rows per list, ``nprobe`` 16 by default:
near-duplicates fall in the same or a neighbouring list, so recall stays close to exact while each
query scans about 16 / (2 sqrt(N)) of the pool). Rows are normalised and added in chunks, and queries run in chunks; the index
itself holds N x D float32 (1.5 GB for 1 M x 384).

Duplicates: every pair with similarity above the threshold is an edge; the connected components are
the groups (so A~B and B~C group A, B, C even if A and C are further apart); one row per group is
kept: ``first`` (the first by name) or ``central`` (the highest mean similarity to the rest of its
group).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["DedupResult", "build_index", "deduplicate", "normalized", "retrieve", "similar_pairs"]

IVF_ABOVE = 200_000
DEFAULT_NPROBE = 16


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("curation needs faiss: pip install faiss-cpu") from None
    return faiss


def normalized(x: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` of ``x`` as float32, L2-normalised."""
    block = np.array(x[start:stop], dtype=np.float32)
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    return block / np.maximum(norms, 1e-12)


def build_index(x: np.ndarray, *, ivf_above: int = IVF_ABOVE, nlist: int | None = None,
                nprobe: int = DEFAULT_NPROBE, chunk: int = 65536, seed: int = 0, progress: bool = False):
    """An inner-product faiss index of the normalised rows of ``x`` (see the module's docstring)."""
    from tqdm.auto import tqdm

    faiss = _faiss()
    n, d = x.shape
    if n <= ivf_above:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = nlist or max(1, min(int(2 * np.sqrt(n)), n // 39))  # faiss wants 39+ training rows a list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))
        train = np.concatenate([normalized(x[pick[i:i + chunk]]) for i in range(0, len(pick), chunk)])
        index.train(train)
        index.nprobe = nprobe
    for start in tqdm(range(0, n, chunk), desc="indexing", unit="chunk", disable=not progress, file=sys.stderr):
        index.add(normalized(x, start, start + chunk))
    return index


def similar_pairs(x: np.ndarray, threshold: float, *, index=None, chunk: int = 16384, progress: bool = False,
                  **index_kw) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``(i, j)``, ``i < j``, whose cosine similarity exceeds ``threshold``: (i, j, sim)."""
    from tqdm.auto import tqdm

    if not -1.0 <= threshold < 1.0:
        raise ValueError(f"threshold={threshold}: expected a cosine similarity in [-1, 1)")
    index = index if index is not None else build_index(x, progress=progress, **index_kw)
    rows, cols, sims = [], [], []
    for start in tqdm(range(0, len(x), chunk), desc="near-duplicates", unit="chunk", disable=not progress,
                      file=sys.stderr):
        lims, dist, ids = index.range_search(normalized(x, start, start + chunk), float(threshold))
        lims = lims.astype(np.int64)
        query = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims))
        keep = ids > query
        rows.append(query[keep])
        cols.append(ids[keep])
        sims.append(dist[keep])
    return (np.concatenate(rows).astype(np.int64), np.concatenate(cols).astype(np.int64),
            np.concatenate(sims).astype(np.float32))


@dataclass
class DedupResult:
    keep: np.ndarray  # sorted indices of the rows kept
    removed: np.ndarray  # indices of the rows removed
    kept_for: np.ndarray  # for each removed row, the kept row of its group
    groups: int  # groups of two or more rows
    pairs: int  # pairs above the threshold


def _components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def deduplicate(x: np.ndarray, names: Sequence[str], threshold: float = 0.9, *, keep: str = "first",
                progress: bool = False, **index_kw) -> DedupResult:
    """Group rows whose cosine similarity exceeds ``threshold`` (connected components) and keep one
    per group (see the module's docstring)."""
    if keep not in ("first", "central"):
        raise ValueError(f"keep={keep!r}: expected 'first' or 'central'")
    n = len(x)
    i, j, _ = similar_pairs(x, threshold, progress=progress, **index_kw)
    label = _components(n, i, j)
    counts = np.bincount(label)
    in_group = np.flatnonzero(counts[label] > 1)
    order = in_group[np.argsort(label[in_group], kind="stable")]
    bounds = np.flatnonzero(np.diff(label[order])) + 1
    removed, kept_for = [], []
    for members in np.split(order, bounds) if len(order) else []:
        if keep == "first":
            winner = min(members, key=lambda r: (names[r], r))
        else:
            v = normalized(x[np.sort(members)])
            winner = np.sort(members)[int((v @ v.T).sum(axis=1).argmax())]
        others = members[members != winner]
        removed.append(others)
        kept_for.append(np.full(len(others), winner))
    removed_arr = np.concatenate(removed) if removed else np.zeros(0, np.int64)
    kept_arr = np.concatenate(kept_for) if kept_for else np.zeros(0, np.int64)
    order = np.argsort(removed_arr)
    mask = np.ones(n, bool)
    mask[removed_arr] = False
    return DedupResult(np.flatnonzero(mask), removed_arr[order], kept_arr[order], len(removed), len(i))


def retrieve(pool: np.ndarray, seeds: np.ndarray, *, k: int | None = 8, threshold: float | None = None,
             index=None, chunk: int = 16384, **index_kw) -> np.ndarray:
    """Pool rows close to a curated seed set (the DINOv2 retrieval step): the ``k`` nearest
    neighbours of each seed, or (``threshold``) every pool row above that similarity to some seed.
    Sorted unique pool indices."""
    if (k is None) == (threshold is None):
        raise ValueError("retrieve: give either k (neighbours per seed) or threshold (a similarity)")
    if k is not None and k < 1:
        raise ValueError(f"k={k}: expected at least 1")
    if seeds.shape[1] != pool.shape[1]:
        raise ValueError(f"the seeds have {seeds.shape[1]} dimensions, the pool {pool.shape[1]}: embed both with "
                         "the same backbone")
    index = index if index is not None else build_index(pool, **index_kw)
    found = []
    for start in range(0, len(seeds), chunk):
        q = normalized(seeds, start, start + chunk)
        if k is not None:
            _, ids = index.search(q, min(k, len(pool)))
            found.append(ids[ids >= 0].ravel())
        else:
            _, _, ids = index.range_search(q, float(threshold))
            found.append(ids)
    return np.unique(np.concatenate(found)).astype(np.int64)
