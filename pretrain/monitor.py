"""Dense quality while pretraining: every ``monitor.period`` iterations, on the teacher backbone,

* PCA maps of a fixed set of images (``dinov2-dense pca``'s rule: joint PCA, Otsu foreground,
  colours from the foreground), saved as ``pca_<iteration>.png``: foreground/background flips and
  artifacts show up while training, not after;
* a frozen linear segmentation probe: a linear classifier on the last block's patch tokens, fitted
  on synthetic scenes and scored (mIoU at the patch grid) on held-out scenes;
* kNN accuracy (k 20, T 0.07) on the class tokens of synthetic scenes, labelled with the class that
  covers most of each scene.

The numbers go to ``monitor.jsonl`` and into the run's logged metrics; :func:`dense_quality` gives
the same numbers for any backbone (e.g. to compare with a random initialisation).
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_dense.data.synthetic import SceneConfig, generate_scene, scene_seed
from dinov2_dense.evaluation import fit_linear, knn_accuracy, segmentation_metrics
from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD, check_input

__all__ = ["DenseMonitor", "dense_quality", "scene_set"]


def scene_set(n: int, size: int, split: str, seed: int = 0, appearance: str = "colour"
              ) -> tuple[Tensor, np.ndarray, np.ndarray]:
    """``n`` synthetic scenes: normalised images (n, 3, size, size), segmentations (n, size, size)
    and scene labels (the non-background class covering most pixels, 0 when none shows)."""
    cfg = SceneConfig(size=(size, size), appearance=appearance)
    images, segs, labels = [], [], []
    for i in range(n):
        scene = generate_scene(scene_seed(seed, split, i), cfg)
        images.append(scene.image)
        segs.append(scene.seg)
        counts = np.bincount(scene.seg.ravel(), minlength=cfg.num_classes)
        counts[0] = 0
        labels.append(int(counts.argmax()) if counts.any() else 0)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return x, np.stack(segs), np.asarray(labels)


@torch.no_grad()
def _features(backbone: nn.Module, images: Tensor, batch: int = 32) -> tuple[Tensor, Tensor]:
    """(class tokens (n, D), patch maps (n, D, h, w)) of the last block, LayerNorm-ed."""
    device = next(backbone.parameters()).device
    cls, maps = [], []
    for i in range(0, len(images), batch):
        m, c, _ = backbone.intermediate_maps(images[i : i + batch].to(device), None, norm=True)
        maps.append(m[0].float().cpu())
        cls.append(c[0].float().cpu())
    return torch.cat(cls), torch.cat(maps)


def _patch_labels(segs: np.ndarray, grid: tuple[int, int]) -> Tensor:
    """The label at each patch centre: (n, h, w)."""
    t = torch.from_numpy(segs).unsqueeze(1).float()
    return F.interpolate(t, size=grid, mode="nearest").squeeze(1).long()


def dense_quality(backbone: nn.Module, probe: tuple, knn: tuple, num_classes: int) -> dict[str, float]:
    """Linear-probe mIoU and kNN top-1 (percent) of a frozen backbone on scene sets (see
    :func:`scene_set`): ``probe`` = (train, test), ``knn`` = (train, test)."""
    was_training = backbone.training
    backbone.eval()
    try:
        (ptr_x, ptr_seg, _), (pte_x, pte_seg, _) = probe
        _, train_maps = _features(backbone, ptr_x)
        _, test_maps = _features(backbone, pte_x)
        grid = tuple(train_maps.shape[-2:])
        d = train_maps.shape[1]
        y_train = _patch_labels(ptr_seg, grid).reshape(-1)
        layer = fit_linear(train_maps.permute(0, 2, 3, 1).reshape(-1, d), y_train, num_classes=num_classes,
                           weight_decay=1e-3, max_iter=100)
        pred = layer(test_maps.permute(0, 2, 3, 1).reshape(-1, d)).argmax(1).reshape(len(pte_x), *grid)
        miou = segmentation_metrics(list(pred.numpy()), list(_patch_labels(pte_seg, grid).numpy()), num_classes)["mIoU"]
        (ktr_x, _, ktr_y), (kte_x, _, kte_y) = knn
        train_cls, _ = _features(backbone, ktr_x)
        test_cls, _ = _features(backbone, kte_x)
        top1 = knn_accuracy(train_cls, torch.from_numpy(ktr_y), test_cls, torch.from_numpy(kte_y),
                            num_classes=num_classes)["top1"]
    finally:
        backbone.train(was_training)
    return {"probe_miou": float(miou), "knn_top1": float(top1)}


class DenseMonitor:
    """Runs the checks of the module docstring on a backbone and records them under ``out_dir``."""

    def __init__(self, cfg: dict[str, Any], out_dir: str | os.PathLike, device: torch.device | str = "cpu",
                 watched: str = "teacher"):
        """``watched``: what the backbone is, for the figures' titles (a distillation's: ``student0 (EMA)``,
        the EMA of the first student, which the export holds)."""
        self.cfg = cfg
        self.watched = watched
        self.out = Path(out_dir)
        self.device = device
        self._size = int(cfg["probe_size"])
        self._look = cfg.get("appearance", "colour")
        SceneConfig(size=(self._size, self._size), appearance=self._look)  # a bad setting fails at the start
        self.num_classes = SceneConfig().num_classes
        self.images: Sequence[str] = list(cfg["images"])
        for image in self.images:  # a missing or unreadable image fails at the start too, not at the first check
            try:
                check_input(image)
            except (OSError, ValueError) as exc:
                raise ValueError(f"monitor.images: {exc}") from None

    # The scenes are drawn at the first check (about a second for the defaults): a run shorter than the
    # period never pays for them.
    @functools.cached_property
    def probe(self) -> tuple:
        n_fit, n_test = self.cfg["probe_scenes"]
        return (scene_set(n_fit, self._size, "train", 1, self._look), scene_set(n_test, self._size, "val", 1, self._look))

    @functools.cached_property
    def knn(self) -> tuple:
        n_knn, n_test = self.cfg["knn_scenes"]
        return (scene_set(n_knn, self._size, "train", 2, self._look), scene_set(n_test, self._size, "val", 2, self._look))

    def run(self, backbone: nn.Module, iteration: int) -> dict[str, float]:
        """Check ``backbone`` at ``iteration``: record and return probe mIoU and kNN top-1. An observer:
        the random states of torch (CPU and the backbone's device), NumPy and Python are as before, so
        a run draws the same crops, masks and drop paths with the monitor as without."""
        import random

        device = next(backbone.parameters()).device
        devices = [device] if device.type == "cuda" else []
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
                return self._run(backbone, iteration)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    def _run(self, backbone: nn.Module, iteration: int) -> dict[str, float]:
        from dinov2_dense.viz import pca_maps, save_figure

        probe, knn = self.probe, self.knn  # drawn at the first check, outside its timing
        t = time.time()
        result = dense_quality(backbone, probe, knn, self.num_classes)
        if self.images:
            was_training = backbone.training
            backbone.eval()
            try:
                maps = pca_maps(backbone, self.images, joint=True, size=int(self.cfg["pca_size"]), progress=False)
            finally:
                backbone.train(was_training)
            save_figure(maps, self.out / f"pca_{iteration:07d}.png",
                        title=f"{self.watched} at iteration {iteration}: kNN {result['knn_top1']:.1f}%, "
                              f"probe mIoU {result['probe_miou']:.1f}")
        record = {"iteration": iteration, **result, "seconds": round(time.time() - t, 2)}
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "monitor.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        return result
