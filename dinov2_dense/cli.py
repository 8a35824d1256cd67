"""The ``dinov2-dense`` command: ``info`` (the zoo and where weights are) and ``features``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


def _cmd_info(args: argparse.Namespace) -> int:
    from .hub import WEIGHTS_ENV, hub_checkpoint_dir, weights_status

    rows = weights_status()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"weights are looked for in ${WEIGHTS_ENV} ({os.environ.get(WEIGHTS_ENV) or 'unset'}), "
          f"then in {hub_checkpoint_dir()}")
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        where = r["found"] if r["found"] else "not found (downloaded on first use from " + r["url"] + ")"
        print(f"  {r['name']:<{width}}  {r['arch']:<10}  registers {r['registers']}  {r['file']:<34} {where}")
    return 0


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cmd_features(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import save_safetensors
    from .features import extract_features
    from .hub import load_backbone

    out = Path(args.out)
    if out.suffix not in (".npy", ".safetensors"):
        raise SystemExit(f"--out {out}: use a .npy or .safetensors file name")
    weights = None if args.weights == "random" else args.weights
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_backbone(args.model, weights=weights, device=args.device)
    layers = args.layers if args.layers else (args.last if args.last else None)
    feats = extract_features(
        model, list(args.images), layers=layers, fit=args.fit, size=args.size, tile=args.tile,
        batch_size=args.batch_size, autocast=args.bf16, norm=not args.no_norm, progress=True,
    )
    layer_ids = feats[0].layers
    if out.suffix == ".npy":
        shapes = {tuple(f.maps[layer_ids[0]].shape) for f in feats}
        if len(shapes) > 1:
            raise SystemExit(
                f"--out {out}: the images give feature maps of different sizes {sorted(shapes)}; "
                "write .safetensors instead, or pass --size to resize them alike"
            )
        per_image = [torch.stack([f.maps[l][0] for l in layer_ids]) for f in feats]  # (L, C, h, w)
        array = torch.stack(per_image).cpu().numpy()
        if len(layer_ids) == 1:
            array = array[:, 0]
        _atomic_npy(out, array)
        shape = array.shape
    else:
        tensors = {}
        for i, f in enumerate(feats):
            for l in layer_ids:
                tensors[f"{i}/layer{l}"] = f.maps[l][0].cpu()
                tensors[f"{i}/cls{l}"] = f.cls_tokens[l][0].cpu()
                if f.registers[l].shape[1]:
                    tensors[f"{i}/registers{l}"] = f.registers[l][0].cpu()
        meta = {
            "model": args.model,
            "layers": json.dumps(layer_ids),
            "images": json.dumps([str(p) for p in args.images]),
            "padding": json.dumps([f.padding for f in feats]),
            "image_sizes": json.dumps([f.image_size for f in feats]),
        }
        save_safetensors(tensors, out, metadata=meta)
        shape = tuple(feats[0].maps[layer_ids[-1]].shape[1:])
    print(f"wrote {out}: {len(feats)} image(s), layers {layer_ids}, maps of {shape}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dinov2-dense", description="Dense prediction with DINOv2.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="list the model zoo and where each weight file was found")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(func=_cmd_info)

    feat = sub.add_parser("features", help="extract dense patch features of images")
    feat.add_argument("images", nargs="+", help="image files (or skimage:NAME for a scikit-image sample)")
    feat.add_argument("--model", default="dinov2_vits14", help="zoo name (see `dinov2-dense info`)")
    feat.add_argument("--weights", default="official",
                      help="'official' (find or download), a file, a URL, or 'random' (no weights)")
    feat.add_argument("--layers", type=int, nargs="+", help="block indices (negative: from the end)")
    feat.add_argument("--last", type=int, help="take the last N blocks (default: the last one)")
    feat.add_argument("--fit", choices=["pad", "resize"], default="pad", help="how to reach the 14-pixel grid")
    feat.add_argument("--size", type=int, help="resize the shorter side to this many pixels first")
    feat.add_argument("--tile", type=int, help="tiled mode: tile size in pixels (bounded memory)")
    feat.add_argument("--batch-size", type=int, default=8)
    feat.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    feat.add_argument("--no-norm", action="store_true", help="skip the final LayerNorm (depth protocol)")
    feat.add_argument("--device", default=None, help="e.g. cpu, cuda")
    feat.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    feat.add_argument("--out", required=True, help="output .npy or .safetensors file")
    feat.set_defaults(func=_cmd_features)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoints import CheckpointError
    from .hub import WeightsNotFoundError

    try:
        return args.func(args)
    except (WeightsNotFoundError, CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dinov2-dense {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
