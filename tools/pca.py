"""Thin script: the same as `dinov2-dense pca ...` (see `--help`)."""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["pca", *sys.argv[1:]]))
