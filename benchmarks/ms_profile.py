"""Where the ADE20K +ms model's time goes on a GPU: one image (512x683) through
``dinov2_vitl14_ade20k_ms`` with bf16 backbone weights and compiled blocks, timed at several crop
batch sizes, the number of host-device synchronisations in one prediction (only those of reading
the 8-bit image back once, before its views are made, expected), then torch.profiler over one prediction (top operators by CUDA time and by CPU time).
Random weights: the time does not depend on them.

    python benchmarks/ms_profile.py                 # a GPU
    python benchmarks/ms_profile.py --float8        # the backbone's linear layers in FP8 (H100/Ada)
    python benchmarks/ms_profile.py --compile-modes default static-autotune --crop-batch-sizes 16
    python benchmarks/ms_profile.py --flops-only     # any machine: the prediction's FLOPs ("meta" device)

The FLOPs of one prediction are counted by ``torch.utils.flop_counter`` on the "meta" device (shapes,
no values), split into the linear layers, attention and the rest; on a GPU each timing also prints the
share of the device's dense bf16 peak it reaches (``--peak-tflops``, 989 for an H100 SXM).

``--compile-modes``: each builds the model afresh (same random weights) and compiles its blocks:
``default`` and ``max-autotune`` as ``compile_blocks`` does (shapes marked dynamic); the trial
``static-autotune`` compiles each block for the shapes it meets (``dynamic=False``) with GEMM
autotuning, so inductor may fuse the bias and GELU into its own matrix-product kernels (whether that
beats cuBLAS plus a separate GELU kernel, autotuning time included). The outputs of each mode are
compared with the first mode's. The profile is taken for the last mode.
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
    ap.add_argument("--compile-modes", nargs="+", default=["default"],
                    choices=["none", "default", "max-autotune", "static-autotune"])
    ap.add_argument("--flops-only", action="store_true", help="count the FLOPs of one prediction and stop")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
    ap.add_argument("--target-s", type=float, default=1.28 / 3, help="the time asked for (3x the one-crop 1.28 s)")
    args = ap.parse_args()
    flops = count_flops(args.arch, args.crop_batch_sizes[0])
    total = sum(flops.values())
    print(f"dinov2_{args.arch}_ade20k_ms, one 512x683 image: {total / 1e12:.1f} TFLOP ("
          + ", ".join(f"{name} {n / 1e12:.1f}" for name, n in flops.items()) + "); at "
          f"{args.peak_tflops:g} TFLOP/s it takes {total / args.peak_tflops / 1e12:.3f} s at the whole peak, and "
          f"{args.target_s:.3f} s asks for {total / args.target_s / args.peak_tflops / 1e12:.1%} of it", flush=True)
    if args.flops_only:
        return 0
    if not torch.cuda.is_available():
        print("needs a CUDA device (the +ms model takes minutes an image on a CPU)")
        return 1

    from torch.profiler import ProfilerActivity, profile

    from dinov2_dense.models.speed import compile_blocks
    from dinov2_dense.zoo import build_model

    from dinov2_dense.features import normalise_8bit

    # an 8-bit image normalised as the data sets do: its views are resized in 8 bits, as `test` does
    x = normalise_8bit(torch.randint(0, 256, (1, 3, 512, 683), dtype=torch.uint8,
                                     generator=torch.Generator().manual_seed(0))).cuda()
    first = None
    for mode in args.compile_modes:
        torch.manual_seed(0)
        model = build_model(f"dinov2_{args.arch}_ade20k_ms").cuda().eval()
        model.backbone.to(torch.bfloat16)
        if args.float8:
            from dinov2_dense.models.float8 import float8_linears

            float8_linears(model.backbone)
        if mode == "static-autotune":
            for block in model.backbone.blocks:
                block.compile(mode="max-autotune-no-cudagraphs", dynamic=False)
        elif mode != "none":
            compile_blocks(model.backbone, mode)
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}; test {model.test_cfg}"
              f"{'; FP8 linear layers' if args.float8 else ''}; blocks compiled: {mode}", flush=True)
        with torch.inference_mode():
            t = time.perf_counter()
            out = model.predict(x, crop_batch_size=args.crop_batch_sizes[0]).float()
            torch.cuda.synchronize()
            print(f"first prediction (compiling, autotuning): {time.perf_counter() - t:.1f} s", flush=True)
            if first is None:
                first = out
            else:
                print(f"largest difference from {args.compile_modes[0]}: {(out - first).abs().max().item():.3g}, "
                      f"labels changed: {(out.argmax(1) != first.argmax(1)).float().mean().item():.2%}", flush=True)
            for crops in args.crop_batch_sizes:
                for _ in range(2):
                    model.predict(x, crop_batch_size=crops)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(args.repeats):
                    model.predict(x, crop_batch_size=crops)
                torch.cuda.synchronize()
                seconds = (time.perf_counter() - t) / args.repeats
                print(f"crop_batch_size {crops}: {seconds:.3f} s an image "
                      f"({total / seconds / args.peak_tflops / 1e12:.1%} of the peak)", flush=True)
    with torch.inference_mode():
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


def count_flops(arch: str, crop_batch_size: int) -> dict[str, int]:
    """FLOPs of one +ms prediction of a 512x683 image, counted on the "meta" device: the linear layers
    (addmm, mm), attention (on "meta" its matrix products run as bmm) and the rest (the patch embedding's
    convolution or product)."""
    from torch.utils.flop_counter import FlopCounterMode

    from dinov2_dense.zoo import build_model

    model = build_model(f"dinov2_{arch}_ade20k_ms").to("meta").eval()
    x = torch.empty(1, 3, 512, 683, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict(x, crop_batch_size=crop_batch_size)
    ops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = sum(n for op, n in ops.items() if op in ("aten.addmm", "aten.mm"))
    attention = sum(n for op, n in ops.items() if op in ("aten.bmm", "aten._scaled_dot_product_flash_attention",
                                                          "aten._scaled_dot_product_efficient_attention",
                                                          "aten._scaled_dot_product_cudnn_attention"))
    return {"linear layers": linear, "attention": attention, "rest": sum(ops.values()) - linear - attention}


if __name__ == "__main__":
    sys.exit(main())
