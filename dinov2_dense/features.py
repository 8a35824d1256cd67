"""Dense DINOv2 features of images of any size.

Size policy (explicit, ``fit=``):

* ``"pad"`` (default, the official segmentation and depth protocols): the normalised image is
  padded with zeros (the mean colour) to the next multiple of the patch size, split evenly
  between the two sides (centre padding, e.g. 512 -> 518 adds 3 pixels each side). The patch
  grid is ``ceil(H / 14) x ceil(W / 14)`` and covers the whole image; ``DenseFeatures.padding``
  records the pixels added.
* ``"resize"``: the image is resized (bilinear, antialiased) to the nearest multiple of the patch
  size on each side; no padding.

``size=`` optionally resizes first: an int sets the shorter side (aspect kept), a pair sets
(H, W). ``tile=`` runs the backbone on overlapping tiles of that many pixels and averages the
overlapping patch features: memory is bounded by the tile, not the image, at the price of
attention that only sees one tile (class and register tokens are then the mean over tiles).

Inputs: file paths (``"skimage:astronaut"`` names a scikit-image sample), numpy arrays or PIL
images are raw images: grayscale, RGBA (alpha dropped) and 16-bit are converted to RGB in [0, 1]
and normalised with the ImageNet mean and std. A torch tensor (3, H, W) or (B, 3, H, W) is taken
as already normalised. Files are read by :mod:`dinov2_dense.images`: upright (EXIF orientation
applied) and within its pixel limit; arrays and PIL images are taken as they are.

Settings: the keywords of :func:`extract_features` (layers, fit, size, norm, tiling, batch size,
autocast, 8-bit resize) also travel as one :class:`FeatureOptions` value (``options=``), which the PCA maps pass on.

Memory: a list of inputs is checked up front (files: their headers only), grouped by size, and
decoded one batch at a time when that batch runs; with ``size=`` each image is resized as it is
decoded, so a batch holds ``batch_size`` images at the working size, not at full resolution.

8-bit resize (``resize_8bit=True``, off by default): with ``size=``, 8-bit images are resized in
8 bits on the CPU (torch's uint8 bilinear antialiased kernel, channels-last), rounded to whole
grey levels as any 8-bit resize (e.g. PIL's), then normalised: about 4x faster
than the float resize, within about one grey level of it, so every feature changes slightly.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import decode_image, image_size

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Any  # str | os.PathLike | np.ndarray | PIL.Image.Image | Tensor


# -- image loading ------------------------------------------------------------------------
def load_image(source: ImageLike) -> np.ndarray:
    """Read an image as float32 RGB (H, W, 3) in [0, 1]: paths, ``skimage:NAME``, arrays, PIL images."""
    name = str(source) if isinstance(source, (str, os.PathLike)) else None
    array = load_array(source)
    try:
        return to_rgb_float(array)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}" if name else str(exc)) from None


def is_pil_image(source: Any) -> bool:
    """Whether ``source`` is a PIL image (told without importing PIL; a tensor has a ``mode`` method, not a name)."""
    return isinstance(getattr(source, "mode", None), str) and hasattr(source, "size")


def load_array(source: ImageLike) -> np.ndarray:
    """An image input as an array in its own dtype and channels (what :func:`load_image` converts):
    files decoded upright by :func:`dinov2_dense.images.decode_image`, arrays as given, PIL images
    as arrays (palette and CMYK modes expanded to RGB(A), 16-bit kept)."""
    if isinstance(source, (str, os.PathLike)):
        return _read_file(str(source))
    if isinstance(source, np.ndarray):
        return source
    if isinstance(source, Tensor):  # (it has a .mode and a .size too)
        raise TypeError("a torch tensor is no image file, array or PIL image: this reads pixels as stored (figures "
                        "show them); pass a tensor of normalised images to extract_features, or the image itself "
                        "(a file, an array, a PIL image) here")
    if is_pil_image(source):
        return _from_pil(source)
    raise TypeError(f"cannot read an image from a {type(source).__name__}")


def input_names(items: Sequence[ImageLike]) -> list[str]:
    """How messages name each input: a path as given, anything else ``image <index>``."""
    return [str(x) if isinstance(x, (str, os.PathLike)) else f"image {i}" for i, x in enumerate(items)]


def check_input(source: ImageLike) -> tuple[int, int]:
    """Check an image input as cheaply as it can be, and return its (H, W): a file's header
    (upright size, pixel limit; no pixels decoded), an array's shape and values, a tensor's shape
    and dtype.

    Raises what :func:`load_image` (or :func:`to_input_tensor` for tensors) would raise for the
    same input, so a list can be checked before any model work.
    """
    if isinstance(source, Tensor):
        to_input_tensor(source)  # shape and dtype checks, no copy
        return int(source.shape[-2]), int(source.shape[-1])
    if isinstance(source, (str, os.PathLike)):
        return image_size(source)
    array = load_array(source)  # arrays as given, PIL images as arrays
    rgb, _ = _checked_rgb(array)
    return int(rgb.shape[0]), int(rgb.shape[1])


def _read_file(path: str) -> np.ndarray:
    return decode_image(path, "unchanged")  # also the scikit-image samples, skimage:NAME


def _from_pil(image) -> np.ndarray:
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    array = np.array(image)  # (writable: np.asarray's view of the image's bytes is read-only, which torch warns of)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array.astype(np.uint16) if image.mode.startswith("I;16") else np.clip(array, 0, 65535).astype(np.uint16)
    return array


def _checked_rgb(array: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Check a raw image: its (H, W, 1|3) colour channels (alpha dropped, native byte order) and
    the divisor that maps its values to [0, 1] (None: bool or float data, taken as they are)."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian 16-bit data stays 16-bit
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image of shape {array.shape}: expected (H, W) or (H, W, 1|2|3|4)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image of shape {array.shape} is empty")
    if array.shape[2] in (2, 4):
        array = array[..., :-1]  # drop alpha
    if array.dtype == np.uint8:
        return array, 255.0
    if array.dtype == np.uint16:
        return array, 65535.0
    if array.dtype == np.bool_:
        return array, None
    if np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("float image holds NaN or infinite values")
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"float image values span [{lo:g}, {hi:g}]; expected [0, 1] (divide 8-bit data by 255)")
        return array, None
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer image values span [{lo}, {hi}]; expected 8-bit or 16-bit data")
        return array, 255.0 if hi <= 255 else 65535.0
    raise ValueError(f"unsupported image dtype {array.dtype}")


def to_rgb_float(array: np.ndarray) -> np.ndarray:
    """Any (H, W), (H, W, 1|2|3|4) array of uint8 / uint16 / bool / float to RGB float32 in [0, 1].

    Floats are taken as [0, 1] (small overshoots, e.g. from bicubic resampling, are clipped);
    other integers as 8-bit when they fit, else 16-bit. Values that fit neither raise.
    """
    array, scale = _checked_rgb(array)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    out = array.astype(np.float32)  # one full-size float copy, then in place
    if np.issubdtype(array.dtype, np.floating):
        np.clip(out, 0.0, 1.0, out=out)
    elif scale is not None:  # not bool
        out /= scale
    return np.ascontiguousarray(out)


def normalize(image: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """RGB float (H, W, 3) in [0, 1] -> normalised (3, H, W) tensor."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    return (t - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def to_input_tensor(source: ImageLike) -> Tensor:
    """(3, H, W) normalised tensor from any image source (tensors pass through unchanged)."""
    if isinstance(source, Tensor):
        if source.ndim != 3 or source.shape[0] != 3:
            raise ValueError(f"image tensor of shape {tuple(source.shape)}: expected (3, H, W), normalised")
        _check_normalised(source, values=True)
        return source
    return normalize(load_image(source))


