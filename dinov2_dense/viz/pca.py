"""PCA maps of DINOv2 patch features (the figures of Oquab et al. 2023, "DINOv2", Fig. 1 and 9).

Two PCAs, as in the paper (:func:`fit_pca` runs both):

1. :func:`foreground_split`: a PCA of all patch tokens (centred, exact: eigen-decomposition of
   the float64 covariance). The first component separates the object from the background. It
   is thresholded (``threshold=``): ``"otsu"`` (default; Otsu's split of the first-component
   scores, exact on the sorted values, so it does not assume the object covers half the image),
   ``"zero"`` (the mean), a float (a z-score on the oriented first component: foreground =
   z > value), or ``None`` (no split: every patch is foreground).
2. :func:`colour_basis`: a PCA of the foreground patches only; its first three components
   become R, G and B, each scaled robustly (its 1st and 99th percentile over the fitted
   foreground go to 0 and 1, clipped). The background is black.

The sign rule. A principal direction has no sign, and which side of the threshold is the object
must not depend on it. The foreground is the side of the split whose patches lie *less on the
border* (the outer ring of a feature map): objects sit inside the frame, background runs to its
edges. Each fitted image votes for the side of lower border density (its border patches per patch
of the side), with the weight of its smaller side's share of its patches, and the heavier side
wins: an image that falls wholly on one side (or but for a stray patch) says nothing about object
against background and hardly counts. (Summing the rings over all images instead let such images
outweigh the ones that were split: a joint fit that put four of twelve one-object scenes wholly on
the objects' side named the background the foreground. Counting border patches instead of their
density named a large object that reaches the frame the background: in a close-up with a strip of
ground, the object holds more border patches than the strip, but fewer per patch of its area.)
Ties (equal votes, as when no image is split) go to the side with fewer border patches over all
images, then to the side with fewer patches overall, then to the side the first-component scores
are skewed towards (their long tail), then to the side of positive loading on the direction's
largest-magnitude entry (only this last, never seen in
practice, is not invariant under ``features -> -features``). All of these are unchanged by
reordering the images and by flipping the sign of the features, so the same patches are the
foreground for every image of a joint fit and under either sign. The colour components are
oriented by the skewness of their scores (positive third moment; ties: largest loading
positive), so colours too survive a sign flip of the features.

A *joint* fit over many images (or all frames of a video) uses one basis for all of them, so
the same parts get the same colours; :class:`PCABasis` saves to ``.npz`` and is reused on new
images. High-resolution maps: the projections are linear, so bilinear upsampling of the
projected scores equals projecting bilinearly upsampled features; we upsample the four score
maps to the image and threshold and colour per pixel.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..features import (DenseFeatures, FeatureOptions, NonfiniteFeaturesError, PerformanceWarning, check_forward_pass,
                        check_input, extract_features, feature_options, input_names, is_pil_image, load_array,
                        map_in_workers, to_rgb_float)
from ..fileio import atomic_path
from .figures import band_rows, overlay, overlay_uint8, save_grid, to_uint8, write_image

BASIS_VERSION = 1
Threshold = str | float | None


# -- fitting ------------------------------------------------------------------------------
def _as_map(features: Any) -> Tensor:
    """One feature map as a (C, h, w) tensor: DenseFeatures (last layer), (1, C, h, w) or (C, h, w)."""
    if isinstance(features, DenseFeatures):
        fmap = features.maps[features.layers[-1]]
    elif isinstance(features, np.ndarray):
        fmap = torch.from_numpy(features)
    elif isinstance(features, Tensor):
        fmap = features
    else:
        raise TypeError(f"cannot take a feature map from a {type(features).__name__}")
    if fmap.ndim == 4 and fmap.shape[0] == 1:
        fmap = fmap[0]
    if fmap.ndim != 3:
        raise ValueError(f"feature map of shape {tuple(fmap.shape)}: expected (C, h, w) or (1, C, h, w)")
    if not fmap.is_floating_point():
        raise ValueError(f"feature map of dtype {fmap.dtype}: expected floats")
    return fmap.detach().cpu()  # the basis lives on the CPU (float64 numpy arrays)


def _as_maps(features: Any) -> list[Tensor]:
    if isinstance(features, (list, tuple)):
        maps = [_as_map(f) for f in features]
    else:
        maps = [_as_map(features)]
    if not maps:
        raise ValueError("fit_pca: no feature maps given")
    dims = {m.shape[0] for m in maps}
    if len(dims) > 1:
        raise ValueError(f"fit_pca: feature maps of different channel counts {sorted(dims)}")
    return maps


def _rows(fmap: Tensor) -> Tensor:
    """(C, h, w) -> (h*w, C) float64."""
    return fmap.reshape(fmap.shape[0], -1).T.to(torch.float64)


def _border(h: int, w: int) -> Tensor:
    ring = torch.ones(h, w, dtype=torch.bool)
    if h > 2 and w > 2:
        ring[1:-1, 1:-1] = False
    return ring


def _moments(maps: Sequence[Tensor], masks: Sequence[Tensor] | None = None) -> tuple[Tensor, Tensor, int]:
    """Mean (C,) and covariance (C, C) in float64 over the (selected) patches; two passes, map by map."""
    c = maps[0].shape[0]
    total, n = torch.zeros(c, dtype=torch.float64), 0
    for i, m in enumerate(maps):
        x = _rows(m) if masks is None else _rows(m)[masks[i].reshape(-1)]
        total += x.sum(0)
        n += x.shape[0]
    if n == 0:
        return total, torch.zeros(c, c, dtype=torch.float64), 0
    mean = total / n
    cov = torch.zeros(c, c, dtype=torch.float64)
    for i, m in enumerate(maps):
        x = _rows(m) if masks is None else _rows(m)[masks[i].reshape(-1)]
        x = x - mean
        cov += x.T @ x
    return mean, cov / max(n - 1, 1), n


def _top_directions(cov: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k leading eigenvectors (k, C) and eigenvalues (k,), descending."""
    values, vectors = torch.linalg.eigh(cov)
    k_ = min(k, values.shape[0])
    values, vectors = values.flip(0)[:k_], vectors.flip(1)[:, :k_].T
    if k_ < k:  # fewer channels than components: the missing ones project to 0
        vectors = torch.cat([vectors, vectors.new_zeros(k - k_, vectors.shape[1])])
        values = torch.cat([values, values.new_zeros(k - k_)])
    return vectors.contiguous(), values.clamp_min(0)


def _loading_sign(v: Tensor) -> float:
    return 1.0 if float(v[int(v.abs().argmax())]) >= 0 else -1.0


