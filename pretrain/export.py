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

import errno
import os
from pathlib import Path

import torch
from torch import nn

from dinov2_dense.checkpoints import save_safetensors
from dinov2_dense.fileio import atomic_path, write_json

__all__ = ["export_backbone", "load_exported", "save_torch"]


def export_backbone(backbone: nn.Module, out_dir: str | os.PathLike, name: str = "backbone") -> dict[str, Path]:
    """Write ``<name>.pth``, ``<name>.safetensors`` and ``<name>.json`` into ``out_dir``. The safetensors
    metadata's ``arch`` names the JSON written beside it (``see student0.json`` for a distilled student);
    the JSON records the LayerScale init the backbone was built with (``arch_kwargs``)."""
    from .train import arch_dict

    out = Path(out_dir)
    sd = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
    paths = {"pth": out / f"{name}.pth", "safetensors": out / f"{name}.safetensors", "json": out / f"{name}.json"}
    save_torch(sd, paths["pth"])
    try:
        save_safetensors(sd, paths["safetensors"], metadata={"format": "dinov2-dense",
                                                            "arch": f"see {paths['json'].name}"})
    except Exception as exc:  # noqa: BLE001 - safetensors reports a full disk as its own SafetensorError
        failed = _write_failed(exc, paths["safetensors"])
        if failed is exc:
            raise
        raise failed from None
    write_json(paths["json"], arch_dict(backbone))
    return paths


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (a failed write leaves no file). Torch reports a failed
    write (a full disk) as a RuntimeError of its zip writer: that becomes an OSError naming ``path``.
    Written through an open file, so the archive's records are named ``archive/...`` whatever the
    temporary file's name: the same object gives the same bytes (given a path, torch named the
    records after the temporary file, which differs each time)."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        failed = _write_failed(exc, path)
        if failed is exc:
            raise
        raise failed from None
    return path


#: What the writers of torch and safetensors say when a write fails (torch's zip writer gives no errno).
_WRITE_FAILURES = ("inline_container", "PytorchStreamWriter", "file write failed", "I/O error", "os error")


def _write_failed(exc: BaseException, path: Path) -> BaseException:
    """``exc`` of a writer as an OSError naming ``path`` where it reports a failed write (torch and
    safetensors raise their own errors for a full disk): ENOSPC, or the ``(os error N)`` it names;
    any other error as it is."""
    import re

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) or not any(key in text for key in _WRITE_FAILURES):
        return exc
    code = re.search(r"os error (\d+)", text)
    if code and int(code.group(1)) != errno.ENOSPC:
        return OSError(int(code.group(1)), f"cannot write {path}: {os.strerror(int(code.group(1)))}")
    return OSError(errno.ENOSPC, f"cannot write {path}: the write failed ({text}), most likely for a full disk; "
                                 "free some space, then continue the run with --resume (nothing was half-written)")


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
