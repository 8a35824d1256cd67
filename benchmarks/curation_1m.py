"""Curation at scale on this machine: 1,000,000 x 384 float32 embeddings, memory-mapped.

    python benchmarks/curation_1m.py [--rows 1000000] [--dim 384] [--clusters 1000,200,50,10]

Prints, in one run:
1. one level of our k-means against ``faiss.Kmeans`` on the same data, k and iterations (both train
   on at most 256 rows per centroid, faiss's rule; inertia measured on every row for both): time,
   inertia and their ratios;
2. the whole hierarchical k-means with resampling: wall time and peak memory (RSS high-water mark);
3. near-duplicate removal of the same rows (IVF index, 0.9 cosine), with 1% injected near-duplicates:
   time, peak memory, and recall / precision on the injected ones.
The data: a mixture of 4,000 unit-norm centres (sizes drawn from a power law) plus noise, so that it has
structure as real embeddings do. Each step runs in a fresh child process so that its peak memory is
its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_data(path: Path, n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered rows written to ``path`` in chunks; returns the indices of the injected duplicates'
    sources (the last 1% of rows copy them with small noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4000, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.pareto(1.2, size=4000) + 1e-3
    weights /= weights.sum()
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    n_dup = n // 100
    base = n - n_dup
    for start in range(0, base, 100_000):
        stop = min(start + 100_000, base)
        which = rng.choice(4000, size=stop - start, p=weights)
        x[start:stop] = centres[which] + 0.06 * rng.normal(size=(stop - start, d)).astype(np.float32)
    sources = np.sort(rng.choice(base, size=n_dup, replace=False))
    x[base:] = x[sources] + 0.005 * rng.normal(size=(n_dup, d)).astype(np.float32)
    x.flush()
    return sources


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(name: str, path: str, args: dict) -> dict:
    """Run one step in this process (called in a child)."""
    import torch

    torch.set_num_threads(args["threads"])
    x = np.load(path, mmap_mode="r")
    out: dict = {}
    if name == "level":
        import faiss

        from pretrain.curation import assign, kmeans

        k, iters = args["k"], args["iters"]
        t = time.perf_counter()
        ours = kmeans(x, k, n_iters=iters, seed=0)
        out["ours_s"] = time.perf_counter() - t
        out["ours_inertia"] = ours.inertia
        t = time.perf_counter()
        ours_random = kmeans(x, k, n_iters=iters, seed=0, init="random")
        out["ours_random_s"] = time.perf_counter() - t
        out["ours_random_inertia"] = ours_random.inertia
        faiss.omp_set_num_threads(args["threads"])
        t = time.perf_counter()
        sample = np.sort(np.random.default_rng(0).choice(len(x), size=min(len(x), 256 * k), replace=False))
        km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=1, max_points_per_centroid=256)
        km.train(np.asarray(x[sample]))
        out["faiss_train_s"] = time.perf_counter() - t
        _, sq = assign(x, km.centroids)  # faiss's inertia on every row, as ours
        out["faiss_s"] = time.perf_counter() - t
        out["faiss_inertia"] = float(sq.astype(np.float64).sum())
    elif name == "hierarchical":
        from pretrain.curation import balanced_sample, hierarchical_kmeans

        t = time.perf_counter()
        tree = hierarchical_kmeans(x, args["clusters"], resample_steps=[0] + [10] * (len(args["clusters"]) - 1),
                                   n_iters=args["iters"], seed=0)
        out["hkmeans_s"] = time.perf_counter() - t
        picked = balanced_sample(tree, len(x) // 10)
        out["sample_s"] = time.perf_counter() - t - out["hkmeans_s"]
        out["selected"] = len(picked)
    elif name == "dedup":
        from pretrain.curation import deduplicate

        names = [f"{i:07d}" for i in range(len(x))]
        t = time.perf_counter()
        result = deduplicate(x, names, 0.9, nprobe=args["nprobe"])
        out["dedup_s"] = time.perf_counter() - t
        sources = np.load(args["sources"])
        base = len(x) - len(sources)
        injected = set(range(base, len(x)))
        removed = set(result.removed.tolist())
        out["removed"] = len(removed)
        out["recall_injected"] = len(injected & removed) / len(injected)
        out["groups"] = result.groups
    out["peak_rss_mb"] = peak_mb()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000, help="k of the single level compared with faiss")
    ap.add_argument("--clusters", default="1000,200,50,10")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None, help="keeps the data between runs (default: a new temp folder)")
    ap.add_argument("--steps", default="level,hierarchical,dedup", help="which steps to run")
    ap.add_argument("--nprobe", type=int, default=16, help="IVF lists scanned per query in the dedup step")
    ap.add_argument("--step", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--args", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        print(json.dumps(step(args.step, str(args.work / "x.npy"), json.loads(args.args))))
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="curation_1m_"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    data = work / "x.npy"
    if not (data.is_file() and np.load(data, mmap_mode="r").shape == (args.rows, args.dim)
            and (work / "sources.npy").is_file()):
        np.save(work / "sources.npy", make_data(data, args.rows, args.dim))
    sources = np.load(work / "sources.npy")
    print(f"data: {args.rows} x {args.dim} float32 ({args.rows * args.dim * 4 / 2**30:.2f} GiB, memory-mapped) "
          f"ready in {time.perf_counter() - t:.0f} s; {len(sources)} injected near-duplicates", flush=True)
    common = {"threads": args.threads, "iters": args.iters, "k": args.k,
              "clusters": [int(c) for c in args.clusters.split(",")], "sources": str(work / "sources.npy"),
              "nprobe": args.nprobe}
    results = {}
    for name in args.steps.split(","):
        run = subprocess.run([sys.executable, __file__, "--work", str(work), "--step", name, "--args",
                              json.dumps(common)], capture_output=True, text=True)
        if run.returncode:
            print(run.stderr[-3000:])
            return 1
        results[name] = json.loads(run.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    lv, hk, dd = results.get("level"), results.get("hierarchical"), results.get("dedup")
    print()
    if lv:
        print(f"one level, k={args.k}, {args.iters} iterations, on {args.rows} rows (train on <= 256 per centroid):")
        print(f"  ours (k-means++): {lv['ours_s']:.1f} s, inertia {lv['ours_inertia']:.6g}")
        print(f"  ours (random init): {lv['ours_random_s']:.1f} s, inertia {lv['ours_random_inertia']:.6g}")
        print(f"  faiss.Kmeans: {lv['faiss_s']:.1f} s (train {lv['faiss_train_s']:.1f} s + assigning every row), "
              f"inertia {lv['faiss_inertia']:.6g}")
        print(f"  ratios ours/faiss: time {lv['ours_s'] / lv['faiss_s']:.2f} (random init "
              f"{lv['ours_random_s'] / lv['faiss_s']:.2f}), inertia {lv['ours_inertia'] / lv['faiss_inertia']:.4f} "
              f"(random init {lv['ours_random_inertia'] / lv['faiss_inertia']:.4f}); peak RSS "
              f"{lv['peak_rss_mb']:.0f} MB")
    if hk:
        print(f"hierarchical k-means {args.clusters} with resampling (10 steps above level 1): "
              f"{hk['hkmeans_s']:.1f} s, balanced sample of {hk['selected']} in {hk['sample_s']:.1f} s; peak RSS "
              f"{hk['peak_rss_mb']:.0f} MB")
    if dd:
        print(f"deduplication (IVF, nprobe {args.nprobe}, cosine > 0.9): {dd['dedup_s']:.1f} s, {dd['removed']} "
              f"removed in {dd['groups']} groups, recall of the injected near-duplicates {dd['recall_injected']:.4f}; "
              f"peak RSS {dd['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
