"""Hooks: saving test predictions as files people can open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from mmengine.hooks import Hook

from dinov2_dense.fileio import write_image

from .registry import HOOKS


def colour_labels(labels: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB with a fixed, well-spread palette; ignore is black."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    rgb = (np.array([cmap(i % 20)[:3] for i in range(256)]) * 255).astype(np.uint8)
    rgb[ignore_index] = 0
    return rgb[labels.astype(np.int64).clip(0, 255)]


def colour_depth(depth: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """(H, W) metres -> (H, W, 3) uint8 RGB (magma, near = bright); zero (invalid) is black."""
    from matplotlib import colormaps

    valid = depth > 0
    lo = float(depth[valid].min()) if vmin is None and valid.any() else (vmin or 0.0)
    hi = float(depth[valid].max()) if vmax is None and valid.any() else (vmax or 1.0)
    t = 1.0 - np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = (colormaps["magma"](t)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


@HOOKS.register_module()
class SavePredictionsHook(Hook):
    """Writes each test prediction: a PNG label mask (class ids) or a 16-bit depth PNG (millimetres,
    the NYU convention; 0 = invalid), and a coloured PNG beside it, named after the input image."""

    def __init__(self, out_dir: str, depth_scale: float = 1000.0):
        self.out_dir = Path(out_dir)
        self.depth_scale = depth_scale
        self.count = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        for sample in outputs or []:
            meta = sample.get("meta", {}) or {}
            stem = Path(str(meta.get("path", f"{self.count:06d}"))).stem
            self.count += 1
            if "pred_sem_seg" in sample:
                labels = sample["pred_sem_seg"].cpu().numpy().astype(np.uint8)
                write_image(self.out_dir / "masks" / f"{stem}.png", labels)
                write_image(self.out_dir / "colour" / f"{stem}.png", colour_labels(labels))
            if "pred_depth" in sample:
                depth = sample["pred_depth"].float().cpu().numpy()
                mm = np.clip(np.round(depth * self.depth_scale), 0, 65535).astype(np.uint16)
                write_image(self.out_dir / "depth" / f"{stem}.png", mm)
                write_image(self.out_dir / "colour" / f"{stem}.png", colour_depth(depth))

    def after_test(self, runner) -> None:
        runner.logger.info(f"saved {self.count} predictions under {self.out_dir}")