def otsu_threshold(values: np.ndarray | Tensor) -> float:
    """Otsu's threshold, exact on the sorted values (no histogram): the split between two
    distinct consecutive values that maximises the between-class variance; returns its midpoint.

    Symmetric: ``otsu_threshold(-v) == -otsu_threshold(v)`` (means from both ends are summed in
    mirrored order, so negated data give the mirrored split).
    """
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = v.size
    if n == 0:
        raise ValueError("otsu_threshold: no values")
    if v[0] == v[-1]:
        return float(v[0])
    k = np.arange(1, n, dtype=np.float64)
    m0 = np.cumsum(v)[:-1] / k
    m1 = np.cumsum(v[::-1])[:-1][::-1] / k[::-1]
    between = (k / n) * (k[::-1] / n) * (m0 - m1) ** 2
    between[v[1:] == v[:-1]] = -1.0  # only split between distinct values
    i = int(np.argmax(between))
    return float((v[i] + v[i + 1]) / 2)


@dataclass
class PCABasis:
    """A fitted PCA colouring: apply it to any feature map of the same channel count.

    mean, direction: (C,) centre and first principal direction, oriented so that the foreground
        is ``(x - mean) @ direction > threshold``.
    fg_mean, fg_components: (C,), (3, C) centre and leading directions of the foreground patches.
    lo, hi: (3,) the score range mapped to [0, 1] per colour channel (robust percentiles).
    masked: False when fitted with ``threshold=None`` (every patch is foreground).
    info: how it was fitted (threshold mode, which sign rule decided, counts, variance ratios,
        model, layer and the features' ``size`` where known: `dinov2-dense pca --basis` runs at
        that size unless given another).
    """

    mean: np.ndarray
    direction: np.ndarray
    threshold: float
    fg_mean: np.ndarray
    fg_components: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    masked: bool = True
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    # -- applying -----------------------------------------------------------------------
    def project(self, features: Any) -> Tensor:
        """(4, h, w) float64 scores: the oriented first component, then the three colour components.

        DenseFeatures that carry the options they were made with (as :func:`extract_features` gives them) and
        were made with another fit, size, tiling or block than the basis records are warned of
        (:class:`OtherFitWarning`); a plain map, or DenseFeatures built otherwise, is not checked."""
        self._check_made_as_fitted(features)
        return self._scores(features)

    def _check_made_as_fitted(self, features: Any) -> None:
        options = getattr(features, "options", None) if isinstance(features, DenseFeatures) else None
        if options is None:
            return
        made = {"fit": options.fit, "size": _size_record(options.size), "tile": options.tile,
                "layer": features.layers[-1]}
        if differ := _other_settings(self, made):
            warnings.warn(_other_settings_message(differ, "extract the features with {keywords}"), OtherFitWarning,
                          stacklevel=3)

    def _scores(self, features: Any) -> Tensor:
        """:meth:`project` without the check (for callers that checked the options once for all features)."""
        fmap = _as_map(features)
        if fmap.shape[0] != self.dim:
            src = self.info.get("model") or "its features"
            raise ValueError(
                f"this PCA basis was fitted on {self.dim}-channel features ({src}), "
                f"these have {fmap.shape[0]} channels: use the same model and layer"
            )
        c, h, w = fmap.shape
        x = _rows(fmap)
        s1 = (x - torch.from_numpy(self.mean)) @ torch.from_numpy(self.direction)
        s3 = (x - torch.from_numpy(self.fg_mean)) @ torch.from_numpy(self.fg_components).T
        return torch.cat([s1[:, None], s3], 1).T.reshape(4, h, w)

    def colourise(self, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(4, H, W) scores -> foreground mask (H, W) bool and colours (H, W, 3) float32 in [0, 1]. Computed
        in float64 a band of rows at a time (:func:`~dinov2_dense.viz.figures.band_rows`), so a large image's
        maps do not take several float64 copies of the whole image."""
        h, w = scores.shape[-2:]
        mask, rgb = np.empty((h, w), dtype=bool), np.empty((h, w, 3), dtype=np.float32)
        lo = torch.from_numpy(self.lo).view(3, 1, 1)
        span = torch.from_numpy(self.hi - self.lo).view(3, 1, 1)
        rows = band_rows(w)
        for y in range(0, h, rows):
            band = scores[:, y : y + rows].to(torch.float64)
            m = band[0] > self.threshold if self.masked else torch.ones_like(band[0], dtype=torch.bool)
            colours = torch.where(span > 0, (band[1:] - lo) / span.clamp_min(1e-300), torch.full_like(band[1:], 0.5))
            mask[y : y + rows] = m.numpy()
            rgb[y : y + rows] = (colours.clamp(0, 1) * m).permute(1, 2, 0).float().numpy()
        return mask, rgb

    def transform(
        self, features: Any, size: tuple[int, int] | None = None, mode: str = "bilinear"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Foreground mask (H, W) bool and colours (H, W, 3) of one feature map.

        ``features``: a DenseFeatures (upsampled to its image, padding removed: the same geometry
        as :meth:`DenseFeatures.upsample`), or a (C, h, w) map (at the patch grid, or resized to
        ``size=(H, W)``). ``mode``: "nearest" (patch blocks) or "bilinear" (smooth). DenseFeatures made with
        another fit, size, tiling or block than the basis records are warned of, as in :meth:`project`.
        """
        self._check_made_as_fitted(features)
        scores = self._scores(features)
        scores = upsample_scores(scores, features, size=size, mode=mode)
        return self.colourise(scores)

    # -- files ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the basis to a ``.npz`` file atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            raise ValueError(f"{path}: a PCA basis is written as .npz; use that suffix")
        arrays = dict(
            version=np.array(BASIS_VERSION),
            mean=self.mean, direction=self.direction, threshold=np.array(self.threshold),
            fg_mean=self.fg_mean, fg_components=self.fg_components, lo=self.lo, hi=self.hi,
            masked=np.array(self.masked), info=np.array(json.dumps(self.info)),
        )
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return path

    @staticmethod
    def is_basis_file(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a basis file that :meth:`save` wrote (an .npz holding its arrays, told from the
        zip's list of names, nothing loaded): what ``pca --save-basis --overwrite`` may replace."""
        needed = {"version", "mean", "direction", "threshold", "fg_mean", "fg_components", "lo", "hi", "masked"}
        try:
            with zipfile.ZipFile(path) as archive:
                names = {name.removesuffix(".npy") for name in archive.namelist()}
        except (zipfile.BadZipFile, OSError, ValueError):
            return False
        return needed <= names

    @classmethod
    def load(cls, path: str | os.PathLike) -> "PCABasis":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such PCA basis file (write one with --save-basis or PCABasis.save)")
        if not zipfile.is_zipfile(path):  # an .npz is a zip; np.load would take anything else for a pickle
            raise ValueError(f"{path}: not a PCA basis file written by `dinov2-dense pca` (its pca_basis.npz or "
                             "--save-basis FILE.npz; PCABasis.save in Python)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as exc:  # zipfile / pickle / format errors alike
            raise ValueError(f"{path}: not a readable PCA basis file ({type(exc).__name__}: {exc})") from None
        needed = {"version", "mean", "direction", "threshold", "fg_mean", "fg_components", "lo", "hi", "masked"}
        if missing := needed - set(data):
            raise ValueError(f"{path}: not a PCA basis file (missing {', '.join(sorted(missing))})")
        if int(data["version"]) != BASIS_VERSION:
            raise ValueError(f"{path}: PCA basis version {int(data['version'])}, this code reads {BASIS_VERSION}")
        c = data["mean"].shape[0] if data["mean"].ndim == 1 else -1
        shapes = {"direction": (c,), "fg_mean": (c,), "fg_components": (3, c), "lo": (3,), "hi": (3,)}
        for key, shape in shapes.items():
            if c < 1 or data[key].shape != shape:
                raise ValueError(f"{path}: {key} has shape {data[key].shape}, expected {shape}")
        for key in ("mean", "threshold", *shapes):
            if not np.issubdtype(data[key].dtype, np.number) or not np.isfinite(data[key]).all():
                raise ValueError(f"{path}: {key} holds NaN, infinite or non-numeric values; this basis would "
                                 "colour every patch black: fit a new one")
        return cls(
            mean=data["mean"].astype(np.float64), direction=data["direction"].astype(np.float64),
            threshold=float(data["threshold"]), fg_mean=data["fg_mean"].astype(np.float64),
            fg_components=data["fg_components"].astype(np.float64), lo=data["lo"].astype(np.float64),
            hi=data["hi"].astype(np.float64), masked=bool(data["masked"]),
            info=json.loads(str(data["info"])) if "info" in data else {},
        )


def _check_threshold(threshold: Threshold) -> None:
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)) and threshold not in (
        "otsu", "zero", None
    ):
        raise ValueError(f"threshold={threshold!r}: use 'otsu', 'zero', a number or None"
                         + (" (the command's --threshold none is threshold=None here)" if threshold == "none" else ""))


def _check_percentiles(percentiles: tuple[float, float]) -> None:
    lo_p, hi_p = percentiles
    if not 0 <= lo_p < hi_p <= 100:
        raise ValueError(f"percentiles={percentiles}: need 0 <= low < high <= 100")


@dataclass
class ForegroundSplit:
    """Stage 1 of the PCA colouring: the first principal component of all patches and the
    foreground it splits off (see the module docstring for the threshold and the sign rule).

    mean, direction: (C,) centre and first principal direction, oriented so that the foreground
        is ``(x - mean) @ direction > threshold``.
    masks: per fitted map, (h, w) bool foreground patches (all True when ``masked`` is False).
    info: threshold mode, the sign rule that decided, patch counts, the first component's share
        of the variance.
    """

    mean: np.ndarray
    direction: np.ndarray
    threshold: float
    masks: list[np.ndarray]
    masked: bool
    info: dict = field(default_factory=dict)


def foreground_split(features: Any, *, threshold: Threshold = "otsu") -> ForegroundSplit:
    """Split the patches of one or many feature maps (as :func:`fit_pca` takes them) into
    foreground and background along their joint first principal component.

    Raises ValueError when no patch is foreground at ``threshold``.
    """
    maps = _as_maps(features)
    _check_threshold(threshold)
    mean, cov, n = _moments(maps)
    (v1,), (lam1,) = _top_directions(cov, 1)
    scores = [(_rows(m) - mean) @ v1 for m in maps]  # per map, (h*w,)
    flat = torch.cat(scores).numpy()
    t = 0.0 if threshold == "zero" else otsu_threshold(flat)
    ring = torch.cat([_border(*m.shape[1:]).reshape(-1) for m in maps]).numpy()
    pos = flat > t
    # each image votes for the side of lower border density (its border patches per patch of the
    # side), with the weight of its smaller side's share of its patches: an image wholly on one side
    # (or but for a stray patch) says nothing about object against background
    ballots_pos, ballots_neg = [0.0], [0.0]
    start = 0
    for m in maps:
        end = start + m.shape[1] * m.shape[2]
        p, r = pos[start:end], ring[start:end]
        start = end
        size_pos, size_neg = int(p.sum()), int((~p).sum())
        weight = min(size_pos, size_neg) / p.size
        if weight:  # border density: border patches per patch of the side (cross-multiplied: exact)
            on_pos, on_neg = int((p & r).sum()) * size_neg, int((~p & r).sum()) * size_pos
            (ballots_pos if on_pos < on_neg else ballots_neg if on_neg < on_pos else []).append(weight)
    votes_pos, votes_neg = math.fsum(ballots_pos), math.fsum(ballots_neg)  # exact sums: no order dependence
    border_pos, border_neg = int((pos & ring).sum()), int((~pos & ring).sum())
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    skew = float(np.sum((flat - flat.mean()) ** 3))
    if votes_pos != votes_neg:
        fg_positive, rule = votes_pos > votes_neg, "border"
    elif border_pos != border_neg:
        fg_positive, rule = border_pos < border_neg, "border total"
    elif n_pos != n_neg:
        fg_positive, rule = n_pos < n_neg, "minority"
    elif skew != 0.0:
        fg_positive, rule = skew > 0, "skew"
    else:
        fg_positive, rule = _loading_sign(v1) > 0, "loading"
    if not fg_positive:
        v1, t, flat = -v1, -t, -flat
        scores = [-s for s in scores]
    std = float(flat.std())
    if isinstance(threshold, (int, float)):
        t = float(threshold) * std
    masked = threshold is not None
    masks = [((s > t) if masked else torch.ones_like(s, dtype=torch.bool)).reshape(m.shape[1:])
             for s, m in zip(scores, maps)]
    n_fg = int(sum(int(m.sum()) for m in masks))
    if n_fg == 0 and n == 1:
        raise ValueError(
            "the image is too small for a foreground/background split: its features are one patch; resize it "
            "larger (--size; size= in Python), or use no foreground split (--threshold none; threshold=None)"
        )
    if n_fg == 0:
        raise ValueError(
            f"no patch is foreground at threshold {threshold!r} (first-component z-scores reach "
            f"{flat.max() / max(std, 1e-300):.2f}): lower the threshold, or use no foreground split "
            "(--threshold none; threshold=None in Python)"
        )
    trace = float(torch.trace(cov))
    info = {
        "threshold_mode": "none" if threshold is None else threshold,
        "sign_rule": rule,
        "images": len(maps),
        "patches": n,
        "foreground_patches": n_fg,
        "border_votes": {"foreground": round(votes_pos if fg_positive else votes_neg, 6),
                         "background": round(votes_neg if fg_positive else votes_pos, 6)},
        "border_patches": {"foreground": border_pos if fg_positive else border_neg,
                           "background": border_neg if fg_positive else border_pos},
        "first_component_variance": float(lam1) / trace if trace > 0 else 0.0,
    }
    return ForegroundSplit(mean=mean.numpy(), direction=v1.numpy(), threshold=float(t),
                           masks=[m.numpy() for m in masks], masked=masked, info=info)


def colour_basis(
    features: Any,
    split: ForegroundSplit,
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    info: dict | None = None,
) -> PCABasis:
    """Stage 2 of the PCA colouring: three principal components of the foreground patches of
    ``split`` (fitted on the same ``features``), oriented by their skewness and scaled so that the
    ``percentiles`` of their scores go to 0 and 1; with the split, the :class:`PCABasis`."""
    maps = _as_maps(features)
    _check_percentiles(percentiles)
    if [tuple(m.shape[1:]) for m in maps] != [m.shape for m in split.masks]:
        raise ValueError(f"colour_basis: the split was made on {len(split.masks)} map(s) of other sizes than these "
                         f"{len(maps)}: pass the features foreground_split was given")
    masks = [torch.from_numpy(m.reshape(-1)) for m in split.masks]
    fg_mean, fg_cov, _ = _moments(maps, masks)
    comps, lams = _top_directions(fg_cov, 3)
    fg_scores = torch.cat([(_rows(m)[k] - fg_mean) @ comps.T for m, k in zip(maps, masks)])  # (n_fg, 3)
    for j in range(3):
        third = float((fg_scores[:, j] ** 3).sum())
        sign = (1.0 if third > 0 else -1.0) if third != 0.0 else _loading_sign(comps[j])
        comps[j] *= sign
        fg_scores[:, j] *= sign
    lo, hi = np.percentile(fg_scores.numpy(), list(percentiles), axis=0)
    fg_trace = float(torch.trace(fg_cov))
    meta = {
        **split.info,
        "colour_variance": [float(x) / fg_trace if fg_trace > 0 else 0.0 for x in lams],
        "percentiles": list(percentiles),
        **(info or {}),
    }
    return PCABasis(
        mean=split.mean, direction=split.direction, threshold=split.threshold, fg_mean=fg_mean.numpy(),
        fg_components=comps.numpy(), lo=np.asarray(lo, np.float64), hi=np.asarray(hi, np.float64),
        masked=split.masked, info=meta,
    )


def fit_pca(
    features: Any,
    *,
    threshold: Threshold = "otsu",
    percentiles: tuple[float, float] = (1.0, 99.0),
    info: dict | None = None,
) -> PCABasis:
    """Fit the two-stage PCA colouring jointly over one or many feature maps:
    :func:`foreground_split`, then :func:`colour_basis` on its foreground.

    Args:
        features: a (C, h, w) / (1, C, h, w) map or DenseFeatures, or a list of them (the joint fit:
            one basis for all, so the same parts get the same colours).
        threshold: "otsu", "zero", a float (z-score on the oriented first component) or None
            (no foreground split); see the module docstring.
        percentiles: the score percentiles of the foreground mapped to 0 and 1 per colour.
        info: extra fields (model, layer) kept in the basis and its file.
    Returns:
        the fitted :class:`PCABasis`.
    """
    maps = _as_maps(features)
    _check_threshold(threshold)
    _check_percentiles(percentiles)  # both checked before any work
    return colour_basis(maps, foreground_split(maps, threshold=threshold), percentiles=percentiles, info=info)


def upsample_scores(scores: Tensor, features: Any, size: tuple[int, int] | None = None,
                    mode: str = "bilinear") -> Tensor:
    """(k, h, w) patch-grid scores to pixels: DenseFeatures geometry (padding removed, the image's
    size), else plain resizing to ``size`` (or left at the grid when ``size`` is None)."""
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"upsample mode {mode!r}: use 'nearest' or 'bilinear'")
    if isinstance(features, DenseFeatures):
        geo = DenseFeatures(maps={0: scores[None]}, cls_tokens={}, registers={}, image_size=features.image_size,
                            input_size=features.input_size, padding=features.padding,
                            patch_size=features.patch_size)
        up = geo.upsample(0, mode=mode)[0]
        if size is not None and tuple(up.shape[-2:]) != tuple(size):
            up = _resize(up, size, mode)
        return up
    if size is None or tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return _resize(scores, size, mode)


def _resize(x: Tensor, size, mode: str) -> Tensor:
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None].float(), size=tuple(size), mode=mode, **kwargs)[0]


