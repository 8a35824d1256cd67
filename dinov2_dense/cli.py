"""The ``dinov2-dense`` command: ``info`` (the zoo and where weights are), ``features`` and ``pca``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path



def _cmd_info(args: argparse.Namespace) -> int:
    from .hub import WEIGHTS_ENV, hub_checkpoint_dir, weights_status

    from heads.zoo import model_weights_status

    rows = [dict(r, kind="backbone") for r in weights_status()]
    models = model_weights_status()
    if args.json:
        print(json.dumps(rows + models, indent=2))
        return 0
    print(f"weights are looked for in ${WEIGHTS_ENV} ({os.environ.get(WEIGHTS_ENV) or 'unset'}), "
          f"then in {hub_checkpoint_dir()}; missing files are downloaded on first use")
    print("backbones:")
    for r in rows:
        where = r["found"] or f"not found ({r['url']})"
        print(f"  {r['name']:<18} {r['arch']:<10}  registers {r['registers']}  {r['file']:<34} {where}")
    print("full models (backbone + official head):")
    for r in models:
        where = r["found"] or "not found"
        print(f"  {r['name']:<32} {r['task']:<12} {r['file']:<44} {where}")
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import save_safetensors
    from .features import extract_features
    from .fileio import write_npy
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
        write_npy(out, array)
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


def _threshold_arg(text: str):
    if text in ("otsu", "zero", "none"):
        return None if text == "none" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use otsu, zero, none or a number (a z-score)") from None


def _cmd_pca(args: argparse.Namespace) -> int:
    import torch

    from .hub import load_backbone
    from .viz.pca import PCABasis, describe, pca_maps, pca_video, save_figure, save_maps

    # check everything that can be checked before loading a model or writing a file
    if args.video and args.images:
        raise ValueError("give images or --video, not both (use --basis to colour images with a video's basis)")
    if not args.video and not args.images:
        raise ValueError("nothing to do: give image files or --video FILE")
    if args.video and not Path(args.video).is_file():
        raise FileNotFoundError(f"{args.video}: no such video file")
    if args.images and not args.video:
        from .features import load_image

        for image in args.images:  # a missing or unreadable image stops us before any work or output
            load_image(image)
    if args.save_basis and Path(args.save_basis).suffix != ".npz":
        raise ValueError(f"--save-basis {args.save_basis}: a PCA basis is written as .npz; use that suffix")
    if args.basis and args.save_basis:
        raise ValueError("--basis reuses a fitted basis; --save-basis saves a new fit: give one of them")
    if not args.joint and not args.basis and not args.video and args.save_basis and len(args.images) > 1:
        raise ValueError("--save-basis needs one basis: add --joint to fit one over all the images")
    basis = PCABasis.load(args.basis) if args.basis else None
    out = Path(args.out)
    size = args.size if args.size else None
    weights = None if args.weights == "random" else args.weights
    if args.threads:
        torch.set_num_threads(args.threads)
    if weights is None:
        torch.manual_seed(args.seed)  # random weights, the same on every run: a saved basis stays valid
    model = load_backbone(args.model, weights=weights, device=args.device)
    if basis is not None and basis.dim != model.embed_dim:
        raise ValueError(f"--basis {args.basis}: fitted on {basis.dim}-channel features "
                         f"({basis.info.get('model', 'unknown model')}), {args.model} has {model.embed_dim}")
    if basis is not None and basis.info.get("model") not in (None, args.model):
        print(f"warning: {args.basis} was fitted on {basis.info['model']}, colouring {args.model} features",
              file=sys.stderr)
    common = dict(threshold=args.threshold, layer=args.layer, size=size, tile=args.tile, upsample=args.upsample,
                  batch_size=args.batch_size, info={"model": args.model, "size": size, "tile": args.tile})
    if args.video:
        stem = Path(args.video).stem
        suffix = ".avi" if args.avi else ".mp4"
        video_out = out / f"{stem}_pca{suffix}"
        basis_used, samples = pca_video(
            model, args.video, video_out, basis=basis, step=args.frame_step, max_frames=args.max_frames,
            frames_dir=out / f"{stem}_frames" if args.frames else None, progress=True, **common,
        )
        written = [video_out]
        written.append(save_figure(samples, out / "figure.png", alpha=args.alpha, title=describe(basis_used)))
        fitted = None if basis is not None else basis_used
        print(f"wrote {video_out} ({basis_used.info.get('images')} frames, frame | PCA colours)")
    else:
        maps = pca_maps(model, args.images, basis=basis, joint=args.joint or len(args.images) == 1,
                        progress=True, **common)
        one = maps[0].basis if all(m.basis is maps[0].basis for m in maps) else None
        title = describe(one) if one is not None else f"PCA of each image on its own ({len(maps)} images)"
        written = save_maps(maps, out, alpha=args.alpha, title=title)
        fitted = one if basis is None else None
        print(f"wrote {len(written)} files to {out}/ (figure.png and <name>_pca/_mask/_overlay.png per image)")
    if fitted is not None:
        target = Path(args.save_basis) if args.save_basis else out / "pca_basis.npz"
        fitted.save(target)
        print(f"wrote {target}: reuse it with --basis {target}")
        print(describe(fitted))
    elif basis is not None:
        print(f"colours from {args.basis} ({describe(basis)})")
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

    pca = sub.add_parser(
        "pca", help="PCA maps of patch features: foreground masks and part colours, for images or a video",
        description="First principal component -> foreground mask; three components of the foreground -> RGB. "
                    "Writes <name>_pca.png, <name>_mask.png, <name>_overlay.png and figure.png to --out, "
                    "and the fitted basis (pca_basis.npz) for reuse with --basis.",
    )
    pca.add_argument("images", nargs="*", help="image files (or skimage:NAME for a scikit-image sample)")
    pca.add_argument("--model", default="dinov2_vits14", help="zoo name (see `dinov2-dense info`)")
    pca.add_argument("--weights", default="official",
                     help="'official' (find or download), a file, a URL, or 'random' (no weights)")
    pca.add_argument("--out", default="pca_out", help="output directory (default: pca_out)")
    pca.add_argument("--joint", action="store_true",
                     help="one PCA over all images, so the same parts get the same colours (default: one per image)")
    pca.add_argument("--video", help="a video file: joint PCA over its frames; writes <name>_pca.mp4 "
                                     "(frame | colours side by side)")
    pca.add_argument("--basis", help="colour with this saved basis (.npz) instead of fitting one")
    pca.add_argument("--save-basis", help="where to save the fitted basis (default: OUT/pca_basis.npz)")
    pca.add_argument("--size", type=int, default=448,
                     help="resize the shorter side to this many pixels first; larger gives finer maps "
                          "(default 448; 0 keeps the image's own size)")
    pca.add_argument("--tile", type=int, help="tiled features: tile size in pixels (bounded memory for large --size)")
    pca.add_argument("--layer", type=int, default=-1, help="block whose patch tokens are used (default: the last)")
    pca.add_argument("--upsample", choices=["nearest", "bilinear"], default="bilinear",
                     help="from the patch grid to the image (default bilinear)")
    pca.add_argument("--threshold", type=_threshold_arg, default="otsu",
                     help="foreground split of the first component: otsu (default), zero, none (no mask), "
                          "or a number (z-score on the oriented component)")
    pca.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colours (default 0.5)")
    pca.add_argument("--frames", action="store_true", help="with --video: also write one PNG of colours per frame")
    pca.add_argument("--frame-step", type=int, default=1, help="with --video: take every N-th frame")
    pca.add_argument("--max-frames", type=int, help="with --video: at most this many frames")
    pca.add_argument("--avi", action="store_true", help="with --video: write MJPG .avi instead of mp4v .mp4")
    pca.add_argument("--batch-size", type=int, default=8)
    pca.add_argument("--seed", type=int, default=0, help="seed of --weights random (default 0)")
    pca.add_argument("--device", default=None, help="e.g. cpu, cuda")
    pca.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    pca.set_defaults(func=_cmd_pca)

    _add_engine_commands(sub)
    return parser


def _cmd_synth(args: argparse.Namespace) -> int:
    from .data import synthetic

    config = synthetic.SceneConfig(size=(args.size, args.size), num_classes=args.classes)
    writer = {"ade20k": synthetic.write_ade20k_layout, "nyu": synthetic.write_nyu_layout}.get(args.layout)
    if writer is not None:
        writer(args.out, args.train, args.val, config=config, seed=args.seed)
    else:
        synthetic.write_folder_layout(args.out, args.train, config=config, seed=args.seed)
    print(f"wrote synthetic scenes ({args.layout} layout) under {args.out}")
    return 0


def _add_engine_commands(sub) -> None:
    """train / test (mmengine runs), eval-depth and synth: the same code as tools/*.py."""
    from .engine.entry import add_test_arguments, add_train_arguments, run_test, run_train
    from .evaluation.depth_files import add_eval_depth_arguments, run_eval_depth

    train = sub.add_parser("train", help="train a head on a frozen backbone (an mmengine config)")
    add_train_arguments(train).set_defaults(func=run_train)
    test = sub.add_parser("test", help="evaluate a checkpoint with a config; --out saves predictions")
    add_test_arguments(test).set_defaults(func=run_test)
    ev = sub.add_parser("eval-depth", help="metrics of saved depth maps against ground truth")
    add_eval_depth_arguments(ev).set_defaults(func=run_eval_depth)
    synth = sub.add_parser("synth", help="write synthetic scenes with exact segmentation and depth")
    synth.add_argument("out", help="output directory")
    synth.add_argument("--layout", choices=["ade20k", "nyu", "folder"], default="ade20k")
    synth.add_argument("--train", type=int, default=400, help="training scenes (folder layout: all scenes)")
    synth.add_argument("--val", type=int, default=50, help="validation scenes")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels")
    synth.add_argument("--classes", type=int, default=5, help="classes including the background")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_synth)


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
