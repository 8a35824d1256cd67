"""Fault cases, one (or a few) per class of issue 8: a user's mistake or a fault gives exit code 2
and one line naming the file or option; nothing exits 0 with a wrong result; nothing written
before is lost; a bug is the only exit code 1.

Each case checks the exit code, the message and what is on disk afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense.cli import main
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout

pytestmark = pytest.mark.usefixtures("fresh_mmengine_loggers")

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DINOV2_DENSE_OFFLINE": "1"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, err: str, *names: str) -> None:
    """Exit code 2, no traceback, and the message names what was wrong."""
    assert rc == 2, err
    assert "Traceback" not in err, err
    assert "error:" in err, err
    for name in names:
        assert str(name) in err, (name, err)


def _image(path: Path, h: int = 42, w: int = 56, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_staging_left(parent: Path) -> None:
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(".") and (".partial" in p.name or ".tmp" in p.name
                                                                              or p.name.endswith(".old"))]
    assert not leftovers, leftovers


# -- fixtures: synthetic scenes and a short run --------------------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "ade"
    write_ade20k_layout(root, 24, 6, config=SceneConfig(size=(56, 56)), seed=0, progress=False)
    return root


SIX_CLASSES = {"model.head.num_classes": 6, "val_evaluator.num_classes": 6, "test_evaluator.num_classes": 6}


def _opts(root: Path, iters: int = 4, **extra) -> list[str]:
    opts = {f"{s}_dataloader.dataset.root": str(root) for s in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": iters, "train_cfg.val_interval": iters, "param_scheduler.0.end": 2,
                 "param_scheduler.1.end": iters, "default_hooks.checkpoint.interval": 2,
                 "train_dataloader.batch_size": 4, "model.backbone.img_size": 56,
                 "train_dataloader.dataset.pipeline.crop_size": 56,
                 "train_dataloader.dataset.pipeline.scale": "(112,56)"})
    opts.update(extra)
    return [f"{k}={v}" for k, v in opts.items()]


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """A 4-iteration run of the tiny config: its work dir holds iter_2.pth and iter_4.pth."""
    work = tmp_path_factory.mktemp("run") / "work"
    assert main(["train", str(SEG_CFG), "--work-dir", str(work), "--cfg-options", *_opts(scenes)]) == 0
    return work


# -- silent wrong results ------------------------------------------------------------------------
def test_test_refuses_a_backbone_only_checkpoint(scenes, trained, tmp_path, capsys):
    backbone_only = tmp_path / "backbone_only.pth"
    torch.save({"state_dict": {"backbone.cls_token": torch.zeros(1, 1, 64)}}, backbone_only)
    rc, out, err = run(capsys, "test", SEG_CFG, backbone_only, "--work-dir", tmp_path / "w", "--cfg-options",
                       *_opts(scenes))
    assert_user_error(rc, err, backbone_only, "missing keys", "--partial-load")
    assert "mIoU" not in out  # no metrics of a random head


def test_a_missing_backbone_weights_file_is_named_at_the_start(scenes, tmp_path, capsys):
    """model.backbone_weights naming a file that is not there failed while the runner was built: after the start
    the processes of a torchrun agree on, so each printed it. It is a config error of that start, naming the key."""
    missing = tmp_path / "nope.safetensors"
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--cfg-options",
                     *_opts(scenes, 2, **{"model.backbone_weights": str(missing)}))
    assert_user_error(rc, err, f"model.backbone_weights = '{missing}': no such file")
    assert not (tmp_path / "w").exists()


def test_partial_load_of_a_checkpoint_none_of_whose_keys_fit_is_refused(scenes, trained, tmp_path, capsys):
    """A segmentation checkpoint given to a depth config with --partial-load loaded nothing, warned once, and
    scored the head as built (random) with exit code 0. A partial load that would load nothing is refused."""
    other = tmp_path / "other_task.pth"
    torch.save({"state_dict": {"decode_head.conv_depth.weight": torch.zeros(3, 3)}}, other)
    rc, out, err = run(capsys, "test", SEG_CFG, other, "--partial-load", "--work-dir", tmp_path / "w", "--cfg-options",
                       *_opts(scenes))
    assert_user_error(rc, err, other, "none of its keys fits", "decode_head.conv_depth.weight")
    assert "mIoU" not in out


def test_test_refuses_a_head_for_another_number_of_classes(scenes, trained, tmp_path, capsys):
    ckpt = trained / "iter_4.pth"
    rc, out, err = run(capsys, "test", SEG_CFG, ckpt, "--work-dir", tmp_path / "w", "--cfg-options",
                       *_opts(scenes, **SIX_CLASSES))
    assert_user_error(rc, err, ckpt, "decode_head.conv_seg.weight", "(5, 64, 1, 1) vs (6, 64, 1, 1)")
    assert "mIoU" not in out


def test_resume_refuses_to_train_on_at_the_rate_zero_its_ended_schedule_left(scenes, trained, tmp_path, capsys):
    """A run given train_cfg.max_iters=4 and resumed without it took the config's longer run, and trained on at
    the rate 0 its ended schedule left (PolyLR to eta_min 0), writing checkpoints of unchanged weights and
    pruning older ones, after one warning about "the rate it ended with". Refused, with nothing written."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)

    def checkpoints() -> dict[str, bytes]:  # (a log folder of the same second as the fixture's is shared)
        return {k: v for k, v in _snapshot(work).items() if k.endswith(".pth") or k == "last_checkpoint"}

    before = checkpoints()
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *_opts(scenes, 8))
    assert_user_error(rc, err, work / "iter_4.pth", "learning rate 0", "the 4 iterations to train_cfg.max_iters = 8",
                      "load_from")
    assert checkpoints() == before  # before: iter_6.pth and iter_8.pth of the same weights, iter_2.pth pruned
    # a warm-up longer than the run (its end, 6, after the run's 4) multiplies the rate of 0 the decay left: refused
    # too (the first version took any schedule ending later for one that changes the rate)
    long_warm_up = tmp_path / "long_warm_up"
    assert run(capsys, "train", SEG_CFG, "--work-dir", long_warm_up, "--cfg-options",
               *_opts(scenes, 4, **{"param_scheduler.0.end": 6}))[0] == 0
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", long_warm_up, "--resume", "--cfg-options",
                     *_opts(scenes, 8, **{"param_scheduler.0.end": 6}))
    assert_user_error(rc, err, long_warm_up / "iter_4.pth", "learning rate 0")
    assert sorted(p.name for p in long_warm_up.glob("iter_*.pth")) == ["iter_2.pth", "iter_4.pth"]


