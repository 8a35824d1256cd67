"""The mmseg plugin is optional: without mmcv the core imports and the plugin says how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert "pip install -e '.[mmseg]'" in line and "mmcv" in line
