"""Multi-crop augmentation of DINOv2 pretraining, on albumentations (no torchvision).

DINOv2 ("DINOv2: Learning Robust Visual Features without Supervision", Oquab et al., 2023) keeps
the multi-crop recipe of DINO (Caron et al., 2021) and BYOL (Grill et al., 2020, table 6). From
one image it makes two global crops (scale 0.32-1, 224 pixels) and ``local_crops_number`` local
crops (scale 0.05-0.32, 96 pixels), each:

* random resized crop (area fraction in ``*_crops_scale``, aspect 3/4-4/3), bicubic, and a
  horizontal flip with probability 0.5;
* colour jitter (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1) with probability 0.8,
  then grey with probability 0.2;
* Gaussian blur (9-pixel kernel, sigma 0.1-2.0) with probability 1.0 on global crop 1, 0.1 on
  global crop 2 and 0.5 on local crops; global crop 2 is also solarised (threshold 128) with
  probability 0.2;
* ImageNet normalisation: ``(x / 255 - mean) / std``.

**The blur of the released code.** The official ``GaussianBlur`` passes ``1 - p`` to torchvision's
``RandomApply``, which already takes the probability of *applying*: the released DINOv2 (and
DINOv3) models were trained with blur probabilities 0.0 / 0.9 / 0.5, not the 1.0 / 0.1 / 0.5 their
code names (facebookresearch/dinov2 pull request 411, dinov3 issue 286). The default here is the
recipe as named and published; ``blur_probabilities=RELEASED_BLUR_PROBABILITIES`` reproduces what
the released models saw.

**Differences from torchvision that remain.** Crop boxes are drawn by albumentations (the same
algorithm as torchvision: area, log-aspect, ten tries, then a centre crop) and resampled with
Pillow's bicubic filter exactly as torchvision resizes a PIL image (antialiased when shrinking),
so a given box gives torchvision's pixels. Solarisation (pixels >= 128 inverted), grey
(ITU-R 601 weights, 3 channels), blur (9-tap kernel, reflected border) and normalisation match up
to 8-bit rounding. Colour jitter differs slightly: albumentations takes the contrast pivot as the
exact mean grey level (Pillow rounds it to an integer) and shifts hue in OpenCV's 8-bit HSV
(hue in 180 steps of 2 degrees; Pillow uses 256 steps), and it draws all four factors and their
order with its own generators. The random streams themselves are albumentations' and ours, so
outputs are reproducible by seed but never equal torchvision's draws.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import albumentations as A
import numpy as np
import torch

from dinov2_dense.data import pipelines
from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

#: Gaussian-blur probabilities (global crop 1, global crop 2, local crops) of the published recipe.
PAPER_BLUR_PROBABILITIES = (1.0, 0.1, 0.5)
#: The probabilities the released DINOv2 code applies (its ``GaussianBlur`` inverts ``p``).
RELEASED_BLUR_PROBABILITIES = (0.0, 0.9, 0.5)


class BicubicRandomResizedCrop(A.RandomResizedCrop):
    """albumentations' ``RandomResizedCrop`` (torchvision's box sampling) resampled with Pillow's
    bicubic filter, as torchvision resizes a PIL image: antialiased when shrinking, unlike
    OpenCV's ``INTER_CUBIC``. Images only (uint8 ``(H, W, 3)``)."""

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        from PIL import Image

        x0, y0, x1, y1 = crop_coords
        crop = Image.fromarray(np.ascontiguousarray(img[y0:y1, x0:x1]))
        return np.asarray(crop.resize((self.size[1], self.size[0]), Image.Resampling.BICUBIC))


