"""`dinov2-dense pretrain` around its work dir, as users drive it: --overwrite with a bad data set,
the user's own files beside a run, folders that no run wrote, a work dir inside the training data,
starts refused before anything is created, a resume whose optimizer groups differ or whose multipliers
do (the command's are trained with), a `curate` output folder given as the data set, the --work-dir help,
and the monitor as an observer that leaves the run as it is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense.cli import main
from dinov2_dense.data.files import DataError
from pretrain.train import checkpoint_files, pretrain
from tests.test_pretrain_train import _py_config, tiny

LOCK = ".dinov2_dense.lock"


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` (but a run's lock) and its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def _pretrain(cfg: Path, work: Path, *options: str) -> int:
    return main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress", *options])


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_overwrite_checks_the_data_first_and_deletes_only_what_the_run_wrote(tmp_path, capsys):
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "run1"
    assert _pretrain(cfg, work) == 0
    assert (work / "export" / "backbone.safetensors").is_file()
    (work / "NOTES.md").write_text("the user's notes")
    (work / "export" / "NOTES.md").write_text("where this export went")
    (work / "monitor").mkdir()
    (work / "monitor" / "my_scores.csv").write_text("iteration,score\n2,0.5\n")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"img{i}.png").write_bytes(b"")
    before = _files(work)
    capsys.readouterr()
    # a data set without one readable image: refused before the run it would replace is deleted
    assert _pretrain(cfg, work, "--overwrite", "--cfg-options", f"train.dataset={broken}") == 2
    assert "none of its 3 images is readable" in capsys.readouterr().err
    assert _files(work) == before
    # and a new work dir is not even created
    assert _pretrain(cfg, tmp_path / "new", "--cfg-options", f"train.dataset={broken}") == 2
    assert not (tmp_path / "new").exists()

    # --overwrite deletes the run's files only: the user's notes, in export/ and monitor/ too, stay
    assert _pretrain(cfg, work, "--overwrite", "--max-iters", "1") == 0
    after = _files(work)
    for name in ("NOTES.md", "export/NOTES.md", "monitor/my_scores.csv"):
        assert after[name] == before[name]
    assert not [n for n in after if n.startswith("export/backbone")]
    assert [p.name for p in checkpoint_files(work)] == ["checkpoint_0000001.pth"]
    assert [json.loads(line)["iteration"] for line in (work / "training_metrics.jsonl").read_text().splitlines()] == [1]

    # a resume whose optimizer groups differ (here: no layer-wise decay, so fewer fused groups) is one line
    # naming the checkpoint, not torch's message about parameter groups; nothing is written
    capsys.readouterr()
    assert _pretrain(cfg, work, "--resume", "--cfg-options", "optim.layerwise_decay=1.0") == 2
    err = capsys.readouterr().err
    assert "checkpoint_0000001.pth: its optimizer state has" in err and "parameter groups" in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(errors) == 1 and "checkpoint_0000001.pth" in errors[0]
    assert _files(work) == after
    # the run's folder stays its own when unmarked (an earlier version's run): resuming it works
    from pretrain.train import is_run_dir

    (work / ".dinov2-dense-pretrain").unlink()
    assert is_run_dir(work)
    assert _pretrain(cfg, work, "--resume", "--max-iters", "2") == 0
    assert [p.name for p in checkpoint_files(work)] == ["checkpoint_0000002.pth", "checkpoint_0000001.pth"]


def test_a_folder_that_no_run_wrote_is_refused_and_left_as_it_was(tmp_path, capsys):
    from dinov2_dense.models import DinoVisionTransformer
    from pretrain.export import export_backbone

    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    export = tmp_path / "myexport"  # an export copied on its own: backbone.json/.pth/.safetensors
    export_backbone(DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2), export)
    theirs = tmp_path / "mmseg_run"  # another tool's work dir
    theirs.mkdir()
    (theirs / "config.json").write_text("{}")
    (theirs / "training_metrics.jsonl").write_text("")
    (theirs / "iter_100.pth").write_bytes(b"weights")
    for folder in (export, theirs):
        before = _files(folder)
        for options in ((), ("--overwrite",), ("--resume",)):
            capsys.readouterr()
            assert _pretrain(cfg, folder, "--max-iters", "1", "--cfg-options", "student.embed_dim=16", *options) == 2
            err = capsys.readouterr().err
            assert f"work dir {folder} is not a pretraining run's folder, but holds" in err and "--work-dir" in err
            assert "backbone.json" in err if folder == export else "config.json" in err, err
            assert _files(folder) == before and not (folder / LOCK).exists()
    from pretrain.train import is_run_dir

    assert not is_run_dir(export) and not is_run_dir(theirs)
    # a run of an earlier version stopped before its first log line (config.json, backbone.json) is a run's
    # folder; a user's own file (the config kept in its run's folder) stays beside the run's files
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.json").write_text(json.dumps({"student": {}, "train": {}, "optim": {}}))
    (early / "backbone.json").write_text("{}")
    assert is_run_dir(early)
    # ... but a lone backbone.json (a copied export's) or another tool's config.json is no run's: it was
    # written over without a word
    for name, text in (("backbone.json", json.dumps({"embed_dim": 48})), ("config.json", '{"x": 1}')):
        lone = tmp_path / f"lone_{name}"
        lone.mkdir()
        (lone / name).write_text(text)
        assert not is_run_dir(lone)
        capsys.readouterr()
        assert _pretrain(cfg, lone, "--max-iters", "1", "--overwrite") == 2
        assert f"work dir {lone} is not a pretraining run's folder, but holds {name}" in capsys.readouterr().err
        assert (lone / name).read_text() == text and sorted(p.name for p in lone.iterdir()) == [name]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_config.py").write_text(cfg.read_text())
    assert _pretrain(mine / "my_config.py", mine, "--max-iters", "1") == 0
    assert (mine / "my_config.py").read_text() == cfg.read_text() and checkpoint_files(mine)


def test_a_work_dir_inside_the_training_data_is_refused(tmp_path, capsys):
    data = _images(tmp_path / "images")
    before = _files(data)
    cfg = _py_config(tmp_path / "tiny.py", tiny(2, train=dict(dataset=str(data))))
    for work in (data / "run", data / "a" / "run"):
        capsys.readouterr()
        assert _pretrain(cfg, work) == 2
        err = capsys.readouterr().err
        assert f"work dir {work} is inside the training data's folder {data}" in err
    assert _pretrain(cfg, data) == 2  # the data folder itself
    assert f"work dir {data} is inside the training data's folder {data}" in capsys.readouterr().err
    assert _files(data) == before and sorted(p.name for p in data.iterdir()) == ["0.png", "1.png", "2.png"]
    nested = dict(type="folder", root=str(data))  # the dict form and lists of sources alike
    cfg = _py_config(tmp_path / "t2.py", tiny(2, train=dict(dataset=["skimage:camera", nested])))
    assert _pretrain(cfg, data / "run") == 2 and not (data / "run").exists()


def test_starts_refused_for_their_settings_name_the_key_and_create_no_folder(tmp_path, capsys):
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "w"
    for option, said in (("train.seed=-1", "train.seed = -1: "), ("train.num_workers=-1", "train.num_workers = -1: "),
                         ("train.OFFICIAL_EPOCH_LENGTH=0", "train.OFFICIAL_EPOCH_LENGTH = 0: "),
                         ("student.arch=vit_huge", "student.arch='vit_huge'")):
        capsys.readouterr()
        assert _pretrain(cfg, work, "--cfg-options", option) == 2
        assert said in capsys.readouterr().err
        assert not work.exists()
    assert main(["distill", str(cfg), "--work-dir", str(work), "--teacher", str(tmp_path / "nope.safetensors")]) == 2
    assert "nope.safetensors" in capsys.readouterr().err and not work.exists()


def test_the_monitor_observes_without_changing_the_run(tmp_path, monkeypatch):
    """The monitor's checks draw random numbers (probe fitting, ...); they must not shift the crops,
    masks and drop paths the run draws after them: the same losses and the same export."""
    import pretrain.train as loop

    monkeypatch.setattr(loop, "plot_training", lambda work_dir: None)  # the figure is most of a tiny run's time
    monitor = dict(period=2, images=("skimage:coffee",), pca_size=28, probe_size=28, probe_scenes=(4, 2),
                   knn_scenes=(6, 4))
    once = dict(checkpoint_period=100)  # one checkpoint, at the end
    plain = pretrain(tiny(3, train=once), tmp_path / "plain", progress=False)
    watched = pretrain(tiny(3, train=once, monitor=monitor), tmp_path / "watched", progress=False)
    assert "knn_top1" in json.loads((tmp_path / "watched" / "monitor" / "monitor.jsonl").read_text())

    def losses(work: Path) -> list[float]:
        return [json.loads(line)["total_loss"] for line in (work / "training_metrics.jsonl").read_text().splitlines()]

    assert len(losses(tmp_path / "plain")) == 3
    assert losses(tmp_path / "plain") == losses(tmp_path / "watched")  # iteration 3 comes after the first check
    from safetensors.torch import load_file

    a, b = load_file(plain["export"]["safetensors"]), load_file(watched["export"]["safetensors"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # (the metadata names the work dir)


def test_a_resume_with_other_schedule_settings_says_which(tmp_path, capsys, monkeypatch):
    """The schedules are rebuilt from the resuming command's config: a resume that did not repeat the first
    command's --cfg-options (optim.epochs=2) went on silently at another rate and ended at another iteration.
    A resume with another optim.layerwise_decay / patch_embed_lr_mult (AdamW betas too) said so, but the
    checkpoint's optimizer groups brought back the old multipliers; --resume into a work dir without a
    checkpoint started a new run without a word; the resume of an ended run printed its last values without
    the monitor's scores of that iteration."""
    import pretrain.train as loop

    monkeypatch.setattr(loop, "plot_training", lambda work_dir: None)  # the figure is most of a tiny run's time
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "run"
    assert _pretrain(cfg, work, "--resume", "--max-iters", "1", "--cfg-options", "optim.epochs=2") == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "holds no checkpoint" in line]
    assert said == [f"--resume: {work} holds no checkpoint yet; starting a new run there"]
    assert _pretrain(cfg, work, "--resume", "--max-iters", "2", "--cfg-options", "optim.epochs=2") == 0
    err = capsys.readouterr().err
    assert "schedule settings differ" not in err and "no checkpoint" not in err  # the same settings: nothing to say
    assert _pretrain(cfg, work, "--resume", "--max-iters", "3") == 0
    err = capsys.readouterr().err
    assert "warning: --resume: this command's schedule settings differ" in err and "optim.epochs 2 -> 1" in err, err

    # other multipliers with the same groups: the resumed run trains with the command's, as a fresh run does
    other = ["optim.epochs=2", "optim.layerwise_decay=0.8", "optim.patch_embed_lr_mult=0.5", "optim.adamw_beta2=0.99",
             "monitor.period=4", "monitor.images=[]", "monitor.pca_size=28", "monitor.probe_size=28",
             "monitor.probe_scenes=[4,2]", "monitor.knn_scenes=[6,4]"]
    assert _pretrain(cfg, work, "--resume", "--cfg-options", *other) == 0  # iterations 3 and 4, the end
    out, err = capsys.readouterr()
    assert "optim.layerwise_decay 0.9 -> 0.8" in err and "optim.patch_embed_lr_mult 0.2 -> 0.5" in err, err
    assert _pretrain(cfg, tmp_path / "fresh", "--max-iters", "1", "--cfg-options", *other) == 0

    def groups(folder: Path) -> list[tuple]:
        saved = torch.load(checkpoint_files(folder)[0], map_location="cpu", weights_only=True)["optimizer"]
        return [(round(g["lr_multiplier"], 6), g["wd_multiplier"], g["is_last_layer"], tuple(g["betas"]))
                for g in saved["param_groups"]]

    assert checkpoint_files(work)[0].name == "checkpoint_0000004.pth"
    assert groups(work) == groups(tmp_path / "fresh")  # 0.8's multipliers, not the checkpoint's 0.9's
    assert sorted({g[0] for g in groups(work)}) == [0.256, 0.512, 0.64, 0.8, 1.0] and groups(work)[0][3] == (0.9, 0.99)
    assert json.loads((work / "config.json").read_text())["optim"]["layerwise_decay"] == 0.8
    # the resume of the ended run prints the line its end printed, the monitor's scores included
    ended = [line for line in out.splitlines() if line.startswith("pretraining: ")]
    assert len(ended) == 1 and "'knn_top1'" in ended[0] and "'probe_miou'" in ended[0], out
    capsys.readouterr()
    assert _pretrain(cfg, work, "--resume", "--cfg-options", *other) == 0
    out, err = capsys.readouterr()
    assert "had already ended" in err
    assert [line for line in out.splitlines() if line.startswith("pretraining: ")] == ended


