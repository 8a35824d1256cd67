"""What a resume keeps and what it says: a distillation whose teacher head was given as a run folder goes
on with the head stored in its own checkpoint (the folder's newest checkpoint may have changed since, and
its older ones been pruned), and a resume given other settings than the run's names each in one warning
while config.json keeps the run's history (``_resumes``). Tiny runs of 2-4 iterations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dinov2_dense.cli import main
from pretrain.train import checkpoint_files, pretrain
from tests.test_pretrain_train import _py_config, tiny


@pytest.fixture(autouse=True)
def _no_figures(monkeypatch):
    """Checkpoints without the redrawn training_curves.png (most of a tiny run's time)."""
    import pretrain.train as loop

    monkeypatch.setattr(loop, "plot_training", lambda work_dir: None)


def _head(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True)["model"].items()
            if k.startswith("teacher.dino_head.")}


def _same(a: dict, b: dict) -> bool:
    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _warnings(err: str, what: str) -> list[str]:
    return [line for line in err.splitlines() if what in line]


def test_a_distillation_from_a_run_folder_resumes_after_that_run_went_on(tmp_path, capsys):
    """The reviewer's case: --teacher-head RUN_DIR (as distill_tiny_cpu.py sets it), then the teacher's run
    goes on (a newer checkpoint that is not this teacher's; the one the head came from pruned). --resume
    resolved the folder again and was refused (`its teacher.backbone.* is not the teacher`), and each of the
    error's ways out was refused too. The head is a new run's starting point only: a resume goes on with the
    one stored in its checkpoint, reads no head file, and config.json names the checkpoint the folder gave."""
    run = tmp_path / "runA"
    pretrain(tiny(4), run, progress=False)  # checkpoints 2 and 4, export
    other = tmp_path / "runB"
    pretrain(tiny(2, train=dict(seed=1)), other, progress=False)
    teacher = str(run / "export" / "backbone.safetensors")
    source = checkpoint_files(run)[0]
    assert source.name == "checkpoint_0000004.pth"
    started = _head(source)
    cfg = _py_config(tmp_path / "d.py", tiny(3, distill=dict(teacher=teacher, teacher_head=str(run),
                                                             students=[dict(embed_dim=16, num_heads=1)])))
    work = tmp_path / "distU"
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--max-iters", "1"]) == 0
    assert _same(_head(checkpoint_files(work)[0]), started)
    recorded = json.loads((work / "config.json").read_text())["distill"]["teacher_head"]

    # the teacher's run goes on: its newest checkpoint is now another backbone's, the one used is pruned
    shutil.copy(checkpoint_files(other)[0], run / "checkpoint_0000030.pth")
    for old in ("checkpoint_0000002.pth", "checkpoint_0000004.pth"):
        (run / old).unlink()
    capsys.readouterr()
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--max-iters", "2", "--resume"]) == 0, \
        capsys.readouterr().err
    err = capsys.readouterr().err
    assert "error" not in err and "note:" not in err and "warning" not in err, err  # the run's own value: nothing to say
    assert _same(_head(checkpoint_files(work)[0]), started)
    assert recorded == str(source)  # the folder's newest checkpoint at the start, by name
    assert json.loads((work / "config.json").read_text())["distill"]["teacher_head"] == str(source)

    # the recorded file itself (pruned since) is the run's own value too: not read, nothing said
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--resume", "--teacher-head",
                 str(source)]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "error" not in err and "note:" not in err and "warning" not in err, err
    assert checkpoint_files(work)[0].name == "checkpoint_0000003.pth"
    assert _same(_head(checkpoint_files(work)[0]), started)

    # another frozen teacher is still refused, naming both
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--resume", "--teacher",
                 str(other / "export" / "backbone.safetensors")]) == 2
    errors = _warnings(capsys.readouterr().err, "error:")
    assert len(errors) == 1 and "another frozen teacher" in errors[0] and "distill.teacher " in errors[0], errors


def test_a_resume_given_another_teacher_head_goes_on_with_the_stored_one_and_says_so(tmp_path, capsys):
    """A resume that names another teacher head (or none: the old error's advice, `distill.teacher_head=None`)
    was refused as `another frozen teacher`; the stored head continues, and a note says so once."""
    run = tmp_path / "runA"
    pretrain(tiny(2), run, progress=False)
    teacher = str(run / "export" / "backbone.safetensors")
    started = _head(checkpoint_files(run)[0])
    cfg = _py_config(tmp_path / "d.py", tiny(4, distill=dict(teacher=teacher,
                                                             students=[dict(embed_dim=16, num_heads=1)])))
    work = tmp_path / "dist"
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--max-iters", "1",
                 "--teacher-head", str(run)]) == 0
    capsys.readouterr()
    for extra in (["--cfg-options", "distill.teacher_head=None"], ["--teacher-head", str(tmp_path / "gone")]):
        stop = str(int(checkpoint_files(work)[0].name[11:18]) + 1)
        assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--resume", "--max-iters", stop,
                     *extra]) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        notes = _warnings(err, "distill.teacher_head")
        assert len(notes) == 1 and notes[0].startswith("note: --resume:") and "stored in" in notes[0], err
        assert "error" not in err, err
        assert _same(_head(checkpoint_files(work)[0]), started)
        assert json.loads((work / "config.json").read_text())["distill"]["teacher_head"] == \
            str(checkpoint_files(run)[0])


