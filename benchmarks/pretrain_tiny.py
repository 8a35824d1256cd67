"""What tiny_cpu pretraining buys: kNN accuracy and a linear segmentation probe on held-out synthetic
scenes, for the exported backbone and for the same architecture at random initialisation, plus the
run's images/s and wall time.

    python benchmarks/pretrain_tiny.py                       # runs configs/pretrain/tiny_cpu.py (~20 min, 2 cores)
    python benchmarks/pretrain_tiny.py --work-dir runs/tiny  # evaluate a finished run only

The labels come from the scene generator: kNN on class tokens, the scene's label being the class that
covers most of it; the probe on the last block's patch tokens (mIoU at the patch grid), fitted on
few scenes (colour alone separates the scenes' classes, so many fitting scenes saturate it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work-dir", type=Path, default=None, help="a finished tiny_cpu run (default: run one now)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/pretrain/tiny_cpu.py")
    ap.add_argument("--seeds", type=int, default=3, help="random initialisations to average")
    args = ap.parse_args()
    from dinov2_dense import load_backbone
    from dinov2_dense.models import DinoVisionTransformer
    from pretrain.monitor import dense_quality, scene_set

    work = args.work_dir
    wall = None
    if work is None:
        work = Path("work_dirs/benchmark_tiny_cpu")
        t = time.time()
        subprocess.run([sys.executable, "-m", "dinov2_dense.cli", "pretrain", str(args.config), "--work-dir", str(work),
                        "--overwrite"], check=True)
        wall = time.time() - t
    export = work / "export" / "backbone.safetensors"
    trained = load_backbone(None, weights=export)
    arch = json.loads((work / "export" / "backbone.json").read_text())
    probe = (scene_set(8, 112, "train", 1), scene_set(32, 112, "val", 1))
    knn = (scene_set(200, 112, "train", 2), scene_set(100, 112, "val", 2))
    torch.set_num_threads(2)
    ours = dense_quality(trained, probe, knn, 5)
    randoms = []
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        randoms.append(dense_quality(DinoVisionTransformer(**arch).eval(), probe, knn, 5))
    rand = {k: sum(r[k] for r in randoms) / len(randoms) for k in ours}
    print(run_line(work, wall))
    print(f"kNN top-1 (held-out scenes): pretrained {ours['knn_top1']:.1f}%, random init {rand['knn_top1']:.1f}% "
          f"(mean of {args.seeds}); +{ours['knn_top1'] - rand['knn_top1']:.1f} points")
    print(f"linear probe mIoU: pretrained {ours['probe_miou']:.2f}, random init {rand['probe_miou']:.2f}; "
          f"{ours['probe_miou'] - rand['probe_miou']:+.2f}")
    monitor = work / "monitor" / "monitor.jsonl"
    if monitor.is_file():
        for line in monitor.read_text().splitlines():
            r = json.loads(line)
            print(f"  monitor at {r['iteration']}: kNN {r['knn_top1']:.1f}%, probe mIoU {r['probe_miou']:.2f}")
    return 0


def run_line(work: Path, wall: float | None) -> str:
    """Iterations, the median images/s over the log intervals (checkpoints and monitor runs fall in a
    few of them) and the wall time of a run, from its training_metrics.jsonl."""
    lines = [json.loads(l) for l in (work / "training_metrics.jsonl").read_text().splitlines()]
    rates = sorted(l["images_per_s"] for l in lines)
    return (f"run: {lines[-1]['iteration']} iterations, {rates[len(rates) // 2]:.1f} images/s (median over the log "
            "intervals)" + (f", wall time {wall / 60:.1f} min" if wall else ""))


if __name__ == "__main__":
    sys.exit(main())
