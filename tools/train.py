"""Train a head on a frozen backbone: the same as `dinov2-dense train CONFIG ...`.

    python tools/train.py configs/segmentation/dinov2_vits14_ade20k_linear.py --work-dir runs/ade
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch     # DDP
"""

import argparse
import sys

from dinov2_dense.engine.entry import add_train_arguments, run_train

if __name__ == "__main__":
    sys.exit(run_train(add_train_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
