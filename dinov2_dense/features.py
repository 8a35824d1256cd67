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
as already normalised.
"""

from __future__ import annotations

import math
import numbers
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = Any  # str | os.PathLike | np.ndarray | PIL.Image.Image | Tensor


# -- image loading ------------------------------------------------------------------------
def load_image(source: ImageLike) -> np.ndarray:
    """Read an image as float32 RGB (H, W, 3) in [0, 1]: paths, ``skimage:NAME``, arrays, PIL images."""
    name = None
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        array = _read_file(name)
    elif isinstance(source, np.ndarray):
        array = source
    elif hasattr(source, "mode") and hasattr(source, "size"):  # PIL.Image without importing PIL
        array = _from_pil(source)
    else:
        raise TypeError(f"cannot read an image from a {type(source).__name__}")
    try:
        return to_rgb_float(array)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}" if name else str(exc)) from None


_SKIMAGE_NOT_IMAGES = {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename"}


def _read_file(path: str) -> np.ndarray:
    if path.startswith("skimage:"):
        import skimage.data

        sample = path.split(":", 1)[1]
        loader = getattr(skimage.data, sample, None)
        if sample not in skimage.data.__all__ or sample in _SKIMAGE_NOT_IMAGES or not callable(loader):
            raise FileNotFoundError(f"{path}: scikit-image has no sample image named {sample!r}")
        image = loader()
        if not isinstance(image, np.ndarray):
            raise ValueError(f"{path}: this scikit-image sample is not a single image")
        return image
    import cv2

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise ValueError(f"{path}: not a readable image (corrupt, empty or an unknown format)")
    if array.ndim == 3 and array.shape[2] == 3:
        array = array[..., ::-1]  # OpenCV reads BGR
    elif array.ndim == 3 and array.shape[2] == 4:
        array = array[..., [2, 1, 0, 3]]
    return np.ascontiguousarray(array)


def _from_pil(image) -> np.ndarray:
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
        image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
    array = np.asarray(image)
    if image.mode.startswith("I;16") or (image.mode == "I" and array.max(initial=0) > 255):
        array = array.astype(np.uint16) if image.mode.startswith("I;16") else np.clip(array, 0, 65535).astype(np.uint16)
    return array


def to_rgb_float(array: np.ndarray) -> np.ndarray:
    """Any (H, W), (H, W, 1|2|3|4) array of uint8 / uint16 / bool / float to RGB float32 in [0, 1].

    Floats are taken as [0, 1] (small overshoots, e.g. from bicubic resampling, are clipped);
    other integers as 8-bit when they fit, else 16-bit. Values that fit neither raise.
    """
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
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    if array.dtype == np.uint8:
        out = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        out = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        out = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        lo, hi = float(array.min()), float(array.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("float image holds NaN or infinite values")
        if lo < -0.5 or hi > 1.5:
            raise ValueError(f"float image values span [{lo:g}, {hi:g}]; expected [0, 1] (divide 8-bit data by 255)")
        out = np.clip(array.astype(np.float32), 0.0, 1.0)
    elif np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"integer image values span [{lo}, {hi}]; expected 8-bit or 16-bit data")
        out = array.astype(np.float32) / (255.0 if hi <= 255 else 65535.0)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}")
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
        _check_normalised(source)
        return source
    return normalize(load_image(source))


def _check_normalised(x: Tensor) -> None:
    if not x.is_floating_point():
        raise ValueError(
            f"image tensor of dtype {x.dtype}: tensors are taken as ImageNet-normalised floats; "
            "pass the array (or normalize(load_image(...))) instead"
        )


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
@dataclass
class DenseFeatures:
    """Features of one batch of same-sized inputs.

    maps: layer index -> (B, C, h, w) patch features.
    cls_tokens: layer index -> (B, C).  registers: layer index -> (B, R, C) (R may be 0).
    image_size: (H, W) of the input before fitting; input_size: (H', W') seen by the backbone;
    padding: (top, bottom, left, right) pixels added by ``fit="pad"`` (in input_size pixels).
    """

    maps: dict[int, Tensor]
    cls_tokens: dict[int, Tensor]
    registers: dict[int, Tensor]
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    patch_size: int = 14
    source: list[str] = field(default_factory=list)

    @property
    def layers(self) -> list[int]:
        return list(self.maps)

    def upsample(self, layer: int | None = None, mode: str = "bilinear") -> Tensor:
        """(B, C, H, W) features at the image's own resolution: upsampled, padding removed."""
        layer = self.layers[-1] if layer is None else layer
        fmap = self.maps[layer]
        grid_px = (fmap.shape[-2] * self.patch_size, fmap.shape[-1] * self.patch_size)
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        up = F.interpolate(fmap.float(), size=grid_px, mode=mode, **kwargs)
        t, b, l, r = self.padding
        up = up[..., t : grid_px[0] - b, l : grid_px[1] - r]
        if tuple(up.shape[-2:]) != tuple(self.image_size):
            up = F.interpolate(up, size=self.image_size, mode=mode, **kwargs)
        return up


