"""`dinov2-dense train|test` as a user runs them: --resume with load_from, --overwrite that fails,
config typos caught before training, --cfg-options values, the training run's config copy."""

import multiprocessing
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense.cli import main
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout, write_nyu_layout
from dinov2_dense.engine.entry import load_config
from dinov2_dense.engine.runner import DenseRunner

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"
DEPTH_CFG = ROOT / "configs/depth/tiny_synthetic_linear.py"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    config = SceneConfig(size=(112, 112))
    write_ade20k_layout(root / "ade", 8, 2, config=config, seed=0, progress=False)
    write_nyu_layout(root / "nyu", 8, 2, config=config, seed=0, progress=False)
    return root


def _options(root: Path, iters: int, interval: int | None = None, end: int | None = None, **extra) -> dict:
    opts = {f"{split}_dataloader.dataset.root": str(root) for split in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": iters, "train_cfg.val_interval": 1000, "train_dataloader.batch_size": 2,
                 "param_scheduler.0.end": 2, "param_scheduler.1.end": end or iters,
                 "default_hooks.logger.interval": 50, "default_hooks.checkpoint.interval": interval or iters})
    opts.update(extra)
    return opts


def _train(work_dir: Path, options: dict, *extra: str, config: Path = SEG_CFG) -> int:
    return main(["train", str(config), "--work-dir", str(work_dir), *extra, "--cfg-options",
                 *(f"{k}={v}" for k, v in options.items())])


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    """A finished 2-iteration run with checkpoints at 1 and 2."""
    work = tmp_path_factory.mktemp("trained") / "run"
    assert _train(work, _options(scenes / "ade", 2, interval=1)) == 0
    return work


