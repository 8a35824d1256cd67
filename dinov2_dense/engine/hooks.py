"""Hooks: saving test predictions as files people can open."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from mmengine.hooks import Hook

from dinov2_dense.evaluation.depth import depth_png_units
from dinov2_dense.fileio import check_output_dir, commit_dir, discard_stage, stage_path, write_image
from dinov2_dense.viz.colour import colour_depth, colour_labels

from .registry import HOOKS


def test_stage(out_dir: str | Path) -> Path:
    """The staging folder of ``test --out``: one name for every process of a DDP run."""
    return stage_path(out_dir, tag="test")


@HOOKS.register_module()
class SavePredictionsHook(Hook):
    """Writes each test prediction where the evaluation tools find it: a PNG label mask (class ids)
    under ``masks/`` or a 16-bit depth PNG under ``depth/`` (the data set's units per metre, 1000 for
    NYU, 256 for KITTI; 0 = invalid), and a coloured PNG under ``colour/`` (masks in the data set's
    palette, depth near = bright: :mod:`dinov2_dense.viz.colour`).

    Files are named after the ground-truth file, by its path relative to the data set's root
    (``depth/official_splits/test/scene_0000/sync_depth_00000.png``), so that
    ``dinov2-dense eval-depth OUT/depth DATA_ROOT`` pairs them with the ground truth by name.
    The set is written into a hidden folder beside ``out_dir`` and swapped in whole at the end: an
    interrupted or failed test leaves the previous set or the new one, never a mix.
    """

    def __init__(self, out_dir: str, depth_scale: float | None = None, overwrite: bool = False,
                 protect: list[str] | None = None):
        self.out_dir = Path(out_dir)
        self.depth_scale = depth_scale
        self.overwrite = overwrite
        self.protect = list(protect or [])
        self.count = 0
        self.stage: Path | None = None
        self.root: Path | None = None
        self.palette = None  # the test set's (K, 3) class colours, where it has them
        self.ignore_index = 255
        self.replace = False
        self.gt_dir: Path | None = None  # the deepest folder holding this process's ground truth
        self.names: set[str] = set()  # the files written (a sample repeated to even out processes: once)

    def before_test(self, runner) -> None:
        from mmengine.dist import barrier, is_main_process

        dataset = getattr(runner.test_dataloader, "dataset", None)
        self.root = Path(dataset.root) if getattr(dataset, "root", None) is not None else None
        self.palette = getattr(dataset, "palette", None)
        self.ignore_index = getattr(dataset, "ignore_index", 255)
        protect = self.protect + ([str(self.root)] if self.root is not None else [])
        check_output_dir(self.out_dir, overwrite=self.overwrite, option="--overwrite", protect=protect)
        self.replace = self.out_dir.is_dir() and any(self.out_dir.iterdir())
        if self.depth_scale is None:
            self.depth_scale = float(getattr(dataset, "depth_scale", None) or 1000.0)
        self.stage = test_stage(self.out_dir)
        self.names = set()
        if is_main_process():
            discard_stage(self.stage)  # left by a run that was killed
            self.stage.mkdir(parents=True)
        barrier()

    def _name(self, meta: dict) -> Path:
        source = meta.get("target_path") or meta.get("path")
        if source is None:
            name = Path(f"{self.count:06d}.png")
        else:
            source = Path(str(source))
            try:
                name = source.relative_to(self.root) if self.root is not None else Path(source.name)
            except ValueError:
                name = Path(source.name)
            else:
                parent = source.parent
                self.gt_dir = parent if self.gt_dir is None else Path(os.path.commonpath([self.gt_dir, parent]))
        return name.with_suffix(".png")

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        assert self.stage is not None, "before_test was not called"
        for sample in outputs or []:
            name = self._name(sample.get("meta", {}) or {})
            self.count += 1
            self.names.add(name.as_posix())
            if "pred_sem_seg" in sample:
                labels = sample["pred_sem_seg"].cpu().numpy().astype(np.uint8)
                write_image(self.stage / "masks" / name, labels)
                write_image(self.stage / "colour" / name, colour_labels(labels, self.palette, self.ignore_index))
            if "pred_depth" in sample:
                depth = sample["pred_depth"].float().cpu().numpy()
                write_image(self.stage / "depth" / name, depth_png_units(depth, self.depth_scale))
                write_image(self.stage / "colour" / name, colour_depth(depth))

    def after_test(self, runner) -> None:
        from mmengine.dist import all_gather_object, barrier, is_main_process

        barrier()
        # the distinct files, not the samples: the sampler repeats a few to give every process as many
        total = len(set().union(*all_gather_object(self.names)))
        parents = [str(d) for d in all_gather_object(self.gt_dir) if d is not None]
        self.gt_dir = Path(os.path.commonpath(parents)) if parents else None
        if is_main_process() and self.stage is not None:
            commit_dir(self.stage, self.out_dir, replace=self.replace)
            what, folder = ("depth maps", "depth") if (self.out_dir / "depth").is_dir() else ("label masks", "masks")
            runner.logger.info(f"saved {total} {what} under {self.out_dir / folder}, coloured under "
                               f"{self.out_dir / 'colour'}")
            if (self.out_dir / "depth").is_dir():
                print(f"saved {total} depth maps under {self.out_dir / 'depth'} (16-bit PNG, {self.depth_scale:g} "
                      f"per metre); {self._eval_depth_hint(runner)}")
        barrier()

    def _eval_depth_hint(self, runner) -> str:
        """The ``eval-depth`` command that scores the saved maps as this test's depth metric did."""
        import shlex

        from dinov2_dense.data import KITTIDepthDataset, NYUDepthDataset
        from dinov2_dense.evaluation.depth_files import eval_depth_options
        from dinov2_dense.evaluation.mmengine_metrics import DepthMetric

        dataset = getattr(runner.test_dataloader, "dataset", None)
        kind = ("kitti" if isinstance(dataset, KITTIDepthDataset) else "nyu" if isinstance(dataset, NYUDepthDataset)
                else "folder")
        metrics = [m for m in getattr(runner.test_evaluator, "metrics", []) if isinstance(m, DepthMetric)]
        settings = dict(metrics[0].kwargs) if metrics else {}
        settings["kb_crop"] = bool(getattr(dataset, "kb_crop", False))
        try:
            opts = eval_depth_options(kind, pred_scale=self.depth_scale, gt_scale=getattr(dataset, "depth_scale", None),
                                      **settings)
        except ValueError as exc:
            return f"eval-depth cannot score them as this test did: {exc}"
        # the folders of the tested ground truth and of its predictions (the same relative names in both:
        # the data set's root would also hold the training split, each of its files "without prediction")
        # (absolute: the command runs from any folder, as the data set's root may have been given relative)
        if self.gt_dir is not None and self.root is not None:
            gt, pred = self.gt_dir.absolute(), self.out_dir.absolute() / "depth" / self.gt_dir.relative_to(self.root)
        else:
            gt = self.root.absolute() if self.root is not None else "GT_DIR"
            pred = self.out_dir.absolute() / "depth"
        command = shlex.join(["dinov2-dense", "eval-depth", str(pred), str(gt), *opts])
        return (f"the saved maps are rounded to 1/{self.depth_scale:g} m, so a metric may differ in its 4th digit; "
                "score them as this test did with: " + command + ("" if metrics else " (add the test's settings)"))


@HOOKS.register_module()
class SyncNormStatsHook(Hook):
    """Before each validation, average the BatchNorm statistics over the processes of a distributed run
    (:func:`dinov2_dense.engine.runner.sync_norm_stats`; the runner also does it before each save).
    DenseRunner adds it to every run."""

    def before_val_epoch(self, runner) -> None:
        from .runner import sync_norm_stats

        sync_norm_stats(runner.model)
