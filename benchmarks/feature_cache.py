"""Feature cache: per-epoch time of training a linear head from cached features vs the uncached loop.

ViT-S/14 (random weights: the speed is the same as with the official ones), the "lin." head on
blocks 8-11, synthetic scenes in the ADE20K layout, one process, 2 threads by default. Prints the
one-time cost of building the cache, the seconds per epoch of both loops and their ratio.

    python benchmarks/feature_cache.py [--images 64] [--size 224] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from dinov2_dense.data import ADE20KDataset
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
from dinov2_dense.engine.feature_cache import FeatureCache, train_head
from heads import CrossEntropyLoss, DensePredictor, LinearHead
from dinov2_dense.hub import build_backbone


def predictor() -> DensePredictor:
    torch.manual_seed(0)
    head = LinearHead.preset("lin.", 384, 5, sync_bn=False)
    return DensePredictor(build_backbone("dinov2_vits14").eval(), head, task="segmentation", layers=[8, 9, 10, 11])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_ade20k_layout(root / "ade", args.images, 1, config=SceneConfig(size=(args.size, args.size)), progress=False)
        data = ADE20KDataset(root / "ade", "training")
        live, cached = predictor(), predictor()
        t0 = time.perf_counter()
        cache = FeatureCache.build(cached, data, root / "cache", batch_size=args.batch_size, progress=False)
        build = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_head(live, data, [CrossEntropyLoss()], epochs=args.epochs, batch_size=args.batch_size, progress=False)
        uncached = (time.perf_counter() - t0) / args.epochs
        t0 = time.perf_counter()
        train_head(cached, cache, [CrossEntropyLoss()], epochs=args.epochs, batch_size=args.batch_size, progress=False)
        from_cache = (time.perf_counter() - t0) / args.epochs
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.images} images of "
          f"{args.size}x{args.size}, batch {args.batch_size}")
    print(f"building the cache (once): {build:.2f} s")
    print(f"per epoch: uncached {uncached:.2f} s, from the cache {from_cache:.3f} s -> speed-up {uncached / from_cache:.1f}x")


if __name__ == "__main__":
    main()
