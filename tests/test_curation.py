"""Data curation (pretrain.curation and ``dinov2-dense curate``): balance, near-duplicates,
resumable embedding, two processes on gloo, bad input, and the pretraining data set reading the result.

Pools are made here: embeddings drawn around a few dozen centres (one centre holding 90% of the
rows), with injected near-duplicates; images are random PNGs embedded by a tiny random ViT.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinov2_dense.cli import main
from dinov2_dense.features import extract_features as _extract_features
from pretrain.curation import (
    balanced_sample,
    deduplicate,
    embed_images,
    hierarchical_kmeans,
    kmeans,
    load_embeddings,
    retrieve,
)
from pretrain.curation.pipeline import normalized_entropy
from tests.conftest import tiny_vit
from tests.test_distributed_start import _case, data, launched  # noqa: F401 - fixtures: the two-process cases

ROOT = Path(__file__).resolve().parents[1]


def skewed_pool(n: int = 3000, concepts: int = 24, dim: int = 32, dominant: float = 0.9, seed: int = 0):
    """(rows float32, concept of each row): unit-norm centres, one holding ``dominant`` of the rows."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(concepts, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.where(rng.random(n) < dominant, 0, rng.integers(1, concepts, n))
    return (centres[labels] + 0.15 * rng.normal(size=(n, dim))).astype(np.float32), labels


def write_pool(folder: Path, x: np.ndarray, stem: str = "pool") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{stem}.npy", x)
    (folder / f"{stem}.txt").write_text("".join(f"img_{i:06d}.jpg\n" for i in range(len(x))))
    return folder / f"{stem}.npy"


