"""tools/eval_depth.py end to end on temporary directories of 16-bit PNGs and .npy files."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dinov2_dense.evaluation import DEPTH_METRIC_KEYS, INVALID_PREDICTION_KEYS, DepthAccumulator, kb_crop
from dinov2_dense.evaluation.depth_files import match_depth_files, read_depth

ROOT = Path(__file__).resolve().parents[1]
KEYS = set(DEPTH_METRIC_KEYS)


def _tool():
    spec = importlib.util.spec_from_file_location("eval_depth_tool", ROOT / "tools" / "eval_depth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _png(path: Path, metres: np.ndarray, scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.round(metres * scale).astype(np.uint16))


def _nyu_like(tmp_path: Path, n: int = 3, seed: int = 0):
    """GT as 16-bit PNGs in mm (480x640, holes of zero depth); predictions as .npy (metres) and PNG (mm)."""
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    pairs = []
    for i in range(n):
        gt = rng.uniform(0.5, 9.0, (480, 640))
        gt[rng.random(gt.shape) < 0.2] = 0  # missing measurements
        pred = np.clip(gt * rng.uniform(0.8, 1.25, gt.shape) + (gt == 0), 0.1, 12)
        _png(gt_dir / f"{i:05d}.png", gt, 1000)
        if i % 2:
            _png(pred_dir / f"{i:05d}.png", pred, 1000)
        else:
            pred_dir.mkdir(parents=True, exist_ok=True)
            np.save(pred_dir / f"{i:05d}.npy", pred.astype(np.float32))
        pairs.append((read_depth(pred_dir / f"{i:05d}.{'png' if i % 2 else 'npy'}", 1000),
                      read_depth(gt_dir / f"{i:05d}.png", 1000)))
    return pred_dir, gt_dir, pairs


def test_nyu_end_to_end_png_and_npy(tmp_path, capsys):
    pred_dir, gt_dir, pairs = _nyu_like(tmp_path)
    out = tmp_path / "res" / "metrics.json"
    rc = _tool()([str(pred_dir), str(gt_dir), "--dataset", "nyu", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    metrics = json.loads(out.read_text())
    # the nine metrics at the top level, then the bookkeeping; clean predictions: zero counts, no warning
    assert set(metrics) == KEYS | {"images", "skipped_images", "invalid_predictions", "clipped_predictions",
                                   "ground_truth"}
    assert metrics["images"] == 3 and metrics["skipped_images"] == 0
    assert metrics["invalid_predictions"] == dict.fromkeys(INVALID_PREDICTION_KEYS, 0)
    # the predictions reach 12 m, clipped to 10: counted on the Eigen crop's valid pixels
    crop = np.zeros((480, 640), bool)
    crop[45:471, 41:601] = True
    above = sum(int(((p > 10) & (g > 1e-3) & (g < 10) & crop).sum()) for p, g in pairs)
    assert above > 0 and metrics["clipped_predictions"] == {"below_min_pixels": 0, "above_max_pixels": above}
    assert "warning" not in captured.err
    acc = DepthAccumulator(min_depth=1e-3, max_depth=10.0, crop="eigen")
    for pred, gt in pairs:
        acc.update(pred, gt)
    expected = acc.compute()
    for k in KEYS:
        assert metrics[k] == pytest.approx(expected[k], rel=1e-9), k
    assert "images evaluated: 3" in captured.out and "abs_rel" in captured.out and "eigen" in captured.out
    assert not [p for p in out.parent.iterdir() if p.name != "metrics.json"]  # no temp file left behind


def test_unmatched_files_are_reported_and_strict_fails(tmp_path, capsys):
    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=2)
    np.save(pred_dir / "extra_pred.npy", np.ones((480, 640), np.float32))
    _png(gt_dir / "extra_gt.png", np.ones((480, 640)), 1000)
    (pred_dir / "notes.txt").write_text("not a depth map")  # other files are ignored
    main = _tool()
    assert main([str(pred_dir), str(gt_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "1 prediction(s) without ground truth" in err and "extra_pred.npy" in err
    assert "1 ground-truth file(s) without prediction" in err and "extra_gt.png" in err
    assert main([str(pred_dir), str(gt_dir), "--no-progress", "--strict"]) == 2
    assert "without prediction" in capsys.readouterr().err


def test_no_match_is_an_error_and_leaves_out_untouched(tmp_path, capsys):
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir()
    np.save(pred_dir / "a.npy", np.ones((480, 640)))
    _png(gt_dir / "b.png", np.ones((480, 640)), 1000)
    out = tmp_path / "metrics.json"
    old = json.dumps({**{k: 0.5 for k in KEYS}, "images": 1})  # an earlier run's metrics: --overwrite replaces them
    out.write_text(old)
    assert _tool()([str(pred_dir), str(gt_dir), "--out", str(out), "--no-progress", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "no prediction matches" in err and "a" in err and "b" in err
    assert out.read_text() == old
    assert _tool()([str(tmp_path / "missing"), str(gt_dir), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_kitti_kb_and_garg_crop(tmp_path, capsys):
    rng = np.random.default_rng(3)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gts, preds = [], []
    for i in range(2):
        gt = np.where(rng.random((375, 1242)) < 0.1, rng.uniform(2, 85, (375, 1242)), 0.0)  # sparse lidar
        _png(gt_dir / "drive_1" / f"{i:010d}.png", gt, 256)
        pred = rng.uniform(1, 80, (352, 1216))  # predictions at the kb-cropped size
        pred_dir.mkdir(exist_ok=True)
        np.save(pred_dir / f"{i:010d}.npy", pred)  # flat folder: matched by stem
        gts.append(read_depth(gt_dir / "drive_1" / f"{i:010d}.png", 256))
        preds.append(pred)
    out = tmp_path / "m.json"
    assert _tool()([str(pred_dir), str(gt_dir), "--dataset", "kitti", "--out", str(out), "--no-progress"]) == 0
    acc = DepthAccumulator(min_depth=1e-3, max_depth=80.0, crop="garg")
    for p, g in zip(preds, gts):
        acc.update(p, kb_crop(g))
    metrics = json.loads(out.read_text())
    for k in KEYS:
        assert metrics[k] == pytest.approx(acc.compute()[k], rel=1e-9)
    assert "garg" in capsys.readouterr().out


def test_folder_preset_options_and_bad_files(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = np.full((20, 30), 4.0)
    _png(gt_dir / "x.png", gt, 100)
    _png(pred_dir / "x.png", gt * 3, 100)
    main = _tool()
    # folder: PNGs need a declared scale
    assert main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--no-progress"]) == 2
    assert "--gt-scale" in capsys.readouterr().err
    # median scaling turns a 3x relative prediction into a perfect one; --max-depth above 10 is respected
    out = tmp_path / "m.json"
    rc = main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--gt-scale", "100", "--median-scaling",
               "--max-depth", "20", "--out", str(out), "--no-progress"])
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["abs_rel"] == pytest.approx(0) and m["d1"] == 1
    # an 8-bit (coloured) PNG is refused with its file name
    cv2.imwrite(str(pred_dir / "x.png"), np.zeros((20, 30, 3), np.uint8))
    assert main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--gt-scale", "100", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "16-bit" in err and "x.png" in err
    # a corrupt PNG, too
    (pred_dir / "x.png").write_bytes(b"\x89PNG garbage")
    assert main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--gt-scale", "100", "--no-progress"]) == 2
    assert "x.png" in capsys.readouterr().err
    # predictions of another size: an error naming both files, or --resize
    np.save(pred_dir / "x.npy", np.full((10, 15), 4.0))
    (pred_dir / "x.png").unlink()
    assert main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--gt-scale", "100", "--no-progress"]) == 2
    assert "x.npy" in capsys.readouterr().err
    assert main([str(pred_dir), str(gt_dir), "--dataset", "folder", "--gt-scale", "100", "--resize",
                 "--no-progress"]) == 0


def test_all_invalid_ground_truth_is_an_error(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    _png(gt_dir / "x.png", np.zeros((480, 640)), 1000)  # zero depth everywhere
    pred_dir.mkdir()
    np.save(pred_dir / "x.npy", np.ones((480, 640)))
    assert _tool()([str(pred_dir), str(gt_dir), "--no-progress"]) == 2
    assert "valid pixel" in capsys.readouterr().err


def test_matching_by_relative_path_and_duplicate_stems(tmp_path):
    for side in ("pred", "gt"):
        for d in ("a", "b"):
            (tmp_path / side / d).mkdir(parents=True)
            np.save(tmp_path / side / d / "0001.npy", np.ones((2, 2)))
    pairs, up, ug = match_depth_files(tmp_path / "pred", tmp_path / "gt")
    assert [k for k, _, _ in pairs] == ["a/0001", "b/0001"] and not up and not ug
    # a flat prediction folder against nested gt with the same stem twice: ambiguous
    flat = tmp_path / "flat"
    flat.mkdir()
    np.save(flat / "0001.npy", np.ones((2, 2)))
    with pytest.raises(ValueError, match="twice"):
        match_depth_files(flat, tmp_path / "gt")


def test_script_runs_as_a_program(tmp_path):
    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "eval_depth.py"), str(pred_dir), str(gt_dir),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rmse" in proc.stdout


def _invalid_prediction_folder(tmp_path: Path):
    """Three 8x10 images, .npy metres, folder preset (0.001..10 m, no crop).

    a: +inf and -inf on valid pixels, 3 negative pixels, 1 zero pixel, and junk (NaN, -5, 0) on
       pixels whose ground truth is invalid (not evaluated, so not counted);
    b: zero everywhere (a blank output); c: clean.
    """
    rng = np.random.default_rng(7)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gts, preds = {}, {}
    for name in "abc":
        gt = rng.uniform(1.0, 5.0, (8, 10))
        gt[7, :4] = 0.0  # no measurement: 4 invalid pixels per image
        gts[name] = gt
        preds[name] = gt * rng.uniform(0.8, 1.2, gt.shape)
    a = preds["a"]
    a[0, 0], a[0, 1] = np.inf, -np.inf
    a[1, :3] = -2.0
    a[2, 5] = 0.0
    a[7, 0], a[7, 1], a[7, 2] = np.nan, -5.0, 0.0  # where the ground truth is invalid
    preds["b"] = np.zeros((8, 10))
    for name in "abc":
        np.save(gt_dir / f"{name}.npy", gts[name])
        np.save(pred_dir / f"{name}.npy", preds[name])
    return pred_dir, gt_dir, gts, preds


def test_invalid_predictions_are_counted_warned_and_written(tmp_path, capsys):
    pred_dir, gt_dir, gts, preds = _invalid_prediction_folder(tmp_path)
    out = tmp_path / "m.json"
    rc = _tool()([str(pred_dir), str(gt_dir), "--dataset", "folder", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(out.read_text())
    valid_per_image = 8 * 10 - 4
    expected = {"nonfinite_pixels": 2, "negative_pixels": 3, "zero_pixels": 1 + valid_per_image,
                "images": 2, "all_zero_images": 1}
    assert data["invalid_predictions"] == expected
    assert data["images"] == 3 and data["skipped_images"] == 0
    # the metrics are those of the protocol: the same as scoring the predictions clipped by hand
    acc = DepthAccumulator(min_depth=1e-3, max_depth=10.0)
    for name in "abc":
        acc.update(np.clip(np.nan_to_num(preds[name], nan=1.0), 1e-3, 10.0), gts[name])
    for k in KEYS:
        assert data[k] == pytest.approx(acc.compute()[k], rel=1e-12), k
    assert acc.compute()["invalid_pred_images"] == 0  # clipped by hand: nothing left to count
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, captured.err
    assert ("invalid predictions on evaluated pixels in 2 of 3 image(s)" in warnings[0]
            and "2 non-finite, 3 negative, 77 zero pixel(s): a, b" in warnings[0])
    assert "1 prediction(s) zero on every evaluated pixel" in warnings[1] and warnings[1].endswith(": b")
    assert "warning" not in captured.out


def test_nan_prediction_pixels_are_counted_and_scored_as_min_depth_as_bts_does(tmp_path, capsys):
    """A NaN prediction pixel stopped the whole evaluation (exit 2) while +inf was counted and clipped (a
    reviewer); it is counted with the non-finite pixels now and becomes min_depth, as in BTS and AdaBins."""
    pred_dir, gt_dir, gts, preds = _invalid_prediction_folder(tmp_path)
    preds["c"][3, 3] = np.nan
    np.save(pred_dir / "c.npy", preds["c"])
    out = tmp_path / "m.json"
    assert _tool()([str(pred_dir), str(gt_dir), "--dataset", "folder", "--out", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["invalid_predictions"]["nonfinite_pixels"] == 3  # a's +inf and -inf, c's NaN
    c = preds["c"].copy()
    c[3, 3] = 1e-3
    valid = gts["c"] > 1e-3
    alone = DepthAccumulator(min_depth=1e-3, max_depth=10.0)
    alone.update(preds["c"], gts["c"])  # with its NaN
    assert float(np.mean(np.abs(np.clip(c[valid], 1e-3, 10) - gts["c"][valid]) / gts["c"][valid])) == \
        pytest.approx(alone.compute()["abs_rel"])
    assert "1 non-finite" not in capsys.readouterr().err  # (3 in all: the warning counts them together)


@pytest.mark.parametrize("option, value, message", [
    ("--gt-scale", "0", "expected a number > 0"),
    ("--gt-scale", "abc", "is not a number"),
    ("--pred-scale", "-1000", "expected a number > 0"),
    ("--min-depth", "-0.1", "expected a number >= 0"),
    ("--max-depth", "0", "expected a number > 0"),
    ("--max-depth", "nan", "expected a finite number"),
    ("--max-depth", "inf", "expected a finite number"),
])
def test_bad_option_values_exit_2_at_parse_time(tmp_path, capsys, option, value, message):
    with pytest.raises(SystemExit) as exc:  # refused while parsing, before any file is read
        _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), option, value, "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert f"argument {option}: " in line and message in line and value in line


def test_min_depth_not_below_max_depth_exits_2(tmp_path, capsys):
    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=1)
    main = _tool()
    assert main([str(pred_dir), str(gt_dir), "--min-depth", "5", "--max-depth", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dinov2-dense eval-depth: error: --max-depth 1 must be greater than --min-depth 5"
    # the bound not given comes from the preset, and the message says so
    assert main([str(pred_dir), str(gt_dir), "--min-depth", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--max-depth 10 (the nyu preset's)" in err and "--min-depth 10" in err


def test_eigen_crop_on_other_sizes_names_the_option(tmp_path, capsys):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    _png(gt_dir / "x.png", np.full((240, 320), 2.0), 1000)
    pred_dir.mkdir()
    np.save(pred_dir / "x.npy", np.full((240, 320), 2.0))
    main = _tool()
    assert main([str(pred_dir), str(gt_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "480x640" in err and "--crop none" in err and "x.npy" in err
    assert main([str(pred_dir), str(gt_dir), "--crop", "none", "--no-progress"]) == 0


def test_cli_eval_depth_exit_codes(tmp_path, capsys):
    from dinov2_dense.cli import main

    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=1)
    assert main(["eval-depth", str(pred_dir), str(gt_dir), "--no-progress"]) == 0
    assert main(["eval-depth", str(tmp_path / "missing"), str(gt_dir), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval-depth", str(pred_dir), str(gt_dir), "--gt-scale", "-1"])
    assert exc.value.code == 2 and "--gt-scale" in capsys.readouterr().err


@pytest.mark.parametrize("dataset, settings, expected", [
    ("kitti", dict(gt_scale=256.0, kb_crop=True, max_depth=80.0, crop="garg"), []),  # configs/_base_/datasets/kitti.py
    ("nyu", dict(gt_scale=1000.0, crop="eigen"), []),  # nyu.py
    ("nyu", dict(gt_scale=1000.0, crop=None), ["--crop", "none"]),  # synthetic_depth.py: no crop
    ("folder", dict(gt_scale=1000.0), ["--gt-scale", "1000"]),
    ("kitti", dict(gt_scale=256.0, kb_crop=False, min_depth=0.5, max_depth=60.0, crop="eigen", median_scaling=True,
                   silog="depth_anything", resize=True),
     ["--min-depth", "0.5", "--max-depth", "60", "--crop", "eigen", "--no-kb-crop", "--median-scaling", "--silog",
      "depth_anything", "--resize"]),
])
def test_eval_depth_options_evaluate_as_the_settings_say(dataset, settings, expected):
    """What `test --out` tells to run: the options parse, and with the preset filled in they give back every setting."""
    import argparse

    from dinov2_dense.cli import _add_eval_depth_arguments
    from dinov2_dense.evaluation.depth_files import DATASET_PRESETS, eval_depth_options

    opts = eval_depth_options(dataset, pred_scale=250.0, **settings)
    head, tail = (expected[:2], expected[2:]) if dataset == "folder" else ([], expected)  # --gt-scale comes first
    assert opts == ["--dataset", dataset, *head, "--pred-scale", "250", *tail]
    args = _add_eval_depth_arguments(argparse.ArgumentParser()).parse_args(["pred", "gt", *opts])
    preset = DATASET_PRESETS[dataset]
    full = dict(dict(min_depth=1e-3, max_depth=10.0, crop=None, kb_crop=False, median_scaling=False, silog="toolbox",
                     resize=False), **settings)
    resolved = dict(min_depth=preset["min_depth"] if args.min_depth is None else args.min_depth,
                    max_depth=preset["max_depth"] if args.max_depth is None else args.max_depth,
                    crop=preset["crop"] if args.crop is None else (None if args.crop == "none" else args.crop),
                    kb_crop=preset["kb_crop"] if args.kb_crop is None else args.kb_crop,
                    gt_scale=preset["gt_scale"] if args.gt_scale is None else args.gt_scale,
                    median_scaling=args.median_scaling, silog=args.silog, resize=args.resize)
    assert resolved == full and args.pred_scale == 250.0


def test_eval_depth_options_refuse_a_crop_box():
    from dinov2_dense.evaluation.depth_files import eval_depth_options

    with pytest.raises(ValueError, match=r"crop box \(1, 2, 3, 4\)"):
        eval_depth_options("nyu", pred_scale=1000.0, crop=(1, 2, 3, 4))


def test_hidden_files_and_folders_are_not_read(tmp_path, capsys):
    """Notebook checkpoints, macOS ._ files and writers' temp files beside the predictions are not data:
    no duplicate-name error, no unmatched-file warning."""
    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=2)
    (gt_dir / "s1").mkdir()
    for f in list(gt_dir.glob("*.png")):
        f.rename(gt_dir / "s1" / f.name)  # nested ground truth: predictions matched by stem
    (pred_dir / ".ipynb_checkpoints").mkdir()
    np.save(pred_dir / ".ipynb_checkpoints" / "00000.npy", np.ones((480, 640), np.float32))
    np.save(pred_dir / "._00001.npy", np.ones((480, 640), np.float32))
    pairs, unmatched_pred, unmatched_gt = match_depth_files(pred_dir, gt_dir)
    assert [name for name, _, _ in pairs] == ["00000", "00001"] and unmatched_pred == unmatched_gt == []
    assert _tool()([str(pred_dir), str(gt_dir), "--dataset", "nyu", "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_kitti_resize_takes_a_whole_frame_prediction_to_the_frame_before_the_crop(tmp_path, capsys):
    """A prediction of the raw frame at half its size: resized onto the 352x1216 crop, its rows and
    columns would not be the ground truth's; it is resized to the frame, then cropped."""
    rows, cols = np.mgrid[0:376, 0:1242].astype(np.float64)
    gt = 5.0 + 0.02 * cols + 0.05 * rows  # linear: bilinear resampling reproduces it inside the frame
    half = 5.0 + 0.02 * (np.arange(621) * 2 + 0.5)[None, :] + 0.05 * (np.arange(188) * 2 + 0.5)[:, None]
    _png(tmp_path / "gt" / "a.png", gt, 256)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "a.npy", half.astype(np.float32))
    out = tmp_path / "m.json"
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--resize", "--out",
                    str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["abs_rel"] < 1e-3  # onto the crop directly: 0.04
    cropped = kb_crop(half.repeat(2, 0).repeat(2, 1))  # a prediction of the crop's own size is taken as it is
    np.save(tmp_path / "pred" / "a.npy", cropped.astype(np.float32))
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--resize", "--out",
                    str(out), "--no-progress", "--overwrite"]) == 0
    assert json.loads(out.read_text())["abs_rel"] < 0.01
    # a prediction of the crop at half its size (a model run on the cropped input): onto the crop, not the frame
    top, left = 376 - 352, (1242 - 1216) // 2
    crop_half = 5.0 + 0.02 * (left + np.arange(608) * 2 + 0.5)[None, :] + 0.05 * (top + np.arange(176) * 2 + 0.5)[:, None]
    np.save(tmp_path / "pred" / "a.npy", crop_half.astype(np.float32))
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--resize", "--out",
                    str(out), "--no-progress", "--overwrite"]) == 0
    assert json.loads(out.read_text())["abs_rel"] < 1e-3
    # without --resize the shapes must match: the message names the crop's shape as the kb-crop's and the
    # file's own (it named the cropped (352, 1216) as the ground truth's shape of a 376x1242 file)
    capsys.readouterr()
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "ground-truth shape (352, 1216)" in err and "(the ground truth's kb-crop; the file is 376x1242)" in err


def test_integer_npy_is_read_in_units_like_a_png_and_out_of_range_is_reported(tmp_path, capsys):
    """Millimetres saved with np.save are not metres: divided by the scale (the preset's or --pred-scale),
    refused without one; a prediction far above the range (units off by 1000) is reported, not silent."""
    gt = np.full((48, 64), 2.0)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "gt" / "a.npy", gt)
    np.save(tmp_path / "pred" / "a.npy", np.full((48, 64), 2500, np.uint16))
    args = [str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "folder", "--no-progress"]
    assert _tool()(args) == 2
    err = capsys.readouterr().err
    assert "a.npy: a .npy of integers (uint16; metres are floats), but its scale was not given" in err
    out = tmp_path / "m.json"
    assert _tool()(args + ["--pred-scale", "1000", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["abs_rel"] == pytest.approx(0.25)
    np.save(tmp_path / "pred" / "a.npy", np.full((48, 64), 2500.0))  # metres that are millimetres
    assert _tool()(args + ["--out", str(out), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert json.loads(out.read_text())["clipped_predictions"] == {"below_min_pixels": 0, "above_max_pixels": 48 * 64}
    assert "warning: 0 prediction pixel(s) below 0.001 m and 3072 above 10 m, of 3072 evaluated" in err
    assert "wrong units? .npy floats are read as metres)" in err


def test_ground_truth_read_in_wrong_units_is_counted_and_warned_of(tmp_path, capsys):
    """NYU millimetre PNGs read as KITTI's 1/256 m (--gt-scale 256) put most of the ground truth beyond 10 m:
    those pixels were dropped without a word, and the metrics looked plausible. The measured and
    out-of-range ground-truth pixels are now counted (--out: "ground_truth"), and more than a tenth
    outside the range is a warning naming --gt-scale; the right scale counts none outside."""
    pred_dir, gt_dir, pairs = _nyu_like(tmp_path)
    crop = np.zeros((480, 640), bool)
    crop[45:471, 41:601] = True
    measured = sum(int(((g > 0) & crop).sum()) for _, g in pairs)
    for scale, outside in ((1000, 0), (256, None)):
        out = tmp_path / f"m{scale}.json"
        rc = _tool()([str(pred_dir), str(gt_dir), "--dataset", "nyu", "--gt-scale", str(scale), "--pred-scale",
                      "1000", "--out", str(out), "--no-progress"])
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        truth = json.loads(out.read_text())["ground_truth"]
        if outside is None:  # read in 1/256 m: everything measured beyond 10 m * 256 / 1000 = 2.56 m (true)
            gts = [read_depth(gt_dir / f"{i:05d}.png", 256) for i in range(3)]
            outside = sum(int(((g > 0) & crop & ~((g > 1e-3) & (g < 10))).sum()) for g in gts)
            assert outside > 0.5 * measured
            warning = [ln for ln in captured.err.splitlines() if "ground-truth pixels" in ln]
            assert len(warning) == 1 and warning[0].startswith(f"warning: {outside} of the {measured} measured")
            assert "--gt-scale 256" in warning[0]
        else:
            assert "ground-truth pixels" not in captured.err
        assert truth == {"measured_pixels": measured, "outside_range_pixels": outside,
                         "evaluated_pixels": measured - outside}
        assert f"of {measured} measured ground-truth pixels in the crop, {outside} lie outside" in captured.out


def test_a_ground_truth_of_exactly_the_minimum_is_invalid_in_test_and_eval_depth_alike(tmp_path):
    """A 1-mm ground-truth pixel (NYU's min_depth 0.001) read in float32, as the data sets (and the toolbox)
    read it, is 0.0010000000475 > 0.001, and `test` evaluated it; eval-depth reads float64 (0.001, not > 0.001)
    and did not. Compared in the ground truth's own precision, as the toolbox compares, it is invalid in both."""
    import torch

    from dinov2_dense.data.files import read_depth as read_dataset_depth
    from dinov2_dense.evaluation.mmengine_metrics import DepthMetric

    gt = np.full((20, 20), 2.0)
    gt[:10] = 0.001
    _png(tmp_path / "gt" / "a.png", gt, 1000)
    pred = np.full((20, 20), 3.0)
    np.save(tmp_path / "a.npy", pred)
    tool = DepthAccumulator(min_depth=1e-3, max_depth=10.0)
    tool.update(read_depth(tmp_path / "a.npy"), read_depth(tmp_path / "gt" / "a.png", 1000))  # eval-depth's reads
    metric = DepthMetric(min_depth=1e-3, max_depth=10.0)
    dataset_gt = read_dataset_depth(tmp_path / "gt" / "a.png", 1000)
    assert dataset_gt.dtype == np.float32 and float(dataset_gt[0, 0]) > 1e-3  # the float32 value, above the bound
    metric.process({}, [{"pred_depth": torch.from_numpy(pred).float(), "gt_depth": torch.from_numpy(dataset_gt)}])
    ours = metric.compute_metrics(metric.results)
    expected = tool.compute()
    assert expected["rmse"] == pytest.approx(1.0)  # the 2-m half only
    for key in KEYS:
        assert ours[key] == pytest.approx(expected[key], rel=1e-6), key  # before: rmse 2.1206 against 1.0
    assert ours["gt_outside_range_pixels"] == expected["gt_outside_range_pixels"] == 200


def test_kitti_ground_truth_cropped_already_kb_crops_a_whole_frame_prediction(tmp_path, capsys):
    """Ground truth saved kb-cropped (352x1216) and predictions of the whole frame: the error advised
    --resize, which stretched the 375x1242 frame over the crop (a reviewer: abs_rel 0.1909 against 0.2407,
    rows off by up to 23 pixels). A frame at its own size is now kb-cropped as the ground truth was; one of
    a frame's shape at another size is refused, --resize or not."""
    rows, cols = np.mgrid[0:375, 0:1242].astype(np.float64)
    frame = 5.0 + 0.02 * cols + 0.05 * rows
    _png(tmp_path / "gt" / "a.png", kb_crop(frame), 256)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "a.npy", frame.astype(np.float32))  # a perfect prediction of the frame
    out = tmp_path / "m.json"
    main = _tool()
    for extra in ([], ["--resize"]):
        assert main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--out", str(out),
                     "--overwrite", "--no-progress", *extra]) == 0
        assert json.loads(out.read_text())["abs_rel"] < 1e-4, extra  # stretched over the crop: 0.0245
    capsys.readouterr()
    for size in ((188, 621), (434, 1442)):  # the frame at half its size, and at 1.16x (it was kb-cropped as a frame)
        big = cv2.resize(frame, size[::-1], interpolation=cv2.INTER_LINEAR)
        np.save(tmp_path / "pred" / "a.npy", big.astype(np.float32))
        for extra in ([], ["--resize"]):
            assert main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--no-progress",
                         *extra]) == 2
            err = capsys.readouterr().err
            assert "kb-cropped already (352x1216)" in err and f"({size[0]}x{size[1]})" in err and "a.npy" in err, err
    # a prediction of the crop against the raw frame with --no-kb-crop: the error says to keep the kb-crop
    _png(tmp_path / "gt" / "a.png", frame, 256)
    np.save(tmp_path / "pred" / "a.npy", kb_crop(frame).astype(np.float32))
    assert main([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--no-kb-crop", "--resize",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the KITTI benchmark crop's size: evaluate with the kb-crop" in err and "--resize" in err, err


def test_kitti_eigen_crop_is_the_bts_box(tmp_path, capsys):
    """`--crop eigen` on KITTI was refused with a message about the NYU crop only; the KITTI Eigen crop of
    the BTS and AdaBins evaluations is `kitti_eigen`, and the NYU refusal names it for KITTI-shaped maps."""
    from dinov2_dense.evaluation.depth import crop_mask

    h, w = 352, 1216
    mask = crop_mask((h, w), "kitti_eigen")
    rows, cols = np.nonzero(mask)
    # the published box, int(0.3324324 H):int(0.91351351 H), int(0.0359477 W):int(0.96405229 W)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (117, 321, 43, 1172)
    assert mask.sum() == (321 - 117) * (1172 - 43)
    rng = np.random.default_rng(0)
    gt = rng.uniform(2, 70, (h, w))
    pred = gt * rng.uniform(0.7, 1.3, gt.shape)
    _png(tmp_path / "gt" / "a.png", gt, 256)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "a.npy", pred)
    out = tmp_path / "m.json"
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--crop", "kitti_eigen",
                    "--out", str(out), "--no-progress"]) == 0
    g = read_depth(tmp_path / "gt" / "a.png", 256)[117:321, 43:1172]
    p = np.clip(pred[117:321, 43:1172], 1e-3, 80)
    assert json.loads(out.read_text())["abs_rel"] == pytest.approx(float(np.mean(np.abs(p - g) / g)), rel=1e-9)
    capsys.readouterr()
    assert _tool()([str(tmp_path / "pred"), str(tmp_path / "gt"), "--dataset", "kitti", "--crop", "eigen",
                    "--no-progress"]) == 2
    assert "`--crop kitti_eigen`" in capsys.readouterr().err


def test_a_scale_that_is_not_applied_and_predictions_in_other_units_are_warned_of(tmp_path, capsys):
    """--pred-scale given for .npy floats (metres, read without a scale) was dropped without a word, and
    predictions 10x too small (d1 = d2 = d3 = 0) drew no warning; a too-large one did ("wrong units?")."""
    pred_dir, gt_dir, _ = _nyu_like(tmp_path, n=2)  # one .npy of floats, one 16-bit PNG
    main = _tool()
    capsys.readouterr()
    assert main([str(pred_dir), str(gt_dir), "--pred-scale", "1000", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: --pred-scale 1000 is not applied to 1 of the predictions: .npy floats are read as metres" in err
    assert "d1 is" not in err, err
    assert main([str(pred_dir), str(gt_dir), "--no-progress"]) == 0
    assert "--pred-scale" not in capsys.readouterr().err  # left out: nothing was dropped
    assert main([str(pred_dir), str(gt_dir), "--pred-scale", "10000", "--no-progress"]) == 0  # the PNG 10x small
    for f in pred_dir.glob("*.npy"):
        np.save(f, np.load(f) / 10)
    assert main([str(pred_dir), str(gt_dir), "--pred-scale", "10000", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: d1 is 0.0000: hardly any prediction is within 25% of the ground truth; wrong units" in err, err