def _error_lines(capsys) -> list[str]:
    """The command's error lines (mmengine's loggers of earlier tests may write to a closed capture)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinov2-dense train: error:")]


def _files(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(work.glob("*.pth"))} | {"last": (work / "last_checkpoint").read_bytes()}


# ---------------------------------------------------------------- bug 1: --resume and load_from


def test_resume_continues_the_work_dir_not_load_from(scenes, trained, tmp_path, capsys):
    """A run started from load_from and resumed with the same options continues its own newest checkpoint;
    mmengine resumed from load_from (another run's iteration, optimizer and scheduler) and overwrote ours."""
    start = trained / "iter_2.pth"
    work = tmp_path / "lf"
    options = _options(scenes / "ade", 3, interval=1, end=4, load_from=start)
    assert _train(work, options) == 0
    saved = _files(work)
    assert set(saved) == {"iter_1.pth", "iter_2.pth", "iter_3.pth", "last"}
    assert _train(work, {**options, "train_cfg.max_iters": 4}, "--resume") == 0
    for name in ("iter_2.pth", "iter_3.pth"):  # nothing of this run rewritten (max_keep_ckpts=3 drops iter_1)
        assert (work / name).read_bytes() == saved[name], name
    final = torch.load(work / "iter_4.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["iter"] == 4

    # a work dir without a checkpoint: --resume starts a new run there, from load_from's weights (iteration 0)
    fresh = tmp_path / "fresh"
    capsys.readouterr()
    assert _train(fresh, {**options, "train_cfg.max_iters": 1}, "--resume") == 0
    out = capsys.readouterr().out
    assert f"holds no checkpoint yet; starting a new run there from the weights of load_from {start}" in out
    assert torch.load(fresh / "iter_1.pth", map_location="cpu", weights_only=True)["meta"]["iter"] == 1


# ---------------------------------------------------------------- bug 2: SigLoss warm-up on resume


def _depth_run(root: Path, work: Path, iters: int, resume: bool = False) -> DenseRunner:
    # with 2 DataLoader workers: their random crops and flips after the resume are the uninterrupted run's too
    options = _options(root, iters, interval=3, end=6, **{"model.losses.0.warm_iter": 5,
                                                          "train_dataloader.num_workers": 2,
                                                          "train_dataloader.persistent_workers": False})
    cfg = load_config(str(DEPTH_CFG), options, str(work))
    cfg.resume = resume
    runner = DenseRunner.from_cfg(cfg)
    before = set(multiprocessing.active_children())
    runner.train()
    # its DataLoader workers end with train() (left to the garbage collector, each took 5 s to end)
    assert set(multiprocessing.active_children()) <= before
    return runner


def test_a_depth_run_resumed_with_other_losses_says_so_and_logs_only_its_own(scenes, tmp_path):
    """A depth run of an earlier version (SigLoss + GradientLoss) resumed with today's protocol (SigLoss alone)
    changed its loss with no word, and its log showed loss_GradientLoss at its last value at every iteration
    (a reviewer: 0.2645, the total 0.3277 against the 0.1161 trained). Said now; the log holds the losses the
    model gives."""
    both = '[dict(type="SigLoss",warm_up=True,warm_iter=100,group_size=2),dict(type="GradientLoss",loss_weight=0.5)]'
    work = tmp_path / "work"
    options = _options(scenes / "nyu", 2, interval=1, **{"default_hooks.logger.interval": 1})
    assert _train(work, {**options, "model.losses": both}, config=DEPTH_CFG) == 0
    (work / "iter_2.pth").unlink()
    assert _train(work, options, "--resume", config=DEPTH_CFG) == 0
    logs = "".join(p.read_text() for p in sorted(work.glob("2*/2*.log")))  # (two runs of one second: one folder)
    before, said, resumed = logs.partition("was trained with other losses than this config gives (model.losses.")
    assert said and "loss_GradientLoss" in before
    trained = [line for line in resumed.splitlines() if "Iter(train)" in line]
    assert trained and not any("loss_GradientLoss" in line for line in trained), trained


def test_resumed_depth_run_continues_the_sigloss_warm_up(scenes, tmp_path, capsys):
    """SigLoss's warm-up counter is not in the checkpoint: a resumed run repeated the warm-up (another loss,
    another head). It now continues from the resumed iteration, as the uninterrupted run, and the resumed run
    trains on the same augmented crops (the data stream continues at the checkpoint's sample)."""
    whole = _depth_run(scenes / "nyu", tmp_path / "whole", 6)
    _depth_run(scenes / "nyu", tmp_path / "parts", 3)
    resumed = _depth_run(scenes / "nyu", tmp_path / "parts", 6, resume=True)
    assert resumed.iter == 6
    sig = [m for m in resumed.model.losses if type(m).__name__ == "SigLoss"][0]
    assert sig.warm_up_counter == 5 == [m for m in whole.model.losses if type(m).__name__ == "SigLoss"][0].warm_up_counter
    a = torch.load(tmp_path / "whole" / "iter_6.pth", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "parts" / "iter_6.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    # the head's depth range is recorded and checked: a head trained for 0.001-10 m, tested with a config
    # building it for 80 m, predicted every depth x8 with no error (a reviewer: x7.998-8.000)
    checkpoint = tmp_path / "whole" / "iter_6.pth"
    recorded = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]["head_output"]
    assert recorded == {"min_depth": 0.001, "max_depth": 10.0, "bins_strategy": "UD", "norm_strategy": "linear"}
    run = ["test", str(DEPTH_CFG), str(checkpoint), "--work-dir", str(tmp_path / "t"), "--cfg-options",
           *(f"{k}={v}" for k, v in _options(scenes / "nyu", 6).items())]
    capsys.readouterr()
    assert main([*run, "model.head.max_depth=80.0"]) == 2
    err = capsys.readouterr().err
    assert ("holds a depth head trained for another output than this config builds (model.head.max_depth 10.0 in "
            "its run, 80.0 here): its predictions would be rescaled; give --cfg-options model.head.max_depth=10.0") \
        in err, err
    assert main([*run, "test_evaluator.max_depth=8.0"]) == 0  # the range evaluated is another setting
    from dinov2_dense.engine import load_trained

    # in Python, the run's model as test runs it: the depth protocol's flip averaging, the range checked
    assert load_trained(checkpoint).test_cfg == {"mode": "whole", "flip": True}
    with pytest.raises(Exception, match="model.head.max_depth 10.0 in its run, 80.0 here"):
        load_trained(checkpoint, DEPTH_CFG, cfg_options={"model.head.max_depth": 80.0})


# ---------------------------------------------------------------- bug 3: --overwrite deletes only once built


@pytest.mark.parametrize("bad", [
    {"train_dataloader.dataset.root": "/nonexistent/typo"},
    {"model.head.num_classs": 5},
    {"model.backbone_weights": "/nonexistent/backbone.safetensors"},
    {"load_from": "/nonexistent/iter_2.pth"},
])
def test_overwrite_keeps_the_previous_run_when_the_new_one_cannot_start(scenes, trained, tmp_path, bad, capsys):
    work = tmp_path / "ow"
    shutil.copytree(trained, work)
    before = _files(work)
    assert _train(work, _options(scenes / "ade", 2, **bad), "--overwrite") == 2
    err = _error_lines(capsys)
    key, value = next(iter(bad.items()))
    assert len(err) == 1 and (str(value) in err[0] or key.split(".")[-1] in err[0]), err
    assert _files(work) == before


@pytest.mark.parametrize("mode", ["--overwrite", "--resume"])
def test_a_start_that_fails_keeps_the_runs_config_copy_and_leaves_no_log_folder(scenes, trained, tmp_path, mode,
                                                                                capsys):
    """mmengine wrote <work_dir>/<config>.py when the runner was built, before the data sets: a start that
    then failed replaced the copy of the run it did not replace, and left a <timestamp>/ folder of its own."""
    work = tmp_path / "cc"
    shutil.copytree(trained, work)
    copy = work / "tiny_synthetic_linear.py"
    recorded, before = copy.read_bytes(), _files(work)
    entries = sorted(p.name for p in work.iterdir())
    bad = _options(scenes / "ade", 3, **{"val_dataloader.dataset.root": str(tmp_path / "no_val")})
    assert _train(work, bad, mode) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "no_val" in err[0], err
    assert copy.read_bytes() == recorded and _files(work) == before
    assert sorted(p.name for p in work.iterdir()) == entries  # no log folder, no temporary left
    if mode == "--resume":  # a start that succeeds writes the copy of the run it continues
        (work / "iter_2.pth").unlink()  # from iteration 1, the trained run's schedule (to 2) continued
        assert _train(work, _options(scenes / "ade", 3, end=2), mode) == 0
        assert "max_iters=3" in copy.read_text()
        # (its log folder may be the fixture's: a run started in the same second shares its timestamp)
        assert sorted(p.name for p in work.glob("iter_*.pth")) == ["iter_1.pth", "iter_3.pth"]


def test_overwrite_keeps_the_previous_run_when_its_load_from_is_refused_at_load(scenes, trained, tmp_path, capsys):
    """The check of what a load_from head reads runs when the weights load, after the data sets are built: the
    old checkpoints went before it (a reviewer's --overwrite lost iter_20/30/40.pth and last_checkpoint)."""
    work = tmp_path / "ow"
    shutil.copytree(trained, work)
    before = _files(work)
    elsewhere = tmp_path / "from.pth"
    shutil.copy(trained / "iter_2.pth", elsewhere)
    assert _train(work, _options(scenes / "ade", 2, load_from=elsewhere, **{"model.layers": "[0]"}), "--overwrite") == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "model.layers [1] in its run, [0] here" in err[0], err
    assert _files(work) == before


def test_overwrite_deletes_the_old_runs_best_checkpoints_too(scenes, trained, tmp_path):
    """save_best's best_mIoU_iter_6.pth of the old run stayed beside the new run's (a review)."""
    work = tmp_path / "best"
    shutil.copytree(trained, work)
    shutil.copy(work / "iter_2.pth", work / "best_mIoU_iter_2.pth")
    shutil.copy(work / "iter_2.pth", work / "best_head_for_paper.pth")  # not a save_best name: the user's
    assert _train(work, _options(scenes / "ade", 1), "--overwrite") == 0
    assert sorted(p.name for p in work.glob("*.pth")) == ["best_head_for_paper.pth", "iter_1.pth"]
    # a work dir holding save_best files alone holds no run to resume or refuse (a diff review)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(trained / "iter_2.pth", alone / "best_mIoU_iter_2.pth")
    assert _train(alone, _options(scenes / "ade", 1)) == 0


def test_a_save_killed_midway_leaves_no_temporary_after_the_next_start(scenes, trained, tmp_path):
    work = tmp_path / "killed"
    shutil.copytree(trained, work)
    left = work / ".iter_3.999999999-0123abcd.tmp.pth"  # (no process has that pid: pid_max is 4194304 at most)
    left.write_bytes(b"\0" * 4096)
    (work / "iter_2.pth").unlink()
    assert _train(work, _options(scenes / "ade", 3, end=2), "--resume") == 0
    assert not left.exists() and (work / "iter_3.pth").is_file()


def test_the_data_sets_root_is_no_work_dir(scenes, tmp_path, capsys):
    root = scenes / "ade"
    entries = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert _train(root, _options(root, 1)) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "is the data set's root (train_dataloader.dataset.root)" in err[0], err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == entries


def test_overwrite_refuses_load_from_a_checkpoint_it_would_delete(scenes, trained, tmp_path):
    work = tmp_path / "ow"
    shutil.copytree(trained, work)
    before = _files(work)
    assert _train(work, _options(scenes / "ade", 1, load_from=work / "iter_2.pth"), "--overwrite") == 2
    assert _files(work) == before
    assert _train(work, _options(scenes / "ade", 1), "--overwrite") == 0  # a good config: the old run goes
    assert sorted(p.name for p in work.glob("*.pth")) == ["iter_1.pth"]


# ---------------------------------------------------------------- bugs 4, 5: typos refused before training


@pytest.mark.parametrize("option, key", [
    ("train_cfg.max_iter=5", "train_cfg.max_iters"),
    ("train_dataloader.batch_sise=2", "train_dataloader.batch_size"),
    ("optim_wrapper.optimizer.lrr=0.1", "optim_wrapper.optimizer.lr"),
    ("val_evaluator.ignore_idx=0", "val_evaluator.ignore_index"),
    ("train_dataloader.dataset.pipeline.crop_sise=112", "train_dataloader.dataset.pipeline.crop_size"),
    ("param_scheduler.0.endd=3", "param_scheduler.0.end"),
    ("default_hooks.checkpoint.intervall=3", "default_hooks.checkpoint.interval"),
    ("train_dataloader.dataset.splitt=training", "train_dataloader.dataset.split"),
    ("trian_cfg.max_iters=5", "train_cfg.max_iters"),
])
def test_a_typo_in_a_late_built_section_is_refused_naming_the_key(scenes, tmp_path, option, key, capsys):
    work = tmp_path / "typo"
    options = _options(scenes / "ade", 2, interval=1)
    assert main(["train", str(SEG_CFG), "--work-dir", str(work), "--cfg-options",
                 *(f"{k}={v}" for k, v in options.items()), option]) == 2
    err = _error_lines(capsys)
    wrong = option.split("=")[0]
    assert len(err) == 1 and wrong in err[0] and f"did you mean {key}" in err[0], err
    assert not list(work.glob("*.pth")) if work.exists() else True


def test_a_pipeline_value_refused_by_albumentations_names_the_key(scenes, tmp_path, capsys):
    options = _options(scenes / "ade", 2, **{"train_dataloader.dataset.pipeline.crop_size": 0})
    assert _train(tmp_path / "w", options) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "train_dataloader.dataset.pipeline.crop_size = 0" in err[0], err


# ---------------------------------------------------------------- bugs 6, 7: --cfg-options values


def test_cfg_options_keep_spaces_in_strings_and_read_lists_as_before():
    from dinov2_dense.cli import build_parser

    args = build_parser().parse_args(["train", "x.py", "--cfg-options", "test_dataloader.dataset.root=/tmp/x/ade with space",
                                      "a=[1, 2]", "b=1,2", "c=(3, 4)", "d=0.5", "e=True", "f=None", "g=plain"])
    assert args.cfg_options == {"test_dataloader.dataset.root": "/tmp/x/ade with space", "a": [1, 2], "b": [1, 2],
                                "c": (3, 4), "d": 0.5, "e": True, "f": None, "g": "plain"}


def test_a_quoted_cfg_options_value_is_one_string_and_test_reads_test_evaluator_only(scenes, trained, tmp_path,
                                                                                     capsys):
    """``root='/data/ade,v2'`` came apart at the comma into a list (mmengine strips the quotes, then splits);
    and `test` refused a val_evaluator.num_classes that differs from the head's, though a test never reads it."""
    from dinov2_dense.cli import build_parser

    args = build_parser().parse_args(["test", "x.py", "c.pth", "--cfg-options", "a='/data/ade,v2'", 'b="x, y"',
                                      "c='[1, 2]'", "d=[1,2]", "e=1,2", "f='(3, 4)'", "g='plain'"])
    assert args.cfg_options == {"a": "/data/ade,v2", "b": "x, y", "c": [1, 2], "d": [1, 2], "e": [1, 2],
                                "f": (3, 4), "g": "plain"}
    root = tmp_path / "ade,v2"
    shutil.copytree(scenes / "ade", root)
    options = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    command = ["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(tmp_path / "t"), "--cfg-options",
               *options, f"test_dataloader.dataset.root='{root}'"]
    capsys.readouterr()
    assert main(command + ["val_evaluator.num_classes=7"]) == 0
    assert "'mIoU'" in capsys.readouterr().out.strip().splitlines()[-1]
    assert main(command + ["test_evaluator.num_classes=7"]) == 2  # the one a test uses is still checked
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinov2-dense test: error:")]
    assert len(err) == 1 and "test_evaluator.num_classes = 7" in err[0] and "val_evaluator" not in err[0], err


def test_the_class_count_of_the_evaluator_a_command_reads_is_checked_and_only_that():
    from dinov2_dense.engine.entry import ConfigError, validate_config

    roots = {f"{split}_dataloader.dataset.root": str(ROOT) for split in ("train", "val", "test")}  # (folders)
    val = load_config(str(SEG_CFG), {"val_evaluator.num_classes": 7, **roots})
    validate_config(val, str(SEG_CFG), train=False)  # a test never reads val_evaluator
    with pytest.raises(ConfigError, match="val_evaluator.num_classes = 7 but model.head.num_classes = 5"):
        validate_config(val, str(SEG_CFG), train=True)
    with pytest.raises(ConfigError, match="test_evaluator.num_classes = 7 but model.head.num_classes = 5"):
        validate_config(load_config(str(SEG_CFG), {"test_evaluator.num_classes": 7, **roots}), str(SEG_CFG),
                        train=False)


def test_test_out_where_no_folder_can_be_made_is_refused_before_the_model_naming_out(scenes, trained, tmp_path,
                                                                                    capsys):
    """/sys lets root pass the permission check, and the folder failed only once the model and checkpoint were
    loaded, in words that did not name --out."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here")
    work = tmp_path / "t"
    options = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    assert main(["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(work), "--out", "/sys/x",
                 "--cfg-options", *options]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinov2-dense test: error:")]
    assert len(err) == 1 and "--out /sys/x" in err[0], err
    assert not work.exists()  # refused before the runner (which makes the work dir) was built


# (dict(mode='slide', crop_size=56) reads now, as the configs write dicts: test_faults checks what it gives)
@pytest.mark.parametrize("value", ["model.test_cfg=dict(mode=open('x'))", "model.test_cfg=(1,2"])
def test_cfg_options_values_that_do_not_read_are_one_line_errors(tmp_path, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(SEG_CFG), "--work-dir", str(tmp_path), "--cfg-options", value])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "model.test_cfg" in err[0], err


# ---------------------------------------------------------------- bugs 8, 9


def test_test_keeps_the_training_runs_config_copy(scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = _options(scenes / "ade", 1)
    assert main(["train", str(SEG_CFG), "--cfg-options", *(f"{k}={v}" for k, v in options.items())]) == 0
    work = tmp_path / "work_dirs" / "segmentation" / "tiny_synthetic_linear"
    copy = work / "tiny_synthetic_linear.py"
    recorded = copy.read_bytes()
    assert main(["test", str(SEG_CFG), str(work / "iter_1.pth"), "--cfg-options",
                 *(f"{k}={v}" for k, v in options.items()), "test_dataloader.batch_size=1"]) == 0
    assert copy.read_bytes() == recorded
    tested = [p for p in work.glob("*/tiny_synthetic_linear.py")]  # the test's copy, beside its log
    assert any("load_from" in p.read_text() and str(work / "iter_1.pth") in p.read_text() for p in tested)


def test_test_says_that_fp16_on_the_cpu_is_bfloat16(scenes, trained, tmp_path, capsys):
    """mmengine's autocast computes bfloat16 on the CPU for test_cfg.fp16 (a reviewer saw mIoU 36.3570 against
    36.5177 in float32, with no word)."""
    roots = [f"{s}_dataloader.dataset.root={scenes / 'ade'}" for s in ("train", "val", "test")]
    assert main(["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(tmp_path / "t"),
                 "--cfg-options", *roots, "test_cfg.fp16=True"]) == 0
    assert "note: test_cfg.fp16 on the CPU: mmengine's autocast computes in bfloat16 there" in capsys.readouterr().out


def test_resume_past_max_iters_says_nothing_is_trained(scenes, trained, tmp_path, capsys, monkeypatch):
    """... and loads no training batch: mmengine's loop advanced its data by every trained iteration,
    decoding each batch again to train nothing (and logged 'Advance dataloader 2 steps')."""
    from dinov2_dense.data import ADE20KDataset

    loaded = []
    real = ADE20KDataset.__getitem__
    monkeypatch.setattr(ADE20KDataset, "__getitem__", lambda self, i: loaded.append(self.split) or real(self, i))
    work = tmp_path / "done"
    shutil.copytree(trained, work)
    capsys.readouterr()
    assert _train(work, _options(scenes / "ade", 1), "--resume") == 0
    captured = capsys.readouterr()
    err = captured.err
    assert "at iteration 2" in err and "nothing is trained" in err and "max_iters = 1" in err, err
    assert "training" not in loaded and "Advance dataloader" not in captured.out + err, loaded


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_a_resumed_run_loads_only_what_it_trains_and_ends_as_the_uninterrupted_one(scenes, tmp_path, monkeypatch,
                                                                                     capsys):
    """mmengine's loop advanced a resumed run's data by loading and augmenting every trained batch again (a
    40k-iteration ADE20K run resumed at 30k: 480,000 images). The seeded sample stream starts where the
    checkpoint left it: the resumed run loads the samples it trains, those the uninterrupted run trained on
    after the checkpoint, and ends with its weights; and DataLoader workers change no crop."""
    from dinov2_dense.data import ADE20KDataset

    loaded = []
    real = ADE20KDataset.__getitem__

    def counted(self, index):
        if self.split == "training":
            loaded.append(int(index))
        return real(self, index)

    monkeypatch.setattr(ADE20KDataset, "__getitem__", counted)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert _train(straight, _options(scenes / "ade", 4)) == 0
    trained_on, loaded[:] = list(loaded), []
    assert len(trained_on) == 8  # 4 iterations of 2
    assert _train(stopped, _options(scenes / "ade", 2, end=4)) == 0  # the first half, on the same schedule
    assert loaded == trained_on[:4]
    loaded.clear()
    capsys.readouterr()
    assert _train(stopped, _options(scenes / "ade", 4), "--resume") == 0
    out = "".join(capsys.readouterr())
    assert loaded == trained_on[4:], (loaded, trained_on)
    assert "Advance dataloader" not in out and "continues at sample 4 of the run's stream" in out, out[-3000:]
    want, got = _weights(straight / "iter_4.pth"), _weights(stopped / "iter_4.pth")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), \
        [k for k in want if not torch.equal(want[k], got[k])]

    workers = tmp_path / "workers"  # the crops come from the samples' places in the stream, not the workers
    assert _train(workers, _options(scenes / "ade", 4, **{"train_dataloader.num_workers": 2})) == 0
    got = _weights(workers / "iter_4.pth")
    assert all(torch.equal(want[k], got[k]) for k in want), [k for k in want if not torch.equal(want[k], got[k])]


def _record_processes(checkpoint: Path, world_size: int | None) -> None:
    """Rewrite ``checkpoint``'s record of the processes that wrote it (None: remove it, as before the record)."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if world_size is None:
        saved["meta"].pop("world_size")
        saved["meta"].pop("train_batch_size")
    else:
        saved["meta"]["world_size"] = world_size
    torch.save(saved, checkpoint)


def test_resume_on_another_number_of_processes_says_so_once(scenes, trained, tmp_path, capsys):
    """A run written by 2 processes (torchrun) and resumed by 1 continued silently with half the batch of all
    processes and another data order. Checkpoints record their processes and per-process batch size, and a
    resume on another number says so once, naming both; the same number, or a checkpoint without the record
    (written before it), says nothing of it."""
    saved = torch.load(trained / "iter_1.pth", map_location="cpu", weights_only=True)
    assert saved["meta"]["world_size"] == 1 and saved["meta"]["train_batch_size"] == 2
    options = _options(scenes / "ade", 3, end=2)  # the trained run's schedule: no schedule warning
    said = "process"
    for world_size, expected in ((2, True), (1, False), (None, False)):
        work = tmp_path / f"ws{world_size}"
        shutil.copytree(trained, work)
        (work / "iter_2.pth").unlink()  # from iteration 1, whose schedule has not ended (at 2 it is at rate 0)
        _record_processes(work / "iter_1.pth", world_size)
        capsys.readouterr()
        assert _train(work, options, "--resume") == 0
        captured = capsys.readouterr()
        out = captured.out + captured.err
        lines = [line for line in out.splitlines() if "--resume:" in line and said in line]
        assert torch.load(work / "iter_3.pth", map_location="cpu", weights_only=True)["meta"]["iter"] == 3
        if not expected:
            assert lines == [], (world_size, lines)
            continue
        assert len(lines) == 1, out[-3000:]
        line = lines[0]
        assert (f"--resume: {work / 'iter_1.pth'} was written by 2 processes (a batch of 2 x 2 = 4 over all "
                "processes); this run has 1 process (a batch of 2 x 1 = 2 over all processes): a resumed run "
                "continues on this run's processes, so its batches are not the uninterrupted run's. To continue it "
                "as it was, resume with 2 processes") in line, line
        # the resumed run's own checkpoints record its processes
        resumed = torch.load(work / "iter_3.pth", map_location="cpu", weights_only=True)
        assert resumed["meta"]["world_size"] == 1 and resumed["meta"]["train_batch_size"] == 2


# ---------------------------------------------------------------- --cfg-options train_cfg.max_iters and the schedule


def test_max_iters_on_the_command_line_moves_the_schedule_with_it(scenes, tmp_path, capsys):
    """The configs write `end=max_iters`, fixed when the file is read: `--cfg-options train_cfg.max_iters=4`
    (the README's way to shorten a run) left the poly decay at 600 iterations, so the rate never decayed.
    The decay now ends with the run; a warm-up that outlasts the run is named; an explicit end is kept."""
    roots = {f"{split}_dataloader.dataset.root": str(scenes / "ade") for split in ("train", "val", "test")}
    base = {**roots, "train_cfg.val_interval": 1000, "train_dataloader.batch_size": 2,
            "default_hooks.logger.interval": 50, "default_hooks.checkpoint.interval": 4, "train_cfg.max_iters": 4}
    capsys.readouterr()
    assert _train(tmp_path / "short", base) == 0
    out = capsys.readouterr().out
    assert "--cfg-options train_cfg.max_iters=4: the schedule follows it (param_scheduler.1.end; was 600)" in out
    assert "note: param_scheduler.0.end = 50 (LinearLR) ends after train_cfg.max_iters=4" in out
    lr = torch.load(tmp_path / "short" / "iter_4.pth", map_location="cpu", weights_only=True)["optimizer"]
    assert lr["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # poly decay (eta_min 0) done at 4
    # an end the options give is theirs
    assert _train(tmp_path / "kept", {**base, "param_scheduler.1.end": 600}) == 0
    out = capsys.readouterr().out
    assert "the schedule follows it" not in out and "param_scheduler.1.end = 600 (PolyLR) ends after" in out
    lr = torch.load(tmp_path / "kept" / "iter_4.pth", map_location="cpu", weights_only=True)["optimizer"]
    assert lr["param_groups"][0]["lr"] > 1e-5
    # resumed to a later max_iters, the run keeps the schedule its checkpoint saved (mmengine restores the
    # schedulers whole): it says so instead of "the schedule follows it"; the rate stays where it ended, 0 here,
    # so the resume is refused (it trained the 2 iterations at rate 0)
    assert _train(tmp_path / "short", {**base, "train_cfg.max_iters": 6}, "--resume") == 2
    captured = capsys.readouterr()
    assert "the schedule follows it" not in captured.out
    assert ("--resume: param_scheduler.1 (PolyLR) continues as " in captured.out
            and "saved it (end 4; the config says end 6)" in captured.out), captured.out[-2000:]
    assert "is at learning rate 0" in captured.err and not (tmp_path / "short" / "iter_6.pth").exists()
    # a warm-up that had not ended (kept at 600 by the options) keeps the resumed run's rate above 0: it trains on
    assert _train(tmp_path / "kept", {**base, "param_scheduler.1.end": 600, "train_cfg.max_iters": 6}, "--resume") == 0
    lr = torch.load(tmp_path / "kept" / "iter_6.pth", map_location="cpu", weights_only=True)["optimizer"]
    assert lr["param_groups"][0]["lr"] > 1e-5
    # a rate or a batch size given to a resume: the optimizer keeps its checkpoint's rate, and the run goes on at
    # the new batch; both were silent (a reviewer)
    kept = {**base, "param_scheduler.1.end": 600, "train_cfg.max_iters": 8, "optim_wrapper.optimizer.lr": 0.05,
            "train_dataloader.batch_size": 4}
    capsys.readouterr()
    assert _train(tmp_path / "kept", kept, "--resume") == 0
    out = capsys.readouterr().out
    assert (f"--resume: the optimizer continues as {tmp_path / 'kept' / 'iter_6.pth'} saved it, at base rate 0.001 "
            "(the config gives 0.05: optim_wrapper.optimizer.lr=0.05), which a resume does not change") in out, out[-3000:]
    assert (f"--resume: {tmp_path / 'kept' / 'iter_6.pth'} was trained with train_dataloader.batch_size=2; this "
            "run's is 4, with which it goes on") in out, out[-3000:]
    lr = torch.load(tmp_path / "kept" / "iter_8.pth", map_location="cpu", weights_only=True)["optimizer"]
    assert lr["param_groups"][0]["initial_lr"] == pytest.approx(0.001)


@pytest.mark.parametrize("schedule, options, moved, kept", [
    # one scheduler as a dict: its option key has no index
    (dict(_delete_=True, type="PolyLR", by_epoch=False, begin=0, end=600), {"param_scheduler.end": 600}, {}, {"end": 600}),
    (dict(_delete_=True, type="PolyLR", by_epoch=False, begin=0, end=600), {}, {"end": 100}, {}),
    # a decay after a warm-up: T_max is max_iters - begin
    ([dict(type="LinearLR", by_epoch=False, begin=0, end=50),
      dict(type="CosineAnnealingLR", by_epoch=False, begin=50, end=600, T_max=550)], {}, {"end": 100, "T_max": 50}, {}),
    # a run shorter than the decay's begin: nothing moves before its start (it was refused: end 3 before begin 50)
    ([dict(type="LinearLR", by_epoch=False, begin=0, end=50),
      dict(type="PolyLR", by_epoch=False, begin=50, end=600)], {"train_cfg.max_iters": 3}, {}, {"end": 600}),
])
def test_the_schedule_follows_max_iters_in_every_shape(tmp_path, schedule, options, moved, kept):
    from dinov2_dense.engine.entry import schedule_cut_notes

    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(f"_base_ = [{str(SEG_CFG)!r}]\nparam_scheduler = {schedule!r}\n")
    notes = []
    cfg = load_config(str(cfg_file), {"train_cfg.max_iters": 100, **options}, str(tmp_path / "w"), notes=notes)
    last = cfg.param_scheduler if isinstance(schedule, dict) else cfg.param_scheduler[-1]
    for key, value in {**moved, **kept}.items():
        assert last[key] == value, (key, last)
    assert bool(notes) == bool(moved), notes
    if kept:
        assert any("ends after train_cfg.max_iters" in n for n in schedule_cut_notes(cfg)), schedule_cut_notes(cfg)


# ---------------------------------------------------------------- pretrain --max-iters: where the weights are


def test_a_pretraining_run_stopped_by_max_iters_says_where_its_weights_are(scenes, tmp_path, capsys):
    """`pretrain --max-iters` (a try run) stops before the schedule's end, which writes the export: it printed
    only its losses, and the user's next command, given export/backbone.safetensors, found no such file."""
    from tests.test_pretrain_train import _py_config, tiny

    cfg = _py_config(tmp_path / "tiny.py", tiny(3))
    work = tmp_path / "run"
    capsys.readouterr()
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress", "--max-iters", "2"]) == 0
    out = capsys.readouterr().out
    checkpoint = work / "checkpoint_0000002.pth"
    assert "stopped at iteration 2 (--max-iters), before the end of the schedule: no export yet" in out
    assert f"--weights {checkpoint} gives its teacher backbone to the other commands" in out
    assert not (work / "export").exists() and checkpoint.is_file()
    # what it says works: the other commands take the checkpoint
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(image)
    assert main(["features", str(image), "--weights", str(checkpoint), "--out", str(tmp_path / "f.npy")]) == 0
    # given to `test` as a head checkpoint, it is named for what it is (it said "no state dict of tensors")
    roots = [f"{split}_dataloader.dataset.root={scenes / 'ade'}" for split in ("train", "val", "test")]
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(checkpoint), "--work-dir", str(tmp_path / "t"), "--cfg-options", *roots]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinov2-dense test: error:")]
    assert len(err) == 1 and f"{checkpoint}: a pretraining checkpoint" in err[0], err


# ---------------------------------------------------------------- two runners of one process in one second


def test_two_runners_built_in_the_same_second_keep_their_own_checkpoints(scenes, tmp_path, monkeypatch):
    """mmengine names a runner's MessageHub (a per-process singleton) after the config and the time to the
    second: a second runner built within that second took over the first's hub, and its CheckpointHook's
    kept ids then deleted the second run's new checkpoints (max_keep_ckpts; seen as a flaky test)."""
    import time

    monkeypatch.setattr(time, "strftime", lambda *args: "20260101_000000")  # both in one second, always
    runners = []
    for name in ("a", "b"):
        cfg = load_config(str(SEG_CFG), _options(scenes / "ade", 2, interval=1), str(tmp_path / name))
        runners.append(DenseRunner.from_cfg(cfg))
        runners[-1].train()
    assert runners[0].message_hub is not runners[1].message_hub
    for name in ("a", "b"):
        assert sorted(p.name for p in (tmp_path / name).glob("iter_*.pth")) == ["iter_1.pth", "iter_2.pth"], name


def test_load_from_with_another_backbone_keeps_it_in_the_runs_checkpoints(scenes, trained, tmp_path, capsys):
    """load_from of a checkpoint holding backbone.* tensors other than the config's frozen backbone (an mmseg
    checkpoint of a fine-tuned backbone, say): the run uses them, says so, records them as its backbone and
    keeps them in its head checkpoints, so that `test` of those runs on the backbone the head was trained on.
    The checkpoints left the frozen backbone out and recorded the config's weights as its source."""
    from dinov2_dense.engine import MODELS

    cfg = load_config(str(SEG_CFG), {}, None)
    model = MODELS.build(cfg.model)
    generator = torch.Generator().manual_seed(3)
    backbone = {f"backbone.{k}": v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                for k, v in model.backbone.state_dict().items()}
    head = torch.load(trained / "iter_2.pth", weights_only=True)["state_dict"]
    start = tmp_path / "mmseg_like.pth"
    torch.save({"state_dict": {**backbone, **head}}, start)
    work = tmp_path / "run"
    capsys.readouterr()
    assert _train(work, _options(scenes / "ade", 1, load_from=start)) == 0
    saved = torch.load(work / "iter_1.pth", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in backbone.items())
    assert saved["meta"]["backbone"]["weights"] == f"the backbone.* tensors of {start}"
    # resumed, the run keeps naming the file its backbone came from (not its own iter_1.pth)
    assert _train(work, _options(scenes / "ade", 2, load_from=start), "--resume") == 0
    resumed = torch.load(work / "iter_2.pth", weights_only=True)
    assert resumed["meta"]["backbone"] == saved["meta"]["backbone"]
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in backbone.items())
    # `test` of that checkpoint with the same config runs on the head's backbone and says so
    options = _options(scenes / "ade", 1)
    assert main(["test", str(SEG_CFG), str(work / "iter_1.pth"), "--work-dir", str(tmp_path / "test"), "--cfg-options",
                 *(f"{k}={v}" for k, v in options.items()), "test_dataloader.batch_size=1"]) == 0
    logs = "".join(p.read_text() for p in (tmp_path / "test").rglob("*.log"))
    assert f"{work / 'iter_1.pth'} holds backbone.* tensors other than this config's backbone" in logs


