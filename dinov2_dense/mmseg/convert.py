"""Checkpoints between mmseg and dinov2-dense.

An mmseg checkpoint of the plugin's models (``{"state_dict": {"backbone.*", "decode_head.*", ...},
"meta": ...}``) has our key layout, so conversion is selection and wrapping:

- :func:`from_mmseg`: the ``backbone.*`` and ``decode_head.*`` tensors (loss modules and anything
  else dropped) as a file that ``dinov2_dense.zoo.load_model(NAME, weights=FILE)`` loads strictly
  (``.safetensors`` or ``.pth``); with ``model`` the head is checked against that zoo model first.
- :func:`to_mmseg`: a ``load_model`` weights file (or an official head file, with a backbone from
  ``backbone_weights``) as an mmseg checkpoint for ``load_from`` / ``tools/test.py``.

    python -m dinov2_dense.mmseg.convert from-mmseg work_dirs/iter_40000.pth ours.safetensors --model dinov2_vits14_ade20k_linear
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from dinov2_dense.checkpoints import CheckpointError, read_checkpoint, save_safetensors
from dinov2_dense.fileio import atomic_path

__all__ = ["from_mmseg", "to_mmseg"]


def _ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "decode_head."))
            and not k.startswith("decode_head.loss_decode.")}


def from_mmseg(checkpoint: str | os.PathLike, out: str | os.PathLike, model: str | None = None) -> Path:
    """An mmseg checkpoint -> a dinov2-dense weights file (see the module's docstring)."""
    state = _ours(read_checkpoint(checkpoint))
    if not any(k.startswith("decode_head.") for k in state):
        raise CheckpointError(f"{checkpoint}: no decode_head.* tensors (not a checkpoint of a plugin model?)")
    if model is not None:
        from dinov2_dense.zoo import build_model, load_head_weights

        built = build_model(model)  # a random backbone: only the head's keys and shapes are checked
        load_head_weights(built, state, str(checkpoint))
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if backbone:
            built.backbone.load_state_dict(backbone, strict=True)
    out = Path(out)
    if out.suffix == ".safetensors":
        return save_safetensors(state, out, metadata={"format": "dinov2-dense", "source": "mmseg"})
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def to_mmseg(weights: str | os.PathLike, out: str | os.PathLike, backbone_weights: str | None = None,
             backbone: str = "dinov2_vits14") -> Path:
    """A dinov2-dense weights file (or an official head file plus ``backbone_weights`` for
    ``backbone``) -> an mmseg checkpoint."""
    state = _ours(read_checkpoint(weights))
    if not any(k.startswith("decode_head.") for k in state):
        raise CheckpointError(f"{weights}: no decode_head.* tensors")
    if not any(k.startswith("backbone.") for k in state) and backbone_weights is not None:
        from dinov2_dense.hub import load_backbone

        state.update({f"backbone.{k}": v for k, v in load_backbone(backbone, weights=backbone_weights)
                      .state_dict().items()})
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "meta": {"source": str(weights), "converted_by": "dinov2_dense.mmseg"}}, tmp)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m dinov2_dense.mmseg.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("from-mmseg")
    a.add_argument("checkpoint")
    a.add_argument("out")
    a.add_argument("--model", default=None, help="zoo model whose head the checkpoint must fit")
    b = sub.add_parser("to-mmseg")
    b.add_argument("weights")
    b.add_argument("out")
    b.add_argument("--backbone", default="dinov2_vits14")
    b.add_argument("--backbone-weights", default=None)
    args = ap.parse_args(argv)
    if args.direction == "from-mmseg":
        print(from_mmseg(args.checkpoint, args.out, args.model))
    else:
        print(to_mmseg(args.weights, args.out, args.backbone_weights, args.backbone))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