# -- images -------------------------------------------------------------------------------
@dataclass
class PCAMap:
    """The PCA map of one image. image: (H, W, 3) uint8 RGB, the input as figures show it (8 bits
    per channel: a quarter of float32's memory); rgb: (H, W, 3) float in [0, 1]; mask: (H, W)
    bool; patch_mask, patch_rgb: the same at the patch grid (h, w); basis: the basis that
    coloured it."""

    source: str
    image: np.ndarray
    mask: np.ndarray
    rgb: np.ndarray
    patch_mask: np.ndarray
    patch_rgb: np.ndarray
    basis: PCABasis

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        return overlay(self.image, self.rgb, alpha)


def _colour(basis: PCABasis, feats: DenseFeatures, image: np.ndarray, source: str, mode: str) -> PCAMap:
    scores = basis._scores(feats)  # (the callers checked the options against the basis's once: _basis_options)
    patch_mask, patch_rgb = basis.colourise(scores)
    mask, rgb = basis.colourise(upsample_scores(scores, feats, mode=mode))
    return PCAMap(source, image, mask, rgb, patch_mask, patch_rgb, basis)


def _display(array: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) copy of a raw image for figures and overlays."""
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] in (3, 4):
        return array[..., :3].copy()  # the same bytes as to_uint8(to_rgb_float(.)); lets the decoded array go
    return to_uint8(to_rgb_float(array))


def _check_upsample(upsample: str) -> None:
    if upsample not in ("nearest", "bilinear"):
        raise ValueError(f"upsample={upsample!r}: use 'nearest' or 'bilinear'")


class OtherFitWarning(UserWarning):
    """Features made with another fit to the patch grid, size or tiling than the basis that colours them was
    fitted on."""


def _basis_options(basis: "PCABasis | None", fit: str | None, options: FeatureOptions | None, model, layer: int,
                   **settings: Any) -> FeatureOptions:
    """:func:`_pca_options` where a ``basis`` colours the maps: ``fit`` left out (and no ``options``) is the
    basis's own; another one than the basis's, and another size, tiling or block, is warned of (its colours and
    threshold fit other features)."""
    fitted = basis_fit(basis)
    options = _pca_options(model, options, layer, fit=fit if fit is not None or options is not None else fitted,
                           **settings)
    # the size, tiling and block too (None is a size: the images' own, so it cannot mean "the basis's" as fit does)
    differ = _other_settings(basis, {"fit": options.fit, "size": _size_record(options.size), "tile": options.tile,
                                     "layer": model.resolve_layers(options.layers)[-1]})
    if other_fit := [d for d in differ if d[0] == "fit"]:
        warnings.warn(_other_settings_message(other_fit, "leave fit out to use the basis's"), OtherFitWarning,
                      stacklevel=3)
    if others := [d for d in differ if d[0] != "fit"]:
        warnings.warn(_other_settings_message(others, "pass {fitted}"), OtherFitWarning, stacklevel=3)
    return options


def _other_settings(basis: "PCABasis | None", made: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(setting, as made, as fitted) for each of the features' settings in ``made`` (``fit``; ``size`` as
    :func:`_size_record` records it; ``tile``; ``layer``, the block index) that differs from what ``basis``
    records: the one rule of which features a basis fits. The fit is :func:`basis_fit`'s (an earlier version's
    basis: padded); a size, tiling or block the basis does not record (one fitted on features alone) is not
    compared, nor a negative block (it needs the model to resolve)."""
    if basis is None:
        return []
    fitted = {key: basis.info[key] for key in ("size", "tile", "layer") if key in basis.info}
    if basis_fit(basis) is not None:
        fitted["fit"] = basis_fit(basis)
    if not (isinstance(fitted.get("layer"), int) and fitted["layer"] >= 0):
        fitted.pop("layer", None)
    return [(key, value, fitted[key]) for key, value in made.items() if key in fitted and value != fitted[key]]


