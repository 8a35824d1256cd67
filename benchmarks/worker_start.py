"""What starting DataLoader workers costs before and after the model is loaded, in one process.

    python benchmarks/worker_start.py                      # CUDA when present: 16 workers, ViT-B/14 bf16
    python benchmarks/worker_start.py --num-workers 2      # a CPU try

The folder commands (``features``, ``pca``, the curation embedding) fork their decoding workers
(:func:`dinov2_dense.features.map_in_workers`) after the model is loaded and on its device. Forking
copies the feeding process's page tables, so it costs more the bigger that process is; on a GPU the
process also holds the CUDA context and the pinned pages. This times the start of a loader of that
shape (``num_workers`` workers, pinned memory on CUDA, an item of nothing: only the start), from
``iter(loader)`` to the first item, median of ``--repeats`` (after one start not timed):

1. in this process as it starts (torch imported, nothing else), before CUDA is touched;
2. after the model is loaded onto the device with random weights and has run one batch (``--batch-size``
   at ``--size``), as the commands have it when they start the workers.

Prints both, the process's resident memory at each, and the difference: what starting the workers
before the model is loaded could save each folder run (the start before the first batch was 0.5-1.1 s
on an H200 machine with 16 workers).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _Nothing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4096

    def __getitem__(self, k: int) -> int:
        return k


def start_seconds(workers: int, pin: bool, repeats: int) -> list[float]:
    """Seconds from ``iter(loader)`` to its first item, ``repeats`` times (each loader shut down after)."""
    seen = []
    for _ in range(repeats):
        loader = torch.utils.data.DataLoader(_Nothing(), batch_size=None, num_workers=workers, pin_memory=pin)
        t = time.perf_counter()
        batches = iter(loader)
        next(batches)
        seen.append(time.perf_counter() - t)
        batches._shutdown_workers()
        del batches
    return seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--model", default="dinov2_vitb14")
    ap.add_argument("--num-workers", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.num_workers < 1 or args.repeats < 1:
        ap.error("--num-workers and --repeats: at least 1")

    from benchmarks.folder_speed import resident_gb

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pin = device.type == "cuda"  # as map_in_workers
    start_seconds(args.num_workers, pin=False, repeats=1)  # the first start also imports and sets up: not timed
    before = start_seconds(args.num_workers, pin=False, repeats=args.repeats)  # pinning would touch CUDA
    rss_before = resident_gb()

    from dinov2_dense import load_backbone
    from dinov2_dense.features import extract_features

    t = time.perf_counter()
    dtype = "bf16" if device.type == "cuda" else None
    model = load_backbone(args.model, weights=None, device=device, dtype=dtype).eval()
    with torch.no_grad():
        extract_features(model, torch.randn(args.batch_size, 3, args.size, args.size, device=device),
                         fit="resize", progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    loaded = time.perf_counter() - t
    after = start_seconds(args.num_workers, pin=pin, repeats=args.repeats)
    rss_after = resident_gb()

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    a, b = statistics.median(before), statistics.median(after)
    print(f"torch {torch.__version__} on {where}; {args.num_workers} workers, median of {args.repeats}")
    print(f"  workers started before the model: {a:.3f} s (each: {', '.join(f'{s:.3f}' for s in before)}), "
          f"{rss_before:.2f} GB resident")
    print(f"  {args.model} loaded and run once ({loaded:.2f} s, {dtype or 'fp32'} on {device.type})")
    print(f"  workers started after the model{' (pinned memory)' if pin else ''}: {b:.3f} s "
          f"(each: {', '.join(f'{s:.3f}' for s in after)}), {rss_after:.2f} GB resident")
    print(f"  difference: {b - a:+.3f} s a start ({b / a:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
