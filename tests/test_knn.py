"""k-NN and linear-probe evaluation of frozen features (dinov2_dense.evaluation.knn).

The k-NN formula is written out again here, loop by loop, and checked on hand-computed cases;
the official ``KnnModule`` (dinov2/eval/knn.py, installed as a test oracle) is loaded from its
file without its package (which needs torchvision) and compared on random data.
"""

import ast
import importlib.util
import math
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2_dense.evaluation import (
    evaluate_folder,
    fit_linear,
    folder_features,
    folder_split_features,
    knn_accuracy,
    knn_classify,
    linear_probe,
    list_image_folder,
    stratified_split,
    topk_accuracy,
)
from dinov2_dense.features import extract_features
from tests.conftest import tiny_vit

T = 0.07


def reference_knn(train, labels, test, k=20, temperature=T, num_classes=None):
    """The DINO k-NN vote, written out: cosine similarity to every training sample, the k most
    similar (ties: lower index), weight exp(s / T), class score = sum of its neighbours' weights.
    Unnormalised scores, float64."""
    train, test = train.double(), test.double()
    c = num_classes or int(labels.max()) + 1
    scores = torch.zeros(len(test), c, dtype=torch.float64)
    for i, q in enumerate(test):
        sims = [float(q @ t / (q.norm() * t.norm())) for t in train]
        order = sorted(range(len(train)), key=lambda j: (-sims[j], j))[:k]
        for j in order:
            scores[i, int(labels[j])] += math.exp(sims[j] / temperature)
    return scores


def rank_classes(scores):
    return sorted(range(len(scores)), key=lambda c: (-float(scores[c]), c))


# -- k-NN: hand-computed cases ----------------------------------------------------------------
TRAIN_2D = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # cosine to (1, 0): 1, 0, 1/sqrt(2)
LABELS_2D = torch.tensor([0, 1, 1])
QUERY = torch.tensor([[1.0, 0.0]])


def test_knn_hand_computed_weights():
    s = [1.0, 0.0, 1 / math.sqrt(2)]
    w = [math.exp(x / T) for x in s]
    result = knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=3)
    expected = torch.tensor([[w[0], w[1] + w[2]]]) / sum(w)
    torch.testing.assert_close(result.scores, expected.float(), rtol=1e-5, atol=1e-7)
    assert result.predictions.tolist() == [0]
    # k=1: only the identical sample votes; k=2: (1, 0) and (1, 1), not the orthogonal one
    assert knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=1).scores.tolist() == [[1.0, 0.0]]
    torch.testing.assert_close(knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=2).scores,
                               torch.tensor([[w[0], w[2]]]) / (w[0] + w[2]))


def test_knn_temperature_effect():
    # at T = 0.07 the single nearest neighbour outvotes two farther ones; at a high T the votes
    # are nearly equal and the two class-1 neighbours win; a lower T sharpens the vote
    assert knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=3, temperature=0.07).predictions.tolist() == [0]
    hot = knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=3, temperature=100.0)
    assert hot.predictions.tolist() == [1]
    w = [math.exp(x / 100.0) for x in (1.0, 0.0, 1 / math.sqrt(2))]
    assert hot.scores[0, 1].item() == pytest.approx((w[1] + w[2]) / sum(w), rel=1e-5)
    sharp = [knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=3, temperature=t).scores[0, 0].item() for t in (1.0, 0.3, 0.07, 0.01)]
    assert sharp == sorted(sharp) and sharp[-1] == pytest.approx(1.0, abs=1e-6)


def test_knn_k_larger_than_train_set_uses_all():
    big = knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=20)
    torch.testing.assert_close(big.scores, knn_classify(TRAIN_2D, LABELS_2D, QUERY, k=3).scores)


def test_knn_ties():
    # a class-score tie goes to the lower class index, whichever order the training set has
    train = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # the same direction: equal similarity
    for labels in ([1, 0], [0, 1]):
        result = knn_classify(train, torch.tensor(labels), QUERY, k=2)
        assert result.scores.tolist() == [[0.5, 0.5]]
        assert result.predictions.tolist() == [0]
    # equal similarities inside the k nearest all vote alike; which of two tied k-th neighbours is
    # taken (torch.topk decides, as in the official code) cannot matter when they share a label
    query = torch.tensor([[1.0, 1.0]])
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])  # cosine 0.707 x 3, then -0.707
    result = knn_classify(train, torch.tensor([0, 2, 2, 1]), query, k=3, num_classes=4)
    assert result.scores[0].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3, 0.0])  # equal weights
    train = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # cosine 1, 0.707, 0.707, -0.707
    result = knn_classify(train, torch.tensor([0, 2, 2, 1]), query, k=2, num_classes=4)
    w0, w2 = math.exp(1 / T), math.exp(math.sqrt(0.5) / T)
    assert result.scores[0].tolist() == pytest.approx([w0 / (w0 + w2), 0.0, w2 / (w0 + w2), 0.0])