def test_a_pool_of_near_copies_selects_what_deduplication_leaves(tmp_path, capsys):
    """Deduplication can leave one row (a pool of near-copies): it is selected, short of the target, with
    the default clusters (they asked for 2 clusters of 1 row, an error about --clusters, never given)."""
    rng = np.random.default_rng(0)
    x = (np.ones((12, 16)) + 1e-3 * rng.normal(size=(12, 16))).astype(np.float32)
    out = tmp_path / "curated"
    # more than half the pool removed: a warning says how alike two rows are, and what to do (early weights)
    # (a median that shows as 1.000 has no --dedup-threshold above it: a threshold is below 1)
    with pytest.warns(UserWarning, match=r"near-duplicate removal took 11 of the 12 rows \(cosine similarity > 0.9\); "
                                         r"the median similarity of two rows is 1.000\. That is right for a pool of "
                                         r"copies; otherwise .*: --no-dedup \(no --dedup-threshold"):
        assert main(["curate", str(write_pool(tmp_path / "in", x)), "--target", "5", "--out", str(out),
                     "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["duplicates_removed"] == 11 and summary["selected"] == 1 and summary["short_of_target"]
    assert (out / "selected.txt").read_text().splitlines() == ["img_000000.jpg"]


def test_the_crowded_pool_advice_gives_a_threshold_only_where_one_lies_above_the_median():
    """Rows alike but not copies (median 0.98): a --dedup-threshold above the median is the way on; rows
    that are copies (median 1.000): no threshold, which is below 1, lies above it, and the advice said to
    give one all the same (refused)."""
    from pretrain.curation.pipeline import _crowded

    rng = np.random.default_rng(0)
    alike = (np.ones((40, 16)) + 0.1 * rng.normal(size=(40, 16))).astype(np.float32)
    said = _crowded(alike, 30, 0.9)
    median = float(said.split("median similarity of two rows is ")[1][:5])
    assert 0.9 < median < 0.999 and said.endswith("give a --dedup-threshold above that median, or --no-dedup")
    close = (np.ones((40, 16)) + 0.01 * rng.normal(size=(40, 16))).astype(np.float32)  # a median just below 1
    said = _crowded(close, 39, 0.9)
    shown = said.split("median similarity of two rows is ")[1].split(".", 1)[0] + "." + \
        said.split("median similarity of two rows is ")[1].split(".")[1]
    assert 0.9995 <= float(shown) < 1 and len(shown) == 8, said  # its digits shown, and a threshold advised
    assert said.endswith("give a --dedup-threshold above that median, or --no-dedup")
    copies = np.repeat(alike[:1], 40, axis=0)
    assert _crowded(copies, 39, 0.9).endswith("--no-dedup (no --dedup-threshold, which is below 1, lies above that "
                                              "median)")


# -- balance -----------------------------------------------------------------------------------
def test_curated_subset_evens_out_a_dominant_concept(tmp_path, capsys, recwarn):
    x, labels = skewed_pool()
    npy = write_pool(tmp_path / "in", x)
    out = tmp_path / "curated"
    assert main(["curate", str(npy), "--target", "300", "--out", str(out), "--no-progress"]) == 0
    assert not [w for w in recwarn.list if "near-duplicate removal took" in str(w.message)]  # a few removed: no note
    printed = capsys.readouterr().out
    assert "300 selected" in printed
    selected = (out / "selected.txt").read_text().splitlines()
    assert len(selected) == len(set(selected)) == 300
    picked = np.array([int(name[4:10]) for name in selected])
    curated = normalized_entropy(labels[picked], 24)
    rng = np.random.default_rng(1)
    random = normalized_entropy(labels[rng.choice(len(x), 300, replace=False)], 24)
    pool = normalized_entropy(labels, 24)
    assert curated >= 0.95, curated
    assert abs(random - pool) < 0.1 and random < 0.4, (random, pool)

    clusters = np.load(out / "clusters.npy")
    summary = json.loads((out / "summary.json").read_text())
    assert clusters.shape == (len(x), len(summary["clusters"]))
    assert int((clusters[:, 0] == -1).sum()) == summary["duplicates_removed"] < 30  # removed rows: -1
    # each level's clusters nest: a row's cluster at level l + 1 depends only on its cluster at level l
    for level in range(clusters.shape[1] - 1):
        pairs = np.unique(clusters[:, level:level + 2], axis=0)
        assert len(np.unique(pairs[:, 0])) == len(pairs)
    assert summary["top_cluster_entropy_selected"] > summary["top_cluster_entropy_pool"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Curation report" in page
    assert (out / "cluster_sizes.png").read_bytes()[:4] == b"\x89PNG"
    assert "![cluster sizes](cluster_sizes.png)" in (out / "report.md").read_text()


def test_resampling_takes_half_the_mean_cluster_size_rounded_up_and_says_which_levels_it_ran():
    """The reference configs' rule: sample sizes 10, 5 and 3 for mean cluster sizes 20, 10 and 5. Rounded down
    (5 -> 2, and 2.7 -> 1), the default clusters' upper levels took one point a cluster and were never
    resampled, while the log and summary.json said 10 steps each."""
    x, _ = skewed_pool(1000, seed=5)
    tree = hierarchical_kmeans(x, [50, 5, 1], resample_steps=[0, 3, 3], seed=0, n_iters=5)
    assert tree.sample_sizes == [10, 5, 3] and tree.resampled == [0, 3, 3]
    # 2.6-2.8 points a cluster: 2 a cluster are resampled, and that moves the centroids
    ks = [37, 14, 5]
    run = hierarchical_kmeans(x, ks, resample_steps=[0, 5, 5], seed=0, n_iters=5)
    plain = hierarchical_kmeans(x, ks, resample_steps=0, seed=0, n_iters=5)
    assert run.sample_sizes == [14, 2, 2] and run.resampled == [0, 5, 5] and plain.resampled == [0, 0, 0]
    assert not np.allclose(run.levels[1].centroids, plain.levels[1].centroids)
    few = hierarchical_kmeans(x, [15, 13, 11, 9], resample_steps=[0, 5, 5, 5], seed=0, n_iters=5)  # ~1.2 a cluster
    assert few.sample_sizes[1:] == [1, 1, 1] and few.resampled == [0, 0, 0, 0]


def test_curate_says_which_levels_it_could_not_resample(tmp_path, capsys):
    x, _ = skewed_pool(300, seed=1)
    out = tmp_path / "curated"
    assert main(["curate", str(write_pool(tmp_path / "in", x)), "--target", "50", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"] == [15, 13, 11, 9] and summary["resample_steps"] == [0, 10, 10, 10]
    assert summary["resampled"] == [0, 0, 0, 0] and summary["sample_sizes"] == [10, 1, 1, 1]
    assert "not resampled: level(s) 2, 3, 4, whose clusters hold 2 points or fewer" in capsys.readouterr().err
    # said with --no-progress too: a note on the results, not progress (a reviewer)
    assert main(["curate", str(tmp_path / "in" / "pool.npy"), "--target", "50", "--out", str(tmp_path / "quiet"),
                 "--no-progress"]) == 0
    assert "not resampled: level(s) 2, 3, 4" in capsys.readouterr().err


def test_balanced_sample_gives_equal_shares_down_the_tree():
    x, _ = skewed_pool(2000, seed=3)
    tree = hierarchical_kmeans(x, [60, 20, 5], resample_steps=[0, 5, 5], seed=0)
    rows = tree.row_clusters
    for strategy in ("random", "closest"):
        picked = balanced_sample(tree, 250, strategy=strategy, seed=0)
        assert len(picked) == len(np.unique(picked)) == 250
        top_sizes = np.bincount(rows[:, -1], minlength=5)
        shares = np.bincount(rows[picked, -1], minlength=5)
        # water-filling: clusters smaller than the cut give all their rows, the others equal shares (+-1)
        full = shares == top_sizes
        assert np.ptp(shares[~full]) <= 1 if (~full).any() else True
        assert (shares[full] <= shares[~full].min()).all() if (~full).any() and full.any() else True
    closest = balanced_sample(tree, 60, strategy="closest")
    members = rows[closest, 0]
    sq = tree.levels[0].sqdist
    for c in np.unique(members):  # within a finest cluster, the closest points to the centroid come first
        chosen = closest[members == c]
        others = np.setdiff1d(np.flatnonzero(rows[:, 0] == c), chosen)
        if len(others):
            assert sq[chosen].max() <= sq[others].min() + 1e-6
    with pytest.raises(ValueError, match="larger than"):
        balanced_sample(tree, 2001)


def test_kmeans_matches_faiss_inertia_and_the_lloyd_fixed_point():
    faiss = pytest.importorskip("faiss")
    x, _ = skewed_pool(4000, concepts=40, dominant=0.3, seed=5)
    ours = kmeans(x, 40, n_iters=25, seed=0)
    km = faiss.Kmeans(x.shape[1], 40, niter=25, seed=1234)
    km.train(x)
    _, nearest = km.index.search(x, 1)
    theirs = float(((x - km.centroids[nearest[:, 0]]) ** 2).sum())
    assert ours.inertia <= 1.01 * theirs, (ours.inertia, theirs)
    # the result is a Lloyd fixed point within tolerance: the assignment is each row's nearest centroid,
    # and the inertia is the sum of those squared distances
    d = ((x[:, None, :] - ours.centroids[None]) ** 2).sum(-1)
    assert (d.argmin(1) == ours.assignment).mean() > 0.999
    assert ours.inertia == pytest.approx(float(d.min(1).sum()), rel=1e-4)
    assert ours.inertia == pytest.approx(float(kmeans(x, 40, n_iters=25, seed=0).inertia), rel=0)  # seeded


# -- near-duplicates ---------------------------------------------------------------------------
def test_near_duplicates_removed_with_high_recall_and_precision(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 48)).astype(np.float32)
    sources = rng.choice(3000, 200, replace=False)
    copies = x[sources] + 0.05 * rng.normal(size=(200, 48)).astype(np.float32)  # cosine ~0.999 to its source
    pool = np.concatenate([x, copies])
    names = [f"a{i:05d}" for i in range(len(pool))]
    truth = set(range(3000, 3200))
    for index_kw in ({}, {"ivf_above": 100}):  # exact, and the IVF index of large pools
        result = deduplicate(pool, names, 0.9, **index_kw)
        removed = set(result.removed.tolist())
        recall, precision = len(truth & removed) / len(truth), len(truth & removed) / max(1, len(removed))
        assert recall >= 0.99 and precision >= 0.99, (index_kw, recall, precision)
        assert dict(zip(result.removed.tolist(), result.kept_for.tolist())) == {3000 + i: int(s) for i, s in
                                                                               enumerate(sources)}
    # a chain A ~ B ~ C is one group even where A and C are further apart; "central" keeps B
    a = np.array([1.0, 0.0], np.float32)
    chain = np.stack([a, [np.cos(0.4), np.sin(0.4)], [np.cos(0.8), np.sin(0.8)], [0.0, -1.0]]).astype(np.float32)
    first = deduplicate(chain, ["c", "b", "a", "d"], float(np.cos(0.45)))
    assert first.groups == 1 and first.keep.tolist() == [2, 3]  # "a" is first by name
    central = deduplicate(chain, ["c", "b", "a", "d"], float(np.cos(0.45)), keep="central")
    assert central.keep.tolist() == [1, 3] and central.kept_for.tolist() == [1, 1]

    npy = write_pool(tmp_path / "in", pool)
    out = tmp_path / "out"
    assert main(["curate", str(npy), "--target", "100", "--out", str(out), "--no-progress",
                 "--clusters", "40,10", "--ivf-above", "1000"]) == 0  # the IVF index, through the command
    lines = [line.split("\t") for line in (out / "duplicates.txt").read_text().splitlines()]
    assert len(lines) == 200 and all(int(r[4:10]) >= 3000 and int(k[4:10]) < 3000 for r, k in lines)
    assert (np.load(out / "clusters.npy")[3000:] == -1).all()  # removed rows are not clustered


def test_retrieval_finds_the_neighbours_of_the_seeds():
    rng = np.random.default_rng(2)
    pool = rng.normal(size=(500, 16)).astype(np.float32)
    seeds = pool[[10, 20]] + 0.01
    near = retrieve(pool, seeds, k=1)
    assert near.tolist() == [10, 20]
    sims = (pool / np.linalg.norm(pool, axis=1, keepdims=True)) @ (seeds / np.linalg.norm(seeds, axis=1,
                                                                                          keepdims=True)).T
    above = retrieve(pool, seeds, k=None, threshold=0.5)
    assert above.tolist() == np.flatnonzero((sims > 0.5).any(axis=1)).tolist()
    with pytest.raises(ValueError, match="dimensions"):
        retrieve(pool, seeds[:, :8], k=1)


# -- images: resumable embedding and the pretraining data set ------------------------------------
def _images(folder: Path, n: int, broken: bool = True) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(folder / f"im{i:02d}.png")
    if broken:
        (folder / "zz_broken.png").write_bytes(b"not a png")
    return folder


def test_interrupted_embedding_resumes_without_recomputing(tmp_path, monkeypatch, capsys):
    import dinov2_dense.features as features

    folder = _images(tmp_path / "imgs", 11)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    reference = embed_images(model, folder, tmp_path / "ref", size=28, batch_size=3, progress=False)
    assert len(reference) == 11 and reference.unreadable[0].startswith(str(folder / "zz_broken.png"))

    real = features.extract_features
    seen: list[int] = []

    def counting(m, x, *a, **k):
        if len(seen) >= 2 and stop[0]:
            raise KeyboardInterrupt
        seen.append(len(x))
        return real(m, x, *a, **k)

    stop = [True]
    monkeypatch.setattr(features, "extract_features", counting)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "run", size=28, batch_size=3, progress=False)
    assert sum(seen) == 6 and not (tmp_path / "run" / "embeddings.npy").exists()
    status = np.load(tmp_path / "run" / "status.partial.npy")
    assert int((status == 1).sum()) == 6
    stop[0], seen[:] = False, []
    store = embed_images(model, folder, tmp_path / "run", size=28, batch_size=3, progress=False)
    assert sum(seen) == 5  # only the rows not stored yet
    assert store.names == reference.names and len(set(store.names)) == 11
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(reference.embeddings), atol=1e-5)
    assert not list((tmp_path / "run").glob("*.partial.*"))
    assert (tmp_path / "run" / "unreadable.txt").read_text().count("\n") == 1
    seen[:] = []
    again = embed_images(model, folder, tmp_path / "run", size=28, batch_size=3, progress=False)
    assert seen == [] and again.names == store.names  # finished: nothing recomputed
    capsys.readouterr()
    embed_images(model, folder, tmp_path / "run", size=28, batch_size=3)  # as curate calls it: it says so
    assert seen == [] and "the 12 image(s) are unchanged since they were embedded: the store is used as it is" \
        in capsys.readouterr().err
    # images decoded in two DataLoader worker processes: the same rows, names and unreadable list
    workers = embed_images(model, folder, tmp_path / "workers", size=28, batch_size=3, progress=False, num_workers=2)
    assert workers.names == reference.names and workers.unreadable == reference.unreadable
    np.testing.assert_allclose(np.asarray(workers.embeddings), np.asarray(reference.embeddings), atol=1e-5)


def test_workers_read_parts_of_a_batch_and_start_while_the_weights_are_hashed(tmp_path, monkeypatch):
    """With workers and batches read in 4 parts (features.PARTS_PER_BATCH, 1 by default), each reads
    at most a quarter batch (8 images at least); the model still sees whole batches (an unreadable
    image dropped), and the rows equal those of one process exactly. A fresh store starts its workers
    before hashing the weights; a resumed one hashes first (the rows still to do depend on it)."""
    import dinov2_dense.checkpoints as checkpoints
    import dinov2_dense.features as features

    monkeypatch.setattr(features, "PARTS_PER_BATCH", 4)

    folder = _images(tmp_path / "imgs", 19)  # and zz_broken.png: 20 files
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    parts: list[int] = []
    batches: list[int] = []
    events: list[str] = []
    real_map, real_extract, real_print = features.map_in_workers, features.extract_features, checkpoints.fingerprint

    def mapped(fn, items, num_workers=0, pin_memory=False):
        parts.extend(len(i) for i in items)
        events.append("workers")
        return real_map(fn, items, num_workers, pin_memory)

    monkeypatch.setattr(features, "map_in_workers", mapped)
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: batches.append(len(x)) or real_extract(m, x, *a, **k))
    monkeypatch.setattr(checkpoints, "fingerprint", lambda m: events.append("hash") or real_print(m))
    store = embed_images(model, folder, tmp_path / "w", size=28, batch_size=16, progress=False, num_workers=2)
    assert parts == [8, 8, 4] and batches == [16, 3] and events == ["workers", "hash"]
    parts[:], batches[:], events[:] = [], [], []
    here = embed_images(model, folder, tmp_path / "h", size=28, batch_size=16, progress=False)
    assert parts == [16, 4] and batches == [16, 3]  # in this process: whole batches
    assert store.names == here.names and store.unreadable == here.unreadable and len(store) == 19
    assert np.array_equal(np.asarray(store.embeddings), np.asarray(here.embeddings))

    def stopping(m, x, *a, **k):  # interrupted at the second batch: the first is stored
        if batches:
            raise KeyboardInterrupt
        batches.append(len(x))
        return real_extract(m, x, *a, **k)

    monkeypatch.setattr(features, "extract_features", stopping)
    batches[:] = []
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "r", size=28, batch_size=16, progress=False, num_workers=2)
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: batches.append(len(x)) or real_extract(m, x, *a, **k))
    parts[:], batches[:], events[:] = [], [], []
    resumed = embed_images(model, folder, tmp_path / "r", size=28, batch_size=16, progress=False, num_workers=2)
    assert events == ["hash", "workers"] and parts == [4] and batches == [3]
    assert np.array_equal(np.asarray(resumed.embeddings), np.asarray(here.embeddings))
    monkeypatch.setattr(features, "PARTS_PER_BATCH", 1)  # the default: a worker reads a whole batch
    parts[:] = []
    embed_images(model, folder, tmp_path / "whole", size=28, batch_size=16, progress=False, num_workers=2)
    assert parts == [16, 4]


