"""Pretraining data: block masks, multi-crop collation (against the official DINOv2 code as an
oracle), the multi-crop augmentation, and the image sources with their skip-don't-fail reading."""

import importlib.util
import logging
import random
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dinov2_dense.data import SceneConfig, generate_scene, scene_seed
from dinov2_dense.data.files import DataError, write_image
from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD
from pretrain.data import (RELEASED_BLUR_PROBABILITIES, BicubicRandomResizedCrop, DataAugmentationDINO, ImageFiles,
                           MaskingGenerator, PretrainDataset, SyntheticScenes, build_dataset, collate_data_and_cast,
                           dominant_class, seed_worker)


def _official(name: str):
    """dinov2/data/<name>.py of the installed official code, loaded by path (its package __init__ needs
    torchvision); masking.py and collate.py import only numpy, torch and random."""
    spec = importlib.util.find_spec("dinov2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the official dinov2 package (test oracle) is not installed")
    path = Path(spec.submodule_search_locations[0]) / "data" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"_official_dinov2_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# -- masking ------------------------------------------------------------------------------------
class _Recording(MaskingGenerator):
    """Records every block placed, with the number of patches it was allowed to add."""

    def __call__(self, n=None):
        self.blocks = []
        return super().__call__(n)

    def _add_block(self, mask, max_patches):
        before = int(mask.sum())
        block = super()._add_block(mask, max_patches)
        if block is not None:
            self.blocks.append((block, max_patches, int(mask.sum()) - before))
        return block


