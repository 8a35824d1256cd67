"""The inference fast path: attention kernels, torch.compile of the blocks (with its fallback),
half-precision backbones under the heads, and decoding in DataLoader workers. Each is checked
against the plain path; none may change a result beyond float (or bf16) tolerance."""

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dinov2_dense import load_backbone
from dinov2_dense.cli import main
from dinov2_dense.features import extract_features, map_in_workers
from dinov2_dense.models import speed
from dinov2_dense.viz import pca_maps
from heads.predictor import DensePredictor

from .conftest import tiny_vit
from .test_predictor import ConvSegHead

ROOT = Path(__file__).resolve().parents[1]


def _maps(model, x, layers=None):
    with torch.no_grad():
        return model.intermediate_maps(x, layers)[0][-1]


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kernel", ["math", "flash", "efficient", "cudnn"])
def test_every_attention_kernel_gives_the_plain_result(kernel, x):
    model = tiny_vit()
    ref = _maps(model, x)
    speed.set_attention(model, kernel)
    assert all(m.sdpa_backends[0] == speed.ATTENTION_KERNELS[kernel] for m in model.modules()
               if isinstance(m, speed.Attention))
    torch.testing.assert_close(_maps(model, x), ref, atol=1e-5, rtol=1e-4)  # kernels missing here fall back
    speed.set_attention(model, "auto")
    assert all(m.sdpa_backends is None for m in model.modules() if isinstance(m, speed.Attention))
    with pytest.raises(ValueError, match="attention='fast'"):
        speed.set_attention(model, "fast")


def test_compiled_blocks_equal_the_plain_ones_and_new_sizes_do_not_recompile(x):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    plain = tiny_vit(depth=2)
    model = tiny_vit(depth=2)
    model.load_state_dict(plain.state_dict())
    assert speed.compile_blocks(model) is True
    assert list(model.state_dict()) == list(plain.state_dict())  # in place: the keys are unchanged
    graphs = counters["stats"]["unique_graphs"]
    for shape in [(2, 3, 42, 56), (3, 3, 70, 28), (2, 3, 98, 84)]:  # other batches and image sizes
        y = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(_maps(model, y, [0, 1]), _maps(plain, y, [0, 1]), atol=1e-5, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] == graphs  # the check's graph serves every size
    torch._dynamo.reset()


