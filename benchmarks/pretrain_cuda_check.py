"""CUDA check of the pretraining loop (run on a GPU machine; prints one line per check).

    PYTHONPATH=. python benchmarks/pretrain_cuda_check.py [--tiny-cpu]

1. fp32 on CUDA against fp32 on the CPU: the same seed gives the same crops, masks and initial
   weights, so the first iterations' loss terms must agree (TF32 off for this check).
2. bf16 autocast and fp16 with the gradient scaler on CUDA: 30 iterations, every logged loss finite,
   the scaler's scale reported, the export loads strictly.
3. Distillation on CUDA (bf16), a few iterations, the student exported.
4. With --tiny-cpu: the whole configs/pretrain/tiny_cpu.py on the GPU (bf16, 8 loader workers), timed,
   then the kNN and probe figures of benchmarks/pretrain_tiny.py.
Not a test: CI has no GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dinov2_dense import load_backbone  # noqa: E402
from pretrain.train import pretrain  # noqa: E402

HEAD = dict(head_n_prototypes=1024, head_bottleneck_dim=64, head_hidden_dim=256)


def config(device: str, precision: str, iters: int, **sections) -> dict:
    cfg = dict(
        student=dict(arch="custom", embed_dim=96, depth=4, num_heads=3, drop_path_rate=0.1, layerscale=0.1),
        dino=dict(HEAD), ibot=dict(HEAD),
        crops=dict(global_crops_size=112, local_crops_size=56, local_crops_number=4),
        train=dict(batch_size_per_gpu=16, num_workers=0, OFFICIAL_EPOCH_LENGTH=iters, checkpoint_period=iters,
                   log_freq=1, dataset=dict(type="synthetic", num_scenes=512, config=dict(size=(160, 160)))),
        optim=dict(epochs=1, warmup_epochs=0, freeze_last_layer_epochs=0, base_lr=1e-3),
        teacher=dict(warmup_teacher_temp_epochs=0),
        compute=dict(device=device, precision=precision),
        monitor=dict(period=0),
    )
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def losses(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "training_metrics.jsonl").read_text().splitlines()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-cpu", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
    ok = True
    tmp = Path(tempfile.mkdtemp())
    keys = ("dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "total_loss")

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    t = time.time()
    # no stochastic depth here: its masks come from each device's own random generator
    same = dict(student=dict(drop_path_rate=0.0))
    pretrain(config("cpu", "fp32", 3, **same), tmp / "cpu", progress=False)
    pretrain(config("cuda", "fp32", 3, **same), tmp / "cuda", progress=False)
    for a, b in zip(losses(tmp / "cpu"), losses(tmp / "cuda")):
        err = max(abs(a[k] - b[k]) for k in keys if k in a)
        good = err < 1e-3
        ok &= good
        print(f"{'ok ' if good else 'BAD'} fp32 iteration {a['iteration']}: total loss cpu {a['total_loss']:.6f} "
              f"cuda {b['total_loss']:.6f}, max diff over the loss terms {err:.2e} (tol 1e-3)", flush=True)
    print(f"    ({time.time() - t:.0f} s)")
    torch.backends.cudnn.allow_tf32 = True

    for precision in ("bf16", "fp16"):
        t = time.time()
        work = tmp / precision
        result = pretrain(config("cuda", precision, 30), work, progress=False)
        lines = losses(work)
        finite = all(math.isfinite(l[k]) for l in lines for k in keys if k in l)
        model = load_backbone(None, weights=result["export"]["safetensors"])
        good = finite and len(lines) == 30
        ok &= good
        scale = f", grad scale {lines[-1]['grad_scale']:g}" if "grad_scale" in lines[-1] else ""
        print(f"{'ok ' if good else 'BAD'} {precision}: 30 iterations, total loss {lines[0]['total_loss']:.3f} -> "
              f"{lines[-1]['total_loss']:.3f}, all finite {finite}, {lines[-1]['images_per_s']:.0f} images/s{scale}, "
              f"export loads ({sum(p.numel() for p in model.parameters())} parameters) ({time.time() - t:.0f} s)",
              flush=True)

    t = time.time()
    cfg = config("cuda", "bf16", 6, distill=dict(teacher=str(tmp / "bf16" / "export" / "backbone.safetensors"),
                                                   students=[dict(embed_dim=48, num_heads=2), dict(depth=2)]))
    result = pretrain(cfg, tmp / "distill", progress=False)
    good = set(result["export"]) == {"student0", "student1"}
    ok &= good
    print(f"{'ok ' if good else 'BAD'} distillation bf16: 2 students exported, total loss "
          f"{losses(tmp / 'distill')[-1]['total_loss']:.3f} ({time.time() - t:.0f} s)", flush=True)

    if args.tiny_cpu:
        t = time.time()
        work = tmp / "tiny_cpu"
        subprocess.run([sys.executable, "-m", "dinov2_dense.cli", "pretrain", str(ROOT / "configs/pretrain/tiny_cpu.py"),
                        "--work-dir", str(work), "--no-progress", "--cfg-options", "train.num_workers=8",
                        "compute.precision=bf16"], check=True)
        print(f"tiny_cpu on the GPU: {(time.time() - t) / 60:.1f} min", flush=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks/pretrain_tiny.py"), "--work-dir", str(work)], check=True)
    print("all ok" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