@contextmanager
def kept_modes(module: nn.Module) -> Iterator[nn.Module]:
    """Give every submodule of ``module`` back the train / eval mode it had when the block ends, however
    the block changed them (each flag as it was, so a frozen backbone in eval mode under a head in train
    mode comes back so too)."""
    modes = [(m, m.training) for m in module.modules()]
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


def _check_normalised(x: Tensor, where: str = "image tensor",
                      instead: str = "pass the array (or normalize(load_image(...))) instead", values: bool = False) -> None:
    """Tensors are taken as ImageNet-normalised floats (values about -2.1 to 2.6): integer tensors are refused,
    and with ``values`` (a tensor the caller gave, not a batch decoded here) an empty batch, and on the CPU (on a
    GPU the check would stall it before each forward) NaN or infinite values and values beyond +-10 (pixel levels
    0-255 as floats). (Images in [0, 1] that were not normalised cannot be told from dim normalised ones, hazy
    photos say: nothing is said of them.)"""
    if not x.is_floating_point():
        raise ValueError(f"{where} of dtype {x.dtype}: tensors are taken as ImageNet-normalised floats; {instead}")
    if values and x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"{where} of shape {tuple(x.shape)}: an empty batch, no image")
    if not values or x.numel() == 0 or x.device.type != "cpu":  # (on a GPU the check would stall it)
        return
    low, high = (float(v) for v in torch.aminmax(x.detach()))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{where} with NaN or infinite values: tensors are taken as ImageNet-normalised floats; "
                         f"{instead}")
    if high > 10 or low < -10:
        raise ValueError(f"{where} with values from {low:g} to {high:g}: tensors are taken as ImageNet-normalised "
                         f"floats (about -2.1 to 2.6); {instead}")


