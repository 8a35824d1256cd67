"""Mask and depth colouring (dinov2_dense.viz.colour): the data sets' palettes, ignore and invalid
pixels, and the coloured PNGs that `test --out` writes through SavePredictionsHook."""

import logging
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from dinov2_dense.data import ADE20K_CLASSES, ADE20K_PALETTE, CITYSCAPES_PALETTE, VOC_PALETTE, palette_array
from dinov2_dense.viz import colour_depth, colour_labels


@pytest.mark.parametrize("palette", [ADE20K_PALETTE, VOC_PALETTE, CITYSCAPES_PALETTE])
def test_labels_take_the_given_palette_exactly(palette):
    k = len(palette)
    labels = np.arange(k * 2).reshape(2, k) % k
    rgb = colour_labels(labels, palette)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, k, 3)
    assert np.array_equal(rgb, np.asarray(palette, np.uint8)[labels])
    assert np.array_equal(colour_labels(labels, np.asarray(palette, np.uint8)), rgb)  # a data set's .palette array


def test_ignore_is_black_and_ids_past_the_palette_are_coloured():
    palette = [(10, 20, 30), (40, 50, 60)]
    labels = np.array([[0, 1, 255], [2, 3, 255]], np.uint8)
    rgb = colour_labels(labels, palette)
    assert (rgb[:, 2] == 0).all()  # ignore (255)
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [40, 50, 60]
    # ids beyond the palette: the colours palette_array extends it with, none black
    assert np.array_equal(rgb[1, :2], palette_array(palette, 4)[2:4]) and rgb[1, :2].any(axis=-1).all()
    assert (colour_labels(np.array([[7, -1]]), palette, ignore_index=-1)[0, 1] == 0).all()
    with pytest.raises(ValueError, match="class ids must be >= 0"):
        colour_labels(np.array([[-2]]), palette)
    with pytest.raises(ValueError, match="integer class ids"):
        colour_labels(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"palette of shape \(2, 2\)"):
        colour_labels(labels, [(1, 2), (3, 4)])


def test_default_palette_is_the_data_sets_one_for_unnamed_classes():
    labels = np.arange(40).reshape(5, 8)
    rgb = colour_labels(labels)
    assert np.array_equal(rgb, palette_array(None, 40)[labels])  # what a data set without a palette carries
    assert len({tuple(c) for c in rgb.reshape(-1, 3)}) == 40 and rgb.any(axis=-1).all()  # distinct, none black


def test_depth_near_is_bright_and_invalid_is_black():
    depth = np.array([[1.0, 2.0, 4.0, 8.0], [0.0, np.nan, np.inf, -1.0]], np.float32)
    rgb = colour_depth(depth)
    brightness = rgb[0].astype(int).sum(-1)
    assert (np.diff(brightness) < 0).all()  # nearer is brighter
    assert (rgb[1] == 0).all()  # zero, NaN, inf and negative depth: invalid
    # a fixed range: depth at vmin is as bright as the scale goes, at or past vmax as dark
    fixed = colour_depth(np.array([[1.0, 10.0, 20.0]]), vmin=1.0, vmax=10.0)
    assert np.array_equal(fixed[0, 1], fixed[0, 2]) and fixed[0, 0].astype(int).sum() > fixed[0, 1].astype(int).sum()
    assert (colour_depth(np.zeros((2, 2))) == 0).all()


def test_saved_colour_masks_use_the_test_sets_palette(tmp_path):
    from dinov2_dense.data import ADE20KDataset, SceneConfig, write_ade20k_layout
    from dinov2_dense.engine.hooks import SavePredictionsHook

    root = write_ade20k_layout(tmp_path / "ade", 1, 1, config=SceneConfig(size=(28, 28)), progress=False)
    dataset = ADE20KDataset(root, "validation", classes=ADE20K_CLASSES)  # the ADE20K names: its palette
    runner = SimpleNamespace(test_dataloader=SimpleNamespace(dataset=dataset), logger=logging.getLogger(__name__))
    hook = SavePredictionsHook(str(tmp_path / "pred"))
    hook.before_test(runner)
    labels = torch.arange(150, dtype=torch.int64).reshape(10, 15)
    meta = {"target_path": str(dataset.items[0].target)}
    hook.after_test_iter(runner, 0, outputs=[{"pred_sem_seg": labels, "meta": meta}])
    hook.after_test(runner)
    written = tmp_path / "pred" / "colour" / dataset.items[0].target.relative_to(root)
    rgb = cv2.imread(str(written))[..., ::-1]
    assert np.array_equal(rgb, np.asarray(ADE20K_PALETTE, np.uint8)[labels.numpy()])
