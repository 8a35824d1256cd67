"""k-means over memory-mapped rows, hierarchical k-means with resampling, and balanced sampling.

Follows Vo et al. 2024, "Automatic data curation for self-supervised learning" (the
facebookresearch/ssl-data-curation code is the reference for the semantics):

- :func:`kmeans`: Lloyd's algorithm with squared Euclidean distances, k-means++ (greedy, 2 + log k
  local trials, as scikit-learn and the reference) or random initialisation. Rows are read in chunks
  (the pool need not fit in memory); sums are accumulated in float64. Under torch.distributed each
  process takes a contiguous share of the rows and the centroid sums, counts and inertia are
  all-reduced, so every process holds the same centroids, equal to one process's to float tolerance.
- :func:`hierarchical_kmeans`: level 1 clusters the rows, level l + 1 the centroids of level l; at
  each level, ``resample_steps`` times, ``sample_sizes[l]`` points are taken from every cluster
  (closest to its centroid, or at random), k-means is run on them alone and every point is assigned
  again: centroids move from the dense regions toward an even cover of the data.
- :func:`balanced_sample`: an equal share of the target per top-level cluster (capped by its size, the
  rest shared among the larger ones), recursively down the tree; at the bottom, points at random or
  closest to their centroid.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["KMeansResult", "HierarchicalClusters", "assign", "balanced_sample", "hierarchical_kmeans", "kmeans",
           "cluster_tree_sizes"]

_MEMORY = 2 ** 22  # elements of the (chunk x k) distance block: 16 MB in float32, which stays in cache


@dataclass
class KMeansResult:
    centroids: np.ndarray  # (k, D) float32
    assignment: np.ndarray  # (N,) int64
    sqdist: np.ndarray  # (N,) float32: squared distance to the assigned centroid
    inertia: float  # sum of sqdist (float64)
    iterations: int


@dataclass
class HierarchicalClusters:
    """``levels[l]``: the k-means of level l + 1 (level 1 over the rows, level l + 1 over level l's
    centroids). ``row_clusters[:, l]``: the level-(l + 1) cluster of every row."""

    levels: list[KMeansResult] = field(default_factory=list)
    #: per level: the points taken from each cluster in its resampling steps, and the steps run (none where a
    #: cluster gives one point: k-means on one point a cluster gives back those points)
    sample_sizes: list[int] = field(default_factory=list)
    resampled: list[int] = field(default_factory=list)

    @property
    def row_clusters(self) -> np.ndarray:
        cols = [self.levels[0].assignment]
        for level in self.levels[1:]:
            cols.append(level.assignment[cols[-1]])
        return np.stack(cols, axis=1)


# -- distributed helpers -----------------------------------------------------------------------
def _world() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(n: int, rank: int, world: int) -> tuple[int, int]:
    return round(n * rank / world), round(n * (rank + 1) / world)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _world()[1] > 1:
        torch.distributed.all_reduce(t)
    return t


def _all_gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """The rows every process computed for its share, in order (one process: as it is)."""
    rank, world = _world()
    if world == 1:
        return local
    sizes = [b - a for a, b in (_share(n, r, world) for r in range(world))]
    width = max(sizes)  # gloo gathers equal sizes: pad each share to the largest, then trim
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


# -- k-means -----------------------------------------------------------------------------------
def _chunk(k: int, chunk_size: int | None) -> int:
    return max(1, chunk_size or max(256, _MEMORY // max(k, 1)))


def _rows(x: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` as a float32 tensor: a view of an in-memory float32 array (the training
    sample: no second copy of it), else a copy (memory maps are read-only; other dtypes convert)."""
    block = x[start:stop]
    if isinstance(block, np.ndarray) and not isinstance(block, np.memmap) and block.dtype == np.float32 \
            and block.flags.writeable and block.flags.c_contiguous:
        return torch.from_numpy(block)
    return torch.from_numpy(np.array(block, dtype=np.float32))


def _nearest(block: torch.Tensor, c: torch.Tensor, c_sq: torch.Tensor,
             block_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, squared distance) of each row's nearest centroid."""
    d = torch.addmm(c_sq[None, :], block, c.T, alpha=-2.0)  # |c|^2 - 2 x.c ; |x|^2 added after the min
    best, idx = d.min(dim=1)
    if block_sq is None:
        block_sq = torch.einsum("ij,ij->i", block, block)
    return idx, (best + block_sq).clamp_min_(0.0)


_IN_MEMORY = 2 ** 31  # bytes of training rows held as one tensor across the iterations (else read in chunks)