# -- geometry -----------------------------------------------------------------------------
def center_pad(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Zero-pad (..., H, W) to multiples of ``multiple``, split evenly (the official CenterPadding).

    Returns the padded tensor and (top, bottom, left, right).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        x = F.pad(x, (pad[2], pad[3], pad[0], pad[1]))
    return x, pad


def rescale_size(h: int, w: int, scale: Sequence[int], ratio: float = 1.0) -> tuple[int, int]:
    """(H, W) of an image rescaled, keeping its aspect ratio, to fit ``scale`` = (long, short) edge
    bounds times ``ratio``: mmcv's ``imrescale`` rule, which mmseg's ``Resize(img_scale=...,
    keep_ratio=True)`` and ``MultiScaleFlipAug(img_ratios=...)`` use. The bounds are
    ``(int(long * ratio), int(short * ratio))``, the factor ``min(long' / max(h, w), short' / min(h, w))``
    and each side is rounded as ``int(side * factor + 0.5)``."""
    long_edge, short_edge = int(max(scale) * ratio), int(min(scale) * ratio)
    f = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def _target_size(h: int, w: int, size: int | Sequence[int] | None) -> tuple[int, int]:
    if size is None:
        return h, w
    if isinstance(size, int):
        scale = size / min(h, w)
        return max(1, round(h * scale)), max(1, round(w * scale))
    th, tw = size
    return int(th), int(tw)


def _resize(x: Tensor, hw: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def _tile_starts(grid: int, tile: int, stride: int) -> list[int]:
    if grid <= tile:
        return [0]
    starts = list(range(0, grid - tile + 1, stride))
    if starts[-1] != grid - tile:
        starts.append(grid - tile)
    return starts


# -- features -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureOptions:
    """How images become features: the settings of :func:`extract_features` as one value, which
    PCA maps and videos pass on whole (``options=``) instead of as loose arguments.

    layers: None (last block), an int n (the last n blocks) or block indices (negative from the
    end). fit: "pad" or "resize" to the patch grid. size: resize first (an int shorter side, or
    (H, W)). norm: the final LayerNorm on each layer. tile, tile_overlap: tiled mode, in pixels.
    batch_size: images per forward pass. autocast: False, True (bfloat16) or a dtype.
    resize_8bit: with ``size``, resize 8-bit images in 8 bits (see the module docstring; default
    False: the float resize).
    The checks that need no model run on construction; :meth:`check` adds the patch size's.
    """

    layers: int | tuple[int, ...] | None = None
    fit: str = "pad"
    size: int | tuple[int, int] | None = None
    norm: bool = True
    tile: int | None = None
    tile_overlap: int | None = None
    batch_size: int = 8
    autocast: bool | torch.dtype = False
    resize_8bit: bool = False

    def __post_init__(self) -> None:
        for name in ("layers", "size"):  # lists as tuples: the options stay hashable and unchanged
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.fit not in ("pad", "resize"):
            raise ValueError(f"fit must be 'pad' or 'resize', got {self.fit!r}")
        size = self.size
        whole = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1  # noqa: E731
        if size is not None and not (whole(size) or (isinstance(size, tuple) and len(size) == 2
                                                     and all(whole(v) for v in size))):
            raise ValueError(f"size={size!r}: expected None, a positive integer (the shorter side) or two "
                             "(height, width)")
        if size is not None:  # numpy integers as ints
            object.__setattr__(self, "size", int(size) if whole(size) else tuple(int(v) for v in size))
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: must be at least 1")

    def check(self, patch_size: int) -> None:
        """Raise ValueError for a tile smaller than a patch, or an overlap of a whole tile or more."""
        p, tile, overlap = patch_size, self.tile, self.tile_overlap
        if tile is not None and tile < p:
            raise ValueError(f"tile={tile} is smaller than one patch ({p} pixels)")
        if tile is not None and overlap is not None and not 0 <= overlap // p < tile // p:
            raise ValueError(f"tile_overlap={overlap}: must be >= 0 and, in whole patches, less than tile={tile}")


def feature_options(options: FeatureOptions | None, **settings: Any) -> FeatureOptions:
    """The settings of one call: ``options``, else ``FeatureOptions(**settings)``.

    ``settings`` are the caller's settings keywords. With ``options`` they must stay at their
    defaults: each setting has one source, so none is silently dropped or overridden.
    """
    if options is None:
        return FeatureOptions(**settings)
    default = FeatureOptions()
    given = [k for k, v in settings.items() if not _is_default(v, getattr(default, k))]
    if given:
        raise ValueError(f"{', '.join(given)} given with options=: set them in the options instead "
                         "(dataclasses.replace(options, ...))")
    return options


def _is_default(value: Any, default: Any) -> bool:
    """Whether a keyword was left at its default (same object, or an equal value of the same type)."""
    return value is default or (type(value) is type(default) and value == default)


@dataclass
class DenseFeatures:
    """Features of one batch of same-sized inputs.

    maps: layer index -> (B, C, h, w) patch features.
    cls_tokens: layer index -> (B, C).  registers: layer index -> (B, R, C) (R may be 0).
    image_size: (H, W) of the input before fitting; input_size: (H', W') seen by the backbone;
    padding: (top, bottom, left, right) pixels added by ``fit="pad"`` (in input_size pixels).
    options: the :class:`FeatureOptions` they were made with (None for features built otherwise): a PCA
    basis checks them against the settings it was fitted with. Not part of equality or the repr.
    blocks: the number of blocks of the model that made them (None for features built otherwise), with
    which :meth:`upsample` takes a negative block index as ``layers=`` does. Not part of equality or the repr.
    """

    maps: dict[int, Tensor]
    cls_tokens: dict[int, Tensor]
    registers: dict[int, Tensor]
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    patch_size: int = 14
    source: list[str] = field(default_factory=list)
    options: FeatureOptions | None = field(default=None, compare=False, repr=False)
    blocks: int | None = field(default=None, compare=False, repr=False)

    @property
    def layers(self) -> list[int]:
        return list(self.maps)

    def _block(self, layer: int) -> int:
        """The key of ``maps`` for block ``layer`` (negative: from the model's end, as ``layers=`` takes it)."""
        block = layer + self.blocks if layer < 0 and self.blocks is not None else layer
        if block not in self.maps:
            of = f" of this {self.blocks}-block model" if self.blocks is not None else ""
            raise KeyError(f"block {layer}{of}: these features hold blocks {self.layers} (pass one of them, or "
                           f"extract it: layers=[{layer}])")
        return block

    def rows(self, start: int, stop: int, image_size: tuple[int, int] | None = None) -> "DenseFeatures":
        """The images ``start:stop`` of this batch (views of its tensors), whose size before fitting is
        ``image_size`` (default: the batch's)."""
        return DenseFeatures(
            maps={l: m[start:stop] for l, m in self.maps.items()},
            cls_tokens={l: c[start:stop] for l, c in self.cls_tokens.items()},
            registers={l: r[start:stop] for l, r in self.registers.items()},
            image_size=self.image_size if image_size is None else tuple(image_size),
            input_size=self.input_size,
            padding=self.padding,
            patch_size=self.patch_size,
            source=self.source[start:stop],
            options=self.options,
            blocks=self.blocks,
        )

    def upsample(self, layer: int | None = None, mode: str = "bilinear") -> Tensor:
        """(B, C, H, W) features at the image's own resolution: upsampled, padding removed."""
        layer = self.layers[-1] if layer is None else self._block(int(layer))
        fmap = self.maps[layer]
        grid_px = (fmap.shape[-2] * self.patch_size, fmap.shape[-1] * self.patch_size)
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        up = F.interpolate(fmap.float(), size=grid_px, mode=mode, **kwargs)
        t, b, l, r = self.padding
        up = up[..., t : grid_px[0] - b, l : grid_px[1] - r]
        if tuple(up.shape[-2:]) != tuple(self.image_size):
            up = F.interpolate(up, size=self.image_size, mode=mode, **kwargs)
        return up


def _run_tiled(model, x: Tensor, layers: list[int], options: FeatureOptions, progress: bool | None = None):
    """Patch maps, class and register tokens of (B, 3, H, W) ``x`` (patch multiples) from
    overlapping tiles of ``options.tile`` pixels, averaged where tiles overlap (default overlap:
    a quarter of the tile)."""
    p = model.patch_size
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    tile = options.tile
    overlap = options.tile_overlap if options.tile_overlap is not None else (tile // p // 4) * p
    t = max(1, tile // p)
    s = max(1, t - overlap // p)
    ys, xs = _tile_starts(gh, t, s), _tile_starts(gw, t, s)
    n = len(ys) * len(xs)
    sums: list[Tensor] | None = None
    count = torch.zeros(1, 1, gh, gw, device=x.device)
    cls_sum: list[Tensor] = []
    reg_sum: list[Tensor] = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc="tiles", unit="tile", leave=False, disable=n < 2 or progress is False) as bar:
        for y0 in ys:
            for x0 in xs:
                crop = x[..., y0 * p : (y0 + t) * p, x0 * p : (x0 + t) * p]
                maps, cls, regs = model.intermediate_maps(crop, layers, norm=options.norm)
                if sums is None:
                    b = x.shape[0]
                    sums = [torch.zeros(b, m.shape[1], gh, gw, device=x.device, dtype=torch.float32) for m in maps]
                    cls_sum = [torch.zeros_like(c, dtype=torch.float32) for c in cls]
                    reg_sum = [torch.zeros_like(r_, dtype=torch.float32) for r_ in regs]
                th, tw = maps[0].shape[-2:]
                for acc, m in zip(sums, maps):
                    acc[..., y0 : y0 + th, x0 : x0 + tw] += m.float()
                for acc, c in zip(cls_sum, cls):
                    acc += c.float()
                for acc, r_ in zip(reg_sum, regs):
                    acc += r_.float()
                count[..., y0 : y0 + th, x0 : x0 + tw] += 1
                bar.update(1)
    return [s_ / count for s_ in sums], [c / n for c in cls_sum], [r_ / n for r_ in reg_sum]


# -- speed warnings -----------------------------------------------------------------------
class PerformanceWarning(UserWarning):
    """A run that will be much slower than it needs to be; the message says what to change."""


LARGE_FORWARD_TOKENS = 16384
MAX_FORWARD_TOKENS = 2**20  # a 14336x14336 image: refused untiled
"""Patch tokens above which one untiled CPU forward pass is announced as slow: attention grows
with the square of the tokens (16k tokens take minutes on ViT-S/14, longer on larger models)."""

_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags / Arm "Features" of /proc/cpuinfo
_warned_bf16 = False


def _bf16_in_cpuinfo(text: str) -> bool:
    """Whether /proc/cpuinfo text lists a native bfloat16 instruction set (flags or Features lines)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and _BF16_FLAGS & set(value.split()):
            return True
    return False


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX-BF16, Arm BF16); without it
    PyTorch emulates bfloat16 on the CPU and ``autocast=True`` runs 3-4x slower than float32.

    Asks PyTorch's CPU probes where it has them, then /proc/cpuinfo (Linux), then sysctl (macOS).
    """
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        try:
            if getattr(torch.cpu, probe)():
                return True
        except Exception:  # a private probe that moved or failed: ask the OS instead
            pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return _bf16_in_cpuinfo(f.read())
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                 timeout=5)
            return out.stdout.strip() == "1"
        except (OSError, subprocess.SubprocessError):
            pass
    return False


def _caller_level() -> int:
    """The ``stacklevel`` for a warning raised by the function calling this one: the first frame
    outside this module and torch's decorators (the user's call of :func:`extract_features` or
    :func:`feature_batches`)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (frame.f_code.co_filename == __file__ or frame.f_code.co_filename.endswith(
            os.path.join("torch", "utils", "_contextlib.py"))):
        frame, level = frame.f_back, level + 1
    return level


def _warn_slow_bf16(device: torch.device, autocast: bool | torch.dtype) -> None:
    """Warn once per process when bfloat16 autocast runs on a CPU that emulates bfloat16."""
    global _warned_bf16
    dtype = torch.bfloat16 if autocast is True else autocast
    if _warned_bf16 or not autocast or device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_native_bf16():
        return
    _warned_bf16 = True
    warnings.warn(
        "bfloat16 autocast on a CPU without native bfloat16 (no AVX512-BF16 or AMX): PyTorch emulates it, "
        "typically 3-4x slower than float32; leave autocast off on this machine",
        PerformanceWarning, stacklevel=_caller_level(),
    )


def check_on_grid(sizes: Sequence[int], patch: int, what: str) -> None:
    """Refuse image sides off the patch grid where images are resized to a fixed size before the model
    (knn, curation): each image would be resized twice, to the size and then onto the grid, into other
    features than one resize to the grid gives. ``what`` names the setting (``"size=50"``, ``"--size 50"``)."""
    if any(v % patch for v in sizes):
        near = sorted({max(patch, v // patch * patch) for v in sizes} | {-(-v // patch) * patch for v in sizes})
        raise ValueError(f"{what}: not a multiple of the model's patch size {patch} (each image would be resized "
                         f"twice: to the size, then onto the patch grid); use {' or '.join(map(str, near))}")


def _grid(h: int, w: int, size, fit: str, p: int) -> tuple[int, int]:
    """Patch grid (h, w) that an image of (h, w) pixels gets under ``size`` and ``fit`` (what
    :func:`_extract_batch` feeds the backbone, known before any pixel is decoded)."""
    th, tw = _target_size(h, w, size)
    if fit == "resize":
        return max(1, round(th / p)), max(1, round(tw / p))
    return -(-th // p), -(-tw // p)


def check_forward_tokens(sizes: dict[tuple[int, int], str], options: FeatureOptions,
                         p: int) -> tuple[tuple[int, int], str] | None:
    """Refuse an untiled forward pass of more than :data:`MAX_FORWARD_TOKENS` patch tokens (hours
    of attention; e.g. a 1x10000 strip resized to a shorter side of 56), from the inputs' sizes
    alone ((H, W) -> the name messages give the input), before any pixel is decoded. Returns the
    largest patch grid and its input's name (None when tiled: a tile bounds every pass)."""
    if options.tile is not None or not sizes:
        return None
    (gh, gw), name = max(((_grid(h, w, options.size, options.fit, p), n) for (h, w), n in sizes.items()),
                         key=lambda g: g[0][0] * g[0][1])
    if gh * gw > MAX_FORWARD_TOKENS:
        raise ValueError(f"{name}: one forward pass would take {gh * gw:,} patch tokens ({gh}x{gw}), over the "
                         f"limit of {MAX_FORWARD_TOKENS:,}: pass tile= (--tile, e.g. {32 * p}) or a smaller size= "
                         "(--size)")
    return (gh, gw), name


def check_forward_pass(sizes: dict[tuple[int, int], str], options: FeatureOptions, p: int,
                        device: torch.device) -> None:
    """:func:`check_forward_tokens`, and say up front, once, when a forward pass on the CPU will be
    very long."""
    largest = check_forward_tokens(sizes, options, p)
    if largest is None:
        return
    (gh, gw), name = largest
    if device.type == "cpu" and gh * gw > LARGE_FORWARD_TOKENS:
        warnings.warn(
            f"{name}: one forward pass of {gh * gw:,} patch tokens ({gh}x{gw}) on the CPU; attention grows with the "
            f"square of the tokens, so this can take many minutes: pass tile= (--tile, e.g. {32 * p}) to run it "
            "in tiles, or a smaller size= (--size)",
            PerformanceWarning, stacklevel=_caller_level(),
        )


# -- extraction ---------------------------------------------------------------------------
@torch.no_grad()  # not inference_mode: the features must stay usable as inputs of heads being trained
def extract_features(
    model,
    images: ImageLike | Sequence[ImageLike],
    layers: int | Sequence[int] | None = None,
    *,
    fit: str = "pad",
    size: int | Sequence[int] | None = None,
    norm: bool = True,
    tile: int | None = None,
    tile_overlap: int | None = None,
    batch_size: int = 8,
    autocast: bool | torch.dtype = False,
    progress: bool | None = None,
    options: FeatureOptions | None = None,
    num_workers: int = 0,
    resize_8bit: bool = False,
) -> DenseFeatures | list[DenseFeatures]:
    """Dense features of one image, a batch tensor, or a list of images of any sizes.

    Inference: without gradients (``torch.no_grad``) and with the model in eval mode (each module's mode given
    back afterwards), whatever the caller's settings. To train through the backbone, call its
    ``get_intermediate_layers`` (or ``intermediate_maps``) in the training step instead.

    Args:
        model: a DinoVisionTransformer (any module with ``resolve_layers``, ``intermediate_maps``,
            ``patch_size`` and parameters).
        images: a path / array / PIL image / (3, H, W) tensor -> one DenseFeatures with B=1;
            a (B, 3, H, W) normalised tensor -> one DenseFeatures with that batch;
            a list -> a list of DenseFeatures, one per image (batched internally by size). Every
            input is checked first (files by their headers), then decoded one batch at a time.
        layers: None (last block), an int n (the last n blocks, as the official code), or block
            indices (negative counts from the end).
        fit: "pad" or "resize" to the patch grid (see the module docstring).
        size: resize first: an int shorter side, or (H, W).
        norm: apply the final LayerNorm to each layer (official segmentation: True; depth: False).
        tile, tile_overlap: tiled mode, tile and overlap in pixels (rounded down to the patch grid).
        batch_size: images per forward pass for lists.
        autocast: True (bfloat16) or a dtype for torch.autocast; outputs are float32. On a CPU
            without native bfloat16 this is slower than float32 (a PerformanceWarning says so).
        progress: show a progress bar (default: over batches when there is more than one; over
            tiles when there is more than one tile). False: never.
        options: all of the settings above but ``progress`` as one :class:`FeatureOptions`
            (then leave those keywords at their defaults).
        num_workers: for lists of files, DataLoader workers that decode (and resize) the next
            batches while the model runs; pinned memory and non-blocking copies on CUDA. 0 (the
            default) decodes in this process. Results are the same either way.
        resize_8bit: with ``size``, resize 8-bit images (files, arrays, PIL images) in 8 bits on
            the CPU, as :func:`load_resized` does: about 4x faster, within about one grey level of the
            float resize; the features change slightly (default False). Tensors, 16-bit and float
            images take the float resize.
    """
    options = feature_options(options, layers=layers, fit=fit, size=size, norm=norm, tile=tile,
                              tile_overlap=tile_overlap, batch_size=batch_size, autocast=autocast,
                              resize_8bit=resize_8bit)
    if isinstance(images, Tensor) and images.ndim == 4:
        return next(feature_batches(model, images, options=options, progress=progress))[1]
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    results: list[DenseFeatures | None] = [None] * len(items)
    for chunk, feats in feature_batches(model, items, options=options, progress=progress, num_workers=num_workers):
        for k, i in enumerate(chunk):
            results[i] = feats.rows(k, k + 1)
    return results[0] if single else results  # type: ignore[return-value]


@torch.no_grad()
def feature_batches(model, images: Tensor | Sequence[ImageLike], *, options: FeatureOptions | None = None,
                    progress: bool | None = None, num_workers: int = 0) -> Iterator[tuple[list[int], DenseFeatures]]:
    """:func:`extract_features` one batch at a time, as each is computed: (the batch's positions in
    ``images``, its DenseFeatures on the model's device). A list is checked whole first, then grouped
    by the size the backbone sees (so positions are not in order across groups); a (B, 3, H, W)
    tensor is one batch. With ``size``, images of several sizes can share a forward pass; each
    DenseFeatures yielded holds images of one original size (a batch of several comes in parts).
    ``options``: the settings (:class:`FeatureOptions`; default: its defaults). For many images:
    write each batch out and drop it, and memory stays at one batch."""
    options = options or FeatureOptions()
    p = model.patch_size
    options.check(p)
    layer_ids = model.resolve_layers(options.layers)
    device = next(model.parameters()).device
    run = dict(model=model, layer_ids=layer_ids, options=options, progress=progress)

    if isinstance(images, Tensor) and images.ndim == 4:
        _check_normalised(images, values=True)
        _warn_slow_bf16(device, options.autocast)
        check_forward_pass({tuple(images.shape[-2:]): "image batch"}, options, p, device)
        yield list(range(len(images))), _extract_batch(images, [], **run)
        return
    items = list(images)
    names = input_names(items)
    sizes = [check_input(item) for item in items]  # every input checked before any model work; nothing decoded

    # batched by the size the backbone sees (with a fixed size=, photos of many sizes are one group); within
    # a group, images of one original size side by side, so a batch's parts of one size are slices of it
    groups: dict[tuple[int, int], list[int]] = {}
    for i, hw in enumerate(sizes):
        groups.setdefault(_target_size(*hw, options.size), []).append(i)
    n = options.batch_size
    chunks = [idx[j : j + n] for idx in (sorted(g, key=sizes.__getitem__) for g in groups.values())
              for j in range(0, len(idx), n)]
    _warn_slow_bf16(device, options.autocast)
    check_forward_pass({sizes[idx[0]]: names[idx[0]] for idx in groups.values()}, options, p, device)
    show = progress if progress is not None else len(chunks) > 1
    from tqdm.auto import tqdm

    batches = _decoded_batches(items, names, sizes, chunks, options.size, device, num_workers,
                               resize_8bit=options.resize_8bit)
    for chunk, (batch, image_hws) in zip(tqdm(chunks, desc="features", unit="batch", disable=not show), batches):
        batch = to_model_input(batch, device)
        feats = _extract_batch(batch, [names[i] for i in chunk], orig_size=image_hws[0], **run)
        del batch  # free this batch's pixels before the next one is decoded
        start = 0
        for stop in [k for k in range(1, len(chunk)) if image_hws[k] != image_hws[k - 1]] + [len(chunk)]:
            yield chunk[start:stop], feats if (start, stop) == (0, len(chunk)) else feats.rows(start, stop,
                                                                                                image_hws[start])
            start = stop


#: Tensors at least this large travel from the DataLoader workers through reused shared slots.
SLOT_MIN_BYTES = 1 << 16

#: Niceness added to the DataLoader workers of :func:`map_in_workers` (0: they run at this process's
#: priority). With as many workers as cores, the workers keep every core busy and the process that
#: feeds a GPU shares a core with them; nicer workers leave it the CPU when it needs it.
#: An A/B setting for ``benchmarks/folder_speed.py`` until a GPU machine's figures decide.
WORKER_NICE = 0

#: Items each DataLoader worker of :func:`map_in_workers` has in hand at most (the DataLoader's
#: ``prefetch_factor``; its default 2): what the workers read ahead of the model, also while the
#: caller gets ready (a store's files, the weights' hash). An A/B setting for
#: ``benchmarks/folder_speed.py`` until a GPU machine's figures decide.
PREFETCH = 2

#: With pinned memory on CUDA, the DataLoader's pinning thread copies each slot straight to the GPU
#: (the slot's shared pages registered with CUDA once, ``cudaHostRegister``, then one asynchronous
#: copy on a side stream) instead of into pinned memory first: one CPU copy of each batch fewer in the
#: process that feeds the GPU, and the batches arrive on the GPU (the pinning thread's device). Where
#: registering fails, the copies go through pinned memory as before. Measured on an H200 machine (16
#: workers, 10,000 JPEGs, ViT-B/14 bf16 at 224, 8-bit resize; ``benchmarks/folder_speed.py
#: --timeline``): the pinning thread's time 1.4-1.7 ms a batch of 64 against 2.7-5.3 through pinned
#: memory (2.7-3.7 against 6.8-12.2 for 128), and ``embed_images``' rate after its first batch 5,108
#: images/s on average over four runs against 4,975 (batches of 64), 5,997 against 5,472 over two (128).
#: The batches the workers have read ahead (up to :data:`PREFETCH` per worker) then wait on the GPU
#: instead of in pinned memory.
SLOTS_TO_DEVICE = True


#: The slots of each running ``map_in_workers`` (in the main process), by token.
_OPEN_SLOTS: dict[int, "_Slots"] = {}


def _pinned_empty(shape: tuple, dtype: torch.dtype) -> Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class _InSlot:
    """A tensor a DataLoader worker left in one of its shared slots: ``flags[worker, slot]`` is 1 until
    the main process has copied it out. ``buffer`` travels once, when the slot is new or has grown."""

    def __init__(self, token: int, worker: int, slot: int, shape: tuple, dtype: torch.dtype, buffer: Tensor | None):
        self.token, self.worker, self.slot, self.shape, self.dtype, self.buffer = token, worker, slot, shape, dtype, buffer

    def pin_memory(self) -> Tensor:
        """Copied out into pinned memory by the DataLoader's pinning thread, beside the main thread."""
        return _OPEN_SLOTS[self.token].take(self, pin_memory=True)


class _Slots:
    """Reused shared-memory slots between DataLoader workers and this process.

    A tensor that a worker hands over the usual way goes into a new shared-memory segment, whose
    pages the receiving process faults in one by one as it reads them: 9.6 MB (a batch of 64
    uint8 images of 224x224) cost the main process 17 ms on a 2-core host, against 0.4 ms for the
    same copy within one process, and the main process does this for every worker, so it limits the
    whole loader. Here each worker keeps a few shared buffers (created on first use, grown when a
    result does not fit) and sends a buffer's handle only the first time; the main process keeps
    them mapped, copies each result out at once (into pinned memory for a GPU, in the DataLoader's
    pinning thread) and marks the slot free again in a shared table of flags. A worker whose slots
    are all busy hands the tensor over the usual way, so the order of the DataLoader's work never
    matters for correctness."""

    def __init__(self, num_workers: int, per_worker: int):
        self.token = id(self)
        self.flags = torch.zeros(num_workers, per_worker, dtype=torch.int32).share_memory_()
        self.own: dict[int, Tensor] = {}  # a worker's own buffers (in the worker process)
        self.seen: dict[tuple[int, int], Tensor] = {}  # every worker's buffers (in the main process)
        # (read once: the pinning thread must not change course midway)
        self.to_device = SLOTS_TO_DEVICE and torch.cuda.is_available()
        self.registered: dict[tuple[int, int], Tensor] = {}  # buffers registered with CUDA (SLOTS_TO_DEVICE)
        self.stream = None  # the pinning thread's copy stream (SLOTS_TO_DEVICE)

    def put(self, out):
        """In a worker: ``out`` with its large CPU tensors moved into free slots."""
        if isinstance(out, Tensor):
            return self._put_tensor(out)
        if isinstance(out, (tuple, list)):
            return type(out)(self.put(x) for x in out)
        return out

    def _put_tensor(self, x: Tensor):
        info = torch.utils.data.get_worker_info()
        nbytes = x.numel() * x.element_size()
        if info is None or x.device.type != "cpu" or nbytes < SLOT_MIN_BYTES or x.requires_grad:
            return x
        free = (self.flags[info.id] == 0).nonzero()
        if len(free) == 0:
            return x
        slot = int(free[0])
        buffer, sent = self.own.get(slot), None
        if buffer is None or buffer.numel() < nbytes:
            buffer = sent = torch.empty(nbytes, dtype=torch.uint8).share_memory_()
            self.own[slot] = buffer
        buffer[:nbytes].view(x.dtype).view(x.shape).copy_(x)
        self.flags[info.id, slot] = 1
        return _InSlot(self.token, info.id, slot, tuple(x.shape), x.dtype, sent)

    def take(self, out, pin_memory: bool):
        """In the main process: ``out`` with each slot copied out (pinned with ``pin_memory``) and freed.
        With pinned memory the DataLoader's pinning thread does this (:meth:`_InSlot.pin_memory`)."""
        if isinstance(out, _InSlot):
            key = (out.worker, out.slot)
            if out.buffer is not None:
                self.seen[key] = out.buffer
            nbytes = math.prod(out.shape) * out.dtype.itemsize
            view = self.seen[key][:nbytes].view(out.dtype).view(out.shape)
            copy = self._to_device(key, view) if pin_memory and self.to_device else None
            if copy is None:
                copy = (_pinned_empty if pin_memory else torch.empty)(out.shape, dtype=out.dtype).copy_(view)
            self.flags[key] = 0
            return copy
        if isinstance(out, (tuple, list)):
            return type(out)(self.take(x, pin_memory) for x in out)
        if isinstance(out, Tensor) and out.is_cuda and self.registered:  # copied to the GPU by the pinning thread
            stream = torch.cuda.current_stream(out.device)
            if stream != torch.cuda.default_stream(out.device):  # (that stream is recorded there)
                out.record_stream(stream)  # its memory is not reused before this stream's use of it
        return out

    def _to_device(self, key: tuple[int, int], view: Tensor) -> Tensor | None:
        """The slot ``key``'s ``view`` copied to the current CUDA device straight from the slot (its
        buffer registered with CUDA the first time; None, and pinned copies from then on, where that
        fails). Waits for the copy (the slot is reused once freed). The result's memory is held for
        the device's default stream here, and for the main thread's stream, where another, in
        :meth:`take`."""
        buffer = self.seen[key]
        if self.registered.get(key) is not buffer:
            self._unregister(key)
            if int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0)) != 0:
                self.to_device = False
                return None
            self.registered[key] = buffer
        device = torch.device("cuda", torch.cuda.current_device())
        if self.stream is None:
            self.stream = torch.cuda.Stream(device)
        with torch.cuda.stream(self.stream):
            x = view.to(device, non_blocking=True)
        self.stream.synchronize()
        x.record_stream(torch.cuda.default_stream(device))  # its memory is not reused before that stream's use of it
        return x

    def _unregister(self, key: tuple[int, int]) -> None:
        buffer = self.registered.pop(key, None)
        if buffer is not None:
            torch.cuda.cudart().cudaHostUnregister(buffer.data_ptr())

    def unregister(self) -> None:
        """Every buffer registered with CUDA unregistered (once the pinning thread has stopped)."""
        for key in list(self.registered):
            self._unregister(key)


class _Mapped(torch.utils.data.Dataset):
    """``fn(items[k])`` for DataLoader workers; a user error comes back as the exception itself."""

    def __init__(self, fn, items: Sequence, slots: _Slots | None = None):
        self.fn, self.items, self.slots = fn, items, slots

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        try:
            out = self.fn(self.items[k])
        except (OSError, ValueError) as exc:  # raised in the caller as it is, not wrapped in a worker traceback
            return exc
        return out if self.slots is None else self.slots.put(out)


def _as_is(x):
    return x


def _start_worker(worker_id: int, nice: int) -> None:
    """A DataLoader worker's start: ``nice`` added to its niceness (:data:`WORKER_NICE`)."""
    os.nice(nice)


def map_in_workers(fn, items: Sequence, num_workers: int = 0, pin_memory: bool | torch.device = False):
    """``fn(item)`` for each item, in order: in this process with ``num_workers`` 0, else computed
    ahead by that many DataLoader workers (``fn`` must be picklable: a module-level function or a
    ``functools.partial`` of one). Errors (OSError, ValueError) are raised here as they are.
    ``pin_memory``: pin the tensors of the results (for non-blocking copies to a GPU); a CUDA device:
    for that GPU (the pinning thread works on it; True: the current one, which is GPU 0 unless set:
    with ``cuda:1``, batches went through GPU 0). Large tensors of the results (at the top level, or
    in tuples and lists) come from the workers through reused shared slots (:class:`_Slots`).

    The workers start at once, before the first result is asked for: they decode while the caller
    gets ready (e.g. hashes the model's weights). Closing the returned iterator (or dropping it)
    stops them."""
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}: must be >= 0")
    if num_workers == 0 or len(items) <= 1:  # one item: nothing to overlap
        return (fn(item) for item in items)
    device = pin_memory if isinstance(pin_memory, torch.device) else None
    pin = (device.type == "cuda") if device is not None else bool(pin_memory)
    results = _from_workers(fn, items, min(num_workers, len(items)), pin and torch.cuda.is_available(), device)
    next(results)  # runs up to the workers' start
    return results


