"""Backbone forward with float32 weights, bfloat16 weights (``load_backbone(dtype="bf16")``) and bfloat16
autocast, in one process, on the device at hand (random weights; the same values in both dtypes).

    python benchmarks/half_weights.py [--model dinov2_vits14] [--size 518] [--batch 2] [--threads 2]

Prints the median time of each and the speed-ups over float32, and whether the CPU has native
bfloat16 (without it, ``load_backbone`` keeps float32 and says why).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from dinov2_dense import load_backbone
    from dinov2_dense.features import cpu_has_native_bf16

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp32 = load_backbone(args.model, weights=None, device=device)
    half = load_backbone(args.model, weights=None, device=device)
    half.load_state_dict(fp32.state_dict())
    half = half.to(torch.bfloat16)  # as load_backbone(dtype="bf16") gives where the device has bf16
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn) -> float:
        fn()
        seen = []
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            seen.append(time.perf_counter() - t)
        return statistics.median(seen)

    last = [len(fp32.blocks) - 1]
    with torch.no_grad():
        t32 = timed(lambda: fp32.intermediate_maps(x, last))
        t16 = timed(lambda: half.intermediate_maps(x.to(torch.bfloat16), last))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            tac = timed(lambda: fp32.intermediate_maps(x, last))
    where = torch.cuda.get_device_name(0) if device.type == "cuda" else \
        f"CPU, {args.threads} threads, native bf16: {cpu_has_native_bf16()}"
    print(f"{args.model} {args.size}x{args.size} batch {args.batch} ({where}): float32 {t32:.3f} s, bf16 weights "
          f"{t16:.3f} s ({t32 / t16:.2f}x), bf16 autocast {tac:.3f} s ({t32 / tac:.2f}x); median of {args.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