def test_a_curate_output_folder_is_refused_as_a_data_set(tmp_path, capsys):
    """`curate --out` gives a folder whose only image is its figure cluster_sizes.png: taken as train.dataset
    it trained on that figure. Refused, pointing to its selected.txt, which is the data set."""
    from pretrain.data.datasets import build_dataset

    images = _images(tmp_path / "pool")
    out = tmp_path / "curated"  # what `dinov2-dense curate ... --out curated` leaves
    out.mkdir()
    (out / ".dinov2-dense-output").write_text("{}")
    (out / "selected.txt").write_text("".join(f"{p}\n" for p in sorted(images.iterdir())[:2]))
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(out / "cluster_sizes.png")
    (out / "report.md").write_text("# report\n")
    cfg = _py_config(tmp_path / "tiny.py", tiny(2, train=dict(dataset=str(out))))
    capsys.readouterr()
    assert _pretrain(cfg, tmp_path / "w") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{out}: the output folder of `dinov2-dense curate`" in errors[0], errors
    assert f"train.dataset={out / 'selected.txt'}" in errors[0] and not (tmp_path / "w").exists()
    with pytest.raises(DataError, match="the output folder of `dinov2-dense curate`"):  # the dict form, in a list
        build_dataset(["skimage:camera", dict(type="folder", root=str(out))])
    assert len(build_dataset(str(out / "selected.txt"))) == 2  # what it points to is the data set
    (out / "selected.txt").unlink()  # an unfinished curation: refused all the same
    with pytest.raises(DataError, match="without its selected.txt"):
        build_dataset(str(out))
    (images / ".dinov2-dense-output").write_text("{}")  # another command's marked output of images: read
    assert len(build_dataset(str(images))) == 3


def test_pretrain_help_names_the_default_work_dir_the_code_uses(capsys):
    from dinov2_dense.engine.entry import default_work_dir

    assert default_work_dir("configs/pretrain/tiny_cpu.py") == "work_dirs/pretrain/tiny_cpu"
    assert default_work_dir("my/tiny.py") == "work_dirs/my/tiny"
    for command in ("pretrain", "distill"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "work_dirs/<config folder>/<config name>, e.g. work_dirs/pretrain/tiny_cpu for " \
               "configs/pretrain/tiny_cpu.py" in text, text
        assert "work_dirs/pretrain/<config name>" not in text


def test_an_unknown_key_is_named_where_it_was_given(tmp_path, capsys):
    """A typo in --cfg-options (optim.base_lrr=0.1) was reported as an unknown key of the config file; one in
    the file still is."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    assert _pretrain(cfg, tmp_path / "w", "--max-iters", "1", "--cfg-options", "optim.base_lrr=0.1") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("error: --cfg-options optim.base_lrr: unknown key optim.base_lrr (did you mean base_lr?)"), err
    typo = _py_config(tmp_path / "typo.py", tiny(2, optim=dict(base_lrr=0.1)))
    assert _pretrain(typo, tmp_path / "w", "--max-iters", "1") == 2
    assert f"error: {typo}: unknown key optim.base_lrr" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()



def test_a_resume_at_or_past_max_iters_says_nothing_is_trained(tmp_path, capsys):
    """--resume --max-iters 1 of a run at iteration 2 trained nothing and said only 'stopped at iteration 2
    (--max-iters)', as if it had run to there."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(4))
    work = tmp_path / "w"
    assert _pretrain(cfg, work, "--max-iters", "2") == 0
    before = sorted(p.name for p in checkpoint_files(work))
    capsys.readouterr()
    assert _pretrain(cfg, work, "--resume", "--max-iters", "1") == 0
    err = capsys.readouterr().err
    assert f"the run in {work} is at iteration 2 of 4, already at or past --max-iters 1: nothing to train" in err, err
    assert sorted(p.name for p in checkpoint_files(work)) == before