def test_resume_refuses_a_shortened_schedule_that_reaches_rate_zero_part_way(scenes, trained, tmp_path, capsys):
    """A run given train_cfg.max_iters=4, stopped at 2 and resumed without it (to 8) decayed to 0 on its last
    iteration, 4, and trained 5 to 8 at rate 0 (a reviewer's: 16 of 24 iterations; only its BatchNorm statistics moved, and mIoU with them):
    only a resume already at rate 0 was refused. Refused now, naming how many iterations; resumed to a lower
    max_iters, the warning says the run stops before its schedule's end (it said the iterations past the end run at
    the rate it ended with: there are none)."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    (work / "iter_4.pth").unlink()  # stopped at 2: its schedule (end 4) has not reached 0
    before = _snapshot(work)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *_opts(scenes, 8))
    assert_user_error(rc, err, work / "iter_2.pth", "ends at iteration 4 at learning rate 0",
                      "4 of the 6 iterations to train_cfg.max_iters = 8 (from iteration 5) would train at rate 0",
                      "load_from")
    assert {k: v for k, v in _snapshot(work).items() if not k.startswith("2")} == \
        {k: v for k, v in before.items() if not k.startswith("2")}  # (log folders aside) nothing written
    # one iteration past its end is refused alike, from before its end or at it (a reviewer: 2 at rate 0 from
    # iter_2 were refused, 1 from iter_4 trained at rate 0: the schedule's own last iteration was counted)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *_opts(scenes, 5))
    assert_user_error(rc, err, work / "iter_2.pth", "1 of the 3 iterations to train_cfg.max_iters = 5 (from iteration 5)")
    ended = tmp_path / "ended"
    shutil.copytree(trained, ended)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", ended, "--resume", "--cfg-options", *_opts(scenes, 5))
    assert_user_error(rc, err, ended / "iter_4.pth", "the 1 iteration to train_cfg.max_iters = 5")
    # the max_iters it was run with: trained on, and the schedule ends at 0 on the last iteration as uninterrupted
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *_opts(scenes, 4))
    assert rc == 0, err
    # resumed to fewer iterations than its schedule: said as it is
    shorter = tmp_path / "shorter"
    shutil.copytree(trained, shorter)
    (shorter / "iter_4.pth").unlink()
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", shorter, "--resume", "--cfg-options",
                       *_opts(scenes, 3))
    assert rc == 0, err
    assert ("a resumed run keeps its schedule, so the run stops at train_cfg.max_iters = 3 before that schedule's "
            "end" in out + err) and "past its end" not in out + err


def test_resume_runs_the_validation_its_checkpoint_was_saved_before(scenes, trained, tmp_path, capsys):
    """mmengine saves iter_N.pth before it validates at N and resumes from N + 1: a run stopped during validation N
    never did it (a reviewer's Ctrl-C in the last one: "the run is complete, nothing is trained", its best checkpoint
    left at an earlier iteration). Each finished validation is recorded; a resume validates first where the record
    does not show the checkpoint's, and says so; once done, a second resume does not validate again."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    record = work / "last_validation.json"
    assert json.loads(record.read_text()) == {"iter": 4}  # the fixture's run validated at 4, its last iteration
    record.write_text('{"iter": 2}')  # as a run stopped during that validation, after one at 2, left it
    opts = _opts(scenes, 4, **{"default_hooks.checkpoint.save_best": "mIoU"})
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *opts)
    assert rc == 0, err
    said = out + err
    assert "the run is complete, nothing is trained" in said
    assert "the validation at iteration 4 did not finish before the run stopped" in said and "Iter(val)" in said
    assert json.loads(record.read_text()) == {"iter": 4} and list(work.glob("best_mIoU_iter_4.pth"))
    # no record (a run of an earlier version, or stopped in its first validation): validated, and said as it is
    record.unlink()
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *opts)
    assert rc == 0 and "the validation at iteration 4 is not recorded in last_validation.json" in out + err
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *opts)
    assert rc == 0 and "did not finish before" not in out + err and "Iter(val)" not in out + err
    # resumed from an older checkpoint (the newest unreadable, or removed), whose validation the record shows
    # done: not validated again (a reviewer's fallback to iter_4 after validation 8 was told it did not finish)
    every2 = tmp_path / "every2"
    opts2 = _opts(scenes, 4, **{"train_cfg.val_interval": 2})
    assert run(capsys, "train", SEG_CFG, "--work-dir", every2, "--cfg-options", *opts2)[0] == 0
    assert json.loads((every2 / "last_validation.json").read_text()) == {"iter": 4}
    (every2 / "iter_4.pth").unlink()
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", every2, "--resume", "--cfg-options", *opts2)
    assert rc == 0 and "did not finish before" not in out + err and "Iter(val)" in out + err  # (the one at 4)
    # a new run in the work dir (--overwrite) does not take the old run's record for its own
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--overwrite", "--cfg-options",
                       *_opts(scenes, 2, **{"train_cfg.val_begin": 3}))
    assert rc == 0, err
    assert not record.exists() and "Iter(val)" not in out + err  # it validated at no iteration: the old run's is gone


def test_resume_on_other_data_says_which(scenes, trained, tmp_path, capsys):
    """A resume given another data root (or split, pipeline, ...) went on silently, and save_best compared the
    scores of two validation sets. Said now, naming the settings; the same data says nothing."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    (work / "iter_4.pth").unlink()
    other = tmp_path / "other_ade"
    shutil.copytree(scenes, other)
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options",
                       *_opts(scenes, 4, **{"val_dataloader.dataset.root": str(other)}))
    assert rc == 0, err
    said = out + err
    assert f"val_dataloader.dataset.root: '{scenes}' -> '{other}'" in said, said[-3000:]
    assert "was trained with other data than this config gives" in said and "save_best compares" in said
    assert "train_dataloader.dataset.root" not in said
    again = tmp_path / "again"
    shutil.copytree(trained, again)
    (again / "iter_4.pth").unlink()
    spelled = f"{scenes}/../{scenes.name}"  # the same folder spelled otherwise: the same data (a reviewer: warned)
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", again, "--resume", "--cfg-options",
                       *_opts(scenes, 4, **{"val_dataloader.dataset.root": spelled}))
    assert rc == 0 and "other data" not in out + err
    # a folder read below the root (img_dir "." and the like) is not taken from the working folder: resumed from
    # another folder, the same data (a reviewer: "other data", from the folder the command ran in)
    from mmengine.config import Config

    from dinov2_dense.engine.runner import _data_record, data_differences

    cfg = Config(dict(train_dataloader=dict(dataset=dict(type="NYUDepthDataset", root="data/nyu", img_dir=".",
                                                         depth_dir="gt"))))
    cwd = os.getcwd()
    try:
        records = []
        for folder in (tmp_path, scenes):
            os.chdir(folder)
            records.append(_data_record(cfg))
    finally:
        os.chdir(cwd)
    assert data_differences(*records) == [
        f"train_dataloader.dataset.root: '{tmp_path}/data/nyu' -> '{scenes}/data/nyu'"]  # the root alone
    # a record of an earlier version kept the root as written: read from the folder the resume runs in
    old = '{"train_dataloader.dataset": {"type": "NYUDepthDataset", "root": "data/nyu", "img_dir": ".", "depth_dir": "gt"}}'
    try:
        os.chdir(tmp_path)
        assert data_differences(old, _data_record(cfg)) == []
    finally:
        os.chdir(cwd)


def test_a_warm_up_from_factor_zero_is_a_config_error(scenes, tmp_path, capsys):
    """LinearLR(start_factor=0) divides by zero in mmengine at the second iteration: that was "internal error (a
    bug in dinov2-dense ...)". It is refused before anything runs, naming the key."""
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--cfg-options",
                     *_opts(scenes, 4, **{"param_scheduler.0.start_factor": 0.0}))
    assert_user_error(rc, err, "param_scheduler.0.start_factor = 0.0", "above 0", "1e-6")
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").glob("iter_*.pth"))


