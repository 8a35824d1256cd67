"""What distillation buys at CPU scale: the tiny_cpu backbone teaches a smaller ViT/14
(configs/pretrain/distill_tiny_cpu.py); the exported student's kNN accuracy and linear segmentation
probe on held-out synthetic scenes, and its class-token distance to the teacher, against the same
student architecture at random initialisation; plus the run's images/s and wall time.

    python benchmarks/distill_tiny.py --teacher-run work_dirs/benchmark_tiny_cpu   # after benchmarks/pretrain_tiny.py
    python benchmarks/distill_tiny.py --work-dir runs/distill                       # evaluate a finished run only

Same scenes and rules as benchmarks/pretrain_tiny.py (kNN on class tokens, label = the class covering
most of the scene; probe mIoU at the patch grid).
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
    ap.add_argument("--teacher-run", type=Path, default=Path("work_dirs/pretrain/tiny_cpu"),
                    help="a finished tiny_cpu run: its export is the teacher, its newest checkpoint the teacher's head")
    ap.add_argument("--work-dir", type=Path, default=None, help="a finished distillation run (default: run one now)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs/pretrain/distill_tiny_cpu.py")
    ap.add_argument("--seeds", type=int, default=3, help="random initialisations to average")
    args = ap.parse_args()
    from dinov2_dense import load_backbone
    from dinov2_dense.models import DinoVisionTransformer
    from pretrain.distill import feature_distance
    from pretrain.monitor import dense_quality, scene_set
    from pretrain.train import checkpoint_files
    from pretrain_tiny import run_line  # benchmarks/pretrain_tiny.py, beside this script

    teacher_file = args.teacher_run / "export" / "backbone.safetensors"
    work, wall = args.work_dir, None
    if work is None:
        ckpts = checkpoint_files(args.teacher_run)
        if not teacher_file.is_file() or not ckpts:
            raise SystemExit(f"{args.teacher_run}: no finished tiny_cpu run (export/ and a checkpoint); "
                             "run benchmarks/pretrain_tiny.py first or give --teacher-run")
        work = Path("work_dirs/benchmark_distill_tiny_cpu")
        t = time.time()
        subprocess.run([sys.executable, "-m", "dinov2_dense.cli", "pretrain", str(args.config), "--work-dir", str(work),
                        "--overwrite", "--cfg-options", f"distill.teacher={teacher_file}",
                        f"distill.teacher_head={args.teacher_run}"], check=True)
        wall = time.time() - t
    teacher = load_backbone(None, weights=teacher_file)
    student = load_backbone(None, weights=work / "export" / "student0.safetensors")
    arch = json.loads((work / "export" / "student0.json").read_text())
    probe = (scene_set(8, 112, "train", 1), scene_set(32, 112, "val", 1))
    knn = (scene_set(200, 112, "train", 2), scene_set(100, 112, "val", 2))
    images = scene_set(300, 112, "val", 7)[0]
    torch.set_num_threads(2)
    with torch.no_grad():
        ours = {**dense_quality(student, probe, knn, 5), "distance": feature_distance(student, teacher, images)}
        ref = dense_quality(teacher, probe, knn, 5)
        randoms = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            init = DinoVisionTransformer(**arch).eval()
            randoms.append({**dense_quality(init, probe, knn, 5), "distance": feature_distance(init, teacher, images)})
    rand = {k: sum(r[k] for r in randoms) / len(randoms) for k in ours}
    print(run_line(work, wall))
    print(f"kNN top-1 (held-out scenes): student {ours['knn_top1']:.1f}%, its random init {rand['knn_top1']:.1f}% "
          f"(mean of {args.seeds}), teacher {ref['knn_top1']:.1f}%")
    print(f"linear probe mIoU: student {ours['probe_miou']:.2f}, random init {rand['probe_miou']:.2f}, "
          f"teacher {ref['probe_miou']:.2f}")
    print(f"class-token distance to the teacher (cosine, after a linear map): student {ours['distance']:.4f}, "
          f"random init {rand['distance']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
