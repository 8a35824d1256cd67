"""Export a pretrained backbone so that everything downstream reads it with no conversion.

:func:`export_backbone` writes, atomically, ``backbone.pth`` (the official key layout: a plain
state dict with ``cls_token``, ``pos_embed``, ``blocks.N.*``, ..., as the released
``dinov2_vit*14_pretrain.pth``), ``backbone.safetensors`` (the same tensors) and ``backbone.json``
(the ``DinoVisionTransformer`` keyword arguments). ``load_backbone("…/backbone.json",
weights="…/backbone.safetensors")`` (or ``weights=`` alone: the JSON beside the file is found)
rebuilds the model and loads the weights strictly; so do the heads, the feature cache and the PCA
maps, which take what ``load_backbone`` returns.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from dinov2_dense.fileio import atomic_path

__all__ = ["export_backbone", "load_exported", "save_torch"]


def export_backbone(backbone: nn.Module, out_dir: str | os.PathLike, name: str = "backbone") -> dict[str, Path]:
    """Write ``<name>.pth``, ``<name>.safetensors`` and ``<name>.json`` into ``out_dir``, together: each
    through a temporary file, all renamed once all are written (a failed write, a full disk, leaves the
    three of the last export, never a new ``.pth`` beside an old ``.safetensors``). The safetensors
    metadata's ``arch`` names the JSON written beside it (``see student0.json`` for a distilled student);
    the JSON records the LayerScale init the backbone was built with (``arch_kwargs``)."""
    from dinov2_dense.checkpoints import write_safetensors
    from dinov2_dense.fileio import AtomicFiles

    from .train import arch_dict

    out = Path(out_dir)
    sd = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    paths = {"pth": out / f"{name}.pth", "safetensors": out / f"{name}.safetensors", "json": out / f"{name}.json"}
    try:
        with AtomicFiles() as files:
            with files.path(paths["pth"]) as tmp, open(tmp, "wb") as f:
                torch.save(sd, f)  # (through an open file: the same tensors give the same bytes, see save_torch)
            with files.path(paths["safetensors"]) as tmp:
                write_safetensors(sd, tmp, metadata={"format": "dinov2-dense", "arch": f"see {paths['json'].name}"})
            files.write_json(paths["json"], arch_dict(backbone))
    except OSError as exc:  # (torch's and safetensors' own errors for a full disk too: AtomicFiles names the file)
        raise _resumable(exc) from None
    return paths


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (a failed write leaves no file). Torch reports a failed
    write (a full disk) as a RuntimeError of its zip writer: that becomes an OSError naming ``path``
    (:func:`dinov2_dense.fileio.atomic_path`), with the way to go on.
    Written through an open file, so the archive's records are named ``archive/...`` whatever the
    temporary file's name: the same object gives the same bytes (given a path, torch named the
    records after the temporary file, which differs each time)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except OSError as exc:  # (torch's zip writer's own error for a full disk too: atomic_path names the file)
        raise _resumable(exc) from None
    return path


def _resumable(exc: OSError) -> OSError:
    """A failed write of a run's file, naming it (:func:`~dinov2_dense.fileio.atomic_path`), with the way on."""
    if getattr(exc, "named", None) is None:
        return exc
    return OSError(exc.errno, f"{exc.strerror or exc}; then continue the run with --resume (nothing was "
                              "half-written)")


def load_exported(path: str | os.PathLike) -> nn.Module:
    """A backbone from an export (``.pth``, ``.safetensors`` or ``.json``, the others beside it) or
    from a training checkpoint whose work dir holds ``backbone.json`` (the teacher is taken)."""
    from dinov2_dense.hub import load_backbone

    path = Path(path)
    if path.suffix == ".json":
        weights = next((path.with_suffix(s) for s in (".safetensors", ".pth") if path.with_suffix(s).is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"{path}: no .safetensors or .pth beside it")
        return load_backbone(str(path), weights=weights)
    return load_backbone(None, weights=path)