def _training_chunks(train: np.ndarray, lo: int, hi: int, step: int):
    """A function giving [(rows, squared norms)] of this process's share: held in memory when small
    enough (read once), else read from ``train`` at every call."""
    if (hi - lo) * train.shape[1] * 4 <= _IN_MEMORY:
        held = []
        for start in range(lo, hi, step):
            block = _rows(train, start, min(start + step, hi))
            held.append((block, torch.einsum("ij,ij->i", block, block)))
        return lambda: held

    def read():
        for start in range(lo, hi, step):
            block = _rows(train, start, min(start + step, hi))
            yield block, torch.einsum("ij,ij->i", block, block)
    return read


def assign(x: np.ndarray, centroids: np.ndarray | torch.Tensor, *, chunk_size: int | None = None,
           progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, squared distance) of every row, in chunks; under torch.distributed each
    process computes its share and all receive the whole."""
    from tqdm.auto import tqdm

    c = torch.as_tensor(np.asarray(centroids, dtype=np.float32))
    c_sq = (c * c).sum(dim=1)
    n = len(x)
    rank, world = _world()
    lo, hi = _share(n, rank, world)
    step = _chunk(len(c), chunk_size)
    idx, sq = torch.empty(hi - lo, dtype=torch.int64), torch.empty(hi - lo, dtype=torch.float32)
    for start in tqdm(range(lo, hi, step), desc="assigning", unit="chunk", disable=not progress or rank != 0,
                      file=sys.stderr):
        stop = min(start + step, hi)
        idx[start - lo:stop - lo], sq[start - lo:stop - lo] = _nearest(_rows(x, start, stop), c, c_sq)
    return _all_gather_rows(idx, n).numpy(), _all_gather_rows(sq, n).numpy()


def _sample_rows(x: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    order = np.argsort(indices)
    rows = np.asarray(x[indices[order]], dtype=np.float32)  # sorted reads of a memory map
    out = np.empty_like(rows)
    out[order] = rows
    return torch.from_numpy(out)


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, sample: int) -> torch.Tensor:
    """Greedy k-means++ on ``sample`` rows drawn by ``rng`` (every process draws the same):
    distances in float32, potentials and their cumulative sums in float64."""
    n = len(x)
    pick = np.sort(rng.choice(n, size=sample, replace=False)) if sample < n else np.arange(n)
    data = _sample_rows(x, pick)
    m = len(data)
    sq = (data * data).sum(dim=1)
    trials = 2 + int(math.log(k))
    centres = torch.empty((k, data.shape[1]), dtype=torch.float32)
    first = int(rng.integers(m))
    centres[0] = data[first]
    closest = (sq - 2 * data @ data[first] + sq[first]).clamp_min_(0.0).double()
    for c in range(1, k):
        pot = float(closest.sum())
        if pot <= 0:  # fewer distinct rows than clusters: repeat rows
            cand = torch.as_tensor(rng.integers(m, size=1))
        else:
            cand = torch.searchsorted(torch.cumsum(closest, 0), torch.as_tensor(rng.random(trials) * pot))
            cand = cand.clamp_(max=m - 1)
        d = torch.addmm(sq[cand][None, :], data, data[cand].T, alpha=-2.0).add_(sq[:, None]).clamp_min_(0.0)
        d = torch.minimum(closest[:, None], d.double())
        best = int(d.sum(dim=0).argmin())
        centres[c] = data[cand[best]]
        closest = d[:, best].contiguous()
    return centres


def kmeans(x: np.ndarray, k: int, *, n_iters: int = 20, init: str = "kmeans++", seed: int = 0,
           max_points_per_centroid: int | None = 256, init_sample: int | None = None, chunk_size: int | None = None,
           progress: bool = False, tol: float = 0.0) -> KMeansResult:
    """k-means of the rows of ``x`` (an array or a memory map, (N, D)) into ``k`` clusters.

    ``max_points_per_centroid``: the Lloyd iterations run on at most ``k`` times this many rows drawn
    at random (faiss's rule; None: all rows), then every row is assigned. ``init``: ``kmeans++``
    (on ``init_sample`` training rows, default 64 k) or ``random`` (k distinct rows).
    ``tol``: stop when the inertia improves by less than this fraction. Deterministic for a seed, the
    same in one process and under torch.distributed (to float tolerance)."""
    from tqdm.auto import tqdm

    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: expected 1 <= k <= the number of rows ({n})")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init={init!r}: expected 'kmeans++' or 'random'")
    rng = np.random.default_rng(seed)
    train = x
    if max_points_per_centroid and n > k * max_points_per_centroid:
        pick = np.sort(rng.choice(n, size=k * max_points_per_centroid, replace=False))
        train = _sample_rows(x, pick).numpy()
    m = len(train)
    step = _chunk(k, chunk_size)
    if init == "random":
        c = _sample_rows(train, np.sort(rng.choice(m, size=k, replace=False)))
    else:
        c = _kmeans_pp(train, k, rng, min(m, init_sample or 64 * k))
    rank, world = _world()
    lo, hi = _share(m, rank, world)
    previous = math.inf
    it = 0
    bar = tqdm(range(n_iters), desc=f"k-means k={k}", unit="it", disable=not progress or rank != 0, file=sys.stderr)
    chunks = _training_chunks(train, lo, hi, step)
    for it in bar:
        c_sq = (c * c).sum(dim=1)
        sums = torch.zeros((k, c.shape[1]), dtype=torch.float64)
        stats = torch.zeros(k + 1, dtype=torch.float64)  # counts, then the inertia
        for block, block_sq in chunks():
            idx, sq = _nearest(block, c, c_sq, block_sq)
            # float32 sums within a chunk, float64 across chunks (and processes)
            sums += torch.zeros((k, c.shape[1]), dtype=torch.float32).index_add_(0, idx, block)
            stats[:k] += torch.bincount(idx, minlength=k)
            stats[k] += float(sq.sum(dtype=torch.float64))
        _all_reduce(sums)
        _all_reduce(stats)
        counts, inertia = stats[:k], float(stats[k])
        filled = counts > 0
        c = c.clone()
        c[filled] = (sums[filled] / counts[filled, None]).float()  # an empty cluster keeps its centroid
        bar.set_postfix(inertia=f"{inertia:.4g}", empty=int((~filled).sum()))
        if tol > 0 and previous < math.inf and previous - inertia <= tol * previous:
            break
        previous = inertia
    assignment, sqdist = assign(x, c, chunk_size=chunk_size)
    return KMeansResult(c.numpy(), assignment, sqdist, float(sqdist.astype(np.float64).sum()), it + 1)


def _members(assignment: np.ndarray, k: int) -> list[np.ndarray]:
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(k + 1))
    return [order[bounds[i]:bounds[i + 1]] for i in range(k)]


def _resample(x: np.ndarray, result: KMeansResult, k: int, size: int, strategy: str, rng: np.random.Generator,
              kw: dict) -> KMeansResult:
    """One resampling step: ``size`` points from each cluster, k-means on them, everyone reassigned."""
    picks = []
    for members in _members(result.assignment, k):
        if len(members) <= size:
            picks.append(members)
        elif strategy == "closest":
            picks.append(members[np.argsort(result.sqdist[members], kind="stable")[:size]])
        else:
            picks.append(rng.choice(members, size=size, replace=False))
    chosen = np.sort(np.concatenate(picks))
    if len(chosen) < k:  # empty clusters left too few points to place k centroids: keep this result
        return result
    sub = kmeans(_sample_rows(x, chosen).numpy(), min(k, len(chosen)), seed=int(rng.integers(2 ** 31)),
                 max_points_per_centroid=None, **kw)
    assignment, sqdist = assign(x, sub.centroids, chunk_size=kw.get("chunk_size"))
    return KMeansResult(sub.centroids, assignment, sqdist, float(sqdist.astype(np.float64).sum()), sub.iterations)


def hierarchical_kmeans(x: np.ndarray, clusters: list[int], *, resample_steps: list[int] | int = 0,
                        sample_sizes: list[int] | None = None, sample_strategy: str = "closest", init: str = "kmeans++",
                        n_iters: int = 20, seed: int = 0, max_points_per_centroid: int | None = 256,
                        chunk_size: int | None = None, progress: bool = False) -> HierarchicalClusters:
    """Hierarchical k-means with resampling over the rows of ``x`` (see the module's docstring).

    ``clusters``: k of each level, from the finest (e.g. ``[1000, 200, 50, 10]``); ``resample_steps``:
    per level (or one value for all); ``sample_sizes``: points taken per cluster in those steps,
    default half the mean cluster size of the level, rounded up (the reference configs' rule: 10, 5 and 3
    for mean sizes 20, 10 and 5). A level whose sample size is 1 is not resampled (``resampled`` says
    which were)."""
    if not clusters or any(k < 1 for k in clusters):
        raise ValueError(f"clusters={clusters}: expected one k >= 1 per level")
    if any(b > a for a, b in zip(clusters, clusters[1:])):
        raise ValueError(f"clusters={clusters}: each level must have at most as many clusters as the one below")
    if clusters[0] > len(x):
        raise ValueError(f"clusters={clusters}: level 1 asks for {clusters[0]} clusters of only {len(x)} rows")
    if sample_strategy not in ("closest", "random"):
        raise ValueError(f"sample_strategy={sample_strategy!r}: expected 'closest' or 'random'")
    levels = len(clusters)
    steps = [resample_steps] * levels if isinstance(resample_steps, int) else list(resample_steps)
    if len(steps) != levels:
        raise ValueError(f"resample_steps={resample_steps}: one value per level ({levels})")
    sizes_in = [len(x)] + clusters[:-1]
    sizes = list(sample_sizes) if sample_sizes is not None else [max(1, math.ceil(n / k / 2))
                                                                 for n, k in zip(sizes_in, clusters)]
    if len(sizes) != levels:
        raise ValueError(f"sample_sizes={sample_sizes}: one value per level ({levels})")
    rng = np.random.default_rng(seed)
    kw = dict(n_iters=n_iters, init=init, chunk_size=chunk_size)
    out = HierarchicalClusters(sample_sizes=sizes)
    data = x
    for level, k in enumerate(clusters):
        result = kmeans(data, k, seed=int(rng.integers(2 ** 31)), max_points_per_centroid=max_points_per_centroid,
                        progress=progress and level == 0, **kw)  # the higher levels take moments
        out.resampled.append(0)
        for _ in range(steps[level] if sizes[level] > 1 else 0):
            resampled = _resample(data, result, k, sizes[level], sample_strategy, rng, kw)
            out.resampled[-1] += resampled is not result  # (kept: too few points to place k centroids)
            result = resampled
        out.levels.append(result)
        if progress and _world()[0] == 0:
            counts = np.bincount(result.assignment, minlength=k)
            print(f"level {level + 1}: {k} clusters of {len(data)} points (sizes {counts.min()}-{counts.max()})",
                  file=sys.stderr)
        data = result.centroids
    return out


def cluster_tree_sizes(tree: HierarchicalClusters) -> list[np.ndarray]:
    """Rows under each cluster of each level."""
    rows = tree.row_clusters
    return [np.bincount(rows[:, l], minlength=len(tree.levels[l].centroids)) for l in range(rows.shape[1])]


def _water_fill(sizes: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Per-cluster shares of ``target``: equal, capped by each size, the remainder spread at random
    over the clusters that still have points (the reference's "best cut")."""
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.sum() <= target:
        return sizes.copy()
    lo, hi = 0, int(sizes.max())
    while hi - lo > 1:  # the largest cut whose capped sum stays within the target
        mid = (lo + hi) // 2
        if np.minimum(sizes, mid).sum() <= target:
            lo = mid
        else:
            hi = mid
    share = np.minimum(sizes, lo)
    rest = target - int(share.sum())
    if rest:
        share[rng.choice(np.flatnonzero(sizes > lo), size=rest, replace=False)] += 1
    return share


def balanced_sample(tree: HierarchicalClusters, target: int, *, strategy: str = "random", seed: int = 0) -> np.ndarray:
    """``target`` row indices, balanced over the tree (see the module's docstring), sorted.
    ``strategy``: ``random`` or ``closest`` (to the level-1 centroid)."""
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy={strategy!r}: expected 'random' or 'closest'")
    rng = np.random.default_rng(seed)
    rows = tree.row_clusters
    n_rows, levels = rows.shape
    if target > n_rows:
        raise ValueError(f"target={target}: larger than the {n_rows} rows")
    sqdist = tree.levels[0].sqdist
    # the children of every cluster of level l + 1 among the clusters of level l
    children = [_members(tree.levels[l].assignment, len(tree.levels[l].centroids)) for l in range(1, levels)]
    bottom = _members(rows[:, 0], len(tree.levels[0].centroids))
    sizes = cluster_tree_sizes(tree)
    chosen: list[np.ndarray] = []

    def take(level: int, cluster: int, count: int) -> None:
        if count <= 0:
            return
        if level == 0:
            members = bottom[cluster]
            if count >= len(members):
                chosen.append(members)
            elif strategy == "closest":
                chosen.append(members[np.argsort(sqdist[members], kind="stable")[:count]])
            else:
                chosen.append(rng.choice(members, size=count, replace=False))
            return
        subs = children[level - 1][cluster]
        for sub, share in zip(subs, _water_fill(sizes[level - 1][subs], count, rng)):
            take(level - 1, int(sub), int(share))

    top = levels - 1
    for cluster, share in enumerate(_water_fill(sizes[top], target, rng)):
        take(top, cluster, int(share))
    picked = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    assert len(picked) == target, (len(picked), target)
    return picked