# ---------------------------------------------------------------- a head of another width than the backbone


def test_a_head_narrower_or_wider_than_the_backbone_is_refused_at_the_start_naming_the_key(scenes, tmp_path, capsys):
    """model.backbone=None takes a 32-wide export's architecture, and the config's head was left at 48: the
    run started, wrote its config copy and log folder, and failed at the first step with "LinearHead input 0:
    expected (B, 48, h, w), got (2, 32, 8, 8)", naming neither model.head.in_channels nor the weights file."""
    from pretrain.export import export_backbone

    from .conftest import tiny_vit

    export = export_backbone(tiny_vit(depth=2, dim=32, heads=2, img=56), tmp_path / "export")
    work = tmp_path / "runs" / "segS"  # its parent too is made for the lock
    options = _options(scenes / "ade", 2, **{"model.backbone": None, "model.head.in_channels": [48],
                                             "model.backbone_weights": str(export["safetensors"])})
    capsys.readouterr()
    assert _train(work, options) == 2
    err = _error_lines(capsys)
    assert len(err) == 1, err
    assert "model.head.in_channels=[48]" in err[0] and str(export["safetensors"]) in err[0], err
    assert "32-wide" in err[0] and "model.head.in_channels=[32]" in err[0], err
    # nothing of the run that did not start: no config copy, no <timestamp>/ log folder, and not the work dir
    # (nor its parent) that its lock made before the model was built
    assert not work.parent.exists()
    # the value the error gives trains
    assert _train(work, {**options, "model.head.in_channels": [32]}) == 0