@pytest.mark.parametrize("grid,max_patches", [((16, 16), 128), ((14, 20), None), ((6, 9), 20)])
def test_masks_are_blocks_within_bounds(grid, max_patches):
    gen = _Recording(grid, max_num_patches=max_patches)
    H, W = grid
    filled = []
    for seed in range(150):
        random.seed(seed)
        target = random.randint(0, H * W // 2)
        mask = gen(target)
        assert mask.shape == grid and mask.dtype == bool
        count = int(mask.sum())
        assert count <= target and count == sum(added for _, _, added in gen.blocks)
        for (top, left, h, w), allowed, added in gen.blocks:
            assert 1 <= h < H and 1 <= w < W and 0 <= top <= H - h and 0 <= left <= W - w
            assert mask[top:top + h, left:left + w].all()
            assert 0 < added <= allowed <= (max_patches or H * W)
            # the block is the rounding of a rectangle with area in [min_num_patches, allowed] and
            # aspect (h / w) in [0.3, 1 / 0.3]: at least 3 patches (a drawn area of 4 at aspect 1/2
            # rounds to 1x3), never more than rounding allows
            lo_area, hi_area = min(4, allowed), max(4, allowed)
            assert (h + 0.5) * (w + 0.5) >= lo_area and (h - 0.5) * (w - 0.5) <= hi_area
            assert (h + 0.5) / (w - 0.5) >= 0.3 and (h - 0.5) / (w + 0.5) <= 1 / 0.3
            if allowed >= 4:
                assert h * w >= 3
        if target >= 8:
            filled.append(count / target)
    assert np.mean(filled) > 0.9  # the target is nearly always reached


def test_mask_defaults_and_errors():
    gen = MaskingGenerator(8, num_masking_patches=20)
    assert gen.get_shape() == (8, 8) and not gen(0).any()
    random.seed(0)
    assert 0 < gen().sum() <= 20  # the constructor's target
    assert not MaskingGenerator(8)().any()
    with pytest.raises(ValueError, match="input_size"):
        MaskingGenerator((0, 4))


def test_masks_equal_the_official_generator():
    official = _official("masking")
    settings = [dict(input_size=(16, 16), max_num_patches=0.5 * 16 * 16),  # DINOv2 training
                dict(input_size=(14, 20), max_num_patches=100),
                dict(input_size=(6, 6), num_masking_patches=10, min_num_patches=2, min_aspect=0.5, max_aspect=4.0)]
    for kwargs in settings:
        ours, theirs = MaskingGenerator(**kwargs), official.MaskingGenerator(**kwargs)
        for seed in range(200):
            target = seed % (ours.num_patches // 2 + 1)
            random.seed(seed)
            a, after_a = ours(target), random.random()
            random.seed(seed)
            b, after_b = theirs(target), random.random()
            assert np.array_equal(a, b) and a.dtype == b.dtype
            assert after_a == after_b  # the same draws were consumed


# -- collation ----------------------------------------------------------------------------------
def _samples(batch, n_local=3, size=28, local=14, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in range(batch):
        crops = [torch.randn(3, size, size, generator=gen) for _ in range(2)]
        out.append(({"global_crops": crops, "global_crops_teacher": crops, "offsets": (),
                     "local_crops": [torch.randn(3, local, local, generator=gen) for _ in range(n_local)]}, b))
    return out


def test_collate_equals_the_official_collate():
    official_collate = _official("collate").collate_data_and_cast
    official_masking = _official("masking").MaskingGenerator
    cases = [(4, (0.1, 0.5), 0.5, torch.float16, 16), (3, (0.0, 1.0), 1.0, torch.float32, 9),
             (5, (0.2, 0.3), 0.3, torch.bfloat16, 16), (1, (0.1, 0.5), 0.0, torch.float32, 7)]
    for batch, ratios, prob, dtype, side in cases:
        samples = _samples(batch, size=2 * side, local=side)
        kw = dict(input_size=(side, side), max_num_patches=0.5 * side * side)
        ours, theirs = MaskingGenerator(**kw), official_masking(**kw)
        for seed in range(25):
            random.seed(seed)
            got = collate_data_and_cast(samples, ratios, prob, dtype, n_tokens=side * side, mask_generator=ours)
            random.seed(seed)
            want = official_collate(samples, ratios, prob, dtype, n_tokens=side * side, mask_generator=theirs)
            assert got.keys() == want.keys()
            for key, value in want.items():
                if isinstance(value, torch.Tensor):
                    assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
                else:
                    assert got[key] == value, key


def test_collate_shapes_and_relations():
    batch, n_local, side = 4, 3, 16
    samples = _samples(batch, n_local, size=32, local=16)
    random.seed(3)
    out = collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float16,
                                mask_generator=MaskingGenerator(side, max_num_patches=128))  # n_tokens from the grid
    g, loc, masks = out["collated_global_crops"], out["collated_local_crops"], out["collated_masks"]
    assert g.shape == (2 * batch, 3, 32, 32) and g.dtype == torch.float16
    assert loc.shape == (n_local * batch, 3, 16, 16) and loc.dtype == torch.float16
    for b, (crops, _) in enumerate(samples):  # crop 0 of every sample, then crop 1, ...
        for i in range(2):
            assert torch.equal(g[i * batch + b], crops["global_crops"][i].half())
        for i in range(n_local):
            assert torch.equal(loc[i * batch + b], crops["local_crops"][i].half())
    assert masks.shape == (2 * batch, side * side) and masks.dtype == torch.bool
    counts = masks.sum(1)
    assert (counts > 0).sum() == int(2 * batch * 0.5)  # ratios >= 0.1 of 256 patches: never empty
    assert counts.max() <= int(side * side * 0.5) and counts.sum() <= out["upperbound"]
    assert torch.equal(out["mask_indices_list"], masks.flatten().nonzero().flatten())
    assert out["mask_indices_list"].dtype == torch.long
    weights = torch.repeat_interleave(1.0 / counts[counts > 0].float(), counts[counts > 0])
    assert out["masks_weight"].dtype == torch.float32 and torch.allclose(out["masks_weight"], weights)
    assert torch.equal(out["n_masked_patches"], torch.tensor([int(counts.sum())]))
    # each masked crop weighs 1 in total
    per_crop = torch.zeros(2 * batch).index_add_(0, out["mask_indices_list"] // (side * side), out["masks_weight"])
    assert torch.allclose(per_crop, (counts > 0).float())


def test_collate_errors_and_plain_dicts():
    samples = _samples(2, n_local=0)
    random.seed(0)
    out = collate_data_and_cast([s for s, _ in samples], (0.1, 0.5), 1.0, torch.float32, 4, MaskingGenerator(2))
    assert out["collated_local_crops"].numel() == 0 and out["collated_masks"].shape == (4, 4)
    with pytest.raises(ValueError, match="mask_generator"):
        collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, 4)
    with pytest.raises(ValueError, match="n_tokens"):
        collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, 9, MaskingGenerator(2))


# -- augmentation -------------------------------------------------------------------------------
def _photo(h=90, w=120, seed=0):
    rng = np.random.default_rng(seed)
    smooth = np.kron(rng.integers(0, 256, (h // 10, w // 10, 3)), np.ones((10, 10, 1)))
    return smooth.astype(np.uint8)


def _allclose_lists(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_augmentation_outputs_and_determinism():
    image = _photo()
    aug = DataAugmentationDINO(local_crops_number=4, global_crops_size=48, local_crops_size=20, seed=7)
    out = aug(image)
    assert set(out) == {"global_crops", "global_crops_teacher", "local_crops", "offsets"} and out["offsets"] == ()
    assert len(out["global_crops"]) == 2 and out["global_crops_teacher"] is out["global_crops"]
    assert len(out["local_crops"]) == 4
    for t in out["global_crops"]:
        assert t.shape == (3, 48, 48) and t.dtype == torch.float32 and t.is_contiguous()
    for t in out["local_crops"]:
        assert t.shape == (3, 20, 20) and t.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = out["global_crops"][0] * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5

    again = DataAugmentationDINO(local_crops_number=4, global_crops_size=48, local_crops_size=20, seed=7)(image)
    runs = [aug(image) for _ in range(2)]
    aug.set_random_seed(7)
    reseeded = aug(image)
    for key in ("global_crops", "local_crops"):
        assert _allclose_lists(again[key], out[key]) and _allclose_lists(reseeded[key], out[key])
        assert not _allclose_lists(runs[0][key], runs[1][key])  # later calls draw anew
    other = DataAugmentationDINO(local_crops_number=4, global_crops_size=48, local_crops_size=20, seed=8)(image)
    assert not _allclose_lists(other["global_crops"], out["global_crops"])
    # grey, RGBA and PIL inputs; no local crops
    small = DataAugmentationDINO(local_crops_number=0, global_crops_size=32, seed=0)
    for x in (image[..., 0], np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), Image.fromarray(image)):
        o = small(x)
        assert o["global_crops"][0].shape == (3, 32, 32) and o["local_crops"] == []
    with pytest.raises(TypeError, match="uint8"):
        small(image.astype(np.float32))


def test_augmentation_pieces_follow_torchvision():
    image = _photo(seed=1)
    crop = BicubicRandomResizedCrop(size=(40, 40), scale=(0.3, 1.0))
    box = (13, 7, 101, 80)  # x0, y0, x1, y1
    ours = crop.apply(image, crop_coords=box)
    theirs = np.asarray(Image.fromarray(image).crop(box).resize((40, 40), Image.Resampling.BICUBIC))
    assert np.array_equal(ours, theirs)  # torchvision's resized_crop of a PIL image
    aug = DataAugmentationDINO(local_crops_number=1)
    solarize = aug.global_transfo2.transforms[-1]
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    pil_solarized = np.asarray(ImageOps.solarize(Image.fromarray(grey), 128))
    assert np.array_equal(solarize.apply(grey, threshold=0.5), pil_solarized)
    blur_p = [p.transforms[4].p for p in (aug.global_transfo1, aug.global_transfo2, aug.local_transfo)]
    assert blur_p == [1.0, 0.1, 0.5] and solarize.p == 0.2 and aug.global_transfo1.transforms[2].p == 0.8
    released = DataAugmentationDINO(local_crops_number=1, blur_probabilities=RELEASED_BLUR_PROBABILITIES)
    assert [p.transforms[4].p for p in (released.global_transfo1, released.global_transfo2, released.local_transfo)] \
        == [0.0, 0.9, 0.5]
    assert torch.allclose(aug.normalize(image), (torch.from_numpy(image).permute(2, 0, 1).float() / 255
                                                 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
                          / torch.tensor(IMAGENET_STD).view(3, 1, 1))


# -- sources -------------------------------------------------------------------------------------
def _tree(root: Path) -> Path:
    write_image(root / "cats" / "a.png", _photo(40, 50, 0))
    write_image(root / "dogs" / "deep" / "b.jpg", _photo(40, 60, 1))
    write_image(root / "dogs" / "C.PNG", _photo(30, 40, 2))
    write_image(root / ".hidden" / "x.png", _photo(30, 30, 3))
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


def test_folder_source_recursive_with_labels(tmp_path):
    data = PretrainDataset(_tree(tmp_path / "imgs"))
    names = [Path(p).relative_to(tmp_path / "imgs").as_posix() for p in data.source.paths]
    assert names == ["cats/a.png", "dogs/C.PNG", "dogs/deep/b.jpg"]
    assert data.classes == ("cats", "dogs") and data.labels.tolist() == [0, 1, 1]
    image, label = data[2]
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8 and label == 1
    flat = PretrainDataset(tmp_path / "imgs" / "dogs" / "deep")
    assert flat.labels is None and flat.classes is None and flat[0][1] == -1
    with pytest.raises(DataError, match="found no images"):
        PretrainDataset(_mkdir(tmp_path / "empty"))
    with pytest.raises(DataError, match="no such folder or list file"):
        PretrainDataset(tmp_path / "missing")


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_list_file_and_skimage_sources(tmp_path):
    root = _tree(tmp_path / "imgs")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# training images\nimgs/cats/a.png\n\n{root / 'dogs' / 'C.PNG'}\nskimage:camera\n")
    data = PretrainDataset(listing)
    assert len(data) == 3 and data.labels is None
    assert [data[i][0].shape for i in range(3)] == [(40, 50, 3), (30, 40, 3), (512, 512, 3)]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="empty.txt"):
        PretrainDataset(tmp_path / "empty.txt")
    samples = PretrainDataset("skimage:astronaut,camera")
    assert [samples[i][0].shape for i in range(2)] == [(512, 512, 3), (512, 512, 3)]
    assert np.array_equal(samples[1][0][..., 0], samples[1][0][..., 2])  # grey repeated to RGB
    assert len(ImageFiles.from_skimage()) >= 20
    with pytest.raises(DataError, match="no sample image named 'astronot'"):
        PretrainDataset("skimage:astronot")


def test_pretraining_curate_and_knn_read_the_same_images_of_a_folder(tmp_path):
    """curate walked into hidden folders (a notebook's .ipynb_checkpoints/ copies) and passed over linked
    folders; pretraining and knn did the opposite: the same folder gave each another set of images."""
    from dinov2_dense.evaluation.knn import list_image_folder
    from pretrain.curation.store import list_images

    pool = tmp_path / "pool"
    for name in ("real/a.png", "real/b.jpg", "real/.ipynb_checkpoints/a-checkpoint.png", ".hidden/c.png",
                 "real/.d.png"):
        write_image(pool / name, np.full((16, 16, 3), 9, np.uint8))
    elsewhere = tmp_path / "elsewhere"
    write_image(elsewhere / "e.png", np.full((16, 16, 3), 9, np.uint8))
    (pool / "linked").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "up").symlink_to(pool, target_is_directory=True)  # a loop: each real folder is read once
    want = {pool / "linked/e.png", pool / "real/a.png", pool / "real/b.jpg"}
    assert {Path(p) for p in ImageFiles.from_folder(pool).paths} == want
    assert {Path(p) for p in list_images(pool)} == want
    paths, labels, classes = list_image_folder(pool)
    assert {Path(p) for p in paths} == want and classes == ["linked", "real"]


def test_folders_give_jfif_and_gif_images_as_features_reads_them(tmp_path):
    """features read a .jfif and a .gif given by name, and every folder reader passed over both (a reviewer)."""
    from PIL import Image

    from dinov2_dense.data.files import read_image
    from dinov2_dense.evaluation.knn import list_image_folder
    from pretrain.curation.store import list_images

    pool = tmp_path / "pool" / "things"
    pool.mkdir(parents=True)
    picture = np.zeros((12, 16, 3), np.uint8)
    picture[:6] = (200, 40, 10)
    Image.fromarray(picture).save(pool / "photo.jfif", "JPEG", quality=100)
    Image.fromarray(picture).save(pool / "anim.GIF")
    want = {pool / "anim.GIF", pool / "photo.jfif"}
    assert {Path(p) for p in ImageFiles.from_folder(pool).paths} == want
    assert {Path(p) for p in list_images(pool)} == want
    assert {Path(p) for p in list_image_folder(pool.parent)[0]} == want
    assert np.abs(read_image(pool / "photo.jfif").astype(int) - picture).mean() < 3  # (JPEG)
    np.testing.assert_array_equal(read_image(pool / "anim.GIF"), picture)


def test_a_list_file_of_names_with_other_line_separators_gives_those_images(tmp_path):
    """Pretraining split list files with str.splitlines, at U+2028, U+0085, form feeds and more, which curate
    allows in names: a curated selected.txt of such names gave pretraining 11 paths for 6 images, 9 of them
    unreadable. Both read list files alike now."""
    from pretrain.curation.store import list_images

    names = ["plain.png", "line\u2028sep.png", "nel\x85x.png", "ff\x0cx.png", "fs\x1cx.png", "vt\x0bx.png"]
    for name in names:
        write_image(tmp_path / name, np.full((16, 16, 3), 9, np.uint8))
    listing = tmp_path / "list.txt"
    # a byte-order mark, as some editors write (it was part of the first entry, here a comment)
    listing.write_text("\ufeff# images\r\n" + "".join(f"  {n}\t\r\n" for n in names), encoding="utf-8")
    want = [str(tmp_path / n) for n in names]
    assert ImageFiles.from_list_file(listing).paths == want
    assert list_images(listing) == want
    data = PretrainDataset(listing)
    assert [data[i][0].shape for i in range(len(names))] == [(16, 16, 3)] * len(names)


def test_synthetic_source_labels():
    cfg = SceneConfig(size=(48, 48), num_classes=6)
    source = SyntheticScenes(12, config=cfg, seed=3)
    data = PretrainDataset(source)
    assert data.classes == ("background",) + tuple(f"class{k}" for k in range(1, 6))
    labels = data.labels
    assert labels.shape == (12,) and labels.dtype == np.int64 and len(set(labels.tolist())) > 1
    for i in range(12):
        scene = generate_scene(scene_seed(3, "train", i), cfg)
        image, label = data[i]
        assert np.array_equal(image, scene.image) and label == labels[i]
        counts = np.bincount(scene.seg.ravel(), minlength=6)
        assert label == dominant_class(scene.seg, 6) and counts[label] == counts[1:].max()
    assert len(PretrainDataset("synthetic:3")) == 3


def test_unreadable_images_are_skipped_and_counted(tmp_path, caplog):
    root = _tree(tmp_path / "imgs")
    bad = root / "cats" / "b_corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    data = PretrainDataset(root)
    assert [Path(p).name for p in data.source.paths] == ["a.png", "b_corrupt.png", "C.PNG", "b.jpg"]
    with caplog.at_level(logging.WARNING, logger="pretrain.data.datasets"):
        image, label = data[1]  # the corrupt one: the next readable image stands in
        again, _ = data[1]
    assert image.shape == (30, 40, 3) and label == 1 and np.array_equal(image, again)
    assert data.skipped == [str(bad)]
    assert sum(str(bad) in r.getMessage() for r in caplog.records) == 1  # logged once
    assert len([data[i] for i in range(len(data))]) == 4 and data.skipped == [str(bad)]
    view = data.with_transform(lambda x: x.shape)
    assert view[1] == ((30, 40, 3), 1) and view.skipped is data.skipped
    mixed = PretrainDataset(ImageFiles.from_skimage(["horse", "camera"]))  # a bool mask, read as black and white
    assert mixed[0][0].shape == (328, 400, 3) and mixed[0][0].dtype == np.uint8 and not mixed.skipped
    (tmp_path / "bad").mkdir()
    for name in ("x.png", "y.jpg"):
        (tmp_path / "bad" / name).write_bytes(b"garbage")
    broken = PretrainDataset(tmp_path / "bad")
    with pytest.raises(DataError, match="none of its 2 images is readable"):
        broken[0]
    assert len(broken.skipped) == 2
    with pytest.raises(IndexError):
        data[4]


def test_loader_end_to_end_is_reproducible():
    """The user's path: synthetic scenes -> multi-crop -> masks and collation in a seeded
    DataLoader with two workers; the same generator seed gives the same batches."""
    aug = DataAugmentationDINO(local_crops_number=2, global_crops_size=28, local_crops_size=14)
    data = PretrainDataset(SyntheticScenes(8, config=SceneConfig(size=(40, 40))), transform=aug)
    collate = partial(collate_data_and_cast, mask_ratio_tuple=(0.1, 0.5), mask_probability=0.5,
                      dtype=torch.float32, n_tokens=4, mask_generator=MaskingGenerator(2, max_num_patches=2))

    def run():
        loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate,
                                             worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0))
        return list(loader)

    first, second = run(), run()
    assert len(first) == 2
    for a, b in zip(first, second):
        assert a["collated_global_crops"].shape == (8, 3, 28, 28) and a["collated_local_crops"].shape == (8, 3, 14, 14)
        for key in ("collated_global_crops", "collated_local_crops", "collated_masks"):
            assert torch.equal(a[key], b[key])
    assert not torch.equal(first[0]["collated_global_crops"], first[1]["collated_global_crops"])


def test_build_dataset_from_config_values(tmp_path):
    root = _tree(tmp_path / "imgs")
    cfg = dict(size=[32, 32], num_classes=4)  # as an mmengine config gives it: lists
    data = build_dataset([dict(type="folder", root=str(root)), "skimage:camera",
                          dict(type="synthetic", num_scenes=3, config=cfg, seed=1)])
    assert len(data) == 3 + 1 + 3
    assert data.classes == ("cats", "dogs", "background", "class1", "class2", "class3")
    synthetic = SyntheticScenes(3, config=cfg, seed=1).labels
    assert data.labels.tolist() == [0, 1, 1, -1] + (synthetic + 2).tolist()
    assert [data[i][1] for i in range(len(data))] == data.labels.tolist()
    assert data[3][0].shape == (512, 512, 3) and data.source.item_name(3) == "skimage:camera"
    single = build_dataset(str(root / "cats" / "a.png"))  # one image file, not a list file
    assert len(single) == 1 and single[0][0].shape == (40, 50, 3)
    with pytest.raises(DataError, match="train.dataset"):
        build_dataset(None)
    with pytest.raises(DataError, match="type 'folders'"):
        build_dataset(dict(type="folders", root=str(root)))
    with pytest.raises(DataError, match="unexpected keyword"):
        build_dataset(dict(type="folder", path=str(root)))


def test_workers_draw_different_crops_without_init_fn():
    """Forked workers hold copies of one augmentation; each reseeds from its worker seed, so the
    same image gives different crops in different workers, and the loader seed fixes them."""
    aug = DataAugmentationDINO(local_crops_number=0, global_crops_size=24, seed=0)
    data = PretrainDataset(ImageFiles(["skimage:camera"] * 2), transform=aug)

    def run(seed):
        loader = torch.utils.data.DataLoader(data, batch_size=1, num_workers=2,
                                             generator=torch.Generator().manual_seed(seed))
        return [batch[0]["global_crops"][0] for batch in loader]

    a, b, c = run(0), run(0), run(1)
    assert not torch.equal(a[0], a[1])  # worker 0 and worker 1
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])


