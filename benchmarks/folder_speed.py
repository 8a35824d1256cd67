"""Folder throughput: embedding a folder of JPEG images against the model alone, in one process.

    python benchmarks/folder_speed.py                       # CUDA: 2,000 JPEGs of 500x375, ViT-B/14 at 224, bf16
    python benchmarks/folder_speed.py --count 200 --batch-size 16 --num-workers 0 2   # a CPU try (ViT-B: minutes)
    python benchmarks/folder_speed.py --model dinov2_dense_tiny --count 32 --batch-size 8 --num-workers 0 2 --quick
                                                            # a quick CPU try (the embedded tiny model)

Writes ``--count`` JPEG images (about 500x375, cut from the images scikit-image ships, so they
decode like photographs) into a temporary folder, then times:

* model only: batches already decoded and on the device, through ``extract_features`` and the
  class-token pooling, back on the CPU (images/s, median of ``--repeats`` passes over ``--model-batches`` batches);
* ``embed_images`` (the curation embedding: read, decode, resize, run, pool, store) over the folder,
  once for each ``--num-workers`` (a fresh store each time) with the float resize (the default) and
  once with the 8-bit resize (``resize_8bit=True``, ``--resize-8bit`` in the commands), and the time
  of the store's weight fingerprint (a fixed cost per run; into a fresh store it is hashed in a
  thread beside the embedding);
* with the most workers and the 8-bit resize, each batch read by one worker (the toolkit's
  ``features.PARTS_PER_BATCH``) against read in 4 parts by as many (the first batch is ready sooner,
  each part is one more hand-over), twice each, alternating; then the workers at this process's
  priority against niceness +10 (``features.WORKER_NICE``), twice each, alternating, and one worker
  fewer (a core left to the process feeding the model);
* on CUDA, the device synchronisations torch reports in one ``embed_images`` run (8-bit, most
  workers): each batch should wait only for its own pooled features' copy back;
* on CUDA, ``embed_images`` with the most workers again with the workers' batches not pinned (the
  toolkit pins them on CUDA): pinned memory chosen by measurement;
* ``embed_images``' reading alone with the most workers: its workers' batches arriving in this
  process (pinned on CUDA), nothing run on them; float and 8-bit (which travels as uint8);
* a trial arrangement, not the toolkit's: workers only decode, and the device resizes (float),
  normalises and embeds: whether a float resize on the GPU is worth building;
* the workers' hand-over alone (uint8 batches made in the workers, no decoding): through the reused
  shared slots of ``map_in_workers`` against the DataLoader's usual way, ms a batch;
* ``extract_features`` over the list of paths (the ``features`` path) with the most workers;
* reading and resizing one image in this process (``read_resized``, median ms), float and 8-bit
  (kept uint8, as the workers hand it over), and decoding one image alone;
* the ceiling of any worker arrangement: reading and resizing alone (``read_resized``, one thread
  each) in a pool of that many processes, already started, nothing sent to the model; float and 8-bit.

With ``--timeline``, only the model alone, then ``embed_images`` (8-bit resize, the most workers)
twice with the batches copied into pinned memory and twice straight from the workers' shared slots to
the GPU (``features.SLOTS_TO_DEVICE``), alternating, each with where its time goes: the seconds before
the first batch is asked for and after the last, and per batch the feeding thread's wait for the
workers, the move to the device, the model's call and pooling, the queued copy back, the wait for the
previous batch, the rest, and the pinning thread's time; then the reading alone both ways.

Prints images/s of each and its share of the model-only rate (the goal: at least 80% on a GPU).
Random weights: the time does not depend on them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinov2_dense.options import int_range  # noqa: E402 - after the path: a one-line error for a bad count


def write_jpegs(folder: Path, count: int, hw: tuple[int, int] = (375, 500), seed: int = 0) -> list[str]:
    """``count`` JPEGs of ``hw`` cut at random places and scales from scikit-image's sample images."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [np.ascontiguousarray(getattr(data, name)()[..., :3]) for name in ("astronaut", "coffee", "chelsea",
                                                                                 "rocket", "immunohistochemistry")]
    paths = []
    for i in range(count):
        src = sources[i % len(sources)]
        scale = rng.uniform(1.0, 1.6) * max(hw[0] / src.shape[0], hw[1] / src.shape[1])
        big = cv2.resize(src, (int(src.shape[1] * scale) + 1, int(src.shape[0] * scale) + 1))
        y, x = rng.integers(0, big.shape[0] - hw[0] + 1), rng.integers(0, big.shape[1] - hw[1] + 1)
        path = folder / f"{i:05d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(big[y:y + hw[0], x:x + hw[1]], cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


