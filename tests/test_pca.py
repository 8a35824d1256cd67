"""PCA maps (dinov2_dense.viz.pca): recovery of built principal directions, the sign rule, a
synthetic scene's foreground, joint colours, the basis file, and the `dinov2-dense pca` command."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dinov2_dense.cli import main
from dinov2_dense.features import DenseFeatures, FeatureOptions
from dinov2_dense.viz.pca import PCABasis, colour_basis, fit_pca, foreground_split, otsu_threshold, pca_maps

ROOT = Path(__file__).resolve().parents[1]


# -- feature maps with known principal directions -----------------------------------------
def blob_masks():
    """Object masks on 16x16 patch grids, none touching the border; the last covers 56% of it."""
    masks = []
    for (y0, y1, x0, x1) in [(3, 10, 4, 12), (5, 13, 2, 9), (2, 8, 6, 14), (2, 14, 2, 14)]:
        m = np.zeros((16, 16), bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)
    yy, xx = np.mgrid[:16, :16]
    masks.insert(2, (yy - 8) ** 2 / 25 + (xx - 7) ** 2 / 16 <= 1)  # an ellipse
    return masks


def known_features(masks, dim=32, seed=0, stds=(0.6, 0.4, 0.25), noise=0.01):
    """x = m + a*u1 + mask*(b*u2 + c*u3 + d*u4) + noise: u orthonormal, a = +2 on the object and -1
    off it; b, c, d ~ N(0, stds^2) on the object only. Returns the maps (C, h, w) and U (dim, 4)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(dim, 4)))
    offset = rng.normal(size=dim)
    maps = []
    for mask in masks:
        h, w = mask.shape
        a = np.where(mask, 2.0, -1.0)
        bcd = rng.normal(size=(3, h, w)) * np.asarray(stds)[:, None, None] * mask
        coef = np.concatenate([a[None], bcd])  # (4, h, w)
        x = offset[:, None, None] + np.einsum("ck,khw->chw", u, coef) + noise * rng.normal(size=(dim, h, w))
        maps.append(torch.from_numpy(x).float())
    return maps, u


def test_known_directions_and_split_are_recovered():
    masks = blob_masks()
    maps, u = known_features(masks)
    basis = fit_pca(maps)
    assert abs(basis.direction @ u[:, 0]) > 0.999
    for j in range(3):  # colour components: u2, u3, u4 in order of variance, up to sign
        assert abs(basis.fg_components[j] @ u[:, j + 1]) > 0.98, j
    for m, built in zip(maps, masks):
        fg, rgb = basis.transform(m)
        np.testing.assert_array_equal(fg, built)
        assert (rgb[~built] == 0).all() and rgb[built].max() > 0.5
    assert basis.info["sign_rule"] == "border"
    # the foreground covers 56% of the last grid: the border rule, not the minority side, finds it
    alone = fit_pca(maps[-1])
    np.testing.assert_array_equal(alone.transform(maps[-1])[0], masks[-1])
    assert masks[-1].mean() > 0.5


def test_images_wholly_on_one_side_do_not_outvote_the_split_ones():
    """Three images split into object and background, four fall wholly on the objects' side of
    the joint first component: their rings, summed, outnumber the split images' background
    rings, but they say nothing about which side is the object. Each image votes, weighted by its
    smaller side's share of its patches."""
    split_masks = blob_masks()[:3]
    for stray in (False, True):  # the four whole images, or each with one stray background patch
        whole = np.ones((16, 16), bool)
        whole[7, 7] = not stray
        masks = split_masks + [whole] * 4
        maps, _ = known_features(masks, seed=3)
        split = foreground_split(maps)
        for got, built in zip(split.masks, masks):
            np.testing.assert_array_equal(got, built)
        weights = sum(min(m.sum(), (~m).sum()) / m.size for m in split_masks)
        assert split.info["sign_rule"] == "border"
        assert split.info["border_votes"]["foreground"] == pytest.approx(weights, abs=1e-6)
        assert split.info["border_votes"]["background"] == pytest.approx(4 / 256 if stray else 0.0, abs=1e-6)
        # summed over all images, the foreground side holds more border patches: the old rule's mistake
        assert split.info["border_patches"]["foreground"] > split.info["border_patches"]["background"]
        flipped = foreground_split([-m for m in maps])
        for got, built in zip(flipped.masks, masks):
            np.testing.assert_array_equal(got, built)
    # no image split (each wholly one side): the border patches summed over all images decide
    masks = [np.ones((4, 4), bool), np.zeros((5, 5), bool)]  # rings of 12 and 16 patches
    maps, _ = known_features(masks, seed=4)
    for sign in (1, -1):
        split = foreground_split([sign * m for m in maps])
        assert split.info["sign_rule"] == "border total"
        assert split.masks[0].all() and not split.masks[1].any()


def test_a_close_up_object_that_reaches_the_frame_is_the_foreground():
    """A close-up: the object fills all but a strip of ground at the bottom (3 of 16 rows) and
    reaches three edges, so it holds 40 of the 60 border patches against the strip's 20, but
    fewer per patch of its area (40/208 against 20/48). Counting border patches named the strip
    the foreground; the border density names the object, alone and in a joint fit."""
    close_up = np.ones((16, 16), bool)
    close_up[13:] = False
    # alone, and in joint fits where its vote decides (three close-ups against one blob) or is outweighed
    for masks in ([close_up], [close_up] * 3 + blob_masks()[:1], blob_masks()[:2] + [close_up]):
        maps, _ = known_features(masks, seed=5)
        for sign in (1, -1):
            split = foreground_split([sign * m for m in maps])
            assert split.info["sign_rule"] == "border"
            for got, built in zip(split.masks, masks):
                np.testing.assert_array_equal(got, built)
            if len(masks) == 1:  # alone, the object holds more border patches than the strip
                assert split.info["border_patches"] == {"foreground": 40, "background": 20}


def test_threshold_modes():
    masks = blob_masks()[:3]
    maps, _ = known_features(masks, seed=1)
    for mode in ("otsu", "zero", 0.0):
        basis = fit_pca(maps, threshold=mode)
        for m, built in zip(maps, masks):
            np.testing.assert_array_equal(basis.transform(m)[0], built, err_msg=str(mode))
    everything = fit_pca(maps, threshold=None)
    assert everything.transform(maps[0])[0].all() and not everything.masked
    with pytest.raises(ValueError, match="no patch is foreground"):
        fit_pca(maps, threshold=50.0)
    with pytest.raises(ValueError, match="threshold"):
        fit_pca(maps, threshold="mean")


def test_fit_is_the_foreground_split_then_the_colour_basis():
    masks = blob_masks()
    maps, _ = known_features(masks, seed=1)
    split = foreground_split(maps)
    for got, built in zip(split.masks, masks):  # stage 1 alone: the built objects
        np.testing.assert_array_equal(got, built)
    assert split.info["sign_rule"] == "border" and split.info["foreground_patches"] == sum(m.sum() for m in masks)
    for threshold in ("otsu", 0.5, None):
        composed = colour_basis(maps, foreground_split(maps, threshold=threshold), percentiles=(2.0, 98.0),
                                info={"model": "test"})
        whole = fit_pca(maps, threshold=threshold, percentiles=(2.0, 98.0), info={"model": "test"})
        for field in ("mean", "direction", "fg_mean", "fg_components", "lo", "hi"):
            np.testing.assert_array_equal(getattr(composed, field), getattr(whole, field), err_msg=field)
        assert (composed.threshold, composed.masked, composed.info) == (whole.threshold, whole.masked, whole.info)
    with pytest.raises(ValueError, match="colour_basis: the split was made on"):
        colour_basis(maps[:2], split)


