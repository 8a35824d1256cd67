"""Data sets in their standard layouts, albumentations pipelines, and errors that name the file."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense.data import (ADE20KDataset, CatMaxRandomCrop, CityscapesDataset, DataError, FolderDepthDataset,
                               FolderSegmentationDataset, KITTIDepthDataset, NYUDepthDataset, RandomRescale,
                               SceneConfig, VOCDataset, collate, depth_test_pipeline, depth_train_pipeline,
                               seed_worker, seg_test_pipeline, seg_train_pipeline, voc_palette, write_ade20k_layout,
                               write_folder_layout)
from dinov2_dense.data.files import write_image
from dinov2_dense.data.pipelines import MEAN_COLOR, PhotoMetricDistortion
from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD

COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], np.uint8)
LABELS = np.array([0, 3, 7, 12, 19], np.uint8)  # not consecutive: interpolation would invent labels


def _blocks(h=240, w=320, seed=0):
    """A label map of large random blocks and an image whose colour encodes the label."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, len(COLORS), size=(6, 8)).astype(np.uint8)
    index = np.kron(coarse, np.ones((h // 6, w // 8), np.uint8))
    return COLORS[index], LABELS[index]


def _decode(image):
    """Label of each pixel from its colour (nearest colour)."""
    d = ((image[..., None, :].astype(int) - COLORS[None, None].astype(int)) ** 2).sum(-1)
    return LABELS[d.argmin(-1)]


# -- pipelines ---------------------------------------------------------------------------------
def test_seg_train_pipeline_keeps_image_and_mask_aligned():
    image, label = _blocks()
    pipe = seg_train_pipeline(crop_size=128, scale=(320, 240), photometric=False, seed=0)
    for _ in range(12):
        out = pipe(image=image, mask=label)
        img, mask = out["image"], out["mask"]
        assert img.shape == (128, 128, 3) and mask.shape == (128, 128) and mask.dtype == np.uint8
        valid = mask != 255
        assert np.isin(mask[valid], LABELS).all()  # nearest: no invented labels
        agree = (_decode(img)[valid] == mask[valid]).mean()
        assert agree > 0.9, agree  # only the bilinear seams of the image may disagree


def test_misaligned_flip_would_be_caught():
    image, label = _blocks(seed=3)
    assert (_decode(image[:, ::-1]) == label).mean() < 0.6


def test_rescale_follows_mmseg_sizes():
    t = RandomRescale((2048, 512), ratio_range=None)
    out = t(image=np.zeros((480, 640, 3), np.uint8), mask=np.zeros((480, 640), np.uint8))
    assert out["image"].shape[:2] == (512, 683) and out["mask"].shape == (512, 683)  # f = min(2048/640, 512/480)
    out = t(image=np.zeros((100, 2000, 3), np.uint8), mask=np.zeros((100, 2000), np.uint8))
    assert out["image"].shape[:2] == (102, 2048)  # long edge limits
    r = RandomRescale((2048, 512), ratio_range=(0.5, 2.0))
    r.set_random_seed(0)
    shorts = [r(image=np.zeros((480, 640, 3), np.uint8))["image"].shape[0] for _ in range(30)]
    assert 256 <= min(shorts) and max(shorts) <= 1024 and len(set(shorts)) > 10
    test = seg_test_pipeline()(image=np.zeros((480, 640, 3), np.uint8), mask=np.zeros((480, 640), np.uint8))
    assert test["image"].shape[:2] == (512, 683) and test["mask"].shape == (480, 640)  # label kept at original size


def test_cat_max_ratio_is_respected():
    mask = np.zeros((400, 400), np.uint8)
    mask[:, 150:250] = 1
    ok = {}
    for ratio in (0.75, 1.0):
        crop = CatMaxRandomCrop(100, 100, cat_max_ratio=ratio)
        crop.set_random_seed(1)
        good = 0
        for _ in range(60):
            m = crop(image=np.zeros((400, 400, 3), np.uint8), mask=mask)["mask"]
            counts = np.bincount(m.ravel(), minlength=2)
            good += counts.max() / counts.sum() < 0.75
        ok[ratio] = good / 60
    assert ok[0.75] > 0.9 and ok[1.0] < 0.6, ok
    # ignore pixels are not a class: a crop of ignore + one class is redrawn
    mask = np.full((200, 200), 255, np.uint8)
    mask[:100, 100:] = 0
    mask[100:, 100:] = 1
    crop = CatMaxRandomCrop(100, 100, cat_max_ratio=0.75)
    crop.set_random_seed(0)
    good = 0
    for _ in range(40):
        m = crop(image=np.zeros((200, 200, 3), np.uint8), mask=mask)["mask"]
        counts = np.bincount(m[m != 255], minlength=2)
        good += counts.sum() > 0 and counts.max() / counts.sum() < 0.75
    assert good / 40 > 0.9


def test_padding_values_and_position():
    image = np.full((60, 80, 3), 200, np.uint8)
    label = np.ones((60, 80), np.uint8)
    out = seg_train_pipeline(crop_size=128, scale=(80, 60), ratio_range=(1.0, 1.0), photometric=False, seed=0)(
        image=image, mask=label)
    img, mask = out["image"], out["mask"]
    assert img.shape == (128, 128, 3)
    assert (img[:60, :80] == 200).all() and (mask[:60, :80] == 1).all()  # content at the top left
    assert (img[60:] == MEAN_COLOR).all() and (img[:, 80:] == MEAN_COLOR).all()
    assert (mask[60:] == 255).all() and (mask[:, 80:] == 255).all()
    # the mean colour normalises to ~0, as mmseg's pad after Normalize
    norm = (np.array(MEAN_COLOR) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert np.abs(norm).max() < 0.01
    out = seg_train_pipeline(crop_size=128, scale=(80, 60), ratio_range=(1.0, 1.0), pad_value=0, seed=0)(
        image=image, mask=label)
    assert (out["image"][60:] == 0).all()


def test_pipelines_are_deterministic_when_seeded():
    image, label = _blocks()
    runs = []
    for seed in (5, 5, 6):
        pipe = seg_train_pipeline(crop_size=96, scale=(320, 240), seed=seed)
        runs.append([pipe(image=image, mask=label) for _ in range(4)])
    same = all(np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
               for a, b in zip(runs[0], runs[1]))
    differ = any(not np.array_equal(a["image"], b["image"]) for a, b in zip(runs[0], runs[2]))
    assert same and differ
    d1 = depth_train_pipeline(crop_size=64, seed=1)(image=image, mask=label.astype(np.float32))
    d2 = depth_train_pipeline(crop_size=64, seed=1)(image=image, mask=label.astype(np.float32))
    assert np.array_equal(d1["image"], d2["image"]) and np.array_equal(d1["mask"], d2["mask"])


def test_photometric_distortion_changes_colour_only():
    image, label = _blocks()
    t = PhotoMetricDistortion()
    t.set_random_seed(0)
    outs = [t(image=image, mask=label) for _ in range(8)]
    assert all(o["image"].dtype == np.uint8 and o["image"].shape == image.shape for o in outs)
    assert all(o["mask"] is label for o in outs)
    assert sum(not np.array_equal(o["image"], image) for o in outs) >= 6


def test_depth_pipeline_keeps_depth_aligned_and_marks_fill_invalid():
    h, w = 120, 160
    cols = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    depth = 1.0 + cols / 100.0  # depth encodes the column ...
    image = np.repeat((cols + 40).astype(np.uint8)[..., None], 3, axis=2)  # ... and so does the image
    pipe = depth_train_pipeline(crop_size=(96, 128), rotate_prob=1.0, rotate_degree=5, color_prob=0.0, seed=3)
    for _ in range(10):
        out = pipe(image=image, mask=depth)
        img, dep = out["image"], out["mask"]
        assert img.shape == (96, 128, 3) and dep.shape == (96, 128) and dep.dtype == np.float32
        valid = dep > 0
        assert valid.mean() > 0.8
        assert np.isin(dep[valid], depth[0]).all()  # nearest: only depths that exist
        err = np.abs((img[..., 0].astype(np.float32) - 40) / 100 + 1 - dep)[valid]
        assert np.median(err) < 0.02
    small = depth_train_pipeline(crop_size=(200, 200), rotate_prob=0, seed=0)(image=image, mask=depth)
    assert small["mask"].shape == (200, 200) and (small["mask"][120:] == 0).all()  # padding is invalid depth
    same = depth_test_pipeline()(image=image, mask=depth)
    assert np.array_equal(same["image"], image) and np.array_equal(same["mask"], depth)


# -- loaders on tiny fake trees ----------------------------------------------------------------
def _rand_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_voc_loader_reads_palette_indices_and_trainaug(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    label = np.zeros((30, 40), np.uint8)
    label[5:20, 10:30] = 15  # person
    label[5, :] = 255  # border
    for name in ("2007_000032", "2007_000039"):
        write_image(base / "JPEGImages" / f"{name}.jpg", _rand_image(30, 40))
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(label, mode="P")
        im.putpalette([c for rgb in voc_palette(256) for c in rgb])
        im.save(base / "SegmentationClass" / f"{name}.png")
        (base / "SegmentationClassAug").mkdir(exist_ok=True)
        Image.fromarray(label).save(base / "SegmentationClassAug" / f"{name}.png")
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n")
    (sets / "val.txt").write_text("2007_000039\n")
    (sets / "trainaug.txt").write_text("2007_000032\n2007_000039\n")
    train = VOCDataset(tmp_path, "train")  # a folder holding VOCdevkit/VOC2012
    assert len(train) == 1 and train.num_classes == 21 and train.classes[15] == "person"
    assert np.array_equal(train.load_item(0)["seg"], label)  # indices, not palette colours
    sample = train[0]
    assert sample["seg"].dtype == torch.int64 and set(sample["seg"].unique().tolist()) == {0, 15, 255}
    assert len(VOCDataset(base, "val")) == 1
    assert len(VOCDataset(base.parent, "val")) == 1  # VOCdevkit (a doubled VOCdevkit/VOCdevkit path was refused)
    with pytest.warns(UserWarning, match="val.txt among the training images"):  # (this trainaug.txt lists val's)
        aug = VOCDataset(base, "trainaug")
    assert len(aug) == 2 and "SegmentationClassAug" in aug[1]["meta"]["target_path"]
    (sets / "trainaug.txt").unlink()
    with pytest.raises(DataError, match="trainaug.txt"):
        VOCDataset(base, "trainaug")
    # mmseg's layout: aug.txt holds the SBD ids that are not in train or val, and its VOC-aug config trains on
    # train.txt (SegmentationClass) + aug.txt (SegmentationClassAug); aug.txt alone left train's ids out
    write_image(base / "JPEGImages" / "2008_000001.jpg", _rand_image(30, 40))
    Image.fromarray(label).save(base / "SegmentationClassAug" / "2008_000001.png")
    (sets / "aug.txt").write_text("2008_000001\n")
    aug = VOCDataset(base, "trainaug")
    targets = [Path(item.target).relative_to(base).as_posix() for item in aug.items]
    assert targets == ["SegmentationClass/2007_000032.png", "SegmentationClassAug/2008_000001.png"]
    # an aug.txt of another making that lists train's and val's ids too: each taken once, both said
    (sets / "aug.txt").write_text("2007_000032\n2007_000039\n2008_000001\n")
    with pytest.warns(UserWarning) as record:
        aug = VOCDataset(base, "trainaug")
    said = " | ".join(str(w.message) for w in record)
    assert "1 id(s) listed twice, each taken once (e.g. 2007_000032)" in said, said
    assert "1 id(s) of" in said and "val.txt among the training images (e.g. 2007_000039)" in said, said
    assert len(aug) == 3


def test_cityscapes_loader(tmp_path):
    label = np.full((32, 64), 255, np.uint8)
    label[:16] = 0
    label[16:, :32] = 18
    for city, name in (("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")):
        write_image(tmp_path / "leftImg8bit" / "train" / city / f"{name}_leftImg8bit.png", _rand_image(32, 64))
        write_image(tmp_path / "gtFine" / "train" / city / f"{name}_gtFine_labelTrainIds.png", label)
    ds = CityscapesDataset(tmp_path, "train")
    assert len(ds) == 2 and ds.num_classes == 19 and ds.palette.shape == (19, 3)
    assert [ds[i]["meta"]["city"] for i in range(2)] == ["aachen", "bochum"]
    assert np.array_equal(ds.load_item(0)["seg"], label)
    label[0, 0] = 19
    write_image(tmp_path / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_labelTrainIds.png", label)
    with pytest.raises(DataError, match="bochum_000000_000313_gtFine_labelTrainIds.png.*19"):
        ds.load_item(1)


def _kitti_tree(tmp_path, h=375, w=1242):
    rel_img = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    rel_dep = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    image = _rand_image(h, w)
    depth = np.zeros((h, w), np.float32)
    rng = np.random.default_rng(0)
    sparse = rng.random((h, w)) < 0.1
    depth[sparse] = rng.uniform(1, 80, sparse.sum())
    png = np.round(depth * 256).astype(np.uint16)
    write_image(tmp_path / "input" / rel_img, image)
    write_image(tmp_path / "gt_depth" / rel_dep, png)
    write_image(tmp_path / "input" / rel_img.replace("69", "70"), image)
    (tmp_path / "kitti_eigen_test.txt").write_text(
        f"{rel_img} {rel_dep} 721.5377\n{rel_img.replace('69', '70')} None 721.5377\n")
    return image, png.astype(np.float32) / 256


def test_kitti_loader_kb_crop_and_missing_gt(tmp_path):
    image, depth = _kitti_tree(tmp_path)
    ds = KITTIDepthDataset(tmp_path, "kitti_eigen_test.txt")
    assert len(ds) == 1 and ds.num_skipped == 1
    raw = ds.load_item(0)
    top, left = 375 - 352, (1242 - 1216) // 2
    assert raw["meta"]["kb_crop"] == (top, left) and raw["meta"]["ori_shape"] == (352, 1216)
    assert np.array_equal(raw["image"], image[top:, left:left + 1216])
    assert np.array_equal(raw["depth"], depth[top:, left:left + 1216])
    sample = ds[0]
    assert sample["depth"].shape == (1, 352, 1216) and sample["meta"]["focal"] == pytest.approx(721.5377)
    full = KITTIDepthDataset(tmp_path, "kitti_eigen_test.txt", kb_crop=False, missing_gt="keep")
    assert len(full) == 2 and full.load_item(0)["depth"].shape == (375, 1242)
    kept = full.load_item(1)
    assert kept["meta"]["has_gt"] is False and (kept["depth"] == 0).all()


def test_kitti_kb_crop_rejects_small_images(tmp_path):
    _kitti_tree(tmp_path, h=300, w=1000)
    with pytest.raises(DataError, match="0000000069.png.*kb-crop"):
        KITTIDepthDataset(tmp_path, "kitti_eigen_test.txt").load_item(0)


def test_samples_batch_through_a_dataloader_reproducibly(tmp_path):
    root = write_ade20k_layout(tmp_path / "ade", 6, 0, SceneConfig(size=(64, 64)), progress=False)

    def batches():
        ds = ADE20KDataset(root, transform=seg_train_pipeline(crop_size=48, scale=(64, 64), seed=0))
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate,
                                             worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(7))
        return list(loader)

    a, b = batches(), batches()
    assert a[0]["image"].shape == (3, 3, 48, 48) and a[0]["seg"].shape == (3, 48, 48)
    assert len(a[0]["meta"]) == 3 and a[0]["meta"][0]["img_shape"] == (48, 48)
    assert all(torch.equal(x["image"], y["image"]) and torch.equal(x["seg"], y["seg"]) for x, y in zip(a, b))
    # two workers got different augmentation streams
    assert not torch.equal(a[0]["image"][0], a[1]["image"][0])


def test_workers_draw_their_own_augmentations_without_an_init_function(tmp_path):
    """mmengine's worker init seeds random, numpy and torch, not albumentations' own generators: the data set
    reseeds its pipeline in each worker from the worker's torch seed, so two workers do not repeat each
    other's draws (here the same image twice, one in each worker) and a seeded loader repeats itself."""
    root = write_ade20k_layout(tmp_path / "ade", 1, 0, SceneConfig(size=(64, 64)), progress=False)

    def images():
        ds = ADE20KDataset(root, transform=seg_train_pipeline(crop_size=40, scale=(64, 64), seed=0))
        loader = torch.utils.data.DataLoader(ds, batch_size=1, sampler=[0, 0], num_workers=2, collate_fn=collate,
                                             generator=torch.Generator().manual_seed(7))
        return [batch["image"][0] for batch in loader]

    first, second = images()
    assert not torch.equal(first, second)
    assert all(torch.equal(x, y) for x, y in zip(images(), (first, second)))


def test_sample_format_and_normalisation(tmp_path):
    root = write_folder_layout(tmp_path / "f", 1, SceneConfig(size=(32, 48)), image_ext=".png", progress=False)
    seg = FolderSegmentationDataset(root)
    raw, sample = seg.load_item(0), seg[0]
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    expected = (raw["image"].astype(np.float32) / 255 - mean) / std
    assert sample["image"].shape == (3, 32, 48) and sample["image"].dtype == torch.float32
    assert torch.allclose(sample["image"], torch.from_numpy(expected).permute(2, 0, 1), atol=1e-5)
    assert sample["seg"].shape == (32, 48) and sample["seg"].dtype == torch.int64
    assert set(sample["meta"]) >= {"path", "target_path", "ori_shape", "img_shape", "index"}
    import albumentations as A

    with pytest.raises(TypeError, match="no Normalize"):
        FolderSegmentationDataset(root, transform=A.Compose([A.Normalize()]))[0]
    dep = FolderDepthDataset(root)[0]
    assert dep["depth"].shape == (1, 32, 48) and dep["depth"].dtype == torch.float32


# -- errors name the file ----------------------------------------------------------------------
def _esc(path) -> str:
    return re.escape(str(path))


@pytest.fixture
def folder(tmp_path):
    return write_folder_layout(tmp_path / "data", 3, SceneConfig(size=(24, 32), num_classes=5), image_ext=".png",
                               progress=False)


def test_corrupt_image_names_the_file(folder):
    bad = folder / "images" / "00001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = FolderSegmentationDataset(folder)
    ds[0]  # the others still load
    with pytest.raises(DataError, match=_esc(bad)):
        ds[1]
    with pytest.raises(DataError, match=_esc(bad)):
        ds.validate(progress=False)
    with pytest.raises(DataError, match=_esc(bad)):
        FolderDepthDataset(folder).load_item(1)


def test_corrupt_label_names_the_file(folder):
    bad = folder / "masks" / "00002.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=_esc(bad)):
        FolderSegmentationDataset(folder)[2]


def test_mask_of_wrong_size_names_the_file(folder):
    bad = folder / "masks" / "00000.png"
    write_image(bad, np.zeros((24, 30), np.uint8))
    with pytest.raises(DataError, match=_esc(bad) + r": label map of size 30x24 .* is 32x24"):
        FolderSegmentationDataset(folder)[0]
    write_image(folder / "depth" / "00001.png", np.zeros((20, 32), np.uint16))
    with pytest.raises(DataError, match=_esc(folder / "depth" / "00001.png")):
        FolderDepthDataset(folder)[1]


def test_labels_out_of_range_name_the_file(folder, tmp_path):
    bad = folder / "masks" / "00001.png"
    label = np.zeros((24, 32), np.uint8)
    label[3, 3], label[4, 4] = 7, 255  # 7 is out of range for 5 classes; 255 is ignore
    write_image(bad, label)
    ds = FolderSegmentationDataset(folder)
    with pytest.raises(DataError, match=_esc(bad) + r": label values \[7\] out of range"):
        ds[1]
    label[3, 3] = 4
    write_image(bad, label)
    assert set(ds[1]["seg"].unique().tolist()) == {0, 4, 255}
    with pytest.raises(DataError, match="out of range"):
        FolderSegmentationDataset(folder, num_classes=4)[1]
    (folder / "synthetic.json").unlink()
    label[3, 3] = 77
    write_image(bad, label)
    unchecked = FolderSegmentationDataset(folder)  # no classes declared: no range check
    assert unchecked.num_classes is None and unchecked[1]["seg"].max() == 255
    # ADE20K: stored 151 is out of range for 150 classes (after reduce_zero_label)
    root = tmp_path / "ade"
    write_image(root / "images" / "validation" / "ADE_val_00000001.jpg", _rand_image(20, 20))
    ann = np.full((20, 20), 150, np.uint8)
    ann[0, 0] = 151
    write_image(root / "annotations" / "validation" / "ADE_val_00000001.png", ann)
    ade = ADE20KDataset(root, "validation")
    assert ade.num_classes == 150
    with pytest.raises(DataError, match=r"ADE_val_00000001.png: label values \[151\].*0..150"):
        ade.load_item(0)
    ann[0, 0] = 0
    write_image(root / "annotations" / "validation" / "ADE_val_00000001.png", ann)
    seg = ade.load_item(0)["seg"]
    assert seg[0, 0] == 255 and (seg.ravel()[1:] == 149).all()  # reduce_zero_label


def test_missing_pair_names_the_image_and_the_expected_file(folder):
    (folder / "masks" / "00002.png").unlink()
    image, mask = _esc(folder / "images" / "00002.png"), _esc(folder / "masks" / "00002.png")
    with pytest.raises(DataError, match=rf"{image}: no mask .*{mask}"):
        FolderSegmentationDataset(folder)
    (folder / "depth" / "00000.png").unlink()
    with pytest.raises(DataError, match="00000.png: no depth map"):
        FolderDepthDataset(folder)


def test_empty_and_missing_folders_name_the_root(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    expected = rf"{_esc(tmp_path)}: empty data set, found no images in {_esc(tmp_path / 'images')}"
    with pytest.raises(DataError, match=expected):
        FolderSegmentationDataset(tmp_path)
    with pytest.raises(DataError, match=_esc(tmp_path / "depth") + ": no such folder"):
        FolderDepthDataset(tmp_path)
    with pytest.raises(DataError, match=_esc(tmp_path / "images" / "training") + ": no such folder"):
        ADE20KDataset(tmp_path)
    with pytest.raises(DataError, match="leftImg8bit"):
        CityscapesDataset(tmp_path)
    (tmp_path / "nyu_train.txt").write_text("\n")
    with pytest.raises(DataError, match="empty data set.*nyu_train.txt"):
        NYUDepthDataset(tmp_path, "nyu_train.txt")
    with pytest.raises(DataError, match="nope.txt: no such split file"):
        NYUDepthDataset(tmp_path, "nope.txt")


def test_split_file_errors_name_file_and_line(tmp_path):
    write_image(tmp_path / "a" / "rgb_1.jpg", _rand_image(8, 8))
    (tmp_path / "split.txt").write_text("a/rgb_1.jpg a/sync_depth_1.png 518.8579\n")
    with pytest.raises(DataError, match=_esc(tmp_path / "a" / "sync_depth_1.png") + ": listed in .*split.txt line 1"):
        NYUDepthDataset(tmp_path, "split.txt")
    (tmp_path / "split.txt").write_text("\n/a/rgb_1.jpg\n")
    with pytest.raises(DataError, match="split.txt line 2"):
        NYUDepthDataset(tmp_path, "split.txt")


def test_depth_file_errors(folder):
    write_image(folder / "depth" / "00000.png", np.zeros((24, 32, 3), np.uint8))  # colour, not depth
    with pytest.raises(DataError, match=r"00000.png: depth image of shape \(24, 32, 3\)"):
        FolderDepthDataset(folder)[0]
    (folder / "synthetic.json").unlink()  # no declared scale any more
    undeclared = FolderDepthDataset(folder)
    with pytest.raises(DataError, match="00001.png: a 16-bit depth image, but its scale was not given"):
        undeclared[1]
    np.save(folder / "depth" / "neg.npy", -np.ones((24, 32), np.float32))
    write_image(folder / "images" / "neg.png", _rand_image(24, 32))
    ds = FolderDepthDataset(folder, depth_scale=1000)
    with pytest.raises(DataError, match="neg.npy: negative depth"):
        ds.load_item([i.image.stem for i in ds.items].index("neg"))
    nan = np.full((24, 32), np.nan, np.float32)
    nan[0, 0] = 2.5
    np.save(folder / "depth" / "neg.npy", nan)
    d = ds.load_item([i.image.stem for i in ds.items].index("neg"))["depth"]
    assert d[0, 0] == 2.5 and (d.ravel()[1:] == 0).all()  # NaN -> 0 = invalid


def test_a_turned_npy_depth_map_is_told_to_use_the_upright_grid(folder):
    """The turned-map hint advised giving both files the same orientation tag, which a .npy cannot carry."""
    (folder / "depth" / "00000.png").unlink()
    np.save(folder / "depth" / "00000.npy", np.ones((32, 24), np.float32))
    with pytest.raises(DataError, match=r"00000\.npy: depth map of size 24x32 .* is 32x24 \(turned by 90 degrees: "
                                        r"the image is read upright .* a \.npy has no orientation tag; save the map "
                                        r"on the image's upright grid\)$"):
        FolderDepthDataset(folder).load_item(0)


def test_colour_masks_are_refused(folder):
    write_image(folder / "masks" / "00000.png", _rand_image(24, 32))
    with pytest.raises(DataError, match="00000.png: label map in colour"):
        FolderSegmentationDataset(folder)[0]


def test_two_images_of_one_name_are_refused_not_two_samples_of_one_annotation(tmp_path):
    """ADE_train_1.jpg beside ADE_train_1.png were two samples sharing one annotation, with no word (a reviewer)."""
    write_image(tmp_path / "images" / "training" / "a.jpg", _rand_image(8, 8))
    write_image(tmp_path / "images" / "training" / "a.png", _rand_image(8, 8))
    (tmp_path / "annotations" / "training").mkdir(parents=True)
    Image.fromarray(np.ones((8, 8), np.uint8)).save(tmp_path / "annotations" / "training" / "a.png")
    with pytest.raises(DataError, match=r"a\.jpg and .*a\.png: two images of one name, which would share the "
                                        r"annotation .*a\.\*; keep one of them"):
        ADE20KDataset(tmp_path)


def test_masks_and_depth_maps_of_upper_case_suffixes_pair_as_images_do(folder):
    """Images were read in any case (x.PNG) but their masks and depth maps only in lower case (a reviewer)."""
    reference = [FolderSegmentationDataset(folder).load_item(i)["seg"] for i in range(3)]
    depth = [FolderDepthDataset(folder).load_item(i)["depth"] for i in range(3)]
    for sub in ("images", "masks", "depth"):
        for path in (folder / sub).iterdir():
            path.rename(path.with_suffix(path.suffix.upper()))
    seg, dep = FolderSegmentationDataset(folder), FolderDepthDataset(folder)
    assert [item.target.name for item in seg.items] == ["00000.PNG", "00001.PNG", "00002.PNG"]
    for i in range(3):
        np.testing.assert_array_equal(seg.load_item(i)["seg"], reference[i])
        np.testing.assert_array_equal(dep.load_item(i)["depth"], depth[i])
    # one name in two cases (a case-sensitive file system) is two masks for one image: refused, naming both
    (folder / "masks" / "00001.png").write_bytes((folder / "masks" / "00001.PNG").read_bytes())
    if len(list((folder / "masks").iterdir())) == 3:
        pytest.skip("a case-insensitive file system: x.png and x.PNG are one file")
    with pytest.raises(DataError, match=r"00001\.PNG: 2 masks of its name: .*00001\.PNG, .*00001\.png; keep one"):
        FolderSegmentationDataset(folder)


def test_photometric_distortion_is_mmsegs_step_by_step():
    """Saturation and hue went through one HSV round trip (mmseg takes one each: up to 2 grey levels apart on
    30% of pixels), and the hue shift was drawn from -18..18 (mmseg's numpy randint: -18..17; a reviewer)."""
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (0, 0), 2)

    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def mmseg_steps(rgb, sat, hue):  # mmseg's saturation() then hue(), on BGR as mmcv loads it
        bgr = rgb[..., ::-1].copy()
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = convert(hsv[..., 1], alpha=sat)
        hsv = cv2.cvtColor(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[..., ::-1]

    t = PhotoMetricDistortion()
    out = t.apply(image.copy(), beta=None, contrast_first=True, alpha=None, saturation=0.6, hue=-15)
    np.testing.assert_array_equal(out, mmseg_steps(image, 0.6, -15))
    t.set_random_seed(0)
    hues = {t.get_params()["hue"] for _ in range(2000)} - {None}
    assert min(hues) == -18 and max(hues) == 17