def _fits_and_runs(head: dict, layers: list, class_token: bool, task: str) -> tuple[str | None, str | None]:
    """(the build's refusal or None, the unchecked predictor's forward error or None) on a 32-wide backbone."""
    import heads
    from dinov2_dense.engine.model import DenseModel, _build_from
    from dinov2_dense.models import DinoVisionTransformer
    from heads.predictor import DensePredictor

    backbone = dict(img_size=56, patch_size=14, embed_dim=32, depth=4, num_heads=2)
    try:
        DenseModel(backbone=backbone, backbone_weights=None, head=head, task=task, layers=layers,
                   class_token=class_token, norm=False)
        refused = None
    except ValueError as exc:
        refused = str(exc)
    predictor = DensePredictor(DinoVisionTransformer(**backbone).eval(), _build_from(heads, head), task=task,
                               layers=layers, class_token=class_token, norm=False).eval()
    try:
        with torch.no_grad():
            predictor(torch.zeros(1, 3, 56, 56))
        failed = None
    except (ValueError, RuntimeError) as exc:
        failed = str(exc)
    return refused, failed


DPT = dict(type="DPTHead", embed_dim=32, channels=8, post_process_channels=[4, 8, 16, 32])


@pytest.mark.parametrize("head, layers, class_token, task, key", [
    # LinearHead: one width per map it reads, the backbone's, before the class token (use_cls_token doubles it)
    (dict(type="LinearHead", in_channels=[32], num_classes=3, in_index=[3]), [0, 1, 2, 3], False, "segmentation", None),
    (dict(type="LinearHead", in_channels=[32] * 4, num_classes=3), [0, 1, 2, 3], False, "segmentation", None),
    (dict(type="LinearHead", in_channels=[32, 32], num_classes=3, use_cls_token=True), [2, 3], True, "segmentation",
     None),
    (dict(type="LinearHead", in_channels=[48], num_classes=3, in_index=[3]), [0, 1, 2, 3], False, "segmentation",
     "model.head.in_channels=[48]"),
    (dict(type="LinearHead", in_channels=[64, 64], num_classes=3, use_cls_token=True), [2, 3], True, "segmentation",
     "model.head.in_channels=[64, 64]"),
    (dict(type="LinearHead", in_channels=[32], num_classes=3, in_index=[3]), [3], False, "segmentation",
     "model.head.in_index=[3]"),
    (dict(type="LinearHead", in_channels=[32], num_classes=3), [3], True, "segmentation", "model.head.use_cls_token"),
    (dict(type="LinearHead", in_channels=[32], num_classes=3, use_cls_token=True), [3], False, "segmentation",
     "model.head.use_cls_token"),
    # LinearDepthHead (lin.1 / lin.4): one width per layer, the backbone's; the class token concatenated inside
    (dict(type="LinearDepthHead", in_channels=[32]), [3], True, "depth", None),
    (dict(type="LinearDepthHead", in_channels=[32] * 4), [0, 1, 2, 3], True, "depth", None),
    (dict(type="LinearDepthHead", in_channels=[64]), [3], True, "depth", "model.head.in_channels=[64]"),
    (dict(type="LinearDepthHead", in_channels=[32]), [0, 1, 2, 3], True, "depth", "model.head.in_channels=[32]"),
    (dict(type="LinearDepthHead", in_channels=[32]), [3], False, "depth", "model.class_token=True"),
    # DPTHead: embed_dim the backbone's (any post_process_channels), 4 layers, class tokens
    (DPT, [0, 1, 2, 3], True, "depth", None),
    ({**DPT, "post_process_channels": [3, 5, 7, 9]}, [0, 1, 2, 3], True, "depth", None),
    ({**DPT, "embed_dim": 48}, [0, 1, 2, 3], True, "depth", "model.head.embed_dim=48"),
    (DPT, [1, 2, 3], True, "depth", "model.layers"),
    ({**DPT, "task": "segmentation", "num_classes": 3}, [0, 1, 2, 3], False, "segmentation", "model.class_token=True"),
])
def test_the_head_width_rule_is_the_one_the_forward_needs(head, layers, class_token, task, key):
    """The build refuses exactly the heads whose first forward fails, naming the key to change."""
    refused, failed = _fits_and_runs(head, layers, class_token, task)
    if key is None:
        assert refused is None and failed is None, (refused, failed)
    else:
        assert failed is not None and refused is not None and key in refused and "\n" not in refused, (refused, failed)


