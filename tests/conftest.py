import os

import pytest
import torch

from dinov2_dense.models import DinoVisionTransformer

# Tests run in pytest-xdist workers (the README's `-n auto`): the cores are shared among the workers, so
# each worker's torch, and every command a test starts (OMP_NUM_THREADS), takes its share; more threads
# than cores made the suite slower than one process (OpenMP threads spin while they wait).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Give every parameter random, non-trivial values (norm weights near 1, layer scales near 0.3)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight") or "layernorm.weight" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif "gamma" in name or "lambda1" in name:
                p.copy_(0.3 + 0.1 * noise)
            else:
                p.copy_(std * noise)
    return model


def tiny_vit(registers: int = 0, ffn: str = "mlp", depth: int = 3, dim: int = 48, heads: int = 2, img: int = 98, **kw):
    """A small DINOv2 ViT for fast tests (patch 14, 7x7 stored grid by default)."""
    reg = dict(interpolate_antialias=True, interpolate_offset=0.0) if registers else {}
    model = DinoVisionTransformer(
        img_size=img, patch_size=14, embed_dim=dim, depth=depth, num_heads=heads, ffn_layer=ffn,
        num_register_tokens=registers, **{**reg, **kw}
    )
    return randomize_(model).eval()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch hub directory and no weights directory: nothing is found by accident."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("DINOV2_DENSE_WEIGHTS", raising=False)
    monkeypatch.delenv("DINOV2_DENSE_BASE_URL", raising=False)
    monkeypatch.delenv("DINOV2_DENSE_OFFLINE", raising=False)
    return tmp_path / "torch_home"


_next_port: list[int] = []


def free_port() -> int:
    """A port for a test's process group that no other test takes: each xdist worker draws from its own
    block of 1,000 ports below the OS's ephemeral range (a port the OS hands out, bound and released,
    could go to two workers at once), from a random start (two test sessions at once take other ports),
    and checks that the port can be bound."""
    import random
    import socket

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    block = 20000 + 1000 * ((int(worker[2:]) if worker[2:].isdigit() else 0) % 12)
    if not _next_port:
        _next_port.append(random.randrange(1000))
    for _ in range(1000):
        port = block + _next_port[0] % 1000
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port left in this worker's block")


@pytest.fixture
def single_process_group(tmp_path):
    """A one-process gloo group for the test (skipped where torch.distributed cannot make one)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture
def fresh_mmengine_loggers():
    """mmengine keeps its loggers (and their handlers on the sys.stderr of the test that made them) for
    the life of the process; a command-line run has one process per command. Drop them after the test
    (``pytestmark = pytest.mark.usefixtures("fresh_mmengine_loggers")`` in the files that run commands)."""
    yield
    from mmengine.logging import MMLogger

    for logger in list(MMLogger._instance_dict.values()):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    MMLogger._instance_dict.clear()