def _one_thread() -> None:
    torch.set_num_threads(1)  # OpenCV's pool is set in the parent around the fork: a forked child must not resize it


def _read(path: str, size: int, resize_8bit: bool = False) -> None:
    from dinov2_dense.evaluation.knn import read_resized

    read_resized(path, (size, size), resize_8bit=resize_8bit, keep_8bit=resize_8bit)  # as the workers read them


def _decode_chunk(paths: list[str]) -> list[torch.Tensor]:
    """Upright uint8 (H, W, 3) images at full size: what workers would hand over for a resize on the GPU."""
    from dinov2_dense.images import decode_image

    return [torch.from_numpy(decode_image(path, "rgb")) for path in paths]


def loader_rate(paths: list[str], size: int, batch_size: int, workers: int, resize_8bit: bool,
                pin: bool) -> tuple[float, float, float, float]:
    """embed_images' reading alone, its workers' parts of batches arriving here (pinned where the
    device is a GPU), nothing run on them: images/s over the whole run; the seconds until the workers
    are started (forked: the copy of this process's page tables grows with its memory) and until the
    first whole batch; images/s after it (the steady rate)."""
    import functools

    import numpy as np

    from dinov2_dense.features import map_in_workers
    from dinov2_dense.evaluation.knn import read_rows
    from dinov2_dense.features import batch_parts

    parts, ends = batch_parts(np.arange(len(paths)), batch_size, workers)
    read = functools.partial(read_rows, paths=paths, hw=(size, size), resize_8bit=resize_8bit)
    t = time.perf_counter()
    results = map_in_workers(read, parts, workers, pin_memory=pin)
    started = time.perf_counter() - t
    count, first, at_first = 0, None, 0
    for (where, _, _), end in zip(results, ends):
        count += len(where)
        if first is None and end:
            first, at_first = time.perf_counter() - t, count
    total = time.perf_counter() - t
    return count / total, started, first, (count - at_first) / max(total - first, 1e-9)


