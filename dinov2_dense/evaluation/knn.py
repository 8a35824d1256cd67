"""What pretraining bought: k-NN and linear-probe classification on frozen global features.

* :func:`knn_classify` / :func:`knn_accuracy`: the weighted k-NN classifier of the DINO and DINOv2
  papers (Caron et al. 2021, Sec. 4; Oquab et al. 2023; the official ``dinov2/eval/knn.py``):
  features are L2-normalised, each test sample takes its ``k`` (default 20) training neighbours of
  highest cosine similarity ``s``, each neighbour votes for its class with the weight
  ``exp(s / T)`` (T = 0.07), and a class's score is the sum of its neighbours' weights. As in the
  official code the weights are normalised over the ``k`` neighbours (a softmax of ``s / T``),
  which keeps them finite for any ``T`` and changes no ranking; the scores of one sample sum to 1.
  The work is chunked over test samples (and, for very large training sets, over training
  samples, keeping a running top-k), so memory is bounded by the chunk, not by the data sets.
* :func:`linear_probe`: L2-regularised multinomial logistic regression on frozen (N, D) features,
  fitted by full-batch L-BFGS; its weight decay is chosen on a stratified held-out part of the
  training set, then the classifier is refitted on the whole training set (:func:`fit_linear`).
* :func:`folder_features`: an image folder (one subfolder per class, folder name = label) ->
  features of a backbone (class token of the last block, or its mean-pooled patch tokens), through
  :func:`dinov2_dense.features.extract_features`. :func:`folder_split_features` reads
  ``train/`` and ``val/`` subfolders or splits one folder by :func:`stratified_split`, and
  :func:`evaluate_folder` runs both classifiers on it (the library behind ``dinov2-dense knn``).

Accuracies are in percent, as the official logs and :func:`.segmentation.segmentation_metrics`
report them. Ties between classes of equal score go to the lower class index (a stable sort);
a tie in similarity at the k-th neighbour is broken by ``torch.topk``, as in the official code.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DEFAULT_WEIGHT_DECAYS",
    "KnnResult",
    "LabelledFeatures",
    "POOLINGS",
    "evaluate_folder",
    "fit_linear",
    "folder_features",
    "folder_split_features",
    "knn_accuracy",
    "knn_classify",
    "linear_probe",
    "list_image_folder",
    "stratified_split",
    "topk_accuracy",
]

#: Weight decays tried by :func:`linear_probe` (the L2 strength ``lambda`` of its objective).
DEFAULT_WEIGHT_DECAYS: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Global features of an image: the class token, the mean of the patch tokens, or both concatenated.
POOLINGS = ("cls", "mean", "cls+mean")
_SIMILARITY_BUDGET = 2**26  # similarity entries per step (256 MiB in float32)


# -- checks ----------------------------------------------------------------------------------
def _check_features(x: Tensor, what: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a (N, D) tensor, got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{what}: expected floating-point features, got {x.dtype}")


def _check_finite(x: Tensor, what: str, offset: int = 0) -> None:
    bad = ~torch.isfinite(x).all(dim=1)
    if bad.any():
        rows = (bad.nonzero().flatten()[:5] + offset).tolist()
        raise ValueError(f"{what}: rows {rows} hold NaN or infinite values (a diverged model or a bad cache?)")


def _check_labels(labels: Tensor, n: int, what: str) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or len(labels) != n:
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"{what}: expected {n} labels as a (N,) tensor, got {shape}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{what}: expected integer class indices, got {labels.dtype}")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{what}: class indices must be >= 0, got {int(labels.min())}")
    return labels.long()


def _num_classes(num_classes: int | None, *labels: Tensor) -> int:
    top = max((int(x.max()) + 1 for x in labels if len(x)), default=0)
    if num_classes is None:
        return top
    if num_classes < top:
        raise ValueError(f"num_classes={num_classes}, but the labels go up to {top - 1}")
    return int(num_classes)


# -- accuracy --------------------------------------------------------------------------------
def topk_accuracy(scores: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (percent) of (M, C) class scores against (M,) labels: the share of samples whose
    label is among the k highest scores (torchmetrics ``MulticlassAccuracy(average="micro")``, as
    the official evaluation). Equal scores rank the lower class index first. A k larger than the
    number of classes is left out (top-5 needs at least 5 classes). Keys: ``top1``, ``top5``, ...
    """
    if scores.ndim != 2 or labels.ndim != 1 or len(scores) != len(labels):
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)}: expected (M, C) and (M,)")
    if len(labels) == 0:
        raise ValueError("no samples to score: the accuracy of an empty set is undefined")
    ks = [k for k in ks if k <= scores.shape[1]]
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : max(ks, default=0)]
    hits = order == labels.to(order.device).long()[:, None]
    # hits x 100 / samples: 11 of 20 is 55.0 (the mean times 100 gave 55.00000000000001 in knn's JSON)
    return {f"top{k}": int(hits[:, :k].any(dim=1).sum()) * 100 / len(labels) for k in ks}


