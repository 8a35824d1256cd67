"""Small helpers for pictures people look at: colour conversion, overlays, atomic image writes,
and figure grids drawn with matplotlib's Agg canvas (no pyplot, so no global backend is set).

Images here are RGB: float (H, W, 3) in [0, 1], uint8 (H, W, 3), or (H, W) grayscale / boolean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import fileio
from ..fileio import atomic_path


def to_uint8(image: np.ndarray) -> np.ndarray:
    """RGB or gray image (float in [0, 1], bool or uint8) -> uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image of shape {a.shape}: expected (H, W) or (H, W, 3)")
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    out = np.empty(a.shape, dtype=np.uint8)
    band = band_rows(a.shape[1])
    for y in range(0, a.shape[0], band):  # a band of rows at a time: no float copies of a large image whole
        rows = slice(y, y + band)
        out[rows] = (np.clip(a[rows].astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return out


#: Pixels that :func:`to_uint8`, :func:`overlay_uint8` and ``PCABasis.colourise`` convert at a time (a band
#: of rows).
BAND_PIXELS = 1 << 20


def band_rows(width: int) -> int:
    """Rows of an image ``width`` pixels wide in a band of about :data:`BAND_PIXELS` pixels."""
    return max(1, BAND_PIXELS // max(1, width))


def to_float(image: np.ndarray) -> np.ndarray:
    """RGB or gray image (uint8, bool or float) -> float32 (H, W, 3) in [0, 1]."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        a = a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Alpha blend ``(1 - alpha) * image + alpha * colours`` (float RGB in [0, 1]).

    With black colours on the background (PCA maps) the object comes out coloured and the
    background dimmed.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must lie in [0, 1]")
    image, colours = to_float(image), to_float(colours)
    if image.shape != colours.shape:
        raise ValueError(f"overlay of an image {image.shape} and colours {colours.shape}: sizes differ")
    return (1.0 - alpha) * image + alpha * colours


def overlay_uint8(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``to_uint8(overlay(image, colours, alpha))``, the same bytes, a band of rows at a time (a large
    image's overlay without its float copies whole)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha}: must lie in [0, 1]")
    if np.shape(image)[:2] != np.shape(colours)[:2]:
        raise ValueError(f"overlay of an image {np.shape(image)} and colours {np.shape(colours)}: sizes differ")
    out = np.empty((*np.shape(image)[:2], 3), dtype=np.uint8)
    band = band_rows(out.shape[1])
    for y in range(0, out.shape[0], band):
        rows = slice(y, y + band)
        out[rows] = to_uint8(overlay(image[rows], colours[rows], alpha))
    return out


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB image (float [0, 1], bool or uint8) atomically; the suffix picks the format."""
    return fileio.write_image(path, to_uint8(image))


def save_grid(
    rows: Sequence[Sequence[np.ndarray]],
    path: str | os.PathLike,
    *,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    panel_inches: float = 3.0,
    dpi: int = 100,
) -> Path:
    """A grid of images, one row per item (e.g. image | mask | colours), saved atomically as PNG.

    rows: each a list of (H, W) or (H, W, 3) images; titles label the columns, row_labels the rows.
    """
    if not rows or not rows[0]:
        raise ValueError("save_grid: no images to draw")
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    # each row as tall as its first image's aspect asks (within 1:4 and 4:1)
    aspects = [min(max(float(r[0].shape[0]) / float(r[0].shape[1]), 0.25), 4.0) for r in rows]
    extra = (0.5 if suptitle else 0.1) + (0.3 if titles else 0.0)
    fig = _figure(panel_inches * n_cols, panel_inches * sum(aspects) + extra, dpi)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"height_ratios": aspects})
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(to_uint8(row[j]), interpolation="nearest")
            if i == 0 and titles is not None and j < len(titles):
                ax.set_title(shown(titles[j]), fontsize=10)
            if j == 0 and row_labels is not None:
                ax.set_ylabel(shown(row_labels[i]), fontsize=9)
    return _save_png(fig, path, suptitle, dpi)


def shown(text: str) -> str:
    """Text as a figure can draw it: a file name that is not UTF-8 (os.fsdecode keeps its bytes as lone
    surrogates, which matplotlib refuses) with U+FFFD for each such byte, as a terminal shows it."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _figure(width: float, height: float, dpi: int):
    """A matplotlib figure that draws without pyplot (no global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | os.PathLike, suptitle: str | None, dpi: int) -> Path:
    if suptitle:
        fig.suptitle(shown(suptitle), fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def save_curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                groups: Sequence[Sequence[str]] | None = None, xlabel: str = "iteration",
                title: str | None = None, dpi: int = 100) -> Path:
    """Line plots of named (x, y) series, one panel per group of names (default: one panel each),
    saved atomically as PNG (training curves, monitor figures)."""
    names = [n for n in series if len(series[n][0])]
    if not names:
        raise ValueError("save_curves: no data to draw")
    panels = [list(g) for g in groups if any(n in names for n in g)] if groups else [[n] for n in names]
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.0 * cols, 3.0 * rows, dpi)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, group in zip(axes, panels):
        for name in group:
            if name in names:
                ax.plot(series[name][0], series[name][1], label=name, linewidth=1.2)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save_png(fig, path, title, dpi)
