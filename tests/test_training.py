"""mmengine runs on synthetic scenes: heads learn, kill -9 then --resume, test outputs. (Two processes:
test_distributed_start.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_dense.data import NYUDepthDataset
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout, write_nyu_layout
from dinov2_dense.engine.entry import load_config
from dinov2_dense.engine.runner import DenseRunner, latest_checkpoint
from dinov2_dense.evaluation.depth import depth_metrics

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"
DEPTH_CFG = ROOT / "configs/depth/tiny_synthetic_linear.py"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    config = SceneConfig(size=(112, 112))
    write_ade20k_layout(root / "ade", 160, 16, config=config, seed=0, progress=False)
    write_nyu_layout(root / "nyu", 160, 16, config=config, seed=0, progress=False)
    return root


def _options(root: Path, iters: int, **extra) -> dict:
    opts = {f"{split}_dataloader.dataset.root": str(root) for split in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": iters, "train_cfg.val_interval": iters,
                 "param_scheduler.1.end": iters, "default_hooks.logger.interval": 50})
    opts.update(extra)
    return opts


def _run(config: Path, work_dir: Path, options: dict):
    cfg = load_config(str(config), options, str(work_dir))
    runner = DenseRunner.from_cfg(cfg)
    runner.train()
    return runner, runner.test()


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """The tiny config's ViT with trained-looking (non-init) weights, as a user's backbone file."""
    from .conftest import tiny_vit

    from dinov2_dense.checkpoints import save_safetensors

    path = tmp_path_factory.mktemp("backbone") / "tiny_vit.safetensors"
    save_safetensors(tiny_vit(depth=2, dim=64, heads=2, img=112), path)
    return path


def test_training_keeps_a_loaded_backbone_and_test_agrees_with_validation(scenes, backbone_file, tmp_path, capsys):
    """mmengine's Runner.train() calls init_weights(): it must not re-randomise the frozen backbone,
    and `dinov2-dense test` of the checkpoint must report what the run's own validation said."""
    from safetensors.torch import load_file

    from dinov2_dense.cli import main

    options = _options(scenes / "ade", 30, **{"model.backbone_weights": str(backbone_file)})
    runner, _ = _run(SEG_CFG, tmp_path, options)
    loaded = load_file(backbone_file)
    trained = runner.model.backbone.state_dict()
    assert set(trained) == set(loaded)
    changed = [k for k in loaded if not torch.equal(trained[k], loaded[k])]
    assert not changed, f"{len(changed)} of {len(loaded)} backbone tensors changed: {changed[:4]}"
    val = runner.message_hub.get_scalar("val/mIoU").current()

    opts = [f"{k}={v}" for k, v in options.items()]
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(tmp_path / "iter_30.pth"), "--work-dir", str(tmp_path / "test"),
                 "--cfg-options", *opts]) == 0
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"'mIoU': {round(val, 4)}" in printed, (val, printed)

    # the same head on another backbone is refused, naming both; --other-backbone says it is meant
    other = tmp_path / "other.safetensors"
    from .conftest import randomize_, tiny_vit

    from dinov2_dense.checkpoints import save_safetensors

    save_safetensors(randomize_(tiny_vit(depth=2, dim=64, heads=2, img=112), seed=7), other)
    opts_other = opts + [f"model.backbone_weights={other}"]
    args = ["test", str(SEG_CFG), str(tmp_path / "iter_30.pth"), "--work-dir", str(tmp_path / "test"),
            "--cfg-options", *opts_other]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "another backbone" in err and str(backbone_file) in err and str(other) in err
    assert main(args + ["--other-backbone"]) == 0


def test_linear_head_learns_synthetic_segmentation(scenes, tmp_path):
    _, metrics = _run(SEG_CFG, tmp_path, _options(scenes / "ade", 250))
    # 5 classes: chance is ~20 mIoU; a linear probe on a random tiny ViT's colours does far better
    assert metrics["mIoU"] > 50.0, metrics
    assert (tmp_path / "iter_250.pth").is_file()