def test_reduce_overhead_compiles_the_block_stack_and_keeps_earlier_results(x):
    torch._dynamo.reset()
    plain = tiny_vit(depth=3)
    model = tiny_vit(depth=3)
    model.load_state_dict(plain.state_dict())
    with pytest.warns(UserWarning, match="reduce-overhead records CUDA graphs, which the cpu has not"):
        assert speed.compile_blocks(model, "reduce-overhead") is True  # (said: it compiles again for each size)
    assert "forward_layers" in model.__dict__ and all(b._compiled_call_impl is None for b in model.blocks)
    assert list(model.state_dict()) == list(plain.state_dict())
    y = torch.randn(2, 3, 56, 42, generator=torch.Generator().manual_seed(2))
    first = _maps(model, x, [0, 2])
    second = _maps(model, y, [0, 2])  # the same shape would replay the graph into the same buffers on a GPU
    torch.testing.assert_close(first, _maps(plain, x, [0, 2]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(second, _maps(plain, y, [0, 2]), atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_compile_falls_back_with_a_warning_when_no_compiler_or_compiling_fails(x, monkeypatch):
    model = tiny_vit(depth=2)
    ref = _maps(model, x)
    monkeypatch.setattr(speed, "compiler_missing", lambda device: "no C++ compiler found (c++, g++, clang++)")
    with pytest.warns(UserWarning, match="no C.. compiler found.*runs uncompiled"):
        assert speed.compile_blocks(model) is False
    assert all(b._compiled_call_impl is None for b in model.blocks)
    monkeypatch.undo()

    def broken(self, **kwargs):  # a compiler that fails at the first call, as a broken toolchain does
        def fail(*a, **k):
            raise RuntimeError("inductor: C++ compile error\nlong log")
        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: inductor: C\+\+ compile error\)"):
        assert speed.compile_blocks(model) is False
    torch.testing.assert_close(_maps(model, x), ref)  # the plain blocks run again
    with pytest.raises(ValueError, match="compile mode 'fastest'"):
        speed.compile_blocks(model, "fastest")


def test_max_autotune_compiles_each_block_without_cuda_graphs(monkeypatch):
    """torch's "max-autotune" also records CUDA graphs; compiled block by block, each replay overwrote
    the output the next block was reading (the first forward failed on an H100). The blocks must
    get the autotuning alone, with dynamic shapes like the default mode."""
    model = tiny_vit()
    seen = []
    monkeypatch.setattr(speed, "compiler_missing", lambda device: None)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: seen.append(kw))
    assert speed.compile_blocks(model, "max-autotune", check=False)
    assert seen == [{"mode": "max-autotune-no-cudagraphs", "dynamic": True}] * len(model.blocks)
    seen.clear()
    assert speed.compile_blocks(model, "default", check=False)
    assert seen == [{"mode": None, "dynamic": True}] * len(model.blocks)


def test_load_backbone_takes_the_fast_path_options(tmp_path, monkeypatch, x):
    model = tiny_vit()
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    calls = []
    monkeypatch.setattr(speed, "compile_blocks", lambda m, mode: calls.append(mode) or True)
    loaded = load_backbone(None, tmp_path / "backbone.pth", attention="math", compile="max-autotune")
    assert calls == ["max-autotune"]
    assert loaded.blocks[0].attn.sdpa_backends[0] == torch.nn.attention.SDPBackend.MATH
    torch.testing.assert_close(_maps(loaded, x), _maps(model, x))
    load_backbone(None, tmp_path / "backbone.pth", compile=True)
    assert calls == ["max-autotune", "default"]


def test_predictor_runs_a_bfloat16_backbone_with_a_float32_head():
    torch.manual_seed(0)
    ref = DensePredictor(tiny_vit(), ConvSegHead(), task="segmentation", layers=[1, 2]).eval()
    low = DensePredictor(tiny_vit().to(torch.bfloat16), ConvSegHead(), task="segmentation", layers=[1, 2]).eval()
    low.decode_head.load_state_dict(ref.decode_head.state_dict())
    low.backbone.load_state_dict(ref.backbone.state_dict())
    image = torch.randn(1, 3, 50, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = ref.predict(image)
        b = low.predict(image)
    assert b.dtype == torch.float32 and low.decode_head.conv_seg.weight.dtype == torch.float32
    assert (a - b).norm() / a.norm() < 0.05
    assert not torch.equal(a, b)  # bf16 really ran


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(40, 50), (40, 50), (30, 44), (40, 50), (30, 44)]):
        paths.append(str(root / f"{i}.png"))
        cv2.imwrite(paths[-1], rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return paths


def test_features_and_pca_decoded_in_workers_equal_in_process(image_files):
    model = tiny_vit()
    plain = extract_features(model, image_files, layers=[1, 2], batch_size=2, size=36)
    workers = extract_features(model, image_files, layers=[1, 2], batch_size=2, size=36, num_workers=2)
    for a, b in zip(plain, workers):
        assert a.source == b.source and a.image_size == b.image_size
        for layer in (1, 2):
            torch.testing.assert_close(a.maps[layer], b.maps[layer])
    maps_plain = pca_maps(model, image_files, batch_size=2)
    maps_workers = pca_maps(model, image_files, batch_size=2, num_workers=2)
    for a, b in zip(maps_plain, maps_workers):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.rgb, b.rgb, atol=1e-5)
    with pytest.raises(ValueError, match="num_workers=-1"):
        extract_features(model, image_files, num_workers=-1)


