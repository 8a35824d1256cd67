"""Label masks and depth maps as colour images people can look at.

Labels take the colours of their data set (``palette``: ADE20K, VOC and Cityscapes as in
:mod:`dinov2_dense.data.classes`, which a data set object carries as ``.palette``), so a predicted
mask looks like the benchmark's own figures. Depth uses matplotlib's magma map, near = bright.
Invalid pixels (ignored labels, depth 0) are black in both.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def colour_labels(labels: np.ndarray, palette: np.ndarray | Sequence[Sequence[int]] | None = None,
                  ignore_index: int | None = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB: class k gets ``palette[k]``, ``ignore_index`` is black.

    ``palette``: (K, 3) colours in 0..255, e.g. a data set's ``.palette``. Ids past its end, and all
    ids when it is None, take the colours that :func:`dinov2_dense.data.classes.palette_array`
    gives classes without a palette (the VOC colour map without its black), the same colours a
    data set without a palette carries.
    """
    from ..data.classes import palette_array  # here, not at import: dinov2_dense.data loads albumentations

    ids = np.asarray(labels)
    if not (np.issubdtype(ids.dtype, np.integer) or ids.dtype == np.bool_):
        raise ValueError(f"labels of dtype {ids.dtype}: expected integer class ids")
    ids = ids.astype(np.int64)
    ignored = ids == ignore_index if ignore_index is not None else np.zeros(ids.shape, bool)
    kept = ids[~ignored]
    if kept.size and int(kept.min()) < 0:
        raise ValueError(f"label {int(kept.min())}: class ids must be >= 0 (or the ignore index {ignore_index})")
    colours = None
    if palette is not None:
        given = np.asarray(palette)
        if given.ndim != 2 or given.shape[1] != 3 or given.size and (given.min() < 0 or given.max() > 255):
            raise ValueError(f"palette of shape {given.shape}: expected (K, 3) colours in 0..255")
        colours = [tuple(int(v) for v in c) for c in given]
    table = palette_array(colours, max(int(kept.max(initial=0)) + 1, 1))
    rgb = table[np.where(ignored, 0, ids)]
    rgb[ignored] = 0
    return rgb


def colour_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) depth (e.g. metres) -> (H, W, 3) uint8 RGB with magma, near = bright.

    ``vmin`` / ``vmax`` fix the range (default: the valid pixels' own); depth <= 0 or not finite
    (invalid) is black.
    """
    from matplotlib import colormaps

    depth = np.asarray(depth)
    valid = np.isfinite(depth) & (depth > 0)
    lo = vmin if vmin is not None else (float(depth[valid].min()) if valid.any() else 0.0)
    hi = vmax if vmax is not None else (float(depth[valid].max()) if valid.any() else 1.0)
    t = 1.0 - np.clip((np.where(valid, depth, lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (colormaps["magma"](t)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb
