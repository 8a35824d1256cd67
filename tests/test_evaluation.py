"""Segmentation and depth metrics against hand-worked examples, and their mmengine wrappers."""

import importlib
import math

import numpy as np
import pytest
import torch

from dinov2_dense.evaluation import (
    DEPTH_METRIC_KEYS,
    INVALID_PREDICTION_KEYS,
    DepthAccumulator,
    SegmentationAccumulator,
    crop_mask,
    depth_metrics,
    format_table,
    intersect_and_union,
    kb_crop,
    segmentation_metrics,
)

NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------

# 2x3 example, 4 classes, one ignored pixel (whose prediction must not count).
GT = np.array([[0, 1, 2],
               [2, 255, 0]])
PRED = np.array([[0, 1, 1],
                 [2, 2, 0]])
# Evaluated pixels: 5.
# class 0: gt {(0,0),(1,2)}, pred {(0,0),(1,2)}: inter 2, union 2 -> IoU 100, Acc 100
# class 1: gt {(0,1)},       pred {(0,1),(0,2)}: inter 1, union 2 -> IoU  50, Acc 100
# class 2: gt {(0,2),(1,0)}, pred {(1,0)}:       inter 1, union 2 -> IoU  50, Acc  50
# class 3: absent from gt and pred               -> IoU NaN, Acc NaN (excluded from the means)
# aAcc = 4/5 = 80; mIoU = (100+50+50)/3; mAcc = (100+100+50)/3


def test_segmentation_hand_worked_with_absent_class():
    r = segmentation_metrics([PRED], [GT], num_classes=4)
    np.testing.assert_allclose(r["IoU"], [100, 50, 50, NAN])
    np.testing.assert_allclose(r["Acc"], [100, 100, 50, NAN])
    assert r["aAcc"] == pytest.approx(80.0)
    assert r["mIoU"] == pytest.approx(200 / 3)
    assert r["mAcc"] == pytest.approx(250 / 3)
    np.testing.assert_array_equal(r["area_intersect"], [2, 1, 1, 0])
    np.testing.assert_array_equal(r["area_union"], [2, 2, 2, 0])
    np.testing.assert_array_equal(r["area_pred"], [2, 2, 1, 0])
    np.testing.assert_array_equal(r["area_label"], [2, 1, 2, 0])
    assert r["area_intersect"].dtype == np.int64


def test_segmentation_class_predicted_but_absent_from_gt():
    # class 3 is predicted once but never in the gt: IoU 0 (counts in mIoU), Acc NaN (not in mAcc).
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 3], [1, 1]])
    r = segmentation_metrics([pred], [gt], num_classes=4)
    # class 0: inter 1, union 2 -> 50, acc 1/2; class 1: 100, 100; class 2: NaN; class 3: 0 / NaN
    np.testing.assert_allclose(r["IoU"], [50, 100, NAN, 0])
    np.testing.assert_allclose(r["Acc"], [50, 100, NAN, NAN])
    assert r["mIoU"] == pytest.approx(50.0)  # (50 + 100 + 0) / 3
    assert r["mAcc"] == pytest.approx(75.0)  # (50 + 100) / 2
    assert r["aAcc"] == pytest.approx(75.0)  # 3 / 4


def test_all_ignored_image_contributes_nothing():
    acc = SegmentationAccumulator(4)
    acc.update(PRED, GT)
    before = acc.compute()
    # every pixel ignored: even out-of-range predictions there are not looked at
    areas = acc.update(np.full((5, 7), 9), np.full((5, 7), 255, np.uint8))
    assert not areas.any()
    after = acc.compute()
    for k in ("aAcc", "mIoU", "mAcc"):
        assert after[k] == before[k]
    # only all-ignored images: nothing is defined
    only = segmentation_metrics([np.zeros((2, 2), int)], [np.full((2, 2), 255)], num_classes=3)
    assert math.isnan(only["aAcc"]) and math.isnan(only["mIoU"]) and math.isnan(only["mAcc"])


def test_accumulation_is_pooled_over_images_and_accepts_torch():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 5, (6, 7)) for _ in range(3)]
    gts = [np.where(rng.random((6, 7)) < 0.2, 255, rng.integers(0, 5, (6, 7))) for _ in range(3)]
    pooled = segmentation_metrics([np.concatenate(preds)], [np.concatenate(gts)], 5)
    acc = SegmentationAccumulator(5)
    for p, g in zip(preds, gts):
        acc.update(torch.from_numpy(p), torch.from_numpy(g).to(torch.uint8))
    r = acc.compute()
    np.testing.assert_allclose(r["IoU"], pooled["IoU"])
    assert r["mIoU"] == pytest.approx(pooled["mIoU"])
    # direct definition of IoU from the confusion matrix
    p, g = np.concatenate(preds).ravel(), np.concatenate(gts).ravel()
    keep = g != 255
    cm = np.zeros((5, 5), int)
    np.add.at(cm, (g[keep], p[keep]), 1)
    iou = 100 * np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    np.testing.assert_allclose(r["IoU"], iou)
    assert acc.num_images == 3


def test_segmentation_bad_inputs():
    with pytest.raises(ValueError, match=r"\[7\]"):
        segmentation_metrics([np.zeros((2, 2), int)], [np.array([[0, 7], [1, 255]])], num_classes=4)
    with pytest.raises(ValueError, match="predicted label"):
        segmentation_metrics([np.array([[0, 4], [1, 1]])], [np.zeros((2, 2), int)], num_classes=4)
    with pytest.raises(ValueError, match="shape"):
        intersect_and_union(np.zeros((2, 3), int), np.zeros((3, 2), int), 4)
    with pytest.raises(TypeError, match="integer"):
        intersect_and_union(np.zeros((2, 2)), np.zeros((2, 2), int), 4)
    with pytest.raises(ValueError, match="2 predictions"):
        segmentation_metrics([PRED, PRED], [GT], 4)


def test_format_table():
    r = segmentation_metrics([PRED], [GT], num_classes=4)
    table = format_table(r, ["wall", "floor", "sky", "tree"])
    lines = table.splitlines()
    assert any("floor" in line and "50.00" in line and "100.00" in line for line in lines)
    assert any("tree" in line and "nan" in line for line in lines)
    assert "mIoU: 66.67" in table and "aAcc: 80.00" in table
    with pytest.raises(ValueError, match="3 class names"):
        format_table(r, ["a", "b", "c"])


def test_a_large_map_matches_a_direct_confusion_matrix():
    """A 1024x2048 map of 150 classes with an ignored band against a bincount confusion matrix (its speed
    against the same: benchmarks/metrics_and_scenes.py)."""
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 150, (1024, 2048)).astype(np.uint8)
    gt[:16] = 255
    pred = rng.integers(0, 150, (1024, 2048))
    keep = gt != 255
    conf = np.bincount(gt[keep].astype(np.int64) * 150 + pred[keep], minlength=150 ** 2).reshape(150, 150)
    inter, label, area = np.diag(conf), conf.sum(1), conf.sum(0)
    acc = SegmentationAccumulator(150)
    np.testing.assert_array_equal(acc.update(pred, gt), np.stack([inter, area + label - inter, area, label]))


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------

# 2x2 example: the zero gt pixel is invalid; three valid pixels.
D_GT = np.array([[1.0, 2.0], [4.0, 0.0]])
D_PRED = np.array([[1.2, 3.0], [2.0, 5.0]])
# ratios max(gt/pred, pred/gt): 1.2, 1.5, 2.0 -> d1 = 1/3 (<1.25), d2 = 2/3 (<1.5625), d3 = 2/3 (<1.953125)
# d = log(pred / gt) = log 1.2, log 1.5, log 0.5


def test_depth_hand_worked():
    r = depth_metrics(D_PRED, D_GT)
    d = [math.log(1.2), math.log(1.5), math.log(0.5)]
    mean_d, mean_d2 = sum(d) / 3, sum(x * x for x in d) / 3
    assert r["abs_rel"] == pytest.approx((0.2 / 1 + 1 / 2 + 2 / 4) / 3)  # 0.4
    assert r["abs_rel"] == pytest.approx(0.4)
    assert r["sq_rel"] == pytest.approx((0.04 / 1 + 1 / 2 + 4 / 4) / 3)
    assert r["rmse"] == pytest.approx(math.sqrt((0.04 + 1 + 4) / 3))
    assert r["rmse_log"] == pytest.approx(math.sqrt(mean_d2))
    assert r["log10"] == pytest.approx((abs(math.log10(1.2)) + abs(math.log10(1.5)) + abs(math.log10(0.5))) / 3)
    assert (r["d1"], r["d2"], r["d3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    assert r["silog"] == pytest.approx(100 * math.sqrt(mean_d2 - mean_d**2))
    da = depth_metrics(D_PRED, D_GT, silog="depth_anything")
    assert da["silog"] == pytest.approx(math.sqrt(mean_d2 - 0.5 * mean_d**2))
    assert {k: v for k, v in da.items() if k != "silog"} == {k: v for k, v in r.items() if k != "silog"}
    assert tuple(r) == DEPTH_METRIC_KEYS


def test_depth_matches_direct_numpy_formulas():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0.5, 9.5, (30, 40))
    gt[rng.random(gt.shape) < 0.3] = 0  # missing measurements
    pred = gt * rng.uniform(0.7, 1.4, gt.shape) + (gt == 0) * 3.0
    r = depth_metrics(torch.from_numpy(pred)[None], torch.from_numpy(gt)[None])  # (1, H, W) tensors
    v = gt > 0
    g, p = gt[v], np.clip(pred[v], 1e-3, 10)
    t = np.maximum(g / p, p / g)
    e = np.log(p) - np.log(g)
    expected = dict(abs_rel=np.mean(np.abs(g - p) / g), sq_rel=np.mean((g - p) ** 2 / g),
                    rmse=np.sqrt(np.mean((g - p) ** 2)), rmse_log=np.sqrt(np.mean(e**2)),
                    log10=np.mean(np.abs(np.log10(g) - np.log10(p))), d1=np.mean(t < 1.25),
                    d2=np.mean(t < 1.25**2), d3=np.mean(t < 1.25**3),
                    silog=np.sqrt(np.mean(e**2) - np.mean(e) ** 2) * 100)
    for k in DEPTH_METRIC_KEYS:
        assert r[k] == pytest.approx(expected[k], rel=1e-5), k  # tensors go through float32


def test_zero_depth_is_invalid_and_empty_images_are_skipped():
    # the same valid values, with and without zero-depth pixels around them
    with_zeros = depth_metrics(D_PRED, D_GT)
    flat = depth_metrics(np.array([[1.2, 3.0, 2.0]]), np.array([[1.0, 2.0, 4.0]]))
    assert with_zeros == pytest.approx(flat)
    # min_depth=0 still excludes zero (gt > min_depth)
    assert depth_metrics(D_PRED, D_GT, min_depth=0.0) == pytest.approx(flat)
    # gt beyond max_depth, NaN and inf are invalid too
    gt = np.array([[1.0, 2.0, 4.0, 11.0, np.nan, np.inf]])
    pred = np.array([[1.2, 3.0, 2.0, 1.0, 1.0, 1.0]])
    assert depth_metrics(pred, gt, max_depth=10) == pytest.approx(flat)
    # an all-zero ground truth: no valid pixel -> None, skipped and counted by the accumulator
    assert depth_metrics(np.ones((3, 3)), np.zeros((3, 3))) is None
    acc = DepthAccumulator()
    acc.update(D_PRED, D_GT)
    acc.update(np.ones((3, 3)), np.zeros((3, 3)))
    out = acc.compute()
    assert out["count"] == 1 and out["skipped"] == 1
    assert out["abs_rel"] == pytest.approx(0.4)
    empty = DepthAccumulator().compute()
    assert empty["count"] == 0 and math.isnan(empty["rmse"])


def test_silog_conventions_on_a_scaled_prediction():
    # pred = 2 * gt: d = log 2 everywhere -> the toolbox silog (variance) is 0,
    # Depth-Anything's sqrt(log^2 2 - 0.5 log^2 2) = log 2 / sqrt 2.
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert depth_metrics(2 * gt, gt)["silog"] == pytest.approx(0.0, abs=1e-6)
    assert depth_metrics(2 * gt, gt, silog="depth_anything")["silog"] == pytest.approx(math.log(2) / math.sqrt(2))
    with pytest.raises(ValueError, match="silog"):
        depth_metrics(gt, gt, silog="bts")


def test_eigen_crop_mask_positions():
    m = crop_mask((480, 640), "eigen")
    assert m.sum() == (471 - 45) * (601 - 41)
    assert m[45, 41] and m[470, 600] and not m[44, 41] and not m[45, 40] and not m[471, 600] and not m[470, 601]
    gt = np.full((480, 640), 5.0)
    pred = gt.copy()
    pred[44, :] = 1.0  # outside the crop: no effect
    pred[:, 601:] = 1.0
    assert depth_metrics(pred, gt, crop="eigen")["abs_rel"] == 0
    assert depth_metrics(pred, gt)["abs_rel"] > 0
    pred[45, 41] = 1.0  # inside
    assert depth_metrics(pred, gt, crop="eigen")["abs_rel"] == pytest.approx(0.8 / m.sum())
    with pytest.raises(ValueError, match="480x640") as exc:
        depth_metrics(np.ones((240, 320)), np.ones((240, 320)), crop="eigen")
    # both ways to turn it off: the CLI option and the Python argument
    assert "`--crop none` in eval-depth" in str(exc.value) and "val_evaluator.crop=None" in str(exc.value) and "crop=None in Python" in str(exc.value)


def test_garg_crop_mask_positions():
    # on the kb-cropped 352x1216 KITTI frame: rows int(0.40810811*352)=143 : int(0.99189189*352)=349,
    # cols int(0.03594771*1216)=43 : int(0.96405229*1216)=1172
    m = crop_mask((352, 1216), "garg")
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (143, 349, 43, 1172)
    assert m.sum() == (349 - 143) * (1172 - 43)
    # on the raw 375x1242 frame: rows 153:371, cols 44:1197
    m = crop_mask((375, 1242), "garg")
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    assert (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) == (153, 371, 44, 1197)
    # explicit crop
    m = crop_mask((4, 5), (1, 3, 2, 5))
    assert m.sum() == 6 and m[1:3, 2:5].all()
    with pytest.raises(ValueError, match="does not fit"):
        crop_mask((4, 5), (1, 3, 2, 6))
    with pytest.raises(ValueError, match="unknown crop"):
        crop_mask((4, 5), "kitti")
    assert crop_mask((4, 5), None) is None and crop_mask((4, 5), "none") is None


def test_kb_crop():
    a = np.arange(375 * 1242).reshape(375, 1242)
    c = kb_crop(a)
    assert c.shape == (352, 1216)
    assert c[0, 0] == a[375 - 352, (1242 - 1216) // 2] == a[23, 13]
    assert kb_crop(torch.zeros(1, 352, 1216)).shape == (1, 352, 1216)
    with pytest.raises(ValueError, match="at least"):
        kb_crop(np.zeros((300, 1216)))


def test_median_scaling_invariance():
    rng = np.random.default_rng(2)
    gt = rng.uniform(1, 8, (20, 20))
    pred = gt * rng.uniform(0.8, 1.25, gt.shape)
    base = depth_metrics(pred, gt, median_scaling=True)
    for c in (0.01, 0.37, 3.0, 1000.0):  # relative depth of any scale
        assert depth_metrics(pred * c, gt, median_scaling=True) == pytest.approx(base)
    assert depth_metrics(pred * 0.37, gt)["abs_rel"] > base["abs_rel"]  # without scaling it matters
    perfect = depth_metrics(gt * 0.2, gt, median_scaling=True)
    assert perfect["abs_rel"] == pytest.approx(0, abs=1e-12) and perfect["d1"] == 1
    with pytest.raises(ValueError, match="median"):
        depth_metrics(np.zeros_like(gt), gt, median_scaling=True)


def test_per_image_averaging_differs_from_pooled():
    # image A: one valid pixel, gt 1, pred 2 -> abs_rel 1
    # image B: three valid pixels, gt 1, pred 1 -> abs_rel 0
    # per image (toolbox): (1 + 0) / 2 = 0.5; pooled over the four pixels: 1 / 4 = 0.25
    gt_a, pred_a = np.array([[1.0, 0.0, 0.0, 0.0]]), np.array([[2.0, 1.0, 1.0, 1.0]])
    gt_b, pred_b = np.array([[1.0, 1.0, 1.0, 0.0]]), np.array([[1.0, 1.0, 1.0, 1.0]])
    acc = DepthAccumulator()
    acc.update(pred_a, gt_a)
    acc.update(pred_b, gt_b)
    assert acc.compute()["abs_rel"] == pytest.approx(0.5)
    pooled = depth_metrics(np.concatenate([pred_a, pred_b], 1), np.concatenate([gt_a, gt_b], 1))
    assert pooled["abs_rel"] == pytest.approx(0.25)


def test_prediction_clipping_and_bad_predictions():
    gt = np.array([[5.0, 5.0]])
    # 20 -> 10 (max_depth), -3 -> 1e-3 (min_depth); +inf -> 10
    r = depth_metrics(np.array([[20.0, 5.0]]), gt, max_depth=10)
    assert r["abs_rel"] == pytest.approx((5 / 5 + 0) / 2)
    r = depth_metrics(np.array([[-3.0, 5.0]]), gt, max_depth=10)
    assert r["abs_rel"] == pytest.approx(((5 - 1e-3) / 5) / 2)
    assert depth_metrics(np.array([[np.inf, 5.0]]), gt)["abs_rel"] == pytest.approx(0.5)
    # NaN -> min_depth, as BTS and AdaBins (it raised: one NaN pixel stopped a whole evaluation)
    assert depth_metrics(np.array([[np.nan, 5.0]]), gt)["abs_rel"] == pytest.approx(((5 - 1e-3) / 5) / 2)
    # NaN where the gt is invalid does not matter
    assert depth_metrics(np.array([[np.nan, 5.0]]), np.array([[0.0, 5.0]]))["abs_rel"] == 0


def test_invalid_predictions_are_counted_on_evaluated_pixels():
    # 480x640 under the Eigen crop; junk outside the crop or on invalid ground truth is not counted
    gt = np.full((480, 640), 4.0)
    gt[100, 100:110] = 0.0  # no measurement
    pred = np.full((480, 640), 4.0)
    pred[0, :] = -np.inf  # outside the crop (rows 45:471)
    pred[100, 100:110] = -1.0  # invalid ground truth
    pred[200, 200], pred[200, 201] = np.inf, -np.inf  # 2 non-finite (-inf is not "negative")
    pred[300, 300:305] = -0.5  # 5 negative
    pred[310, 300:307] = 0.0  # 7 zero
    acc = DepthAccumulator(crop="eigen", median_scaling=True)  # counted before scaling and clipping
    r = acc.update(pred, gt)
    assert r == pytest.approx(depth_metrics(pred, gt, crop="eigen", median_scaling=True))  # metrics unchanged
    assert acc.per_image_invalid[-1] == dict(nonfinite_pixels=2, negative_pixels=5, zero_pixels=7, images=1,
                                             all_zero_images=0, below_min_pixels=0, above_max_pixels=0,
                                             pixels=(471 - 45) * (601 - 41) - 10,
                                             measured_pixels=(471 - 45) * (601 - 41) - 10, outside_range_pixels=0)
    acc.update(gt, gt)  # clean
    acc.update(np.zeros((480, 640)), np.zeros((480, 640)))  # no valid gt: skipped, nothing counted
    blank = np.full((480, 640), 7.0)
    blank[45:471, 41:601] = 0.0  # zero on every evaluated pixel (the rest does not matter)
    acc2 = DepthAccumulator(crop="eigen")
    acc2.update(blank, gt)
    assert acc2.invalid_predictions() == dict(nonfinite_pixels=0, negative_pixels=0,
                                              zero_pixels=(471 - 45) * (601 - 41) - 10, images=1, all_zero_images=1)
    out = acc.compute()
    assert out["count"] == 2 and out["skipped"] == 1
    assert {k: out["invalid_pred_" + k] for k in INVALID_PREDICTION_KEYS} == acc.invalid_predictions() == dict(
        nonfinite_pixels=2, negative_pixels=5, zero_pixels=7, images=1, all_zero_images=0)
    clean = DepthAccumulator()
    clean.update(D_PRED, D_GT)
    assert all(clean.compute()["invalid_pred_" + k] == 0 for k in INVALID_PREDICTION_KEYS)
    acc.reset()
    assert acc.invalid_predictions() == dict.fromkeys(INVALID_PREDICTION_KEYS, 0)


def test_shapes_and_resize():
    gt = np.full((4, 4), 2.0)
    with pytest.raises(ValueError, match="resize"):
        depth_metrics(np.full((2, 2), 2.0), gt)
    assert depth_metrics(np.full((2, 2), 2.0), gt, resize=True)["abs_rel"] == pytest.approx(0)
    with pytest.raises(ValueError, match="one depth map"):
        depth_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 4)))
    with pytest.raises(TypeError, match="unknown"):
        DepthAccumulator(max_dpeth=10)
    with pytest.raises(ValueError, match="min_depth"):
        DepthAccumulator(min_depth=5, max_depth=1)


# ---------------------------------------------------------------------------------------------
# mmengine metrics
# ---------------------------------------------------------------------------------------------


def test_seg_metric_process_and_compute(monkeypatch):
    import dinov2_dense.evaluation.mmengine_metrics as mm
    from dinov2_dense.evaluation.mmengine_metrics import SegMetric

    # where print_log writes depends on which mmengine logger is current (other tests create some)
    logged = []
    monkeypatch.setattr(mm, "print_log", lambda msg, *a, **k: logged.append(msg))

    metric = SegMetric(num_classes=4, class_names=["wall", "floor", "sky", "tree"])
    g, p = torch.from_numpy(GT), torch.from_numpy(PRED)
    # one batch with the first row, one with the second (1xW maps), one all-ignored sample;
    # mmseg-style PixelData dicts ({"data": (1, H, W)}) and plain tensors both work
    metric.process({}, [dict(pred_sem_seg={"data": p[None, :1]}, gt_sem_seg={"data": g[None, :1]})])
    metric.process({}, [dict(pred_sem_seg=p[1:], gt_sem_seg=g[1:]),
                        dict(pred_sem_seg=torch.zeros(3, 3, dtype=torch.long), gt_sem_seg=torch.full((3, 3), 255))])
    assert len(metric.results) == 3 and all(r.shape == (4, 4) for r in metric.results)  # areas, not maps
    out = metric.compute_metrics(metric.results)
    assert set(out) == {"aAcc", "mIoU", "mAcc"}
    assert out["mIoU"] == pytest.approx(200 / 3) and out["aAcc"] == pytest.approx(80) and out["mAcc"] == pytest.approx(250 / 3)
    assert any("floor" in msg for msg in logged)  # the per-class table names the classes


def test_metrics_through_mmengine_evaluator():
    from mmengine.evaluator import Evaluator
    from mmengine.structures import BaseDataElement, PixelData

    import dinov2_dense.evaluation.mmengine_metrics as mm

    importlib.reload(mm)  # registering twice is harmless (force=True)
    from mmengine.registry import METRICS

    assert METRICS.get("SegMetric") is mm.SegMetric and METRICS.get("DepthMetric") is mm.DepthMetric

    ev = Evaluator([dict(type="SegMetric", num_classes=4), dict(type="DepthMetric", max_depth=10, prefix="depth")])
    seg_samples = [BaseDataElement(pred_sem_seg=PixelData(data=torch.from_numpy(PRED)[None]),
                                   gt_sem_seg=PixelData(data=torch.from_numpy(GT)[None]),
                                   pred_depth=torch.from_numpy(D_PRED).float(), gt_depth=torch.from_numpy(D_GT)[None]),
                   BaseDataElement(pred_sem_seg=PixelData(data=torch.zeros(1, 2, 2, dtype=torch.long)),
                                   gt_sem_seg=PixelData(data=torch.full((1, 2, 2), 255)),
                                   pred_depth=torch.ones(2, 2), gt_depth=torch.zeros(2, 2))]
    ev.process(seg_samples)
    out = ev.evaluate(2)
    assert out["mIoU"] == pytest.approx(200 / 3)
    assert out["depth/abs_rel"] == pytest.approx(0.4, rel=1e-6)
    assert out["depth/count"] == 1


def test_depth_metric_gt_from_data_batch_and_errors():
    from dinov2_dense.evaluation.mmengine_metrics import DepthMetric

    metric = DepthMetric(max_depth=10, silog="depth_anything")
    batch = {"inputs": None, "data_samples": [{"gt_depth_map": torch.from_numpy(D_GT)}]}
    metric.process(batch, [{"pred_depth": torch.from_numpy(D_PRED)}])
    out = metric.compute_metrics(metric.results)
    assert set(out) == set(DEPTH_METRIC_KEYS) | {"count"} | {"invalid_pred_" + k for k in INVALID_PREDICTION_KEYS} | {
        "clipped_pred_below_min_pixels", "clipped_pred_above_max_pixels", "gt_measured_pixels", "gt_outside_range_pixels"}
    assert out["abs_rel"] == pytest.approx(0.4) and out["count"] == 1
    with pytest.raises(KeyError, match="ground truth"):
        metric.process({}, [{"pred_depth": torch.ones(2, 2)}])
    with pytest.raises(ValueError, match="silog"):
        DepthMetric(silog="nope")


def test_depth_metric_reports_and_warns_invalid_predictions(monkeypatch):
    import logging

    import dinov2_dense.evaluation.mmengine_metrics as mm

    logged = []
    monkeypatch.setattr(mm, "print_log", lambda msg, *a, level=logging.INFO, **k: logged.append((level, msg)))
    metric = mm.DepthMetric(max_depth=10)
    pred = D_PRED.copy()
    pred[0, 0], pred[0, 1], pred[1, 1] = np.inf, -3.0, np.nan  # NaN where the gt is invalid: not evaluated
    metric.process({}, [dict(pred_depth=torch.from_numpy(pred), gt_depth=torch.from_numpy(D_GT)),
                        dict(pred_depth=torch.zeros(2, 2), gt_depth=torch.from_numpy(D_GT))])
    out = metric.compute_metrics(metric.results)
    assert {k: out["invalid_pred_" + k] for k in INVALID_PREDICTION_KEYS} == dict(
        nonfinite_pixels=1, negative_pixels=1, zero_pixels=3, images=2, all_zero_images=1)
    warnings = [msg for level, msg in logged if level == logging.WARNING]
    assert len(warnings) == 1
    assert "in 2 of 2 image(s)" in warnings[0] and "1 non-finite, 1 negative, 3 zero pixel(s)" in warnings[0]
    assert "1 image(s) zero on every evaluated pixel" in warnings[0]
    # clean predictions: zero counts and no warning
    logged.clear()
    metric = mm.DepthMetric(max_depth=10)
    metric.process({}, [dict(pred_depth=torch.from_numpy(D_PRED), gt_depth=torch.from_numpy(D_GT))])
    out = metric.compute_metrics(metric.results)
    assert all(out["invalid_pred_" + k] == 0 for k in INVALID_PREDICTION_KEYS)
    assert not [msg for level, msg in logged if level == logging.WARNING]


def test_out_of_range_predictions_are_counted_after_median_scaling():
    """The pixels the clipping moves: finite positive ones below min_depth or above max_depth, counted on
    the evaluated pixels after median scaling (what is clipped), apart from the invalid ones."""
    gt = np.full((6, 8), 2.0)
    gt[0, :] = 0  # not evaluated
    pred = np.full((6, 8), 2.0)
    pred[0, :] = 50.0  # on invalid ground truth: not counted
    pred[1, :3] = 12.0  # 3 above 10 m
    pred[2, :2] = 1e-4  # 2 below 1e-3 m
    pred[3, 0] = np.inf  # non-finite: counted as invalid, not here
    acc = DepthAccumulator(max_depth=10.0)
    acc.update(pred, gt)
    assert acc.clipped_predictions() == {"below_min_pixels": 2, "above_max_pixels": 3}
    assert acc.invalid_predictions()["nonfinite_pixels"] == 1
    out = acc.compute()
    assert out["clipped_pred_below_min_pixels"] == 2 and out["clipped_pred_above_max_pixels"] == 3
    scaled = DepthAccumulator(max_depth=10.0, median_scaling=True)
    scaled.update(pred * 10, gt)  # all but 2 above 10 m, until scaled back by median(gt) / median(pred) = 1/10
    assert scaled.clipped_predictions() == {"below_min_pixels": 2, "above_max_pixels": 3}


def test_depth_png_units_round_clip_and_name_the_scale_that_does_not_fit():
    """One conversion for every 16-bit depth PNG written (test --out, the mmseg metric's output_dir, the
    demo): depth x scale rounded, negatives 0; a depth the scale cannot fit is refused naming the option."""
    import numpy as np

    from dinov2_dense.evaluation.depth import depth_png_units

    got = depth_png_units(np.array([[0.0, 1.2344, -0.5], [65.535, 10.0, 0.0005]], dtype=np.float32), 1000.0)
    assert got.dtype == np.uint16 and got.tolist() == [[0, 1234, 0], [65535, 10000, 0]]
    with pytest.raises(ValueError, match=r"depth up to 80\.0 m does not fit a 16-bit PNG at depth_scale_factor=1000 "
                                         r"\(units per metre\); use a smaller depth_scale_factor"):
        depth_png_units(np.array([80.0]), 1000.0, "depth_scale_factor")