def _other_settings_message(differ: list[tuple[str, Any, Any]], advice: str) -> str:
    """The warning for :func:`_other_settings`' differences; ``advice``: what to do, where ``{fitted}`` stands
    for the basis's settings, ``{keywords}`` for them as extract_features' keywords (``layers=[n]``)."""
    made = ", ".join(f"{key}={value!r}" for key, value, _ in differ)
    fitted = ", ".join(f"{key}={value!r}" for key, _, value in differ)
    keywords = ", ".join(f"layers=[{value!r}]" if key == "layer" else f"{key}={value!r}" for key, _, value in differ)
    return (f"{made}, but the basis was fitted with {fitted}: its colours and foreground threshold fit features made "
            f"so, so the masks and colours may be off ({advice.format(fitted=fitted, keywords=keywords)})")


def basis_fit(basis: "PCABasis | None") -> str | None:
    """The fit to the patch grid that ``basis`` was fitted with: its record; "pad" for a basis of the
    command or ``pca_maps`` of an earlier version (it records its size but no fit: they padded); None where
    nothing is known (no basis, or one fitted on features alone)."""
    if basis is None:
        return None
    return basis.info.get("fit", "pad" if "size" in basis.info else None)


def _pca_options(model, options: FeatureOptions | None, layer: int, **settings: Any) -> FeatureOptions:
    """The feature settings of a PCA call: ``options``, else the keywords (``layer`` -1 is the last
    block, as ``layers=None``); see :func:`dinov2_dense.features.feature_options`. A PCA map
    colours one block, so ``options.layers`` must select one."""
    if settings.get("fit") is None:  # PCA's own default, "resize"; with options, theirs
        settings["fit"] = "resize" if options is None else FeatureOptions().fit
    options = feature_options(options, layers=None if layer == -1 else [layer], **settings)
    if len(blocks := model.resolve_layers(options.layers)) != 1:
        raise ValueError(f"layers={options.layers!r} selects blocks {blocks}: a PCA map colours one block; "
                         "give one index")
    return options