def test_a_worker_error_is_raised_as_it_is(tmp_path, image_files):
    bad = tmp_path / "truncated.png"
    bad.write_bytes(open(image_files[0], "rb").read()[:60])  # a valid header, then nothing
    with pytest.raises((ValueError, OSError)) as plain:
        extract_features(tiny_vit(), image_files + [str(bad)], batch_size=2)
    with pytest.raises(type(plain.value)) as worker:
        extract_features(tiny_vit(), image_files + [str(bad)], batch_size=2, num_workers=2)
    assert str(worker.value) == str(plain.value) and "Traceback" not in str(worker.value)
    assert str(bad) in str(worker.value)
    assert list(map_in_workers(abs, [-3, 2, -1], num_workers=2)) == [3, 2, 1]  # in order


def test_cli_fast_path_options_give_the_plain_features(tmp_path, image_files):
    model = tiny_vit()
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    common = ["features", *image_files[:2], "--weights", str(tmp_path / "backbone.pth"), "--batch-size", "1"]
    assert main([*common, "--out", str(tmp_path / "plain.npy"), "--num-workers", "0"]) == 0
    assert main([*common, "--out", str(tmp_path / "fast.npy"), "--num-workers", "2", "--attention", "math"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "fast.npy"), np.load(tmp_path / "plain.npy"), atol=1e-5)
    with pytest.raises(SystemExit) as exit_:
        main([*common, "--out", str(tmp_path / "x.npy"), "--attention", "fastest"])
    assert exit_.value.code == 2 and not (tmp_path / "x.npy").exists()


def opencv_threads(_) -> int:
    return cv2.getNumThreads()


