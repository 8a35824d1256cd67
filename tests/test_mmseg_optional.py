"""The mmseg plugin is optional: without mmcv the core imports, the plugin says how to install it, and the
checkpoint converter (torch alone) still runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_without_mmcv_and_the_plugin_says_how_to_install():
    code = ("import sys; sys.modules['mmcv'] = None\n"  # None in sys.modules: `import mmcv` raises ImportError
            "import dinov2_dense, dinov2_dense.cli, dinov2_dense.zoo, heads, pretrain.curation\n"
            "try:\n    import dinov2_dense.mmseg\nexcept ImportError as exc:\n    print('ERR', exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    line = out.stdout.strip()
    assert line.startswith("ERR") and len(line.splitlines()) == 1
    # the whole recipe: mmcv's build needs setuptools < 82 (pkg_resources), and a plain install's extra
    assert 'pip install "setuptools<82"' in line and "MMCV_WITH_OPS=1" in line, line
    assert 'pip install "dinov2-dense[mmseg]"' in line and 'pip install -e ".[mmseg]"' in line, line


def test_the_converter_runs_without_mmcv(tmp_path):
    """`python -m dinov2_dense.mmseg.convert` needs torch alone: without mmcv it stopped with a traceback (exit 1)
    in the plugin package's import, before its own code ran."""
    from tests.conftest import tiny_vit

    no_mmcv = tmp_path / "no_mmcv" / "mmcv"
    no_mmcv.mkdir(parents=True)
    (no_mmcv / "__init__.py").write_text("raise ImportError(\"No module named 'mmcv'\")\n")
    env = {"PYTHONPATH": f"{no_mmcv.parent}:{ROOT}", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    head = {"decode_head.conv_seg.weight": torch.randn(3, 48, 1, 1), "decode_head.conv_seg.bias": torch.randn(3),
            "decode_head.bn.weight": torch.ones(48), "decode_head.bn.bias": torch.zeros(48),
            "decode_head.bn.running_mean": torch.zeros(48), "decode_head.bn.running_var": torch.ones(48),
            "decode_head.bn.num_batches_tracked": torch.tensor(0)}
    state = {f"backbone.{k}": v for k, v in tiny_vit().state_dict().items()} | head
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "mmseg.pth")
    convert = [sys.executable, "-m", "dinov2_dense.mmseg.convert"]
    out = subprocess.run([*convert, "from-mmseg", str(tmp_path / "mmseg.pth"), str(tmp_path / "ours.safetensors")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    from safetensors.torch import load_file

    assert load_file(tmp_path / "ours.safetensors").keys() == state.keys()
    joined = [sys.executable, "-mdinov2_dense.mmseg.convert"]  # -m and the module in one argument, as Python takes it
    out = subprocess.run([*joined, "to-mmseg", str(tmp_path / "missing.pth"), str(tmp_path / "x.pth")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr  # its own errors, one line
    # the plugin itself still refuses, in one line
    out = subprocess.run([sys.executable, "-c", "import dinov2_dense.mmseg"], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 1 and "ImportError: dinov2_dense.mmseg needs mmsegmentation" in out.stderr