def test_otsu_is_exact_and_symmetric():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(-1, 0.1, 700), rng.normal(2, 0.1, 300)])
    t = otsu_threshold(v)
    assert -0.5 < t < 1.5 and (v > t).sum() == 300
    assert otsu_threshold(-v) == -t
    assert otsu_threshold(np.ones(5)) == 1.0


def test_sign_rule_survives_permutation_and_feature_sign():
    masks = blob_masks()
    maps, _ = known_features(masks, seed=2)
    ref = fit_pca(maps)
    results = [ref.transform(m) for m in maps]
    perm = [3, 0, 4, 2, 1]
    permuted = fit_pca([maps[i] for i in perm])
    flipped = fit_pca([-m for m in maps])
    for k, i in enumerate(perm):
        fg, rgb = permuted.transform(maps[i])
        np.testing.assert_array_equal(fg, masks[i])
        np.testing.assert_allclose(rgb, results[i][1], atol=1e-5)
    for m, built, (fg0, rgb0) in zip(maps, masks, results):
        fg, rgb = flipped.transform(-m)
        np.testing.assert_array_equal(fg, built)
        np.testing.assert_array_equal(fg0, built)
        np.testing.assert_allclose(rgb, rgb0, atol=1e-5)  # colour signs follow the skewness: same colours
    # the stored direction flips with the features, the foreground does not
    assert ref.direction @ flipped.direction < -0.999


# -- a synthetic scene whose features indicate its classes --------------------------------
H, W, P = 440, 450, 14  # padded to 448 x 462: 4 and 6 pixels each side