def test_a_one_cycle_run_resumes(scenes, tmp_path, capsys):
    """OneCycleLR's state holds its annealing function: its checkpoints did not load with torch.load(weights_only),
    and a resume said "not a checkpoint of ours nor an official head file" of a file train had written."""
    work = tmp_path / "work"
    opts = [o for o in _opts(scenes, 4) if not o.startswith("param_scheduler")]
    opts.append("param_scheduler=[dict(type='OneCycleLR',eta_max=0.01,total_steps=4,by_epoch=False)]")
    assert run(capsys, "train", SEG_CFG, "--work-dir", work, "--cfg-options", *opts)[0] == 0
    state = torch.load(work / "iter_2.pth", weights_only=True)["param_schedulers"][0]
    assert "anneal_func" not in state and state["total_steps"] == 4
    (work / "iter_4.pth").unlink()
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *opts)
    assert rc == 0, err
    assert torch.load(work / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4


def test_resume_refuses_a_checkpoint_that_does_not_fit(scenes, trained, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_4.pth").write_bytes((trained / "iter_4.pth").read_bytes())
    before = _snapshot(work)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options",
                     *_opts(scenes, 8, **SIX_CLASSES))
    assert_user_error(rc, err, work / "iter_4.pth", "other shapes")
    after = _snapshot(work)
    assert {k: v for k, v in after.items() if k in before} == before  # the checkpoint is untouched
    assert not any(k.startswith("iter_") and k not in before for k in after)  # and nothing was trained


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(scenes, trained, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    for name in ("iter_2.pth", "iter_4.pth"):
        (work / name).write_bytes((trained / name).read_bytes())
    (work / "iter_4.pth").write_bytes((trained / "iter_4.pth").read_bytes()[:3000])  # a broken disk
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--resume", "--cfg-options", *_opts(scenes, 4))
    assert rc == 0, err
    assert f"{work / 'iter_4.pth'} is unreadable" in err and f"resuming from {work / 'iter_2.pth'}" in err
    assert torch.load(work / "iter_4.pth", weights_only=True)["meta"]["iter"] == 4  # written again, whole


def test_exif_orientation_is_applied_to_features(tmp_path, capsys):
    stored = np.random.default_rng(0).integers(0, 255, (28, 70, 3), dtype=np.uint8)  # landscape on disk
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": a portrait photo
    path = tmp_path / "portrait.png"
    image.save(path, exif=exif)
    out = tmp_path / "f.npy"
    rc, _, err = run(capsys, "features", path, "--weights", "random", "--out", out)
    assert rc == 0, err
    assert np.load(out).shape[-2:] == (5, 2)  # 70x28 upright: 5x2 patches, not 2x5


@pytest.mark.parametrize("argv, option", [
    (["features", "IMG", "--size", "0", "--out", "OUT/f.npy"], "--size"),
    (["features", "IMG", "--last", "0", "--out", "OUT/f.npy"], "--last"),
    (["features", "IMG", "--tile", "5", "--out", "OUT/f.npy"], "--tile"),
    (["features", "IMG", "--batch-size", "0", "--out", "OUT/f.npy"], "--batch-size"),
    (["features", "IMG", "--threads", "-1", "--out", "OUT/f.npy"], "--threads"),
    (["pca", "IMG", "--alpha", "1.5", "--out", "OUT"], "--alpha"),
    (["pca", "--video", "IMG", "--frame-step", "0", "--out", "OUT"], "--frame-step"),
    (["synth", "OUT", "--train", "0"], "--train"),
    (["synth", "OUT", "--train", "-3"], "--train"),
    (["synth", "OUT", "--val", "0"], "--val"),
    (["synth", "OUT", "--size", "5"], "--size"),
    (["synth", "OUT", "--classes", "1"], "--classes"),
])
def test_nonsense_options_stop_before_any_work(argv, option, tmp_path, capsys):
    image = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    argv = [str(image) if a == "IMG" else a.replace("OUT", str(out)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage + one line, exit code 2
        main(argv)
        raise SystemExit(0)
    code = exit_info.value.code
    err = capsys.readouterr().err
    if code != 2:  # checked after parsing: our own one-line error
        pytest.fail(f"exit code {code}: {err}")
    assert option in err and "Traceback" not in err
    assert not out.exists()


def test_folder_layout_refuses_val_after_parsing(tmp_path, capsys):
    rc, _, err = run(capsys, "synth", tmp_path / "out", "--layout", "folder", "--val", "5")
    assert_user_error(rc, err, "--val")
    assert not (tmp_path / "out").exists()


def test_synth_class_sizes_are_checked_and_written(tmp_path, capsys):
    rc, _, err = run(capsys, "synth", tmp_path / "out", "--class-sizes", "0.2", "0.3")
    assert_user_error(rc, err, "--class-sizes 0.2 0.3: expected 4 sizes")
    rc, _, err = run(capsys, "synth", tmp_path / "out", "--class-sizes", "0.2", "0.3", "inf", "0.4")
    assert_user_error(rc, err, "--class-sizes 0.2 0.3 inf 0.4: inf is not a positive finite size")
    assert not (tmp_path / "out").exists()
    sizes = ["0.2", "0.3", "0.45", "0.65"]
    assert run(capsys, "synth", tmp_path / "out", "--layout", "nyu", "--train", "2", "--val", "1", "--size", "28",
               "--appearance", "texture", "--class-sizes", *sizes)[0] == 0
    config = json.loads((tmp_path / "out" / "synthetic.json").read_text())["config"]
    assert config["class_sizes"] == [float(v) for v in sizes] and config["appearance"] == "texture"


def test_a_pca_basis_with_nan_is_refused(tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    assert run(capsys, "pca", image, "--weights", "random", "--size", "56", "--out", tmp_path / "p")[0] == 0
    with np.load(tmp_path / "p" / "pca_basis.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["fg_components"][1, 3] = np.nan
    bad = tmp_path / "nan_basis.npz"
    np.savez(bad, **arrays)
    rc, _, err = run(capsys, "pca", image, "--weights", "random", "--basis", bad, "--out", tmp_path / "q")
    assert_user_error(rc, err, bad, "fg_components", "NaN")
    assert not (tmp_path / "q").exists()


def test_config_values_are_checked_at_start(scenes, tmp_path, capsys):
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--cfg-options",
                     *_opts(scenes, **{"train_cfg.max_iters": 0}))
    assert_user_error(rc, err, SEG_CFG, "train_cfg.max_iters = 0")
    assert not (tmp_path / "w").exists()


# -- two runs in one place -----------------------------------------------------------------------
def test_a_second_training_in_a_busy_work_dir_refuses(scenes, tmp_path):
    work = tmp_path / "work"
    first = subprocess.Popen([sys.executable, str(ROOT / "tools/train.py"), str(SEG_CFG), "--work-dir", str(work),
                              "--cfg-options", *_opts(scenes, 100000)],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (work / ".dinov2_dense.lock").is_file():
            time.sleep(0.05)
        assert (work / ".dinov2_dense.lock").is_file(), "the first run never took the lock"
        first.send_signal(signal.SIGSTOP)  # it holds the lock, stopped, and leaves the CPU to the second
        second = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(SEG_CFG), "--work-dir", str(work),
                                 "--resume", "--cfg-options", *_opts(scenes, 10)],
                                env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and str(work) in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def test_training_refuses_another_runs_checkpoints_unless_overwrite(scenes, trained, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    (work / "iter_4.pth").write_bytes((trained / "iter_4.pth").read_bytes())
    before = _snapshot(work)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--cfg-options", *_opts(scenes, 2))
    assert_user_error(rc, err, work, "iter_4.pth", "--resume", "--overwrite")
    assert _snapshot(work) == before
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", work, "--overwrite", "--cfg-options", *_opts(scenes, 2))
    assert rc == 0, err
    assert not (work / "iter_4.pth").exists() and (work / "iter_2.pth").is_file()
    assert not (work / ".dinov2_dense.lock").exists()  # released


def test_synth_refuses_a_non_empty_folder_and_overwrite_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "scenes"
    assert run(capsys, "synth", out, "--train", "3", "--val", "2", "--size", "28")[0] == 0
    (out / "images" / "training" / "old_image.jpg").write_bytes(b"stale")
    before = _snapshot(out)
    rc, _, err = run(capsys, "synth", out, "--train", "2", "--val", "1", "--size", "28")
    assert_user_error(rc, err, out, "--overwrite")
    assert _snapshot(out) == before
    rc, _, err = run(capsys, "synth", out, "--train", "2", "--val", "1", "--size", "28", "--overwrite")
    assert rc == 0, err
    assert not (out / "images" / "training" / "old_image.jpg").exists()
    assert len(list((out / "images" / "training").iterdir())) == 2
    _no_staging_left(tmp_path)


def test_pca_failing_midway_leaves_the_old_set(tmp_path, capsys, monkeypatch):
    images = [_image(tmp_path / f"im{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "pca"
    common = ["--joint", "--weights", "random", "--size", "56", "--out", out]
    assert run(capsys, "pca", *images, *common)[0] == 0
    before = _snapshot(out)
    assert len(before) == 3 * 3 + 3  # three PNGs per image, figure.png, pca_basis.npz, the output marker

    rc, _, err = run(capsys, "pca", *images, *common)
    assert_user_error(rc, err, out, "--overwrite")
    assert _snapshot(out) == before

    import dinov2_dense.fileio as fileio

    real, calls = fileio.write_bytes, []

    def disk_full_after_four(path, data):
        calls.append(path)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(fileio, "write_bytes", disk_full_after_four)
    rc, _, err = run(capsys, "pca", *images, *common, "--overwrite")
    assert_user_error(rc, err, out, "No space left on device")
    assert ".partial" not in err and ".tmp" not in err  # the user's path, never a temporary name
    assert _snapshot(out) == before
    _no_staging_left(tmp_path)


def test_pca_on_a_full_disk_names_the_file_in_out_with_one_hint(tmp_path, capsys, monkeypatch):
    """The disk fills when a PNG of the staged output is closed (the error names no file): one line
    naming the file as it would be in --out, with the hint once (it came twice, after the stage's name)."""
    image = _image(tmp_path / "a.png")
    out = tmp_path / "pca"

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    rc, _, err = run(capsys, "pca", image, "--model", "dinov2_dense_tiny", "--size", "56", "--num-workers", "0",
                     "--out", out)
    assert_user_error(rc, err, f"cannot write {out / 'a_pca.png'}: No space left on device")
    assert err.count("free some space") == 1 and ".partial" not in err, err
    assert not out.exists()
    _no_staging_left(tmp_path)


# -- depth evaluation ------------------------------------------------------------------------------
def test_eval_depth_reports_the_predictions_it_clips(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir()
    gt.mkdir()
    for name, bad in (("a", None), ("b", np.inf), ("c", -1.0)):
        depth = np.full((8, 8), 2.0)
        np.save(gt / f"{name}.npy", depth)
        if bad is not None:
            depth = depth.copy()
            depth[0, :3] = bad
        np.save(pred / f"{name}.npy", depth)
    np.save(gt / "d.npy", np.full((8, 8), 3.0))
    np.save(pred / "d.npy", np.zeros((8, 8)))  # a blank output
    rc, _, err = run(capsys, "eval-depth", pred, gt, "--dataset", "folder", "--no-progress", "--out", tmp_path / "m.json")
    assert rc == 0, err
    assert "3 non-finite, 3 negative, 64 zero pixel(s)" in err and "zero on every evaluated pixel" in err
    counts = json.loads((tmp_path / "m.json").read_text())["invalid_predictions"]
    assert counts == {"nonfinite_pixels": 3, "negative_pixels": 3, "zero_pixels": 64, "images": 3, "all_zero_images": 1}


# -- tracebacks for a user's mistake ----------------------------------------------------------------
def test_config_syntax_error(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text('_base_ = ["x.py"]\nmodel = dict(type="DenseModel"\n')
    rc, _, err = run(capsys, "train", bad, "--work-dir", tmp_path / "w")
    assert_user_error(rc, err, bad, "line")
    bad.write_text('_base_ = ["missing_base.py"]\n')
    rc, _, err = run(capsys, "test", bad, tmp_path / "c.pth")
    assert_user_error(rc, err, bad, "missing_base.py")


def test_corrupt_checkpoint_on_test(scenes, trained, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes((trained / "iter_4.pth").read_bytes()[:2000])
    rc, out, err = run(capsys, "test", SEG_CFG, broken, "--work-dir", tmp_path / "w", "--cfg-options", *_opts(scenes))
    assert_user_error(rc, err, broken, "not a readable checkpoint")
    assert "mIoU" not in out


def test_bad_label_seen_in_a_dataloader_worker(scenes, tmp_path, capsys):
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(scenes, root)
    labels = sorted((root / "annotations" / "training").glob("*.png"))
    for label in labels:  # class 76 of a 5-class set: whichever sample a worker draws first is bad
        Image.fromarray(np.full((56, 56), 77, dtype=np.uint8)).save(label)
    rc, _, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--cfg-options",
                     *_opts(root, 4, **{"train_dataloader.num_workers": 2}))
    assert_user_error(rc, err, "out of range")
    assert any(str(label) in err for label in labels), err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device(tmp_path, capsys):
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--weights", "random", "--device", "cuda",
                     "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "--device cuda")
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--weights", "random", "--device", "warp9",
                     "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "--device")


def test_output_paths_are_checked_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    import dinov2_dense.hub as hub

    monkeypatch.setattr(hub, "load_backbone", lambda *a, **k: pytest.fail("the model was built"))
    image = _image(tmp_path / "a.png")
    (tmp_path / "adir.npy").mkdir()
    rc, _, err = run(capsys, "features", image, "--weights", "random", "--out", tmp_path / "adir.npy")
    assert_user_error(rc, err, tmp_path / "adir.npy", "is a directory")
    (tmp_path / "afile").write_text("x")
    rc, _, err = run(capsys, "features", image, "--weights", "random", "--out", tmp_path / "afile" / "f.npy")
    assert_user_error(rc, err, tmp_path / "afile")
    rc, _, err = run(capsys, "pca", image, "--weights", "random", "--out", tmp_path / "afile")
    assert_user_error(rc, err, tmp_path / "afile", "is a file")


def test_full_disk_names_the_users_path_and_keeps_the_old_file(tmp_path, capsys, monkeypatch):
    image = _image(tmp_path / "a.png")
    out = tmp_path / "f.npy"
    np.save(out, np.zeros((2, 384, 2, 2), np.float32))  # the previous result, which --overwrite replaces
    previous = out.read_bytes()

    # the .npy is allocated whole before its first row (a full disk there), then written row by row
    # (the header, the first image's row, then a full disk at the second's)
    import dinov2_dense.fileio as fileio

    for module, call, fine in ((fileio, "_fallocate", 0), (os, "pwrite", 2)):
        real, calls = getattr(module, call), []

        def full(*args):
            calls.append(args)
            if len(calls) > fine:  # noqa: B023 (called within this iteration)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args)  # noqa: B023

        with monkeypatch.context() as patch:
            patch.setattr(module, call, full)
            rc, _, err = run(capsys, "features", image, image, "--weights", "random", "--batch-size", "1",
                             "--out", out, "--overwrite")
        assert_user_error(rc, err, out, "No space left on device")
        assert len(calls) == fine + 1 and ".tmp" not in err
        assert out.read_bytes() == previous
        _no_staging_left(tmp_path)


def test_npy_rows_written_in_any_order_make_the_file_numpy_saves(tmp_path):
    """fileio.NpyRows: rows written in runs out of order give the bytes of np.save; a shape that
    does not fit is refused naming the file."""
    from dinov2_dense.fileio import NpyRows

    x = np.random.default_rng(0).normal(size=(7, 3, 2, 5)).astype(np.float32)
    with NpyRows(tmp_path / "rows.npy", x.shape) as file:
        for rows in ([4, 5, 6], [0], [2, 3], [1]):
            file.write(rows, x[rows])
        with pytest.raises(ValueError, match="rows.npy"):
            file.write([0], x[0, :2][None])
    np.save(tmp_path / "saved.npy", x)
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "saved.npy").read_bytes()
    assert np.array_equal(np.load(tmp_path / "rows.npy"), x)


def test_space_is_reserved_on_disk_and_errors_come_back_as_oserrors(tmp_path):
    """fileio.reserve_space through the real fallocate(2): the blocks are on disk (where the file
    system allocates ahead), or the file is only extended; an error (here a closed descriptor) is an
    OSError naming the file."""
    from dinov2_dense import fileio

    path = tmp_path / "big.bin"
    with open(path, "wb") as file:
        fileio.reserve_space(file.fileno(), 3_000_000, path)
        size, blocks = os.fstat(file.fileno()).st_size, os.fstat(file.fileno()).st_blocks
        if fileio._fallocate(file.fileno(), 3_000_000):
            assert blocks * 512 >= 3_000_000
    assert size == 3_000_000
    fd = os.open(path, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as caught:
        fileio.reserve_space(fd, 10, path)
    assert caught.value.errno == errno.EBADF and caught.value.filename == str(path)


def test_temporary_files_of_a_killed_writer_are_removed_by_the_next_write(tmp_path, capsys):
    """A writer killed with kill -9 leaves its temporary file (a .npy of features is allocated whole
    from its first batch): the next `features` run writing the same file removes it; a running
    writer's stays, and so does another file's."""
    gone = tmp_path / ".f.999999999-0123abcd.tmp.npy"  # no such process
    running = tmp_path / f".f.{os.getpid()}-0123abcd.tmp.npy"
    other = tmp_path / ".f.x.999999999-0123abcd.tmp.npy"  # another file's (f.x.npy)
    for path in (gone, running, other):
        path.write_bytes(b"half")
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--weights", "random", "--out", tmp_path / "f.npy")
    assert rc == 0, err
    assert np.load(tmp_path / "f.npy").ndim == 4
    assert not gone.exists() and running.exists() and other.exists()


def test_unknown_model_and_missing_file(tmp_path, capsys):
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--model", "dinov2_vitx14", "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "dinov2_vitx14")
    rc, _, err = run(capsys, "features", tmp_path / "nope.jpg", "--weights", "random", "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, tmp_path / "nope.jpg")


def test_a_bug_is_exit_code_1_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import dinov2_dense.cli as cli

    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "_cmd_info", broken)
    rc, _, err = run(capsys, "info")
    assert rc == 1 and "Traceback" in err and "bug" in err
    for argv in (["--debug", "features", tmp_path / "nope.jpg"], ["features", tmp_path / "nope.jpg", "--debug"]):
        rc, _, err = run(capsys, *argv, "--weights", "random", "--out", tmp_path / "f.npy")
        assert rc == 2 and "Traceback" in err and "FileNotFoundError" in err  # the traceback, still a user error


# -- what a newcomer hit ---------------------------------------------------------------------------
def test_the_tiny_configs_have_their_own_work_dirs():
    from dinov2_dense.engine.entry import default_work_dir

    seg = default_work_dir(ROOT / "configs/segmentation/tiny_synthetic_linear.py")
    depth = default_work_dir(ROOT / "configs/depth/tiny_synthetic_linear.py")
    assert seg != depth


def test_features_of_different_shapes_fail_before_the_model_runs(tmp_path, capsys, monkeypatch):
    import dinov2_dense.hub as hub

    wide, tall = _image(tmp_path / "wide.png", 42, 84), _image(tmp_path / "tall.png", 84, 42)
    real = hub.load_backbone
    monkeypatch.setattr(hub, "load_backbone", lambda *a, **k: pytest.fail("the model was built"))
    rc, _, err = run(capsys, "features", wide, tall, "--weights", "random", "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "--size H W", "wide.png", "tall.png")
    monkeypatch.setattr(hub, "load_backbone", real)
    rc, _, err = run(capsys, "features", wide, tall, "--weights", "random", "--size", "56", "56",
                     "--out", tmp_path / "f.npy")  # the hint works
    assert rc == 0, err
    assert np.load(tmp_path / "f.npy").shape == (2, 384, 4, 4)


def test_missing_weights_say_how_to_go_on(tmp_path, capsys, torch_home, monkeypatch):
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "dinov2_vits14_pretrain.pth", "--model dinov2_dense_tiny", "--weights random")
    # the first way on works offline: the embedded backbone's features
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--model", "dinov2_dense_tiny", "--size", "56", "56",
                     "--out", tmp_path / "f.npy")
    assert rc == 0, err
    assert np.load(tmp_path / "f.npy").shape == (1, 96, 4, 4)


def test_random_weights_say_so_in_figures(tmp_path, capsys, monkeypatch):
    import dinov2_dense.viz.pca as pca

    titles = []
    real = pca.save_grid
    monkeypatch.setattr(pca, "save_grid", lambda *a, **k: titles.append(k.get("suptitle")) or real(*a, **k))
    rc, _, err = run(capsys, "pca", _image(tmp_path / "a.png"), "--weights", "random", "--size", "56",
                     "--out", tmp_path / "p")
    assert rc == 0, err
    assert titles and "RANDOM weights" in titles[0]


def test_default_outputs_are_git_ignored():
    ignored = (ROOT / ".gitignore").read_text().split()
    for folder in ("/data/", "/work_dirs/", "/runs/", "/pca_out/"):
        assert folder in ignored, folder


# -- bounded resources ------------------------------------------------------------------------------
def _default_sigint() -> None:
    """In the child before exec: SIGINT back to its default. A shell without job control starts
    background jobs with SIGINT ignored, which children inherit, and Python then never raises
    KeyboardInterrupt: a test suite started with `cmd &` would see Ctrl-C ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _long_synth(tmp_path: Path) -> subprocess.Popen:
    """A synth run that writes for minutes, returned once it has written its first scene."""
    proc = subprocess.Popen([sys.executable, "-m", "dinov2_dense.cli", "synth", str(tmp_path / "scenes"), "--train",
                             "100000", "--size", "56"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".scenes.*.partial/scenes/images/training/*")):
        time.sleep(0.05)
    assert list(tmp_path.glob(".scenes.*.partial")), "synth never started writing"
    return proc


def test_ctrl_c_stops_quickly_and_leaves_nothing(tmp_path):
    out = tmp_path / "scenes"
    proc = _long_synth(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)  # the run would write for minutes
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    _no_staging_left(tmp_path)


def test_pixel_limit_refuses_a_decompression_bomb(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DINOV2_DENSE_MAX_PIXELS", "1000")
    image = _image(tmp_path / "big.png", 42, 56)
    rc, _, err = run(capsys, "features", image, "--weights", "random", "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, image, "DINOV2_DENSE_MAX_PIXELS")
    assert not (tmp_path / "f.npy").exists()


# -- found by an adversarial review (issue 8 follow-up) ---------------------------------------------
def test_overwrite_never_deletes_inputs_or_foreign_files(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "par" / "sub").mkdir(parents=True)
    image = _image(tmp_path / "par" / "sub" / "a.png")
    (tmp_path / "par" / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path / "par")
    for out in (tmp_path / "par", tmp_path / "par" / "sub"):  # holds the input
        rc, _, err = run(capsys, "pca", image, "--weights", "random", "--size", "56", "--out", out, "--overwrite")
        assert_user_error(rc, err, out)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    rc, _, err = run(capsys, "pca", image, "--weights", "random", "--size", "56", "--out", tmp_path / "photos",
                     "--overwrite")
    assert_user_error(rc, err, tmp_path / "photos", "did not write")
    rc, _, err = run(capsys, "synth", ".", "--train", "2", "--val", "1", "--size", "28", "--overwrite")
    assert_user_error(rc, err, "current directory")
    assert _snapshot(tmp_path / "par") == before and (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


def test_a_folder_filled_by_another_process_meanwhile_is_not_replaced(tmp_path):
    from dinov2_dense.fileio import OutputError, staged_dir

    out = tmp_path / "out"
    with pytest.raises(OutputError, match="filled by another process"):
        with staged_dir(out) as stage:
            (stage / "ours.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    _no_staging_left(tmp_path)


def test_test_out_is_cleaned_up_after_a_failure(scenes, trained, tmp_path, capsys):
    import shutil

    root = tmp_path / "ade"
    shutil.copytree(scenes, root)
    last = sorted((root / "images" / "validation").glob("*.jpg"))[-1]
    last.write_bytes(b"xx")  # read last, after predictions were staged
    rc, _, err = run(capsys, "test", SEG_CFG, trained / "iter_4.pth", "--work-dir", tmp_path / "w", "--out",
                     tmp_path / "pred", "--cfg-options", *_opts(root))
    assert_user_error(rc, err, last)
    assert not (tmp_path / "pred").exists()
    _no_staging_left(tmp_path)
    rc, _, err = run(capsys, "test", SEG_CFG, trained / "iter_4.pth", "--out", "", "--cfg-options", *_opts(scenes))
    assert_user_error(rc, err, "--out")


def test_synth_checks_free_space_first(tmp_path, capsys, monkeypatch):
    import dinov2_dense.fileio as fileio

    monkeypatch.setattr(fileio, "free_bytes", lambda path: 10_000)
    rc, _, err = run(capsys, "synth", tmp_path / "s", "--train", "100", "--size", "224")
    assert_user_error(rc, err, tmp_path / "s", "MB, but only 9 KB are free")  # it said "only 0 MB are free"
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("option, words", [
    ("noequals", "expected KEY=VALUE"),
    ("param_scheduler=abc", "param_scheduler"),
    ("model.head.num_classes=-3", "num_classes"),
    ("train_dataloader.dataset.root=[1,2]", "train_dataloader.dataset.root"),
    ("model.type=Nope", "model.type"),
    ("val_evaluator.num_classes=3", "val_evaluator.num_classes"),
    ("param_scheduler.5.end=6", "--cfg-options"),
    ("model.test_cfg.mode=slid", "model.test_cfg.mode"),  # these failed at the first validation, after training
    ("model.test_cfg.stride=0", "model.test_cfg.stride"),
    ("model.test_cfg.crop_batch_size=0", "model.test_cfg.crop_batch_size"),
])
def test_bad_config_values_name_their_key(option, words, scenes, tmp_path, capsys):
    code = None
    try:
        code, _, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--cfg-options", *_opts(scenes), option)
    except SystemExit as exc:  # refused by argparse while parsing
        code, err = exc.code, capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "w").exists() or not list((tmp_path / "w").glob("iter_*"))


@pytest.mark.parametrize("command, example", [("train", "train_cfg.max_iters=100"), ("pretrain", "optim.epochs=10"),
                                              ("distill", "optim.epochs=10")])
def test_an_option_without_a_value_shows_an_example_of_its_command(command, example, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "config.py", "--cfg-options", "optim.epochs"])
    assert exc.value.code == 2
    assert f"'optim.epochs': expected KEY=VALUE, e.g. {example}" in capsys.readouterr().err


def test_missing_official_weights_in_a_config_command_give_options_that_command_has(tmp_path, torch_home, capsys,
                                                                                     monkeypatch):
    """train and test take no --model or --weights: their hint names --cfg-options model.backbone_weights=None."""
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    cfg = ROOT / "configs" / "segmentation" / "dinov2_vits14_synthetic_linear.py"
    roots = [f"{split}_dataloader.dataset.root={tmp_path}" for split in ("train", "val", "test")]  # (folders)
    rc, _, err = run(capsys, "train", cfg, "--work-dir", tmp_path / "w", "--cfg-options", *roots)
    assert rc == 2 and "dinov2_vits14_pretrain.pth" in err and "--cfg-options model.backbone_weights=None" in err
    assert "--model" not in err and "--weights random" not in err and not list((tmp_path / "w").glob("iter_*"))


def test_a_list_of_dicts_in_cfg_options_arrives_whole():
    """mmengine splits values at commas outside [] and (): a list of dicts came apart into strings."""
    import argparse

    from dinov2_dense.engine.entry import OptionsAction

    parser = argparse.ArgumentParser(prog="dinov2-dense distill")
    parser.add_argument("--cfg-options", nargs="+", action=OptionsAction, default={})
    args = parser.parse_args(["--cfg-options", "distill.students=[{'embed_dim': 32, 'num_heads': 2}, {'depth': 3}]",
                              "train.dataset.root=data/{a}", "crops.local_crops_scale=(0.05,0.3)"])
    assert args.cfg_options == {"distill.students": [{"embed_dim": 32, "num_heads": 2}, {"depth": 3}],
                                "train.dataset.root": "data/{a}", "crops.local_crops_scale": (0.05, 0.3)}
    with pytest.raises(SystemExit):
        parser.parse_args(["--cfg-options", "distill.students=[{'embed_dim': 32,]"])
    # dicts as the configs write them (dict(depth=3, embed_dim=48) in a list recursed in mmengine's parser until
    # Python stopped it: "cannot read the value (maximum recursion depth exceeded ...)"; dict(...) alone was refused)
    args = parser.parse_args(["--cfg-options", "distill.students=[dict(depth=3, embed_dim=48)]",
                              "train.dataset=dict(type='skimage', names=('camera', 'coins'))", "root=data/dict(x)"])
    assert args.cfg_options == {"distill.students": [{"depth": 3, "embed_dim": 48}],
                                "train.dataset": {"type": "skimage", "names": ("camera", "coins")},
                                "root": "data/dict(x)"}
    for call in ("a=dict(x=open('f'))", "a=[dict(**x)]", "a=dict(k=1, k=2)"):  # only dict(key=value), each key once
        with pytest.raises(SystemExit):
            parser.parse_args(["--cfg-options", call])


def test_one_line_errors_everywhere(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["features", str(_image(tmp_path / "a.png")), "--size", "0", "--out", str(tmp_path / "f.npy")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and "--size" in err
    with pytest.raises(SystemExit):
        main(["features", "x.png", "--threads", "100000", "--out", "f.npy"])
    assert "--threads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["features", "x.png", "--layers", "1", "--last", "2", "--out", "f.npy"])
    assert "not allowed with" in capsys.readouterr().err
    for value in ("nan", "inf", "-1e308"):
        with pytest.raises(SystemExit):
            main(["pca", "x.png", "--threshold", value])
        assert "--threshold" in capsys.readouterr().err


def test_nan_weights_and_heads_are_refused(scenes, trained, tmp_path, capsys):
    from dinov2_dense.hub import build_backbone

    bad = build_backbone("dinov2_vits14").state_dict()
    bad["blocks.0.norm1.weight"][0] = float("nan")
    torch.save(bad, tmp_path / "nan.pth")
    rc, _, err = run(capsys, "features", _image(tmp_path / "a.png"), "--weights", tmp_path / "nan.pth",
                     "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "nan.pth", "blocks.0.norm1.weight", "NaN")
    ckpt = torch.load(trained / "iter_4.pth", weights_only=True)
    ckpt["state_dict"] = {k: v.float().fill_(float("nan")) if v.is_floating_point() else v
                          for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, tmp_path / "nanhead.pth")
    rc, out, err = run(capsys, "test", SEG_CFG, tmp_path / "nanhead.pth", "--work-dir", tmp_path / "w",
                       "--cfg-options", *_opts(scenes))
    assert_user_error(rc, err, "nanhead.pth", "NaN")
    assert "aAcc" not in out


def test_eight_bit_depth_is_refused_alike_by_data_sets_and_eval_depth(tmp_path, capsys):
    import cv2

    from dinov2_dense.data.files import DataError, read_depth

    png = tmp_path / "gt" / "a.png"
    png.parent.mkdir()
    cv2.imwrite(str(png), np.full((8, 8), 30, np.uint8))
    with pytest.raises(DataError, match="16-bit"):
        read_depth(png, 1000.0)
    (tmp_path / "pred").mkdir()
    np.save(tmp_path / "pred" / "a.npy", np.ones((8, 8)))
    rc, _, err = run(capsys, "eval-depth", tmp_path / "pred", tmp_path / "gt", "--dataset", "folder", "--gt-scale",
                     "10", "--no-progress")
    assert_user_error(rc, err, "a.png", "16-bit")
    rc, _, err = run(capsys, "eval-depth", tmp_path / "pred", tmp_path / "pred", "--dataset", "folder",
                     "--no-progress", "--out", tmp_path / "pred" / "a.png")
    assert_user_error(rc, err, "--out", ".json")


def test_a_basis_is_used_as_it_was_fitted(tmp_path, capsys):
    image = _image(tmp_path / "a.png")
    assert run(capsys, "pca", image, "--weights", "random", "--size", "56", "--out", tmp_path / "p")[0] == 0
    basis = tmp_path / "p" / "pca_basis.npz"
    for extra, words in ((["--threshold", "1.5"], "--threshold"), (["--joint"], "--joint"),
                         (["--layer", "3"], "--layer 3")):
        rc, _, err = run(capsys, "pca", image, "--weights", "random", "--size", "56", "--basis", basis, *extra,
                         "--out", tmp_path / "q")
        assert_user_error(rc, err, words)
    assert run(capsys, "pca", image, "--weights", "random", "--size", "56", "--basis", basis, "--layer", "-1",
               "--out", tmp_path / "q")[0] == 0


def test_image_named_folders_and_token_limits(tmp_path, capsys, scenes):
    import shutil

    from dinov2_dense.data import ADE20KDataset
    from dinov2_dense.data.files import DataError

    root = tmp_path / "ade"
    shutil.copytree(scenes, root)
    victim = sorted((root / "images" / "validation").glob("*.jpg"))[0]
    victim.unlink()
    victim.mkdir()
    with pytest.raises(DataError, match="not a file"):
        ADE20KDataset(root, "validation")
    strip = _image(tmp_path / "strip.png", 1, 3000)
    rc, _, err = run(capsys, "features", strip, "--weights", "random", "--size", "1000", "--out", tmp_path / "f.npy")
    assert_user_error(rc, err, "strip.png", "patch tokens", "--tile")


def test_resume_in_an_empty_work_dir_says_it_starts_afresh(scenes, tmp_path, capsys):
    rc, out, err = run(capsys, "train", SEG_CFG, "--work-dir", tmp_path / "w", "--resume", "--cfg-options",
                       *_opts(scenes, 2))
    assert rc == 0, err
    assert "holds no checkpoint yet; starting a new run" in out


def test_sigterm_to_the_process_group_ends_in_one_line_with_data_workers_running(tmp_path):
    """`timeout`, `kill -- -PGID` and batch schedulers signal the whole process group: the DataLoader workers
    ended too, and after "terminated; no half-written file was left" came torch's "Exception ignored in:
    <function _MultiProcessingDataLoaderIter.__del__ ...>" and a traceback ending "DataLoader worker (pid N) is
    killed by signal: Terminated". The command ends in its one line."""
    proc = subprocess.Popen([sys.executable, "-m", "dinov2_dense.cli", "pretrain", str(ROOT / "configs/pretrain/tiny_cpu.py"),
                             "--work-dir", str(tmp_path / "run"), "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(children.read_text().split()) < 2:
        time.sleep(0.1)  # until the training loader's 2 workers run
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "dinov2-dense pretrain: terminated; no half-written file was left", err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]


def test_sigterm_to_the_process_group_of_curate_embedding_ends_in_its_one_line(tmp_path):
    """curate's own interrupt line (the embeddings kept) came after torch's "Exception ignored in:
    <function _MultiProcessingDataLoaderIter.__del__>" and a traceback ending "DataLoader worker (pid N) is killed
    by signal: Terminated" (a diff review: 4 of 4 runs), and once that was left out, after "OSError: Signal 17
    ignored due to race condition". SIGCHLD is answered by a handler that does nothing from the SIGTERM on."""
    pool = tmp_path / "pool"
    pool.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(pool / f"{i:03d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "dinov2_dense.cli", "curate", str(pool), "--target", "10", "--out",
                             str(tmp_path / "out"), "--model", "dinov2_dense_tiny", "--num-workers", "2",
                             "--batch-size", "2", "--size", "448", "--no-progress"], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(children.read_text().split()) < 2:
        time.sleep(0.1)  # until the embedding's 2 workers run
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("dinov2-dense curate: terminated; the embeddings done so far are kept"), err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err and "OSError" not in err, err[-2000:]


def test_an_error_raised_while_a_sigterm_unwinds_ends_as_the_sigterm(capsys):
    """Under load, torch's SIGCHLD handler raised "DataLoader worker (pid N) is killed by signal: Terminated"
    inside a context manager's exit while SIGTERM unwound the pretraining step: the command ended as an
    internal error (exit 1, a traceback) in the test above. An error raised while an interrupt unwinds ends
    as that interrupt."""
    import argparse

    from dinov2_dense import cli

    def step(args):
        try:
            raise cli._Terminated()
        finally:
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    code = cli.run_command(argparse.Namespace(command="pretrain", func=step), "dinov2-dense pretrain", debug=False)
    err = capsys.readouterr().err
    assert code == 143 and err.strip() == "dinov2-dense pretrain: terminated; no half-written file was left", err

    def exited(args):  # torch's other words for it
        try:
            raise cli._Terminated()
        finally:
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    assert cli.run_command(argparse.Namespace(command="pretrain", func=exited), "dinov2-dense pretrain",
                           debug=False) == 143
    capsys.readouterr()

    def bug(args):
        raise RuntimeError("a bug")

    def failed_cleanup(args):  # another error while unwinding: a clean-up that failed, not "nothing half-written"
        try:
            raise cli._Terminated()
        finally:
            raise RuntimeError("a bug in a clean-up")

    for func in (bug, failed_cleanup):
        assert cli.run_command(argparse.Namespace(command="pretrain", func=func), "dinov2-dense pretrain",
                               debug=False) == 1
        err = capsys.readouterr().err
        assert "internal error" in err and "no half-written file" not in err, err


def test_after_an_interrupt_the_resource_sharers_errors_of_ended_workers_are_left_out(monkeypatch, capsys):
    """Under load the same test saw, after the one line, multiprocessing's resource sharer thread print
    "ConnectionResetError: [Errno 104] Connection reset by peer" with a traceback (a worker ended during a
    hand-over of a tensor's file descriptor). After an interrupt its errors are left out; others are not."""
    from multiprocessing import resource_sharer

    from dinov2_dense import cli

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    cli._ignore_ended_data_workers()
    cli._ignore_ended_data_workers()  # (once wrapped is enough)
    for code, name in (("raise ConnectionResetError(104, 'Connection reset by peer')", resource_sharer.__file__),
                       ("raise ConnectionResetError(104, 'elsewhere')", "<elsewhere>")):
        try:
            exec(compile(code, name, "exec"))
        except ConnectionResetError:
            sys.excepthook(*sys.exc_info())
    err = capsys.readouterr().err
    assert "elsewhere" in err and "Connection reset by peer" not in err, err


def test_sigterm_cleans_up_like_ctrl_c(tmp_path):
    out = tmp_path / "scenes"
    proc = _long_synth(tmp_path)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err
    assert not out.exists()
    _no_staging_left(tmp_path)


def test_a_checkpoint_none_of_whose_keys_fit_is_not_offered_a_partial_load(scenes, trained, tmp_path, capsys):
    """test of a segmentation checkpoint with a depth config suggested --partial-load, which it then refused:
    'none of its keys fits'. Where nothing fits, the first message says so instead."""
    from dinov2_dense.checkpoints import CheckpointError
    from dinov2_dense.engine import load_trained

    depth_cfg = ROOT / "configs/depth/tiny_synthetic_linear.py"
    with pytest.raises(CheckpointError, match="does not fit the model of this config") as caught:
        load_trained(trained / "iter_4.pth", depth_cfg, other_backbone=True,
                     cfg_options={"model.backbone.img_size": 56})
    assert "none of its keys fits" in str(caught.value) and "partial_load" not in str(caught.value)