def test_a_resume_with_other_settings_warns_once_and_config_json_keeps_the_history(tmp_path, capsys):
    """`--resume --cfg-options train.seed=1 dino.koleo_loss_weight=0.5 crops.local_crops_number=4` went on
    silently (only schedule settings were compared) and config.json was rewritten as if the whole run had used
    them. Now one warning names each (`key old -> new`), settings that may change freely (log and checkpoint
    frequency, workers) are not named, and config.json records, under _resumes, the iteration from which the
    new values apply and the values before."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(6))
    work = tmp_path / "runD"

    def run(*options: str) -> str:
        assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress", *options]) == 0
        return capsys.readouterr().err

    run("--max-iters", "2")
    err = run("--resume", "--max-iters", "3", "--cfg-options", "train.seed=1", "dino.koleo_loss_weight=0.5",
              "crops.local_crops_number=4", "train.log_freq=2", "train.max_to_keep=4", "train.checkpoint_period=1")
    said = _warnings(err, "warning:")
    assert len(said) == 1, err
    for change in ("train.seed 0 -> 1", "dino.koleo_loss_weight 0.1 -> 0.5", "crops.local_crops_number 2 -> 4"):
        assert change in said[0], said
    assert "log_freq" not in said[0] and "max_to_keep" not in said[0] and "checkpoint_period" not in said[0]
    assert "schedule settings" not in err
    recorded = json.loads((work / "config.json").read_text())
    assert recorded["train"]["seed"] == 1 and recorded["crops"]["local_crops_number"] == 4
    first = {"iteration": 2, "checkpoint": "checkpoint_0000002.pth",
             "changed": {"train.seed": [0, 1], "dino.koleo_loss_weight": [0.1, 0.5], "crops.local_crops_number": [2, 4],
                         "train.log_freq": [1, 2], "train.max_to_keep": [3, 4], "train.checkpoint_period": [2, 1]}}
    assert recorded["_resumes"] == [first]
    saved = torch.load(checkpoint_files(work)[0], map_location="cpu", weights_only=True)["config"]
    assert saved["_resumes"] == [first] and saved["train"]["seed"] == 1

    # the same settings again: nothing to say, the history stays as it was
    same = ["train.seed=1", "dino.koleo_loss_weight=0.5", "crops.local_crops_number=4", "train.log_freq=2",
            "train.max_to_keep=4", "train.checkpoint_period=1"]
    err = run("--resume", "--max-iters", "4", "--cfg-options", *same)
    assert not _warnings(err, "warning:"), err
    assert json.loads((work / "config.json").read_text())["_resumes"] == [first]

    # another data set: named, and a second entry
    err = run("--resume", "--max-iters", "5", "--cfg-options", *same,
              "train.dataset.num_scenes=40")
    said = _warnings(err, "warning:")
    assert len(said) == 1 and "train.dataset" in said[0] and "'num_scenes': 48" in said[0], err
    history = json.loads((work / "config.json").read_text())["_resumes"]
    assert history[0] == first and history[1]["iteration"] == 4 and list(history[1]["changed"]) == ["train.dataset"]
    assert history[1]["changed"]["train.dataset"][0]["num_scenes"] == 48


def test_the_schedule_warning_names_processes_and_the_batch_of_all_and_the_lr_only_where_it_changes():
    """The batch of a resumed run: per process and how many processes (each checkpoint records them), and the batch
    of all processes they make, whose change alone changes optim.lr."""
    from pretrain.schedules import scaled_lr
    from pretrain.train import _schedule_changes

    def cfg(batch: int, processes: int) -> dict:
        return {"train": {"batch_size_per_gpu": batch, "OFFICIAL_EPOCH_LENGTH": 4},
                "optim": {"base_lr": 0.004, "lr": scaled_lr(0.004, batch * processes)}, "teacher": {}}

    saved = cfg(4, 2)
    assert _schedule_changes(saved, cfg(4, 2), 2, 2) == []
    assert _schedule_changes(saved, cfg(8, 1), 2, 1) == [
        "processes 2 -> 1, train.batch_size_per_gpu 4 -> 8 (the batch of all processes stays 8)"]
    assert _schedule_changes(saved, cfg(4, 1), 2, 1) == [
        "processes 2 -> 1 (the batch of all processes 8 -> 4)", f"optim.lr {saved['optim']['lr']!r} -> "
        f"{scaled_lr(0.004, 4)!r}"]
    assert _schedule_changes(saved, cfg(2, 2), 2, 2)[0] == \
        "train.batch_size_per_gpu 4 -> 2 (the batch of all processes 8 -> 4)"
    # a checkpoint of an older version, which did not record its processes: the batch per process, as before
    assert _schedule_changes(saved, cfg(8, 1), None, 1) == ["train.batch_size_per_gpu 4 -> 8"]
    assert _schedule_changes(saved, cfg(4, 2), None, 2) == []