def _chunks(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``n`` items (the last may be shorter), drawn lazily from ``items``."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check_forward(model, sizes: dict[tuple[int, int], str], options: FeatureOptions) -> None:
    """Refuse a forward pass too large to run untiled, and announce a very long one on the CPU, up
    front and naming the input (``sizes``: (H, W) -> name), as :func:`extract_features` does for
    its own inputs: the arrays :func:`_extract` passes it later have no names."""
    check_forward_pass(sizes, options, model.patch_size, next(model.parameters()).device)


def _extract(model, arrays: Iterable[np.ndarray], options: FeatureOptions, bar, display: bool = True,
             name_of: Callable[[int], str] | None = None) -> tuple[list[DenseFeatures], list[np.ndarray]]:
    """DenseFeatures (and, with ``display``, a uint8 copy for figures) of raw image arrays, drawn
    and run one batch at a time: only a batch of decoded images is in memory, never all of them.
    ``bar`` (tqdm) advances by image; ``name_of(i)``: the i-th array's file, for errors. The sizes were checked by
    :func:`_check_forward`."""
    feats: list[DenseFeatures] = []
    shown: list[np.ndarray] = []
    for chunk in _chunks(arrays, options.batch_size):
        with warnings.catch_warnings():  # said once up front, naming the file, not per batch as "image 0"
            warnings.filterwarnings("ignore", message=".*one forward pass of", category=PerformanceWarning)
            try:
                feats.extend(extract_features(model, chunk, options=options, progress=False))
            except NonfiniteFeaturesError as exc:
                if name_of is None:
                    raise
                raise exc.named([name_of(i) for i in range(len(feats), len(feats) + len(chunk))]) from None
        if display:
            shown.extend(_display(a) for a in chunk)
        bar.update(len(chunk))
        del chunk  # before the next batch is decoded
    return feats, shown


def pca_maps(
    model,
    images: Any,
    *,
    basis: PCABasis | None = None,
    joint: bool = True,
    threshold: Threshold = "otsu",
    layer: int = -1,
    size: int | Sequence[int] | None = None,
    tile: int | None = None,
    fit: str | None = None,
    upsample: str = "bilinear",
    batch_size: int = 8,
    progress: bool | None = None,
    info: dict | None = None,
    options: FeatureOptions | None = None,
    num_workers: int = 0,
) -> list[PCAMap]:
    """PCA maps of images with a backbone.

    Args:
        model: a DinoVisionTransformer (see :func:`dinov2_dense.features.extract_features`).
        images: paths (errors name them), ``skimage:NAME``, arrays or PIL images, in a list or any
            iterable (a stack of arrays too), or one of them (then one PCAMap is returned, as
            :func:`extract_features` returns one). All are checked
            before any work is done (files by their headers); they are then decoded one chunk of
            ``batch_size`` at a time, and only a uint8 copy of each is kept for the figures.
        basis: apply this fitted basis to every image (no fitting).
        joint: one basis fitted over all images (same parts, same colours); False fits one per image.
        threshold: see :func:`fit_pca`. layer: block index (negative from the end).
        size, tile, fit: as in extract_features: a larger ``size`` gives finer maps, ``tile``
            bounds memory for large inputs. ``fit`` left out is a ``basis``'s own (:func:`basis_fit`),
            else "resize" here (extract_features' default is "pad"): the patches of zero padding, at the border, are unlike any of the image's, and
            decided which side of the split was the object (a one-pixel pad row flipped the
            foreground of 5 of 6 small scene crops); a resize to the grid changes the aspect ratio by at most
            half a patch a side.
        upsample: "bilinear" or "nearest", from the patch grid to the image.
        options: the feature settings as one :class:`~dinov2_dense.features.FeatureOptions`
            (one block in ``layers``), instead of ``layer``, ``size``, ``tile``, ``fit`` and
            ``batch_size``; it also reaches ``norm``, ``tile_overlap``, ``autocast`` and
            ``resize_8bit``.
        num_workers: DataLoader workers that decode the next images while the model runs (0:
            decode here). The maps are the same either way.
    """
    single = _one_image(images)
    options = _basis_options(basis, fit, options, model, layer, size=size, tile=tile, batch_size=batch_size)
    _, names, feats, shown, bases = _fitted(model, [images] if single else list(images), options, basis, joint, threshold,
                                            upsample, progress, info, num_workers, display=True)
    maps = [_colour(b, f, a, n, upsample) for b, f, a, n in zip(bases, feats, shown, names)]
    return maps[0] if single else maps


def pca_map_stream(model, images: Sequence[Any], *, basis: PCABasis | None = None, joint: bool = True,
                   threshold: Threshold = "otsu", layer: int = -1, size: int | Sequence[int] | None = None,
                   tile: int | None = None, fit: str | None = None, upsample: str = "bilinear", batch_size: int = 8,
                   progress: bool | None = None, info: dict | None = None, options: FeatureOptions | None = None,
                   num_workers: int = 0) -> "PCAMapStream":
    """:func:`pca_maps` for many or large images: the features are computed and the bases fitted now, but
    the maps are made one at a time as the result is iterated (each image decoded again then), so memory
    holds the patch features of all images and the full-size maps of one. :func:`save_maps` writes it
    image by image. The arguments are those of :func:`pca_maps`."""
    if _one_image(images):
        raise TypeError(f"pca_map_stream takes several images (a list of them), not one {type(images).__name__}: "
                        "give [image], or pca_maps for one")
    images = list(images)
    options = _basis_options(basis, fit, options, model, layer, size=size, tile=tile, batch_size=batch_size)
    items, names, feats, _, bases = _fitted(model, images, options, basis, joint, threshold, upsample, progress, info,
                                            num_workers, display=False)
    return PCAMapStream(items, names, feats, bases, upsample, num_workers)


def _one_image(images: Any) -> bool:
    """Whether ``images`` is one image (a path, an array of one image, a PIL image, a tensor of one image), not
    several (a list, tuple or other iterable of them, an array or tensor of a stack of them)."""
    if isinstance(images, (str, os.PathLike)) or is_pil_image(images):
        return True
    if isinstance(images, (np.ndarray, Tensor)):
        return images.ndim <= 3
    return False


class PCAMapStream:
    """The PCA maps of :func:`pca_map_stream`, made as they are iterated (in input order; each image decoded
    again, by ``num_workers`` DataLoader workers ahead of the colouring). ``sources``, ``bases``: each
    image's name and basis, known without iterating; ``len()`` their number."""

    def __init__(self, items: list, names: list[str], feats: list[DenseFeatures], bases: list[PCABasis],
                 upsample: str, num_workers: int):
        self.items, self.sources, self.feats, self.bases = items, names, feats, bases
        self.upsample, self.num_workers = upsample, num_workers

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[PCAMap]:
        arrays = map_in_workers(load_array, self.items, self.num_workers)
        for basis, feats, array, name in zip(self.bases, self.feats, arrays, self.sources):
            if tuple(array.shape[:2]) != tuple(feats.image_size):
                raise ValueError(f"{name}: decoded to {array.shape[1]}x{array.shape[0]} pixels, but it was "
                                 f"{feats.image_size[1]}x{feats.image_size[0]} when its features were made (did the "
                                 "file change?)")
            yield _colour(basis, feats, _display(array), name, self.upsample)
            del array


def _fitted(model, images: Sequence[Any], options: FeatureOptions, basis: PCABasis | None, joint: bool,
            threshold: Threshold, upsample: str, progress: bool | None, info: dict | None, num_workers: int,
            display: bool):
    """The inputs checked, their features and a basis for each (``basis``, one joint fit or one fit each), and
    with ``display`` a uint8 copy of each image: (items, names, features, copies, bases)."""
    from tqdm.auto import tqdm

    _check_upsample(upsample)
    items = list(images)
    if not items:
        raise ValueError("pca_maps: no images given")
    names = input_names(items)
    sizes: dict[tuple[int, int], str] = {}
    for x, name in zip(items, names):  # every input is checked first: a missing or unreadable file stops us
        if isinstance(x, Tensor):  # (extract_features takes them: its error says so)
            load_array(x)
        sizes.setdefault(check_input(x), name)  # before any work
    _check_forward(model, sizes, options)
    show = progress if progress is not None else len(items) > options.batch_size
    with tqdm(total=len(items), desc="features", unit="image", disable=not show) as bar:
        feats, shown = _extract(model, map_in_workers(load_array, items, num_workers), options, bar,
                                display=display, name_of=names.__getitem__)
    if basis is not None:
        bases = [basis] * len(feats)
    else:
        meta = _fit_record(model, feats, options, info)
        if joint:
            bases = [_fit_named(feats, names, threshold, meta)] * len(feats)
        else:
            bases = [_fit_named([f], [n], threshold, meta) for f, n in zip(feats, names)]
    return items, names, feats, shown, bases


def _fit_record(model, feats: list[DenseFeatures], options: FeatureOptions, info: dict | None) -> dict:
    """What a basis records of how its features were made, as the command's does (reused with --basis,
    features are computed the same way, and other weights are warned of): the block, size, tiling, the
    fit to the patch grid, the 8-bit resize and the identity of the weights (:func:`dinov2_dense.checkpoints.weights_identity` with
    its ``features_sha256``, hashed now unless ``info``, which is added last, has it), and the zoo name of a
    model :func:`~dinov2_dense.load_backbone` built by one (``pca --basis`` then runs that model: a basis saved
    in Python recorded none, and the command took its default)."""
    record = {"layer": feats[0].layers[-1], "size": _size_record(options.size), "tile": options.tile,
              "fit": options.fit, **({"resize_8bit": True} if options.resize_8bit else {})}
    if isinstance(getattr(model, "zoo_name", None), str):
        record["model"] = model.zoo_name
    if "weights_sha256" not in (info or {}):
        from ..checkpoints import weights_identity

        record.update(weights_identity(model, features=True))
    return {**record, **(info or {})}


def _size_record(size) -> int | list[int] | None:
    """``size`` as a basis records it (JSON): the features' resize, which its colours are fitted to."""
    if size is None:
        return None
    return int(size) if isinstance(size, (int, np.integer)) else [int(v) for v in size]


def _fit_named(feats: list[DenseFeatures], names: list[str], threshold: Threshold, info: dict) -> PCABasis:
    """:func:`fit_pca`; a fit of one image that fails names the image."""
    try:
        return fit_pca(feats, threshold=threshold, info=info)
    except ValueError as exc:
        if len(names) != 1:
            raise
        raise ValueError(f"{names[0]}: {exc}") from None


# -- figures and files --------------------------------------------------------------------
COLUMNS = ("image", "foreground", "PCA colours", "overlay")


#: The longest side of the copy of a map that a figure draws (a figure's panel is 300 pixels wide): a larger
#: map is shrunk first (averaging pixels; its mask by nearest pixel), so that figures of many large images
#: need not hold them at full size (:func:`save_maps` keeps one figure's rows).
FIGURE_SIDE = 1024


def for_figure(m: PCAMap, side: int | None = None) -> PCAMap:
    """``m`` as figures draw it: itself where no side is longer than ``side`` pixels (default
    :data:`FIGURE_SIDE`), else shrunk to that."""
    side = FIGURE_SIDE if side is None else side
    h, w = m.image.shape[:2]
    if max(h, w) <= side:
        return m
    import cv2

    scale = side / max(h, w)
    wh = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = cv2.resize(m.image, wh, interpolation=cv2.INTER_AREA)
    rgb = cv2.resize(np.ascontiguousarray(m.rgb, dtype=np.float32), wh, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(m.mask.astype(np.uint8), wh, interpolation=cv2.INTER_NEAREST).astype(bool)
    return PCAMap(m.source, image, mask, rgb, m.patch_mask, m.patch_rgb, m.basis)


def save_figure(maps: Sequence[PCAMap], path: str | os.PathLike, *, alpha: float = 0.5,
                title: str | None = None, labels: Sequence[str] | None = None) -> Path:
    """One row per map: image | foreground mask | PCA colours | overlay, as a PNG (atomic); without the
    mask where no basis splits a foreground (``threshold=None``: every pixel would be foreground). Rows
    are labelled ``labels``, by default each map's source (:func:`row_labels`). Maps larger than
    :data:`FIGURE_SIDE` are drawn from a shrunk copy (:func:`for_figure`)."""
    maps = [for_figure(m) for m in maps]
    masks = any(m.basis.masked for m in maps)
    rows = [[m.image, *([m.mask] if masks else []), m.rgb, m.overlay(alpha)] for m in maps]
    labels = list(labels) if labels is not None else row_labels([m.source for m in maps])
    titles = COLUMNS if masks else tuple(c for c in COLUMNS if c != "foreground")
    return save_grid(rows, path, titles=titles, row_labels=labels, suptitle=title)


def describe(basis: PCABasis) -> str:
    """One line on how a basis was fitted, for figure titles and the command's output."""
    i = basis.info
    parts = [f"{i.get('images', '?')} {'frames of ' + Path(i['video']).name if 'video' in i else 'image(s)'}"]
    if "first_component_variance" in i:
        parts.append(f"1st component {100 * i['first_component_variance']:.0f}% of variance")
    if basis.masked:
        parts.append(f"threshold {i.get('threshold_mode')}, foreground {i.get('foreground_patches')}"
                     f"/{i.get('patches')} patches (sign rule: {i.get('sign_rule')})")
    else:
        parts.append("no foreground split")
    if i.get("weights_form") not in (None, "float32"):  # what ran (--dtype, FP8): it changes the maps a little
        parts.append(f"{i['weights_form']} weights")
    return "PCA of " + ", ".join(parts)


def _short(source: str, width: int = 28) -> str:
    name = Path(source).name if os.sep in source or "/" in source else source
    return name if len(name) <= width else "..." + name[-(width - 3):]


def row_labels(sources: Sequence[str], width: int = 28) -> list[str]:
    """A figure's row label for each source, told apart: the file name, and for files of one name in
    other folders (``a/x.png``, ``b/x.png``) the shortest end of the path that no other source
    shares (``a/x.png``, ``b/x.png``), cut in the middle beyond ``width`` characters. Where even that
    repeats (a file given twice), the file stems :func:`save_maps` writes (``x``, ``x_2``)."""
    labels = [_short(s, width) for s in sources]
    if len(set(labels)) == len(labels):
        return labels
    parts = [Path(s).parts if os.sep in s or "/" in s else (s,) for s in sources]
    repeated = {label for label in labels if labels.count(label) > 1}
    for i, p in enumerate(parts):
        if labels[i] not in repeated:
            continue
        others = [q for j, q in enumerate(parts) if j != i]
        k = next((k for k in range(1, len(p) + 1) if all(q[-k:] != p[-k:] for q in others)), len(p))
        label = "/".join(p[-k:])
        labels[i] = label if len(label) <= width else label[:width // 2 - 2] + "..." + label[-(width - width // 2 - 1):]
    return labels if len(set(labels)) == len(labels) else _unique_stems(sources)


def _unique_stems(sources: Sequence[str]) -> list[str]:
    """A file stem for each source, distinct from every other: a repeated stem gets ``_2``, ``_3``...,
    skipping any that another source has as its own stem (``a/cat.png``, ``b/cat.png`` and
    ``c/cat_2.png`` give ``cat``, ``cat_3`` and ``cat_2``)."""
    plain = []
    for i, s in enumerate(sources):
        stem = Path(s).stem if not s.startswith("skimage:") else s.split(":", 1)[1]
        plain.append("".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem) or f"image{i}")
    taken, used, stems = set(plain), set(), []
    for stem in plain:
        if stem in used:
            n = 2
            while f"{stem}_{n}" in taken:
                n += 1
            stem = f"{stem}_{n}"
            taken.add(stem)
        used.add(stem)
        stems.append(stem)
    return stems


def save_maps(maps: "Sequence[PCAMap] | PCAMapStream", out_dir: str | os.PathLike, *, alpha: float = 0.5,
              rows_per_figure: int = 8, title: str | None = None, progress: bool | None = None) -> list[Path]:
    """Write per-image PNGs (``<stem>_pca.png``, ``_mask.png``, ``_overlay.png``, at the image's
    resolution; no ``_mask.png`` for a basis without a foreground split, ``threshold=None``) and the
    figure(s) (``figure.png``, or ``figure_1.png``... beyond ``rows_per_figure`` rows), each figure as
    soon as its rows are written. ``maps``: a list, or a :class:`PCAMapStream` (made and written one
    image at a time: memory holds one full-size map and one figure's shrunk rows)."""
    from tqdm.auto import tqdm

    out = Path(out_dir)
    written: list[Path] = []
    sources = maps.sources if isinstance(maps, PCAMapStream) else [m.source for m in maps]
    stems = _unique_stems(sources)
    labels = row_labels(sources)  # told apart over every figure
    figures = -(-len(sources) // rows_per_figure)
    show = progress if progress is not None else len(sources) > 8
    rows: list[PCAMap] = []
    bar = tqdm(total=len(sources), desc="writing", unit="image", disable=not show)
    i = -1
    for m in maps:  # (a wrapping iterator, enumerate's and tqdm's too, holds the last map while the next is made)
        i += 1
        stem = stems[i]
        written.append(write_image(out / f"{stem}_pca.png", m.rgb))
        if m.basis.masked:  # (unmasked, every pixel is foreground: a white file that says nothing)
            written.append(write_image(out / f"{stem}_mask.png", m.mask))
        written.append(write_image(out / f"{stem}_overlay.png", overlay_uint8(m.image, m.rgb, alpha)))
        rows.append(for_figure(m))
        del m  # (a stream's full-size map goes before the next one is made)
        if len(rows) == rows_per_figure or i == len(sources) - 1:
            k = i // rows_per_figure + 1
            name = "figure.png" if figures == 1 else f"figure_{k}.png"
            written.append(save_figure(rows, out / name, alpha=alpha, title=title,
                                       labels=labels[(k - 1) * rows_per_figure : i + 1]))
            rows = []
        bar.update()
    bar.close()
    return written


# -- video --------------------------------------------------------------------------------
class VideoPCA(tuple):
    """What :func:`pca_video` returns: the pair (basis, samples), with ``frames``, the number of
    frames written to the video."""

    frames: int

    def __new__(cls, basis: PCABasis, samples: list[PCAMap], frames: int) -> "VideoPCA":
        pair = super().__new__(cls, (basis, samples))
        pair.frames = frames
        return pair

    @property
    def basis(self) -> PCABasis:
        return self[0]

    @property
    def samples(self) -> list[PCAMap]:
        return self[1]


def is_still_image(path: str | os.PathLike) -> bool:
    """Whether the file at ``path`` is a still image, not a video: Pillow reads it as an image of one frame (a
    PNG, a JPEG, a one-frame GIF; an animated GIF of several frames is a video) and OpenCV decodes at most one
    frame of it (OpenCV takes an image for a one-frame video at an invented 25 fps; a raw MJPEG or MPEG stream,
    which Pillow reads as one image and whose header counts no frames, decodes to many). Decided by the content,
    not the suffix."""
    import cv2

    if _image_frames(path) != 1:
        return False
    from ..images import opencv_path

    capture = cv2.VideoCapture(opencv_path(path, "video"))
    try:
        decoded = 0
        while decoded < 2 and capture.read()[0]:
            decoded += 1
    finally:
        capture.release()
    return decoded <= 1


def _image_frames(path: str | os.PathLike) -> int | None:
    """The number of frames (pages) of the file as Pillow reads it as an image; None for a file it does not."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1))
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _frames_text(read: int, expected: int, header: int, step: int, max_frames: int | None) -> str:
    """How many of the frames its header gives were read, the frame step and frame limit said where they
    apply: "read 6 of the 8 frames that its header's 16 give with frame step 2"."""
    said = f"read {read} of the {expected} frames"
    limits = [f"frame step {step}"] if step > 1 else []
    if max_frames is not None and expected == max_frames < math.ceil(header / step):
        limits.append(f"at most {max_frames} frames")
    return f"{said} that its header's {header} give with {' and '.join(limits)}" if limits else \
        f"{said} its header announces"


def pca_video(
    model,
    video: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    basis: PCABasis | None = None,
    threshold: Threshold = "otsu",
    layer: int = -1,
    size: int | Sequence[int] | None = None,
    tile: int | None = None,
    fit: str | None = None,
    upsample: str = "bilinear",
    batch_size: int = 8,
    step: int = 1,
    max_frames: int | None = None,
    frames_dir: str | os.PathLike | None = None,
    sample_rows: int = 6,
    progress: bool = True,
    info: dict | None = None,
    options: FeatureOptions | None = None,
) -> VideoPCA:
    """PCA colours of a video, jointly over its frames: writes ``out_path`` (frame | PCA colours
    side by side, the input's frame rate divided by ``step``) and, with ``frames_dir``, one
    ``frame_NNNNNN.png`` of colours per frame.

    Two passes over the file: features of all frames (kept at the patch grid only) for the joint
    fit, then colouring and writing frame by frame, so only one batch of frames is held.
    The other arguments, ``options`` included, are those of :func:`pca_maps`; the frame size in
    the file's header is checked against the forward-pass limit before any frame is decoded.
    Returns the basis and the PCA maps of up to ``sample_rows`` evenly spaced frames (for a figure),
    as a pair whose ``frames`` is the number of frames written (:class:`VideoPCA`). A still image is refused
    (:func:`is_still_image`); a ``step`` that leaves one frame of several, and a file that holds fewer frames
    than its header gives, are warned of.
    """
    from tqdm.auto import tqdm

    from .video import VideoWriter, read_frames, video_info

    _check_upsample(upsample)
    options = _basis_options(basis, fit, options, model, layer, size=size, tile=tile, batch_size=batch_size)
    vinfo = video_info(video)
    if is_still_image(video):
        raise ValueError(f"{video}: an image, not a video (one still frame): colour it with pca_maps")
    if min(vinfo.size) > 0:
        _check_forward(model, {vinfo.size: f"{video} (frames of {vinfo.size[1]}x{vinfo.size[0]})"}, options)
    expected = math.ceil(vinfo.frames / step) if vinfo.frames > 0 else None
    if expected is not None and max_frames is not None:
        expected = min(expected, max_frames)

    with tqdm(total=expected, desc="features", unit="frame", disable=not progress) as bar:
        feats, _ = _extract(model, read_frames(video, step, max_frames), options, bar, display=False,
                            name_of=lambda i: f"{video} (frame {i * step})")
        # read_frames raises when no frame decodes: feats is not empty
    if expected is not None and len(feats) < expected:
        warnings.warn(f"{video}: {_frames_text(len(feats), expected, vinfo.frames, step, max_frames)}; the file may "
                      "be truncated, or a format OpenCV reads only in part (e.g. GIF)", stacklevel=2)
    pages = _image_frames(video) if vinfo.frames <= 1 else None  # (a video's container: no need to look)
    if pages is not None and pages > 1 and max_frames != 1 and len(feats) * step < pages:
        # a multi-page TIFF or an MPO photo: OpenCV reads its first image alone, as a one-frame video
        warnings.warn(f"{video}: an image of {pages} frames, of which OpenCV decodes {len(feats)}: the others are "
                      "left out (write them as a video, or give them as images)", stacklevel=2)
    if len(feats) == 1 and step > 1 and max_frames != 1 and vinfo.frames > 1:
        warnings.warn(f"{video}: frame step {step} leaves 1 frame of its {vinfo.frames}: the video written is that "
                      f"frame alone, at {vinfo.fps / step:.3g} fps (a smaller step keeps more)", stacklevel=2)
    if basis is None:
        basis = fit_pca(feats, threshold=threshold, info=_fit_record(model, feats, options, {"video": str(video),
                                                                                             **(info or {})}))

    n = len(feats)
    rows = min(sample_rows, n)
    picks = sorted({round(i * (n - 1) / max(rows - 1, 1)) for i in range(rows)})  # evenly spaced, first and last
    samples: list[PCAMap] = []
    h, w = feats[0].image_size
    fps = vinfo.fps / step
    frames_dir = Path(frames_dir) if frames_dir is not None else None
    with VideoWriter(out_path, fps=fps, size=(h, 2 * w)) as writer, \
            tqdm(total=n, desc="colouring", unit="frame", disable=not progress) as bar:
        i = 0
        for frame in read_frames(video, step, max_frames):
            if i >= n or frame.shape[:2] != (h, w):
                raise ValueError(f"{video}: frames changed between two reads of the file")
            m = _colour(basis, feats[i], frame, f"{Path(video).name} frame {i * step}", upsample)
            writer.write(np.concatenate([frame, to_uint8(m.rgb)], axis=1))
            if frames_dir is not None:
                write_image(frames_dir / f"frame_{i * step:06d}.png", m.rgb)
            if i in picks:
                samples.append(m)
            i += 1
            bar.update(1)
        if i != n:
            raise ValueError(f"{video}: {i} frames on the second read, {n} on the first")
    return VideoPCA(basis, samples, writer.frames)
