"""Slide inference with ViT-S/14 + the ADE20K linear head: time and peak memory against image size.

Each run is a fresh subprocess; memory is peak RSS above the loaded model. The backbone only ever
sees 512x512 crops, so what grows with the image is the (B, 150, H, W) logit accumulator (which
the output needs anyway), not the activations. Whole-image inference is run for contrast, and slide
inference with windows one at a time (crop batch 1, as before batching) and in batches (4 by
default), with the ratio of their times.

    python benchmarks/slide_inference.py [--sizes 1024x512 2048x1024] [--crop-batch-sizes 1 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time, torch
from dinov2_dense.zoo import build_model
torch.manual_seed(0)
w, h, mode, crops = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
model = build_model("dinov2_vits14_ade20k_linear").eval()
# at the image's own size: the zoo model's protocol resizes every input to a short side of 512 first (its
# test_cfg scale (2048, 512)), so 1024x512 and 2048x1024 slid over the same 1024x512 view
model.test_cfg = {**model.test_cfg, "scale": None}
x = torch.randn(1, 3, h, w)
model.predict(torch.randn(1, 3, 112, 112), mode="whole")  # warm-up, allocator settles
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
out = model.predict(x, mode=mode, crop_size=512, stride=341, crop_batch_size=crops)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "delta_mb": (peak - before) / 1024, "peak_mb": peak / 1024,
                  "output_mb": out.numel() * 4 / 2**20}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["1024x512", "2048x1024"], help="WIDTHxHEIGHT")
    ap.add_argument("--modes", nargs="+", default=["slide", "whole"])
    ap.add_argument("--crop-batch-sizes", nargs="+", type=int, default=[1, 4])
    args = ap.parse_args()
    for size in args.sizes:
        w, h = size.split("x")
        times = {}
        for mode in args.modes:
            for crops in args.crop_batch_sizes if mode == "slide" else [1]:
                res = subprocess.run([sys.executable, "-c", _CHILD, w, h, mode, str(crops)], capture_output=True,
                                     text=True)
                if res.returncode:
                    print(f"{size} {mode}: failed: {res.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                label = f"{mode} (crop batch {crops})" if mode == "slide" else mode
                times[label] = r["seconds"]
                print(f"{size} {label:21s}: {r['seconds']:.1f} s, peak +{r['delta_mb']:.0f} MB above the loaded model "
                      f"(of which one {r['output_mb']:.0f} MB output map; peak RSS {r['peak_mb']:.0f} MB)")
        slides = [k for k in times if k.startswith("slide")]
        if len(slides) > 1:
            print(f"{size}: time of {slides[-1]} / {slides[0]} = {times[slides[-1]] / times[slides[0]]:.2f}")


if __name__ == "__main__":
    main()
