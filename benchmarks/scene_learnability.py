"""How much a backbone's patch features know about the synthetic scenes' classes, against the
same architecture at random init and against references, in one process.

    python benchmarks/scene_learnability.py --weights work_dirs/pretrain/RUN/export/backbone.safetensors
    python benchmarks/scene_learnability.py --appearance colour --supervised-steps 0

For each block: the mIoU (at the patch grid) of a frozen linear probe fitted on ``--scenes`` train
scenes and scored on held-out ones, for the backbone and for its architecture at random init (seed
0). Then three references on the same scenes: the raw pixels of each patch, the magnitude of each
patch's 2-D FFT (grey, mean removed, unit norm: a colour-blind texture feature), and the same
architecture trained **supervised** (patch cross-entropy, AdamW 1e-3, batch 32) for
``--supervised-steps`` steps on other scenes. One more row feeds each patch-sized cell alone and
probes its class token: where that beats the patch tokens, the DINO loss taught the class-token path
what the patch tokens did not learn. ``--grey`` probes grey scenes. A pretraining recipe that learns
what the scenes' classes are made of moves the first column from the random one towards the supervised one; on
"texture" scenes (classes shown by texture only) random features sit at the background-only floor.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def patch_probe(train: tuple, test: tuple, features, num_classes: int) -> float:
    """mIoU of a linear probe on ``features(images) -> (n, D, h, w)``."""
    from dinov2_dense.evaluation import fit_linear, segmentation_metrics
    from pretrain.monitor import _patch_labels

    with torch.no_grad():
        a, b = features(train[0]), features(test[0])
    grid, d = tuple(a.shape[-2:]), a.shape[1]
    layer = fit_linear(a.permute(0, 2, 3, 1).reshape(-1, d), _patch_labels(train[1], grid).reshape(-1),
                       num_classes=num_classes, weight_decay=1e-3, max_iter=200)
    pred = layer(b.permute(0, 2, 3, 1).reshape(-1, d)).argmax(1).reshape(len(b), *grid)
    return segmentation_metrics(list(pred.numpy()), list(_patch_labels(test[1], grid).numpy()), num_classes)["mIoU"]


def patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """(n, C, H, W) -> (n, C * p * p, H / p, W / p): the pixels of each patch."""
    n, _, h, w = x.shape
    return F.unfold(x, p, stride=p).reshape(n, -1, h // p, w // p)


def cell_tokens(model, p: int):
    """Features of each patch-sized cell fed alone (a 1-patch image): its class token, (n, D, H/p, W/p).
    Where this beats the patch tokens of whole scenes, training taught the class-token path (the
    DINO loss) what the patch tokens did not learn."""
    def features(x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        cells = F.unfold(x, p, stride=p).transpose(1, 2).reshape(-1, 3, p, p)
        cls = torch.cat([model.forward_features(c)["x_norm_clstoken"] for c in cells.split(1024)])
        return cls.reshape(n, h // p, w // p, -1).permute(0, 3, 1, 2)
    return features


def grey(scenes: tuple) -> tuple:
    """The same scenes in grey (channel mean of the pixels, normalised again)."""
    from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD

    x, *rest = scenes
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    g = (x * std + mean).mean(1, keepdim=True)
    return ((g - mean) / std, *rest)


def fft_features(x: torch.Tensor, p: int) -> torch.Tensor:
    """Per patch: |FFT2| of the grey patch, mean removed, unit norm."""
    n, _, h, w = x.shape
    grey = patches(x.mean(1, keepdim=True), p).permute(0, 2, 3, 1).reshape(n, h // p, w // p, p, p)
    mag = torch.fft.rfft2(grey - grey.mean((-1, -2), keepdim=True)).abs().flatten(3)
    return (mag / (mag.norm(dim=-1, keepdim=True) + 1e-6)).permute(0, 3, 1, 2)


def supervised(arch: dict, steps: int, size: int, appearance: str, num_classes: int, seed: int = 0):
    from dinov2_dense.models import DinoVisionTransformer
    from pretrain.monitor import _patch_labels, scene_set

    torch.manual_seed(seed)
    x, seg, _ = scene_set(1500, size, "train", seed=seed + 5, appearance=appearance)
    model = DinoVisionTransformer(**{**arch, "img_size": size})
    head = torch.nn.Linear(model.embed_dim, num_classes)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
    y = None
    for _ in range(steps):
        idx = torch.randint(0, len(x), (32,))
        maps = model.intermediate_maps(x[idx], None)[0][0]
        y = _patch_labels(seg[idx.numpy()], tuple(maps.shape[-2:]))
        loss = F.cross_entropy(head(maps.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="a backbone file load_backbone reads (default: only the references, "
                                                      "with --arch)")
    ap.add_argument("--arch", default="96,4,3", help="WIDTH,DEPTH,HEADS without --weights (default 96,4,3)")
    ap.add_argument("--appearance", choices=["texture", "colour"], default="texture")
    ap.add_argument("--size", type=int, default=112, help="scene size in pixels (a multiple of 14)")
    ap.add_argument("--scenes", type=int, nargs=2, default=[128, 48], help="probe train and test scenes")
    ap.add_argument("--supervised-steps", type=int, default=400, help="0: skip the supervised reference")
    ap.add_argument("--grey", action="store_true", help="probe on grey scenes (for backbones trained on grey views)")
    args = ap.parse_args()

    from dinov2_dense import load_backbone
    from dinov2_dense.data.synthetic import SceneConfig
    from dinov2_dense.models import DinoVisionTransformer
    from pretrain.monitor import scene_set

    num_classes = SceneConfig().num_classes
    train = scene_set(args.scenes[0], args.size, "train", appearance=args.appearance)
    test = scene_set(args.scenes[1], args.size, "val", appearance=args.appearance)
    if args.grey:
        train, test = grey(train), grey(test)
    if args.weights:
        model = load_backbone(None, args.weights).eval()
        arch = model.arch_kwargs()
    else:
        width, depth, heads = (int(v) for v in args.arch.split(","))
        model, arch = None, dict(img_size=args.size, patch_size=14, embed_dim=width, depth=depth, num_heads=heads)
    torch.manual_seed(0)
    random = DinoVisionTransformer(**arch).eval()
    p = random.patch_size
    look = f"{args.appearance} scenes" + (" in grey" if args.grey else "")
    print(f"{look} at {args.size} px, probe on {args.scenes[0]} / {args.scenes[1]} scenes, {num_classes} classes; "
          "mIoU at the patch grid", flush=True)
    print(f"{'block':>5}  {'backbone':>8}  {'random':>6}")
    for block in range(len(random.blocks)):
        ours = patch_probe(train, test, lambda x: model.intermediate_maps(x, [block])[0][0], num_classes) \
            if model is not None else float("nan")
        rnd = patch_probe(train, test, lambda x: random.intermediate_maps(x, [block])[0][0], num_classes)
        print(f"{block:5d}  {ours:8.1f}  {rnd:6.1f}", flush=True)
    ours = patch_probe(train, test, cell_tokens(model, p), num_classes) if model is not None else float("nan")
    rnd = patch_probe(train, test, cell_tokens(random, p), num_classes)
    print(f"class token of each {p}-pixel cell fed alone: {ours:.1f} (random init {rnd:.1f})")
    print(f"pixels of each patch: {patch_probe(train, test, lambda x: patches(x, p), num_classes):.1f}")
    print(f"patch FFT magnitude:  {patch_probe(train, test, lambda x: fft_features(x, p), num_classes):.1f}")
    if args.supervised_steps:
        t = time.time()
        sup = supervised(arch, args.supervised_steps, args.size, args.appearance, num_classes)
        score = patch_probe(train, test, lambda x: sup.intermediate_maps(x, None)[0][0], num_classes)
        print(f"supervised, {args.supervised_steps} steps ({time.time() - t:.0f} s), last block: {score:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
