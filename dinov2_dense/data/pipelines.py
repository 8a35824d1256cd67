"""albumentations pipelines of the official segmentation and depth protocols.

Each pipeline is an ``albumentations.Compose`` called as ``pipe(image=uint8 RGB (H, W, 3),
mask=labels (H, W) | depth (H, W) float32)`` on numpy arrays, before ImageNet normalisation (the
data sets normalise afterwards). Geometric transforms move image and mask together; labels and
depth are resampled with nearest neighbour only, so no label or depth value is ever invented.

Segmentation (DINOv2's mmseg configs, e.g. ``dinov2_vits14_ade20k_linear_config.py``)::

    Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio)  -> RandomRescale
    RandomCrop(512, cat_max_ratio=0.75)                               -> CatMaxRandomCrop
    RandomFlip(0.5)                                                   -> HorizontalFlip
    PhotoMetricDistortion                                             -> PhotoMetricDistortion
    Normalize, Pad(512, pad_val=0, seg_pad_val=255)                   -> PadIfNeeded (bottom/right)

mmseg pads *after* normalising, so its padded pixels are 0 in normalised space, i.e. the ImageNet
mean colour; here padding happens before normalisation, so the image is padded with the mean
colour (124, 116, 104) by default (``pad_value``), which normalises to ~0.

Depth (the released DINOv2 NYU / KITTI configs, on the Monocular-Depth-Estimation-Toolbox):
NYUCrop, RandomRotate(0.5, 2.5 degrees), RandomFlip(0.5), RandomCrop(416x544), ColorAug(0.5:
gamma on 0-255 values, brightness, per-channel colour).

Determinism: ``seed=`` seeds every transform from its own stream (:func:`seed_pipeline`;
albumentations 2.0's ``Compose(seed=)`` gives all transforms the *same* seed, correlating their
draws). With DataLoader workers, pass ``worker_init_fn=seed_worker`` and a seeded ``generator``:
each worker then reseeds its copy of the pipeline from ``torch.initial_seed()``.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

from ..features import IMAGENET_MEAN, rescale_size

MEAN_COLOR = tuple(int(round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104): normalises to ~0


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


class RandomRescale(A.DualTransform):
    """Rescale keeping the aspect ratio to fit ``scale`` (long, short edge), times a random ratio.

    As mmseg's ``Resize(img_scale=scale, ratio_range=...)`` / mmcv ``imrescale``: the target
    scale is ``(int(long * r), int(short * r))`` with ``r ~ U(ratio_range)``; the factor is
    ``min(long' / max(h, w), short' / min(h, w))``; the new size rounds ``w * f + 0.5``. Images
    are resized bilinearly, masks (labels, depth) by nearest neighbour. ``ratio_range=None``
    rescales to ``scale`` exactly (test pipelines); ``resize_mask=False`` leaves the mask at its
    original size (evaluation at the original resolution).
    """

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] | None = (0.5, 2.0),
                 interpolation: int = cv2.INTER_LINEAR, resize_mask: bool = True, p: float = 1.0):
        super().__init__(p=p)
        self.scale = (max(scale), min(scale))
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.interpolation = interpolation
        self.resize_mask = resize_mask

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.py_random.uniform(*self.ratio_range) if self.ratio_range is not None else 1.0
        nh, nw = rescale_size(h, w, self.scale, r)
        return {"size": (nw, nh)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        return img if img.shape[1::-1] == size else cv2.resize(img, size, interpolation=self.interpolation)

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params: Any) -> np.ndarray:
        if not self.resize_mask or mask.shape[1::-1] == size:
            return mask
        return cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio_range", "interpolation", "resize_mask")


class CatMaxRandomCrop(A.DualTransform):
    """Random crop in which no class covers more than ``cat_max_ratio`` of the labelled pixels.

    As mmseg's ``RandomCrop(crop_size, cat_max_ratio)``: a crop is drawn uniformly; up to
    ``max_tries`` (10) times it is redrawn while it holds a single class or its largest class
    (ignore excluded) takes ``>= cat_max_ratio``; the last draw is kept. An image smaller than
    the crop is cropped to its own size along that side (the pipeline pads afterwards).
    """

    def __init__(self, height: int, width: int, cat_max_ratio: float = 0.75, ignore_index: int = 255,
                 max_tries: int = 10, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width = height, width
        self.cat_max_ratio, self.ignore_index, self.max_tries = cat_max_ratio, ignore_index, max_tries

    def _draw(self, h: int, w: int) -> tuple[int, int, int, int]:
        y = self.py_random.randint(0, max(h - self.height, 0))
        x = self.py_random.randint(0, max(w - self.width, 0))
        return x, y, min(x + self.width, w), min(y + self.height, h)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        box = self._draw(h, w)
        mask = data.get("mask")
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                x0, y0, x1, y1 = box
                labels, counts = np.unique(mask[y0:y1, x0:x1], return_counts=True)
                counts = counts[labels != self.ignore_index]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self._draw(h, w)
        return {"box": box}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = box
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def apply_to_mask(self, mask: np.ndarray, box: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self.apply(mask, box)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "cat_max_ratio", "ignore_index", "max_tries")


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """mmseg's PhotoMetricDistortion on uint8 RGB, each step with probability 1/2:

    brightness ``+U(-32, 32)``; contrast ``x U(0.5, 1.5)`` (before or after the colour steps, at
    random); saturation ``x U(0.5, 1.5)`` and hue ``+randint(-18, 18)`` (OpenCV's 0-179 hue; numpy's
    randint, as mmseg draws it: -18 to 17), each in its own round trip through HSV (two roundings, as in
    mmseg). Values are clipped to 0-255 after each step, as in mmseg.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18, p: float = 1.0):
        super().__init__(p=p)
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = tuple(contrast_range), tuple(saturation_range)

    def get_params(self) -> dict[str, Any]:
        rnd = self.py_random
        coin = lambda: rnd.randint(0, 1) == 1  # noqa: E731
        return {
            "beta": rnd.uniform(-self.brightness_delta, self.brightness_delta) if coin() else None,
            "contrast_first": coin(),
            "alpha": rnd.uniform(*self.contrast_range) if coin() else None,
            "saturation": rnd.uniform(*self.saturation_range) if coin() else None,
            "hue": rnd.randint(-self.hue_delta, max(self.hue_delta - 1, -self.hue_delta)) if coin() else None,
        }

    @staticmethod
    def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(self, img: np.ndarray, beta=None, contrast_first=True, alpha=None, saturation=None, hue=None,
              **params: Any) -> np.ndarray:
        if img.dtype != np.uint8:
            raise TypeError(f"PhotoMetricDistortion expects a uint8 image, got {img.dtype}")
        if beta is not None:
            img = self._convert(img, beta=beta)
        if contrast_first and alpha is not None:
            img = self._convert(img, alpha=alpha)
        if saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:  # a round trip of its own, as mmseg's (one shared one rounded once: 2 levels apart)
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int32) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and alpha is not None:
            img = self._convert(img, alpha=alpha)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