def test_depth_head_beats_a_constant_predictor(scenes, tmp_path):
    # SigLoss's warm-up cut from 100 iterations to 10: 150 iterations then learn what 400 did (rmse 0.77 of
    # the constant's, 12 s against 36 s)
    options = _options(scenes / "nyu", 150, **{"optim_wrapper.optimizer.lr": 0.05, "model.losses.0.warm_iter": 10})
    _, metrics = _run(DEPTH_CFG, tmp_path, options)
    train = NYUDepthDataset(scenes / "nyu", "nyu_train.txt")
    val = NYUDepthDataset(scenes / "nyu", "nyu_test.txt")
    train_depth = np.concatenate([train.load_item(i)["depth"].ravel() for i in range(len(train))])
    constant = float(train_depth[train_depth > 0].mean())
    const_rmse = np.mean([
        depth_metrics(np.full_like(d, constant), d, max_depth=10.0)["rmse"]
        for d in (val.load_item(i)["depth"] for i in range(len(val)))
    ])
    assert metrics["count"] == len(val)
    assert metrics["rmse"] < 0.85 * const_rmse, (metrics["rmse"], const_rmse)


def test_training_checkpoint_is_an_official_style_head_file(scenes, tmp_path):
    runner, _ = _run(SEG_CFG, tmp_path, _options(scenes / "ade", 20))
    ckpt = torch.load(tmp_path / "iter_20.pth", map_location="cpu", weights_only=True)  # no unsafe globals
    keys = set(ckpt["state_dict"])
    assert keys == {f"decode_head.{k}" for k in runner.model.decode_head.state_dict()}
    assert ckpt["meta"]["iter"] == 20


def test_interrupted_save_leaves_previous_checkpoint(scenes, tmp_path, monkeypatch):
    runner, _ = _run(SEG_CFG, tmp_path, _options(scenes / "ade", 20))
    good = (tmp_path / "iter_20.pth").read_bytes()
    import mmengine.runner.checkpoint as ckpt_mod

    def broken_save(checkpoint, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", broken_save)
    monkeypatch.setattr("mmengine.runner.runner.save_checkpoint", broken_save)
    with pytest.raises(OSError, match="disk full"):
        runner.save_checkpoint(str(tmp_path), "iter_40.pth", by_epoch=False)
    assert not (tmp_path / "iter_40.pth").exists()
    assert not list(tmp_path.glob(".*tmp*"))
    assert (tmp_path / "iter_20.pth").read_bytes() == good
    (tmp_path / "last_checkpoint").write_text("")  # a stale pointer is no obstacle either
    assert latest_checkpoint(tmp_path) == str(tmp_path / "iter_20.pth")


@pytest.mark.parametrize("workers", [0, 2])
def test_two_runs_of_one_config_train_the_same_head(scenes, tmp_path, workers):
    """randomness.seed makes a run reproducible, augmentation included: albumentations seeded itself from
    fresh entropy, so two runs of one config trained on other crops (another loss at iteration 2)."""
    options = _options(scenes / "ade", 2, **{"train_dataloader.num_workers": workers})
    heads = []
    for name in ("a", "b"):
        runner, _ = _run(SEG_CFG, tmp_path / name, options)
        heads.append({k: v.clone() for k, v in runner.model.decode_head.state_dict().items()})
    assert heads[0].keys() == heads[1].keys()
    for key in heads[0]:
        assert torch.equal(heads[0][key], heads[1][key]), key


def test_each_process_of_a_run_seeds_its_own_augmentation(monkeypatch):
    """Every rank of a run has the same torch seed (mmengine's default): the pipeline seed mixes in the rank,
    so that without workers the processes do not draw the same crops for their i-th samples."""
    import mmengine.dist

    from dinov2_dense.engine.data import build_pipeline

    torch.manual_seed(0)
    seeds = []
    for rank in (0, 1, 0):
        monkeypatch.setattr(mmengine.dist, "get_rank", lambda r=rank: r)
        seeds.append(build_pipeline(dict(type="seg_train_pipeline", crop_size=56, scale=(112, 56))).seed)
    assert seeds[0] == seeds[2] != seeds[1]


def _train_command(config: Path, work_dir: Path, options: dict, *extra: str) -> list[str]:
    opts = [f"{k}={v}" for k, v in options.items()]
    return [sys.executable, str(ROOT / "tools/train.py"), str(config), "--work-dir", str(work_dir), *extra,
            "--cfg-options", *opts]


def test_kill_minus_nine_then_resume_ends_at_the_same_iteration(scenes, tmp_path):
    options = _options(scenes / "ade", 40, **{"default_hooks.checkpoint.interval": 5, "default_hooks.logger.interval": 10})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_train_command(SEG_CFG, tmp_path, options), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("iter_*.pth")):
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere in the middle of the run, maybe in the middle of a save
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = sorted(tmp_path.glob("iter_*.pth"))
    assert saved, "the run was killed before its first checkpoint"
    for path in saved:  # complete files only: every one loads
        assert torch.load(path, map_location="cpu", weights_only=True)["meta"]["iter"] > 0
    killed_at = max(int(p.stem.split("_")[1]) for p in saved)
    assert killed_at < 40

    log = tmp_path / "resume.log"
    with open(log, "w") as out:
        subprocess.run(_train_command(SEG_CFG, tmp_path, options, "--resume"), env=env, stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=300)
    text = log.read_text()
    assert f"resumed epoch: 0, iter: {killed_at}" in text
    final = torch.load(tmp_path / "iter_40.pth", map_location="cpu", weights_only=True)
    assert final["meta"]["iter"] == 40
    assert "Iter(train) [40/40]" in text