def test_colour_augmentation_strength_and_grey_are_settable():
    """grayscale_probability 1: every crop grey (equal channels); hue 0.5 with jitter always on moves
    the hue of a saturated image far more than the recipe's 0.1 does; defaults are the recipe's."""
    rng = np.random.default_rng(0)
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200
    image[..., 1] = rng.integers(0, 60, (64, 64))
    grey = DataAugmentationDINO(local_crops_number=2, global_crops_size=28, local_crops_size=14,
                                grayscale_probability=1.0, seed=0)(image)
    for crop in grey["global_crops"] + grey["local_crops"]:
        raw = crop * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        assert (raw.amax(0) - raw.amin(0)).max() < 1e-5

    def red_share(**kw):
        aug = DataAugmentationDINO(local_crops_number=0, global_crops_size=28, color_jitter_probability=1.0,
                                   grayscale_probability=0.0, blur_probabilities=(0, 0, 0), seed=1, **kw)
        shares = []
        for _ in range(20):
            crop = aug(image)["global_crops"][0]
            raw = crop * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
            shares.append(float(raw[0].mean() / raw.mean(0).mean().clamp_min(1e-6) / 3))
        return np.array(shares)

    recipe, strong = red_share(), red_share(color_jitter=(0.4, 0.4, 0.2, 0.5))
    assert recipe.min() > 0.5 and strong.min() < 0.35  # red stays dominant under the recipe only
    with pytest.raises(ValueError, match="color_jitter=.*hue in \\[0, 0.5\\]"):
        DataAugmentationDINO(color_jitter=(0.4, 0.4, 0.2, 0.6))