def test_a_depth_crop_that_cannot_fit_the_ground_truth_is_refused_before_training(scenes, tmp_path, capsys):
    """val_evaluator.crop="eigen" on ground truth that is not 480 x 640 failed at the first validation, after
    val_interval iterations of training, advising `--crop none` (an eval-depth option). The first validation
    sample is checked at the start: nothing is trained, and the error names the evaluator's key; test alike."""
    work = tmp_path / "run"
    options = _options(scenes / "nyu", 4, **{"train_cfg.val_interval": 2, "val_evaluator.crop": "eigen"})
    assert _train(work, options, config=DEPTH_CFG) == 2
    (line,) = _error_lines(capsys)
    assert "val_evaluator.crop='eigen' does not fit the ground truth of" in line and "got 112x112" in line
    assert "val_evaluator.crop=None" in line
    assert not list(work.glob("*.pth"))  # before: iterations 1 and 2 trained, then the error
    assert _train(tmp_path / "ok", _options(scenes / "nyu", 1), config=DEPTH_CFG) == 0
    options = _options(scenes / "nyu", 1, **{"test_evaluator.crop": "eigen"})
    rc = main(["test", str(DEPTH_CFG), str(tmp_path / "ok" / "iter_1.pth"), "--work-dir", str(tmp_path / "t"),
               "--cfg-options", *(f"{k}={v}" for k, v in options.items())])
    err = capsys.readouterr().err
    assert rc == 2 and "test_evaluator.crop='eigen' does not fit" in err, err


