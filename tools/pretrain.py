"""DINOv2 pretraining: the same as `dinov2-dense pretrain CONFIG ...` (see `--help`).

    python tools/pretrain.py configs/pretrain/tiny_cpu.py --work-dir runs/tiny
    torchrun --nproc_per_node 8 tools/pretrain.py configs/pretrain/vitl14_imagenet.py   # DDP / FSDP
"""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