def test_test_then_eval_depth_agree(scenes, tmp_path, capsys, monkeypatch):
    """`test --out` writes what `eval-depth` reads (named after the ground truth), and the two
    commands report the same metrics for the same predictions (up to the PNG's millimetres). The data set's
    root given relative, the command it prints runs from another folder (it named the ground truth relative)."""
    import ast
    import json
    import shlex

    import cv2

    from dinov2_dense.cli import main

    _run(DEPTH_CFG, tmp_path / "depth", _options(scenes / "nyu", 10))
    out = tmp_path / "pred"
    opts = [f"{k}={v}" for k, v in _options(Path("nyu"), 10).items()]
    capsys.readouterr()
    monkeypatch.chdir(scenes)
    assert main(["test", str(DEPTH_CFG), str(tmp_path / "depth" / "iter_10.pth"), "--work-dir",
                 str(tmp_path / "depth"), "--out", str(out), "--cfg-options", *opts]) == 0
    monkeypatch.chdir(tmp_path)
    printed = capsys.readouterr().out
    tested = ast.literal_eval(printed.strip().splitlines()[-1])
    # the test's JSON log holds the counts too (mmengine dropped numpy integers: "count": null)
    records = [json.loads(line) for log in (tmp_path / "depth").glob("*/*.json") for line in log.read_text().splitlines()]
    record = [r for r in records if "abs_rel" in r][-1]
    assert record["count"] == tested["count"] == 16 and record["gt_measured_pixels"] == tested["gt_measured_pixels"]
    assert isinstance(tested["count"], int) and isinstance(tested["gt_measured_pixels"], int)  # printed 16.0 before
    hint = next(line for line in printed.splitlines() if "dinov2-dense eval-depth" in line)
    command = shlex.split(hint.split("score them as this test did with: ", 1)[1])  # the command it tells to run
    pngs = sorted((out / "depth").rglob("*.png"))
    gts = sorted((scenes / "nyu" / "official_splits" / "test").rglob("sync_depth_*.png"))
    assert [p.relative_to(out / "depth") for p in pngs] == [g.relative_to(scenes / "nyu") for g in gts]
    assert len(list((out / "colour").rglob("*.png"))) == 16
    depth = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (112, 112) and 1 <= depth.min() and depth.max() <= 10000
    assert not list(tmp_path.glob(".pred*"))  # no staging folder left

    # the deepest folder of the tested ground truth (within official_splits/test), not the whole data set
    split = Path(os.path.commonpath([g.parent for g in gts])).relative_to(scenes / "nyu")
    assert split.parts[:2] == ("official_splits", "test")
    assert command[:4] == ["dinov2-dense", "eval-depth", str(out / "depth" / split), str(scenes / "nyu" / split)]
    assert main(command[1:] + ["--no-progress", "--out", str(tmp_path / "m.json")]) == 0
    assert "without prediction" not in capsys.readouterr().err
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["images"] == tested["count"] == 16
    for key in ("abs_rel", "rmse", "d1", "silog"):
        assert scored[key] == pytest.approx(tested[key], rel=2e-3, abs=2e-3), (key, scored[key], tested[key])