def _from_workers(fn, items: Sequence, workers: int, pin: bool, device: torch.device | None = None):
    """:func:`map_in_workers` with workers: yields None once the workers are started, then the results."""
    prefetch = PREFETCH  # each worker has at most this many items in hand
    slots = _Slots(workers, prefetch + 1)  # + the one being copied out here
    loader = torch.utils.data.DataLoader(_Mapped(fn, items, slots), batch_size=None, collate_fn=_as_is,
                                         num_workers=workers, prefetch_factor=prefetch, pin_memory=pin,
                                         worker_init_fn=functools.partial(_start_worker, nice=WORKER_NICE)
                                         if WORKER_NICE else None)
    import cv2

    # The workers decode on one OpenCV thread each (N workers with pools the size of the machine fight
    # over its cores). A forked worker must not resize the pool it inherits (that can hang), so the
    # parent shrinks its own pool just while the workers are forked, then restores it.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    _OPEN_SLOTS[slots.token] = slots  # before the pinning thread starts
    batches = None
    try:
        try:
            # (the pinning thread takes the current CUDA device, where the slots are copied to: the model's)
            with torch.cuda.device(device) if pin and device is not None and device.type == "cuda" else nullcontext():
                batches = iter(loader)  # forks the workers, which start on their first items
        finally:
            cv2.setNumThreads(threads)
        yield None
        for out in batches:
            if isinstance(out, Exception):
                raise out
            yield slots.take(out, pin)  # (already taken by the pinning thread when pinned)
    finally:
        if pin and batches is not None:  # the pinning thread stopped first: it may be registering or copying a slot
            batches._shutdown_workers()
        slots.unregister()  # (SLOTS_TO_DEVICE)
        del _OPEN_SLOTS[slots.token]