class DepthColorAug(A.ImageOnlyTransform):
    """Colour augmentation of the depth toolboxes: ``x ** gamma``, ``x brightness``, ``x colour``
    per channel, then clip.

    ``gamma_on="0-255"`` (default) is the Monocular-Depth-Estimation-Toolbox ``ColorAug`` that the
    released DINOv2 depth heads were trained with: the gamma acts on pixel values in 0-255
    (``image ** gamma`` on the 8-bit image), then the result is clipped to 0-255, so a gamma above 1
    brightens and saturates strongly. ``gamma_on="unit"`` is BTS's ``augment_image``, on [0, 1].
    """

    def __init__(self, gamma_range: Sequence[float] = (0.9, 1.1), brightness_range: Sequence[float] = (0.75, 1.25),
                 color_range: Sequence[float] = (0.9, 1.1), gamma_on: str = "0-255", p: float = 0.5):
        super().__init__(p=p)
        if gamma_on not in ("0-255", "unit"):
            raise ValueError(f"gamma_on={gamma_on!r}: use '0-255' (the depth toolbox) or 'unit' (BTS)")
        self.gamma_range, self.brightness_range = tuple(gamma_range), tuple(brightness_range)
        self.color_range = tuple(color_range)
        self.gamma_on = gamma_on

    def get_params(self) -> dict[str, Any]:
        rnd = self.py_random
        return {"gamma": rnd.uniform(*self.gamma_range), "brightness": rnd.uniform(*self.brightness_range),
                "colors": np.array([rnd.uniform(*self.color_range) for _ in range(3)], np.float32)}

    def apply(self, img: np.ndarray, gamma: float = 1.0, brightness: float = 1.0, colors=None,
              **params: Any) -> np.ndarray:
        top = 255.0 if self.gamma_on == "0-255" else 1.0
        x = img.astype(np.float64) * (top / 255.0) if img.dtype == np.uint8 else img.astype(np.float64) * top
        x = np.power(x, gamma) * (brightness * (colors if colors is not None else 1.0))
        x = np.clip(x, 0.0, top) / top
        return (x * 255.0 + 0.5).astype(np.uint8) if img.dtype == np.uint8 else x.astype(np.float32)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("gamma_range", "brightness_range", "color_range", "gamma_on")