# -- k-NN ------------------------------------------------------------------------------------
class KnnResult(NamedTuple):
    """predictions: (M,) top-1 classes; scores: (M, C) summed neighbour weights (each row sums to 1)."""

    predictions: Tensor
    scores: Tensor


def _neighbours(queries: Tensor, train: Tensor, k: int, train_chunk: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities (Mc, k) and indices of the k nearest training rows of normalised
    ``queries``; training rows are normalised chunk by chunk and merged by a running top-k."""
    best_sims = best_idx = None
    for start in range(0, len(train), train_chunk):
        rows = train[start : start + train_chunk].to(queries.device).float()
        _check_finite(rows, "train_features", start)
        sims = queries @ F.normalize(rows, dim=1).T
        sims, idx = sims.topk(min(k, sims.shape[1]), dim=1)
        idx += start
        if best_sims is not None:
            merged = torch.cat([best_sims, sims], dim=1)
            sims, pos = merged.topk(min(k, merged.shape[1]), dim=1)
            idx = torch.cat([best_idx, idx], dim=1).gather(1, pos)
        best_sims, best_idx = sims, idx
    return best_sims, best_idx


def knn_classify(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    chunk_size: int = 256,
    train_chunk_size: int | None = None,
) -> KnnResult:
    """Weighted k-NN classification of ``test_features`` by ``train_features`` (DINO / DINOv2 protocol).

    Args:
        train_features: (N, D) features of the training samples (any scale: they are L2-normalised).
        train_labels: (N,) class indices.
        test_features: (M, D) features to classify.
        k: neighbours per test sample; more than N uses all N training samples.
        temperature: T in the vote weight ``exp(cosine / T)``.
        num_classes: C, the width of the scores (default: the largest training label + 1).
        chunk_size: test samples per step.
        train_chunk_size: training samples per step (default: as many as keep one step's
            similarity matrix under 2**26 entries; all of them for N up to 262144 at chunk 256).

    Returns:
        :class:`KnnResult` ``(predictions (M,), scores (M, C))`` on the training features' device,
        where the work runs (test chunks are moved there); scores in float32.
    """
    _check_features(train_features, "train_features")
    _check_features(test_features, "test_features")
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train_features have {train_features.shape[1]} dimensions, test_features "
                         f"{test_features.shape[1]}: they must come from the same model and pooling")
    n = len(train_features)
    if n == 0:
        raise ValueError("train_features is empty: k-NN needs at least one training sample")
    labels = _check_labels(train_labels, n, "train_labels").to(train_features.device)
    if k < 1:
        raise ValueError(f"k={k}: must be at least 1")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature}: must be > 0")
    if chunk_size < 1 or (train_chunk_size is not None and train_chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size}, train_chunk_size={train_chunk_size}: must be at least 1")
    c = _num_classes(num_classes, labels)
    k = min(k, n)
    train_chunk = train_chunk_size or max(k, _SIMILARITY_BUDGET // chunk_size)
    device = train_features.device

    predictions, scores = [], []
    for start in range(0, len(test_features), chunk_size):
        queries = test_features[start : start + chunk_size].to(device).float()
        _check_finite(queries, "test_features", start)
        sims, idx = _neighbours(F.normalize(queries, dim=1), train_features, k, train_chunk)
        weights = torch.softmax(sims / temperature, dim=1)  # exp(s / T), normalised over the k neighbours
        chunk_scores = torch.zeros(len(queries), c, device=device).scatter_add_(1, labels[idx], weights)
        scores.append(chunk_scores)
        predictions.append(torch.sort(chunk_scores, dim=1, descending=True, stable=True).indices[:, 0])
    if not scores:
        return KnnResult(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, c, device=device))
    return KnnResult(torch.cat(predictions), torch.cat(scores))


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    *,
    chunk_size: int = 256,
    train_chunk_size: int | None = None,
) -> dict[str, float]:
    """Top-1 (and, with at least 5 classes, top-5) accuracy in percent of :func:`knn_classify`
    against ``test_labels``: ``{"top1": ..., "top5": ...}``. ``num_classes`` defaults to the largest
    label of either set + 1 (a test class absent from training is never predicted)."""
    labels = _check_labels(test_labels, len(test_features), "test_labels")
    c = _num_classes(num_classes, _check_labels(train_labels, len(train_labels), "train_labels"), labels)
    result = knn_classify(train_features, train_labels, test_features, k, temperature, c,
                          chunk_size=chunk_size, train_chunk_size=train_chunk_size)
    return topk_accuracy(result.scores, labels)


# -- linear probe ----------------------------------------------------------------------------
def stratified_split(labels: Tensor | Sequence[int], val_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split sample indices into (train, val), class by class, reproducibly by ``seed``.

    Each class with n >= 2 samples gives ``round(n * val_fraction)`` of them to val, at least 1 and
    at most n - 1, so every class keeps a training sample; a class with one sample stays in train.
    Returns two sorted (int64) index tensors.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction={val_fraction}: must be above 0 and below 1 (the share of each class held out)")
    labels = torch.as_tensor(labels).cpu()
    labels = _check_labels(labels, len(labels), "labels")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(labels).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(max(round(len(idx) * val_fraction), 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    empty = torch.zeros(0, dtype=torch.long)
    return torch.cat(train or [empty]).sort().values, torch.cat(val or [empty]).sort().values


def fit_linear(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> torch.nn.Linear:
    """Multinomial logistic regression on (N, D) ``features``: minimises
    ``mean cross-entropy + weight_decay / 2 * ||W||^2`` (bias not decayed) with full-batch L-BFGS
    (strong-Wolfe line search) from zero weights, on features standardised by their mean and std.

    The problem is convex and the start fixed, so the fit is deterministic on CPU. The
    standardisation is folded into the returned layer: it takes raw features, ``(N, D) -> (N, C)``.
    """
    _check_features(features, "features")
    labels = _check_labels(labels, len(features), "labels").to(features.device)
    if len(features) == 0:
        raise ValueError("no training samples for the linear classifier")
    _check_finite(features, "features")
    c = _num_classes(num_classes, labels)
    x = features.float()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    weight = torch.zeros(c, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(c, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, labels) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    layer = torch.nn.Linear(x.shape[1], c, device=x.device)
    with torch.no_grad():
        layer.weight.copy_(weight / std)
        layer.bias.copy_(bias - (weight / std) @ mean)
    return layer.requires_grad_(False)


def _linear_scores(layer: torch.nn.Linear, features: Tensor) -> Tensor:
    with torch.no_grad():
        return layer(features.to(layer.weight.device).float())


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int | None = None,
    *,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 200,
) -> dict:
    """Linear-probe accuracy of frozen features: a linear classifier (:func:`fit_linear`) trained
    on the training features, scored on the test features.

    Model selection never sees the test set: each weight decay of ``weight_decays`` is fitted on a
    stratified ``1 - val_fraction`` of the training set (:func:`stratified_split`, ``seed``) and
    scored (top-1) on the rest; the best one (ties: the larger decay, the simpler model) is refitted
    on the whole training set. With one weight decay, or no held-out sample (one sample per class),
    there is no search. (The official DINOv2 linear evaluation instead grid-searches SGD learning
    rates over many epochs; L-BFGS on a convex objective needs no learning rate and is fast on CPU.)

    Returns ``{"top1", "top5" (with >= 5 classes), "weight_decay": chosen, "search": {weight
    decay: held-out top-1}}``, accuracies in percent.
    """
    _check_features(test_features, "test_features")
    test_y = _check_labels(test_labels, len(test_features), "test_labels")
    train_y = _check_labels(train_labels, len(train_features), "train_labels")
    c = _num_classes(num_classes, train_y, test_y)
    if not weight_decays:
        raise ValueError("weight_decays is empty: give at least one weight decay")
    search: dict[float, float] = {}
    chosen = weight_decays[0]
    fit_idx, held_idx = stratified_split(train_y, val_fraction, seed)
    if len(weight_decays) > 1 and len(held_idx):
        for wd in weight_decays:
            layer = fit_linear(train_features[fit_idx.to(train_features.device)], train_y[fit_idx], c, wd, max_iter)
            scores = _linear_scores(layer, train_features[held_idx.to(train_features.device)])
            search[wd] = topk_accuracy(scores, train_y[held_idx], ks=(1,))["top1"]
        chosen = max(search, key=lambda wd: (search[wd], wd))
    layer = fit_linear(train_features, train_y, c, chosen, max_iter)
    return {**topk_accuracy(_linear_scores(layer, test_features), test_y), "weight_decay": chosen, "search": search}


# -- image folders ---------------------------------------------------------------------------
@dataclass
class LabelledFeatures:
    """Global features of a labelled image set; unpacks as ``features, labels, class_names = ...``.

    features: (N, D) float32 on the CPU; labels: (N,) int64 indices into ``class_names``;
    paths: the N image files; skipped: ``"path: reason"`` of each image that could not be read.
    """

    features: Tensor
    labels: Tensor
    class_names: list[str]
    paths: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.features, self.labels, self.class_names))

    def subset(self, indices: Tensor) -> LabelledFeatures:
        """The samples at ``indices`` (class names and skipped files kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return replace(self, features=self.features[idx], labels=self.labels[idx],
                       paths=[self.paths[i] for i in idx.tolist()] if self.paths else [])


def list_image_folder(root: str | os.PathLike, class_names: Sequence[str] | None = None
                      ) -> tuple[list[str], list[int], list[str]]:
    """Image files of a class-per-folder layout (``root/<class>/**/<image>``, torchvision's
    ``ImageFolder``): returns (paths, labels, class_names), classes sorted by name, files sorted.

    Images are recognised by extension (:data:`dinov2_dense.data.files.IMAGE_EXTENSIONS`); hidden
    files and folders are passed over. Subfolders without images and images directly in ``root``
    are reported by a warning. ``class_names``: use these classes, in this order (a second split
    labelled like the first); a folder not among them is an error.
    """
    from ..data.files import IMAGE_EXTENSIONS, image_files_below  # lazy: the data package imports albumentations

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    found: dict[str, list[Path]] = {}
    loose = []
    for path in image_files_below(root):  # as pretraining and curate read a folder: classes its first level
        if len(path.parts) > 1:
            found.setdefault(path.parts[0], []).append(root / path)
        else:
            loose.append(path.name)
    found = dict(sorted(found.items()))
    empty = [p.name for p in sorted(root.iterdir())
             if p.is_dir() and not p.name.startswith(".") and p.name not in found]
    if loose:
        warnings.warn(f"{root}: {len(loose)} image(s) directly in the folder have no class folder and are left out "
                      f"(e.g. {sorted(loose)[0]}); put each image in a subfolder named after its class", stacklevel=2)
    if empty:
        warnings.warn(f"{root}: subfolder(s) without images left out: {', '.join(empty[:10])}", stacklevel=2)
    if class_names is None:
        class_names = list(found)
    else:
        class_names = list(class_names)
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(f"{root}: class folder(s) {unknown[:10]} are not among the training classes "
                             f"({len(class_names)}: {class_names[:10]}); both splits must use the same class names")
    if not found:
        raise ValueError(f"{root}: no class folders with images ({', '.join(IMAGE_EXTENSIONS)}); expected "
                         "root/<class name>/<image>, one subfolder per class")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for p in found.get(name, []):
            paths.append(str(p))
            labels.append(label)
    return paths, labels, class_names


def try_read_resized(path: str, hw: tuple[int, int], resize_8bit: bool = False,
                     keep_8bit: bool = False) -> tuple[Tensor | None, str]:
    """(:func:`read_resized`, "") or (None, why it cannot be read): unreadable images are listed, not fatal."""
    try:
        return read_resized(path, hw, resize_8bit=resize_8bit, keep_8bit=keep_8bit), ""
    except (OSError, ValueError) as exc:
        return None, str(exc).removeprefix(f"{path}: ").replace("\n", " ")  # one line per file in listings


def read_rows(rows, paths: Sequence[str], hw: tuple[int, int], dtype: torch.dtype = torch.float32,
              resize_8bit: bool = False) -> tuple[list[int], Tensor | None, list[tuple[int, str]]]:
    """The images ``paths[i]`` for ``i`` in ``rows`` (a batch or part of one, decoded in a DataLoader
    worker or here): the readable rows, their images as one (B, 3, H, W) tensor of ``dtype`` (None
    when none is readable) and (row, reason) of the others. ``resize_8bit``: 8-bit images resized in
    8 bits; a batch of only such images stays uint8, normalised on the model's device
    (:func:`dinov2_dense.features.to_model_input`)."""
    from ..features import stack_decoded

    where, images, bad = [], [], []
    for i in rows:
        x, reason = try_read_resized(paths[int(i)], hw, resize_8bit, keep_8bit=resize_8bit)
        if x is None:
            bad.append((int(i), reason))
        else:
            where.append(int(i))
            images.append(x)
    if not images:
        return where, None, bad
    batch = stack_decoded(images)
    return where, batch if batch.dtype == torch.uint8 else batch.to(dtype), bad


def read_resized(path: str, hw: tuple[int, int], resize_8bit: bool = False, keep_8bit: bool = False) -> Tensor:
    """Image ``path`` upright, ImageNet-normalised, resized to ``hw`` (bilinear, antialiased): (3, H, W).
    ``resize_8bit``: an 8-bit image is resized in 8 bits (:func:`dinov2_dense.features.load_resized`);
    ``keep_8bit``: and comes back as uint8, not normalised."""
    from ..features import load_resized  # upright, within the pixel limit; the resize of extract_features(size=...)

    return load_resized(path, hw, resize_8bit=resize_8bit, keep_8bit=keep_8bit)


def pool_features(feats, pooling: str) -> Tensor:
    """One vector per image from :func:`extract_features` output: ``cls``, ``mean`` or ``cls+mean``."""
    layer = feats.layers[-1]
    cls, mean = feats.cls_tokens[layer], feats.maps[layer].mean(dim=(2, 3))
    return {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[pooling]


def folder_features(
    model,
    root: str | os.PathLike,
    *,
    size: int | tuple[int, int] = 224,
    pooling: str = "cls",
    batch_size: int = 32,
    class_names: Sequence[str] | None = None,
    autocast: bool | torch.dtype = False,
    progress: bool | None = None,
    cache: str | os.PathLike | None = None,
    num_workers: int = 0,
    resize_8bit: bool = False,
    keep_empty_classes: bool = False,
) -> LabelledFeatures:
    """Global features of every image of a class-per-folder layout (:func:`list_image_folder`).

    Each image is read upright (:mod:`dinov2_dense.images`), resized to ``size`` (an int: a square;
    (H, W) otherwise; bilinear, antialiased, aspect ratio not kept: no crop), batched, and run
    through ``model`` by :func:`dinov2_dense.features.extract_features` (last block, final
    LayerNorm); ``size`` must be a multiple of the patch size. ``pooling``: ``"cls"`` the class
    token (the official k-NN and linear evaluations), ``"mean"`` the mean of the patch tokens,
    ``"cls+mean"`` both concatenated. (The official eval transform resizes the shorter side to 256
    and centre-crops 224; a square resize keeps the whole image.)

    An image that cannot be read is skipped: a warning names it and ``skipped`` lists it with the
    reason. A class folder none of whose images can be read is left out with a warning (its classes
    renumbered), unless ``keep_empty_classes`` (a training split whose classes label a val split). ``progress``: a bar over the images (default: when there is more than one batch).

    ``cache``: a folder where the features are kept, one file per (weights, images, settings): a
    second call with the same backbone weights (:func:`dinov2_dense.checkpoints.fingerprint`), the
    same files (path, size and modification time of each), the same size, pooling, autocast and
    8-bit resize, and the same pixel limit in force (:func:`dinov2_dense.images.max_pixels`) reads them
    back instead of running the backbone, reading no image (a run of ``knn`` with another ``k``, or
    ``--no-linear`` then with the probe). A changed image (a repaired one too), weight, setting or pixel
    limit misses the cache: an image skipped as over the limit is read again under a raised one, so a
    cached call gives what an uncached one gives; an unreadable cache file is recomputed and replaced.
    The cache holds every class folder, empty ones too (``keep_empty_classes``
    applies to what it gives back). A cache that cannot be written is warned about; the features are
    returned all the same.

    ``num_workers``: DataLoader workers that read and resize the images while the model runs.
    ``resize_8bit``: resize 8-bit images in 8 bits (:func:`dinov2_dense.features.load_resized`):
    about 4x faster decoding on a CPU, within one grey level of the float resize, features slightly
    changed (default False: the float resize).
    """
    import functools

    from tqdm.auto import tqdm

    import numpy as np

    from ..features import (HostCopy, NonfiniteFeaturesError, batch_parts, check_on_grid, extract_features, join_parts,
                            map_in_workers, to_model_input)

    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be at least 1")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(hw) < 1:
        raise ValueError(f"size={size}: must be positive")
    check_on_grid(hw, int(getattr(model, "patch_size", 1)), f"size={size}")
    paths, labels, names = list_image_folder(root, class_names)
    cache_file = None
    if cache is not None:
        cache_file = Path(cache) / f"features_{_cache_key(model, paths, labels, names, hw, pooling, autocast, resize_8bit)}.pt"
        cached = _read_cached(cache_file)
        if cached is not None:
            if progress is not False:
                print(f"features of {root} read from the cache {cache_file}", file=sys.stderr)
            _warn_skipped(root, cached.skipped)
            return _without_empty_classes(cached, root, class_names, keep_empty_classes)
    device = next(model.parameters()).device
    kept, kept_labels, skipped, pooled = [], [], [], []
    batch: list[Tensor] = []
    in_flight: list = []  # the last batch's pooled features on their way here (HostCopy)

    def run() -> None:
        rows = sum(int(b.shape[0]) for b in batch)  # the batch's images: the last ones kept
        try:
            feats = extract_features(model, join_parts(batch, torch.float32), fit="resize", autocast=autocast,
                                     progress=False)
        except NonfiniteFeaturesError as exc:
            raise exc.named(kept[len(kept) - rows:]) from None
        in_flight.append(HostCopy(pool_features(feats, pooling).float()))
        if len(in_flight) == 2:  # the previous batch is read back while this one runs on the device
            pooled.append(in_flight.pop(0).wait().clone())
        batch.clear()

    show = progress if progress is not None else len(paths) > batch_size
    # batches of batch_size files (their readable images), read in parts by the workers
    parts, ends = batch_parts(np.arange(len(paths)), batch_size, num_workers)
    read = map_in_workers(functools.partial(read_rows, paths=paths, hw=hw, resize_8bit=resize_8bit), parts,
                          num_workers, pin_memory=device)
    with torch.no_grad(), tqdm(total=len(paths), desc=f"features {Path(root).name}", unit="img",
                               disable=not show) as bar:
        for (where, x, bad), end in zip(read, ends):
            # missing, corrupt, unknown format, over the pixel limit: skipped and listed
            skipped += [f"{paths[i]}: {reason}" for i, reason in bad]
            kept += [paths[i] for i in where]
            kept_labels += [labels[i] for i in where]
            if x is not None:
                batch.append(to_model_input(x, device))
            if end and batch:
                run()
            bar.update(len(where) + len(bad))
    pooled += [copy.wait().clone() for copy in in_flight]
    _warn_skipped(root, skipped)
    if not kept:
        raise ValueError(f"{root}: none of the {len(paths)} images could be read (first: {skipped[0]})")
    result = LabelledFeatures(torch.cat(pooled), torch.tensor(kept_labels, dtype=torch.long), names, kept, skipped)
    if cache_file is not None:  # every class, empty ones too: a call with another keep_empty_classes reads it
        try:
            _write_cached(cache_file, result)
        except (OSError, RuntimeError) as exc:  # torch.save's zip writer raises RuntimeError on a full disk
            warnings.warn(f"--cache {cache}: the features cannot be kept there ({exc}); they were computed, "
                          "and are used, without it", stacklevel=2)
    return _without_empty_classes(result, root, class_names, keep_empty_classes)


def _without_empty_classes(data: LabelledFeatures, root, class_names: Sequence[str] | None,
                           keep_empty_classes: bool) -> LabelledFeatures:
    """``data`` without the classes of its own folders that have no readable image (the others renumbered),
    said in a warning; with ``keep_empty_classes`` they stay, said too. Classes given (``class_names``) stay."""
    names, labels = data.class_names, data.labels.tolist()
    empty = sorted(set(range(len(names))) - set(labels))
    if not empty or class_names is not None:
        return data
    shown = ", ".join(names[i] for i in empty[:10])
    if keep_empty_classes:
        warnings.warn(f"{root}: class folder(s) without a readable image: {shown} (kept among the classes: "
                      "nothing can be predicted as them)", stacklevel=3)
        return data
    warnings.warn(f"{root}: class folder(s) without a readable image left out: {shown}", stacklevel=3)
    index = {old: new for new, old in enumerate(i for i in range(len(names)) if i not in empty)}
    return replace(data, labels=torch.tensor([index[label] for label in labels], dtype=torch.long),
                   class_names=[names[i] for i in index])


def _cache_key(model, paths: list[str], labels: list[int], names: list[str], hw: tuple[int, int], pooling: str,
               autocast, resize_8bit: bool = False) -> str:
    import hashlib
    import json

    from ..checkpoints import fingerprint, forward_settings
    from ..images import max_pixels

    # a missing or unreadable file: (path, None), skipped when read; still part of what was asked
    files = [(path, _content_digest(path)) for path in paths]
    # version 2: every class folder kept in the file (version 1 files had the empty ones left out);
    # the pixel limit in force: which images are skipped (a raised limit misses, reading them again)
    # version 3: the settings that change the features but no tensor (num_heads, the position embedding's
    # resampling), read from the architecture file: the same weights with another one missed no cache
    # version 4: each image by its content, not its size and modification time (an image replaced by
    # another of the same size, its time kept by cp -p or rsync -a, was read from the cache as the old one)
    about = {"version": 4, "weights": fingerprint(model), "forward": forward_settings(model), "files": files,
             "labels": labels, "classes": names, "size": list(hw), "pooling": pooling, "autocast": str(autocast),
             "max_pixels": max_pixels()}
    if resize_8bit:  # only when set: the keys of caches made before the option stay valid
        about["resize_8bit"] = True
    return hashlib.sha256(json.dumps(about, sort_keys=True).encode()).hexdigest()[:24]


def _content_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes (the kNN cache's key: reading them is small beside decoding the image and
    running the backbone); None when it cannot be read."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:  # (hashlib.file_digest is Python 3.11's; we run on 3.10)
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _warn_skipped(root, skipped: list[str]) -> None:
    """One warning naming the images that could not be read (also when the features come from the cache)."""
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image(s): " + "; ".join(skipped[:5])
                      + (" ..." if len(skipped) > 5 else ""), stacklevel=3)


def _read_cached(path: Path) -> LabelledFeatures | None:
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        result = LabelledFeatures(data["features"], data["labels"], list(data["class_names"]), list(data["paths"]),
                                  list(data["skipped"]))
        if result.features.shape[0] != result.labels.shape[0] or len(result.paths) != result.labels.shape[0]:
            raise ValueError("features, labels and paths disagree in length")
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is recomputed, never trusted
        warnings.warn(f"{path}: unreadable feature cache ({exc}); computing the features again", stacklevel=3)
        return None
    return result


def _write_cached(path: Path, data: LabelledFeatures) -> None:
    from ..fileio import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"features": data.features, "labels": data.labels, "class_names": data.class_names,
                    "paths": data.paths, "skipped": data.skipped}, tmp)


