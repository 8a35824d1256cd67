"""Thin script: evaluate saved depth maps against ground truth (the same as `dinov2-dense eval-depth`).

    python tools/eval_depth.py PRED_DIR GT_DIR --dataset nyu|kitti|folder [--out metrics.json]

Files are 16-bit PNGs with a declared scale (nyu 1000, kitti 256 per metre) or .npy in metres,
matched by name. The logic lives in dinov2_dense.evaluation.depth_files.
"""

from __future__ import annotations

import sys

from dinov2_dense.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    return cli_main(["eval-depth", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