# -- seeding -----------------------------------------------------------------------------------
def seed_pipeline(pipeline: A.BaseCompose, seed: int | None) -> A.BaseCompose:
    """Seed a Compose and each of its transforms from independent streams derived from ``seed``."""
    if seed is None:
        pipeline.set_random_seed(None)
        return pipeline
    states = np.random.SeedSequence(int(seed)).generate_state(len(pipeline.transforms) + 1, np.uint32)
    pipeline.random_generator = np.random.default_rng(int(states[0]))
    pipeline.py_random = random.Random(int(states[0]))
    pipeline.seed = int(seed)
    for transform, s in zip(pipeline.transforms, states[1:]):
        if isinstance(transform, A.BaseCompose):
            seed_pipeline(transform, int(s))
        else:
            transform.set_random_seed(int(s))
    return pipeline


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the worker's copy of ``dataset.transform`` from the
    worker's torch seed (itself drawn from the DataLoader's ``generator``: reproducible runs)."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, A.BaseCompose):
        seed_pipeline(transform, torch.initial_seed() % 2**32)


def _compose(transforms: list, seed: int | None) -> A.Compose:
    return seed_pipeline(A.Compose(transforms), seed)


# -- pipelines ---------------------------------------------------------------------------------
def seg_train_pipeline(crop_size: int | Sequence[int] = 512, scale: Sequence[int] = (2048, 512),
                       ratio_range: Sequence[float] | None = (0.5, 2.0), cat_max_ratio: float = 0.75,
                       ignore_index: int = 255, flip_prob: float = 0.5, photometric: bool = True,
                       pad_value: int | Sequence[int] = MEAN_COLOR, seed: int | None = None) -> A.Compose:
    """Official segmentation training augmentation (ADE20K linear: rescale to (2048, 512) x U(0.5, 2),
    crop 512 with cat_max_ratio 0.75, flip 0.5, photometric distortion, pad to 512 at the bottom
    and right: image with ``pad_value``, labels with ``ignore_index``)."""
    ch, cw = _pair(crop_size)
    transforms = [
        RandomRescale(scale, ratio_range),
        CatMaxRandomCrop(ch, cw, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        A.HorizontalFlip(p=flip_prob),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    transforms.append(A.PadIfNeeded(min_height=ch, min_width=cw, position="top_left", border_mode=cv2.BORDER_CONSTANT,
                                    fill=pad_value, fill_mask=ignore_index))
    return _compose(transforms, seed)


def seg_test_pipeline(scale: Sequence[int] | None = (2048, 512), resize_mask: bool = False) -> A.Compose:
    """Official segmentation test transform: rescale keeping the aspect ratio to fit ``scale``
    (None: keep the size). The label map stays at its original size by default, since the
    protocol resizes predictions back and scores them at the original resolution."""
    transforms = [] if scale is None else [RandomRescale(scale, ratio_range=None, resize_mask=resize_mask)]
    return _compose(transforms, 0)


def depth_train_pipeline(crop_size: int | Sequence[int] = (416, 544), rotate_degree: float = 2.5,
                         rotate_prob: float = 0.5, flip_prob: float = 0.5, color_prob: float = 0.5,
                         gamma_range: Sequence[float] = (0.9, 1.1), brightness_range: Sequence[float] = (0.75, 1.25),
                         color_range: Sequence[float] = (0.9, 1.1), gamma_on: str = "0-255",
                         pre_crop: Sequence[int] | None = None, seed: int | None = None) -> A.Compose:
    """Depth training augmentation of the released DINOv2 depth configs (the depth toolbox's
    NYUCrop / KBCrop, RandomRotate(0.5, 2.5), RandomFlip(0.5), RandomCrop, ColorAug(0.5)); NYU
    defaults; KITTI: crop (352, 704), brightness (0.9, 1.1) (its data set applies the KB crop).

    ``pre_crop=(top, bottom, left, right)`` cuts the image and depth first, as the toolbox's NYUCrop
    (45, 472, 43, 608) does on 480x640 NYU frames (other sizes are left alone). Rotation resamples
    depth by nearest neighbour and fills 0 (invalid); images smaller than the crop are padded
    (image 0, depth 0 = invalid). ``gamma_on``: see :class:`DepthColorAug`."""
    ch, cw = _pair(crop_size)
    transforms = []
    if pre_crop is not None:
        top, bottom, left, right = (int(v) for v in pre_crop)
        transforms.append(FixedCrop(top, bottom, left, right))
    if rotate_degree > 0 and rotate_prob > 0:
        transforms.append(A.Rotate(limit=(-rotate_degree, rotate_degree), interpolation=cv2.INTER_LINEAR,
                                   mask_interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT,
                                   fill=0, fill_mask=0, p=rotate_prob))
    transforms += [
        A.HorizontalFlip(p=flip_prob),
        A.RandomCrop(ch, cw, pad_if_needed=True, pad_position="top_left", border_mode=cv2.BORDER_CONSTANT,
                     fill=0, fill_mask=0),
        DepthColorAug(gamma_range, brightness_range, color_range, gamma_on=gamma_on, p=color_prob),
    ]
    return _compose(transforms, seed)


class FixedCrop(A.DualTransform):
    """Cut rows ``top:bottom`` and columns ``left:right`` from image and mask when the image holds
    them (the depth toolbox's NYUCrop on 480x640 frames); smaller images pass unchanged."""

    def __init__(self, top: int, bottom: int, left: int, right: int, p: float = 1.0):
        super().__init__(p=p)
        self.top, self.bottom, self.left, self.right = top, bottom, left, right

    def _cut(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] < self.bottom or x.shape[1] < self.right:
            return x
        return np.ascontiguousarray(x[self.top : self.bottom, self.left : self.right])

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return self._cut(img)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        return self._cut(mask)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("top", "bottom", "left", "right")


def depth_test_pipeline(scale: Sequence[int] | None = None) -> A.Compose:
    """Depth test transform: identity by default (the toolboxes test at full resolution); ``scale``
    rescales the image only, keeping the aspect ratio; ground truth stays at its size."""
    transforms = [] if scale is None else [RandomRescale(scale, ratio_range=None, resize_mask=False)]
    return _compose(transforms, 0)