def folder_split_features(
    model,
    root: str | os.PathLike,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    **kwargs,
) -> tuple[LabelledFeatures, LabelledFeatures]:
    """(train, val) features of an image folder: ``root/train/<class>/...`` and ``root/val/<class>/...``
    when both exist (val labelled with train's classes), else ``root/<class>/...`` split by
    :func:`stratified_split` (``val_fraction``, ``seed``). ``kwargs`` go to :func:`folder_features`."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        with warnings.catch_warnings():  # (said when the features are computed)
            warnings.simplefilter("ignore")
            # a val class that train does not have, before any image is read (it was refused after train's)
            classes = kwargs.get("class_names") or list_image_folder(root / "train")[2]
            list_image_folder(root / "val", class_names=classes)
        train = folder_features(model, root / "train", keep_empty_classes=True, **kwargs)
        kwargs.pop("class_names", None)
        val = folder_features(model, root / "val", class_names=train.class_names, **kwargs)
        return train, val
    data = folder_features(model, root, **kwargs)
    train_idx, val_idx = stratified_split(data.labels, val_fraction, seed)
    if len(val_idx) == 0:
        raise ValueError(f"{root}: every class has a single image, so nothing is left to evaluate on; "
                         "add images or give train/ and val/ subfolders")
    return data.subset(train_idx), data.subset(val_idx)


def evaluate_folder(
    model,
    root: str | os.PathLike,
    *,
    k: int = 20,
    temperature: float = 0.07,
    linear: bool = True,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    size: int | tuple[int, int] = 224,
    pooling: str = "cls",
    batch_size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    autocast: bool | torch.dtype = False,
    progress: bool | None = None,
    cache: str | os.PathLike | None = None,
    num_workers: int = 0,
    resize_8bit: bool = False,
) -> dict:
    """k-NN (and linear-probe) accuracy of a backbone's frozen features on an image folder
    (:func:`folder_split_features`): the library behind ``dinov2-dense knn``.

    Returns a JSON-ready dict: ``knn`` ({top1, top5}), ``linear`` ({top1, top5, weight_decay,
    search}; absent with ``linear=False``), ``num_train``, ``num_val``, ``class_names``, ``skipped``
    (unreadable images) and the settings (k, temperature, pooling, size, seed, resize_8bit). ``cache``: a
    folder that keeps the features between runs, ``resize_8bit``: the 8-bit resize (:func:`folder_features`).
    """
    train, val = folder_split_features(model, root, val_fraction=val_fraction, seed=seed, size=size,
                                       pooling=pooling, batch_size=batch_size, autocast=autocast, progress=progress,
                                       cache=cache, num_workers=num_workers, resize_8bit=resize_8bit)
    c = len(train.class_names)
    if c < 2:
        raise ValueError(f"{root}: found {c} class folder; classification needs at least 2")
    device = next(model.parameters()).device
    train_x, val_x = train.features.to(device), val.features.to(device)
    result: dict = {"knn": knn_accuracy(train_x, train.labels, val_x, val.labels, k, temperature, c)}
    if linear:
        probe = linear_probe(train_x, train.labels, val_x, val.labels, c,
                             weight_decays=weight_decays, seed=seed)
        probe["search"] = {f"{wd:g}": acc for wd, acc in probe["search"].items()}  # JSON keys are strings
        result["linear"] = probe
    result.update(num_train=len(train.labels), num_val=len(val.labels), class_names=train.class_names,
                  skipped=list(dict.fromkeys(train.skipped + val.skipped)),  # one list when split from one folder
                  k=k, temperature=temperature, pooling=pooling, size=size, seed=seed, resize_8bit=resize_8bit)
    result["k_used"] = min(k, result["num_train"])  # a training set smaller than k: all of it
    return result
