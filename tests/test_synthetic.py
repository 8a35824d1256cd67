"""Synthetic scenes: determinism, exact maps, and writers that the real loaders read back."""

import json

import numpy as np
import pytest

from dinov2_dense.data import (ADE20KDataset, FolderDepthDataset, FolderSegmentationDataset, NYUDepthDataset,
                               SceneConfig, generate_scene, scene_seed, write_ade20k_layout, write_folder_layout,
                               write_nyu_layout)
from dinov2_dense.data import files as data_files
from dinov2_dense.fileio import MARKER, OutputError


def _same(a, b):
    return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def test_same_seed_same_bytes_and_independent_of_order():
    a = generate_scene(123)
    for s in (7, 8, 9):  # other scenes in between change nothing
        generate_scene(s)
    assert _same(a, generate_scene(123))
    b = generate_scene(124)
    assert not np.array_equal(a.image, b.image) and not np.array_equal(a.depth, b.depth)
    assert a.image.dtype == np.uint8 and a.image.shape == (224, 224, 3)
    assert a.seg.dtype == np.uint8 and a.seg.shape == (224, 224)
    assert a.depth.dtype == np.float32 and a.depth.shape == (224, 224)


@pytest.mark.parametrize("cfg", [SceneConfig(), SceneConfig(size=(90, 150), num_classes=12, max_shapes=14),
                                 SceneConfig(num_classes=2, depth_range=(3.0, 3.0), min_depth=0.5),
                                 SceneConfig(size=(120, 100), class_sizes=(0.2, 0.3, 0.4, 0.6))])
def test_depth_and_classes_are_exact(cfg):
    H, W = cfg.size
    near, far = cfg.depth_range
    plane = np.broadcast_to(np.linspace(far, near, H, dtype=np.float32)[:, None], (H, W))
    classes_seen = set()
    for seed in range(40):
        s = generate_scene(seed, cfg)
        bg = s.seg == 0
        assert np.array_equal(s.depth[bg], plane[bg])  # the background plane, bit for bit
        fg = ~bg
        # shapes stand in front of the plane, within the configured range
        assert (s.depth[fg] < plane[fg]).all() and (s.depth[fg] >= cfg.min_depth).all()
        # each shape has one constant depth and one class: a depth value never carries two classes
        for d in np.unique(s.depth[fg]):
            assert len(np.unique(s.seg[fg & (s.depth == d)])) == 1
        assert s.seg.max() < cfg.num_classes
        classes_seen |= set(np.unique(s.seg).tolist())
    assert classes_seen == set(range(cfg.num_classes))


def test_single_shape_occludes_plane_exactly():
    cfg = SceneConfig(min_shapes=1, max_shapes=1)
    for seed in range(10):
        s = generate_scene(seed, cfg)
        fg = s.seg > 0
        assert fg.any()
        assert len(np.unique(s.depth[fg])) == 1 and len(np.unique(s.seg[fg])) == 1


def test_near_shapes_occlude_far_ones(monkeypatch):
    """Drawing near to far must give the same scene as far to near: the z-buffer, not the order,
    decides which shape is seen."""
    from dinov2_dense.data import synthetic

    cfg = SceneConfig(min_shapes=6, max_shapes=10, shape_size=(0.2, 0.35))
    reference = [generate_scene(seed, cfg) for seed in range(15)]
    monkeypatch.setattr(synthetic, "_draw_order", lambda shapes: sorted(shapes, key=lambda s: s[0]))
    occluded = 0
    for seed, ref in enumerate(reference):
        s = generate_scene(seed, cfg)
        assert _same(s, ref)
        occluded += len(np.unique(ref.depth[ref.seg > 0]))
    assert occluded > 15 * 3