def test_workers_decode_after_the_parent_used_opencv_threads(tmp_path):
    """Forked decoding workers must not touch OpenCV's thread pool settings: after the parent ran a
    threaded OpenCV call, cv2.setNumThreads in a worker hung the embedding (seen on a 16-core machine)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, cv2, numpy as np, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from dinov2_dense.evaluation.knn import read_resized\n"
        "from dinov2_dense.features import map_in_workers\n"
        "cv2.setNumThreads(2)\n"
        "big = np.random.default_rng(0).integers(0, 255, (1500, 2000, 3), dtype=np.uint8)\n"
        "for i in range(4):\n"
        f"    cv2.imwrite({str(tmp_path)!r} + f'/{{i}}.jpg', cv2.resize(cv2.cvtColor(big, cv2.COLOR_RGB2BGR), (500, 375)))\n"
        "import functools\n"
        "from tests.test_speed import opencv_threads as lambda_free\n"
        f"paths = [{str(tmp_path)!r} + f'/{{i}}.jpg' for i in range(4)]\n"
        "out = list(map_in_workers(functools.partial(read_resized, hw=(28, 28)), paths, 2))\n"
        "print(len(out), tuple(out[0].shape))\n"
        "threads = set(map_in_workers(lambda_free, [0, 1, 2, 3], 2))\n"
        "print(sorted(threads), cv2.getNumThreads())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["4", "(3,", "28,", "28)", "[1]", "2"]  # one thread in workers, restored here


def touch_marker(k: int, folder: str) -> int:
    Path(folder, str(k)).write_text("")
    return k


def test_workers_start_before_the_first_result_is_asked_for(tmp_path):
    """map_in_workers starts its workers when called, so they decode while the caller gets ready (the
    curation embedding hashes the weights meanwhile); closing the iterator stops them."""
    results = map_in_workers(functools.partial(touch_marker, folder=str(tmp_path)), [0, 1, 2, 3, 4, 5], 2)
    deadline = time.monotonic() + 30
    while len(list(tmp_path.iterdir())) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0", "1", "2", "3"]  # two in hand per worker
    assert next(results) == 0 and list(results) == [1, 2, 3, 4, 5]
    early = map_in_workers(functools.partial(touch_marker, folder=str(tmp_path)), [6, 7, 8], 2)
    early.close()
    assert list(early) == []


def own_niceness(_) -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_workers_niceness_follows_the_setting(monkeypatch):
    """features.WORKER_NICE (0 by default) is added to each worker's niceness; this process keeps its own."""
    import dinov2_dense.features as features

    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert set(map_in_workers(own_niceness, [0, 1, 2, 3], 2)) == {here}
    monkeypatch.setattr(features, "WORKER_NICE", 3)
    assert set(map_in_workers(own_niceness, [0, 1, 2, 3], 2)) == {min(here + 3, 19)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == here


def test_workers_read_ahead_as_many_items_as_the_setting(monkeypatch):
    """features.PREFETCH is each worker's read-ahead (the DataLoader's prefetch_factor), with a shared
    slot for each item in hand and the one being copied out; the results are the same."""
    import dinov2_dense.features as features

    seen = []
    real = torch.utils.data.DataLoader

    def spy(*args, **kwargs):
        seen.append(kwargs["prefetch_factor"])
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", spy)
    slots = []
    real_init = features._Slots.__init__
    monkeypatch.setattr(features._Slots, "__init__", lambda self, n, per: slots.append(per) or real_init(self, n, per))
    monkeypatch.setattr(features, "PREFETCH", 5)
    assert list(map_in_workers(own_niceness, [0, 1, 2], 2)) == [os.getpriority(os.PRIO_PROCESS, 0)] * 3
    assert seen == [5] and slots == [6]


def large_result(k: int):
    """A worker's result with tensors above and below the shared slots' threshold; sizes vary with
    ``k``, so a worker's slot must grow."""
    side = 96 + 16 * (k % 3)
    return (k, torch.full((3, side, side), k, dtype=torch.float32), torch.full((2,), k, dtype=torch.bfloat16),
            [torch.full((64, 3, 40, 40), k % 251, dtype=torch.uint8), None])


def test_large_results_come_through_reused_shared_slots_as_private_copies(monkeypatch):
    """Workers hand large tensors over through a few reused shared slots (see features._Slots): every
    result arrives in order with its own values, also after many more items than slots, with slots
    growing; earlier results are copies that later items never overwrite; the slots are really used."""
    import dinov2_dense.features as features

    arrived = []
    real_take = features._Slots.take

    def spy(self, out, pin_memory):
        if isinstance(out, tuple) and len(out) == 4:  # a whole result (take also sees its parts)
            arrived.append(out)
        return real_take(self, out, pin_memory)

    monkeypatch.setattr(features._Slots, "take", spy)
    items = list(range(24))
    outs = list(map_in_workers(large_result, items, num_workers=2))
    for k, out in zip(items, outs):  # checked only now: a result aliasing a slot would hold a later item's values
        want = large_result(k)
        assert out[0] == k and out[3][1] is None
        for got, expected in ((out[1], want[1]), (out[2], want[2]), (out[3][0], want[3][0])):
            assert got.dtype == expected.dtype and torch.equal(got, expected)
    assert len(arrived) == len(items)
    slotted = [o for o in arrived if isinstance(o[1], features._InSlot)]
    assert len(slotted) >= len(items) // 2  # most went through slots (a busy worker may hand one over as usual)
    assert all(not isinstance(o[2], features._InSlot) for o in arrived)  # small tensors go the usual way
    assert sum(o[1].buffer is not None for o in slotted) < len(slotted)  # buffers travel once, then are reused


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("stop_early", [False, True])
def test_slots_go_straight_to_the_gpu_and_are_unregistered(monkeypatch, stop_early):
    """features.SLOTS_TO_DEVICE: the pinning thread copies each slot straight to the GPU (its buffer
    registered with CUDA): the results arrive on the GPU with the workers' values, in order, and no
    buffer stays registered once the iteration ends or is closed early."""
    import dinov2_dense.features as features

    made = []
    real_init = features._Slots.__init__

    def keep(self, *args):
        real_init(self, *args)
        made.append(self)

    monkeypatch.setattr(features._Slots, "__init__", keep)
    monkeypatch.setattr(features, "SLOTS_TO_DEVICE", True)
    items = list(range(4 if stop_early else 24))
    results = map_in_workers(large_result, items, num_workers=2, pin_memory=True)
    seen, on_gpu = 0, 0
    for k, out in enumerate(results):
        want = large_result(k)
        # a worker whose slots are all busy hands a tensor over the usual way (pinned, on the CPU)
        on_gpu += (out[1].device.type == "cuda") + (out[3][0].device.type == "cuda")
        assert torch.equal(out[1].cpu(), want[1]) and torch.equal(out[3][0].cpu(), want[3][0])
        assert torch.equal(out[2].cpu(), want[2])
        seen += 1
        if stop_early and seen == 2:
            break
    assert on_gpu >= seen  # most large tensors came through the slots, straight to the GPU
    assert made and made[0].to_device  # registering worked (else it falls back to pinned copies)
    if stop_early:
        assert made[0].registered  # still in use until closed
        results.close()
    assert seen == (2 if stop_early else len(items)) and not made[0].registered
    # closed at once (an error in the caller before the first result): the pinning thread may be registering a
    # slot; it is stopped before the slots are unregistered
    results = map_in_workers(large_result, items, num_workers=2, pin_memory=True)
    time.sleep(0.5)  # (the workers hand their first results over meanwhile)
    results.close()
    assert not made[-1].registered


def test_a_slot_that_cuda_cannot_register_goes_through_pinned_memory(monkeypatch):
    """features.SLOTS_TO_DEVICE: where CUDA refuses to register a slot's buffer (cudaHostRegister
    returns an error), the pinning thread copies it into pinned memory as before, from then on, and
    nothing stays registered."""
    from types import SimpleNamespace

    import dinov2_dense.features as features

    tried = []
    monkeypatch.setattr(torch.cuda, "cudart", lambda: SimpleNamespace(
        cudaHostRegister=lambda ptr, size, flags: tried.append(size) or 2))  # 2: cudaErrorMemoryAllocation
    monkeypatch.setattr(features, "_pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=0))  # as in worker 0
    slots = features._Slots(1, 3)
    slots.to_device = True  # as on a GPU machine with SLOTS_TO_DEVICE
    x = torch.randn(3, 100, 100)
    for _ in range(2):
        got = slots.take(slots.put(x), pin_memory=True)
        assert got.device.type == "cpu" and torch.equal(got, x) and int(slots.flags.sum()) == 0
    assert tried == [x.numel() * 4] and not slots.to_device and not slots.registered  # tried once only


def test_the_pinning_thread_copies_slots_out_into_pinned_memory(monkeypatch):
    """With pinned memory (a GPU), the DataLoader's pinning thread copies a slot out: it calls the
    ``pin_memory`` of what arrives (torch's own function, run here; pinning itself needs CUDA, so the
    pinned allocation is replaced by a plain one) and the slot is free again."""
    from types import SimpleNamespace

    from torch.utils.data._utils.pin_memory import pin_memory

    import dinov2_dense.features as features

    allocated = []
    monkeypatch.setattr(features, "_pinned_empty",
                        lambda shape, dtype: allocated.append(shape) or torch.empty(shape, dtype=dtype))
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(id=0))  # as in worker 0
    slots = features._Slots(1, 3)
    features._OPEN_SLOTS[slots.token] = slots
    try:
        x = torch.randn(3, 100, 100)
        sent = slots.put((7, x, ["name"]))  # (no small tensor: torch would pin it, which needs CUDA)
        assert isinstance(sent[1], features._InSlot) and int(slots.flags.sum()) == 1
        got = pin_memory(sent)  # what the pinning thread does with each result
        assert got[0] == 7 and torch.equal(got[1], x) and got[2] == ["name"]
        assert allocated == [(3, 100, 100)] and int(slots.flags.sum()) == 0
        assert slots.take(got, True)[1] is got[1]  # the main thread then finds it done
    finally:
        del features._OPEN_SLOTS[slots.token]