def test_bad_validation_files_are_refused_before_training(scenes, tmp_path, capsys):
    """A validation map of another size than its image, or depth in other units than the data set's, was found
    at the first validation: at the end of a short run, after every iteration was trained (a reviewer). The
    validation set's sizes are compared from the files' headers at the start, and the first sample's depth with
    the evaluator's range."""
    ade = tmp_path / "ade"
    shutil.copytree(scenes / "ade", ade)
    last = sorted((ade / "annotations" / "validation").glob("*.png"))[-1]
    Image.fromarray(np.asarray(Image.open(last))[:100]).save(last)  # the last validation map, 12 rows short
    work = tmp_path / "seg"
    assert _train(work, _options(ade, 4)) == 2
    (line,) = _error_lines(capsys)
    assert line.endswith(f"{last}: label map of size 112x100 (WxH) but its image "
                         f"{ade / 'images' / 'validation' / (last.stem + '.jpg')} is 112x112"), line
    assert not list(work.glob("*.pth"))

    work = tmp_path / "depth"  # millimetres read as metres (a float .npy in mm, or a scale of 1)
    assert _train(work, _options(scenes / "nyu", 4, **{"val_dataloader.dataset.depth_scale": 1}),
                  config=DEPTH_CFG) == 2
    (line,) = _error_lines(capsys)
    assert re.search(r": none of its \d+ measured ground-truth depths lies in val_evaluator's range \(0.001, 10\) m "
                     r"\(they are \d+ to \d+ m\), so every metric would be NaN: wrong units \(the data set's "
                     r"depth_scale", line), line
    assert not list(work.glob("*.pth"))


