"""Multi-scale + flip, slide inference of one image: windows one at a time against batched windows and
mirrors, in one process, on the device at hand (random weights: the time does not depend on them).

    python benchmarks/batched_inference.py                                   # ViT-L ADE20K +ms, 512x683, bf16 on CUDA
    python benchmarks/batched_inference.py --model dinov2_vits14_ade20k_linear --dtype fp32 --repeats 1   # a CPU try

Prints the median time of each setting, their ratio, and the largest difference between the two
predictions (probabilities).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov2_dense.options import int_range  # noqa: E402 - after the path: a one-line error for a bad count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dinov2_vitl14_ade20k_ms")
    ap.add_argument("--size", default="512x683", help="HEIGHTxWIDTH of the image")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (bf16) or none")
    ap.add_argument("--crop-batch-sizes", nargs="+", type=int_range(1), default=[1, 8])
    ap.add_argument("--repeats", type=int_range(1), default=5)
    args = ap.parse_args()
    from dinov2_dense.zoo import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(args.model).to(device).eval()
    h, w = (int(v) for v in args.size.split("x"))
    x = torch.randn(1, 3, h, w, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(crops: int) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            return model.predict(x, crop_batch_size=crops)

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"{args.model} on {name}, {h}x{w}, {args.dtype}, test protocol {model.test_cfg}", flush=True)
    results, times = {}, {}
    for crops in args.crop_batch_sizes:
        run(crops)  # warm-up
        sync()
        seen = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            out = run(crops)
            sync()
            seen.append(time.perf_counter() - t)
        results[crops], times[crops] = out.float(), statistics.median(seen)
        print(f"  crop batch {crops:3d}: {times[crops]:.3f} s per image (median of {args.repeats})", flush=True)
    first, last = args.crop_batch_sizes[0], args.crop_batch_sizes[-1]
    diff = (results[first] - results[last]).abs().max().item()
    print(f"  speed-up {times[first] / times[last]:.2f}x; largest probability difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
