"""A head that ``dinov2-dense train`` wrote, in Python, built and loaded as ``dinov2-dense test`` does."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["load_trained"]


def _run_config(checkpoint: Path) -> Path:
    """The config copy that ``train`` wrote beside its checkpoints (``<work_dir>/<config name>.py``, the
    options of its command line merged in)."""
    copies = sorted(p for p in checkpoint.parent.glob("*.py") if not p.name.startswith("."))
    if len(copies) != 1:
        found = f"{len(copies)} .py files ({', '.join(p.name for p in copies[:4])})" if copies else "no .py file"
        raise FileNotFoundError(f"{checkpoint}: {found} beside it, where `train` keeps its config's copy; give the "
                                "config: load_trained(checkpoint, config=...)")
    return copies[0]


def load_trained(checkpoint: str | os.PathLike, config: str | os.PathLike | None = None, *,
                 cfg_options: dict | None = None, device: str | torch.device | None = None,
                 partial_load: bool = False, other_backbone: bool = False):
    """The model of a training run, as ``dinov2-dense test CONFIG CHECKPOINT`` builds and loads it.

    ``config``: the run's config; left out, the copy that ``train`` wrote beside ``checkpoint`` in its
    work dir (with the run's ``--cfg-options``). ``cfg_options``: ``{"model.backbone_weights": ...}`` and
    the like, as ``--cfg-options``. The checkpoint is loaded with ``test``'s checks: strict keys, the
    backbone it was trained on (a head trained on other weights is refused unless ``other_backbone``), the
    blocks it read and a depth head's range.

    Returns the :class:`heads.DensePredictor` in eval mode: ``predict(images)`` follows the config's
    ``model.test_cfg`` (whole or slide, scales, flip averaging for the depth configs), so it predicts what
    ``test --out`` saves; ``model(images)`` is the plain whole-image forward.
    """
    from . import register_all
    from .entry import load_config
    from .registry import MODELS
    from .runner import HeadCheckpointLoader, read_run_checkpoint

    if device is not None and str(device) != "meta":  # (meta: sizes without memory, as torch takes it)
        from ..options import check_device  # a device this machine lacks: one line, before anything is read or built

        device = check_device(f"cuda:{device}" if isinstance(device, int) else str(device), option="device")
    checkpoint = Path(checkpoint)
    state = read_run_checkpoint(checkpoint)  # a missing or unreadable file, before the model is built
    config = Path(config) if config is not None else _run_config(checkpoint)
    cfg = load_config(str(config), dict(cfg_options or {}))
    if not isinstance(cfg.get("model"), dict):
        raise ValueError(f"{config}: no model section (a config of `dinov2-dense train`?)")
    register_all()
    try:
        model = MODELS.build(cfg.model)
    except OSError as exc:
        from dinov2_dense.hub import NO_WEIGHTS_HINT, WeightsNotFoundError

        if NO_WEIGHTS_HINT not in str(exc):
            raise
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, (
            "To go on without a download: cfg_options={'model.backbone_weights': None} (random weights: the "
            "predictions then mean nothing)"))) from None
    zoo = cfg.model.get("zoo") is not None
    HeadCheckpointLoader(partial_load=partial_load, other_backbone=other_backbone, zoo=zoo, python=True).load(
        str(checkpoint), state, model)
    predictor = model.predictor
    if device is not None:
        predictor = predictor.to(device)
    return predictor.eval()