def embed_timeline(model, paths: list[str], store: Path, size: int, batch_size: int, workers: int,
                   straight: bool) -> dict:
    """One ``embed_images`` run (8-bit resize) with where its time goes: the main thread's seconds
    waiting for the next batch from the workers, moving and joining it on the device, launching the
    model and pooling, waiting for the previous batch's pooled features, and the rest (writing rows,
    bookkeeping); the pinning thread's seconds taking batches out of the slots; the rate over the run
    and after the first batch. ``straight``: features.SLOTS_TO_DEVICE."""
    import dinov2_dense.evaluation.knn as knn
    import dinov2_dense.features as features
    from pretrain.curation import embed_images

    spent = collections.Counter()
    first = []
    marks = {}  # when the first batch was asked for, when the workers had no more

    def timed(name: str, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t
                if name == "model" and not first:
                    first.append(time.perf_counter())
        return run

    real_map = features.map_in_workers

    def timed_map(*args, **kwargs):
        t = time.perf_counter()
        results = real_map(*args, **kwargs)  # returns once the workers are started
        spent["starting workers"] += time.perf_counter() - t

        def each():
            try:
                while True:
                    t = time.perf_counter()
                    marks.setdefault("first ask", t)
                    try:
                        out = next(results)
                    except StopIteration:
                        marks["done"] = time.perf_counter()
                        return
                    finally:
                        spent["next batch"] += time.perf_counter() - t
                    yield out
            finally:
                results.close()
        return each()

    class TimedCopy(features.HostCopy):
        def __init__(self, x):
            t = time.perf_counter()
            super().__init__(x)
            spent["copy back"] += time.perf_counter() - t

        def wait(self):
            t = time.perf_counter()
            try:
                return super().wait()
            finally:
                spent["previous batch"] += time.perf_counter() - t

    real_pin = features._InSlot.pin_memory
    import pretrain.curation.store as store_module

    patches = [(features, "map_in_workers", timed_map), (features, "to_model_input", timed("to device", features.to_model_input)),
               (features, "join_parts", timed("to device", features.join_parts)),
               (features, "extract_features", timed("model", features.extract_features)),
               (knn, "pool_features", timed("model", knn.pool_features)), (features, "HostCopy", TimedCopy),
               (features._InSlot, "pin_memory", timed("pinning thread", real_pin)),
               (features, "SLOTS_TO_DEVICE", straight),
               (store_module, "_fingerprint_beside", timed("weights to the host", store_module._fingerprint_beside))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        sync(next(model.parameters()).device)
        t = time.perf_counter()
        count = len(embed_images(model, paths, store, size=size, batch_size=batch_size, num_workers=workers,
                                 progress=False, resize_8bit=True))
        end = time.perf_counter()
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
    total = end - t
    batches = -(-len(paths) // batch_size)
    after = end - first[0] if first else total
    return {"rate": count / total, "steady": (count - batch_size) / max(after, 1e-9), "total": total,
            "batches": batches, "setup": marks["first ask"] - t, "finish": end - marks["done"],
            "loop": marks["done"] - marks["first ask"], **{k: v for k, v in spent.items()}}


def print_timeline(label: str, got: dict, model_rate: float) -> None:
    main = ("next batch", "to device", "model", "copy back", "previous batch")
    per = {k: 1e3 * got.get(k, 0.0) / got["batches"] for k in (*main, "pinning thread")}
    rest = 1e3 * got["loop"] / got["batches"] - sum(per[k] for k in main)
    print(f"  timeline, {label}: {got['rate']:8.1f} images/s ({100 * got['rate'] / model_rate:5.1f}% of model only), "
          f"{got['steady']:.1f} after the first batch ({100 * got['steady'] / model_rate:.1f}%); before the first "
          f"batch was asked for {got['setup']:.3f} s (starting the workers {got.get('starting workers', 0):.3f} s, the "
          f"weights' copy to the host for the hash {got.get('weights to the host', 0):.3f} s), after the last "
          f"{got['finish']:.3f} s; main thread in the loop, "
          f"ms a batch: waiting for the next batch {per['next batch']:.2f}, to the device {per['to device']:.2f}, "
          f"model and pooling {per['model']:.2f}, copy back queued {per['copy back']:.2f}, waiting for the previous "
          f"batch {per['previous batch']:.2f}, the rest {rest:.2f}; pinning thread {per['pinning thread']:.2f} ms a batch",
          flush=True)


def reading_alone(label: str, paths: list[str], args, workers: int, eight: bool, device: torch.device,
                  model_rate: float) -> None:
    """Prints :func:`loader_rate` (pinned on CUDA) against the model alone."""
    rate, started, first, steady = loader_rate(paths, args.size, args.batch_size, workers, eight,
                                               pin=device.type == "cuda")
    print(f"  embed_images' reading alone, {workers} workers, {label}: {rate:8.1f} images/s  "
          f"({100 * rate / model_rate:5.1f}% of model only; workers started after {started:.3f} s with "
          f"{resident_gb():.1f} GB resident here, first batch after {first:.3f} s, {steady:.1f} images/s after it)",
          flush=True)


def resident_gb() -> float:
    """This process's resident memory (VmRSS), GB; 0 where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _full_batch(k: int, shape: tuple) -> tuple[int, torch.Tensor]:
    return k, torch.full(shape, k % 251, dtype=torch.uint8)


def handover_ms(workers: int, shape: tuple, slots: bool, count: int = 120) -> float:
    """Milliseconds a batch of the workers' hand-over alone: ``count`` uint8 batches of ``shape``
    made in the workers (no decoding) arriving here as private tensors, through the reused shared
    slots of ``map_in_workers`` or (``slots`` False) the DataLoader's usual way."""
    import functools

    import dinov2_dense.features as features

    threshold = features.SLOT_MIN_BYTES
    features.SLOT_MIN_BYTES = threshold if slots else 1 << 62  # read in the workers, which fork below
    try:
        t = time.perf_counter()
        for _, batch in features.map_in_workers(functools.partial(_full_batch, shape=shape), range(count), workers):
            batch.clone()  # the main process reads every byte once (as a copy to the device would)
        return 1e3 * (time.perf_counter() - t) / count
    finally:
        features.SLOT_MIN_BYTES = threshold


def resize_on_device_rate(model, paths: list[str], size: int, batch_size: int, workers: int,
                          device: torch.device) -> float:
    """Images/s of a trial arrangement: workers only decode; the full-size uint8 images go to the
    device, which resizes (float, antialiased), normalises, embeds and pools (the float resize on
    the GPU: not the toolkit's path; its numbers say whether to build it)."""
    from dinov2_dense.evaluation.knn import pool_features
    from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD, extract_features, map_in_workers

    chunks = [paths[j: j + batch_size] for j in range(0, len(paths), batch_size)]
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        for images in map_in_workers(_decode_chunk, chunks, workers, pin_memory=device.type == "cuda"):
            x = torch.stack([torch.nn.functional.interpolate(
                im.to(device, non_blocking=True).permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear",
                align_corners=False, antialias=True)[0] for im in images])
            x = (x / 255.0 - mean) / std
            pool_features(extract_features(model, x, fit="resize", progress=False), "cls").float().cpu()
    sync(device)
    return len(paths) / (time.perf_counter() - t)


def median_ms(paths: list[str], read, count: int = 100) -> float:
    """Median milliseconds of ``read(path)`` over the first ``count`` paths, here, torch on one
    thread (as in a worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen = []
        for path in paths[:count]:
            t = time.perf_counter()
            read(path)
            seen.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(seen)


def decode_ceiling(paths: list[str], size: int, workers: int, resize_8bit: bool = False) -> float:
    """Images/s of reading and resizing alone in ``workers`` started processes of one thread each."""
    import functools
    import multiprocessing

    import cv2

    read = functools.partial(_read, size=size, resize_8bit=resize_8bit)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as map_in_workers forks its workers: one OpenCV thread each
    try:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=_one_thread)
    finally:
        cv2.setNumThreads(threads)
    with pool:
        pool.map(read, paths[: 4 * workers])  # every process has started and read something
        t = time.perf_counter()
        pool.map(read, paths, chunksize=8)
        return len(paths) / (time.perf_counter() - t)


@contextlib.contextmanager
def unpinned():
    """The toolkit's DataLoader workers without pinned memory, while in the block (for comparison)."""
    import dinov2_dense.features as features

    pinned = features.map_in_workers

    def map_unpinned(fn, items, num_workers=0, pin_memory=False):
        return pinned(fn, items, num_workers, pin_memory=False)

    features.map_in_workers = map_unpinned
    try:
        yield
    finally:
        features.map_in_workers = pinned


@contextlib.contextmanager
def features_setting(name: str, value):
    """The toolkit's ``features.<name>`` set to ``value`` while in the block (None: as it is)."""
    from dinov2_dense import features

    setting = getattr(features, name)
    setattr(features, name, setting if value is None else value)
    try:
        yield
    finally:
        setattr(features, name, setting)


def count_syncs(run) -> collections.Counter:
    """The device synchronisations torch reports (``set_sync_debug_mode``) while ``run()`` runs, by
    the first line of their message; those of other threads (the DataLoader's pinning thread waits for
    each slot's copy to the GPU, beside the model) counted apart, under ``[other thread] ...``."""
    import threading
    import warnings

    main, caught = threading.current_thread(), []

    def record(message, category, filename, lineno, file=None, line=None):
        caught.append(("" if threading.current_thread() is main else "[other thread] ") + str(message))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # (put back by catch_warnings)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(m.splitlines()[0] for m in caught  # (torch first says it is a prototype)
                               if "synchroniz" in m and "prototype" not in m)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--model", default="dinov2_vitb14")
    ap.add_argument("--count", type=int_range(1), default=2000, help="JPEG images in the folder")
    ap.add_argument("--size", type=int_range(1), default=224)
    ap.add_argument("--batch-size", type=int_range(1), default=64)
    ap.add_argument("--num-workers", type=int_range(0), nargs="+", default=None, help="default: 0 6 12 on a GPU, 0 2 on a CPU")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                    help="backbone weights (default: bf16 on a GPU, fp32 on a CPU)")
    ap.add_argument("--repeats", type=int_range(1), default=3)
    ap.add_argument("--model-batches", type=int_range(1), default=8, help="batches per model-only pass")
    ap.add_argument("--timeline", action="store_true",
                    help="only the model alone and timelines of embed_images (8-bit, most workers): where the "
                         "main thread's time goes, batches copied into pinned memory against straight to the GPU "
                         "(features.SLOTS_TO_DEVICE), and the reading alone both ways")
    ap.add_argument("--prefetch", type=int, default=None,
                    help="items each worker reads ahead (features.PREFETCH, default the toolkit's) for every run")
    ap.add_argument("--compile", choices=["none", "default", "reduce-overhead"], default="none",
                    help="compile_blocks mode of the model (both the model only and the folder runs)")
    ap.add_argument("--quick", action="store_true",
                    help="only the model, embed_images, its reading alone and the hand-over (no unpinned runs, trial, "
                         "one-image timings or ceilings)")
    args = ap.parse_args()
    if args.prefetch is not None:
        import dinov2_dense.features as features

        features.PREFETCH = args.prefetch

    from dinov2_dense import load_backbone
    from dinov2_dense.checkpoints import fingerprint
    from dinov2_dense.evaluation.knn import pool_features
    from dinov2_dense.features import extract_features
    from pretrain.curation.store import embed_images

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.num_workers = args.num_workers or ([0, 6, 12] if device.type == "cuda" else [0, 2])
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    model = load_backbone(args.model, weights=None, device=device, dtype=None if dtype == "fp32" else dtype).eval()
    if args.compile != "none":
        from dinov2_dense.models.speed import compile_blocks

        compile_blocks(model, args.compile)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {where}; {args.model} {dtype} weights, {args.size}x{args.size}, "
          f"batch {args.batch_size}{'' if args.compile == 'none' else ', blocks compiled: ' + args.compile}"
          f"{'' if args.prefetch is None else f', {args.prefetch} items read ahead a worker'}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        t = time.perf_counter()
        paths = write_jpegs(folder, args.count)
        print(f"wrote {len(paths)} JPEGs of 500x375 in {time.perf_counter() - t:.1f} s", flush=True)

        x = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
        with torch.no_grad():
            for _ in range(2):
                extract_features(model, x, fit="resize", progress=False)
            seen = []
            for _ in range(args.repeats):
                sync(device)
                t = time.perf_counter()
                for _ in range(args.model_batches):
                    pool_features(extract_features(model, x, fit="resize", progress=False), "cls").float().cpu()
                sync(device)
                seen.append(time.perf_counter() - t)
        model_rate = args.model_batches * args.batch_size / statistics.median(seen)
        print(f"  model only (decoded batches on the device): {model_rate:8.1f} images/s", flush=True)

        t = time.perf_counter()
        fingerprint(model)
        print(f"  weight fingerprint of the store (once per embed_images run): {time.perf_counter() - t:.3f} s",
              flush=True)

        def timed(label: str, run) -> None:
            sync(device)
            t = time.perf_counter()
            count = run()
            sync(device)  # the features stay where they were computed
            rate = count / (time.perf_counter() - t)
            print(f"  {label}: {rate:8.1f} images/s  ({100 * rate / model_rate:5.1f}% of model only)", flush=True)

        runs = itertools.count()

        def embed(workers: int, eight: bool, pinned: bool = True, parts: int | None = None,
                  nice: int | None = None) -> None:
            """embed_images over the folder into a fresh store, timed; ``parts``: each batch read in
            that many parts (features.PARTS_PER_BATCH), ``nice``: the workers' added niceness
            (features.WORKER_NICE), instead of the toolkit's settings."""
            kind = (f"{workers} worker{'s' if workers != 1 else ''}, {'8-bit' if eight else 'float'} resize"
                    f"{'' if pinned else ', NOT pinned'}")
            if parts is not None:
                kind += f", batches read in {parts} part{'s' if parts > 1 else ''}"
            if nice is not None:
                kind += f", workers' niceness +{nice}"
            store = Path(tmp) / f"store_{next(runs)}"  # fresh each time (a finished store would be reused)
            with (contextlib.nullcontext() if pinned else unpinned(), features_setting("PARTS_PER_BATCH", parts),
                  features_setting("WORKER_NICE", nice)):
                timed(f"embed_images, {kind}", lambda: len(embed_images(
                    model, paths, store, size=args.size, batch_size=args.batch_size, num_workers=workers,
                    progress=False, resize_8bit=eight)))

        if args.timeline:
            workers = max(args.num_workers)
            ways = (False, True) if device.type == "cuda" else (False,)
            for _ in range(2):  # alternating
                for straight in ways:
                    label = f"{workers} workers, 8-bit resize, batches " + (
                        "straight to the GPU" if straight else "through pinned memory")
                    try:
                        got = embed_timeline(model, paths, Path(tmp) / f"store_{next(runs)}", args.size,
                                             args.batch_size, workers, straight)
                    except Exception as exc:  # noqa: BLE001 (a trial arrangement failing leaves the others to run)
                        print(f"  timeline, {label}: failed: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    print_timeline(label, got, model_rate)
            for straight in ways:
                with features_setting("SLOTS_TO_DEVICE", straight):
                    reading_alone(f"8-bit resize, batches {'straight to the GPU' if straight else 'through pinned memory'}",
                                  paths, args, workers, True, device, model_rate)
            return 0
        for workers in args.num_workers:
            for eight in (False, True):
                embed(workers, eight)
        workers = max(args.num_workers)
        if workers > 0:  # the first batch read by several workers against each batch by one (the fixed cost of a run)
            for parts in (1, 4, 1, 4):
                embed(workers, True, parts=parts)
            # the workers at this process's priority or nicer (the process feeding the model shares
            # the cores with them), then one worker fewer than asked at this priority
            for nice in (0, 10, 0, 10):
                embed(workers, True, nice=nice)
            if workers > 1:
                embed(workers - 1, True)
        if device.type == "cuda":  # each batch should wait only for its own copy back (an event), nothing else
            syncs = count_syncs(lambda: embed_images(model, paths, Path(tmp) / f"store_{next(runs)}", size=args.size,
                                                     batch_size=args.batch_size, num_workers=workers, progress=False,
                                                     resize_8bit=True))
            shown = "; ".join(f"{n} x {text}" for text, n in syncs.most_common(4))
            main = sum(n for text, n in syncs.items() if not text.startswith("[other thread]"))
            print(f"  device synchronisations in one embed_images run ({-(-len(paths) // args.batch_size)} batches): "
                  f"{main} in the main thread, {sum(syncs.values()) - main} in others (the pinning thread waits for "
                  f"each slot's copy){': ' + shown if syncs else ''}", flush=True)
        if device.type == "cuda" and workers > 0 and not args.quick:  # pinned memory by measurement: the same runs unpinned
            for eight in (False, True):
                embed(workers, eight, pinned=False)
        for eight in (False, True):
            reading_alone(f"{'8-bit' if eight else 'float'} resize", paths, args, workers, eight, device, model_rate)
        if workers > 0:
            shape = (args.batch_size, 3, args.size, args.size)
            for _ in range(2):
                slotted, usual = handover_ms(workers, shape, True), handover_ms(workers, shape, False)
                print(f"  hand-over alone, {workers} workers, uint8 batches {tuple(shape)}: {slotted:.2f} ms a batch "
                      f"through shared slots, {usual:.2f} ms the DataLoader's usual way", flush=True)
        timed(f"extract_features(paths), {workers} workers", lambda: len(extract_features(
            model, paths, fit="resize", size=(args.size, args.size), batch_size=args.batch_size, num_workers=workers,
            progress=False)))
        if args.quick:
            return 0
        rate = resize_on_device_rate(model, paths, args.size, args.batch_size, workers, device)
        print(f"  trial: workers decode only, float resize on the {device.type}, {workers} workers: {rate:8.1f} images/s  "
              f"({100 * rate / model_rate:5.1f}% of model only)", flush=True)
        for eight in (False, True):
            kind = "8-bit (kept uint8)" if eight else "float"
            ms = median_ms(paths, lambda path: _read(path, args.size, eight))  # noqa: B023 (used at once)
            print(f"  reading and resizing one image here, {kind} resize: {ms:.2f} ms (median, one thread)", flush=True)
        ms = median_ms(paths, lambda path: _decode_chunk([path]))
        print(f"  decoding one image here (upright uint8): {ms:.2f} ms (median, one thread)", flush=True)
        for eight in (False, True):
            rate = decode_ceiling(paths, args.size, workers, resize_8bit=eight)
            print(f"  reading and resizing alone, {workers} processes, {'8-bit' if eight else 'float'} resize: "
                  f"{rate:8.1f} images/s  ({100 * rate / model_rate:5.1f}% of model only: the ceiling of any worker "
                  "arrangement)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
