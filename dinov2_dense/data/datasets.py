"""Segmentation and depth data sets in their standard on-disk layouts.

Every data set is a ``torch.utils.data.Dataset`` whose samples are dicts::

    {"image": float32 (3, H, W), ImageNet mean/std normalised,
     "seg":   int64 (H, W) class ids, 255 = ignore          (segmentation data sets)
     "depth": float32 (1, H, W) metres, 0 = invalid          (depth data sets)
     "meta":  {"path", "target_path", "index", "ori_shape": (H, W), "img_shape": (H, W), ...}}

``transform`` is an albumentations ``Compose`` (see :mod:`dinov2_dense.data.pipelines`), or any
callable with its interface (``transform(image=..., mask=...) -> dict``), applied to the uint8 RGB
image and the label / depth map (as ``mask``) before normalisation. ``load_item(i)`` returns the raw
numpy arrays without transform, for evaluation tools: image uint8 RGB (H, W, 3), "seg" uint8 /
int (H, W) after label mapping, or "depth" float32 (H, W) metres.

Image files are read upright: their EXIF orientation is applied (images, label and depth maps
alike, see :mod:`dinov2_dense.images`), and files over the pixel limit are refused before decoding.
Files are checked when they are loaded (``validate()`` checks them all up front): an unreadable
image, a label map or depth map whose size differs from its image, labels outside
``0 .. num_classes - 1`` other than the ignore index, and listed files that do not exist raise
:class:`DataError` naming the file; so does a data set that finds no samples (naming the folder
and what it looked for). Protocol details (ADE20K reduce-zero-label, VOC SBD list, Cityscapes
train ids, NYU millimetres, KITTI 1/256 m and kb-crop) are in each class's docstring.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..features import normalize
from ..images import DEPTH_EXTENSIONS
from .classes import (ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, VOC_CLASSES, VOC_PALETTE,
                      palette_array)
from .files import IMAGE_EXTENSIONS, DataError, read_depth, read_image, read_label

IGNORE_INDEX = 255
Transform = Callable[..., dict]


@dataclass
class Item:
    image: Path
    target: Path | None
    extra: dict[str, Any] = field(default_factory=dict)


def _list_images(folder: Path) -> list[Path]:
    """Image files of a folder, sorted; hidden files (e.g. our writers' temp files) are skipped, and
    a folder named like an image is an error (it would silently drop a sample)."""
    found = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    odd = [p for p in found if not p.is_file()]
    if odd:
        if odd[0].is_symlink() and not odd[0].exists():
            raise DataError(f"{odd[0]}: a broken link (to {os.readlink(odd[0])}), no such image file")
        raise DataError(f"{odd[0]}: named like an image but not a file")
    return sorted(found)


def _turned_hint(target: tuple[int, ...], image: tuple[int, ...], path: Path | None = None) -> str:
    """A hint for a target map whose size is its image's turned by 90 degrees: images are read
    upright (EXIF orientation applied), so the two files disagree on their orientation tag (a ``.npy``
    ``path`` has none: the map must be on the upright grid)."""
    if tuple(target[:2]) != tuple(image[::-1]):
        return ""
    if path is not None and path.suffix.lower() == ".npy":
        return (" (turned by 90 degrees: the image is read upright with its EXIF orientation applied, and a .npy "
                "has no orientation tag; save the map on the image's upright grid)")
    return (" (turned by 90 degrees: files are read upright with their EXIF orientation applied, and these two "
            "disagree on it; save the map on the image's upright grid, or give both the same orientation tag)")


def _target_size(path: Path) -> tuple[int, int]:
    """(H, W) of a label or depth map file as it is read (upright), from its header."""
    if path.suffix.lower() == ".npy":
        shape = np.load(path, mmap_mode="r").shape
        while len(shape) > 2 and shape[0] == 1:  # as images.read_depth
            shape = shape[1:]
        return tuple(shape[:2])
    from ..images import image_size

    return image_size(path)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DataError(f"{path}: no such folder (expected {what})")
    return path


def _synthetic_info(root: Path) -> dict:
    """The synthetic.json that our synthetic writers leave at the root of a tree, if any."""
    path = root / "synthetic.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None


class DenseDataset(Dataset):
    """Shared machinery: a list of (image, target) files, loading with checks, transform, tensors."""

    target_key = ""

    def __init__(self, items: list[Item], root: str | os.PathLike, transform: Transform | None, looked_for: str):
        self.root = Path(root)
        self.items = items
        self.transform = transform
        if not items:
            raise DataError(f"{self.root}: empty data set, found no {looked_for}")

    def __len__(self) -> int:
        return len(self.items)

    def _load_target(self, item: Item, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def load_item(self, index: int) -> dict[str, Any]:
        """Raw sample, no transform: {"image": uint8 (H, W, 3) RGB, "seg" | "depth": (H, W), "meta": {...}}."""
        item = self.items[index]
        image = read_image(item.image)
        target = self._load_target(item, image.shape[:2])
        seen = self.__dict__.setdefault("_orientation_seen", set())  # (each file's header once, not at every epoch)
        if not self.__dict__.get("_orientation_said") and index not in seen:
            seen.add(index)
            self._say_orientation(item)
        meta = {"path": str(item.image), "target_path": str(item.target) if item.target else None, "index": index,
                "ori_shape": tuple(image.shape[:2]), **item.extra}
        image, target, meta = self._postprocess(image, target, meta)
        return {"image": image, self.target_key: target, "meta": meta}

    def _postprocess(self, image, target, meta):
        return image, target, meta

    def _say_orientation(self, item: Item) -> None:
        """Warn, once for the data set (in each process that reads it), of an image with an EXIF orientation whose
        map has none: the image is read upright and the map as stored, so the map must have been drawn on the
        upright image (as annotation tools that apply the tag draw it, and as mmsegmentation pairs them); one drawn
        on the stored pixels is turned against its image, and a half turn or a mirror keeps the size, so nothing
        else tells (a reviewer's run: mIoU 15.6 against 43.9)."""
        from .files import orientation_tag

        if item.target is None or str(item.image).startswith("skimage:"):
            return
        try:
            turned = orientation_tag(item.image)
            # (the map's header only for a turned image)
            stored = 1 if turned == 1 or item.target.suffix.lower() == ".npy" else orientation_tag(item.target)
        except (OSError, ValueError):
            return
        if turned != 1 and stored == 1:
            self._orientation_said = True
            warnings.warn(
                f"{item.image} has EXIF orientation {turned} and is read turned upright; its "
                f"{'label' if self.target_key == 'seg' else self.target_key} map "
                f"{item.target} has none and is taken as drawn on the upright image (as mmsegmentation pairs them). "
                "If the maps were drawn on the images' stored pixels, they do not line up: give each map its image's "
                "orientation tag, or save the images without theirs (said once for this data set in each process that "
                "reads it)", stacklevel=2)

    def __getitem__(self, index: int) -> dict[str, Any]:
        augment_seed = getattr(index, "augment_seed", None)  # a seeded sample stream's index (engine.data)
        sample = self.load_item(int(index))
        image, target = sample["image"], sample[self.target_key]
        if self.transform is not None:
            if augment_seed is not None:
                self._seed_sample(augment_seed)
            else:
                self._seed_in_worker()
            out = self.transform(image=image, mask=target)
            image, target = out["image"], out["mask"]
            if image.dtype != np.uint8:
                raise TypeError(f"{type(self).__name__}: the transform returned a {image.dtype} image; it must keep "
                                "uint8 RGB (the data set normalises with the ImageNet mean/std itself: no Normalize)")
        meta = {**sample["meta"], "img_shape": tuple(image.shape[:2])}
        tensor = normalize(np.asarray(image, dtype=np.float32) / 255.0)
        return {"image": tensor, self.target_key: self._to_tensor(target), "meta": meta}

    def _to_tensor(self, target: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _seed_sample(self, seed: int) -> None:
        """Seed the albumentations pipeline (for one sample: its place in a run's sample stream gave ``seed``)."""
        import albumentations as A

        if isinstance(self.transform, A.BaseCompose):
            from .pipelines import seed_pipeline

            seed_pipeline(self.transform, seed)

    def _seed_in_worker(self) -> None:
        """In a DataLoader worker, reseed this copy's albumentations pipeline from the worker's torch seed
        (drawn from the loader's generator, so a seeded run draws the same ones) at its first sample:
        every worker starts with the parent's generator state and would otherwise repeat its draws."""
        info = torch.utils.data.get_worker_info()
        if info is None:
            return
        seed = torch.initial_seed() % 2**32
        if getattr(self, "_worker_seed", None) == seed:
            return
        self._worker_seed = seed
        self._seed_sample(seed)

    def check_sizes(self) -> None:
        """Compare each image's size with its target's from the files' headers, decoding no pixels (about
        0.3 ms a pair), and raise for the first sample that does not load: the error :meth:`load_item`
        gives (a map of another size, a missing or unreadable file). A run checks its validation set so
        at the start, not at its first validation after training."""
        from ..images import image_size

        for index, item in enumerate(self.items):
            if item.target is None:
                continue
            try:
                fits = image_size(item.image) == _target_size(item.target)
            except (OSError, ValueError):  # unreadable: load_item says how
                fits = False
            if not fits:
                self.load_item(index)  # raises, naming the files (a header can disagree where pixels do not)

    def validate(self, progress: bool = True) -> "DenseDataset":
        """Load every sample once (no transform), raising on the first bad file; returns self."""
        from tqdm.auto import tqdm

        for i in tqdm(range(len(self)), desc=f"checking {self.root.name}", disable=not progress, unit="img"):
            self.load_item(i)
        return self


# -- segmentation ----------------------------------------------------------------------------
class SegmentationDataset(DenseDataset):
    """Base of the segmentation data sets: label mapping and checks.

    reduce_zero_label (ADE20K): label 0 ("other") becomes ignore (255) and k becomes k - 1; 255
    stays ignore. Afterwards every label must be in ``0 .. num_classes - 1`` or ``ignore_index``.
    """

    target_key = "seg"

    def __init__(self, items, root, transform, looked_for, classes: Sequence[str] | None, palette=None,
                 reduce_zero_label: bool = False, ignore_index: int = IGNORE_INDEX):
        super().__init__(items, root, transform, looked_for)
        self.classes = tuple(classes) if classes is not None else None
        self.num_classes = len(self.classes) if classes is not None else None  # None: labels not range-checked
        self.palette = palette_array(palette, self.num_classes or 255)
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index

    def _load_target(self, item: Item, shape: tuple[int, int]) -> np.ndarray:
        raw = read_label(item.target)
        if raw.shape != shape:
            raise DataError(f"{item.target}: label map of size {raw.shape[1]}x{raw.shape[0]} (WxH) but its image "
                            f"{item.image} is {shape[1]}x{shape[0]}{_turned_hint(raw.shape, shape)}")
        label = self.map_labels(raw)
        if self.num_classes is not None:
            bad = (label >= self.num_classes) & (label != self.ignore_index)
            if bad.any():
                values = np.unique(raw[bad])
                how = " (stored values, before reduce_zero_label)" if self.reduce_zero_label else ""
                top = self.num_classes - 1 + self.reduce_zero_label
                raise DataError(f"{item.target}: label values {values[:8].tolist()}{how} out of range: expected "
                                f"class ids 0..{top} or ignore {self.ignore_index}")
        return label

    def map_labels(self, raw: np.ndarray) -> np.ndarray:
        """Stored labels -> training ids (uint8 when they fit)."""
        label = raw.astype(np.int64) if raw.dtype != np.uint8 else raw.copy()
        if self.reduce_zero_label:
            ignore = (label == 0) | (label == IGNORE_INDEX)
            label = label - 1
            label[ignore] = self.ignore_index
        if label.dtype != np.uint8 and label.min(initial=0) >= 0 and label.max(initial=0) <= 255:
            label = label.astype(np.uint8)
        return label

    def _to_tensor(self, target: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(target).astype(np.int64))


def _pairs_by_stem(images: list[Path], target_dir: Path, suffixes: Sequence[str], what: str) -> list[Item]:
    """Each image with the target of its stem; two images of one stem (``x.jpg`` and ``x.png``) would be two
    samples of one target: refused, naming both."""
    items, seen = [], {}
    found: dict[tuple[str, str], list[str]] = {}  # (stem, suffix in lower case) -> the target files' names
    broken: dict[str, str] = {}  # stem -> the name of a link to nothing
    with os.scandir(target_dir) as entries:  # (one listing, not a stat per image and suffix)
        for entry in entries:
            name = Path(entry.name)
            if entry.is_file():
                found.setdefault((name.stem, name.suffix.lower()), []).append(entry.name)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                broken[name.stem] = entry.name
    for img in images:
        if img.stem in seen:
            raise DataError(f"{seen[img.stem]} and {img}: two images of one name, which would share the {what} "
                            f"{target_dir / img.stem}.*; keep one of them")
        seen[img.stem] = img
        for suffix in suffixes:  # in the suffixes' order, each in any case (as images are: x.PNG)
            names = found.get((img.stem, suffix), [])
            if len(names) > 1:  # x.png beside x.PNG (a case-sensitive file system)
                raise DataError(f"{img}: {len(names)} {what}s of its name: "
                                f"{', '.join(str(target_dir / n) for n in sorted(names))}; keep one of them")
            if names:
                items.append(Item(img, target_dir / names[0]))
                break
        else:
            if img.stem in broken:
                link = target_dir / broken[img.stem]
                raise DataError(f"{link}: the {what} of {img} is a broken link (to {os.readlink(link)})")
            names = " or ".join(str(target_dir / (img.stem + s)) for s in suffixes)
            raise DataError(f"{img}: no {what} for this image (looked for {names}, in any case)")
    return items


class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (ADEChallengeData2016): 150 classes, reduce-zero-label.

    Layout: ``root/images/{training,validation}/*.jpg`` (``.png`` accepted) and
    ``root/annotations/{training,validation}/<same stem>.png``; 0 in the annotations is "other"
    and is ignored (``reduce_zero_label=True``, as the official protocol). A tree written by
    :func:`write_ade20k_layout` carries ``synthetic.json``; its class names are used unless
    ``classes`` is given.
    """

    SPLITS = {"training": "training", "train": "training", "validation": "validation", "val": "validation"}

    def __init__(self, root: str | os.PathLike, split: str = "training", reduce_zero_label: bool = True,
                 transform: Transform | None = None, classes: Sequence[str] | None = None):
        root = Path(root)
        if split not in self.SPLITS:
            raise ValueError(f"ADE20K split {split!r}: expected 'training' or 'validation'")
        split = self.SPLITS[split]
        img_dir = _require_dir(root / "images" / split, "ADEChallengeData2016/images/<split>")
        ann_dir = _require_dir(root / "annotations" / split, "ADEChallengeData2016/annotations/<split>")
        items = _pairs_by_stem(_list_images(img_dir), ann_dir, (".png",), "annotation")
        info = _synthetic_info(root)
        classes = classes or info.get("class_names") or ADE20K_CLASSES
        palette = ADE20K_PALETTE if tuple(classes) == ADE20K_CLASSES else None
        super().__init__(items, root, transform, f"images in {img_dir} (*.jpg, *.png)", classes, palette,
                         reduce_zero_label=reduce_zero_label)
        self.split = split


class VOCDataset(SegmentationDataset):
    """Pascal VOC 2012 segmentation: 21 classes (0 = background), 255 (object borders) ignored.

    ``root`` is ``VOCdevkit/VOC2012``, ``VOCdevkit`` or a folder that holds it. Splits "train" and "val" read
    ``ImageSets/Segmentation/{train,val}.txt`` with palette PNGs in ``SegmentationClass/``;
    "trainaug" reads the SBD-augmented list ``ImageSets/Segmentation/trainaug.txt`` (all 10,582 ids)
    with grey PNGs in ``SegmentationClassAug/``, or without it, as mmsegmentation's VOC-aug setup
    does, ``train.txt`` (``SegmentationClass/``) followed by ``aug.txt`` (``SegmentationClassAug/``):
    mmseg's voc_aug converter writes ``aug.txt`` as the SBD ids that are not in VOC's train or val
    (9,118), so it is not the training set alone. Images are ``JPEGImages/<id>.jpg``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Transform | None = None):
        root = Path(root)
        # VOC2012 itself, VOCdevkit (which holds it) or a folder holding VOCdevkit
        base = next((b for b in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012") if (b / "JPEGImages").is_dir()),
                    root / "VOCdevkit" / "VOC2012")
        _require_dir(base / "JPEGImages", "VOCdevkit/VOC2012/JPEGImages")
        sets = base / "ImageSets" / "Segmentation"
        if split in ("train", "val", "trainval"):
            lists = [(sets / f"{split}.txt", base / "SegmentationClass")]
        elif split == "trainaug":
            lists = [(sets / "trainaug.txt", base / "SegmentationClassAug")]
            if not lists[0][0].is_file() and (sets / "aug.txt").is_file():  # mmseg's: train.txt + aug.txt
                lists = [(sets / "train.txt", base / "SegmentationClass"), (sets / "aug.txt", base / "SegmentationClassAug")]
        else:
            raise ValueError(f"VOC split {split!r}: expected 'train', 'val', 'trainval' or 'trainaug'")
        items, seen, repeated = [], set(), []
        for list_file, ann_dir in lists:
            if not list_file.is_file():
                hint = " (or train.txt and mmsegmentation's aug.txt; build them from SBD as its voc_aug converter does)"
                hint = hint if split == "trainaug" else ""
                raise DataError(f"{list_file}: no such split file{hint}")
            _require_dir(ann_dir, ann_dir.name)
            for n, line in enumerate(list_file.read_text().splitlines(), 1):
                name = line.strip()
                if not name:
                    continue
                if name in seen:  # (train.txt's ids again in an aug.txt of another making: once, the first)
                    repeated.append(name)
                    continue
                seen.add(name)
                img, ann = base / "JPEGImages" / f"{name}.jpg", ann_dir / f"{name}.png"
                for path in (img, ann):
                    if not path.is_file():
                        raise DataError(f"{path}: listed in {list_file} line {n} but missing")
                items.append(Item(img, ann))
        what = " and ".join(str(f) for f, _ in lists)
        if repeated:
            warnings.warn(f"{what}: {len(repeated)} id(s) listed twice, each taken once (e.g. {repeated[0]})",
                          stacklevel=2)
        if split == "trainaug" and (sets / "val.txt").is_file():
            val = set(line.strip() for line in (sets / "val.txt").read_text().splitlines()) - {""}
            if val & seen:
                warnings.warn(f"{what}: {len(val & seen)} id(s) of {sets / 'val.txt'} among the training images "
                              f"(e.g. {sorted(val & seen)[0]}): a model trained on them is scored on them",
                              stacklevel=2)
        super().__init__(items, base, transform, f"ids in {what}", VOC_CLASSES, VOC_PALETTE)
        self.split = split


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations in the 19 train ids (255 ignore).

    Layout: ``root/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png`` (made by cityscapesscripts'
    createTrainIdLabelImgs).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transform: Transform | None = None):
        root = Path(root)
        img_dir = _require_dir(root / "leftImg8bit" / split, "Cityscapes leftImg8bit/<split>")
        gt_dir = _require_dir(root / "gtFine" / split, "Cityscapes gtFine/<split>")
        items = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            name = img.name[: -len("_leftImg8bit.png")]
            gt = gt_dir / img.parent.name / f"{name}_gtFine_labelTrainIds.png"
            if not gt.is_file():
                raise DataError(f"{img}: no label map for this image (looked for {gt}; run cityscapesscripts' "
                                "createTrainIdLabelImgs)")
            items.append(Item(img, gt, {"city": img.parent.name}))
        super().__init__(items, root, transform, f"images {img_dir}/<city>/*_leftImg8bit.png", CITYSCAPES_CLASSES,
                         CITYSCAPES_PALETTE)
        self.split = split


class FolderSegmentationDataset(SegmentationDataset):
    """Plain folders: ``root/images/*`` and ``root/masks/<same stem>.png`` of class ids.

    Give ``classes`` (names) or ``num_classes`` so that labels are range-checked; a tree written by
    :func:`write_folder_layout` declares them in ``synthetic.json``. Without either,
    ``num_classes`` is None and labels are not range-checked. 255 is ignored; ``reduce_zero_label`` as in ADE20K.
    """

    def __init__(self, root: str | os.PathLike, num_classes: int | None = None, classes: Sequence[str] | None = None,
                 reduce_zero_label: bool = False, transform: Transform | None = None,
                 image_dir: str = "images", mask_dir: str = "masks", ignore_index: int = IGNORE_INDEX):
        root = Path(root)
        img_dir = _require_dir(root / image_dir, "a folder of images")
        mask_path = _require_dir(root / mask_dir, "a folder of label maps (PNG class ids)")
        items = _pairs_by_stem(_list_images(img_dir), mask_path, (".png", ".tif", ".tiff", ".bmp"), "mask")
        if classes is None:
            classes = _synthetic_info(root).get("class_names")
            if num_classes is not None and (classes is None or len(classes) != num_classes):
                classes = tuple(f"class{k}" for k in range(num_classes))
        elif num_classes is not None and num_classes != len(classes):
            raise ValueError(f"num_classes={num_classes} but {len(classes)} class names given")
        super().__init__(items, root, transform, f"images in {img_dir}", classes, None, reduce_zero_label, ignore_index)


# -- depth -------------------------------------------------------------------------------------
class DepthDataset(DenseDataset):
    """Base of the depth data sets: depth in metres, 0 = invalid, same size as its image."""

    target_key = "depth"

    def __init__(self, items, root, transform, looked_for, depth_scale: float | None):
        super().__init__(items, root, transform, looked_for)
        if depth_scale is not None and not depth_scale > 0:
            raise ValueError(f"depth_scale={depth_scale}: expected a positive number of units per metre")
        self.depth_scale = depth_scale

    def _load_target(self, item: Item, shape: tuple[int, int]) -> np.ndarray:
        if item.target is None:  # listed without ground truth: all invalid
            return np.zeros(shape, np.float32)
        depth = read_depth(item.target, self.depth_scale)
        if depth.shape != shape:
            raise DataError(f"{item.target}: depth map of size {depth.shape[1]}x{depth.shape[0]} (WxH) but its image "
                            f"{item.image} is {shape[1]}x{shape[0]}{_turned_hint(depth.shape, shape, item.target)}")
        return depth

    def _to_tensor(self, target: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32))[None]


def _resolve_split_file(root: Path, split_file: str | os.PathLike) -> Path:
    path = Path(split_file)
    for candidate in (root / path, path):
        if candidate.is_file():
            return candidate
    raise DataError(f"{split_file}: no such split file (looked in {root} and the current folder)")


def _read_split(root: Path, split_file: Path, img_dir: str, depth_dir: str, missing_gt: str) -> tuple[list[Item], int]:
    """Lines "rgb depth [focal]"; paths relative to root/img_dir and root/depth_dir (a leading '/' is
    dropped, as the BTS split files write them); depth "None" = no ground truth."""
    if missing_gt not in ("skip", "keep"):
        raise ValueError(f"missing_gt={missing_gt!r}: expected 'skip' or 'keep'")
    items, skipped = [], 0
    for n, line in enumerate(split_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise DataError(f"{split_file} line {n}: expected 'rgb_path depth_path [focal]', got {line.strip()!r}")
        img = root / img_dir / fields[0].lstrip("/")
        if not img.is_file():
            raise DataError(f"{img}: listed in {split_file} line {n} but missing")
        extra: dict[str, Any] = {"has_gt": True}
        if len(fields) >= 3:
            try:
                extra["focal"] = float(fields[2])
            except ValueError:
                raise DataError(f"{split_file} line {n}: focal {fields[2]!r} is not a number") from None
        if fields[1] == "None":
            if missing_gt == "skip":
                skipped += 1
                continue
            items.append(Item(img, None, {**extra, "has_gt": False}))
            continue
        depth = root / depth_dir / fields[1].lstrip("/")
        if not depth.is_file():
            raise DataError(f"{depth}: listed in {split_file} line {n} but missing")
        items.append(Item(img, depth, extra))
    return items, skipped


class NYUDepthDataset(DepthDataset):
    """NYU-Depth v2 as the depth toolboxes store it (BTS, Monocular-Depth-Estimation-Toolbox).

    ``split_file`` (e.g. ``nyu_train.txt``, ``nyu_test.txt``; looked up under ``root`` first) has
    lines "rgb_path depth_path [focal]" relative to ``root / img_dir`` and ``root / depth_dir``.
    Depth PNGs are 16-bit millimetres: depth = png / ``depth_scale`` (1000) metres, 0 = invalid.
    Evaluation crops (Eigen) belong to the metrics, not to the data set.
    """

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike = "nyu_train.txt",
                 depth_scale: float = 1000.0, transform: Transform | None = None, img_dir: str = "",
                 depth_dir: str = "", missing_gt: str = "skip"):
        root = Path(root)
        split = _resolve_split_file(root, split_file)
        items, self.num_skipped = _read_split(root, split, img_dir, depth_dir, missing_gt)
        super().__init__(items, root, transform, f"samples listed in {split}", depth_scale)


class KITTIDepthDataset(DepthDataset):
    """KITTI depth, Eigen split, as the Monocular-Depth-Estimation-Toolbox stores it.

    Split lines "rgb_path depth_path focal", the rgb path under ``root / img_dir`` ("input": the raw
    data, e.g. ``2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png``) and the depth
    under ``root / depth_dir`` ("gt_depth": the annotated depth maps, 16-bit PNG / 256 = metres, 0 =
    invalid). Lines whose depth is "None" have no ground truth: skipped by default (their count is
    ``num_skipped``), or kept with an all-invalid depth map and ``meta["has_gt"] = False`` when
    ``missing_gt="keep"``. ``kb_crop`` crops image and depth to 352x1216 from the bottom centre
    (top = H - 352, left = (W - 1216) // 2), as the toolboxes do; ``meta["kb_crop"]`` holds
    (top, left) and ``meta["ori_shape"]`` the cropped size.
    """


    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, depth_scale: float = 256.0,
                 kb_crop: bool = True, transform: Transform | None = None, img_dir: str = "input",
                 depth_dir: str = "gt_depth", missing_gt: str = "skip"):
        root = Path(root)
        split = _resolve_split_file(root, split_file)
        items, self.num_skipped = _read_split(root, split, img_dir, depth_dir, missing_gt)
        super().__init__(items, root, transform, f"samples with ground truth listed in {split}", depth_scale)
        self.kb_crop = kb_crop

    def _postprocess(self, image, target, meta):
        if not self.kb_crop:
            return image, target, meta
        from ..evaluation.depth import KB_CROP_SHAPE, kb_crop_origin

        h, w = image.shape[:2]
        ch, cw = KB_CROP_SHAPE
        try:
            top, left = kb_crop_origin(h, w)
        except ValueError as exc:
            raise DataError(f"{meta['path']}: {exc}") from None
        crop = np.s_[top : top + ch, left : left + cw]
        meta = {**meta, "kb_crop": (top, left), "file_shape": (h, w), "ori_shape": (ch, cw)}
        return np.ascontiguousarray(image[crop]), np.ascontiguousarray(target[crop]), meta


class FolderDepthDataset(DepthDataset):
    """Plain folders: ``root/images/*`` and ``root/depth/<same stem>`` as a 16-bit PNG divided by the
    declared ``depth_scale`` (units per metre, e.g. 1000 for millimetres) or ``.npy`` in metres.
    A tree written by :func:`write_folder_layout` declares its scale in ``synthetic.json``.
    """

    def __init__(self, root: str | os.PathLike, depth_scale: float | None = None, transform: Transform | None = None,
                 image_dir: str = "images", depth_dir: str = "depth"):
        root = Path(root)
        img_dir = _require_dir(root / image_dir, "a folder of images")
        dep_dir = _require_dir(root / depth_dir, "a folder of depth maps (16-bit PNG or .npy metres)")
        items = _pairs_by_stem(_list_images(img_dir), dep_dir, DEPTH_EXTENSIONS, "depth map")
        if depth_scale is None:
            depth_scale = _synthetic_info(root).get("depth_scale")
        super().__init__(items, root, transform, f"images in {img_dir}", depth_scale)


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of a batch (same sizes, e.g. after a crop) and keep ``meta`` as a list."""
    out: dict[str, Any] = {"meta": [b["meta"] for b in batch]}
    for key in batch[0]:
        if key != "meta":
            out[key] = torch.stack([b[key] for b in batch])
    return out