def test_a_fresh_store_embeds_while_the_weights_are_hashed_and_resumes_only_once_they_are(tmp_path, monkeypatch):
    """Into a fresh store, batches run while the weights are hashed in a thread; partial.json (which
    makes the partial store resumable) appears once the hash is known. Interrupted: the hash is waited
    for, so the rows done are kept; a hash that fails leaves nothing to resume, and the next run is whole."""
    import threading

    import dinov2_dense.checkpoints as checkpoints
    import dinov2_dense.features as features

    folder = _images(tmp_path / "imgs", 12, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    reference = embed_images(model, folder, tmp_path / "ref", size=28, batch_size=4, progress=False)
    real_print, real_extract = checkpoints.fingerprint, features.extract_features
    release, seen, stop = threading.Event(), [], [False]

    def slow_hash(m):
        assert release.wait(30)
        return real_print(m)

    def extract(m, x, *a, **k):
        seen.append((tmp_path / "run" / "partial.json").exists())
        if len(seen) == 2:
            release.set()
            if stop[0]:
                raise KeyboardInterrupt
        return real_extract(m, x, *a, **k)

    monkeypatch.setattr(checkpoints, "fingerprint", slow_hash)
    monkeypatch.setattr(features, "extract_features", extract)
    store = embed_images(model, folder, tmp_path / "run", size=28, batch_size=4, progress=False)
    assert seen[:2] == [False, False]  # the model ran before the hash was known
    assert json.loads((tmp_path / "run" / "store.json").read_text())["weights"] == real_print(model)
    assert np.array_equal(np.asarray(store.embeddings), np.asarray(reference.embeddings))

    release.clear()
    seen[:], stop[0] = [], True
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "cut", size=28, batch_size=4, progress=False)
    assert json.loads((tmp_path / "cut" / "partial.json").read_text())["weights"] == real_print(model)
    assert int((np.load(tmp_path / "cut" / "status.partial.npy") == 1).sum()) == 4  # the first batch kept

    def failing_hash(m):
        raise RuntimeError("hash failed")

    monkeypatch.setattr(checkpoints, "fingerprint", failing_hash)
    monkeypatch.setattr(features, "extract_features", real_extract)
    with pytest.raises(RuntimeError, match="hash failed"):
        embed_images(model, folder, tmp_path / "bad", size=28, batch_size=4, progress=False)
    assert not (tmp_path / "bad" / "partial.json").exists() and not (tmp_path / "bad" / "store.json").exists()
    monkeypatch.setattr(checkpoints, "fingerprint", real_print)
    counted = []
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: counted.append(len(x)) or real_extract(m, x, *a, **k))
    again = embed_images(model, folder, tmp_path / "bad", size=28, batch_size=4, progress=False)
    assert sum(counted) == 12 and np.array_equal(np.asarray(again.embeddings), np.asarray(reference.embeddings))
    resumed = embed_images(model, folder, tmp_path / "cut", size=28, batch_size=4, progress=False)
    assert sum(counted) == 12 + 8 and np.array_equal(np.asarray(resumed.embeddings), np.asarray(reference.embeddings))


