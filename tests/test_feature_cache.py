"""Feature cache: built once, equal to live features, trains a head exactly like the uncached loop."""

from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_dense.data import ADE20KDataset, NYUDepthDataset
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout, write_nyu_layout
from dinov2_dense.engine.feature_cache import FeatureCache, train_head
from heads import CrossEntropyLoss, DensePredictor, LinearDepthHead, LinearHead, SigLoss

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache_scenes")
    write_ade20k_layout(root / "ade", 24, 2, config=SceneConfig(size=(56, 70)), seed=1, progress=False)
    write_nyu_layout(root / "nyu", 12, 2, config=SceneConfig(size=(56, 70)), seed=1, progress=False)
    return root


def seg_predictor(seed=0):
    torch.manual_seed(seed)
    return DensePredictor(tiny_vit(depth=2), LinearHead([48, 48], 5), task="segmentation", layers=[0, 1])


def test_cache_holds_the_live_features(scenes, tmp_path):
    data = ADE20KDataset(scenes / "ade", "training")
    predictor = seg_predictor()
    cache = FeatureCache.build(predictor, data, tmp_path / "cache", batch_size=5, dtype="float32", progress=False)
    assert len(cache) == 24 and not (tmp_path / ".cache.building").exists()
    item = cache[7]
    with torch.no_grad():
        live = predictor.extract_features(data[7]["image"][None])
    for cached, fresh in zip(item["features"], live):
        torch.testing.assert_close(cached, fresh[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(item["seg"], data[7]["seg"])
    reopened = FeatureCache(tmp_path / "cache")  # memory-mapped, reopened from disk
    assert isinstance(reopened.maps[0], np.memmap)
    with pytest.raises(FileExistsError):
        FeatureCache.build(predictor, data, tmp_path / "cache", progress=False)


def test_a_full_disk_fails_at_the_first_batch_naming_the_file_and_leaves_nothing(scenes, tmp_path, monkeypatch):
    """The cache's files are allocated on disk when created: a full disk is an OSError naming the
    cache's folder there (writing the rows later through the memory maps would crash with SIGBUS),
    and the half-built cache is removed."""
    import errno

    import dinov2_dense.fileio as fileio

    def full(fd, size):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fallocate", full)
    data = ADE20KDataset(scenes / "ade", "training")
    with pytest.raises(OSError, match="No space left on device") as caught:
        FeatureCache.build(seg_predictor(), data, tmp_path / "cache", batch_size=5, progress=False)
    assert f"cannot write {tmp_path / 'cache'}" in str(caught.value)  # the user's path, not the staging one
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_training_from_cache_equals_uncached_loop(scenes, tmp_path):
    data = ADE20KDataset(scenes / "ade", "training")
    live, cached = seg_predictor(), seg_predictor()
    cache = FeatureCache.build(cached, data, tmp_path / "cache", dtype="float32", progress=False)
    a = train_head(live, data, [CrossEntropyLoss()], epochs=2, batch_size=6, progress=False)
    b = train_head(cached, cache, [CrossEntropyLoss()], epochs=2, batch_size=6, progress=False)
    assert len(a) == len(b) == 8
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert b[-1] < b[0]  # it learns
    for p, q in zip(live.decode_head.parameters(), cached.decode_head.parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-3)


def test_predict_after_train_head_runs_in_eval_mode_and_modes_come_back(scenes, tmp_path):
    """train_head left the head in train mode, and predict then normalised with the batch's statistics
    (an image's prediction depended on the others in its batch) and moved the running statistics."""
    data = ADE20KDataset(scenes / "ade", "training")
    predictor = seg_predictor()
    before = {name: m.training for name, m in predictor.named_modules()}
    assert before[""] and before["decode_head"] and not before["backbone"]  # new: train mode, frozen backbone
    cache = FeatureCache.build(predictor, data, tmp_path / "cache", dtype="float32", progress=False)
    train_head(predictor, cache, [CrossEntropyLoss()], epochs=1, batch_size=12, progress=False)
    assert {name: m.training for name, m in predictor.named_modules()} == before  # the caller's modes, each
    predictor.train()  # (as it was: predict is inference in any mode)
    bn = predictor.decode_head.bn
    stats = [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]
    x = torch.stack([data[i]["image"] for i in range(4)])
    alone, batch = predictor.predict(x[:1]), predictor.predict(x)
    torch.testing.assert_close(alone[0], batch[0], atol=1e-5, rtol=1e-5)
    for now, was in zip((bn.running_mean, bn.running_var, bn.num_batches_tracked), stats):
        assert torch.equal(now, was)
    assert {name: m.training for name, m in predictor.named_modules()} == before
    torch.testing.assert_close(batch, predictor.eval().predict(x))


def test_depth_cache_keeps_class_tokens(scenes, tmp_path):
    data = NYUDepthDataset(scenes / "nyu", "nyu_train.txt")
    torch.manual_seed(0)
    predictor = DensePredictor(tiny_vit(depth=2), LinearDepthHead([48], max_depth=10.0), task="depth", layers=[1],
                               norm=False, class_token=True)
    cache = FeatureCache.build(predictor, data, tmp_path / "depth_cache", progress=False)
    (fmap, cls_token), = cache[0]["features"]
    assert fmap.shape == (48, 4, 5) and cls_token.shape == (48,)
    assert cache[0]["depth"].shape == (1, 56, 70)
    losses = train_head(predictor, cache, [SigLoss()], epochs=1, batch_size=4, progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_a_cache_of_other_settings_is_refused(scenes, tmp_path):
    """A head trains only on the features its predictor reads: another backbone, other blocks, norm,
    class tokens or task are named (and the compatible predictor of another head shares the cache)."""
    data = ADE20KDataset(scenes / "ade", "training")
    cache = FeatureCache.build(seg_predictor(), data, tmp_path / "cache", dtype="float32", progress=False)
    backbone = tiny_vit(depth=2)
    other_layers = DensePredictor(backbone, LinearHead([48], 5), task="segmentation", layers=[1])
    with pytest.raises(ValueError, match=r"cache.*layers \[0, 1\].*\[1\]"):
        train_head(other_layers, cache, [CrossEntropyLoss()], progress=False)
    no_norm = DensePredictor(backbone, LinearHead([48, 48], 5), task="segmentation", layers=[0, 1], norm=False)
    with pytest.raises(ValueError, match="norm True"):
        train_head(no_norm, cache, [CrossEntropyLoss()], progress=False)
    # the same weights split into other heads (another architecture file): other features, no tensor changed
    four_heads = tiny_vit(depth=2, heads=4)
    four_heads.load_state_dict(backbone.state_dict())
    with pytest.raises(ValueError, match=r"same backbone weights built with other settings \(num_heads 2 -> 4\)"):
        train_head(DensePredictor(four_heads, LinearHead([48, 48], 5), task="segmentation", layers=[0, 1]), cache,
                   [CrossEntropyLoss()], progress=False)
    with torch.no_grad():
        backbone.cls_token.add_(0.01)  # tiny_vit's weights are seeded: the same as the cache's until changed
    other_backbone = DensePredictor(backbone, LinearHead([48, 48], 5), task="segmentation", layers=[0, 1])
    with pytest.raises(ValueError, match="another backbone"):
        train_head(other_backbone, cache, [CrossEntropyLoss()], progress=False)
    same = seg_predictor()  # the same backbone weights (seed), another head of the same inputs: shares the cache
    same.decode_head = LinearHead([48, 48], 5, in_index=[0, 1])
    assert len(train_head(same, cache, [CrossEntropyLoss()], epochs=1, batch_size=12, progress=False)) == 2


def test_a_changed_image_refuses_the_cache_and_bad_builds_are_named(scenes, tmp_path):
    """The cache records each image and target file: a data set regenerated (or one file edited) since
    the build is refused by train_head, not trained on with the old features. An integer dtype (it
    would wrap the features) and samples of several sizes are refused naming the value or the file."""
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(scenes / "ade", root)
    data = ADE20KDataset(root, "training")
    predictor = seg_predictor()
    cache = FeatureCache.build(predictor, data, tmp_path / "cache", dtype="float32", progress=False)
    assert len(train_head(predictor, cache, [CrossEntropyLoss()], batch_size=12, progress=False)) == 2
    image = Path(data[3]["meta"]["path"])
    write_ade20k_layout(tmp_path / "other", 24, 2, config=SceneConfig(size=(56, 70)), seed=9, progress=False)
    shutil.copyfile(next((tmp_path / "other").rglob(image.name)), image)  # another scene under the same name
    with pytest.raises(ValueError, match=r"1 of the data set's 48 files changed .*first: .*" + image.name):
        train_head(predictor, FeatureCache(tmp_path / "cache"), [CrossEntropyLoss()], progress=False)
    # a data set given by a relative root: the cache still fits it from another working directory
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        relative = FeatureCache.build(predictor, ADE20KDataset("other", "training"), tmp_path / "rel", dtype="float32",
                                      progress=False)
    finally:
        os.chdir(here)
    relative.check(predictor)
    with pytest.raises(ValueError, match="dtype='int8': a feature cache stores float16 or float32"):
        FeatureCache.build(predictor, data, tmp_path / "c8", dtype="int8", progress=False)

    class TwoSizes(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            sample = data[i]
            if i == 1:
                sample = {**sample, "image": sample["image"][:, :42], "seg": sample["seg"][:42],
                          "meta": {**sample["meta"], "path": "second.png"}}
            return sample

    with pytest.raises(ValueError, match="second.png: features of shape .* a feature cache needs samples of one size"):
        FeatureCache.build(predictor, TwoSizes(), tmp_path / "c2", batch_size=1, progress=False)
    assert not (tmp_path / "c2").exists() and not (tmp_path / "c8").exists()


def test_a_head_that_cannot_read_the_backbone_is_refused_before_the_cache_is_built(scenes, tmp_path):
    """A head for another backbone's width (LinearHead.preset("lin.", 384, ...) on a 48-wide model) failed
    only at train_head's first step, after FeatureCache.build had run the backbone over the data set:
    `LinearHead input 0: expected (B, 384, h, w), got (8, 48, ...)`. Both refuse it at once, naming the widths."""
    data = ADE20KDataset(scenes / "ade", "training")
    wrong = DensePredictor(tiny_vit(depth=2), LinearHead([384, 384], 5), task="segmentation", layers=[0, 1])
    with pytest.raises(ValueError, match="in_channels.*384.*48-wide"):
        FeatureCache.build(wrong, data, tmp_path / "cache", progress=False)
    assert not list(tmp_path.iterdir())  # nothing built, nothing staged
    with pytest.raises(ValueError, match="in_channels.*384.*48-wide"):
        train_head(wrong, data, [CrossEntropyLoss()], progress=False)


def test_build_and_train_head_send_their_batches_to_the_predictors_device(scenes, tmp_path):
    """Both made their own DataLoader and passed its CPU batches on: a predictor on a GPU (predictor.cuda(), as
    the README's example does) stopped at a device mismatch. The meta device stands in for a GPU here: the
    batches reach it, where work stops only because meta tensors hold no data."""
    data = ADE20KDataset(scenes / "ade", "training")
    predictor = seg_predictor()
    cache = FeatureCache.build(predictor, data, tmp_path / "cache", batch_size=4, progress=False)
    predictor.decode_head.to("meta")
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):  # past the head's losses
        train_head(predictor, cache, [CrossEntropyLoss()], batch_size=4, progress=False)
    with pytest.raises(RuntimeError, match="cannot be called on meta tensors"):  # uncached: through the backbone
        train_head(predictor.to("meta"), data, [CrossEntropyLoss()], batch_size=4, progress=False)
    with pytest.raises(NotImplementedError, match="Cannot copy out of meta tensor"):  # the features, on the device
        FeatureCache.build(predictor, data, tmp_path / "cache2", batch_size=4, progress=False)