def test_test_command_saves_label_masks(scenes, tmp_path):
    import cv2

    from dinov2_dense.cli import main

    _run(SEG_CFG, tmp_path / "seg", _options(scenes / "ade", 10))
    out = tmp_path / "pred"
    opts = [f"{k}={v}" for k, v in _options(scenes / "ade", 10).items()]
    assert main(["test", str(SEG_CFG), str(tmp_path / "seg" / "iter_10.pth"), "--work-dir",
                 str(tmp_path / "seg"), "--out", str(out), "--cfg-options", *opts]) == 0
    masks = sorted((out / "masks").rglob("*.png"))
    gts = sorted((scenes / "ade" / "annotations" / "validation").glob("*.png"))
    assert [m.relative_to(out / "masks") for m in masks] == [g.relative_to(scenes / "ade") for g in gts]
    labels = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert labels.dtype == np.uint8 and labels.shape == (112, 112) and labels.max() < 5
    colour = cv2.imread(str(out / "colour" / masks[0].relative_to(out / "masks")))
    assert colour.shape == (112, 112, 3)


def test_test_batches_are_pinned_on_cuda_only_with_workers_and_unless_configured():
    from mmengine.config import Config

    from dinov2_dense.engine.entry import pin_test_batches

    def loader(**kw):
        return Config(dict(test_dataloader=dict(batch_size=1, **kw)))

    cfg = loader(num_workers=2)
    pin_test_batches(cfg, cuda=True)
    assert cfg.test_dataloader.pin_memory is True
    for cfg, cuda in ((loader(num_workers=2), False), (loader(num_workers=0), True)):
        pin_test_batches(cfg, cuda=cuda)
        assert "pin_memory" not in cfg.test_dataloader
    cfg = loader(num_workers=2, pin_memory=False)
    pin_test_batches(cfg, cuda=True)
    assert cfg.test_dataloader.pin_memory is False


@pytest.fixture(scope="module")
def few_scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("few_scenes")
    write_ade20k_layout(root / "ade", 2, 1, config=SceneConfig(size=(112, 112)), seed=0, progress=False)
    return root / "ade"


def test_a_config_takes_a_pretraining_exports_architecture(few_scenes, tmp_path, capsys):
    """model.backbone may be an export's backbone.json, or None for the one beside model.backbone_weights:
    the backbone trained on is the export's, every setting of its JSON included (registers and the
    position embedding's interpolation, which a hand-copied dict of the sizes missed)."""
    from pretrain.export import export_backbone
    from safetensors.torch import load_file

    from dinov2_dense.cli import main

    from .conftest import tiny_vit

    export = export_backbone(tiny_vit(registers=1, depth=2, dim=64, heads=2, img=56), tmp_path / "export")
    arch = json.loads(export["json"].read_text())
    assert arch["interpolate_antialias"] is True and arch["interpolate_offset"] == 0.0
    loaded = load_file(export["safetensors"])
    base = _options(few_scenes, 1, **{"train_dataloader.batch_size": 2, "param_scheduler.0.end": 1})
    for i, backbone in enumerate([str(export["json"]), None]):
        options = {**base, "model.backbone": backbone, "model.backbone_weights": str(export["safetensors"])}
        runner = DenseRunner.from_cfg(load_config(str(SEG_CFG), options, str(tmp_path / f"run{i}")))
        runner.train()
        model = runner.model.backbone
        assert model.arch_kwargs() == arch
        state = model.state_dict()
        assert set(state) == set(loaded) and all(torch.equal(state[k], loaded[k]) for k in loaded)
    # the command line: None without a weights file is one line naming the keys
    capsys.readouterr()
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "bad"), "--cfg-options",
                 *(f"{k}={v}" for k, v in base.items()), "model.backbone=None"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "model.backbone=None" in err[0] and "model.backbone_weights" in err[0], err