def test_a_full_disk_stops_the_embedding_naming_the_file_before_any_row(tmp_path, monkeypatch):
    """The partial store's files are allocated on disk when created: a full disk is an OSError naming
    the file there (rows written later through the memory map cannot hit it: that would be SIGBUS)."""
    import errno

    folder = _images(tmp_path / "imgs", 3, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()

    import dinov2_dense.fileio as fileio

    def full(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fallocate", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        embed_images(model, folder, tmp_path / "s", size=28, batch_size=2, progress=False, num_workers=2)
    assert caught.value.filename == str(tmp_path / "s" / "embeddings.partial.npy")
    monkeypatch.undo()
    store = embed_images(model, folder, tmp_path / "s", size=28, batch_size=2, progress=False)
    assert len(store) == 3


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("straight", [False, True])
def test_embedding_on_cuda_in_parts_matches_the_cpu(tmp_path, monkeypatch, straight):
    """On a GPU the parts of a batch arrive pinned (float and uint8), or (``straight``,
    features.SLOTS_TO_DEVICE) copied from the workers' slots straight to the GPU, are normalised there
    and joined: the rows equal the CPU's to float tolerance, with the same names and unreadable list."""
    import dinov2_dense.features as features

    monkeypatch.setattr(features, "PARTS_PER_BATCH", 4)
    monkeypatch.setattr(features, "SLOTS_TO_DEVICE", straight)
    monkeypatch.setattr(features, "SLOT_MIN_BYTES", 1024 if straight else features.SLOT_MIN_BYTES)  # uint8 parts too
    folder = _images(tmp_path / "imgs", 19)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    stores = {}
    for device in ("cpu", "cuda"):
        for eight in (False, True):
            stores[device, eight] = embed_images(model.to(device), folder, tmp_path / f"{device}{eight}", size=28,
                                                 batch_size=16, progress=False, num_workers=2, resize_8bit=eight)
    for eight in (False, True):
        cpu, gpu = stores["cpu", eight], stores["cuda", eight]
        assert gpu.names == cpu.names and gpu.unreadable == cpu.unreadable
        np.testing.assert_allclose(np.asarray(gpu.embeddings), np.asarray(cpu.embeddings), atol=1e-4, rtol=0)


def test_curating_images_feeds_the_pretraining_data_set(tmp_path):
    from pretrain.data.datasets import build_dataset
    from pretrain.export import export_backbone

    folder = _images(tmp_path / "imgs", 12)
    weights = export_backbone(tiny_vit(depth=2, dim=32, img=28), tmp_path / "export")["safetensors"]
    out = tmp_path / "cur"
    code = main(["curate", str(folder), "--target", "6", "--out", str(out), "--weights", str(weights),
                 "--size", "28", "--clusters", "4,2", "--no-progress", "--dedup-threshold", "0.9999"])
    assert code == 0
    selected = (out / "selected.txt").read_text().splitlines()
    assert len(selected) == 6 and all(Path(p).is_absolute() and Path(p).parent == folder for p in selected)
    assert (out / "embeddings" / "unreadable.txt").read_text().startswith(str(folder / "zz_broken.png"))
    data = build_dataset(str(out / "selected.txt"))
    assert len(data) == 6 and data.source.read(0).shape[2] == 3
    # a second run without --overwrite is refused, and with it the stored embeddings are reused
    assert main(["curate", str(folder), "--target", "6", "--out", str(out), "--weights", str(weights),
                 "--size", "28", "--no-progress"]) == 2
    assert main(["curate", str(folder), "--target", "5", "--out", str(out), "--weights", str(weights),
                 "--size", "28", "--clusters", "4,2", "--no-progress", "--overwrite", "--no-dedup"]) == 0
    assert len((out / "selected.txt").read_text().splitlines()) == 5


# -- two processes -----------------------------------------------------------------------------
def two_process_kmeans(x_path: str, out: str, init: str) -> int:
    """One process's part of the two-process k-means (tests.twoproc's driver runs it in each)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        tree = hierarchical_kmeans(np.load(x_path, mmap_mode="r"), [40, 12, 4], resample_steps=[0, 4, 4], seed=7,
                                   init=init)
        np.savez(f"{out}_{dist.get_rank()}.npz", *[level.centroids for level in tree.levels], rows=tree.row_clusters)
    finally:
        dist.destroy_process_group()
    return 0


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_two_processes_on_gloo_give_the_centroids_of_one(launched, data, init):
    """(Two processes: one launch for many cases, tests.twoproc.)"""
    (rc0, out0), (rc1, out1) = _case(launched, f"kmeans_{init}")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    one = hierarchical_kmeans(np.load(data / "kmeans.npy", mmap_mode="r"), [40, 12, 4], resample_steps=[0, 4, 4],
                              seed=7, init=init)
    ranks = [np.load(data / f"kmeans_{init}_{r}.npz") for r in (0, 1)]
    for level, result in enumerate(one.levels):
        for got in ranks:
            np.testing.assert_allclose(got[f"arr_{level}"], result.centroids, atol=1e-5, rtol=1e-5)
    assert (ranks[0]["rows"] == one.row_clusters).mean() > 0.999


def test_curate_command_under_torchrun_selects_what_one_process_selects(launched, data, tmp_path):
    from tests.test_distributed_start import CURATE_TWO

    assert main(["curate", str(data / "curate_in" / "pool.npy"), *CURATE_TWO, "--out", str(tmp_path / "one")]) == 0
    (rc0, out0), (rc1, out1) = _case(launched, "curate_two")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    assert (out0 + out1).count("curated 1200 rows") == 1  # the main process reports, once
    one = set((tmp_path / "one" / "selected.txt").read_text().splitlines())
    two = set((data / "curate_two" / "selected.txt").read_text().splitlines())
    assert len(two) == 150 and len(one & two) >= 148
    agree = np.load(tmp_path / "one" / "clusters.npy") == np.load(data / "curate_two" / "clusters.npy")
    assert agree.mean() > 0.99


# -- bad input ---------------------------------------------------------------------------------
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys):
    x, _ = skewed_pool(200)
    out = tmp_path / "out"

    def refused(args: list[str], *expected: str) -> None:
        assert main(["curate", *args, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(e in err for e in expected), err
        assert not out.exists()

    nan = x.copy()
    nan[17, 3] = np.nan
    refused([str(write_pool(tmp_path / "a", nan)), "--target", "10"], "pool.npy", "NaN", "row 17")
    npy = write_pool(tmp_path / "b", x)
    (tmp_path / "b" / "pool.txt").write_text("only\ntwo\n")
    refused([str(npy), "--target", "10"], "pool.txt", "2 names", "200 rows")
    npy = write_pool(tmp_path / "c", x)
    refused([str(npy), "--target", "201"], "--target 201", "200 rows")
    (tmp_path / "empty").mkdir()
    refused([str(tmp_path / "empty"), "--target", "1", "--weights", "random"], "empty", "no images")
    refused([str(tmp_path / "c" / "missing.npy"), "--target", "1"], "missing.npy", "no such file")
    np.save(tmp_path / "c" / "flat.npy", np.zeros(5, np.float32))
    (tmp_path / "c" / "flat.txt").write_text("a\nb\nc\nd\ne\n")
    refused([str(tmp_path / "c" / "flat.npy"), "--target", "1"], "flat.npy", "2-D")
    refused([str(npy), "--target", "10", "--clusters", "500,10"], "--clusters", "500")
    # a folder of someone else's files is never written into
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("mine")
    assert main(["curate", str(npy), "--target", "10", "--out", str(tmp_path / "theirs"), "--no-progress"]) == 2
    assert sorted(p.name for p in (tmp_path / "theirs").iterdir()) == ["notes.txt"]
    assert "did not write" in capsys.readouterr().err


def test_load_embeddings_reads_store_folders_and_names(tmp_path):
    x, _ = skewed_pool(50)
    npy = write_pool(tmp_path, x, "e")
    store = load_embeddings(npy)
    assert store.embeddings.shape == (50, 32) and store.names[0] == "img_000000.jpg"
    assert isinstance(store.embeddings, np.memmap)
    store = load_embeddings(npy, names=[f"n{i}" for i in range(50)])
    assert store.names[-1] == "n49"
    half = x.astype(np.float16)
    np.save(tmp_path / "h.npy", half)
    (tmp_path / "h.txt").write_text("".join(f"x{i}\n" for i in range(50)))
    assert load_embeddings(tmp_path / "h.npy").embeddings.dtype == np.float16


def test_a_bf16_model_embeds_from_bf16_batches_with_the_same_rows(tmp_path, monkeypatch):
    """Workers hand a bf16 model its batches in bf16 (half the bytes): the rows equal those of the
    float32 batches the model would cast itself, exactly."""
    import torch

    import dinov2_dense.features as features
    from dinov2_dense.evaluation.knn import pool_features, read_resized

    folder = _images(tmp_path / "imgs", 5, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval().to(torch.bfloat16)
    seen = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: seen.append(x.dtype) or real(m, x, *a, **k))
    store = embed_images(model, folder, tmp_path / "s", size=28, batch_size=2, progress=False, num_workers=2)
    assert seen == [torch.bfloat16] * 3
    x = torch.stack([read_resized(str(folder / n), (28, 28)) for n in sorted(os.listdir(folder))])
    with torch.no_grad():
        want = pool_features(real(model, x, fit="resize", progress=False), "cls").float().numpy()
    assert np.array_equal(np.asarray(store.embeddings), want)


def test_8bit_resized_images_travel_as_uint8_with_the_same_rows(tmp_path, monkeypatch):
    """With resize_8bit the workers hand over uint8 batches (normalised on the model's device): the rows of a
    bf16 model equal, exactly, those of decoding in this process and those of the normalised floats."""
    import torch

    import dinov2_dense.features as features
    from dinov2_dense.evaluation.knn import pool_features, read_resized

    import cv2

    folder = _images(tmp_path / "imgs", 5)  # and one broken file
    deep = np.random.default_rng(1).integers(0, 65535, (33, 41, 3), dtype=np.uint16)
    assert cv2.imwrite(str(folder / "im05.png"), deep)  # a 16-bit image: the float resize, in a float batch
    model = tiny_vit(depth=2, dim=32, img=28).eval().to(torch.bfloat16)
    seen = []
    real = features.map_in_workers

    def spy(fn, items, num_workers=0, pin_memory=False):
        for where, x, bad in real(fn, items, num_workers, pin_memory):
            seen.append(None if x is None else x.dtype)
            yield where, x, bad

    monkeypatch.setattr(features, "map_in_workers", spy)
    store = embed_images(model, folder, tmp_path / "w", size=28, batch_size=2, progress=False, num_workers=2,
                         resize_8bit=True)
    # im00-01, im02-03: uint8; im04 with the 16-bit im05: bf16 (the model's dtype); the broken file: none
    assert seen == [torch.uint8, torch.uint8, torch.bfloat16, None]
    assert len(store.names) == 6 and len(store.unreadable) == 1
    here = embed_images(model, folder, tmp_path / "h", size=28, batch_size=2, progress=False, resize_8bit=True)
    assert np.array_equal(np.asarray(store.embeddings), np.asarray(here.embeddings))
    x = torch.stack([read_resized(n, (28, 28), resize_8bit=True) for n in store.names])
    with torch.no_grad():
        want = pool_features(features.extract_features(model, x, fit="resize", progress=False), "cls").float().numpy()
    assert np.array_equal(np.asarray(store.embeddings), want)


def test_a_bf16_model_gives_the_same_rows_from_parts_of_mixed_dtypes(tmp_path, monkeypatch):
    """A batch read in parts, one all 8-bit (uint8, normalised on the device) beside one holding a
    16-bit image (bf16), is rounded as the whole batch read at once: the rows do not depend on the
    workers."""
    import cv2
    import torch

    import dinov2_dense.features as features

    monkeypatch.setattr(features, "PARTS_PER_BATCH", 4)

    folder = _images(tmp_path / "imgs", 15, broken=False)
    deep = np.random.default_rng(2).integers(0, 65535, (33, 41, 3), dtype=np.uint16)
    assert cv2.imwrite(str(folder / "im15.png"), deep)  # in the second part of the batch of 16
    model = tiny_vit(depth=2, dim=32, img=28).eval().to(torch.bfloat16)
    run = dict(size=28, batch_size=16, progress=False, resize_8bit=True)
    here = embed_images(model, folder, tmp_path / "h", **run)
    workers = embed_images(model, folder, tmp_path / "w", num_workers=2, **run)
    assert np.array_equal(np.asarray(workers.embeddings), np.asarray(here.embeddings))


def test_a_store_embedded_with_one_resize_is_not_reused_or_resumed_with_the_other(tmp_path, monkeypatch):
    """resize_8bit is one of the store's settings: the other setting re-embeds (finished or interrupted
    store), the same one reuses, and a store written before the option counts as the float resize."""
    import torch

    import dinov2_dense.features as features
    from dinov2_dense.evaluation.knn import pool_features, read_resized

    folder = _images(tmp_path / "imgs", 7, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    seen: list[int] = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: seen.append(len(x)) or real(m, x, *a, **k))
    out = tmp_path / "store"
    plain = np.asarray(embed_images(model, folder, out, size=28, batch_size=4, progress=False).embeddings).copy()
    assert json.loads((out / "store.json").read_text())["resize_8bit"] is False and sum(seen) == 7
    seen.clear()
    eight = embed_images(model, folder, out, size=28, batch_size=4, progress=False, resize_8bit=True)
    assert sum(seen) == 7 and json.loads((out / "store.json").read_text())["resize_8bit"] is True
    rows = np.asarray(eight.embeddings)
    assert not np.array_equal(rows, plain) and np.abs(rows - plain).max() < 0.05
    x = torch.stack([read_resized(str(folder / n), (28, 28), resize_8bit=True) for n in eight.names])
    with torch.no_grad():
        want = pool_features(real(model, x, fit="resize", progress=False), "cls").numpy()
    np.testing.assert_allclose(rows, want, atol=1e-5)
    seen.clear()
    embed_images(model, folder, out, size=28, batch_size=4, progress=False, resize_8bit=True)
    assert seen == []  # the same setting: reused
    embed_images(model, folder, out, size=28, batch_size=4, progress=False)
    assert sum(seen) == 7  # back to the float resize: embedded again

    # a store from before the option (no resize_8bit in store.json) is a float-resize store
    info = json.loads((out / "store.json").read_text())
    del info["resize_8bit"]
    (out / "store.json").write_text(json.dumps(info))
    seen.clear()
    embed_images(model, folder, out, size=28, batch_size=4, progress=False)
    assert seen == []
    embed_images(model, folder, out, size=28, batch_size=4, progress=False, resize_8bit=True)
    assert sum(seen) == 7

    # an interrupted 8-bit run is not resumed by a float one (nor the other way round)
    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "part", size=28, batch_size=4, progress=False, resize_8bit=True)
    assert json.loads((tmp_path / "part" / "partial.json").read_text())["resize_8bit"] is True
    monkeypatch.setattr(features, "extract_features", lambda m, x, *a, **k: seen.append(len(x)) or real(m, x, *a, **k))
    seen.clear()
    with pytest.warns(UserWarning, match="other inputs or settings"):
        store = embed_images(model, folder, tmp_path / "part", size=28, batch_size=4, progress=False)
    assert sum(seen) == 7
    np.testing.assert_allclose(np.asarray(store.embeddings), plain, atol=1e-5)


def test_curate_command_takes_resize_8bit(tmp_path):
    from pretrain.export import export_backbone

    folder = _images(tmp_path / "imgs", 8, broken=False)
    weights = export_backbone(tiny_vit(depth=2, dim=32, img=28), tmp_path / "export")["safetensors"]
    out = tmp_path / "cur"
    assert main(["curate", str(folder), "--target", "4", "--out", str(out), "--weights", str(weights), "--size", "28",
                 "--clusters", "2,1", "--no-dedup", "--no-progress", "--num-workers", "0", "--resize-8bit"]) == 0
    assert json.loads((out / "embeddings" / "store.json").read_text())["resize_8bit"] is True


def test_a_list_naming_a_file_twice_gives_it_once(tmp_path):
    """A list file (or a list) that repeats a path: one image of the pool, so never twice in selected.txt."""
    from pretrain.curation.store import list_images

    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.txt").write_text("a.jpg\nb.jpg\n# a comment\na.jpg\nc.jpg\nb.jpg\n" + str(tmp_path / "a.jpg") + "\n")
    with pytest.warns(UserWarning, match=r"list.txt: 3 repeated path\(s\), each taken once: .*a.jpg, .*b.jpg"):
        assert list_images(tmp_path / "list.txt") == [str(tmp_path / n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    with pytest.warns(UserWarning, match="1 repeated path"):
        assert list_images([str(tmp_path / "c.jpg"), str(tmp_path / "c.jpg")]) == [str(tmp_path / "c.jpg")]


# -- stores: settings, changed files, an interrupted finish; the command's checks --------------------
def _tiny_weights(tmp_path: Path) -> Path:
    from pretrain.export import export_backbone

    return export_backbone(tiny_vit(depth=2, dim=32, img=28), tmp_path / "export")["safetensors"]


def _counting(monkeypatch) -> list[int]:
    """Images the model sees from here on (one entry per batch; replacing any earlier patch)."""
    import dinov2_dense.features as features

    seen: list[int] = []
    monkeypatch.setattr(features, "extract_features",
                        lambda m, x, *a, **k: seen.append(len(x)) or _extract_features(m, x, *a, **k))
    return seen


def _interrupting(monkeypatch) -> None:
    """The model runs one batch, then Ctrl-C (KeyboardInterrupt) comes at the next."""
    import dinov2_dense.features as features

    ran: list[int] = []

    def stop(m, x, *a, **k):
        if ran:
            raise KeyboardInterrupt
        ran.append(len(x))
        return _extract_features(m, x, *a, **k)

    monkeypatch.setattr(features, "extract_features", stop)


@pytest.mark.filterwarnings("ignore:bfloat16 autocast on a CPU")
def test_a_store_made_under_bf16_autocast_is_not_reused_or_resumed_in_float32(tmp_path, monkeypatch):
    """autocast is one of the store's settings (recorded only when set: stores made before stay valid):
    a bf16-autocast store is embedded again in float32, finished or interrupted, and the rows are float32's."""
    import torch

    folder = _images(tmp_path / "imgs", 6, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    plain = np.asarray(embed_images(model, folder, tmp_path / "ref", size=28, batch_size=4, progress=False).embeddings)
    assert "autocast" not in json.loads((tmp_path / "ref" / "store.json").read_text())
    seen = _counting(monkeypatch)
    out = tmp_path / "store"
    bf16 = np.asarray(embed_images(model, folder, out, size=28, batch_size=4, progress=False, autocast=True).embeddings)
    assert json.loads((out / "store.json").read_text())["autocast"] == "bfloat16" and sum(seen) == 6
    assert not np.array_equal(bf16, plain)
    seen.clear()
    again = embed_images(model, folder, out, size=28, batch_size=4, progress=False)
    assert sum(seen) == 6 and "autocast" not in json.loads((out / "store.json").read_text())
    np.testing.assert_allclose(np.asarray(again.embeddings), plain, atol=1e-6)
    seen.clear()
    embed_images(model, folder, out, size=28, batch_size=4, progress=False, autocast=torch.bfloat16)
    assert sum(seen) == 6  # True and torch.bfloat16 are one setting: reused by the next line
    seen.clear()
    embed_images(model, folder, out, size=28, batch_size=4, progress=False, autocast=True)
    assert seen == []

    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "part", size=28, batch_size=4, progress=False, autocast=True)
    seen = _counting(monkeypatch)
    with pytest.warns(UserWarning, match="other inputs or settings"):
        resumed = embed_images(model, folder, tmp_path / "part", size=28, batch_size=4, progress=False)
    assert sum(seen) == 6
    np.testing.assert_allclose(np.asarray(resumed.embeddings), plain, atol=1e-6)


def test_out_inside_an_input_folder_is_refused(tmp_path, capsys):
    """--out inside (or equal to) an input folder, or where a recursive glob of the inputs reaches: refused
    before anything is written (a later --overwrite run would embed cluster_sizes.png as a pool image)."""
    folder = _images(tmp_path / "imgs", 6, broken=False)
    weights = _tiny_weights(tmp_path)
    run = ["--target", "3", "--weights", str(weights), "--size", "28", "--clusters", "2,1", "--no-dedup", "--no-progress"]
    for spec, out in ((folder, folder / "curated"), (folder, folder / "sub" / "curated"), (folder, folder),
                      (f"{tmp_path}/**/*.png", tmp_path / "curated")):
        assert main(["curate", str(spec), "--out", str(out), *run]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--out {out}" in err and str(spec) in err, err
        assert not (out / "selected.txt").exists() and not (folder / "curated").exists()
    # beside the folder, or beside a glob that cannot reach it: fine
    assert main(["curate", f"{folder}/*.png", "--out", str(folder / "cur"), *run]) == 0
    # a recursive glob whose file names cannot be cluster_sizes.png: fine
    assert main(["curate", f"{tmp_path}/imgs/**/im*.png", "--out", str(folder / "cur2"), *run]) == 0
    assert main(["curate", str(folder), "--out", str(tmp_path / "beside"), *run]) == 0


def test_a_finish_cut_short_is_never_taken_for_a_finished_store(tmp_path, monkeypatch):
    """A full disk while a store is finished (at names.txt, after embeddings.npy was replaced): store.json
    is gone, so the folder is not read as a store, the same settings resume (nothing embedded again) and
    the old settings embed afresh: rows and names never mix runs."""
    import errno

    import pretrain.curation.store as store_module
    from pretrain.curation import CurationError

    folder = _images(tmp_path / "imgs", 7, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    cls = np.asarray(embed_images(model, folder, tmp_path / "cls", **run).embeddings)
    mean = np.asarray(embed_images(model, folder, tmp_path / "mean", pooling="mean", **run).embeddings)
    assert not np.allclose(cls, mean, atol=1e-3)
    real_write = store_module.write_text

    def full_at_names(path, text):
        if Path(path).name == "names.txt":
            raise OSError(errno.ENOSPC, f"cannot write {path}: No space left on device")
        return real_write(path, text)

    out = tmp_path / "store"
    embed_images(model, folder, out, **run)
    monkeypatch.setattr(store_module, "write_text", full_at_names)
    with pytest.raises(OSError) as caught:
        embed_images(model, folder, out, pooling="mean", **run)
    assert caught.value.errno == errno.ENOSPC
    assert not (out / "store.json").exists()
    with pytest.raises(CurationError, match="interrupted embedding run"):
        load_embeddings(out)
    monkeypatch.setattr(store_module, "write_text", real_write)
    seen = _counting(monkeypatch)
    done = embed_images(model, folder, out, pooling="mean", **run)  # the same settings: resumed, nothing to embed
    assert seen == [] and json.loads((out / "store.json").read_text())["pooling"] == "mean"
    np.testing.assert_allclose(np.asarray(done.embeddings), mean, atol=1e-6)
    # cut short again, then the settings of the store before: embedded afresh, never the other rows
    monkeypatch.setattr(store_module, "write_text", full_at_names)
    with pytest.raises(OSError):
        embed_images(model, folder, out, **run)
    monkeypatch.setattr(store_module, "write_text", real_write)
    seen.clear()
    with pytest.warns(UserWarning, match="other inputs or settings"):
        again = embed_images(model, folder, out, pooling="mean", **run)
    assert sum(seen) == 7 and again.names == done.names
    np.testing.assert_allclose(np.asarray(again.embeddings), mean, atol=1e-6)


def test_seeds_and_a_pool_embedded_differently_are_refused_naming_the_settings(tmp_path, capsys):
    """A precomputed pool store and seeds embedded here (or two stores) made with other settings are
    refused before anything is embedded, naming the settings and the option that matches them."""
    pool = _images(tmp_path / "pool", 10, broken=False)
    seeds = _images(tmp_path / "seeds", 3, broken=False)
    weights = _tiny_weights(tmp_path)
    model = ["--weights", str(weights), "--no-progress", "--clusters", "2,1", "--no-dedup"]
    assert main(["curate", str(pool), "--target", "4", "--out", str(tmp_path / "a"), "--size", "28", *model]) == 0
    store = tmp_path / "a" / "embeddings"
    out = tmp_path / "b"
    capsys.readouterr()  # (the first run's notes)
    assert main(["curate", str(store), "--target", "4", "--out", str(out), "--seeds", str(seeds), "--size", "42",
                 "--pooling", "mean", *model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "size 28 for the pool, 42 for the seeds" in err and "pooling cls for the pool, mean for the seeds" in err
    assert "embed the seeds as " in err and "was: --size 28, --pooling cls" in err and not out.exists()
    # the seeds in a store of their own, embedded with the pool's settings but under bf16 autocast
    assert main(["curate", str(seeds), "--target", "2", "--out", str(tmp_path / "s"), "--size", "28", "--bf16",
                 *model]) == 0
    assert main(["curate", str(store), "--target", "4", "--out", str(out), "--seeds", str(tmp_path / "s" / "embeddings"),
                 *model]) == 2
    err = capsys.readouterr().err
    assert "autocast off for the pool, bfloat16 for the seeds" in err and "embed one of them again" in err
    # the same settings: curated
    assert main(["curate", str(store), "--target", "4", "--out", str(out), "--seeds", str(seeds), "--size", "28",
                 *model]) == 0


def test_a_pool_and_seeds_of_other_weight_dtypes_name_dtype_not_other_weights(tmp_path, monkeypatch, capsys):
    """--dtype bf16 changes the weights' hash too: a pool and seeds (or a store and a rerun) made with other
    --dtype were told apart as 'other weights', with the fix 'the --model/--weights that made ...' although
    those were the same. The store records the weights' dtype, and the messages name --dtype."""
    import dinov2_dense.features

    monkeypatch.setattr(dinov2_dense.features, "cpu_has_native_bf16", lambda: True)  # bf16 weights taken anywhere
    pool = _images(tmp_path / "pool", 8, broken=False)
    seeds = _images(tmp_path / "seeds", 3, broken=False)
    model = ["--weights", str(_tiny_weights(tmp_path)), "--size", "28", "--no-progress", "--clusters", "2,1",
             "--no-dedup"]
    assert main(["curate", str(pool), "--target", "4", "--out", str(tmp_path / "a"), "--dtype", "bf16", *model]) == 0
    store = tmp_path / "a" / "embeddings"
    assert json.loads((store / "store.json").read_text())["weights_dtype"] == "bfloat16"
    capsys.readouterr()
    out = tmp_path / "b"
    assert main(["curate", str(store), "--target", "4", "--out", str(out), "--seeds", str(seeds), *model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "embedded differently (weights_dtype bfloat16 for the pool, float32 for the seeds); " in err, err
    assert f"embed the seeds as {store} was: --dtype bf16 (and the same --model/--weights" in err, err
    assert main(["curate", str(store), "--target", "4", "--out", str(out), "--seeds", str(seeds), "--dtype", "bf16",
                 *model]) == 0
    # a rerun of the pool in float32 over the bf16 store says which setting changed
    capsys.readouterr()
    assert main(["curate", str(pool), "--target", "4", "--out", str(tmp_path / "a"), "--overwrite", *model]) == 0
    err = capsys.readouterr().err
    assert "weights_dtype bfloat16 -> float32" in err, err
    assert "weights_dtype" not in json.loads((store / "store.json").read_text())  # float32: as stores before


def test_a_store_embeds_again_the_images_changed_since(tmp_path, monkeypatch, capsys):
    """Each file's size and modification time are recorded: a changed or repaired image is embedded again
    (with the unreadable ones), the others kept; a store without the record (made before it) counts files
    modified after its store.json as changed; a resumed partial store does the same."""
    folder = _images(tmp_path / "imgs", 11)  # and zz_broken.png
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    with pytest.warns(UserWarning, match="could not be read"):
        embed_images(model, folder, out, **run)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (35, 40, 3), dtype=np.uint8)).save(folder / "im03.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).save(folder / "zz_broken.png")  # repaired
    capsys.readouterr()
    seen = _counting(monkeypatch)
    store = embed_images(model, folder, out, **run)
    assert sum(seen) == 2 and store.unreadable == () and len(store) == 12
    assert "0 new image(s), 0 gone, 2 changed since they were embedded" in capsys.readouterr().err
    fresh = embed_images(model, folder, tmp_path / "fresh", **run)
    assert store.names == fresh.names
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(fresh.embeddings), atol=1e-6)
    seen.clear()
    embed_images(model, folder, out, **run)
    assert seen == []  # nothing changed since

    # a store made before the record: files modified after its store.json count as changed
    (out / "stats.npy").unlink()
    embed_images(model, folder, out, **run)
    assert seen == [] and (out / "stats.npy").is_file()  # none was: the record is written from now on
    (out / "stats.npy").unlink()
    later = (out / "store.json").stat().st_mtime_ns + 5_000_000_000
    Image.fromarray(rng.integers(0, 255, (31, 33, 3), dtype=np.uint8)).save(folder / "im07.png")
    os.utime(folder / "im07.png", ns=(later, later))
    store = embed_images(model, folder, out, **run)
    assert sum(seen) == 1 and "no record of its files" in capsys.readouterr().err
    fresh = embed_images(model, folder, tmp_path / "fresh2", **run)
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(fresh.embeddings), atol=1e-6)

    # an interrupted run whose first batch's image changes before it is resumed
    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, tmp_path / "part", **run)
    Image.fromarray(rng.integers(0, 255, (29, 45, 3), dtype=np.uint8)).save(folder / "im01.png")
    seen = _counting(monkeypatch)
    resumed = embed_images(model, folder, tmp_path / "part", **run)
    assert sum(seen) == 12 - 4 + 1
    fresh = embed_images(model, folder, tmp_path / "fresh3", **run)
    np.testing.assert_allclose(np.asarray(resumed.embeddings), np.asarray(fresh.embeddings), atol=1e-6)


def test_a_names_file_repeating_a_name_is_refused_and_relative_names_become_paths(tmp_path, monkeypatch, capsys):
    """A names file that gives a name twice is refused, naming it and its line; relative names that are
    files beside the names file are written to selected.txt as absolute paths (pretraining reads a relative
    name against selected.txt's folder), other names as given."""
    x, _ = skewed_pool(40, concepts=4, dim=16, dominant=0.3)
    npy = write_pool(tmp_path / "in", x)
    names = [f"img_{i:06d}.jpg" for i in range(40)]
    names[9] = names[4]
    (tmp_path / "in" / "pool.txt").write_text("".join(n + "\n" for n in names))
    args = ["--target", "40", "--clusters", "4,2", "--no-dedup", "--no-progress"]
    assert main(["curate", str(npy), "--out", str(tmp_path / "o1"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pool.txt" in err and "line 10" in err and "'img_000004.jpg'" in err, err
    assert not (tmp_path / "o1").exists()

    (tmp_path / "in" / "pics").mkdir()
    for i in range(0, 40, 2):  # the even names are files beside the names file
        (tmp_path / "in" / "pics" / f"p{i}.png").write_bytes(b"")
    given = [f"pics/p{i}.png" if i % 2 == 0 else f"img_{i:06d}.jpg" for i in range(40)]
    (tmp_path / "in" / "pool.txt").write_text("".join(n + "\n" for n in given))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["curate", str(npy), "--out", str(tmp_path / "o2"), *args]) == 0
    selected = (tmp_path / "o2" / "selected.txt").read_text().splitlines()
    want = {str(tmp_path / "in" / n) if n.startswith("pics/") else n for n in given}
    assert len(selected) == 40 and set(selected) == want


def test_resample_steps_of_the_wrong_count_are_refused_before_embedding(tmp_path, capsys):
    """The levels are known from --clusters (or --levels): --resample-steps of another count is refused
    before any image is embedded, naming the option."""
    folder = _images(tmp_path / "imgs", 6, broken=False)
    out = tmp_path / "out"
    assert main(["curate", str(folder), "--target", "3", "--out", str(out), "--clusters", "3,2", "--resample-steps",
                 "0,1,2", "--no-dedup", "--weights", str(_tiny_weights(tmp_path)), "--size", "28", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resample-steps 0,1,2" in err and "2 k-means levels" in err, err
    assert not out.exists()


def test_a_no_dedup_run_reports_dedup_off(tmp_path, capsys):
    x, _ = skewed_pool(60, concepts=4, dim=16, dominant=0.3)
    out = tmp_path / "out"
    assert main(["curate", str(write_pool(tmp_path / "in", x)), "--target", "10", "--out", str(out), "--clusters",
                 "4,2", "--no-dedup", "--no-progress"]) == 0
    assert "| near-duplicates removed | off (--no-dedup) |" in (out / "report.md").read_text()
    assert "threshold None" not in (out / "report.html").read_text()
    assert "no near-duplicate removal (--no-dedup)" in capsys.readouterr().out


def test_a_list_file_repeating_a_path_is_warned_about_once(tmp_path, recwarn):
    _images(tmp_path / "imgs", 6, broken=False)
    (tmp_path / "list.txt").write_text("".join(f"imgs/im{i:02d}.png\n" for i in (0, 1, 2, 3, 4, 5, 2)))
    assert main(["curate", str(tmp_path / "list.txt"), "--target", "3", "--out", str(tmp_path / "out"), "--clusters",
                 "3,2", "--no-dedup", "--weights", str(_tiny_weights(tmp_path)), "--size", "28", "--no-progress"]) == 0
    repeated = [str(w.message) for w in recwarn.list if "repeated path" in str(w.message)]
    assert len(repeated) == 1 and "list.txt: 1 repeated path" in repeated[0], repeated


def test_an_interrupted_curate_says_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the pool is embedded: the rows done are kept, and the message says that the same
    command resumes (not that nothing was left); the rerun embeds only the rest."""
    folder = _images(tmp_path / "imgs", 10, broken=False)
    weights = _tiny_weights(tmp_path)
    args = ["curate", str(folder), "--target", "3", "--out", str(tmp_path / "out"), "--weights", str(weights),
            "--size", "28", "--clusters", "2,1", "--batch-size", "4", "--num-workers", "0", "--no-progress",
            "--no-dedup"]
    _interrupting(monkeypatch)
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "no half-written file" not in err
    assert "4 of 10 images in" in err and "run the same command again to resume" in err, err
    seen = _counting(monkeypatch)
    assert main(args) == 0
    assert sum(seen) == 6 and "resuming; 4 of 10" in capsys.readouterr().err


def test_a_size_off_the_patch_grid_is_refused_before_anything_is_written(tmp_path):
    """--size 50 would resize each image twice (to 50, then onto the 56-pixel grid): refused naming the
    sizes that fit, before the output folder is made."""
    from pretrain.curation import CurationError
    from pretrain.export import export_backbone

    folder = _images(tmp_path / "imgs", 6, broken=False)
    weights = export_backbone(tiny_vit(depth=1, dim=32, img=28), tmp_path / "export")["safetensors"]
    assert main(["curate", str(folder), "--target", "2", "--out", str(tmp_path / "out"), "--weights", str(weights),
                 "--size", "50", "--no-progress"]) == 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(CurationError, match=r"--size 50: not a multiple of the model's patch size 14 .*use 42 or 56"):
        embed_images(tiny_vit(depth=1, dim=32, img=28), folder, tmp_path / "e", size=50, progress=False)


def test_a_store_keeps_the_rows_of_unchanged_images_when_the_pool_changes(tmp_path, monkeypatch, capsys):
    """An image added to the pool and one removed: only the new one is embedded (rows matched by name), one
    line giving the counts; the rows equal a fresh store's. Another --size embeds all again, saying why."""
    folder = _images(tmp_path / "imgs", 8, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    embed_images(model, folder, out, **run)
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (33, 37, 3), dtype=np.uint8)).save(folder / "new.png")
    (folder / "im02.png").unlink()
    capsys.readouterr()
    seen = _counting(monkeypatch)
    store = embed_images(model, folder, out, **run)
    assert sum(seen) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 new image(s), 1 gone, 0 changed since they were embedded" in err, err
    assert "7 kept; embedding 1 of the 8" in err, err
    fresh = embed_images(model, folder, tmp_path / "fresh", **run)
    assert store.names == fresh.names and str(folder / "im02.png") not in store.names
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(fresh.embeddings), atol=1e-6)
    seen.clear()
    embed_images(model, folder, out, size=42, batch_size=4, progress=False)
    assert sum(seen) == 8 and "other settings (size 28 -> 42); embedding all 8 images again" in capsys.readouterr().err


def test_a_store_of_the_same_weights_built_with_other_heads_is_embedded_again(tmp_path, monkeypatch, capsys):
    """The store was keyed by the weights alone: the same weights read with an architecture file of other
    num_heads (other features) reused its rows. A store from before the record is taken as it is."""
    folder = _images(tmp_path / "imgs", 4, broken=False)
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    four = tiny_vit(depth=2, dim=32, heads=4, img=28).eval()
    four.load_state_dict(model.state_dict())
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    embed_images(model, folder, out, **run)
    info = json.loads((out / "store.json").read_text())
    assert info["forward"] == {"num_heads": 2, "interpolate_antialias": False, "interpolate_offset": 0.1}, info
    capsys.readouterr()
    seen = _counting(monkeypatch)
    again = embed_images(four, folder, out, **run)
    assert sum(seen) == 4 and "other settings (forward " in capsys.readouterr().err
    fresh = embed_images(four, folder, tmp_path / "fresh", **run)
    np.testing.assert_array_equal(np.asarray(again.embeddings), np.asarray(fresh.embeddings))
    # a store from before the record: its rows are kept, whatever the settings
    info = json.loads((out / "store.json").read_text())
    del info["forward"]
    (out / "store.json").write_text(json.dumps(info))
    seen.clear()
    embed_images(four, folder, out, **run)
    assert seen == []


def _reading(monkeypatch) -> list[str]:
    """The image files read from here on (every read of the store and of knn goes through try_read_resized)."""
    import dinov2_dense.evaluation.knn as knn

    read: list[str] = []
    real = knn.try_read_resized
    monkeypatch.setattr(knn, "try_read_resized", lambda path, *a, **k: read.append(path) or real(path, *a, **k))
    return read


def test_a_rerun_reads_no_image_unless_the_pixel_limit_is_raised(tmp_path, monkeypatch):
    """store.json records the pixel limit in force (the default too). A rerun with the limit unchanged or
    lowered, or of a store without the record (taken as the default), reads no image at all, not even the
    one listed unreadable: a repaired file would have a new size or time."""
    import dinov2_dense.images as images

    folder = _images(tmp_path / "imgs", 3)  # and zz_broken.png
    model = tiny_vit(depth=1, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    with pytest.warns(UserWarning, match="1 of 4 images could not be read"):
        first = embed_images(model, folder, out, **run)
    read = _reading(monkeypatch)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = embed_images(model, folder, out, **run)
    assert read == [] and again.names == first.names and again.unreadable == first.unreadable
    assert json.loads((out / "store.json").read_text())["max_pixels"] == images.max_pixels() > 0
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)  # lowered
    embed_images(model, folder, out, **run)
    monkeypatch.setattr(images, "MAX_PIXELS", None)
    settings = json.loads((out / "store.json").read_text())
    del settings["max_pixels"]  # a store made before the record
    (out / "store.json").write_text(json.dumps(settings))
    before["store.json"] = (out / "store.json").read_bytes()
    embed_images(model, folder, out, **run)
    assert read == [] and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_images_listed_unreadable_are_read_again_when_the_pixel_limit_is_raised(tmp_path, monkeypatch, capsys):
    """An image over the pixel limit is listed unreadable. Under a raised limit, as the message advises, the
    next run reads it again (only it, as any image to embed) and records the new limit: still over it, it
    stays listed with the reason found now; under the default (raised again), it is embedded, as a fresh
    store does. 0 (no limit) is above any limit."""
    import dinov2_dense.images as images

    folder = _images(tmp_path / "imgs", 5, broken=False)
    Image.fromarray(np.zeros((60, 60, 3), dtype=np.uint8)).save(folder / "big.png")
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    monkeypatch.setattr(images, "MAX_PIXELS", 2000)
    with pytest.warns(UserWarning, match="1 of 6 images could not be read"):
        first = embed_images(model, folder, out, **run)
    assert len(first) == 5 and "over the limit of 2,000" in first.unreadable[0]
    assert json.loads((out / "store.json").read_text())["max_pixels"] == 2000
    read, seen = _reading(monkeypatch), _counting(monkeypatch)
    monkeypatch.setattr(images, "MAX_PIXELS", 3000)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="1 of 6 images could not be read"):
        again = embed_images(model, folder, out, **run)
    assert read == [str(folder / "big.png")] and seen == [] and len(again) == 5
    assert "over the limit of 3,000" in again.unreadable[0] and again.settings["max_pixels"] == 3000
    err = capsys.readouterr().err
    assert "(1 of them unreadable before, tried again: the pixel limit is raised, 2,000 -> 3,000)" in err, err
    embed_images(model, folder, out, **run)  # the limit recorded: not read again
    assert len(read) == 1
    monkeypatch.setattr(images, "MAX_PIXELS", None)
    store = embed_images(model, folder, out, **run)
    assert read[1:] == [str(folder / "big.png")] and sum(seen) == 1 and store.unreadable == () and len(store) == 6
    assert store.settings["max_pixels"] == images.max_pixels()
    fresh = embed_images(model, folder, tmp_path / "fresh", **run)
    np.testing.assert_allclose(np.asarray(store.embeddings), np.asarray(fresh.embeddings), atol=1e-6)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="could not be read"):
        embed_images(model, folder, out, **run)
    del read[:]
    default = images.max_pixels()
    monkeypatch.setattr(images, "MAX_PIXELS", 0)  # no limit: above the default
    with pytest.warns(UserWarning, match="could not be read"):
        embed_images(model, folder, out, **run)
    assert read == [str(folder / "zz_broken.png")]
    assert f"the pixel limit is raised, {default:,} -> none)" in capsys.readouterr().err


def test_a_changed_pool_does_not_read_again_the_images_listed_unreadable(tmp_path, monkeypatch, capsys):
    """An image added to the pool costs that image only: one listed unreadable and unchanged since stays
    listed with its reason, unread, also when the run that adds the image is cut short and resumed; under
    a raised pixel limit (also on resuming) or once its file changed, it is read again."""
    import dinov2_dense.features as features
    import dinov2_dense.images as images

    folder = _images(tmp_path / "imgs", 5)  # and zz_broken.png
    model = tiny_vit(depth=1, dim=32, img=28).eval()
    run = dict(size=28, batch_size=4, progress=False)
    out = tmp_path / "store"
    with pytest.warns(UserWarning, match="1 of 6 images could not be read"):
        first = embed_images(model, folder, out, **run)
    broken = str(folder / "zz_broken.png")
    Image.fromarray(np.zeros((33, 33, 3), dtype=np.uint8)).save(folder / "new.png")
    read = _reading(monkeypatch)
    capsys.readouterr()
    with pytest.warns(UserWarning, match="1 of 7 images could not be read"):
        again = embed_images(model, folder, out, **run)
    assert read == [str(folder / "new.png")] and again.unreadable == first.unreadable and len(again) == 6
    err = capsys.readouterr().err
    assert "1 new image(s), 0 gone, 0 changed" in err and "5 kept; embedding 1 of the 7 (1 unchanged and listed " \
        "unreadable, not read again)" in err, err

    # cut short after the refresh: the partial store keeps the listed one with its reason
    for name in ("b.png", "c.png", "d.png", "e.png", "f.png"):
        Image.fromarray(np.full((33, 33, 3), 9, dtype=np.uint8)).save(folder / name)
    del read[:]
    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, out, **run)
    assert (out / "unreadable.partial.txt").read_text().startswith(broken + "\t")
    monkeypatch.setattr(features, "extract_features", _extract_features)
    Image.fromarray(np.full((30, 40, 3), 3, dtype=np.uint8)).save(folder / "im00.png")  # changed meanwhile
    capsys.readouterr()
    with pytest.warns(UserWarning, match="1 of 12 images could not be read"):
        resumed = embed_images(model, folder, out, **run)
    assert broken not in read and resumed.unreadable == first.unreadable and len(resumed) == 11
    assert "9 kept; embedding 2 of the 12 (1 unchanged and listed unreadable, not read again)" in \
        capsys.readouterr().err
    assert not (out / "unreadable.partial.txt").exists()

    # cut short again; resumed under a raised limit, the listed one is read again
    for name in ("g.png", "h.png", "i.png", "j.png", "k.png"):
        Image.fromarray(np.full((33, 33, 3), 7, dtype=np.uint8)).save(folder / name)
    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(model, folder, out, **run)
    monkeypatch.setattr(features, "extract_features", _extract_features)
    del read[:]
    monkeypatch.setattr(images, "MAX_PIXELS", 0)
    with pytest.warns(UserWarning, match="1 of 17 images could not be read"):
        embed_images(model, folder, out, **run)
    assert broken in read
    monkeypatch.setattr(images, "MAX_PIXELS", None)

    # a changed file is read again (here repaired), the pool changed too
    Image.fromarray(np.full((30, 30, 3), 5, dtype=np.uint8)).save(folder / "zz_broken.png")
    (folder / "g.png").unlink()
    del read[:]
    store = embed_images(model, folder, out, **run)
    assert read == [broken] and store.unreadable == () and len(store) == 16


def test_a_full_disk_while_results_are_replaced_leaves_the_old_ones(tmp_path, monkeypatch, capsys):
    """curate --overwrite with the disk full at report.md: every result of the earlier run stays as it was
    (none of the new run's), no temporary is left, and the one-line error names the file."""
    import errno

    x, _ = skewed_pool(60, concepts=4, dim=16, dominant=0.3)
    npy = write_pool(tmp_path / "in", x)
    out = tmp_path / "out"
    args = ["curate", str(npy), "--out", str(out), "--clusters", "4,2", "--iters", "3", "--no-progress"]
    assert main([*args, "--target", "30"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = Path.write_bytes

    def full(self, data):
        if self.name.startswith(".report."):
            raise OSError(errno.ENOSPC, "No space left on device")  # as at the close of the file: no name
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    capsys.readouterr()
    assert main([*args, "--target", "10", "--seed", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert sorted(name for name, data in before.items() if (out / name).read_bytes() != data) == []
    assert sorted(p.name for p in out.iterdir()) == sorted(before)  # no temporary left beside them
    # the run's note on the levels it could not resample (said with --no-progress), then the one error line
    lines = [line for line in err.splitlines() if not line.strip().startswith("not resampled:")]
    assert len(lines) == 1 and f"cannot write {out / 'report.md'}: No space left" in lines[0], err


def test_names_holding_line_separators_survive_a_store_and_line_breaks_are_refused(tmp_path, monkeypatch):
    """A file name holding U+2028 or U+0085 (str.splitlines breaks at them) is one name of the store, which
    is read back and reused; a name holding "\\n" or "\\r" cannot be one line of names.txt: refused, named."""
    from pretrain.curation import CurationError, list_images

    folder = _images(tmp_path / "imgs", 4, broken=False)
    for name in ("photo\u2028x.png", "a\x85b.png"):
        (folder / name).write_bytes((folder / "im00.png").read_bytes())
    model = tiny_vit(depth=2, dim=32, img=28).eval()
    store = embed_images(model, folder, tmp_path / "store", size=28, batch_size=4, progress=False)
    assert len(store) == 6 and str(folder / "photo\u2028x.png") in store.names
    seen = _counting(monkeypatch)
    assert embed_images(model, folder, tmp_path / "store", size=28, batch_size=4, progress=False).names == store.names
    assert seen == []
    (folder / "two\nlines.png").write_bytes(b"")
    with pytest.raises(CurationError) as caught:
        list_images(folder)
    assert "\n" not in str(caught.value) and "two\\nlines.png" in str(caught.value)


def test_an_interrupted_store_given_as_input_says_so_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    """The folder an interrupted embedding left (partial.json, embeddings.partial.npy) is a store, not a folder
    of images: the store's message, and no model is loaded (without --model: the default one, a download)."""
    import dinov2_dense.cli as cli

    folder = _images(tmp_path / "imgs", 6, broken=False)
    _interrupting(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        embed_images(tiny_vit(depth=2, dim=32, img=28).eval(), folder, tmp_path / "part", size=28, batch_size=4,
                     progress=False)
    monkeypatch.setattr(cli, "_load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    assert main(["curate", str(tmp_path / "part"), "--target", "2", "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "an interrupted embedding run: run it again to finish it" in err, err


def test_a_synthetic_scenes_root_gives_its_images_only_as_pretraining_reads_it(tmp_path):
    """The root of `dinov2-dense synth --layout folder` (images/ beside masks/ and depth/): curation lists its
    images/ only, saying so, as pretraining's data set does, never the label and depth maps as photographs."""
    from pretrain.curation.store import list_images
    from pretrain.data.datasets import build_dataset

    pool = tmp_path / "pool"
    _images(pool / "images", 3, broken=False)
    _images(pool / "masks", 3, broken=False)
    _images(pool / "depth", 3, broken=False)
    with pytest.warns(UserWarning, match=r"pool: the layout of `dinov2-dense synth --layout folder`; taking its "
                                         r"images only \(.*pool/images\), not its masks/ and depth/") as said:
        listed = list_images(pool)
    assert listed == [str(pool / "images" / f"im{i:02d}.png") for i in range(3)]
    assert len([w for w in said.list if "layout of" in str(w.message)]) == 1
    assert len(build_dataset(str(pool))) == len(listed)
    assert len(list_images(pool / "masks")) == 3  # a folder of its own: as it is


def test_no_readable_image_leaves_no_output_and_an_earlier_store_as_it_was(tmp_path, monkeypatch, capsys):
    """Bad input that only embedding finds (every image gone, or none readable) is refused like any other:
    a fresh --out is not left behind (no marker, no partial store); an earlier run's interrupted store in
    --out is left byte for byte, and resumes once the images are back."""
    weights = _tiny_weights(tmp_path)
    folder = _images(tmp_path / "imgs", 6, broken=False)
    (tmp_path / "list.txt").write_text("".join(f"imgs/im{i:02d}.png\n" for i in range(6)))
    common = ["--weights", str(weights), "--size", "28", "--clusters", "2,1", "--batch-size", "4", "--num-workers",
              "0", "--no-progress", "--no-dedup", "--target", "3"]

    def refused(inputs: Path, out: Path, *expected: str) -> None:
        assert main(["curate", str(inputs), "--out", str(out), *common]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(e in err for e in expected), err

    (tmp_path / "broken").mkdir()
    for i in range(4):
        (tmp_path / "broken" / f"b{i}.png").write_bytes(b"not a png")
    refused(tmp_path / "broken", tmp_path / "out1", "none of the 4 images could be read", "b0.png: not a readable")
    assert not (tmp_path / "out1").exists()
    # an earlier run, interrupted: its store stays as it was when every image is gone
    out = tmp_path / "out2"
    _interrupting(monkeypatch)
    assert main(["curate", str(tmp_path / "list.txt"), "--out", str(out), *common]) == 130
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert out / "embeddings" / "partial.json" in before
    moved = folder.rename(tmp_path / "elsewhere")
    refused(tmp_path / "list.txt", out, "none of the 6 images could be read", "im00.png: no such image file")
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    refused(tmp_path / "list.txt", tmp_path / "out3", "none of the 6 images")
    assert not (tmp_path / "out3").exists()
    moved.rename(folder)
    seen = _counting(monkeypatch)
    assert main(["curate", str(tmp_path / "list.txt"), "--out", str(out), *common]) == 0
    assert sum(seen) == 2 and "resuming; 4 of 6" in capsys.readouterr().err


def test_fewer_selected_than_the_target_says_why(tmp_path, capsys):
    """Unreadable images left fewer rows than --target, nothing was deduplicated: the line says so."""
    folder = _images(tmp_path / "imgs", 4)  # and zz_broken.png
    assert main(["curate", str(folder), "--target", "5", "--out", str(tmp_path / "out"), "--weights",
                 str(_tiny_weights(tmp_path)), "--size", "28", "--clusters", "2,1", "--no-dedup", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "4 selected (fewer than --target 5: 1 of the 5 images unreadable)" in said, said
    assert "deduplication" not in said


def test_levels_and_clusters_that_disagree_are_refused(tmp_path, capsys):
    """--clusters gives one count a level: with --levels 2 and --clusters 3, one level ran without a word."""
    folder = _images(tmp_path / "imgs", 4, broken=False)
    out = tmp_path / "out"
    assert main(["curate", str(folder), "--target", "2", "--out", str(out), "--weights", "random", "--size", "28",
                 "--levels", "2", "--clusters", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--levels 2 and --clusters 3 (1 level) disagree" in err, err
    assert not out.exists()


def test_the_entropy_of_one_cluster_is_zero_not_minus_zero():
    """`curate --target 1` printed "entropy 1.000 -> -0.000" and summary.json held -0.0 (a reviewer)."""
    assert f"{normalized_entropy(np.array([2, 2, 2]), 4):.3f}" == "0.000"
    assert normalized_entropy(np.array([0, 1, 2, 3]), 4) == pytest.approx(1.0)