def _rgb_uint8(image: Any) -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` from an array (grey repeated, alpha dropped) or a PIL image."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if image.dtype != np.uint8:
        raise TypeError(f"DataAugmentationDINO expects a uint8 image, got {image.dtype} (read images with "
                        "dinov2_dense.images.decode_image(path, 'rgb'))")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"DataAugmentationDINO expects an image (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


class DataAugmentationDINO:
    """The DINOv2 multi-crop augmentation (see the module docstring for the recipe and how it
    differs from the torchvision original).

    Args:
        global_crops_scale: area fraction of the image that a global crop covers, ``(min, max)``.
        local_crops_scale: the same for local crops.
        local_crops_number: local crops per image (0 for none).
        global_crops_size, local_crops_size: output sizes in pixels (square).
        blur_probabilities: Gaussian-blur probabilities of (global crop 1, global crop 2, local
            crops); :data:`RELEASED_BLUR_PROBABILITIES` for the released models' behaviour.
        color_jitter: strengths (brightness, contrast, saturation, hue) of the colour jitter, as
            torchvision's ``ColorJitter`` (factors in ``1 -/+ s``, hue shift up to ``h`` of the
            circle, at most 0.5); the recipe's (0.4, 0.4, 0.2, 0.1).
        color_jitter_probability, grayscale_probability: how often each applies (0.8, 0.2). Where
            colour does not tell the classes apart (only texture or shape do), stronger colour
            augmentation makes the views agree on something else.
        seed: seeds every random draw (None: fresh entropy); see :meth:`set_random_seed`.

    Called on a uint8 RGB image ``(H, W, 3)`` (grey and RGBA are converted; PIL images too), it
    returns ``{"global_crops": [2 x (3, G, G)], "global_crops_teacher": the same two tensors,
    "local_crops": [local_crops_number x (3, L, L)], "offsets": ()}`` of float32 tensors.
    """

    def __init__(self, global_crops_scale: Sequence[float] = (0.32, 1.0),
                 local_crops_scale: Sequence[float] = (0.05, 0.32), local_crops_number: int = 8,
                 global_crops_size: int = 224, local_crops_size: int = 96,
                 blur_probabilities: Sequence[float] = PAPER_BLUR_PROBABILITIES, seed: int | None = None,
                 color_jitter: Sequence[float] = (0.4, 0.4, 0.2, 0.1), color_jitter_probability: float = 0.8,
                 grayscale_probability: float = 0.2):
        for name, (lo, hi) in (("global_crops_scale", global_crops_scale), ("local_crops_scale", local_crops_scale)):
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"DataAugmentationDINO: {name}={tuple((lo, hi))}, expected 0 < min <= max <= 1")
        if local_crops_number < 0 or global_crops_size < 1 or local_crops_size < 1:
            raise ValueError(f"DataAugmentationDINO: local_crops_number={local_crops_number}, global_crops_size="
                             f"{global_crops_size}, local_crops_size={local_crops_size}: expected >= 0, >= 1, >= 1")
        if len(blur_probabilities) != 3 or not all(0 <= p <= 1 for p in blur_probabilities):
            raise ValueError(f"DataAugmentationDINO: blur_probabilities={tuple(blur_probabilities)}, expected three "
                             "probabilities (global crop 1, global crop 2, local crops)")
        if len(color_jitter) != 4 or not all(0 <= v <= 1 for v in color_jitter[:3]) or not 0 <= color_jitter[3] <= 0.5:
            raise ValueError(f"DataAugmentationDINO: color_jitter={tuple(color_jitter)}, expected (brightness, contrast, "
                             "saturation, hue) with the first three in [0, 1] and hue in [0, 0.5]")
        if not (0 <= color_jitter_probability <= 1 and 0 <= grayscale_probability <= 1):
            raise ValueError(f"DataAugmentationDINO: color_jitter_probability={color_jitter_probability}, "
                             f"grayscale_probability={grayscale_probability}: expected probabilities in [0, 1]")
        self.color = (tuple(float(v) for v in color_jitter), float(color_jitter_probability), float(grayscale_probability))
        self.global_crops_scale = tuple(global_crops_scale)
        self.local_crops_scale = tuple(local_crops_scale)
        self.local_crops_number = int(local_crops_number)
        self.global_crops_size = int(global_crops_size)
        self.local_crops_size = int(local_crops_size)
        self.blur_probabilities = tuple(float(p) for p in blur_probabilities)
        logger.info("DataAugmentationDINO: global crops %s at %d px, %d local crops %s at %d px, blur p %s",
                    self.global_crops_scale, self.global_crops_size, self.local_crops_number,
                    self.local_crops_scale, self.local_crops_size, self.blur_probabilities)

        blur_global1, blur_global2, blur_local = self.blur_probabilities
        self.global_transfo1 = self._pipeline(global_crops_size, global_crops_scale, blur_global1, self.color)
        self.global_transfo2 = self._pipeline(global_crops_size, global_crops_scale, blur_global2, self.color,
                                              solarize=0.2)
        self.local_transfo = self._pipeline(local_crops_size, local_crops_scale, blur_local, self.color)
        self._mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        self._worker_seed: int | None = None
        self.set_random_seed(seed)

    @staticmethod
    def _pipeline(size: int, scale: Sequence[float], blur: float, color: tuple, solarize: float = 0.0) -> A.Compose:
        """Crop and flip, colour jitter, grey, blur (and solarisation), on uint8 RGB; ``color``:
        ((brightness, contrast, saturation, hue), jitter probability, grey probability)."""
        (b, c, s, h), p_jitter, p_grey = color
        transforms = [
            BicubicRandomResizedCrop(size=(size, size), scale=tuple(scale)),
            A.HorizontalFlip(p=0.5),
            A.ColorJitter(brightness=(1 - b, 1 + b), contrast=(1 - c, 1 + c), saturation=(1 - s, 1 + s), hue=(-h, h),
                          p=p_jitter),
            A.ToGray(num_output_channels=3, method="weighted_average", p=p_grey),
            A.GaussianBlur(blur_limit=(9, 9), sigma_limit=(0.1, 2.0), p=blur),
        ]
        if solarize:
            transforms.append(A.Solarize(threshold_range=(0.5, 0.5), p=solarize))  # 0.5 * 255: pixels >= 128
        return A.Compose(transforms)

    def set_random_seed(self, seed: int | None) -> None:
        """Seed the three crop pipelines, each transform from its own stream
        (:func:`dinov2_dense.data.pipelines.seed_pipeline`); None draws fresh entropy. In DataLoader
        workers the augmentation reseeds itself from each worker's seed on its first call, so
        workers never repeat each other and a seeded loader ``generator`` makes runs reproducible;
        a seed given in a worker stands (the pretraining loader seeds every sample by its position)."""
        info = torch.utils.data.get_worker_info()
        self._worker_seed = info.seed if info is not None else None
        pipes = (self.global_transfo1, self.global_transfo2, self.local_transfo)
        if seed is None:
            seeds: list[int | None] = [None] * len(pipes)
        else:
            seeds = [int(s) for s in np.random.SeedSequence(int(seed)).generate_state(len(pipes), np.uint32)]
        for pipe, s in zip(pipes, seeds):
            pipelines.seed_pipeline(pipe, s)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``(H, W, 3)`` -> float32 ``(3, H, W)``, ``(x / 255 - mean) / std`` (ImageNet)."""
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
        return x.sub_(self._mean).div_(self._std)

    def _reseed_in_worker(self) -> None:
        """In a DataLoader worker, reseed once from the worker's seed (drawn from the loader's
        generator, different per worker): forked copies would otherwise repeat the same crops."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker_seed != info.seed:
            self.set_random_seed(info.seed % 2**32)
            self._worker_seed = info.seed

    def __call__(self, image: Any) -> dict[str, Any]:
        self._reseed_in_worker()
        image = _rgb_uint8(image)
        global_crops = [self.normalize(self.global_transfo1(image=image)["image"]),
                        self.normalize(self.global_transfo2(image=image)["image"])]
        local_crops = [self.normalize(self.local_transfo(image=image)["image"]) for _ in range(self.local_crops_number)]
        return {"global_crops": global_crops, "global_crops_teacher": global_crops, "local_crops": local_crops,
                "offsets": ()}

    def __repr__(self) -> str:
        return (f"DataAugmentationDINO(global_crops_scale={self.global_crops_scale}, local_crops_scale="
                f"{self.local_crops_scale}, local_crops_number={self.local_crops_number}, global_crops_size="
                f"{self.global_crops_size}, local_crops_size={self.local_crops_size}, blur_probabilities="
                f"{self.blur_probabilities})")


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the worker's copy of ``dataset.transform`` from the
    worker's torch seed. Handles anything with ``set_random_seed`` (:class:`DataAugmentationDINO`
    also does it by itself) and otherwise defers to :func:`dinov2_dense.data.pipelines.seed_worker`.
    Python's ``random``, which masking and collation use, is seeded in each worker by PyTorch."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and not isinstance(transform, A.BaseCompose) and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)
    else:
        pipelines.seed_worker(worker_id)
