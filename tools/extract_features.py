"""Thin script: the same as `dinov2-dense features ...` (see `--help`)."""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
