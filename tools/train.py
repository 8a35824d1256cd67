"""Train a head on a frozen backbone: the same as `dinov2-dense train CONFIG ...` (see `--help`).

    python tools/train.py configs/segmentation/dinov2_vits14_ade20k_linear.py --work-dir runs/ade
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch     # DDP
"""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
