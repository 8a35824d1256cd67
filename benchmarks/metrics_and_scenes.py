"""Speed of the segmentation metric and of the synthetic scene generator (these were timed asserts in
the tests; timings belong here, where nothing fails on a busy machine).

* ``SegmentationAccumulator.update`` on one 1024x2048 map of 150 classes (the Cityscapes size, ADE20K's
  class count) against a direct NumPy confusion matrix (``np.bincount`` of ``gt * C + pred``) computed
  in the same process; the areas of both are checked equal before timing.
* ``generate_scene`` at its default 224x224: scenes per second (the demo and the tests draw thousands).

    python benchmarks/metrics_and_scenes.py [--repeats 5] [--scenes 100]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dinov2_dense.data import generate_scene
from dinov2_dense.evaluation import SegmentationAccumulator


def direct_areas(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """(4, C): intersection, union, prediction and label areas from a bincount confusion matrix."""
    keep = gt != ignore_index
    conf = np.bincount(gt[keep].astype(np.int64) * num_classes + pred[keep], minlength=num_classes ** 2)
    conf = conf.reshape(num_classes, num_classes)
    inter, label, pred_area = np.diag(conf), conf.sum(1), conf.sum(0)
    return np.stack([inter, pred_area + label - inter, pred_area, label])


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenes", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    gt = rng.integers(0, 150, (1024, 2048)).astype(np.uint8)
    gt[:16] = 255
    pred = rng.integers(0, 150, (1024, 2048))
    acc = SegmentationAccumulator(150)
    if not np.array_equal(acc.update(pred, gt), direct_areas(pred, gt, 150)):
        raise SystemExit("SegmentationAccumulator's areas differ from the direct confusion matrix")
    ours = median_seconds(lambda: acc.update(pred, gt), args.repeats)
    direct = median_seconds(lambda: direct_areas(pred, gt, 150), args.repeats)
    print(f"segmentation metric, 1024x2048, 150 classes: ours {ours * 1e3:.1f} ms, direct bincount "
          f"{direct * 1e3:.1f} ms, ratio {ours / direct:.2f} (median of {args.repeats})")

    generate_scene(0)
    t = time.perf_counter()
    for i in range(args.scenes):
        generate_scene(i)
    rate = args.scenes / (time.perf_counter() - t)
    print(f"synthetic scenes 224x224: {rate:.0f} scenes/s over {args.scenes}")


if __name__ == "__main__":
    main()