def _resolve_layers(model, layers: int | Sequence[int] | None) -> list[int]:
    depth = len(model.blocks)
    if layers is None:
        return [depth - 1]
    if isinstance(layers, numbers.Integral):
        n = int(layers)
        if not 1 <= n <= depth:
            raise ValueError(f"layers={n}: an int takes the last n blocks, and this model has {depth}")
        return list(range(depth - n, depth))
    layers = list(layers)
    if not layers:
        raise ValueError("layers=[]: give at least one block index (or None for the last block)")
    out = []
    for i in layers:
        j = int(i) + depth if int(i) < 0 else int(i)
        if not 0 <= j < depth:
            raise ValueError(f"layer {i} out of range: this model has {depth} blocks (0..{depth - 1}, or -1..-{depth})")
        if j not in out:
            out.append(j)
    return sorted(out)


def _run(model, x: Tensor, layers: list[int], norm: bool) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    tokens = model.forward_layers(x, layers, norm=norm)
    r = model.num_register_tokens
    p = model.patch_size
    b, _, h, w = x.shape
    maps = [t[:, 1 + r :].reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2) for t in tokens]
    return maps, [t[:, 0] for t in tokens], [t[:, 1 : 1 + r] for t in tokens]


def _run_tiled(model, x: Tensor, layers: list[int], norm: bool, tile: int, overlap: int):
    p = model.patch_size
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    t = max(1, tile // p)
    s = max(1, t - overlap // p)
    ys, xs = _tile_starts(gh, t, s), _tile_starts(gw, t, s)
    sums: list[Tensor] | None = None
    count = torch.zeros(1, 1, gh, gw, device=x.device)
    cls_sum: list[Tensor] = []
    reg_sum: list[Tensor] = []
    for y0 in ys:
        for x0 in xs:
            crop = x[..., y0 * p : (y0 + t) * p, x0 * p : (x0 + t) * p]
            maps, cls, regs = _run(model, crop, layers, norm)
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
    n = len(ys) * len(xs)
    return [s_ / count for s_ in sums], [c / n for c in cls_sum], [r_ / n for r_ in reg_sum]


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
) -> DenseFeatures | list[DenseFeatures]:
    """Dense features of one image, a batch tensor, or a list of images of any sizes.

    Args:
        model: a DinoVisionTransformer (any module with ``forward_layers`` and ``patch_size``).
        images: a path / array / PIL image / (3, H, W) tensor -> one DenseFeatures with B=1;
            a (B, 3, H, W) normalised tensor -> one DenseFeatures with that batch;
            a list -> a list of DenseFeatures, one per image (batched internally by size).
        layers: None (last block), an int n (the last n blocks, as the official code), or block
            indices (negative counts from the end).
        fit: "pad" or "resize" to the patch grid (see the module docstring).
        size: resize first: an int shorter side, or (H, W).
        norm: apply the final LayerNorm to each layer (official segmentation: True; depth: False).
        tile, tile_overlap: tiled mode, tile and overlap in pixels (rounded down to the patch grid).
        batch_size: images per forward pass for lists.
        autocast: True (bfloat16) or a dtype for torch.autocast; outputs are float32.
        progress: show a progress bar (default: when there is more than one batch).
    """
    if fit not in ("pad", "resize"):
        raise ValueError(f"fit must be 'pad' or 'resize', got {fit!r}")
    p = model.patch_size
    if tile is not None and tile < p:
        raise ValueError(f"tile={tile} is smaller than one patch ({p} pixels)")
    if tile is not None and tile_overlap is not None and not 0 <= tile_overlap // p < tile // p:
        raise ValueError(f"tile_overlap={tile_overlap}: must be >= 0 and, in whole patches, less than tile={tile}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    layer_ids = _resolve_layers(model, layers)
    device = next(model.parameters()).device

    if isinstance(images, Tensor) and images.ndim == 4:
        return _extract_batch(model, images, list(range(images.shape[0])), layer_ids, device, fit, size, norm,
                              tile, tile_overlap, autocast, [])
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    tensors = [to_input_tensor(item) for item in items]
    names = [str(item) if isinstance(item, (str, os.PathLike)) else f"image {i}" for i, item in enumerate(items)]

    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape[-2:]), []).append(i)
    chunks = [idx[j : j + batch_size] for idx in groups.values() for j in range(0, len(idx), batch_size)]
    show = progress if progress is not None else len(chunks) > 1
    from tqdm.auto import tqdm

    results: list[DenseFeatures | None] = [None] * len(items)
    for chunk in tqdm(chunks, desc="features", unit="batch", disable=not show):
        batch = torch.stack([tensors[i] for i in chunk])
        feats = _extract_batch(model, batch, chunk, layer_ids, device, fit, size, norm, tile, tile_overlap,
                               autocast, [names[i] for i in chunk])
        for k, i in enumerate(chunk):
            results[i] = DenseFeatures(
                maps={l: m[k : k + 1] for l, m in feats.maps.items()},
                cls_tokens={l: c[k : k + 1] for l, c in feats.cls_tokens.items()},
                registers={l: r[k : k + 1] for l, r in feats.registers.items()},
                image_size=feats.image_size,
                input_size=feats.input_size,
                padding=feats.padding,
                patch_size=feats.patch_size,
                source=[names[i]],
            )
    return results[0] if single else results  # type: ignore[return-value]


