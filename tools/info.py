"""Thin script: the same as `dinov2-dense info` (the zoo and where each weight file was found)."""

import sys

from dinov2_dense.cli import main

if __name__ == "__main__":
    sys.exit(main(["info", *sys.argv[1:]]))
