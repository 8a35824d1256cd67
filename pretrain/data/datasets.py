"""Image sources for pretraining: folders, lists of files, scikit-image samples, synthetic scenes.

:class:`PretrainDataset` is a map-style data set over one source; item ``i`` is
``(transform(image), label)`` with ``image`` uint8 RGB ``(H, W, 3)`` and ``label`` an int (-1 when
the source has no labels), the ``(sample, target)`` pairs that :func:`collate_data_and_cast`
takes. Sources:

* :meth:`ImageFiles.from_folder`: every image below a folder, recursively (links followed, hidden
  files and folders skipped, sorted). The first-level subfolder names the class, as in ImageNet's
  ``train/<class>/<image>`` layout; a folder without subfolders has no labels. The root of a
  synthetic layout (``dinov2-dense synth --layout folder``: ``images/`` beside ``masks/`` and/or
  ``depth/``) gives its ``images/`` only (with a note): label maps and depth maps are not photographs.
  The output folder of ``dinov2-dense curate`` is refused, pointing to its ``selected.txt`` (the
  images it selected; the folder's only image is its figure).
* :meth:`ImageFiles.from_list_file`: a text file with one image path a line (relative paths are
  relative to the list file; blank lines and ``#`` comments ignored; ``skimage:NAME`` allowed).
* :meth:`ImageFiles.from_skimage`: the sample images that scikit-image ships (``skimage:NAME``).
* :class:`SyntheticScenes`: scenes of :func:`dinov2_dense.data.synthetic.generate_scene` made on
  the fly by index (scene ``i`` is scene ``i`` of the written synthetic layouts with the same seed),
  labelled with the shape class that covers most of the image: an exact target for kNN evaluation.

:func:`build_dataset` makes the data set of a config value: one of these specs, a
``dict(type=..., **arguments)`` (:data:`SOURCE_TYPES`), or a list of them, concatenated.

Images are read by :mod:`dinov2_dense.images` (EXIF orientation applied, pixel limit enforced).
An unreadable image never stops a run: the next readable one (in index order, wrapping around) is
returned in its place, and its name is logged once and appended to ``dataset.skipped``. Only when
no image of the source is readable does reading raise, naming the source; :func:`build_dataset`
reads up to the first readable image at once, so that a run refuses such a source at its start. With DataLoader
workers each worker keeps its own ``skipped`` list (the logged warnings are the record).
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset

from dinov2_dense.data.files import (IMAGE_EXTENSIONS, DataError, check_list_encoding, image_files_below,
                                     list_file_entries)
from dinov2_dense.data.synthetic import SceneConfig, _config, check_memory, class_names, generate_scene, scene_seed
from dinov2_dense.fileio import read_names_text
from dinov2_dense.images import SAMPLE_PREFIX, decode_image

logger = logging.getLogger(__name__)

#: The scikit-image samples that ship with it as uint8 photographs or textures (``cat`` is ``chelsea``;
#: ``horse`` and ``shepp_logan_phantom`` are bool / float masks; the others are downloads or stacks).
SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cell", "checkerboard", "chelsea", "clock", "coffee", "coins",
                  "colorwheel", "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo",
                  "microaneurysms", "moon", "page", "retina", "rocket", "text")

UNREADABLE = (OSError, ValueError, cv2.error)  # missing, corrupt, over the pixel limit, undecodable


class ImageSource(Protocol):
    """What :class:`PretrainDataset` reads: numbered images with optional labels."""

    name: str
    classes: tuple[str, ...] | None

    def __len__(self) -> int: ...
    def item_name(self, index: int) -> str: ...
    def read(self, index: int) -> np.ndarray: ...
    def label(self, index: int) -> int: ...
    @property
    def labels(self) -> np.ndarray | None: ...


class ImageFiles:
    """Image files (paths or ``skimage:NAME``) with optional class labels.

    Args:
        paths: the images, in order.
        labels: a class index per image (-1: none), or None for an unlabelled source.
        classes: class names, indexed by label.
        name: how messages name the source (a folder, a list file).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int] | None = None,
                 classes: Sequence[str] | None = None, name: str = "image list"):
        self.paths = [os.fspath(p) for p in paths]
        self.name = name
        if labels is not None and len(labels) != len(self.paths):
            raise ValueError(f"{name}: {len(labels)} labels for {len(self.paths)} images")
        self._labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.classes = None if classes is None else tuple(classes)

    @classmethod
    def from_folder(cls, root: str | os.PathLike) -> "ImageFiles":
        """Every image below ``root`` (extensions of :data:`dinov2_dense.data.files.IMAGE_EXTENSIONS`,
        any case), labelled by first-level subfolder; images directly in ``root`` get label -1."""
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (expected a folder of images)")
        _check_not_curate_output(root)
        if _is_synthetic_layout(root):
            logger.warning("%s: the layout of `dinov2-dense synth --layout folder`; taking its images only (%s), "
                           "not its masks/ and depth/", root, root / "images")
            root = root / "images"
        found = image_files_below(root)
        if not found:
            raise DataError(f"{root}: found no images (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        classes = sorted({p.parts[0] for p in found if len(p.parts) > 1})
        labels = None
        if classes:
            index = {c: k for k, c in enumerate(classes)}
            labels = [index[p.parts[0]] if len(p.parts) > 1 else -1 for p in found]
        return cls([root / p for p in found], labels, classes or None, name=str(root))

    @classmethod
    def from_list_file(cls, path: str | os.PathLike) -> "ImageFiles":
        """The images named in a text file, one a line (relative to the file's folder)."""
        path = Path(path)
        try:
            text = read_names_text(path)
        except FileNotFoundError:
            raise DataError(f"{path}: no such list file (expected one image path a line)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a readable text file of image paths ({exc})") from None
        entries = list_file_entries(text)
        if not entries:
            raise DataError(f"{path}: the list names no images (one path a line; # starts a comment)")
        paths = [e if e.startswith(SAMPLE_PREFIX) or os.path.isabs(e) else str(path.parent / e) for e in entries]
        check_list_encoding(path, entries, paths)
        return cls(paths, name=str(path))

    @classmethod
    def from_skimage(cls, names: Sequence[str] | None = None) -> "ImageFiles":
        """scikit-image's sample images ``skimage:NAME`` (None: :data:`SKIMAGE_IMAGES`)."""
        import skimage.data

        names = list(SKIMAGE_IMAGES if names is None else names)
        unknown = [n for n in names if n not in skimage.data.__all__ or not callable(getattr(skimage.data, n, None))]
        if unknown or not names:
            raise DataError(f"scikit-image has no sample image named {', '.join(map(repr, unknown)) or 'at all'}; "
                            f"those shipped as images: {', '.join(SKIMAGE_IMAGES)}")
        return cls([SAMPLE_PREFIX + n for n in names], name="scikit-image samples")

    def __len__(self) -> int:
        return len(self.paths)

    def item_name(self, index: int) -> str:
        return self.paths[index]

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB ``(H, W, 3)``; raises (naming the file) if unreadable."""
        return decode_image(self.paths[index], "rgb")

    def label(self, index: int) -> int:
        return -1 if self._labels is None else int(self._labels[index])

    @property
    def labels(self) -> np.ndarray | None:
        """int64 ``(N,)`` class index per image (-1: unlabelled), or None."""
        return self._labels


def _is_synthetic_layout(root: Path) -> bool:
    """Whether ``root`` holds images beside their label or depth maps: ``images/`` with ``masks/`` or ``depth/``."""
    return (root / "images").is_dir() and any((root / name).is_dir() for name in ("masks", "depth"))


def _check_not_curate_output(root: Path) -> None:
    """Refuse the output folder of ``dinov2-dense curate`` (its marker beside its results) as a folder of
    images: its only image is the figure ``cluster_sizes.png``; the images it selected are in ``selected.txt``."""
    from dinov2_dense.fileio import MARKER

    if not (root / MARKER).is_file():
        return
    from pretrain.curation.pipeline import RESULTS, STORES

    if not any((root / name).exists() for name in (*RESULTS, *STORES)):
        return
    selected = root / "selected.txt"
    if selected.is_file():
        raise DataError(f"{root}: the output folder of `dinov2-dense curate`, not a folder of images (its only image "
                        f"is its figure cluster_sizes.png); give the images it selected: train.dataset={selected}")
    raise DataError(f"{root}: the output folder of `dinov2-dense curate`, not a folder of images, and without its "
                    f"selected.txt (the curation did not finish): run the curation to its end, then give "
                    f"train.dataset={selected}")


def dataset_folders(spec: Any) -> list[Path]:
    """The folders a ``train.dataset`` value reads images from, recursively (folder specs only: a list
    file, scikit-image samples and synthetic scenes read no folder as a whole)."""
    if isinstance(spec, (list, tuple)):
        return [folder for s in spec for folder in dataset_folders(s)]
    if isinstance(spec, Mapping):
        spec = spec.get("root") if spec.get("type") == "folder" else None
    if isinstance(spec, (str, os.PathLike)) and os.path.isdir(spec):
        root = Path(spec)
        return [root / "images" if _is_synthetic_layout(root) else root]  # (a synth root: its images/ only)
    return []


def dominant_class(seg: np.ndarray, num_classes: int) -> int:
    """The class (other than the background, 0) covering most pixels of a label map; 0 when only
    background is visible; the lower id on a tie."""
    counts = np.bincount(seg.ravel(), minlength=num_classes)
    counts[0] = 0
    return int(counts.argmax()) if counts.any() else 0


class SyntheticScenes:
    """``num_scenes`` synthetic scenes generated on the fly; scene ``i`` is
    ``generate_scene(scene_seed(seed, split, i), config)``, the scene ``i`` of the synthetic layouts
    written with the same ``seed``. Its label is :func:`dominant_class` of its exact label map."""

    def __init__(self, num_scenes: int, config: SceneConfig | dict | None = None, seed: int = 0,
                 split: str = "train"):
        if num_scenes < 1:
            raise DataError(f"synthetic scenes: num_scenes={num_scenes}, expected at least 1")
        self.config = _config(config)
        check_memory(self.config)
        self.num_scenes, self.seed, self.split = int(num_scenes), int(seed), split
        self.name = f"synthetic scenes ({num_scenes}, seed {seed}, {split})"
        self.classes = class_names(self.config.num_classes)
        self._labels: dict[int, int] = {}

    def __len__(self) -> int:
        return self.num_scenes

    def item_name(self, index: int) -> str:
        return f"synthetic:{self.split}:{index}"

    def scene(self, index: int):
        """The whole :class:`dinov2_dense.data.synthetic.Scene` (image, seg, depth)."""
        if not 0 <= index < self.num_scenes:
            raise IndexError(f"{self.name}: scene {index} out of range")
        scene = generate_scene(scene_seed(self.seed, self.split, index), self.config)
        self._labels[index] = dominant_class(scene.seg, self.config.num_classes)
        return scene

    def read(self, index: int) -> np.ndarray:
        return self.scene(index).image

    def label(self, index: int) -> int:
        if index not in self._labels:
            self.scene(index)
        return self._labels[index]

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)``: the dominant shape class of every scene (generates those not seen yet)."""
        from tqdm.auto import tqdm

        missing = [i for i in range(self.num_scenes) if i not in self._labels]
        for i in tqdm(missing, desc="labelling synthetic scenes", unit="scene", disable=len(missing) < 500):
            self.scene(i)
        return np.array([self._labels[i] for i in range(self.num_scenes)], dtype=np.int64)


class ConcatSource:
    """Several sources one after the other. Class lists are concatenated (labels of source ``k``
    are shifted by the number of classes before it); unlabelled images keep -1."""

    def __init__(self, sources: Sequence[ImageSource]):
        self.sources = list(sources)
        if not self.sources:
            raise DataError("an empty list of pretraining data sets")
        self.starts = np.cumsum([0] + [len(s) for s in self.sources]).tolist()
        self.name = " + ".join(s.name for s in self.sources)
        self.class_starts = np.cumsum([0] + [len(s.classes or ()) for s in self.sources]).tolist()
        self.classes = tuple(c for s in self.sources for c in s.classes or ()) or None

    def _locate(self, index: int) -> tuple[ImageSource, int, int]:
        k = bisect.bisect_right(self.starts, index) - 1
        return self.sources[k], index - self.starts[k], k

    def __len__(self) -> int:
        return self.starts[-1]

    def item_name(self, index: int) -> str:
        source, i, _ = self._locate(index)
        return source.item_name(i)

    def read(self, index: int) -> np.ndarray:
        source, i, _ = self._locate(index)
        return source.read(i)

    def label(self, index: int) -> int:
        source, i, k = self._locate(index)
        label = source.label(i)
        return label if label < 0 else label + self.class_starts[k]

    @property
    def labels(self) -> np.ndarray | None:
        if self.classes is None:
            return None
        parts = [np.full(len(s), -1, np.int64) if s.labels is None else np.where(s.labels < 0, -1, s.labels + c0)
                 for s, c0 in zip(self.sources, self.class_starts)]
        return np.concatenate(parts)


def make_source(source: ImageSource | str | os.PathLike | Sequence[str | os.PathLike]) -> ImageSource:
    """A source from a spec: a source object (as it is); a folder (:meth:`ImageFiles.from_folder`);
    an image file; another file, as a list of paths (:meth:`ImageFiles.from_list_file`);
    ``"skimage:"`` (all of :data:`SKIMAGE_IMAGES`) or ``"skimage:astronaut,coffee"``;
    ``"synthetic:N"`` (N scenes, seed 0, default config); or a list of image paths."""
    if hasattr(source, "read") and hasattr(source, "__len__"):
        return source  # type: ignore[return-value]
    if isinstance(source, (str, os.PathLike)):
        spec = os.fspath(source)
        if spec.startswith(SAMPLE_PREFIX):
            names = [n.strip() for n in spec[len(SAMPLE_PREFIX):].split(",") if n.strip()]
            return ImageFiles.from_skimage(names or None)
        if spec.startswith("synthetic:"):
            count = spec.split(":", 1)[1]
            if not count.isdigit():
                raise DataError(f"{spec!r}: expected 'synthetic:N', N the number of scenes (or use SyntheticScenes)")
            return SyntheticScenes(int(count))
        if os.path.isdir(spec):
            return ImageFiles.from_folder(spec)
        if os.path.isfile(spec):
            if Path(spec).suffix.lower() in IMAGE_EXTENSIONS:
                return ImageFiles([spec], name=spec)
            return ImageFiles.from_list_file(spec)
        raise DataError(f"{spec}: no such folder or list file (or use 'skimage:NAME' / 'synthetic:N')")
    paths = list(source)
    if not paths:
        raise DataError("PretrainDataset: an empty list of images")
    return ImageFiles(paths)


class PretrainDataset(Dataset):
    """Map-style data set of one image source for pretraining and kNN evaluation.

    Args:
        source: an :class:`ImageFiles`, :class:`SyntheticScenes` or a spec of :func:`make_source`.
        transform: called on uint8 RGB ``(H, W, 3)``, e.g. :class:`DataAugmentationDINO`
            (None: the array itself).

    Item ``i`` is ``(transform(image), label)``; when image ``i`` is unreadable, the next readable
    image and *its* label stand in (so kNN code should use the returned labels, not :attr:`labels`).
    """

    def __init__(self, source: ImageSource | str | os.PathLike | Sequence[str | os.PathLike],
                 transform: Callable[[np.ndarray], Any] | None = None):
        self.source = make_source(source)
        if len(self.source) == 0:
            raise DataError(f"{self.source.name}: no images")
        self.transform = transform
        self.skipped: list[str] = []
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    @property
    def labels(self) -> np.ndarray | None:
        """int64 ``(N,)`` class index per image (-1: unlabelled), or None for an unlabelled source."""
        return self.source.labels

    @property
    def classes(self) -> tuple[str, ...] | None:
        """Class names indexed by label, or None."""
        return self.source.classes

    def with_transform(self, transform: Callable[[np.ndarray], Any] | None) -> "PretrainDataset":
        """The same images (and skip record) with another transform, e.g. a resize and normalise for kNN."""
        view = PretrainDataset(self.source, transform)
        view.skipped, view._unreadable = self.skipped, self._unreadable
        return view

    def _skip(self, index: int, exc: BaseException) -> None:
        self._unreadable.add(index)
        name = self.source.item_name(index)
        self.skipped.append(name)
        logger.warning("%s: skipped, not a readable image (%s: %s)", name, type(exc).__name__, exc)

    def read(self, index: int) -> tuple[np.ndarray, int]:
        """The first readable image from ``index`` on (wrapping around) and its label, no transform."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self.source.name}: index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            j = (index + step) % n
            if j in self._unreadable:
                continue
            try:
                image = self.source.read(j)
            except UNREADABLE as exc:
                self._skip(j, exc)
                continue
            return image, self.source.label(j)
        raise DataError(f"{self.source.name}: none of its {n} images is readable ({len(self._unreadable)} skipped, "
                        f"e.g. {self.skipped[0] if self.skipped else '?'}); check the paths and files")

    def check_readable(self) -> None:
        """Read up to the first readable image: a source none of whose images is readable raises
        :class:`DataError` now, naming it (unreadable ones on the way are skipped and recorded)."""
        self.read(0)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.read(index)
        return (self.transform(image) if self.transform is not None else image), label

    def __repr__(self) -> str:
        return f"PretrainDataset({self.source.name}, {len(self)} images, transform={self.transform!r})"


#: The ``type`` names of :func:`build_dataset` and what each builds (other keys are its arguments).
SOURCE_TYPES: dict[str, Callable[..., ImageSource]] = {
    "folder": ImageFiles.from_folder,  # root
    "list": ImageFiles.from_list_file,  # path
    "skimage": ImageFiles.from_skimage,  # names (optional)
    "synthetic": SyntheticScenes,  # num_scenes, config, seed, split
}


def _source_from_config(spec: Any) -> ImageSource:
    if not isinstance(spec, Mapping):
        return make_source(spec)
    kwargs = dict(spec)
    kind = kwargs.pop("type", None)
    if kind not in SOURCE_TYPES:
        raise DataError(f"pretraining data set type {kind!r}: expected one of {', '.join(SOURCE_TYPES)} "
                        "(e.g. dict(type='folder', root='path/to/images'))")
    try:
        return SOURCE_TYPES[kind](**kwargs)
    except TypeError as exc:  # a missing or unknown argument
        raise DataError(f"pretraining data set dict(type={kind!r}, ...): {exc}") from None


def build_dataset(spec: Any, transform: Callable[[np.ndarray], Any] | None = None) -> PretrainDataset:
    """The pretraining data set of a config: a spec of :func:`make_source` (a folder, a list file,
    ``"skimage:..."``, ``"synthetic:N"``), a dict ``dict(type=<one of SOURCE_TYPES>, **arguments)``,
    or a list of those (concatenated with :class:`ConcatSource`). At least one image must be readable
    (checked here: :meth:`PretrainDataset.check_readable`)."""
    if spec is None:
        raise DataError("no pretraining data set: set train.dataset, e.g. 'path/to/images', 'synthetic:1000' or "
                        "dict(type='folder', root='path/to/images')")
    if isinstance(spec, (list, tuple)):
        source: ImageSource = ConcatSource([_source_from_config(s) for s in spec])
    else:
        source = _source_from_config(spec)
    dataset = PretrainDataset(source, transform)
    dataset.check_readable()  # a source without one readable image is refused now, not at the first batch
    return dataset