def test_a_data_set_without_a_readable_image_is_refused_when_built(tmp_path):
    """A run checks its data set before it deletes or writes anything (``--overwrite``): building it
    reads up to the first readable image, so a folder of broken files fails there, not at the first batch."""
    broken = _mkdir(tmp_path / "broken")
    for i in range(3):
        (broken / f"img{i}.png").write_bytes(b"")
    with pytest.raises(DataError, match="none of its 3 images is readable"):
        build_dataset(str(broken))
    mixed = _tree(tmp_path / "imgs")
    (mixed / "cats" / "0_broken.png").write_bytes(b"garbage")  # sorted first: skipped, the next one stands in
    data = build_dataset(str(mixed))
    assert [Path(p).name for p in data.skipped] == ["0_broken.png"] and len(data) == 4


def test_the_root_of_a_synthetic_layout_gives_its_images_only(tmp_path, caplog):
    """``synth --layout folder`` writes images/, masks/ and depth/ side by side: its root as train.dataset
    means its images (label maps and depth maps as photographs, and as three classes, would be a mistake)."""
    root = tmp_path / "scenes"
    for i in range(2):
        scene = generate_scene(scene_seed(0, "train", i), SceneConfig(size=(32, 32)))
        write_image(root / "images" / f"{i:05d}.png", scene.image)
        write_image(root / "masks" / f"{i:05d}.png", scene.seg.astype(np.uint8))
        write_image(root / "depth" / f"{i:05d}.png", (scene.depth * 1000).astype(np.uint16))
    with caplog.at_level(logging.WARNING, logger="pretrain.data.datasets"):
        data = build_dataset(str(root))
    assert [Path(p).parent.name for p in data.source.paths] == ["images", "images"] and data.classes is None
    assert "taking its images only" in caplog.text
    assert len(build_dataset(str(root / "images"))) == 2
    from pretrain.data.datasets import dataset_folders  # the folders a work dir must stay out of

    (tmp_path / "list.txt").write_text(str(root / "images" / "00000.png"))
    assert dataset_folders([str(root), dict(type="folder", root=str(tmp_path)), str(tmp_path / "list.txt"),
                            "skimage:camera", dict(type="synthetic", num_scenes=2)]) == [root / "images", tmp_path]
