"""ViT-S/14 speed and memory: ours vs Hugging Face transformers (sdpa) vs naive attention.

Same random weights in all three, same process, runs interleaved, median of ``--repeats``.
Prints throughput (images/s) and the ratios ours / transformers and ours / naive; then the
bfloat16 autocast speed-up of ours; then the peak memory of the forward pass on one 1792x1792
image (each implementation in a fresh subprocess).

Peak memory of the forward alone (Linux): after loading the model and making the input, freed
heap is returned to the OS (``malloc_trim``), the kernel's peak-RSS mark is reset (``5`` written to
``/proc/self/clear_refs``) and the forward's peak is ``VmHWM - VmRSS`` read from
``/proc/self/status``. Where the reset is not allowed, RSS is sampled every millisecond in a thread
instead (which can miss a short peak; the output says which method was used). ``ru_maxrss`` is not
used: it never resets, so it includes the loading peak and hid the forward behind it.

    python benchmarks/backbone_speed.py                 # CPU, all of the above
    python benchmarks/backbone_speed.py --skip-speed --skip-naive-memory --memory-size 896
    python benchmarks/backbone_speed.py --device cuda --dtype bf16 --configs 518x32
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from contextlib import nullcontext

import torch

from dinov2_dense.hub import build_backbone


def naive_attention_hidden(self, x):
    """Reference attention with the full (B, heads, N, N) matrix in memory (output before proj)."""
    B, N, C = x.shape
    q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
    attn = (q * (C // self.num_heads) ** -0.5) @ k.transpose(-2, -1)
    x = attn.softmax(dim=-1) @ v
    return x.transpose(1, 2).reshape(B, N, C)


def make_models(device: str, which=("ours", "transformers", "naive")):
    """The three implementations with one set of random weights (transformers' init, read by our converter)."""
    import types

    import transformers

    from dinov2_dense.checkpoints import load_backbone_weights

    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    patch_size=14, image_size=518, layerscale_value=0.5)
    cfg._attn_implementation = "sdpa"
    hf = transformers.Dinov2Model(cfg).eval()
    ours = build_backbone("dinov2_vits14").eval()
    load_backbone_weights(ours, hf.state_dict())
    models = {"ours": ours, "transformers": hf}
    if "naive" in which:
        naive = build_backbone("dinov2_vits14").eval()
        naive.load_state_dict(ours.state_dict())
        for block in naive.blocks:
            block.attn.hidden = types.MethodType(naive_attention_hidden, block.attn)
        models["naive"] = naive
    return {k: m.to(device) for k, m in models.items() if k in which}


def run(model, x, autocast_dtype=None):
    ctx = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with torch.inference_mode(), ctx:
        if hasattr(model, "forward_features"):
            return model.forward_features(x)["x_norm_patchtokens"]
        return model(pixel_values=x).last_hidden_state[:, 1:]


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def throughput(models, size, batch, repeats, device, dtype=None):
    x = torch.randn(batch, 3, size, size, device=device)
    times = {name: [] for name in models}
    for name, m in models.items():  # warm-up
        run(m, x, dtype)
    _sync(device)
    for _ in range(repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            run(m, x, dtype)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def check_agreement(models, device):
    x = torch.randn(1, 3, 518, 518, device=device)
    ref = run(models["ours"], x)
    for name, m in models.items():
        diff = (run(m, x) - ref).abs().max().item()
        print(f"  agreement {name} vs ours at 518: max abs diff {diff:.2e}")


def _status_mb(key: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {key}")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _status_mb("VmHWM") <= _status_mb("VmRSS") + 1


class _RssSampler:
    """Fallback: the largest RSS seen by a thread reading /proc/self/status every ``interval`` s."""

    def __init__(self, interval: float = 1e-3) -> None:
        self.interval, self.peak, self._stop = interval, _status_mb("VmRSS"), threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_mb("VmRSS"))
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("VmRSS"))


def forward_memory(name: str, threads: int, size: int) -> dict:
    """Peak RSS of one forward at ``size`` x ``size``, above the RSS just before it (MB); see the docstring."""
    torch.set_num_threads(threads)
    model = make_models("cpu", (name,))[name]
    x = torch.randn(1, 3, size, size)
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)  # give the loading's freed heap back, so it cannot hide the forward
    before = _status_mb("VmRSS")
    if _reset_peak_rss():
        run(model, x)
        peak, method = _status_mb("VmHWM"), "VmHWM after a clear_refs reset"
    else:
        with _RssSampler() as sampler:
            run(model, x)
        peak, method = sampler.peak, "RSS sampled every 1 ms"
    return {"before_mb": before, "peak_mb": peak, "method": method}


_MEMORY_CHILD = r"""
import json, sys
sys.path.insert(0, ".")
from benchmarks.backbone_speed import forward_memory
print(json.dumps(forward_memory(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
"""


def memory_peak(name: str, threads: int, size: int = 1792) -> dict:
    """:func:`forward_memory` in a fresh subprocess (so one implementation's heap cannot serve another's)."""
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, name, str(threads), str(size)],
                         capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="autocast dtype of the speed runs")
    ap.add_argument("--configs", nargs="+", default=["518x2", "224x8"], help="SIZExBATCH")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-speed", action="store_true", help="only the memory part")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-naive-memory", action="store_true", help="naive attention at 1792 needs > 6 GB")
    ap.add_argument("--memory-size", type=int, default=1792, help="image side of the memory runs (default 1792)")
    args = ap.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, device {args.device}, threads {threads}, dtype {args.dtype}")
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory and args.device == "cpu":
        size = args.memory_size
        names = ["ours", "transformers"] + ([] if args.skip_naive_memory else ["naive"])
        for name in names:
            r = memory_peak(name, threads, size)
            if "error" in r:
                print(f"{size}x{size} peak memory, {name}: failed ({r['error']})")
            else:
                print(f"{size}x{size} peak memory of the forward, {name}: {r['peak_mb'] - r['before_mb']:.0f} MB "
                      f"above the loaded model and input ({r['before_mb']:.0f} MB before, {r['peak_mb']:.0f} MB "
                      f"peak RSS; {r['method']})")


def speed(args) -> None:
    models = make_models(args.device)
    check_agreement(models, args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else None
    for cfg in args.configs:
        size, batch = map(int, cfg.split("x"))
        ips = throughput(models, size, batch, args.repeats, args.device, dtype)
        line = ", ".join(f"{k} {v:.2f} img/s" for k, v in ips.items())
        print(f"{size}x{size} batch {batch}: {line}; ours/transformers {ips['ours'] / ips['transformers']:.2f}x, "
              f"ours/naive {ips['ours'] / ips['naive']:.2f}x")
    if args.device == "cpu":
        ours = {"ours": models["ours"]}
        for cfg in args.configs:
            size, batch = map(int, cfg.split("x"))
            fp32 = throughput(ours, size, batch, args.repeats, "cpu")["ours"]
            bf16 = throughput(ours, size, batch, args.repeats, "cpu", torch.bfloat16)["ours"]
            print(f"bf16 autocast, {size}x{size} batch {batch}: {bf16:.2f} vs fp32 {fp32:.2f} img/s "
                  f"-> speed-up {bf16 / fp32:.2f}x")


if __name__ == "__main__":
    main()