def scene(shift=(0, 0)):
    """Class map (H, W): 0 sky, 1 ground; objects 2 disc, 3 box, 4 triangle (shifted by ``shift``)."""
    dy, dx = shift
    cls = np.zeros((H, W), np.uint8)
    cls[H // 2 :] = 1
    cv2.circle(cls, (130 + dx, 150 + dy), 70, 2, -1)
    cv2.rectangle(cls, (240 + dx, 230 + dy), (380 + dx, 360 + dy), 3, -1)
    tri = np.array([[60 + dx, 390 + dy], [200 + dx, 390 + dy], [130 + dx, 260 + dy]], np.int32)
    cv2.fillPoly(cls, [tri], 4)
    return cls


def scene_features(cls, seed=0, dim=64, noise=0.05):
    """DenseFeatures as the backbone would give with fit='pad': each patch's feature is the mix of
    its pixels' class prototypes (area fractions @ prototypes) + noise. Background and object
    prototypes share a group vector each, so objects differ from background more than from each other."""
    rng = np.random.default_rng(seed)
    group = rng.normal(size=(2, dim)) * 2.0
    protos = np.stack([group[0 if c < 2 else 1] + rng.normal(size=dim) for c in range(5)])
    ph, pw = (-H) % P, (-W) % P
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    padded = np.pad(cls, ((pad[0], pad[1]), (pad[2], pad[3])), constant_values=0)
    gh, gw = padded.shape[0] // P, padded.shape[1] // P
    onehot = np.eye(5)[padded].reshape(gh, P, gw, P, 5).mean((1, 3))  # (gh, gw, 5) class fractions
    fmap = onehot @ protos + noise * rng.normal(size=(gh, gw, dim))
    maps = torch.from_numpy(fmap).float().permute(2, 0, 1)[None]
    return DenseFeatures(maps={11: maps}, cls_tokens={}, registers={}, image_size=(H, W),
                         input_size=padded.shape, padding=pad, patch_size=P)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_scene_foreground_matches_objects_and_parts_share_colours():
    scenes = [scene(), scene((25, 30))]
    feats = [scene_features(c, seed=0) for c in scenes]
    basis = fit_pca(feats)
    colours = []
    for cls, f in zip(scenes, feats):
        fg, rgb = basis.transform(f, mode="bilinear")
        assert fg.shape == (H, W) and rgb.shape == (H, W, 3)
        objects = cls >= 2
        assert iou(fg, objects) >= 0.9, iou(fg, objects)
        nearest, _ = basis.transform(f, mode="nearest")
        assert iou(nearest, objects) >= 0.85
        # the three objects get distinct colours
        means = [rgb[cv2.erode((cls == k).astype(np.uint8), np.ones((15, 15)), iterations=1) > 0].mean(0)
                 for k in (2, 3, 4)]
        for i in range(3):
            for j in range(i + 1, 3):
                assert np.linalg.norm(means[i] - means[j]) > 0.3, (i, j, means)
        colours.append(np.stack(means))
    # joint fit: the same object, moved, has the same colour in both scenes
    np.testing.assert_allclose(colours[0], colours[1], atol=0.08)


def test_maps_equal_projecting_upsampled_features():
    """Projection is linear: upsampling the scores = projecting upsampled features (padding removed)."""
    f = scene_features(scene(), seed=4)
    basis = fit_pca(f)
    for mode in ("bilinear", "nearest"):
        fg, rgb = basis.transform(f, mode=mode)
        pixels = f.upsample(mode=mode)[0].permute(1, 2, 0).double().numpy()  # (H, W, C)
        s1 = (pixels - basis.mean) @ basis.direction
        s3 = (pixels - basis.fg_mean) @ basis.fg_components.T
        ref = np.clip((s3 - basis.lo) / (basis.hi - basis.lo), 0, 1) * (s1 > basis.threshold)[..., None]
        agree = fg == (s1 > basis.threshold)  # float32 upsampling may flip pixels lying on the threshold
        assert agree.mean() > 0.9995, mode
        np.testing.assert_allclose(rgb[agree], ref[agree], atol=1e-4)


def test_basis_file_roundtrip_and_errors(tmp_path):
    maps, _ = known_features(blob_masks(), seed=3)
    basis = fit_pca(maps, info={"model": "test"})
    path = basis.save(tmp_path / "b.npz")
    loaded = PCABasis.load(path)
    assert loaded.info["model"] == "test" and loaded.info["sign_rule"] == "border"
    for m in maps:
        for a, b in zip(basis.transform(m), loaded.transform(m)):
            np.testing.assert_array_equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["b.npz"]  # no temp file left behind
    with pytest.raises(ValueError, match="32-channel features.*16 channels"):
        loaded.transform(torch.zeros(16, 4, 4))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        PCABasis.load(bad)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        PCABasis.load(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=".npz"):
        basis.save(tmp_path / "b.safetensors")


def test_pca_maps_take_feature_options(tmp_path):
    from .conftest import tiny_vit

    model = tiny_vit()
    items = [write_scene_image(tmp_path / "a.png", 60, 80, 0), write_scene_image(tmp_path / "b.png", 44, 50, 1)]
    by_keywords = pca_maps(model, items, layer=1, size=42, tile=28, batch_size=1)
    by_options = pca_maps(model, items, options=FeatureOptions(layers=[1], size=42, tile=28, batch_size=1,
                                                               fit="resize"))  # pca_maps' fit left out
    for a, b in zip(by_keywords, by_options):
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert by_options[0].basis.info["layer"] == 1
    assert by_options[0].basis.info["size"] == 42  # what --basis runs at when no --size is given
    raw = pca_maps(model, items, options=FeatureOptions(layers=[1], size=42, norm=False, fit="resize"))  # beyond
    assert not np.array_equal(raw[0].rgb, by_keywords[0].rgb)
    with pytest.raises(ValueError, match="colours one block"):
        pca_maps(model, items, options=FeatureOptions(layers=2))
    with pytest.raises(ValueError, match="size given with options="):
        pca_maps(model, items, size=42, options=FeatureOptions(size=42))


# -- the command --------------------------------------------------------------------------
def write_scene_image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    img = (rng.integers(60, 120, (h, w, 3))).astype(np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (30, 200, 240), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.fixture
def images(tmp_path):
    return [write_scene_image(tmp_path / "a.png", 60, 80, 0), write_scene_image(tmp_path / "b.jpg", 70, 56, 1)]


def read_rgb(path):
    out = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert out is not None, path
    return out[..., ::-1]


def test_command_writes_pngs_and_reused_basis_gives_same_colours(images, tmp_path, torch_home, capsys):
    out = tmp_path / "out"
    common = ["--weights", "random", "--size", "56"]
    assert main(["pca", *map(str, images), "--joint", "--out", str(out), *common]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {".dinov2-dense-output", "figure.png", "pca_basis.npz", "a_pca.png", "a_mask.png", "a_overlay.png",
                     "b_pca.png", "b_mask.png", "b_overlay.png"}
    assert read_rgb(out / "a_pca.png").shape == (60, 80, 3)
    assert read_rgb(out / "b_overlay.png").shape == (70, 56, 3)
    mask = read_rgb(out / "a_mask.png")[..., 0]
    assert set(np.unique(mask)) <= {0, 255} and 0 < (mask > 0).mean() < 1
    fig = read_rgb(out / "figure.png")
    assert fig.shape[1] > fig.shape[0]  # one row of four panels per image
    assert "sign rule" in capsys.readouterr().out

    # the saved basis on b alone, and on a new image: b's colours are those of the joint fit
    new = write_scene_image(tmp_path / "c.png", 50, 50, 2)
    again = tmp_path / "again"
    assert main(["pca", str(images[1]), str(new), "--basis", str(out / "pca_basis.npz"), "--out", str(again),
                 *common]) == 0
    np.testing.assert_array_equal(read_rgb(again / "b_pca.png"), read_rgb(out / "b_pca.png"))
    np.testing.assert_array_equal(read_rgb(again / "b_mask.png"), read_rgb(out / "b_mask.png"))
    assert (again / "c_pca.png").is_file() and not (again / "pca_basis.npz").exists()


def test_command_makes_and_writes_one_full_size_map_at_a_time(tmp_path, torch_home, monkeypatch, capsys):
    """pca held every image's full-size maps until it wrote (a reviewer: 3.99 GB for six 12 MP photos). It now
    makes, writes and drops them one at a time, each figure from shrunk copies of its rows as soon as they are
    written; its files are those of pca_maps + save_maps, and its figures those of the maps shrunk."""
    import weakref

    import dinov2_dense.viz.pca as viz_pca
    from dinov2_dense import load_backbone

    monkeypatch.setattr(viz_pca, "FIGURE_SIDE", 24)  # figures draw copies of at most 24 pixels a side
    paths = [str(write_scene_image(tmp_path / f"im{i}.png", 40 + 2 * i, 60 - 2 * i, i)) for i in range(10)]
    alive, most, real = [], [0], viz_pca._colour

    def counted(*args, **kwargs):
        most[0] = max(most[0], sum(ref() is not None for ref in alive))
        m = real(*args, **kwargs)
        alive.append(weakref.ref(m))
        return m

    monkeypatch.setattr(viz_pca, "_colour", counted)
    common = ["--model", "dinov2_dense_tiny", "--size", "56", "--batch-size", "3"]
    assert main(["pca", *paths, "--out", str(tmp_path / "out"), *common]) == 0
    assert len(alive) == 10 and most[0] == 0  # no full-size map left when the next is made
    out = tmp_path / "out"
    assert {p.name for p in out.glob("figure*")} == {"figure_1.png", "figure_2.png"}  # rows 1-8 and 9-10
    # the same maps as the library's list of them, written by save_maps
    model = load_backbone("dinov2_dense_tiny")
    alive.clear()
    maps = pca_maps(model, paths, size=56, joint=False, progress=False)  # (the command's default: a fit per image)
    assert most[0] == 9 and sum(ref() is not None for ref in alive) == 10  # (the list holds them all)
    monkeypatch.setattr(viz_pca, "_colour", real)
    listed = tmp_path / "listed"
    listed.mkdir()
    viz_pca.save_maps(maps, listed, title="PCA of each image on its own (10 images)")
    for p in out.glob("*.png"):
        np.testing.assert_array_equal(read_rgb(p), read_rgb(listed / p.name), err_msg=p.name)
    assert {p.name for p in listed.iterdir()} == {p.name for p in out.glob("*.png")}
    # a figure draws the shrunk copies: the image's panel is the image averaged down, not sampled
    small = viz_pca.for_figure(maps[0])
    assert small.image.shape[:2] == (round(40 * 24 / 60), 24) and small.rgb.shape[:2] == small.mask.shape
    assert viz_pca.for_figure(small) is small and viz_pca.for_figure(maps[0], side=60) is maps[0]


def test_colours_and_overlays_in_bands_of_rows_are_the_whole_images(monkeypatch):
    """colourise, to_uint8 and overlay_uint8 work a band of rows at a time (a 12 MP image's maps took several
    float64 copies of it whole): the bytes are those of the whole image at once."""
    import dinov2_dense.viz.figures as figures
    import dinov2_dense.viz.pca as viz_pca

    gen = torch.Generator().manual_seed(0)
    basis = fit_pca([torch.randn(16, 9, 11, generator=gen)], threshold="otsu")
    scores = torch.randn(4, 37, 23, generator=gen, dtype=torch.float64).float() * 3
    image = np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    whole_mask, whole_rgb = basis.colourise(scores)
    whole = figures.to_uint8(figures.overlay(image, whole_rgb, 0.3)), figures.to_uint8(whole_rgb)
    for pixels in (23 * 5, 50, 1):  # bands of 5 rows, of 2 rows, of 1 row
        monkeypatch.setattr(figures, "BAND_PIXELS", pixels)
        mask, rgb = basis.colourise(scores)
        np.testing.assert_array_equal(mask, whole_mask)
        np.testing.assert_array_equal(rgb, whole_rgb)
        np.testing.assert_array_equal(figures.overlay_uint8(image, rgb, 0.3), whole[0])
        np.testing.assert_array_equal(figures.to_uint8(rgb), whole[1])
    assert 0 < whole_mask.mean() < 1
    with pytest.raises(ValueError, match="sizes differ"):
        figures.overlay_uint8(image, whole_rgb[:30], 0.3)


def test_a_file_changed_between_features_and_maps_is_named(tmp_path):
    from dinov2_dense import load_backbone
    from dinov2_dense.viz.pca import pca_map_stream

    paths = [str(write_scene_image(tmp_path / f"im{i}.png", 40, 60, i)) for i in range(2)]
    stream = pca_map_stream(load_backbone("dinov2_dense_tiny"), paths, size=56, progress=False)
    assert stream.sources == paths and len(stream) == 2 and len(stream.bases) == 2
    write_scene_image(tmp_path / "im1.png", 50, 60, 1)
    maps = iter(stream)
    assert next(maps).source == paths[0]
    with pytest.raises(ValueError, match=r"im1.png: decoded to 60x50 pixels, but it was 60x40 .*did the file change"):
        next(maps)


def test_command_without_a_foreground_split_writes_no_mask(images, tmp_path, torch_home, capsys):
    """--threshold none: every pixel is foreground, so no (all-white) _mask.png and no mask column."""
    out, split = tmp_path / "none", tmp_path / "otsu"
    common = ["--weights", "random", "--size", "56", "--joint"]
    assert main(["pca", *map(str, images), "--out", str(out), "--threshold", "none", *common]) == 0
    said = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {".dinov2-dense-output", "figure.png", "pca_basis.npz", "a_pca.png",
                                              "a_overlay.png", "b_pca.png", "b_overlay.png"}
    assert "<name>_pca/_overlay.png" in said and "no foreground split" in said
    assert main(["pca", *map(str, images), "--out", str(split), *common]) == 0
    # the same rows, three panels a row instead of four
    wide, narrow = read_rgb(split / "figure.png").shape, read_rgb(out / "figure.png").shape
    assert narrow[1] < wide[1] * 0.85


def test_images_of_the_same_name_keep_their_own_files(tmp_path, torch_home, capsys, monkeypatch):
    """a/cat.png and b/cat.png: the second becomes cat_N, never the stem of another image (c/cat_2.png), so
    every image's maps are written and none replaced (each image has its own size, to tell them apart)."""
    sizes = {"a/cat.png": (42, 56), "b/cat.png": (56, 70), "c/cat_2.png": (70, 42)}
    paths = []
    for i, (name, (h, w)) in enumerate(sizes.items()):
        (tmp_path / name).parent.mkdir()
        paths.append(str(write_scene_image(tmp_path / name, h, w, i)))
    out = tmp_path / "out"
    import dinov2_dense.viz.pca as viz_pca

    labels, real_grid = [], viz_pca.save_grid
    monkeypatch.setattr(viz_pca, "save_grid", lambda *a, **k: labels.append(k["row_labels"]) or real_grid(*a, **k))
    assert main(["pca", *paths, "--weights", "random", "--size", "56", "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*_*.png"))
    assert f"wrote {len(written) + 1} files" in capsys.readouterr().out  # + figure.png
    assert written == sorted(f"{s}_{kind}.png" for s in ("cat", "cat_2", "cat_3") for kind in ("pca", "mask", "overlay"))
    shapes = {read_rgb(out / f"{s}_pca.png").shape[:2] for s in ("cat", "cat_2", "cat_3")}
    assert shapes == set(sizes.values())
    assert read_rgb(out / "cat_2_pca.png").shape[:2] == sizes["c/cat_2.png"]
    # the figure's rows are told apart too (both were labelled cat.png)
    assert labels == [["a/cat.png", "b/cat.png", "cat_2.png"]]


def test_figure_rows_are_labelled_apart():
    """Row labels: the file name; for one name in several folders, the shortest end of the path that
    tells it apart; for a file given twice, the stems its files are written under."""
    from dinov2_dense.viz.pca import row_labels

    assert row_labels(["a/x.png", "b/x.png", "y.png"]) == ["a/x.png", "b/x.png", "y.png"]
    assert row_labels(["p/a/x.png", "p/b/a/x.png", "c/x.png"]) == ["p/a/x.png", "b/a/x.png", "c/x.png"]
    assert row_labels(["x.png", "d/x.png", "skimage:coffee"]) == ["x.png", "d/x.png", "skimage:coffee"]
    assert row_labels(["a/x.png", "a/x.png"]) == ["x", "x_2"]


def test_command_tiled_nearest_and_own_size(images, tmp_path, torch_home):
    out = tmp_path / "tiled"
    assert main(["pca", str(images[0]), "--weights", "random", "--size", "0", "--tile", "28", "--upsample",
                 "nearest", "--threshold", "zero", "--out", str(out), "--save-basis", str(tmp_path / "t.npz")]) == 0
    mask = read_rgb(out / "a_mask.png")[..., 0]
    assert mask.shape == (60, 80)
    basis = PCABasis.load(tmp_path / "t.npz")
    assert basis.info["threshold_mode"] == "zero" and basis.info["tile"] == 28 and basis.dim == 384
    # nearest upsampling of a padded 5x6 grid: the mask is constant on each patch's pixels (away from padding)
    pad_y, pad_x = (70 - 60) // 2, (84 - 80) // 2
    blocks = mask[14 - pad_y : 28 - pad_y, 14 - pad_x : 28 - pad_x]
    assert len(np.unique(blocks)) == 1


def write_video(path, frames=5, h=48, w=64, fourcc="mp4v"):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        img = np.full((h, w, 3), 90, np.uint8)
        cv2.circle(img, (16 + 6 * i, h // 2), 12, (40, 220, 250), -1)
        writer.write(img)
    writer.release()
    return path


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape
    cap.release()
    return n, shape


def test_command_video_in_video_out(tmp_path, torch_home):
    video = write_video(tmp_path / "clip.mp4")
    out = tmp_path / "vout"
    assert main(["pca", "--video", str(video), "--weights", "random", "--size", "42", "--frames",
                 "--out", str(out)]) == 0
    assert count_frames(out / "clip_pca.mp4") == (5, (48, 128, 3))  # frame | colours, every frame
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"frame_{i:06d}.png" for i in range(5)]
    assert (out / "figure.png").is_file()
    basis = PCABasis.load(out / "pca_basis.npz")
    assert basis.info["images"] == 5  # one joint fit over the frames
    # MJPG .avi, every 2nd frame, at most 2
    out2 = tmp_path / "vout2"
    assert main(["pca", "--video", str(video), "--weights", "random", "--size", "42", "--avi", "--frame-step",
                 "2", "--max-frames", "2", "--basis", str(out / "pca_basis.npz"), "--out", str(out2)]) == 0
    assert count_frames(out2 / "clip_pca.avi") == (2, (48, 128, 3))
    assert [p.name for p in out2.glob(".*")] == [".dinov2-dense-output"]  # the output marker, no temp files


def test_command_errors_name_the_input_and_write_nothing(images, tmp_path, torch_home, capsys):
    out = tmp_path / "never"
    missing = tmp_path / "missing.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    for bad in (missing, broken):
        assert main(["pca", str(images[0]), str(bad), "--weights", "random", "--size", "28", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err
        assert not out.exists()
    assert main(["pca", "--video", str(tmp_path / "nope.mp4"), "--weights", "random", "--out", str(out)]) == 2
    assert "nope.mp4" in capsys.readouterr().err
    not_video = tmp_path / "fake.mp4"
    not_video.write_bytes(b"garbage" * 10)
    assert main(["pca", "--video", str(not_video), "--weights", "random", "--out", str(out)]) == 2
    assert "fake.mp4" in capsys.readouterr().err
    assert main(["pca", str(images[0]), "--basis", str(broken), "--weights", "random", "--out", str(out)]) == 2
    assert "broken.png" in capsys.readouterr().err
    assert main(["pca", "--weights", "random", "--out", str(out)]) == 2
    assert not out.exists()


def test_an_out_named_like_an_image_is_refused_as_pca_writes_a_folder(images, tmp_path, torch_home, capsys,
                                                                      monkeypatch):
    """`pca --out pcaB.png` made a folder named pcaB.png: --out is a folder, so an image's suffix is refused in one
    line saying so, before a model is built, and nothing is made."""
    import dinov2_dense.hub as hub

    monkeypatch.setattr(hub, "load_backbone", lambda *a, **k: pytest.fail("the model was built"))
    for name in ("pcaB.png", "maps.JPG", "c.jpeg"):
        out = tmp_path / name
        assert main(["pca", str(images[0]), "--weights", "random", "--size", "28", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--out {out}: pca writes a folder of files" in err, err
        assert f"give a folder name, e.g. --out {out.with_suffix('')}" in err
        assert not out.exists()


def test_tools_script_help():
    res = subprocess.run([sys.executable, str(ROOT / "tools" / "pca.py"), "--help"], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    assert "--video" in res.stdout and "--basis" in res.stdout and "--threshold" in res.stdout


# -- what the command says and writes (user-path review) ----------------------------------
TINY = ["--model", "dinov2_dense_tiny"]


def test_video_reports_the_frames_written_not_the_basis_count(tmp_path, torch_home, capsys):
    """A basis fitted on 2 frames colours all 5 of a clip: the command names the 5 frames written (it
    named the basis's fitted count); an odd-sized clip (a GIF: OpenCV's writers cannot make one) comes
    back whole, its last row repeated (see the writer's test)."""
    from PIL import Image

    frames = [Image.open(write_scene_image(tmp_path / f"f{i}.png", 47, 63, i)).convert("RGB") for i in range(5)]
    video = tmp_path / "clip.gif"
    frames[0].save(video, save_all=True, append_images=frames[1:], duration=100, loop=0)
    fit, out = tmp_path / "fit", tmp_path / "out"
    assert main(["pca", "--video", str(video), *TINY, "--size", "28", "--max-frames", "2", "--out", str(fit)]) == 0
    assert "(2 frames," in capsys.readouterr().out
    assert main(["pca", "--video", str(video), *TINY, "--basis", str(fit / "pca_basis.npz"), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "clip_pca.mp4 (5 frames," in said and "figure.png (5 of the frames)" in said
    assert count_frames(out / "clip_pca.mp4") == (5, (48, 126, 3))  # 47 rows padded to 48, nothing cut


def test_more_than_eight_images_name_their_figures_and_every_file_is_counted(tmp_path, torch_home, capsys):
    """Nine images write figure_1.png and figure_2.png, and pca_basis.npz beside them: the message names
    the figures written and counts every file (it said figure.png and left the basis out)."""
    paths = [str(write_scene_image(tmp_path / f"im{i}.png", 28, 42, i)) for i in range(9)]
    out = tmp_path / "out"
    assert main(["pca", *paths, "--joint", *TINY, "--size", "28", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert {"figure_1.png", "figure_2.png", "pca_basis.npz"} <= set(files) and "figure.png" not in files
    assert f"wrote {len(files)} files to {out}/: figure_1.png, figure_2.png (one row per image)" in said
    assert "pca_basis.npz" in said.splitlines()[0]


def test_a_basis_brings_its_size_unless_size_is_given(images, tmp_path, torch_home, capsys):
    """A basis fitted at --size 56 and reused without --size runs at 56, and says so (it ran at the
    default 448, where the same image got other masks); a --size that differs is taken with a warning."""
    fit, again, other = tmp_path / "fit", tmp_path / "again", tmp_path / "other"
    assert main(["pca", str(images[0]), *TINY, "--size", "56", "--out", str(fit)]) == 0
    capsys.readouterr()
    basis = str(fit / "pca_basis.npz")
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--out", str(again)]) == 0
    err = capsys.readouterr().err
    assert f"--size 56, the size {basis} was fitted at" in err and "warning" not in err
    for name in ("a_mask.png", "a_pca.png"):
        np.testing.assert_array_equal(read_rgb(again / name), read_rgb(fit / name))
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--size", "84", "--out", str(other)]) == 0
    err = capsys.readouterr().err
    assert f"warning: --size 84, but {basis} was fitted at --size 56" in err
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--size", "56", "--out", str(tmp_path / "same")]) == 0
    assert capsys.readouterr().err.count("--size") == 0  # the basis's own size: nothing to say


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_video_writer_keeps_the_last_row_and_column_of_odd_sizes(tmp_path, suffix):
    """mp4v and MJPG store even sides only: OpenCV dropped an odd side's last row and column without a
    word. The writer repeats that edge once, so the decoded frame holds every pixel written."""
    from dinov2_dense.viz.video import VideoWriter

    frame = np.full((47, 63, 3), 20, np.uint8)
    frame[-1, :] = 250  # a bright last row and last column
    frame[:, -1] = 250
    path = tmp_path / f"odd{suffix}"
    with VideoWriter(path, fps=5, size=(47, 63)) as writer:
        for _ in range(3):
            writer.write(frame)
    n, shape = count_frames(path)
    assert (n, shape) == (3, (48, 64, 3))
    cap = cv2.VideoCapture(str(path))
    ok, got = cap.read()
    cap.release()
    got = got[..., ::-1].astype(int)
    assert ok and abs(got[20:27, 20:27] - 20).max() < 12  # the inside as written
    for edge in (got[46, 5:58], got[47, 5:58], got[5:42, 62], got[5:42, 63]):  # the last row/column, and its copy
        assert edge.mean() > 200, edge.mean()


def test_a_huge_forward_pass_is_refused_before_the_model_naming_the_input(images, tmp_path, torch_home, capsys,
                                                                          monkeypatch):
    """An input that --size makes too large for one forward pass (MAX_FORWARD_TOKENS, lowered here) is
    refused from its header before a model is loaded, naming the image or video and --tile/--size
    (the check ran per batch on decoded arrays and named "image 0"); the library refuses the same way
    before any forward pass, and announces a long CPU pass once, naming the file."""
    import dinov2_dense.cli as cli
    import dinov2_dense.features as features
    from dinov2_dense.features import PerformanceWarning

    from .conftest import tiny_vit

    monkeypatch.setattr(features, "MAX_FORWARD_TOKENS", 50)  # 60x80 at --size 112: 8x11 patches

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_load_model", no_model)
    video = write_video(tmp_path / "clip.mp4", h=60, w=80)
    out = tmp_path / "never"
    for inputs in ([str(images[1]), str(images[0])], ["--video", str(video)]):
        assert main(["pca", *inputs, *TINY, "--size", "112", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"error: {inputs[-1]}" in err and "88 patch tokens (8x11)" in err, err
        assert "--tile" in err and "--size" in err and not out.exists()

    model = tiny_vit()
    monkeypatch.setattr(model, "forward_layers", no_model)
    with pytest.raises(ValueError, match=f"{images[0]}: one forward pass would take 88"):
        pca_maps(model, [str(images[1]), str(images[0])], size=112)
    monkeypatch.setattr(features, "MAX_FORWARD_TOKENS", 2**20)
    monkeypatch.setattr(features, "LARGE_FORWARD_TOKENS", 10)
    with pytest.warns(PerformanceWarning) as record:
        pca_maps(tiny_vit(), [str(images[0])], size=56, batch_size=1)
    said = [str(w.message) for w in record if "one forward pass" in str(w.message)]
    # 56x75 resized to the grid, 4x5 (pca's fit; padded, 4x6)
    assert len(said) == 1 and said[0].startswith(f"{images[0]}: one forward pass of 20 patch tokens (4x5)"), said


@pytest.mark.parametrize("case", ["text basis", "folder as video", "one patch", "one patch, zero"])
def test_messages_for_a_text_basis_a_folder_as_video_and_a_one_patch_image(case, images, tmp_path, torch_home,
                                                                            capsys):
    """A text file as --basis (numpy spoke of allow_pickle), a folder as --video (it said "no such video
    file"), an image of one patch (it said "lower the threshold", which cannot help): one line each, naming
    the file and what it is."""
    text = tmp_path / "notes.png"
    text.write_text("hello")
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), np.full((5, 5, 3), 128, np.uint8))
    argv, message = {
        "text basis": (["pca", str(images[0]), "--basis", str(text)],
                       f"error: {text}: not a PCA basis file written by `dinov2-dense pca`"),
        "folder as video": (["pca", "--video", str(tmp_path)], f"error: {tmp_path}: a folder, not a video file"),
        "one patch": (["pca", str(tiny), "--size", "0"],
                      f"error: {tiny}: the image is too small for a foreground/background split"),
        "one patch, zero": (["pca", str(tiny), "--size", "14", "--threshold", "zero"],
                            f"error: {tiny}: the image is too small for a foreground/background split"),
    }[case]
    out = tmp_path / "never"
    assert main([*argv, *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "allow_pickle" not in err and "lower the threshold" not in err, err
    assert len([line for line in err.splitlines() if "error" in line]) == 1 and not out.exists()
    if case == "one patch":
        with pytest.raises(ValueError, match="one patch"):
            fit_pca(torch.randn(8, 1, 1))


def test_a_basis_is_told_from_other_weights_by_their_fingerprint_not_their_path(images, tmp_path, capsys):
    """--basis warns when the weights differ, whatever their path: other weights at the same path are
    warned of, the same weights from the export's .pth instead of its .safetensors are not. A basis
    of an older version (no fingerprint) is still judged by the path it names."""
    from pretrain.export import export_backbone

    from .conftest import randomize_, tiny_vit

    first = export_backbone(tiny_vit(depth=1, dim=32, img=56), tmp_path / "a")
    fit = tmp_path / "fit"
    common = ["--size", "56", "--num-workers", "0"]
    assert main(["pca", str(images[0]), "--weights", str(first["safetensors"]), "--out", str(fit), *common]) == 0
    basis = fit / "pca_basis.npz"
    capsys.readouterr()

    def reuse(weights, name):
        assert main(["pca", str(images[1]), "--basis", str(basis), "--weights", str(weights),
                     "--out", str(tmp_path / name), *common]) == 0
        return capsys.readouterr().err

    assert "warning" not in reuse(first["pth"], "same_weights_other_file")
    export_backbone(randomize_(tiny_vit(depth=1, dim=32, img=56), seed=3), tmp_path / "a")  # same paths, new weights
    err = reuse(first["safetensors"], "other_weights_same_file")
    warning = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and warning[0].startswith(f"warning: {basis} was fitted on other weights")
    # an older basis, without the fingerprint: the path it names decides, as before
    old = PCABasis.load(basis)
    assert len(old.info["weights_sha256"]) == 64
    old.info = {k: v for k, v in old.info.items() if not k.startswith("weights_")}
    old.save(basis)
    assert "warning" not in reuse(first["safetensors"], "old_same_path")
    assert f"warning: {basis} was fitted on {first['safetensors']}" in reuse(first["pth"], "old_other_path")


def test_the_other_weights_warning_names_random_weights_as_random(images, tmp_path, torch_home, capsys):
    """A basis of the embedded weights reused with --weights random (same --model) warned "colouring
    dinov2_dense_tiny features", naming random weights as the model; both sides now say what the weights
    are, random ones with their seed, as the rest of the output does."""
    fit = tmp_path / "fit"
    common = ["--size", "56", "--num-workers", "0"]
    assert main(["pca", str(images[0]), *TINY, *common, "--out", str(fit)]) == 0
    basis = fit / "pca_basis.npz"
    capsys.readouterr()
    assert main(["pca", str(images[1]), "--basis", str(basis), *TINY, "--weights", "random", "--seed", "3",
                 *common, "--out", str(tmp_path / "random")]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and warning[0].startswith(
        f"warning: {basis} was fitted on other weights (dinov2_dense_tiny, features sha256 "), err
    assert "colouring features of dinov2_dense_tiny with random weights, seed 3 (features sha256" in warning[0], err
    assert "note: --model" not in err  # given: nothing taken from the basis
    # a basis of random weights, reused with the embedded ones: the basis's side says random, with its seed
    random_fit = tmp_path / "fit_on_noise"
    assert main(["pca", str(images[0]), *TINY, "--weights", "random", *common, "--out", str(random_fit)]) == 0
    capsys.readouterr()
    assert main(["pca", str(images[1]), "--basis", str(random_fit / "pca_basis.npz"), *TINY, *common,
                 "--out", str(tmp_path / "official")]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert len(warning) == 1 and "fitted on other weights (dinov2_dense_tiny with random weights, seed 0, " \
        "features sha256" in warning[0] and warning[0].count("random weights") == 1, warning


def test_a_basis_brings_its_model_unless_model_is_given(images, tmp_path, torch_home, capsys, monkeypatch):
    """`pca --basis B` without --model took B's size but loaded dinov2_vits14 (and looked for its weights:
    "weights for dinov2_vits14 ... not found"), though B records dinov2_dense_tiny: it now takes B's model,
    saying so in a note, as it does B's size; the maps are those of the fit."""
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")  # nothing is downloaded, whatever is looked for
    fit, again = tmp_path / "fit", tmp_path / "again"
    assert main(["pca", str(images[0]), *TINY, "--size", "56", "--num-workers", "0", "--out", str(fit)]) == 0
    capsys.readouterr()
    basis = fit / "pca_basis.npz"
    assert main(["pca", str(images[0]), "--basis", str(basis), "--num-workers", "0", "--out", str(again)]) == 0
    err = capsys.readouterr().err
    assert f"note: --model dinov2_dense_tiny, the model {basis} was fitted on (give --model for another)" in err, err
    assert f"note: --size 56, the size {basis} was fitted at" in err and "warning" not in err, err
    for name in ("a_mask.png", "a_pca.png"):
        np.testing.assert_array_equal(read_rgb(again / name), read_rgb(fit / name))
    # with --weights random the basis's model is taken too (its channels fit), and the other weights warned of
    assert main(["pca", str(images[0]), "--basis", str(basis), "--weights", "random", "--num-workers", "0",
                 "--out", str(tmp_path / "random")]) == 0
    err = capsys.readouterr().err
    assert "note: --model dinov2_dense_tiny" in err and "colouring features of dinov2_dense_tiny with random" in err


def test_a_basis_fitted_on_an_export_brings_its_weights_unless_weights_are_given(images, tmp_path, torch_home,
                                                                                  capsys, monkeypatch):
    """A basis fitted on a pretraining export (--weights FILE, backbone.json beside it) reused without --weights
    loaded dinov2_vits14 and, offline, named only its download (a reviewer's report): it takes the export."""
    from pretrain.export import export_backbone

    from .conftest import randomize_, tiny_vit

    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    export = export_backbone(randomize_(tiny_vit(depth=2, dim=32, heads=2, img=56), seed=4),
                             tmp_path / "export")["safetensors"]
    fit, again = tmp_path / "fit", tmp_path / "again"
    assert main(["pca", str(images[0]), "--weights", str(export), "--size", "56", "--num-workers", "0",
                 "--out", str(fit)]) == 0
    capsys.readouterr()
    basis = fit / "pca_basis.npz"
    assert main(["pca", str(images[0]), "--basis", str(basis), "--num-workers", "0", "--out", str(again)]) == 0
    err = capsys.readouterr().err
    assert f"note: --weights {export.resolve()}, the weights {basis} was fitted on" in err and "warning" not in err, err
    for name in ("a_mask.png", "a_pca.png"):
        np.testing.assert_array_equal(read_rgb(again / name), read_rgb(fit / name))
    # fitted with its architecture file named too: both come back (the JSON was taken for the weights)
    named = tmp_path / "named"
    assert main(["pca", str(images[0]), "--model", str(export.parent / "backbone.json"), "--weights", str(export),
                 "--size", "56", "--num-workers", "0", "--out", str(named)]) == 0
    capsys.readouterr()
    assert main(["pca", str(images[0]), "--basis", str(named / "pca_basis.npz"), "--num-workers", "0",
                 "--out", str(tmp_path / "named_again")]) == 0
    err = capsys.readouterr().err
    assert f"note: --model {export.parent / 'backbone.json'} --weights {export.resolve()}, the weights" in err, err
    np.testing.assert_array_equal(read_rgb(tmp_path / "named_again" / "a_pca.png"), read_rgb(named / "a_pca.png"))
    # the same weights read with an architecture of other heads: other features, which no fingerprint saw
    import json

    four = tmp_path / "four_heads.json"
    four.write_text(json.dumps({**json.loads((export.parent / "backbone.json").read_text()), "num_heads": 4}))
    assert main(["pca", str(images[0]), "--basis", str(basis), "--model", str(four), "--weights", str(export),
                 "--num-workers", "0", "--out", str(tmp_path / "four")]) == 0
    assert (f"warning: {basis} was fitted on these weights computed with other settings (num_heads 2 -> 4: "
            "another architecture file)") in capsys.readouterr().err


def test_a_basis_of_a_block_the_model_lacks_is_refused_naming_it(images, tmp_path, capsys):
    """A basis fitted on block 2 of a 3-block model, reused on a 1-block model without --layer, ended in the
    library's 'layer 2 out of range' (naming neither --basis nor the block), after a warning of other weights."""
    from pretrain.export import export_backbone

    from .conftest import tiny_vit

    deep = export_backbone(tiny_vit(depth=3, dim=32, img=56), tmp_path / "deep")["safetensors"]
    shallow = export_backbone(tiny_vit(depth=1, dim=32, img=56), tmp_path / "shallow")["safetensors"]
    common = ["--size", "56", "--num-workers", "0"]
    assert main(["pca", str(images[0]), "--weights", str(deep), "--out", str(tmp_path / "fit"), *common]) == 0
    capsys.readouterr()
    basis = tmp_path / "fit" / "pca_basis.npz"
    assert main(["pca", str(images[1]), "--basis", str(basis), "--weights", str(shallow), "--out",
                 str(tmp_path / "reuse"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--basis {basis}: fitted on block 2" in err and "has 1 block: " in err, err
    assert not (tmp_path / "reuse").exists()


def test_a_basis_saved_from_python_records_the_weights_and_how_the_features_were_made(images, tmp_path, capsys):
    """pca_maps' basis, saved in Python as the README shows, records the weights' identity (hashed at the
    fit: later changes to the model do not reach it), the tiling and the 8-bit resize, as the command's
    does: `pca --basis` with other weights warns, with the same weights it does not; a basis fitted on
    features alone (fit_pca) records no weights. The basis pickles."""
    import pickle

    from dinov2_dense.checkpoints import fingerprint, weights_identity
    from pretrain.export import export_backbone

    from .conftest import randomize_, tiny_vit

    model = tiny_vit(depth=1, dim=32, img=56).eval()
    files = export_backbone(model, tmp_path / "a")
    maps = pca_maps(model, [str(images[0]), str(images[1])], size=56, tile=28, progress=False)
    fitted, kept = fingerprint(model), model.cls_token.detach().clone()
    with torch.no_grad():
        model.cls_token.add_(1.0)  # after the fit: not what the basis was fitted on
    path = maps[0].basis.save(tmp_path / "basis.npz")
    with torch.no_grad():
        model.cls_token.copy_(kept)
    assert pickle.loads(pickle.dumps(maps[0])).basis.info == maps[0].basis.info
    info = PCABasis.load(path).info
    assert info["weights_sha256"] == fitted == fingerprint(model) and info["weights_form"] == "float32"
    assert info["tile"] == 28 and "resize_8bit" not in info
    assert weights_identity(model) == {k: info[k] for k in ("weights_sha256", "weights_form", "forward")}
    assert info["forward"] == {"num_heads": model.num_heads, "interpolate_antialias": model.interpolate_antialias,
                               "interpolate_offset": model.interpolate_offset}
    common = ["--size", "56", "--num-workers", "0", "--basis", str(path)]
    capsys.readouterr()
    same = files["safetensors"]
    assert main(["pca", str(images[1]), "--weights", str(same), *common, "--out", str(tmp_path / "s")]) == 0
    err = capsys.readouterr().err
    assert "warning" not in err and "note: --tile 28" in err, err
    other = export_backbone(randomize_(tiny_vit(depth=1, dim=32, img=56), seed=3), tmp_path / "b")
    other = other["safetensors"]
    assert main(["pca", str(images[1]), "--weights", str(other), *common, "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path} was fitted on other weights" in err, err
    bare = fit_pca(torch.randn(32, 6, 6, generator=torch.Generator().manual_seed(0)))
    assert "weights_sha256" not in PCABasis.load(bare.save(tmp_path / "bare.npz")).info


def test_resize_8bit_with_size_0_says_what_is_wrong_with_the_size(images, tmp_path, capsys):
    """--size 0 keeps the images' size: --resize-8bit has nothing to resize, and the error says that,
    not "give --size" (it was given)."""
    assert main(["pca", str(images[0]), "--weights", "random", "--size", "0", "--resize-8bit",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --size" not in err[0], err
    assert "--resize-8bit with --size 0: --size 0 keeps each image's own size" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_basis_brings_its_tiling_and_8bit_resize(images, tmp_path, torch_home, capsys):
    """A basis fitted with --tile 28 --resize-8bit and reused without them runs with them, and says so
    (both were ignored: the reused basis met other features than its own); given otherwise, the given
    ones are taken, and a line says which."""
    fit = tmp_path / "fit"
    assert main(["pca", str(images[0]), *TINY, "--size", "56", "--tile", "28", "--resize-8bit",
                 "--out", str(fit)]) == 0
    basis = str(fit / "pca_basis.npz")
    assert PCABasis.load(basis).info["tile"] == 28 and PCABasis.load(basis).info["resize_8bit"] is True
    capsys.readouterr()
    again = tmp_path / "again"
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--out", str(again)]) == 0
    err = capsys.readouterr().err
    assert f"note: --tile 28, the tiling {basis} was fitted with" in err and "warning" not in err
    assert f"note: --resize-8bit, as {basis} was fitted" in err
    for name in ("a_mask.png", "a_pca.png"):
        np.testing.assert_array_equal(read_rgb(again / name), read_rgb(fit / name))
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--tile", "0", "--no-resize-8bit",
                 "--out", str(tmp_path / "other")]) == 0
    err = capsys.readouterr().err
    assert f"warning: no tiling, but {basis} was fitted with --tile 28" in err
    assert f"note: the float resize, as given; {basis} was fitted with --resize-8bit" in err
    assert main(["pca", str(images[0]), *TINY, "--basis", basis, "--tile", "28", "--resize-8bit",
                 "--out", str(tmp_path / "same")]) == 0
    err = capsys.readouterr().err
    assert "--tile" not in err and "resize-8bit" not in err  # the basis's own settings: nothing to say


def test_save_basis_inside_out_is_an_output_of_the_run(images, tmp_path, torch_home, capsys):
    """--save-basis OUT/b.npz is written with the rest of OUT, so the folder's marker lists it and the same
    command with --overwrite replaces it (it was written after the folder and blocked every rerun);
    --save-basis OUT itself is refused."""
    out = tmp_path / "out"
    command = ["pca", str(images[0]), *TINY, "--size", "56", "--out", str(out), "--save-basis", str(out / "b.npz")]
    assert main(command) == 0
    said = capsys.readouterr().out
    assert "wrote 5 files" in said and "and b.npz" in said and f"wrote {out / 'b.npz'}: reuse it" in said
    assert "b.npz" in json.loads((out / ".dinov2-dense-output").read_text())["entries"]
    assert not (out / "pca_basis.npz").exists()
    first = (out / "b.npz").read_bytes()
    assert main(command + ["--overwrite"]) == 0
    assert (out / "b.npz").read_bytes() == first
    assert main(command[:-1] + [str(out / "sub" / "b.npz"), "--overwrite"]) == 0
    assert (out / "sub" / "b.npz").is_file() and not (out / "b.npz").exists()
    capsys.readouterr()
    folder = tmp_path / "o.npz"
    assert main(["pca", str(images[0]), *TINY, "--size", "56", "--out", str(folder), "--save-basis", str(folder)]) == 2
    assert f"--save-basis {folder} is the --out folder" in capsys.readouterr().err and not folder.exists()


def test_a_layer_out_of_range_names_the_option_and_the_range(images, tmp_path, torch_home, capsys, monkeypatch):
    """`pca --layer 9` on a 4-block model said "layer 9 out of range" without naming --layer (features
    --layers does); it names it and the valid range, before the model is loaded or --out made."""
    import dinov2_dense.cli as cli

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded before --layer was checked")

    monkeypatch.setattr(cli, "_load_model", never)
    out = tmp_path / "out"
    for layer in ("9", "-5"):
        assert main(["pca", str(images[0]), "--layer", layer, *TINY, "--size", "28", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"dinov2-dense pca: error: --layer {layer}: layer {layer} out of range: this model has 4 blocks " \
               "(0..3, or -1..-4) (dinov2_dense_tiny)" in err, err
        assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_the_summary_says_the_weights_dtype_that_ran(images, tmp_path, monkeypatch, capsys):
    """pca's summary line (and figure title) was the same for float32 and --dtype bf16, whose masks differ a
    little: it names the weights' form when it is not float32."""
    import dinov2_dense.features as features
    from pretrain.export import export_backbone

    from .conftest import tiny_vit

    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: True)
    weights = export_backbone(tiny_vit(depth=1, dim=32, img=56), tmp_path / "a")["safetensors"]
    said = {}
    for dtype in ("fp32", "bf16"):
        assert main(["pca", str(images[0]), "--weights", str(weights), "--out", str(tmp_path / dtype), "--size", "56",
                     "--num-workers", "0", "--dtype", dtype]) == 0
        said[dtype] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("PCA of")][-1]
    assert said["bf16"].endswith(", bfloat16 weights") and "weights" not in said["fp32"], said


def test_padding_to_the_grid_does_not_flip_the_foreground_of_small_scenes(tmp_path, capsys):
    """pca padded images to the 14-pixel grid with zeros: at --size 448 a 106x100 crop of a scene becomes
    475x448 and got one padded row of patches, unlike any of the image's, which took the object's side
    of the first component and turned the border vote (a reviewer: IoU with the objects 0.012 .. 0.035 in
    5 of 6 crops, 0.77 .. 0.89 without padding). pca resizes to the grid now (--fit resize, recorded in
    its basis); --fit pad still pads, and a basis recording no fit (an older one) brings padding, in a note."""
    from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
    from dinov2_dense.images import decode_image

    write_ade20k_layout(tmp_path / "ade", 1, 3, config=SceneConfig(size=(112, 112)), seed=0, progress=False)
    crops, truth = [], []
    for i, path in enumerate(sorted((tmp_path / "ade/images/validation").glob("*.jpg"))):
        crop = decode_image(path, "rgb")[5:111, 3:103]
        truth.append(decode_image(tmp_path / "ade/annotations/validation" / f"{path.stem}.png")[5:111, 3:103] > 1)
        crops.append(tmp_path / f"c{i}.png")
        cv2.imwrite(str(crops[-1]), crop[..., ::-1])

    def ious(out):
        masks = [read_rgb(out / f"c{i}_mask.png")[..., 0] > 0 for i in range(len(crops))]
        return [float((m & t).sum() / (m | t).sum()) for m, t in zip(masks, truth)]

    tiny = ["--model", "dinov2_dense_tiny", "--num-workers", "0"]
    assert main(["pca", *map(str, crops), *tiny, "--out", str(tmp_path / "r")]) == 0
    assert min(ious(tmp_path / "r")) > 0.7, ious(tmp_path / "r")
    assert main(["pca", str(crops[0]), *tiny, "--out", str(tmp_path / "one")]) == 0
    assert PCABasis.load(tmp_path / "one" / "pca_basis.npz").info["fit"] == "resize"
    assert main(["pca", *map(str, crops), *tiny, "--fit", "pad", "--joint", "--out", str(tmp_path / "p")]) == 0
    assert max(ious(tmp_path / "p")) < 0.1, ious(tmp_path / "p")  # what padding did
    basis = tmp_path / "p" / "pca_basis.npz"
    assert PCABasis.load(basis).info["fit"] == "pad"
    capsys.readouterr()
    assert main(["pca", str(crops[0]), *tiny, "--basis", str(basis), "--fit", "resize", "--out", str(tmp_path / "b")]) == 0
    assert f"warning: --fit resize, but {basis} was fitted with --fit pad" in capsys.readouterr().err
    older = PCABasis.load(basis)
    del older.info["fit"]  # a basis of an earlier version: padded
    older.save(tmp_path / "older.npz")
    assert main(["pca", str(crops[0]), *tiny, "--basis", str(tmp_path / "older.npz"), "--out", str(tmp_path / "o")]) == 0
    assert "note: --fit pad, as" in capsys.readouterr().err
    np.testing.assert_array_equal(read_rgb(tmp_path / "o" / "c0_mask.png"), read_rgb(tmp_path / "p" / "c0_mask.png"))


def test_a_basis_whose_weights_are_not_there_names_them(images, tmp_path, torch_home, monkeypatch, capsys):
    """A basis of an earlier version recorded its --weights path as given (relative): used from another folder
    the command went to dinov2_vits14 and failed naming its download, which nobody asked for (a reviewer)."""
    from dinov2_dense.viz.pca import PCABasis

    out = tmp_path / "fitted"
    assert main(["pca", str(images[0]), "--model", "dinov2_dense_tiny", "--size", "56", "--out", str(out)]) == 0
    basis = PCABasis.load(out / "pca_basis.npz")
    basis.info["weights_file"] = "runs/export/backbone.safetensors"  # relative, as an earlier version wrote it
    basis.save(tmp_path / "older.npz")
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["pca", str(images[0]), "--basis", str(tmp_path / "older.npz"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert (f"--basis {tmp_path / 'older.npz'} was fitted on the weights runs/export/backbone.safetensors, which are "
            f"not there (from {tmp_path}): give them as --weights") in err, err
    assert "dinov2_vits14" not in err


def test_pca_maps_given_a_basis_computes_features_as_the_basis_was_fitted(tmp_path):
    """pca_maps(basis=...) resized to the grid whatever the basis was fitted with, where the command took the
    basis's fit (a basis of an earlier version: padded): 18% of a mask's pixels apart (the diff review)."""
    from .conftest import tiny_vit

    model = tiny_vit()
    image = write_scene_image(tmp_path / "a.png", 60, 80, 0)  # 45x60 at size 45: padded 56x70, resized 42x56
    padded = pca_maps(model, [image], size=45, fit="pad")
    basis = padded[0].basis
    assert basis.info["fit"] == "pad"
    again = pca_maps(model, [image], basis=basis, size=45)
    np.testing.assert_array_equal(again[0].rgb, padded[0].rgb)
    del basis.info["fit"]  # an earlier version's basis records its size, no fit: it padded
    np.testing.assert_array_equal(pca_maps(model, [image], basis=basis, size=45)[0].rgb, padded[0].rgb)
    with pytest.warns(UserWarning, match="fit='resize', but the basis was fitted with fit='pad'"):
        resized = pca_maps(model, [image], basis=basis, size=45, fit="resize")  # asked for: as asked, said
    assert not np.array_equal(resized[0].rgb, padded[0].rgb)
    fresh = pca_maps(model, [image], size=45)[0].basis  # fitted resized; options bring their own fit (pad)
    with pytest.warns(UserWarning, match="fit='pad', but the basis was fitted with fit='resize'"):
        pca_maps(model, [image], basis=fresh, options=FeatureOptions(size=45))
    # the size too: one left out (the images' own) or another than the basis's changed every mask with no word
    # (a reviewer); None is a size, so it is warned of, not replaced by the basis's
    from dinov2_dense.viz.pca import OtherFitWarning

    with pytest.warns(OtherFitWarning, match=r"size=None, but the basis was fitted with size=45: .* \(pass size=45\)"):
        pca_maps(model, [image], basis=fresh)
    with pytest.warns(OtherFitWarning, match=r"size=56, tile=56, but the basis was fitted with size=45, tile=None"):
        pca_maps(model, [image], basis=fresh, size=56, tile=56)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pca_maps(model, [image], basis=fresh, size=45)
