"""Evaluate a trained head: the same as `dinov2-dense test CONFIG CHECKPOINT ...` (see `--help`)."""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