def _extract_batch(model, batch, index, layer_ids, device, fit, size, norm, tile, tile_overlap, autocast, names):
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"image batch of shape {tuple(batch.shape)}: expected (B, 3, H, W)")
    _check_normalised(batch)
    p = model.patch_size
    x = batch.to(device=device, dtype=torch.float32)
    image_size = tuple(x.shape[-2:])
    x = _resize(x, _target_size(*image_size, size))
    if fit == "resize":
        h, w = x.shape[-2:]
        x = _resize(x, (max(p, round(h / p) * p), max(p, round(w / p) * p)))
        pad = (0, 0, 0, 0)
    else:
        x, pad = center_pad(x, p)
    if autocast:
        dtype = torch.bfloat16 if autocast is True else autocast
        ctx = torch.autocast(device_type=device.type, dtype=dtype)
    else:
        ctx = nullcontext()
    x_in = x if autocast else x.to(next(model.parameters()).dtype)  # e.g. a bfloat16 model
    with ctx:
        if tile is not None:
            overlap = tile_overlap if tile_overlap is not None else (tile // p // 4) * p
            maps, cls, regs = _run_tiled(model, x_in, layer_ids, norm, tile, overlap)
        else:
            maps, cls, regs = _run(model, x_in, layer_ids, norm)
    return DenseFeatures(
        maps={l: m.float().contiguous() for l, m in zip(layer_ids, maps)},
        cls_tokens={l: c.float() for l, c in zip(layer_ids, cls)},
        registers={l: r.float() for l, r in zip(layer_ids, regs)},
        image_size=image_size,
        input_size=tuple(x.shape[-2:]),
        padding=pad,
        patch_size=p,
        source=names,
    )
