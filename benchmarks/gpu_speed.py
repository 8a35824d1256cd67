"""Backbone and full-model inference speed: ours (plain, bf16 weights, compiled, FP8) against the official
code, timm and transformers, in one process, on the device at hand (random weights: the time does
not depend on them).

    python benchmarks/gpu_speed.py                         # CUDA: ViT-S/L/g at 518 (batch 64/32/16) and 224
    python benchmarks/gpu_speed.py --archs vits14 --configs 224x4 518x1 --repeats 3   # the CPU default

For each backbone and SIZExBATCH: images/s of every implementation (median of ``--repeats`` timed
runs after warm-up; CUDA events on a GPU, wall time on a CPU), the ratio to the official code, the
share of the device's bf16 matrix peak that the rate reaches (from the model's FLOPs per image;
GPU only, for the devices in ``PEAK_TFLOPS``) and the peak memory of the forward (GPU). Then one
image through the full ADE20K +ms and NYU DPT models, windows one at a time against batched (and
with bf16 weights, and compiled, on a GPU).

    python benchmarks/gpu_speed.py --archs vitl14 --configs 518x32 --attention-kernels cudnn flash efficient
    python benchmarks/gpu_speed.py --archs vitl14 --configs 518x32 --compile-mode max-autotune --skip-full
    python benchmarks/gpu_speed.py --archs vitl14 --configs 518x32 --skip-full --float8   # with FP8 (H100/Ada)

Settings on a GPU: the peers run under bf16 autocast with float32 weights, as users run them; "ours
bf16" has bf16 weights; "ours compiled" adds ``torch.compile`` of the blocks; "ours fp8" (``--float8``,
the default on a GPU) is "ours bf16" with the blocks' linear layers as FP8 matrix products
(dinov2_dense.models.float8) and compiled blocks, and its output is compared with the one it was
made from (max abs difference, cosine): FP8 changes the numerics. On a CPU everything is float32
(bf16 would run 3-4x slower without native support). A peer that is not installed is
reported as such: timm is not a dependency here; the official code is ``dinov2==0.0.1.dev2``
(the test oracle), which without xFormers uses its own attention.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov2_dense.options import int_range  # noqa: E402 - after the path: a one-line error for a bad count

#: Dense bf16 matrix throughput (TFLOP/s) of the devices named, from the vendors' data sheets.
PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0}
ARCHS = {"vits14": ("vit_small", dict(embed_dim=384, depth=12, num_heads=6)),
         "vitb14": ("vit_base", dict(embed_dim=768, depth=12, num_heads=12)),
         "vitl14": ("vit_large", dict(embed_dim=1024, depth=24, num_heads=16)),
         "vitg14": ("vit_giant2", dict(embed_dim=1536, depth=40, num_heads=24))}
TIMM_NAMES = {"vits14": "vit_small_patch14_dinov2", "vitb14": "vit_base_patch14_dinov2",
              "vitl14": "vit_large_patch14_dinov2", "vitg14": "vit_giant_patch14_dinov2"}


def flops_per_image(model: nn.Module, size: int) -> float:
    """Multiply-adds x 2 of one forward at ``size`` x ``size``: every linear layer of the blocks on
    every token, the attention products (2 N^2 D a block) and the patch embedding."""
    n = 1 + model.num_register_tokens + (size // model.patch_size) ** 2
    linear = sum(m.in_features * m.out_features for m in model.blocks.modules() if isinstance(m, nn.Linear))
    attention = len(model.blocks) * 2 * n * n * model.embed_dim
    embed = (n - 1) * model.embed_dim * 3 * model.patch_size ** 2
    return 2.0 * (n * linear + attention + embed)


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)


class Timer:
    """Median seconds of ``fn()`` over ``repeats`` after ``warmup`` calls (CUDA events on a GPU)."""

    def __init__(self, device: torch.device, repeats: int, warmup: int = 2):
        self.device, self.repeats, self.warmup = device, repeats, warmup

    def __call__(self, fn) -> float:
        for _ in range(self.warmup):
            fn()
        seen = []
        for _ in range(self.repeats):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                seen.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                seen.append(time.perf_counter() - t)
        return statistics.median(seen)


def build_peers(arch: str, device: torch.device, with_compile: bool, kernels: tuple[str, ...] = (),
                mode: str = "default", float8: bool = False) -> dict[str, tuple[nn.Module, object]]:
    """name -> (model, forward(model, x)) for every implementation that is installed; a missing one
    maps to (None, reason). ``kernels``: also ours compiled with each of these attention kernels first.
    ``float8``: also "ours fp8", a copy of "ours bf16" (of "ours" on a CPU) with FP8 linear layers."""
    from dinov2_dense import load_backbone
    from dinov2_dense.models.float8 import float8_linears
    from dinov2_dense.models.speed import compile_blocks, set_attention

    gpu = device.type == "cuda"
    peers: dict = {}
    ours = load_backbone(f"dinov2_{arch}", weights=None, device=device)
    last = [len(ours.blocks) - 1]
    ours_fwd = lambda m, x: m.intermediate_maps(x, last)[0][0]  # noqa: E731
    peers["ours"] = (ours, ours_fwd)
    if gpu:
        half = load_backbone(f"dinov2_{arch}", weights=None, device=device, dtype="bf16")
        peers["ours bf16"] = (half, lambda m, x: m.intermediate_maps(x.to(torch.bfloat16), last)[0][0])
    if with_compile:
        cast = torch.bfloat16 if gpu else torch.float32
        for kernel in ("auto", *kernels):
            fast = set_attention(load_backbone(f"dinov2_{arch}", weights=None, device=device,
                                               dtype="bf16" if gpu else None), kernel)
            name = "ours compiled" + ("" if kernel == "auto" else f" {kernel}")
            peers[name] = (fast, lambda m, x: m.intermediate_maps(x.to(cast), last)[0][0]) \
                if compile_blocks(fast, mode) else (None, "no compiler (see the warning)")
    if float8:
        fp8 = copy.deepcopy(peers["ours bf16" if gpu else "ours"][0])  # the same weights: outputs compare
        fp8_dtype = next(fp8.parameters()).dtype
        fp8_fwd = lambda m, x: m.intermediate_maps(x.to(fp8_dtype), last)[0][0]  # noqa: E731
        try:
            float8_linears(fp8)
        except ValueError as exc:  # a GPU without FP8 tensor cores
            peers["ours fp8"] = (None, str(exc))
        else:  # compiled, since uncompiled the input quantisation runs as kernels of its own
            peers["ours fp8" if with_compile and compile_blocks(fp8, mode) else "ours fp8 eager"] = (fp8, fp8_fwd)
    factory, kw = ARCHS[arch]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from dinov2.models import vision_transformer as official

        extra = dict(ffn_layer="swiglufused") if arch == "vitg14" else {}
        model = getattr(official, factory)(patch_size=14, img_size=518, init_values=1.0, block_chunks=0, **extra)
        peers["official"] = (model.to(device).eval(), lambda m, x: m.forward_features(x)["x_norm_patchtokens"])
    except ImportError as exc:
        peers["official"] = (None, f"not installed ({exc.name}): pip install --no-deps dinov2==0.0.1.dev2")
    try:
        import timm

        model = timm.create_model(TIMM_NAMES[arch], pretrained=False, img_size=518, dynamic_img_size=True)
        peers["timm"] = (model.to(device).eval(), lambda m, x: m.forward_features(x))
    except ImportError:
        peers["timm"] = (None, "not installed")
    try:
        import transformers

        cfg = transformers.Dinov2Config(hidden_size=kw["embed_dim"], num_hidden_layers=kw["depth"],
                                        num_attention_heads=kw["num_heads"], patch_size=14, image_size=518,
                                        use_swiglu_ffn=arch == "vitg14")
        cfg._attn_implementation = "sdpa"
        model = transformers.Dinov2Model(cfg)
        peers["transformers"] = (model.to(device).eval(), lambda m, x: m(pixel_values=x).last_hidden_state)
    except ImportError:
        peers["transformers"] = (None, "not installed")
    return peers


def backbones(args, device: torch.device, timer: Timer) -> None:
    gpu = device.type == "cuda"
    peak = peak_tflops(device)
    for arch in args.archs:
        peers = build_peers(arch, device, not args.skip_compile, tuple(args.attention_kernels), args.compile_mode,
                            args.float8)
        flops = {}
        for config in args.configs:
            size, batch = (int(v) for v in config.split("x"))
            flops[size] = flops_per_image(peers["ours"][0], size)
            x = torch.randn(batch, 3, size, size, device=device)
            rates: dict[str, float] = {}
            memory: dict[str, float] = {}
            print(f"{arch} {size}x{size} batch {batch} ({flops[size] / 1e9:.0f} GFLOP an image):", flush=True)
            for name, (model, fwd) in peers.items():
                if model is None:
                    print(f"  {name:15s} {fwd}")
                    continue
                # ours bf16 and compiled have bf16 weights on a GPU; the others run under bf16 autocast
                half_weights = name == "ours bf16" or name.startswith(("ours compiled", "ours fp8"))
                autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu and not half_weights else nullcontext()
                if gpu:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    resident = torch.cuda.memory_allocated(device)  # every peer's weights and the input: not this forward's
                with torch.inference_mode(), autocast:
                    seconds = timer(lambda: fwd(model, x))
                rates[name] = batch / seconds
                line = f"  {name:15s} {rates[name]:9.1f} images/s"
                if peak:
                    line += f"  {100 * rates[name] * flops[size] / (peak * 1e12):5.1f}% of bf16 peak"
                if gpu:
                    memory[name] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
                    line += f"  forward's peak memory {memory[name]:.2f} GiB (above the resident weights)"
                print(line, flush=True)
            base = rates.get("official")
            if base:
                print("  vs official: " + ", ".join(f"{k} {v / base:.2f}x" for k, v in rates.items() if k != "official"))
            fp8 = next((k for k in rates if k.startswith("ours fp8")), None)
            if fp8:
                print("  " + agreement(peers, fp8, "ours bf16" if gpu else "ours", x), flush=True)
        peers = model = None  # (the loop's last model too: it held the last peer's weights into the next arch)
        if gpu:
            torch.cuda.empty_cache()


def agreement(peers: dict, name: str, ref: str, x: torch.Tensor) -> str:
    """How far the output of peer ``name`` is from that of ``ref`` on ``x``: max abs difference, cosine."""
    with torch.inference_mode():
        out, want = (peers[k][1](peers[k][0], x).float() for k in (name, ref))
    cos = torch.cosine_similarity(out.flatten(), want.flatten(), dim=0).item()
    return (f"{name} vs {ref}: largest difference {(out - want).abs().max().item():.3g} (outputs up to "
            f"{want.abs().max().item():.3g}), cosine similarity {cos:.5f}")


def full_models(args, device: torch.device, timer: Timer) -> None:
    from dinov2_dense.features import normalise_8bit
    from dinov2_dense.models.speed import compile_blocks
    from dinov2_dense.zoo import build_model

    gpu = device.type == "cuda"
    half_size = not gpu and not args.full_size  # a CPU runs the +ms views of a full image for minutes
    sizes = ((256, 342), (240, 320)) if half_size else ((512, 683), (480, 640))
    for name, hw in zip((f"dinov2_{args.full_arch}_ade20k_ms", f"dinov2_{args.full_arch}_nyu_dpt"), sizes):
        torch.manual_seed(0)
        model = build_model(name).to(device).eval()
        if half_size and "scale" in model.test_cfg:  # views at half the official sizes too (the rule rescales to them)
            model.test_cfg = {**model.test_cfg, "scale": tuple(v // 2 for v in model.test_cfg["scale"])}
        # an 8-bit image normalised as the data sets do (its views are resized in 8 bits, as `test` does)
        x = normalise_8bit(torch.randint(0, 256, (1, 3, *hw), dtype=torch.uint8,
                                         generator=torch.Generator().manual_seed(0))).to(device)
        results, times = {}, {}
        modes = [("one crop at a time", 1, False), ("batched crops", args.crop_batch_size, False),
                 ("batched, bf16 weights", args.crop_batch_size, True)]
        if not args.skip_compile:
            modes.append(("batched, bf16, compiled", args.crop_batch_size, True))
        for label, crops, half in modes:
            if half and not gpu:
                continue
            if half:
                model.backbone.to(torch.bfloat16)
            if label.endswith("compiled") and not compile_blocks(model.backbone, args.compile_mode):
                continue
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if gpu and not half else nullcontext()
            with torch.inference_mode(), ctx:
                times[label] = timer(lambda: model.predict(x, crop_batch_size=crops))
                results[label] = model.predict(x, crop_batch_size=crops).float()
            print(f"{name} {hw[0]}x{hw[1]} (test {model.test_cfg}): {label:22s} {times[label]:.3f} s an image",
                  flush=True)
        first = "one crop at a time"
        for label in list(times)[1:]:
            diff = (results[label] - results[first]).abs().max().item()
            print(f"  {label}: {times[first] / times[label]:.2f}x faster, largest difference {diff:.2e}")
        del model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--archs", nargs="+", choices=list(ARCHS), default=None,
                    help="default: vits14 vitl14 vitg14 on a GPU, vits14 on a CPU")
    ap.add_argument("--configs", nargs="+", default=None, help="SIZExBATCH (default: 518x64 518x32 518x16 by arch "
                                                               "on a GPU, and 224 at 4x that; 224x4 518x1 on a CPU)")
    ap.add_argument("--repeats", type=int_range(1), default=None, help="timed runs (default 10 on a GPU, 3 on a CPU)")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--compile-mode", default="default", choices=["default", "max-autotune", "reduce-overhead"],
                    help="torch.compile mode of the compiled backbones")
    ap.add_argument("--attention-kernels", nargs="+", default=[], choices=["flash", "efficient", "cudnn", "math"],
                    help="also time ours compiled with each of these attention kernels preferred")
    ap.add_argument("--float8", action=argparse.BooleanOptionalAction, default=None,
                    help="also time ours with FP8 linear layers (H100/Ada-class GPUs; default: on a GPU, not on a CPU)")
    ap.add_argument("--skip-full", action="store_true", help="skip the +ms and DPT full models")
    ap.add_argument("--skip-backbones", action="store_true", help="only the full models")
    ap.add_argument("--full-arch", default=None, help="backbone of the full models (default vitl14 on a GPU, vits14 on a CPU)")
    ap.add_argument("--crop-batch-size", type=int_range(1), default=16)
    ap.add_argument("--full-size", action="store_true", help="on a CPU, the full models at 512x683 and 480x640 with "
                                                             "the official view sizes too (default there: half)")
    ap.add_argument("--threads", type=int_range(0), default=0, help="CPU threads (0: torch's default)")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    args.float8 = gpu if args.float8 is None else args.float8
    if args.threads:
        torch.set_num_threads(args.threads)
    timer = Timer(device, args.repeats or (10 if gpu else 3), warmup=3 if gpu else 1)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; bf16 peak {peak_tflops(device) or 'unknown'} TFLOP/s", flush=True)
    if args.skip_backbones:
        pass
    elif gpu and args.configs is None and args.archs is None:
        for arch, batch in (("vits14", 64), ("vitl14", 32), ("vitg14", 16)):
            backbones(argparse.Namespace(**{**vars(args), "archs": [arch], "configs": [f"518x{batch}", f"224x{4 * batch}"]}),
                      device, timer)
    else:
        args.archs = args.archs or (["vitl14"] if gpu else ["vits14"])
        args.configs = args.configs or (["518x32", "224x128"] if gpu else ["224x4", "518x1"])
        backbones(args, device, timer)
    if not args.skip_full:
        args.full_arch = args.full_arch or ("vitl14" if gpu else "vits14")
        full_models(args, device, timer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
