"""Where the ADE20K +ms model's time goes on a GPU: one image (512x683) through
``dinov2_vitl14_ade20k_ms`` with bf16 backbone weights and compiled blocks, timed at several crop
batch sizes, the number of host-device synchronisations in one prediction (none
expected), then torch.profiler over one prediction (top operators by CUDA time and by CPU time).
Random weights: the time does not depend on them.

    python benchmarks/ms_profile.py                 # a GPU
    python benchmarks/ms_profile.py --float8        # the backbone's linear layers in FP8 (H100/Ada)
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vitl14")
    ap.add_argument("--crop-batch-sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--float8", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device (the +ms model takes minutes an image on a CPU)")
        return 1

    from torch.profiler import ProfilerActivity, profile

    from dinov2_dense.models.speed import compile_blocks
    from dinov2_dense.zoo import build_model

    torch.manual_seed(0)
    model = build_model(f"dinov2_{args.arch}_ade20k_ms").cuda().eval()
    model.backbone.to(torch.bfloat16)
    if args.float8:
        from dinov2_dense.models.float8 import float8_linears

        float8_linears(model.backbone)
    compile_blocks(model.backbone, "default")
    x = torch.randn(1, 3, 512, 683, device="cuda")
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; test {model.test_cfg}"
          f"{'; FP8 linear layers' if args.float8 else ''}", flush=True)
    with torch.inference_mode():
        for crops in args.crop_batch_sizes:
            for _ in range(2):
                model.predict(x, crop_batch_size=crops)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.repeats):
                model.predict(x, crop_batch_size=crops)
            torch.cuda.synchronize()
            print(f"crop_batch_size {crops}: {(time.perf_counter() - t) / args.repeats:.3f} s an image", flush=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            model.predict(x, crop_batch_size=args.crop_batch_sizes[0])
            torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message).splitlines()[0] for w in caught  # (torch first says the mode is a prototype)
                 if "synchroniz" in str(w.message) and "prototype" not in str(w.message)]
        print(f"device synchronisations in one prediction: {len(syncs)}{': ' + syncs[0] if syncs else ''}", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.predict(x, crop_batch_size=args.crop_batch_sizes[0])
            torch.cuda.synchronize()
    table = prof.key_averages()
    print(table.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60), flush=True)
    print(table.table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