def _colour_accuracy(cfg):
    """Mean per-class accuracy of a nearest-mean-colour pixel classifier fitted on 20 scenes."""
    train = [generate_scene(i, cfg) for i in range(20)]
    test = [generate_scene(10_000 + i, cfg) for i in range(8)]
    x = np.concatenate([s.image.reshape(-1, 3) for s in train]).astype(np.float32)
    y = np.concatenate([s.seg.ravel() for s in train])
    means = np.stack([x[y == k].mean(0) for k in range(cfg.num_classes)])
    xt = np.concatenate([s.image.reshape(-1, 3) for s in test]).astype(np.float32)
    yt = np.concatenate([s.seg.ravel() for s in test])
    pred = ((xt[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    return np.mean([(pred[yt == k] == k).mean() for k in range(cfg.num_classes) if (yt == k).any()])


def test_texture_appearance_hides_the_class_colour_and_keeps_the_layout():
    """The same seed draws the same shapes, depths and classes in both appearances; with "texture"
    colour alone no longer tells the classes apart (near the 1-in-5 of chance), with "colour" it does."""
    for seed in range(6):
        a, b = generate_scene(seed), generate_scene(seed, SceneConfig(appearance="texture"))
        assert _same(a[1:], b[1:]) and not np.array_equal(a.image, b.image)
    assert _colour_accuracy(SceneConfig(appearance="texture")) < 0.4 < 0.7 < _colour_accuracy(SceneConfig())
    with pytest.raises(ValueError, match="appearance='grey'"):
        SceneConfig(appearance="grey")


def test_familiar_size_ties_apparent_size_to_depth_and_class(monkeypatch):
    """With class_sizes, a shape's radius is its class's size over its depth (x 0.9-1.1): the
    measured radius of discs fully in view follows size / depth; without, it does not."""
    from dinov2_dense.data import synthetic

    monkeypatch.setattr(synthetic, "SHAPES", ("disc",))
    sizes = (0.15, 0.2, 0.3, 0.45)
    cfg = SceneConfig(size=(200, 200), min_shapes=1, max_shapes=1, class_sizes=sizes)
    near, far = cfg.depth_range
    ratios, free = [], []
    for seed in range(120):
        for config, out in ((cfg, ratios), (SceneConfig(size=(200, 200), min_shapes=1, max_shapes=1), free)):
            s = generate_scene(seed, config)
            fg = s.seg > 0
            if fg.sum() < np.pi * 8**2 or fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any():
                continue  # small, or cut by the border: the area does not show the radius to a few per cent
            d, cls = float(s.depth[fg][0]), int(s.seg[fg][0])
            assert d <= 0.95 * (near + far) / 2 or config is not cfg
            out.append(np.sqrt(fg.sum() / np.pi) / 200 * d / sizes[cls - 1])
    ratios, free = np.array(ratios), np.array(free)
    assert len(ratios) >= 15 and len(free) >= 15
    assert 0.85 < ratios.min() and ratios.max() < 1.15  # 0.9-1.1, give or take the rasterised edge
    assert free.max() / free.min() > 3  # the default draws size and depth apart
    with pytest.raises(ValueError, match="class_sizes"):
        SceneConfig(class_sizes=(0.2, 0.3))
    with pytest.raises(ValueError, match="inf is not a positive finite size"):
        SceneConfig(class_sizes=(0.2, 0.3, float("inf"), 0.1))
    with pytest.raises(ValueError, match="at most 4"):
        SceneConfig(class_sizes=(0.2, 0.3, 5.0, 0.1))
    with pytest.raises(ValueError, match="class_sizes"):
        SceneConfig(class_sizes=(0.2, 0.3, 0.0, 0.1))


@pytest.mark.parametrize("depth_range", [(2.0, 8.0), (3.0, 3.0)])
def test_familiar_size_shapes_stand_in_front_of_the_plane_whole(monkeypatch, depth_range):
    """The placement, not the z-test, keeps a familiar-size shape in front of the plane: every row
    its drawn mask covers is farther than the shape (by the 5% margin), so nothing of it is cut;
    and its bottom row is drawn, not fixed by its depth."""
    from dinov2_dense.data import synthetic

    drawn = []
    real = synthetic._shape_mask
    monkeypatch.setattr(synthetic, "_shape_mask", lambda *a: drawn.append(real(*a)) or drawn[-1])
    cfg = SceneConfig(size=(96, 96), min_shapes=1, max_shapes=1, depth_range=depth_range, class_sizes=(0.1, 0.2, 0.3, 0.4))
    H, W = cfg.size
    near, far = cfg.depth_range
    plane = np.linspace(far, near, H, dtype=np.float32)
    slack = []
    for seed in range(60):
        drawn.clear()
        s = generate_scene(seed, cfg)
        (mask, x0, y0), = drawn
        inside = np.zeros((H, W), bool)
        ys, xs = np.nonzero(mask)
        ys, xs = ys + y0, xs + x0
        keep = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
        inside[ys[keep], xs[keep]] = True
        assert inside.any()  # at least part of every shape is in view
        d = float(s.depth[inside][0])
        rows = np.nonzero(inside.any(1))[0]
        assert (d < 0.95 * plane[rows] + 1e-5).all()
        assert np.array_equal(s.seg > 0, inside)  # nothing of it hidden by the plane
        slack.append(0.95 * plane[rows.max()] - d)
    if near < far:  # bottom rows spread over the rows allowed, not pinned to the lowest one
        assert np.mean(np.array(slack) < 0.02) < 0.1


def test_config_validation():
    for bad in (dict(size=(4, 4)), dict(num_classes=1), dict(min_shapes=5, max_shapes=2),
                dict(depth_range=(8.0, 2.0)), dict(min_depth=3.0), dict(size=(56,)), dict(size="56")):
        with pytest.raises(ValueError, match="SceneConfig"):
            SceneConfig(**bad)
    # one number is a square, as synth --size takes it (it raised a bare "cannot unpack non-iterable int")
    assert SceneConfig(size=56).size == (56, 56) == SceneConfig(size=np.int64(56)).size


def _no_temp_files(root):
    return not [p for p in root.rglob("*") if (p.name.startswith(".") and p.name != MARKER) or p.suffix == ".tmp"]


def test_ade20k_writer_round_trip(tmp_path):
    cfg = SceneConfig(size=(64, 96))
    root = write_ade20k_layout(tmp_path / "ADEChallengeData2016", 6, 3, cfg, seed=5, image_ext=".png", progress=False)
    assert _no_temp_files(root)
    train = ADE20KDataset(root, "training")
    val = ADE20KDataset(root, "validation")
    assert (len(train), len(val)) == (6, 3)
    assert train.num_classes == cfg.num_classes and train.classes[0] == "background"
    for ds, split in ((train, "training"), (val, "validation")):
        for i in range(len(ds)):
            scene = generate_scene(scene_seed(5, "train" if split == "training" else "val", i), cfg)
            raw = ds.load_item(i)
            assert np.array_equal(raw["seg"], scene.seg)  # reduce_zero_label undoes the +1 of the writer
            assert np.array_equal(raw["image"], scene.image)  # PNG keeps exact pixels
            stored = data_files.read_label(raw["meta"]["target_path"])
            assert stored.min() >= 1 and np.array_equal(stored, scene.seg + 1)
    # train and val scenes differ
    assert not np.array_equal(train.load_item(0)["image"], val.load_item(0)["image"])
    # JPEG images (the default) are close, labels still exact
    root_jpg = write_ade20k_layout(tmp_path / "jpg", 2, 1, cfg, seed=5, progress=False)
    ds = ADE20KDataset(root_jpg, "training")
    raw, scene = ds.load_item(1), generate_scene(scene_seed(5, "train", 1), cfg)
    assert ds.items[0].image.suffix == ".jpg"
    assert np.array_equal(raw["seg"], scene.seg)
    assert np.abs(raw["image"].astype(int) - scene.image).mean() < 6


def test_nyu_writer_round_trip(tmp_path):
    cfg = SceneConfig(size=(48, 64))
    root = write_nyu_layout(tmp_path / "nyu", 5, 3, cfg, seed=2, scenes_per_folder=2, progress=False)
    assert _no_temp_files(root)
    lines = (root / "nyu_train.txt").read_text().splitlines()
    assert len(lines) == 5 and all(len(line.split()) == 3 for line in lines)
    assert (root / "official_splits/test").is_dir() and (root / "sync/scene_0002").is_dir()
    for split, n in (("nyu_train.txt", 5), ("nyu_test.txt", 3)):
        ds = NYUDepthDataset(root, split)
        assert len(ds) == n
        for i in range(n):
            scene = generate_scene(scene_seed(2, "train" if "train" in split else "val", i), cfg)
            depth = ds.load_item(i)["depth"]
            assert depth.dtype == np.float32 and depth.shape == scene.depth.shape
            assert np.abs(depth - scene.depth).max() <= 0.0005 + 1e-6  # within half a millimetre
        sample = ds[0]
        assert sample["depth"].shape == (1, 48, 64) and sample["meta"]["focal"] > 0


def test_layouts_share_scenes_for_the_same_seed(tmp_path):
    cfg = SceneConfig(size=(32, 40))
    ade = ADE20KDataset(write_ade20k_layout(tmp_path / "ade", 2, 1, cfg, seed=9, image_ext=".png", progress=False),
                        "validation")
    nyu = NYUDepthDataset(write_nyu_layout(tmp_path / "nyu", 2, 1, cfg, seed=9, image_ext=".png", progress=False),
                          "nyu_test.txt")
    assert np.array_equal(ade.load_item(0)["image"], nyu.load_item(0)["image"])  # same scene: seg and depth pair up


@pytest.mark.parametrize("depth_format", ["png", "npy"])
def test_folder_writer_round_trip(tmp_path, depth_format):
    cfg = SceneConfig(size=(40, 56), num_classes=7)
    root = write_folder_layout(tmp_path / "f", 4, cfg, seed=1, depth_format=depth_format, progress=False)
    seg = FolderSegmentationDataset(root)
    dep = FolderDepthDataset(root)
    assert seg.num_classes == 7
    for i in range(4):
        scene = generate_scene(scene_seed(1, "train", i), cfg)
        assert np.array_equal(seg.load_item(i)["seg"], scene.seg)
        assert np.array_equal(seg.load_item(i)["image"], scene.image)
        tol = 0.0 if depth_format == "npy" else 0.0005 + 1e-6
        assert np.abs(dep.load_item(i)["depth"] - scene.depth).max() <= tol


def test_interrupted_write_leaves_no_partial_files(tmp_path, monkeypatch):
    """A set is staged beside its folder and swapped in whole: an interrupted write leaves nothing."""
    calls = {"n": 0}
    real = data_files.os.replace

    def flaky(src, dst):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(src, dst)

    monkeypatch.setattr(data_files.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_nyu_layout(tmp_path / "nyu", 4, 0, SceneConfig(size=(32, 32)), progress=False)
    monkeypatch.undo()
    assert calls["n"] == 5 and list(tmp_path.iterdir()) == []  # no partial set, no stage left beside it


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != MARKER)


def test_a_smaller_set_never_mixes_into_a_bigger_one(tmp_path, capsys):
    """README: `dinov2-dense synth data/synthetic/ade --train 400 --val 50`, then the feature-cache
    snippet's write_ade20k_layout("data/synthetic/ade", 16, 4) on the same folder. It used to leave 16
    new scenes among 384 stale ones, with a synthetic.json claiming 16, silently. Now it is refused,
    naming the folder and the set it holds, and the earlier set is untouched; overwrite=True replaces
    it whole."""
    from dinov2_dense.cli import main

    root = tmp_path / "ade"
    assert main(["synth", str(root), "--train", "6", "--val", "3", "--size", "28"]) == 0
    before = _files(root)
    cfg = SceneConfig(size=(28, 28))
    with pytest.raises(OutputError) as err:
        write_ade20k_layout(root, 2, 1, cfg, progress=False)
    message = str(err.value)
    assert str(root) in message and "training 6, validation 3" in message and "training 2, validation 1" in message
    assert "mix" in message and "overwrite=True" in message and "another" in message
    assert _files(root) == before and (len(ADE20KDataset(root, "training")), len(ADE20KDataset(root, "validation"))) \
        == (6, 3)
    write_ade20k_layout(root, 2, 1, cfg, progress=False, overwrite=True)  # replaces the set whole
    assert (len(ADE20KDataset(root, "training")), len(ADE20KDataset(root, "validation"))) == (2, 1)
    assert json.loads((root / "synthetic.json").read_text())["counts"] == {"training": 2, "validation": 1}
    assert len(_files(root)) == 2 * 3 + 1 and [p.name for p in tmp_path.iterdir()] == ["ade"]


@pytest.mark.parametrize("layout", ["ade20k", "nyu", "folder"])
def test_writers_refuse_another_set_and_keep_the_same_one(tmp_path, layout):
    """Every writer: the same set again is left as it is; another one (fewer scenes, another seed)
    is refused without touching the folder; overwrite=True replaces it whole; files the user put
    there are never deleted, even with overwrite=True."""
    cfg = SceneConfig(size=(16, 16))
    write = {"ade20k": lambda root, n, **kw: write_ade20k_layout(root, n, 1, cfg, progress=False, **kw),
             "nyu": lambda root, n, **kw: write_nyu_layout(root, n, 1, cfg, progress=False, **kw),
             "folder": lambda root, n, **kw: write_folder_layout(root, n, cfg, progress=False, **kw)}[layout]
    root = write(tmp_path / "set", 3)
    before = {f: (root / f).stat().st_mtime_ns for f in _files(root)}
    assert write(root, 3) == root  # the very same set: nothing rewritten
    assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == before
    for other in (dict(), dict(seed=1)):
        with pytest.raises(OutputError, match="already holds a synthetic"):
            write(root, 3 if other else 2, **other)
        assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == before
    write(root, 2, overwrite=True)
    smaller = write(tmp_path / "fresh", 2)
    assert _files(root) == _files(smaller) and len(_files(root)) < len(before)
    assert (root / "synthetic.json").read_text() == (smaller / "synthetic.json").read_text()
    (root / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="notes.txt"):
            write(root, 1, overwrite=overwrite)
    assert (root / "notes.txt").read_text() == "mine" and _files(root) == sorted(_files(smaller) + ["notes.txt"])


def test_overwrite_replaces_a_set_written_before_sets_were_marked(tmp_path):
    """A set written by an older version of the writers carries no output marker: overwrite=True
    still replaces it (recognised by its synthetic.json and its files); a user folder without
    synthetic.json is never replaced."""
    cfg = SceneConfig(size=(16, 16))
    root = write_ade20k_layout(tmp_path / "ade", 3, 1, cfg, progress=False)
    (root / MARKER).unlink()
    with pytest.raises(OutputError, match="overwrite=True"):
        write_ade20k_layout(root, 1, 1, cfg, progress=False)
    write_ade20k_layout(root, 1, 1, cfg, progress=False, overwrite=True)
    assert len(ADE20KDataset(root, "training")) == 1 and len(_files(root)) == 2 * 2 + 1
    mine = tmp_path / "mine"
    (mine / "images").mkdir(parents=True)
    (mine / "images" / "00000.png").write_bytes(b"photo")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="mine"):
            write_folder_layout(mine, 1, cfg, progress=False, overwrite=overwrite)
    assert (mine / "images" / "00000.png").read_bytes() == b"photo"


def test_writer_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="image_ext"):
        write_ade20k_layout(tmp_path, 1, 0, image_ext=".gif", progress=False)
    with pytest.raises(ValueError, match="depth_format"):
        write_folder_layout(tmp_path, 1, depth_format="exr", progress=False)
    with pytest.raises(ValueError, match="16-bit"):
        write_nyu_layout(tmp_path, 1, 0, SceneConfig(depth_range=(2.0, 80.0)), progress=False)


def test_synth_writes_in_its_own_stage(tmp_path, monkeypatch):
    """`dinov2-dense synth` stages its output; the writer it calls fills that stage in place (no
    second stage inside it), and the output carries the marker that lets --overwrite replace it."""
    from dinov2_dense.cli import main
    from dinov2_dense.data import synthetic

    seen = []
    real = synthetic.write_image
    monkeypatch.setattr(synthetic, "write_image", lambda path, array: seen.append(path) or real(path, array))
    assert main(["synth", str(tmp_path / "s"), "--layout", "folder", "--train", "1", "--size", "28"]) == 0
    assert seen and all(p.parent.parent.parent.name.endswith(".partial") for p in seen)  # .s.<tag>.partial/s/images/
    assert (tmp_path / "s" / MARKER).is_file() and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_synth_leaves_the_same_set_and_refuses_another_naming_both(tmp_path, capsys):
    """README: the Python writers write "as `synth` does", a folder holding exactly the set asked for
    being left as it is and another set refused naming both. `synth` itself refused any rerun with
    "output folder ... is not empty (4 entries: ...)", naming neither set. It now does what the writers do:
    the same set (its own or a writer's) is left untouched with one line and exit 0; another set is
    refused naming both and --overwrite; a folder of other files is refused as before."""
    from dinov2_dense.cli import main

    root = tmp_path / "ade"
    args = ["synth", str(root), "--train", "3", "--val", "2", "--size", "28"]
    assert main(args) == 0
    capsys.readouterr()
    before = {f: (root / f).stat().st_mtime_ns for f in _files(root)}
    assert main(args) == 0  # the same set: nothing rewritten
    out, err = capsys.readouterr()
    assert out.strip() == (f"{root} already holds these 3 training and 2 validation scenes (ade20k layout, 28x28, "
                           "seed 0): left as it is (--overwrite writes them again)") and not err, (out, err)
    assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == before
    for other, wanted in ((["--train", "2", "--val", "1"], "training 2, validation 1 scenes; seed 0"),
                          (["--train", "3", "--val", "2", "--seed", "1"], "training 3, validation 2 scenes; seed 1")):
        assert main(["synth", str(root), "--size", "28", *other]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"dinov2-dense synth: error: {root} already holds a "
                                                             "synthetic ade20k set (training 3, validation 2 scenes; "
                                                             "seed 0; 28x28)"), err
        assert f"writing the ade20k set ({wanted}; 28x28)" in err and "pass --overwrite" in err, err
        assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == before
    # a set the Python writer wrote is the set `synth` writes: left as it is, both ways
    cfg = SceneConfig(size=(28, 28))
    assert write_ade20k_layout(root, 3, 2, cfg, progress=False) == root
    nyu = write_nyu_layout(tmp_path / "nyu", 2, 1, cfg, progress=False)
    assert main(["synth", str(nyu), "--layout", "nyu", "--train", "2", "--val", "1", "--size", "28"]) == 0
    assert "left as it is" in capsys.readouterr().out
    # other files: refused as any non-empty output folder, with or without --overwrite
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"mine")
    for extra in ([], ["--overwrite"]):
        assert main(["synth", str(mine), "--layout", "folder", "--train", "1", "--size", "28", *extra]) == 2
        assert "photo.jpg" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["photo.jpg"]