def test_knn_scale_invariant_and_num_classes():
    gen = torch.Generator().manual_seed(0)
    train, test = torch.randn(40, 6, generator=gen), torch.randn(9, 6, generator=gen)
    labels = torch.randint(0, 4, (40,), generator=gen)
    a = knn_classify(train, labels, test)
    b = knn_classify(train * torch.rand(40, 1, generator=gen) * 10, labels, test * 3.0)
    torch.testing.assert_close(a.scores, b.scores)
    wide = knn_classify(train, labels, test, num_classes=7)
    assert wide.scores.shape == (9, 7) and (wide.scores[:, 4:] == 0).all()
    torch.testing.assert_close(a.scores.sum(1), torch.ones(9))


# -- k-NN: against the formula and the official module -----------------------------------------
def random_task(seed=0, n=120, m=37, d=16, c=7):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(c, d, generator=gen)
    labels = torch.randint(0, c, (n,), generator=gen)
    test_labels = torch.randint(0, c, (m,), generator=gen)
    train = centres[labels] + 0.8 * torch.randn(n, d, generator=gen)
    test = centres[test_labels] + 0.8 * torch.randn(m, d, generator=gen)
    return train, labels, test, test_labels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_written_out_formula(k):
    train, labels, test, _ = random_task()
    ref = reference_knn(train, labels, test, k=k)
    result = knn_classify(train, labels, test, k=k)
    torch.testing.assert_close(result.scores.double(), ref / ref.sum(1, keepdim=True), rtol=1e-4, atol=1e-6)
    assert result.predictions.tolist() == [rank_classes(r)[0] for r in ref]


def test_knn_chunking_changes_nothing():
    train, labels, test, test_labels = random_task(seed=1, n=200, m=50)
    whole = knn_classify(train, labels, test)
    chunked = knn_classify(train, labels, test, chunk_size=7, train_chunk_size=13)
    tiny = knn_classify(train, labels, test, k=20, chunk_size=1, train_chunk_size=3)  # chunks smaller than k
    torch.testing.assert_close(chunked.scores, whole.scores)
    torch.testing.assert_close(tiny.scores, whole.scores)
    assert knn_accuracy(train, labels, test, test_labels, chunk_size=5) == knn_accuracy(train, labels, test, test_labels)


def test_knn_accuracy_top1_top5():
    train, labels, test, test_labels = random_task(seed=2)
    ref = reference_knn(train, labels, test)
    ranks = [rank_classes(r) for r in ref]
    top1 = 100 * np.mean([r[0] == y for r, y in zip(ranks, test_labels.tolist())])
    top5 = 100 * np.mean([y in r[:5] for r, y in zip(ranks, test_labels.tolist())])
    acc = knn_accuracy(train, labels, test, test_labels)
    assert acc == pytest.approx({"top1": top1, "top5": top5})
    assert 50 < acc["top1"] <= acc["top5"] <= 100
    # fewer than 5 classes: top-1 only
    few = knn_accuracy(TRAIN_2D, LABELS_2D, QUERY, torch.tensor([0]))
    assert few == {"top1": 100.0}


def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.0, 0.1, 0.1],
                           [0.3, 0.3, 0.0, 0.1, 0.1, 0.2],   # tie between 0 and 1: class 0 ranks first
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]])
    labels = torch.tensor([1, 1, 5])
    # sample 1: ranks 1st; sample 2: 2nd (tie lost); sample 3: class 5 is last (tied with 0, after it)
    assert topk_accuracy(scores, labels) == pytest.approx({"top1": 100 / 3, "top5": 200 / 3})
    assert topk_accuracy(scores, labels, ks=(1, 2, 10)) == pytest.approx({"top1": 100 / 3, "top2": 200 / 3})
    # 11 hits of 20 are 55.0 exactly, as knn's JSON shows them (the mean x 100 was 55.00000000000001)
    twenty = torch.eye(20)[:, :10]
    labels = torch.tensor([*range(10), 0, *[1] * 9])  # rows 10-19 score all classes 0: class 0 ranks first
    assert topk_accuracy(twenty, labels, ks=(1,)) == {"top1": 55.0}