def test_a_head_of_another_class_count_names_the_keys_that_set_it(scenes, trained, tmp_path, capsys):
    """The refusal named the classifier's tensors (decode_head.conv_seg.*) where the README promised the key
    (a reviewer); it names model.head.num_classes and the evaluators' too, and following it tests the head."""
    six = {"model.head.num_classes": 6, "val_evaluator.num_classes": 6, "test_evaluator.num_classes": 6}
    options = [f"{k}={v}" for k, v in {**_options(scenes / "ade", 2), **six}.items()]
    assert main(["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(tmp_path / "t"),
                 "--cfg-options", *options]) == 2
    err = capsys.readouterr().err
    assert ("(a head of 5 classes, and this config's model.head.num_classes is 6: give --cfg-options "
            "model.head.num_classes=5 val_evaluator.num_classes=5 test_evaluator.num_classes=5 (as the config of its "
            "run) to run it as trained)") in err, err


def test_a_checkpoint_of_an_earlier_version_says_what_it_cannot_check(scenes, trained, tmp_path, capsys):
    """Checkpoints from before the head records were tested with other blocks or another depth range with no
    word (a reviewer: abs_rel 2.08 against 0.66 at max_depth=80). Which checks are skipped is said."""
    old = tmp_path / "old.pth"
    checkpoint = torch.load(trained / "iter_2.pth", map_location="cpu", weights_only=False)
    del checkpoint["meta"]["head_inputs"]
    torch.save(checkpoint, old)
    opts = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(old), "--work-dir", str(tmp_path / "t"), "--cfg-options", *opts]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert (f"{old} was written by an earlier version, which did not record the blocks, norm and class tokens its "
            "head read (model.layers, model.norm, model.class_token): they are not checked") in out, out[-2000:]
    assert "depth head's range" not in out  # (a segmentation head has none)
    assert main(["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(tmp_path / "t2"),
                 "--cfg-options", *opts]) == 0
    captured = capsys.readouterr()
    assert "earlier version" not in captured.out + captured.err


def test_load_trained_predicts_what_test_saves_and_checks_as_test_does(scenes, trained, tmp_path, capsys):
    """A head that `train` wrote had no Python loader: load_model takes zoo names (a reviewer: 6 keys of other
    shapes for a head on the embedded backbone), and a DensePredictor built by hand left the config's test
    protocol (flip averaging for depth) and test's checks out. load_trained builds the run's model from the
    config copy in its work dir and loads the head as `test` does."""
    import cv2

    from dinov2_dense.checkpoints import CheckpointError
    from dinov2_dense.engine import load_trained
    from dinov2_dense.features import to_input_tensor

    checkpoint = trained / "iter_2.pth"
    out = tmp_path / "pred"
    opts = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    assert main(["test", str(SEG_CFG), str(checkpoint), "--work-dir", str(tmp_path / "t"), "--out", str(out),
                 "--cfg-options", *opts]) == 0
    predictor = load_trained(checkpoint)  # the config copy beside it
    assert not predictor.training and predictor.test_cfg == {"mode": "whole"}
    images = sorted((scenes / "ade" / "images" / "validation").glob("*.jpg"))
    for image in images:
        saved = cv2.imread(str(out / "masks" / "annotations" / "validation" / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
        with torch.no_grad():
            mine = predictor.predict(to_input_tensor(str(image))[None])[0].argmax(0).numpy()
        np.testing.assert_array_equal(mine, saved)
    # test's checks: a head on another backbone is refused, naming it; the config given takes options
    other = {"model.backbone_seed": 7}
    with pytest.raises(CheckpointError, match="holds a head trained on another backbone"):
        load_trained(checkpoint, SEG_CFG, cfg_options=other)
    assert load_trained(checkpoint, SEG_CFG, cfg_options=other, other_backbone=True).test_cfg == {"mode": "whole"}
    lone = tmp_path / "lone" / "iter_2.pth"
    lone.parent.mkdir()
    shutil.copy(checkpoint, lone)
    with pytest.raises(FileNotFoundError, match="no .py file beside it, where `train` keeps its config's copy"):
        load_trained(lone)
    # load_model, given such a head for a zoo model of other widths, names load_trained
    from dinov2_dense import load_model

    with pytest.raises(CheckpointError, match=r"a head of `dinov2-dense train` on .*: load it with "
                                              r"dinov2_dense.engine.load_trained\("):
        load_model("dinov2_vits14_ade20k_linear", weights=checkpoint, backbone_weights=None)


def test_a_head_of_another_backbone_and_width_is_named_as_such_before_its_shapes(scenes, trained, tmp_path, capsys):
    """A head trained on one backbone, tested with a config building another of another width, was refused for
    its key shapes with the advice --partial-load (a part-random head); following it gave the cause. The
    backbone the checkpoint records is named first now."""
    opts = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    other = ["model.backbone=dinov2_dense_tiny", "model.backbone_weights=official", "model.head.in_channels=[96]",
             "model.layers=[3]"]
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(trained / "iter_2.pth"), "--work-dir", str(tmp_path / "t"),
                 "--cfg-options", *opts, *other]) == 2
    err = capsys.readouterr().err
    assert "holds a head trained on another backbone (random weights (seed 0)" in err, err
    assert "dinov2_dense_tiny (embedded weights)" in err and "--partial-load" not in err, err


