"""DINOv2 pretraining: the same as `dinov2-dense pretrain CONFIG ...` (see `--help`).

    python tools/pretrain.py configs/pretrain/tiny_cpu.py --work-dir runs/tiny
    torchrun --nproc_per_node 8 tools/pretrain.py configs/pretrain/vitl14_imagenet.py   # DDP / FSDP
"""

import os
import sys

# this script's folder comes first on sys.path, and this file is named like the `pretrain` package
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from dinov2_dense.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