def load_official_knn_module():
    """``KnnModule`` from the installed dinov2/eval/knn.py, without importing its package."""
    spec = importlib.util.find_spec("dinov2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the official dinov2 package (test oracle) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "eval" / "knn.py"
    tree = ast.parse(path.read_text())
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "KnnModule")
    namespace = {"torch": torch, "one_hot": F.one_hot, "softmax": F.softmax,
                 "distributed": types.SimpleNamespace(get_global_rank=lambda: 0, get_global_size=lambda: 1)}
    exec(compile(ast.Module([cls], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["KnnModule"]


def test_knn_matches_official_module(single_process_group):
    KnnModule = load_official_knn_module()
    train, labels, test, _ = random_task(seed=3, c=12)
    # the official evaluation L2-normalises the model output (ModelWithNormalize) before the module
    official = KnnModule(F.normalize(train, dim=1), labels, nb_knn=[10, 20], T=T, device="cpu", num_classes=12)
    with torch.no_grad():
        probas = official(F.normalize(test, dim=1))
    torch.testing.assert_close(knn_classify(train, labels, test, k=20).scores, probas[20])
    # with several k the official softmax runs over the largest k: the same ranking, other scale
    ours10 = knn_classify(train, labels, test, k=10).scores
    torch.testing.assert_close(ours10, probas[10] / probas[10].sum(1, keepdim=True))


def test_knn_input_errors():
    with pytest.raises(ValueError, match="dimensions"):
        knn_classify(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        knn_classify(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match=">= 0"):
        knn_classify(torch.randn(3, 3), torch.tensor([0, -1, 1]), torch.randn(2, 3))
    with pytest.raises(ValueError, match="5 labels"):
        knn_classify(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3))
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(torch.randn(3, 3), torch.tensor([0, 1, 4]), torch.randn(2, 3), num_classes=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_knn_on_cuda_matches_cpu():
    train, labels, test, test_labels = random_task(seed=4, n=3000, m=500, d=64, c=20)
    cpu = knn_classify(train, labels, test, chunk_size=64)
    gpu = knn_classify(train.cuda(), labels.cuda(), test, chunk_size=64, train_chunk_size=1000)
    assert gpu.scores.is_cuda
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=1e-4, atol=1e-5)
    probe_gpu = linear_probe(train.cuda(), labels, test.cuda(), test_labels)
    assert abs(probe_gpu["top1"] - linear_probe(train, labels, test, test_labels)["top1"]) <= 1.0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_host_copy_from_a_device_that_is_not_the_current_one_waits_for_its_copy():
    """features.HostCopy records its event on the stream of the tensor's device: from cuda:1 while
    cuda:0 is current, wait() returns the copied values, not what the pinned buffer held before."""
    from dinov2_dense.features import HostCopy

    x = torch.arange(1 << 24, dtype=torch.float32, device="cuda:1")
    for _ in range(20):  # keep cuda:1 busy, so that an early return would read an unfinished copy
        x = x * 1.0 + 0.0
    assert torch.cuda.current_device() == 0
    got = HostCopy(x).wait()
    assert torch.equal(got, torch.arange(1 << 24, dtype=torch.float32))


# -- linear probe ------------------------------------------------------------------------------
def test_linear_probe_separates_separable_data():
    train, labels, test, test_labels = random_task(seed=5, n=600, m=300, d=32, c=5)
    raw = 50 * train + 7, 50 * test + 7  # far from standardised: the probe standardises itself
    result = linear_probe(*raw[:1], labels, raw[1], test_labels, seed=0)
    assert result["top1"] >= 95 and result["top5"] == 100
    assert set(result["search"]) == {1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0}
    assert result["weight_decay"] in result["search"]
    assert result == linear_probe(*raw[:1], labels, raw[1], test_labels, seed=0)  # deterministic
    # the returned layer takes raw features (the standardisation is folded in)
    layer = fit_linear(raw[0], labels, weight_decay=result["weight_decay"])
    preds = layer(raw[1]).argmax(1)
    assert (preds == test_labels).float().mean() * 100 == pytest.approx(result["top1"], abs=1.0)


def test_linear_probe_chance_on_random_labels():
    gen = torch.Generator().manual_seed(6)
    train, test = torch.randn(800, 32, generator=gen), torch.randn(800, 32, generator=gen)
    labels, test_labels = torch.randint(0, 4, (800,), generator=gen), torch.randint(0, 4, (800,), generator=gen)
    result = linear_probe(train, labels, test, test_labels)
    assert abs(result["top1"] - 25.0) < 6.0  # chance is 25 %; 3 standard errors is 4.6
    # fitting a random labelling is possible with no decay (memorising), but that does not transfer
    layer = fit_linear(train, labels, weight_decay=0.0)
    assert (layer(train).argmax(1) == labels).float().mean() > 0.35


def test_linear_probe_chooses_decay_on_held_out_data():
    # few noisy samples in many dimensions: weak decay overfits, and the held-out search sees it
    train, labels, test, test_labels = random_task(seed=7, n=300, m=600, d=128, c=5)
    gen = torch.Generator().manual_seed(8)
    train, test = train + 5 * torch.randn(train.shape, generator=gen), test + 5 * torch.randn(test.shape, generator=gen)
    result = linear_probe(train, labels, test, test_labels, weight_decays=(1e-5, 1.0))
    assert result["search"][1.0] > result["search"][1e-5] and result["weight_decay"] == 1.0
    weak = linear_probe(train, labels, test, test_labels, weight_decays=(1e-5,))
    assert weak["search"] == {} and weak["weight_decay"] == 1e-5 and weak["top1"] < result["top1"]


def test_stratified_split():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    train, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    assert torch.bincount(labels[val], minlength=4).tolist() == [2, 1, 0, 1]  # round(n/5), >= 1, < n
    again, other = stratified_split(labels, 0.2, seed=0), stratified_split(labels, 0.2, seed=1)
    assert again[1].tolist() == val.tolist() and other[1].tolist() != val.tolist()
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(labels, 1.0)


# -- image folders -----------------------------------------------------------------------------
def write_folder(root: Path, per_class=3, classes=("cat", "dog"), seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((20 + 3 * i, 30, 3))
            base[..., c % 3] = 200
            img = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("value, message", [("1.0", "expected a number > 0 and < 1"), ("0", "> 0 and < 1"),
                                            ("1.5", "< 1")])
def test_val_fraction_is_refused_while_parsing(tmp_path, capsys, value, message):
    """1.0 would leave nothing to fit: refused before any image is read (the folder does not even exist)."""
    from dinov2_dense.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["knn", str(tmp_path / "none"), "--weights", "random", "--val-fraction", value])
    assert exc.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --val-fraction: " in line and message in line


def test_folder_features(tmp_path):
    root = write_folder(tmp_path / "data")
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    model = tiny_vit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = folder_features(model, root, size=28, batch_size=2, progress=False)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2 and "skipped 1 unreadable image(s)" in messages[0] and "broken.png" in messages[0]
    assert messages[1].endswith("subfolder(s) without images left out: empty")
    features, labels, names = data  # unpacks as the three it is asked for
    assert names == ["cat", "dog"] and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert features.shape == (6, 48) and features.dtype == torch.float32
    assert len(data.skipped) == 1 and "broken.png" in data.skipped[0]
    assert all("broken" not in p for p in data.paths)
    # the same numbers as extract_features on each file, resized by it
    one = extract_features(model, data.paths[4], size=(28, 28), fit="resize")
    torch.testing.assert_close(features[4], one.cls_tokens[one.layers[-1]][0], rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mean = folder_features(model, root, size=28, pooling="mean", progress=False).features
        both = folder_features(model, root, size=28, pooling="cls+mean", progress=False).features
    torch.testing.assert_close(mean[4], one.maps[one.layers[-1]][0].mean((1, 2)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both, torch.cat([features, mean], 1))
    with pytest.raises(ValueError, match="pooling"):
        folder_features(model, root, pooling="max")


def test_folder_features_are_read_in_parts_of_batches_with_the_same_numbers(tmp_path, monkeypatch):
    """With workers, knn's folder features read batches of files (whole by default, here in 4 parts:
    features.PARTS_PER_BATCH), not one image a worker item: the same features, kept and skipped lists
    as in one process, an unreadable file among them."""
    import dinov2_dense.features as features

    monkeypatch.setattr(features, "PARTS_PER_BATCH", 4)

    root = write_folder(tmp_path / "data", per_class=10)
    (root / "cat" / "broken.png").write_bytes(b"not a png at all")  # 21 files: batches of 16 and 5
    model = tiny_vit()
    items: list[int] = []
    real = features.map_in_workers

    def mapped(fn, parts, num_workers=0, pin_memory=False):
        items.extend(len(p) for p in parts)
        return real(fn, parts, num_workers, pin_memory)

    monkeypatch.setattr(features, "map_in_workers", mapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        here = folder_features(model, root, size=28, batch_size=16, progress=False)
        assert items == [16, 5]
        items.clear()
        workers = folder_features(model, root, size=28, batch_size=16, progress=False, num_workers=2)
    assert items == [8, 8, 5]
    assert workers.paths == here.paths and workers.skipped == here.skipped and len(here.paths) == 20
    assert torch.equal(workers.labels, here.labels) and torch.equal(workers.features, here.features)


def test_folder_layout_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        list_image_folder(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.warns(UserWarning, match="no class folder"), pytest.raises(ValueError, match="no class folders"):
        list_image_folder(tmp_path / "flat")
    root = write_folder(tmp_path / "split" / "train")
    write_folder(tmp_path / "split" / "val", per_class=1, classes=("cat", "dog", "eel"))
    import dinov2_dense.features as features_module

    read = []
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: read.append(1) or pytest.fail("ran"))
    with pytest.raises(ValueError, match="eel"):  # (it was refused after the training split's features)
        folder_split_features(tiny_vit(), tmp_path / "split", size=28)
    assert root.exists() and read == []


def test_train_val_folders_and_evaluate(tmp_path):
    model = tiny_vit()
    write_folder(tmp_path / "tv" / "train", per_class=4, classes=("a", "b", "c"))
    write_folder(tmp_path / "tv" / "val", per_class=2, classes=("b", "c"), seed=1)  # no 'a' in val: allowed
    train, val = folder_split_features(model, tmp_path / "tv", size=28, progress=False)
    assert train.class_names == val.class_names == ["a", "b", "c"]
    assert val.labels.tolist() == [1, 1, 2, 2] and len(train.labels) == 12

    # one folder, split by seed; the command's result is the two functions' numbers
    write_folder(tmp_path / "one", per_class=5, classes=("r", "g", "b"))
    result = evaluate_folder(model, tmp_path / "one", size=28, k=5, seed=3, progress=False)
    train, val = folder_split_features(model, tmp_path / "one", size=28, seed=3, progress=False)
    assert (result["num_train"], result["num_val"]) == (12, 3) == (len(train.labels), len(val.labels))
    assert result["knn"] == knn_accuracy(train.features, train.labels, val.features, val.labels, k=5)
    assert result["linear"]["top1"] == linear_probe(train.features, train.labels, val.features, val.labels, seed=3)["top1"]
    assert result["knn"]["top1"] == 100.0  # red, green and blue images are told apart even by a random ViT
    assert result["skipped"] == [] and result["class_names"] == ["b", "g", "r"]
    import json

    json.dumps(result)  # JSON-ready


def test_the_same_weights_with_other_heads_miss_the_folder_cache(tmp_path):
    """The cache was keyed by the weights alone: the same weights read with an architecture file of other
    num_heads (or position-embedding resampling) were given the first model's features (a reviewer's kNN
    30.00% with the cache, 15.00% without)."""
    root = write_folder(tmp_path / "data")
    model = tiny_vit()
    four = tiny_vit(heads=4)
    four.load_state_dict(model.state_dict())
    resampled = tiny_vit(interpolate_offset=0.0, interpolate_antialias=True)
    resampled.load_state_dict(model.state_dict())

    def features(m, cache):
        return folder_features(m, root, size=42, batch_size=4, progress=False, cache=cache).features

    cache = tmp_path / "cache"
    first = features(model, cache)
    for other in (four, resampled):
        uncached = features(other, None)
        assert not torch.allclose(uncached, first)
        assert torch.equal(features(other, cache), uncached)


def test_folder_feature_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    import os

    from dinov2_dense import features as features_module

    root = write_folder(tmp_path / "data")
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    cache = tmp_path / "cache"
    model = tiny_vit()
    runs = []
    real = features_module.extract_features
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: runs.append(1) or real(*a, **k))

    def features(m=model, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return folder_features(m, root, size=28, batch_size=4, progress=False, cache=cache, **kw)

    first = features()
    assert len(runs) == 2 and len(list(cache.iterdir())) == 1
    again = features()
    assert len(runs) == 2  # read back: the backbone did not run
    assert torch.equal(again.features, first.features) and torch.equal(again.labels, first.labels)
    assert again.paths == first.paths and again.skipped == first.skipped and again.class_names == first.class_names

    features(pooling="mean")  # another setting: computed and kept beside
    assert len(runs) == 4 and len(list(cache.iterdir())) == 2
    other = tiny_vit()
    with torch.no_grad():
        other.cls_token.add_(1.0)  # other weights
    features(m=other)
    assert len(runs) == 6
    image = root / "dog" / "1.png"  # an image rewritten since: its features are computed again
    Image.fromarray(np.full((23, 30, 3), 90, np.uint8)).save(image)
    os.utime(image, ns=(1, 1))
    changed = features()
    assert len(runs) == 8 and not torch.equal(changed.features, first.features)

    for f in cache.iterdir():  # a damaged cache file: a warning, computed again, replaced
        f.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable feature cache"):
        repaired = folder_features(model, root, size=28, batch_size=4, progress=False, cache=cache)
    assert torch.equal(repaired.features, changed.features)
    assert len(runs) == 10
    features()
    assert len(runs) == 10


def test_an_image_replaced_by_one_of_the_same_size_and_time_misses_the_cache(tmp_path):
    """The key held each image's size and modification time: a BMP replaced by another class's (BMPs of one
    size are of one byte size), its time kept as cp -p or rsync -a keep it, was read from the cache as the
    old image (a reviewer: top-1 43.75% from the cache, 50.00% without). The key holds the bytes' SHA-256."""
    import os
    import shutil

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(2):
            base = np.zeros((28, 28, 3))
            base[..., c] = 200
            Image.fromarray(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)).save(
                root / name / f"{i}.bmp")
    model, cache = tiny_vit(), tmp_path / "cache"
    first = folder_features(model, root, size=28, progress=False, cache=cache)
    target = root / "cat" / "0.bmp"
    kept = os.stat(target)
    shutil.copyfile(root / "dog" / "0.bmp", target)  # the same byte size
    os.utime(target, ns=(kept.st_atime_ns, kept.st_mtime_ns))
    assert (os.stat(target).st_size, os.stat(target).st_mtime_ns) == (kept.st_size, kept.st_mtime_ns)
    cached = folder_features(model, root, size=28, progress=False, cache=cache)
    plain = folder_features(model, root, size=28, progress=False)
    assert torch.equal(cached.features, plain.features) and not torch.equal(cached.features, first.features)
    assert len(list(cache.iterdir())) == 2


def test_resize_8bit_folder_features_cache_and_command(tmp_path, monkeypatch):
    """resize_8bit: the 8-bit resized features (close to the float ones, not equal), a cache entry of
    its own (a run with the other setting misses it), and the knn command's --resize-8bit reaching it."""
    import json

    from dinov2_dense import features as features_module
    from dinov2_dense import load_backbone
    from dinov2_dense.cli import main
    from dinov2_dense.features import load_resized
    from pretrain.export import export_backbone

    root = write_folder(tmp_path / "data")
    cache = tmp_path / "cache"
    model = tiny_vit()
    runs = []
    real = features_module.extract_features
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: runs.append(1) or real(*a, **k))

    def features(**kw):
        return folder_features(model, root, size=28, batch_size=8, progress=False, cache=cache, **kw)

    plain = features()
    assert len(runs) == 1
    eight = features(resize_8bit=True)  # the other setting: computed, kept beside
    assert len(runs) == 2 and len(list(cache.iterdir())) == 2
    assert torch.equal(features(resize_8bit=True).features, eight.features) and len(runs) == 2  # read back
    assert torch.equal(features().features, plain.features) and len(runs) == 2
    assert not torch.equal(eight.features, plain.features)
    torch.testing.assert_close(eight.features, plain.features, atol=0.05, rtol=0)
    batch = torch.stack([load_resized(p, (28, 28), resize_8bit=True) for p in eight.paths])
    want = real(model, batch, fit="resize")
    torch.testing.assert_close(eight.features, want.cls_tokens[want.layers[-1]], atol=1e-5, rtol=1e-4)
    monkeypatch.setattr(features_module, "extract_features", real)

    weights = export_backbone(tiny_vit(depth=2, dim=32, img=28), tmp_path / "export")["safetensors"]
    write_folder(tmp_path / "one", per_class=4, classes=("r", "g", "b"))
    out = tmp_path / "knn.json"
    assert main(["knn", str(tmp_path / "one"), "--weights", str(weights), "--size", "28", "--k", "3", "--no-linear",
                 "--resize-8bit", "--num-workers", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["resize_8bit"] is True
    loaded = load_backbone(None, weights=str(weights)).eval()
    want = evaluate_folder(loaded, tmp_path / "one", size=28, k=3, linear=False, progress=False, resize_8bit=True)
    assert result["knn"] == want["knn"]
    seen = []
    real_load = features_module.load_resized
    monkeypatch.setattr(features_module, "load_resized", lambda *a, **k: seen.append(k["resize_8bit"]) or real_load(*a, **k))
    assert main(["knn", str(tmp_path / "one"), "--weights", str(weights), "--size", "28", "--k", "3", "--no-linear",
                 "--resize-8bit", "--num-workers", "0"]) == 0
    assert seen == [True] * 12
    seen.clear()
    assert main(["knn", str(tmp_path / "one"), "--weights", str(weights), "--size", "28", "--k", "3", "--no-linear",
                 "--num-workers", "0"]) == 0
    assert seen == [False] * 12


def test_cli_names_an_unreadable_image_once_also_from_the_cache(tmp_path, capfd):
    """The command says once which image it skipped: on the run that reads it, and on a run whose
    features come from the cache (which would otherwise skip it silently)."""
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    root = write_folder(tmp_path / "data", per_class=4)
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    weights = export_backbone(tiny_vit(depth=1, dim=32, img=28), tmp_path / "export")["safetensors"]
    args = ["knn", str(root), "--weights", str(weights), "--size", "28", "--k", "3", "--no-linear", "--num-workers",
            "0", "--cache", str(tmp_path / "cache")]
    for run in range(2):
        with warnings.catch_warnings(record=True) as caught:  # what the command shows as "warning: ..."
            warnings.simplefilter("always")
            assert main(args) == 0
        err = capfd.readouterr().err
        said = [str(w.message) for w in caught if "broken.png" in str(w.message)]
        assert len(said) + err.count("broken.png") == 1, (run, said, err)
        assert ("read from the cache" in err) == (run == 1)


def test_a_class_without_a_readable_image_is_left_out_and_said(tmp_path):
    """A class folder whose every image is unreadable is no class: left out with a warning (it was counted
    among the classes, a logit of the probe that no sample had); the other labels follow."""
    root = write_folder(tmp_path / "data", per_class=3, classes=("a", "b"))
    (root / "broken").mkdir()
    for i in range(2):
        (root / "broken" / f"{i}.jpg").write_text("not an image")
    model = tiny_vit()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = folder_features(model, root, size=28, progress=False)
    assert data.class_names == ["a", "b"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert any("without a readable image left out: broken" in str(w.message) for w in caught)
    assert len(data.skipped) == 2
    # with train/ and val/, the training classes label the val split: the empty one is kept, said
    for split in ("train", "val"):
        write_folder(tmp_path / "tv" / split, per_class=3, classes=("a", "b", "broken"))
    for f in (tmp_path / "tv" / "train" / "broken").iterdir():
        f.write_text("not an image")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train, val = folder_split_features(model, tmp_path / "tv", size=28, progress=False)
    assert train.class_names == val.class_names == ["a", "b", "broken"] and val.labels.tolist().count(2) == 3
    assert any("without a readable image: broken (kept" in str(w.message) for w in caught)


def test_a_size_off_the_patch_grid_is_refused_naming_the_sizes_that_fit(tmp_path):
    """50 would be resized to 50, then onto the 56-pixel grid (twice, with other features than 56 once)."""
    root = write_folder(tmp_path / "data", per_class=2)
    with pytest.raises(ValueError, match=r"size=50: not a multiple of the model's patch size 14 .*use 42 or 56"):
        folder_features(tiny_vit(), root, size=50, progress=False)


def test_random_weights_are_the_same_on_every_run_of_every_command(tmp_path, capsys):
    """`--weights random` drew other weights on every run of features, knn and curate (pca seeded them):
    two identical `features` runs disagreed (a reviewer saw up to 4.91), knn's --cache never found its own
    earlier run, and an interrupted curate restarted "with other settings". They all take --seed now."""
    from dinov2_dense.cli import main

    root = write_folder(tmp_path / "data")
    image = str(root / "cat" / "0.png")
    out = {}
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main(["features", image, "--weights", "random", "--size", "28", "--seed", seed,
                     "--out", str(tmp_path / f"{name}.npy")]) == 0
        out[name] = np.load(tmp_path / f"{name}.npy")
    assert np.array_equal(out["a"], out["b"]) and not np.allclose(out["a"], out["c"])
    # the default seed is 0, in another process too (whose torch starts from another random state)
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "dinov2_dense", "features", image, "--weights", "random", "--size",
                          "28", "--out", str(tmp_path / "d.npy")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert np.array_equal(np.load(tmp_path / "d.npy"), out["a"])
    # knn (its --seed also) builds the same weights on a rerun, so its cache finds them
    knn = ["knn", str(root), "--weights", "random", "--size", "28", "--no-linear", "--cache", str(tmp_path / "cache")]
    capsys.readouterr()
    assert main(knn) == 0 and "read from the cache" not in capsys.readouterr().err
    assert main(knn) == 0 and "read from the cache" in capsys.readouterr().err
    assert len(list((tmp_path / "cache").iterdir())) == 1


def test_a_cached_run_reads_no_image_and_a_raised_pixel_limit_misses_the_cache(tmp_path, monkeypatch):
    """An image skipped under a pixel limit: a second call with the same limit reads no image at all (the
    skipped one neither: the key holds each file's stamp and the limit in force). A raised limit misses the
    cache: computed afresh, equal to a run without the cache; still over it, skipped with the reason found
    now. Every limit keeps its own entry."""
    import dinov2_dense.evaluation.knn as knn
    import dinov2_dense.images as images
    from dinov2_dense import features as features_module

    root = write_folder(tmp_path / "data")
    Image.fromarray(np.zeros((60, 60, 3), dtype=np.uint8)).save(root / "cat" / "big.png")
    model, cache = tiny_vit(), tmp_path / "cache"
    runs, read = [], []
    real, real_read = features_module.extract_features, knn.try_read_resized
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: runs.append(1) or real(*a, **k))
    monkeypatch.setattr(knn, "try_read_resized", lambda path, *a, **k: read.append(path) or real_read(path, *a, **k))

    def features(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return folder_features(model, root, size=28, batch_size=8, progress=False, **kw)

    monkeypatch.setattr(images, "MAX_PIXELS", 2000)
    first = features(cache=cache)
    assert len(first.skipped) == 1 and len(runs) == 1 and len(read) == 7
    read.clear()
    assert features(cache=cache).skipped == first.skipped and read == [] and len(runs) == 1  # read back
    monkeypatch.setattr(images, "MAX_PIXELS", 3000)
    still = features(cache=cache)
    assert len(runs) == 2 and len(still.skipped) == 1 and "limit of 3,000" in still.skipped[0]
    monkeypatch.setattr(images, "MAX_PIXELS", None)
    cached, plain = features(cache=cache), features()
    assert len(runs) == 4 and cached.skipped == plain.skipped == [] and cached.paths == plain.paths
    assert torch.equal(cached.features, plain.features) and torch.equal(cached.labels, plain.labels)
    read.clear()
    assert torch.equal(features(cache=cache).features, plain.features) and len(runs) == 4 and read == []
    assert len(list(cache.iterdir())) == 3


def test_the_cache_serves_a_split_and_the_train_folder_alone_with_their_own_classes(tmp_path):
    """D/train alone leaves its empty class out; D (train/ and val/) keeps it, for val labels it: the one
    cache entry of train/'s images gives each what it gives without the cache, in either order."""
    for split in ("train", "val"):
        write_folder(tmp_path / "d" / split, per_class=2, classes=("a", "b", "c"))
    for f in (tmp_path / "d" / "train" / "c").iterdir():
        f.write_text("not an image")
    model = tiny_vit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = folder_features(model, tmp_path / "d" / "train", size=28, progress=False)
        train, val = folder_split_features(model, tmp_path / "d", size=28, progress=False)
        for order, cache in ((0, tmp_path / "c1"), (1, tmp_path / "c2")):
            for step in (order, 1 - order) * 2:
                if step == 0:
                    got = folder_features(model, tmp_path / "d" / "train", size=28, progress=False, cache=cache)
                    assert got.class_names == alone.class_names == ["a", "b"] and torch.equal(got.labels, alone.labels)
                else:
                    got, got_val = folder_split_features(model, tmp_path / "d", size=28, progress=False, cache=cache)
                    assert got.class_names == train.class_names == ["a", "b", "c"]
                    assert torch.equal(got.labels, train.labels) and torch.equal(got_val.labels, val.labels)


def test_knn_refuses_a_cache_it_cannot_write_before_running_and_keeps_results_when_the_write_fails(tmp_path,
                                                                                                  monkeypatch, capsys):
    """--cache where no folder can be made: refused naming --cache before the model runs. A cache write that
    fails at the end anyway: a warning naming --cache, and the results are printed (exit 0)."""
    import dinov2_dense.evaluation.knn as knn_module
    from dinov2_dense import features as features_module
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    root = write_folder(tmp_path / "data", per_class=4)
    weights = export_backbone(tiny_vit(depth=1, dim=32, img=28), tmp_path / "export")["safetensors"]
    (tmp_path / "file").write_text("in the way")
    runs = []
    real = features_module.extract_features
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: runs.append(1) or real(*a, **k))
    args = ["knn", str(root), "--weights", str(weights), "--size", "28", "--k", "3", "--no-linear",
            "--num-workers", "0"]
    assert main([*args, "--cache", str(tmp_path / "file" / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--cache {tmp_path / 'file' / 'cache'}" in err and runs == [], err

    def read_only(path, data):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(knn_module, "_write_cached", read_only)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*args, "--cache", str(tmp_path / "cache")]) == 0
    assert "kNN (k 3, T 0.07) top-1" in capsys.readouterr().out
    assert any(f"--cache {tmp_path / 'cache'}: the features cannot be kept there" in str(w.message) for w in caught)


def test_knn_names_the_size_option_of_a_size_off_the_patch_grid(tmp_path, capsys):
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    root = write_folder(tmp_path / "data", per_class=2)
    weights = export_backbone(tiny_vit(depth=1, dim=32, img=28), tmp_path / "export")["safetensors"]
    assert main(["knn", str(root), "--weights", str(weights), "--size", "50", "--no-linear"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--size 50: not a multiple of the model's patch size 14" in err, err


def test_a_k_beyond_the_training_set_says_that_all_of_it_was_taken(tmp_path, capsys):
    """--k 100 on 36 training images printed "k 100" and wrote "k": 100, while every image was a neighbour
    (--k 36 gave the same accuracy; a reviewer)."""
    import json

    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    weights = export_backbone(tiny_vit(depth=1, dim=32, img=28), tmp_path / "export")["safetensors"]
    write_folder(tmp_path / "data", per_class=3)
    out = tmp_path / "knn.json"
    assert main(["knn", str(tmp_path / "data"), "--weights", str(weights), "--size", "28", "--k", "100",
                 "--no-linear", "--num-workers", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    n = result["num_train"]
    assert result["k"] == 100 and result["k_used"] == n < 100
    assert f"kNN (k {n}: all {n} training images, fewer than --k 100, T 0.07)" in capsys.readouterr().out