def test_cfg_options_through_a_list_by_name_name_the_list_and_only_the_key_that_fails(capsys):
    """`pretrain tiny_cpu.py --cfg-options train.num_workers=0 train.dataset.root=DIR` (the README's continued-
    pretraining option on a config whose data set is a list) blamed both keys with Python's "list indices must
    be integers or slices, not str"."""
    from dinov2_dense.engine.entry import ConfigError

    config = str(ROOT / "configs/pretrain/tiny_cpu.py")
    with pytest.raises(ConfigError) as info:
        load_config(config, {"train.num_workers": 0, "train.dataset.root": "/data"}, known_sections=None)
    assert str(info.value) == (f"--cfg-options train.dataset.root: train.dataset is a list in {config} (2 entries), "
                               "so it has no key 'root': give the whole value (train.dataset=...)")
    cfg = load_config(config, {"train.num_workers": 0, "train.dataset": "/data"}, known_sections=None)
    assert cfg.train.dataset == "/data" and cfg.train.num_workers == 0


def test_a_data_root_that_is_not_there_names_its_keys_once_and_how_to_make_synthetic_scenes(tmp_path, capsys,
                                                                                           monkeypatch):
    """`train configs/segmentation/tiny_synthetic_linear.py` before `synth` said "data/synthetic/ade/images/training:
    no such folder (expected ADEChallengeData2016/images/<split>)", naming neither the option nor the command that
    writes the scenes (a reviewer); the splits' roots are one folder, said once."""
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert ("train_dataloader.dataset.root, val_dataloader.dataset.root = "
            "'data/synthetic/ade': no such folder (write the synthetic scenes first: dinov2-dense synth "
            "data/synthetic/ade --layout ade20k)") in err, err
    # a training run reads no test data: a test root that is not here (yet) is not its concern
    (tmp_path / "data" / "synthetic" / "ade").mkdir(parents=True)
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 "test_dataloader.dataset.root=/not/here"]) == 2
    err = capsys.readouterr().err
    assert "/not/here" not in err and "no such folder" in err, err  # (the data set's own: the folder is empty)
    assert main(["test", str(SEG_CFG), str(tmp_path / "none.pth"), "--work-dir", str(tmp_path / "t"),
                 "--cfg-options", "test_dataloader.dataset.root=elsewhere"]) == 2
    err = capsys.readouterr().err
    assert ("test_dataloader.dataset.root = 'elsewhere': no such folder (give the data set's folder: --cfg-options "
            "test_dataloader.dataset.root=DIR)") in err, err


def test_a_partial_load_of_backbone_tensors_that_do_not_fit_still_checks_the_recorded_backbone(trained, tmp_path,
                                                                                                 scenes, capsys):
    """backbone.* tensors in a checkpoint mean that it brings its backbone, and the recorded one is not checked;
    with --partial-load, tensors that do not fit are dropped, so they bring nothing: the record is checked (the
    refactor skipped it, and a head of another backbone ran on the config's with its bias alone; the diff review)."""
    from dinov2_dense import load_backbone

    checkpoint = torch.load(trained / "iter_2.pth", map_location="cpu", weights_only=True)
    checkpoint["meta"]["backbone"] = {**checkpoint["meta"]["backbone"], "weights": "another backbone",
                                      "features_sha256": "0" * 64}
    other = load_backbone("dinov2_dense_tiny").state_dict()  # 96 wide: none of it fits the config's 64
    checkpoint["state_dict"].update({f"backbone.{k}": v for k, v in other.items()})
    mixed = tmp_path / "mixed.pth"
    torch.save(checkpoint, mixed)
    opts = [f"{k}={v}" for k, v in _options(scenes / "ade", 2).items()]
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(mixed), "--partial-load", "--work-dir", str(tmp_path / "t"),
                 "--cfg-options", *opts]) == 2
    assert "holds a head trained on another backbone (another backbone" in capsys.readouterr().err


def test_the_loaders_advice_fits_the_caller():
    """load_trained's errors gave the command's options (--other-backbone, --cfg-options); a zoo config's range
    error told to set model.head.max_depth, which a zoo model ignores (the diff review)."""
    from dinov2_dense.checkpoints import CheckpointError
    from dinov2_dense.engine.runner import HeadCheckpointLoader

    class Model:
        def head_output(self):
            return {"min_depth": 0.001, "max_depth": 80.0}

    checkpoint = {"meta": {"head_output": {"min_depth": 0.001, "max_depth": 10.0}}}
    said = {}
    for name, kw in (("command", {}), ("python", {"python": True}), ("zoo", {"zoo": True})):
        with pytest.raises(CheckpointError) as info:
            HeadCheckpointLoader(**kw)._check_head_output("h.pth", checkpoint, Model())
        said[name] = str(info.value)
    assert "give --cfg-options model.head.max_depth=10.0 (as the config of its run)" in said["command"]
    assert "pass --other-backbone to start from it so anyway" in said["command"]
    assert "give cfg_options={'model.head.max_depth': 10.0}" in said["python"] and "other_backbone=True" in said["python"]
    assert "give the config of its run (a model.zoo model builds its own head)" in said["zoo"]
    warned = []
    HeadCheckpointLoader(other_backbone=True, warn=warned.append)._check_head_output("h.pth", checkpoint, Model())
    assert warned and warned[0].endswith("(--other-backbone: going on)")  # load_from: a head to fine-tune


def test_a_label_outside_the_heads_classes_is_named_by_its_file():
    """A data set without its classes (a folder's, num_classes=None) does not range-check its maps: the loss
    refused the batch's label 7 for a 5-class head without naming the file it came from."""
    from dinov2_dense.engine.model import DenseModel

    model = DenseModel(backbone="dinov2_dense_tiny", task="segmentation", layers=[3],
                       head=dict(type="LinearHead", in_channels=[96], num_classes=5))
    seg = torch.zeros(3, 28, 28, dtype=torch.uint8)
    seg[1, 3, 3], seg[2, 0, 0] = 7, 255  # 255: ignored
    samples = [{"seg": seg[i], "meta": {"path": f"images/{i}.png", "target_path": f"masks/{i}.png"}} for i in range(3)]
    with pytest.raises(ValueError) as caught:
        model.loss(torch.randn(3, 3, 28, 28), samples)
    assert str(caught.value).startswith("masks/1.png: label values [7] are outside the head's 5 classes (0..4) and "
                                        "are not ignore 255"), caught.value
    assert "num_classes" in str(caught.value)
    seg[1, 3, 3] = 4
    assert set(model.loss(torch.randn(3, 3, 28, 28), samples)) == {"loss_CrossEntropyLoss"}