#: With DataLoader workers, a batch of the curation embedding and of ``knn``'s folder features is read
#: in this many parts (by as many workers, joined before the model): more parts make the first batch
#: ready sooner, but each part is one more hand-over to this process. Measured on an H100 machine (16
#: workers, ViT-B/14 bf16 at 224, batches of 64 JPEGs of 500x375, 8-bit resize, two runs of each,
#: alternating; ``benchmarks/folder_speed.py``): over 10,000 images whole batches ran at 3,517 and
#: 4,025 images/s against 3,466 and 3,510 in 4 parts; over 2,000 images (where the first batch weighs
#: more) 1,657 and 2,378 against 2,095 and 2,144. On a 2-core host, 2 workers: the same rate either way.
#: So whole batches (1); the parts path stays for this A/B.
PARTS_PER_BATCH = 1


def batch_parts(todo: np.ndarray, batch_size: int, num_workers: int) -> tuple[list[np.ndarray], list[bool]]:
    """The rows of ``todo`` in batches of ``batch_size``, as the parts one read covers, and whether
    each part ends its batch. With workers a batch comes in :data:`PARTS_PER_BATCH` parts (8 rows
    at least each), read by as many workers (the model still sees whole batches, :func:`join_parts`);
    in this process a part is a whole batch."""
    part = batch_size if num_workers == 0 else min(batch_size, max(8, -(-batch_size // PARTS_PER_BATCH)))
    parts, ends = [], []
    for j in range(0, len(todo), batch_size):
        chunk = todo[j : j + batch_size]
        parts += [chunk[k : k + part] for k in range(0, len(chunk), part)]
        ends += [False] * (len(parts) - len(ends) - 1) + [True]
    return parts, ends


def join_parts(parts: list[Tensor], carry: torch.dtype) -> Tensor:
    """One batch from the parts read for it (on the model's device), in ``carry`` (the dtype a
    mixed batch takes when read whole, see :func:`dinov2_dense.evaluation.knn.read_rows`) where their
    dtypes differ: 8-bit images normalised on the device (float32) beside a part holding a 16-bit
    image (``carry``, e.g. bf16) are rounded as a whole batch is, so the features do not depend on
    how the batch was read."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts if len({x.dtype for x in parts}) == 1 else [x.to(carry) for x in parts])


def _load_chunk(chunk: list[int], items: list, names: list[str], sizes: list, size, device: torch.device,
                resize_8bit: bool = False) -> tuple[Tensor, tuple[int, int]]:
    return _load_batch([items[i] for i in chunk], [names[i] for i in chunk], [sizes[i] for i in chunk], size, device,
                       resize_8bit=resize_8bit)


def _decoded_batches(items: list, names: list[str], sizes: list, chunks: list[list[int]], size,
                     device: torch.device, num_workers: int, resize_8bit: bool = False):
    """(batch, the images' sizes) per chunk, in order: decoded here (straight onto ``device``), or on the
    CPU by ``num_workers`` DataLoader workers (only for lists without tensors: a tensor is already
    decoded, and would be copied to each worker)."""
    if any(isinstance(x, Tensor) for x in items):
        num_workers = 0
    here = num_workers == 0 or len(chunks) <= 1
    load = functools.partial(_load_chunk, items=items, names=names, sizes=sizes, size=size,
                             device=device if here else torch.device("cpu"), resize_8bit=resize_8bit)
    return map_in_workers(load, chunks, num_workers, pin_memory=device)


def _load_batch(items: list, names: list[str], hws: list[tuple[int, int]], size, device: torch.device,
                resize_8bit: bool = False) -> tuple[Tensor, list[tuple[int, int]]]:
    """Decode and normalise one chunk of inputs that ``size`` brings to one size (``hws``: each
    one's (H, W)) into a (B, 3, H', W') batch.

    Images are decoded one at a time and, with ``size``, resized straight away (the same
    per-image arithmetic as resizing the batch), so only the batch and one image are in memory.
    ``resize_8bit``: 8-bit images are resized in 8 bits on the CPU (:func:`load_resized`), also for
    another device, so the batches are the same with and without workers; a chunk of them comes
    back as a uint8 batch on the CPU, which :func:`to_model_input` normalises on the model's device.
    Returns the batch and ``hws``, the images' sizes before resizing.
    """
    if all(isinstance(x, Tensor) for x in items) and len(set(hws)) == 1:
        return torch.stack(items), hws  # resized as a batch by _extract_batch
    target = _target_size(*hws[0], size)
    if resize_8bit and any(hw != target for hw in hws) and not any(isinstance(x, Tensor) for x in items):
        return stack_decoded([load_resized(item, target, expect=hw, name=name, resize_8bit=True, keep_8bit=True)
                              for item, name, hw in zip(items, names, hws)]), hws
    batch = torch.empty(len(items), 3, *target, device=device)
    for k, (item, name, hw) in enumerate(zip(items, names, hws)):
        if target != hw and not isinstance(item, Tensor) and (device.type == "cpu" or resize_8bit):
            x = load_resized(item, target, expect=hw, name=name, resize_8bit=resize_8bit)  # from 8/16-bit data: cheaper
            batch[k] = x
            continue
        x = item.to(device=device, dtype=torch.float32) if isinstance(item, Tensor) else _decoded_input(item)
        if tuple(x.shape[-2:]) != hw:
            raise ValueError(f"{name}: decoded to {x.shape[-1]}x{x.shape[-2]} pixels, but it was {hw[1]}x{hw[0]} when "
                             "checked (did the file change?)")
        if target == hw:
            batch[k] = x  # copies (and moves to the device)
        else:
            batch[k] = _resize(x.to(device).contiguous()[None], target)[0]
        del x
    return batch, hws


def load_resized(source: ImageLike, hw: tuple[int, int], *, expect: tuple[int, int] | None = None,
                 name: str | None = None, resize_8bit: bool = False, keep_8bit: bool = False) -> Tensor:
    """``source`` read upright, resized to ``hw`` (bilinear, antialiased) and ImageNet-normalised:
    (3, H, W). 8- and 16-bit images are resized before they become [0, 1] floats and are
    normalised (the resize is a weighted mean, so the order changes only float rounding), which
    spares the full-size float copies; other data take :func:`to_input_tensor`'s path.
    ``expect``: the (H, W) the input was checked at (a file changed since raises).

    ``resize_8bit`` (default False): a uint8 image (grey or colour) not already at ``hw`` is
    resized in uint8 by torch's bilinear antialiased kernel on a channels-last view (about 4x
    faster than the float resize on a CPU) and rounded to whole grey levels, as any 8-bit resize
    (e.g. PIL's); the values are within 1/255 of the float path's before
    normalisation. 16-bit, float and bool data ignore it.

    ``keep_8bit`` (with ``resize_8bit``): a uint8 image is returned resized but not normalised,
    as a uint8 (3, H, W) tensor (a quarter of the bytes to hand from a decoding worker to the
    model's device); :func:`to_model_input` normalises it there to the same floats. Other images
    come back normalised, as without it."""
    name = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    array = load_array(source)
    try:
        rgb, scale = _checked_rgb(array)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if expect is not None and tuple(rgb.shape[:2]) != tuple(expect):
        raise ValueError(f"{name}: decoded to {rgb.shape[1]}x{rgb.shape[0]} pixels, but it was {expect[1]}x{expect[0]} "
                         "when checked (did the file change?)")
    if scale is None or rgb.dtype not in (np.uint8, np.uint16):
        return _resize(_decoded_input(rgb).contiguous()[None], hw)[0]
    x = torch.from_numpy(np.ascontiguousarray(rgb).astype(np.int32) if rgb.dtype == np.uint16 else np.ascontiguousarray(rgb))
    if resize_8bit and rgb.dtype == np.uint8:
        # a (1, C, H, W) view of the (H, W, C) bytes is channels-last: the layout torch's uint8 kernel is fastest on
        x = _resize(x.permute(2, 0, 1)[None], hw)[0].expand(3, -1, -1)  # one channel: grey to RGB
        return x.contiguous() if keep_8bit else normalise_8bit(x)
    x = _resize(x.permute(2, 0, 1)[None].float(), hw)[0].expand(3, -1, -1)
    return _normalised(x, scale).contiguous()


def _normalised(x: Tensor, scale: float) -> Tensor:
    """Levels of (..., 3, H, W) float data on the CPU, divided by ``scale`` and ImageNet-normalised:
    the arithmetic of every decoded image."""
    return (x / scale - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _table_8bit() -> Tensor:
    """(3, 256): the normalised float of each 8-bit value in each channel, by :func:`load_resized`'s
    arithmetic on this CPU, so that every device gives the same floats (a GPU divides by a
    constant through its reciprocal, which can round otherwise)."""
    return _normalised(torch.arange(256, dtype=torch.float32).view(1, 256, 1).expand(3, 256, 1), 255.0)[..., 0]


_TABLES_8BIT: dict[torch.device, Tensor] = {}


def normalise_8bit(x: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) images -> ImageNet-normalised float32 on ``x``'s device: the floats of
    :func:`load_resized` (on a CPU by its arithmetic, elsewhere by a table of its 256 values per
    channel: the same floats on every device)."""
    if x.dtype != torch.uint8 or x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(f"expected uint8 images of shape (..., 3, H, W), got {x.dtype} {tuple(x.shape)}")
    return _normalised(x.float(), 255.0) if x.device.type == "cpu" else _normalised_by_table(x)


def _normalised_by_table(x: Tensor) -> Tensor:
    """:func:`normalise_8bit` by looking the levels up in :func:`_table_8bit` (on ``x``'s device)."""
    table = _TABLES_8BIT.get(x.device)
    if table is None:
        table = _TABLES_8BIT.setdefault(x.device, _table_8bit().to(x.device))
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for c in range(3):
        index = x.select(-3, c).reshape(-1).int()
        out.select(-3, c).copy_(torch.index_select(table[c], 0, index).view(x.select(-3, c).shape))
    return out


def to_model_input(batch: Tensor, device: torch.device) -> Tensor:
    """A decoded batch on ``device`` (a non-blocking copy), normalised there if it came as uint8
    (``keep_8bit`` of :func:`load_resized`); float batches pass as they are."""
    batch = batch.to(device, non_blocking=True)
    return normalise_8bit(batch) if batch.dtype == torch.uint8 else batch


class HostCopy:
    """A tensor on its way to the CPU: from a CUDA device a non-blocking copy into pinned memory, so
    that the next batch can be queued on the device before this one is read here; :meth:`wait`
    returns it once it has arrived (waiting for that copy only, not for work queued after it).
    From other devices a plain copy."""

    def __init__(self, x: Tensor):
        self.event = None
        if x.device.type == "cuda":
            self.tensor = _pinned_empty(x.shape, x.dtype).copy_(x, non_blocking=True)  # on x's device's stream
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(x.device))  # that stream, also when x is not on the current device
        else:
            self.tensor = x.cpu()

    def wait(self) -> Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.tensor


def stack_decoded(images: Sequence[Tensor]) -> Tensor:
    """One batch of decoded (3, H, W) images: uint8 when all are (normalised where the model is),
    else float, the uint8 ones normalised here."""
    if all(x.dtype == torch.uint8 for x in images):
        return torch.stack(list(images))
    return torch.stack([normalise_8bit(x) if x.dtype == torch.uint8 else x for x in images])


def _decoded_input(source: ImageLike) -> Tensor:
    """:func:`to_input_tensor` of a raw image with one full-size float copy instead of three:
    a (3, H, W) view of an (H, W, 3) float32 array, normalised in place (the arithmetic of
    :func:`normalize`)."""
    x = torch.from_numpy(load_image(source))
    x.sub_(torch.tensor(IMAGENET_MEAN)).div_(torch.tensor(IMAGENET_STD))
    return x.permute(2, 0, 1)


class NonfiniteFeaturesError(ValueError):
    """The backbone gave NaN or infinite features: for the images at ``indices`` of their batch (named by
    ``names``), ``bad`` of ``total`` values; ``why``: the likely cause."""

    def __init__(self, names: Sequence[str], indices: Sequence[int], bad: int, total: int, why: str):
        self.names, self.indices, self.bad, self.total, self.why = list(names), list(indices), bad, total, why
        shown = ", ".join(self.names[:3]) + (f" and {len(self.names) - 3} more" if len(self.names) > 3 else "")
        super().__init__(f"{shown}: the backbone gave NaN or infinite features ({bad} of {total} values): {why}")

    def named(self, batch_names: Sequence[str]) -> "NonfiniteFeaturesError":
        """The same error naming its images by ``batch_names`` (the batch's files, where a caller passed
        decoded arrays or tensors)."""
        return NonfiniteFeaturesError([str(batch_names[i]) for i in self.indices], self.indices, self.bad, self.total,
                                      self.why)


def nonfinite_cause(half: bool) -> str:
    """The likely cause of NaN or infinite outputs of a model: float16 overflow (``half``), else its weights."""
    return ("float16 overflows on this model's activations (over 65504): use bfloat16 or float32" if half else
            "its weights are damaged or come from a run that diverged")


def _refuse_nonfinite_features(outputs: list[Tensor], names: list[str], half: bool) -> None:
    """Raise, naming the images, when the backbone gave NaN or infinite features: a diverged or damaged model
    (its weights), or float16 overflow (activations over 65504); features, pca and their maps were NaN with no
    word (a PCA 'at threshold otsu' found no foreground). ``outputs``: tensors whose first axis is the batch."""
    nonfinite = [~torch.isfinite(t.reshape(t.shape[0], -1)) for t in outputs]
    per_image = torch.stack([n.any(1) for n in nonfinite]).any(0)
    if not bool(per_image.any()):
        return
    bad = sum(int(n.sum()) for n in nonfinite)
    total = sum(t.numel() for t in outputs)
    why = nonfinite_cause(half)
    indices = per_image.nonzero().flatten().tolist()
    shown = [names[i] if i < len(names) and names[i] else f"image {i}" for i in indices]
    raise NonfiniteFeaturesError(shown, indices, bad, total, why)


def _extract_batch(batch: Tensor, names: list[str], *, model, layer_ids: list[int], options: FeatureOptions,
                   progress: bool | None = None, orig_size: tuple[int, int] | None = None) -> DenseFeatures:
    """Features of one (B, 3, H, W) batch; ``orig_size``: the images' (H, W) before an earlier resize."""
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"image batch of shape {tuple(batch.shape)}: expected (B, 3, H, W)")
    _check_normalised(batch)
    p = model.patch_size
    device = next(model.parameters()).device
    x = batch.to(device=device, dtype=torch.float32)
    orig_size = tuple(orig_size or x.shape[-2:])
    x = _resize(x, _target_size(*orig_size, options.size))
    if options.fit == "resize":
        gh, gw = _grid(*x.shape[-2:], None, "resize", p)
        x = _resize(x, (gh * p, gw * p))
        pad = (0, 0, 0, 0)
    else:
        x, pad = center_pad(x, p)
    autocast = options.autocast
    if autocast:
        dtype = torch.bfloat16 if autocast is True else autocast
        ctx = torch.autocast(device_type=device.type, dtype=dtype)
    else:
        ctx = nullcontext()
    x_in = x if autocast else x.to(next(model.parameters()).dtype)  # e.g. a bfloat16 model
    # features in eval mode, whatever mode the model is in (a model being trained: drop path drew other features
    # at each call), and the modes given back
    with ctx, kept_modes(model):
        model.eval()  # (from train mode, the backbone forgets its position-embedding cache: DinoVisionTransformer.train)
        if options.tile is not None:
            maps, cls, regs = _run_tiled(model, x_in, layer_ids, options, progress)
        else:
            maps, cls, regs = model.intermediate_maps(x_in, layer_ids, norm=options.norm)
    half = (dtype if autocast else x_in.dtype) == torch.float16
    if device.type == "cpu" or half:  # (a check on a GPU waits for it: there float16 alone, which overflows)
        _refuse_nonfinite_features([*maps, *cls], names, half)
    return DenseFeatures(
        maps={l: m.float().contiguous() for l, m in zip(layer_ids, maps)},
        cls_tokens={l: c.float() for l, c in zip(layer_ids, cls)},
        registers={l: r.float() for l, r in zip(layer_ids, regs)},
        image_size=orig_size,
        input_size=tuple(x.shape[-2:]),
        padding=pad,
        patch_size=p,
        source=names,
        options=options,
        blocks=getattr(model, "n_blocks", None),
    )
