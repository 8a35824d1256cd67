"""Starts refused before anything is written: a distillation teacher head trained with another
backbone than the teacher (another run, or a distillation checkpoint's head of its frozen teacher
given for one of its students), and continued pretraining whose weights' patch size does not fit
the crops or a patch size the config gives itself; a missing teacher head, whose error says where the value
came from and how to train a fresh head. Tiny ViTs and hand-made checkpoints, no training (but for the one
2-iteration run that shows that advice works)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dinov2_dense.cli import main
from dinov2_dense.models import DinoVisionTransformer
from pretrain.export import export_backbone
from pretrain.heads import DINOHead
from pretrain.train import _check_loaded_arch, pretrain
from tests.conftest import randomize_, tiny_vit
from tests.test_pretrain_train import HEAD, _py_config, tiny


def _checkpoint(path: Path, teacher: torch.nn.Module, students: tuple[torch.nn.Module, ...] = ()) -> Path:
    """A run's checkpoint as pretrain/train.py writes it: the teacher backbone and its DINO head, and for a
    distillation the students (``student.student<i>_backbone``) and their EMAs (``teacher.ema<i>_backbone``)."""
    head = DINOHead(in_dim=teacher.embed_dim, out_dim=HEAD["head_n_prototypes"], hidden_dim=HEAD["head_hidden_dim"],
                    bottleneck_dim=HEAD["head_bottleneck_dim"])
    model = {f"teacher.backbone.{k}": v for k, v in teacher.state_dict().items()}
    model.update({f"teacher.dino_head.{k}": v for k, v in head.state_dict().items()})
    for i, student in enumerate(students):
        for part in (f"student.student{i}_backbone.", f"teacher.ema{i}_backbone."):
            model.update({part + k: v for k, v in student.state_dict().items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "iteration": 2}, path)
    return path


def test_a_teacher_head_must_come_with_the_teacher_backbone(tmp_path):
    teacher, other = tiny_vit(depth=2), tiny_vit(depth=2)
    with torch.no_grad():
        other.blocks[1].mlp.fc2.bias.add_(0.01)  # another run of the same size: one tensor differs
    export = export_backbone(teacher, tmp_path / "ssl" / "export")["safetensors"]
    own = _checkpoint(tmp_path / "ssl" / "checkpoint_0000002.pth", teacher)
    foreign = _checkpoint(tmp_path / "ssl_b" / "checkpoint_0000002.pth", other)  # another run of the same size
    # through pretrain(): refused before the work dir is created
    cfg = tiny(2, distill=dict(teacher=str(export), teacher_head=str(tmp_path / "ssl_b"),
                               students=[dict(embed_dim=16, num_heads=1)]))
    with pytest.raises(ValueError, match="trained with another backbone"):
        pretrain(cfg, tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists()
    from pretrain.train import _check_head_teacher

    state = lambda p: torch.load(p, weights_only=True)["model"]  # noqa: E731
    _check_head_teacher(state(own), teacher, own, str(export))  # its own run: accepted
    with pytest.raises(ValueError, match=r"distill.teacher_head=.*ssl_b/checkpoint_0000002.pth: its teacher.backbone"
                                         r".* is not the teacher distill.teacher=.*ssl/export/backbone.safetensors "
                                         r"\(1 of its \d+ tensors differ\)"):
        _check_head_teacher(state(foreign), teacher, foreign, str(export))


def test_a_distillation_checkpoint_head_is_not_its_students(tmp_path, capsys):
    """Chained distillation: a student's export as --teacher, its distillation run as --teacher-head; the
    run's teacher.dino_head.* is the head of its frozen teacher, not of the student."""
    teacher, student = tiny_vit(depth=2), tiny_vit(depth=1)  # as wide as the teacher: its head fits the student
    run = tmp_path / "dist"
    _checkpoint(run / "checkpoint_0000002.pth", teacher, (student,))
    student_export = export_backbone(student, run / "export", "student0")["safetensors"]
    cfg = _py_config(tmp_path / "d.py", tiny(2, distill=dict(students=[dict(embed_dim=16, num_heads=1)])))
    work = tmp_path / "chain"
    assert main(["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--teacher", str(student_export),
                 "--teacher-head", str(run)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "distillation checkpoint" in errors[0] and "belongs to its own frozen teacher" in errors[0]
    assert str(student_export) in errors[0] and "checkpoint_0000002.pth" in errors[0]
    assert not work.exists()


def _patch16_export(folder: Path) -> str:
    model = randomize_(DinoVisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2))
    return str(export_backbone(model, folder)["safetensors"])


def test_continued_pretraining_from_patch_16_refuses_crops_up_front(tmp_path, capsys):
    weights = _patch16_export(tmp_path / "p16")
    cfg = _py_config(tmp_path / "c.py", tiny(2, student=dict(pretrained_weights=weights)))  # crops 28 and 14
    work = tmp_path / "cont"
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "crops.global_crops_size = 28: a multiple of the patch size 16" in err and weights in err
    assert not work.exists()
    # with crops that fit, the weights' patch size is taken
    fits = tiny(1, student=dict(pretrained_weights=weights), crops=dict(global_crops_size=32, local_crops_size=16))
    assert pretrain(fits, tmp_path / "ok", progress=False)["iterations"] == 1


def test_an_explicit_setting_equal_to_the_default_is_held_to_the_weights(tmp_path):
    from pretrain.config import resolve

    weights = _patch16_export(tmp_path / "p16")
    user = {"student": {"pretrained_weights": weights, "patch_size": 14},
            "crops": {"global_crops_size": 28, "local_crops_size": 14}}
    with pytest.raises(ValueError, match=r"student.patch_size = 14, but student.pretrained_weights=.* has "
                                         r"patch_size 16: .* set student.patch_size=16 or leave it out"):
        pretrain({**tiny(2), **user}, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()
    # arch: the default's name given explicitly is the released size, not "take the weights'"
    section = resolve({"student": {"pretrained_weights": "w", "arch": "vit_large"}})["student"]
    with pytest.raises(ValueError, match=r"student.arch = 'vit_large' has embed_dim 1024, .* has embed_dim 48"):
        _check_loaded_arch(section, tiny_vit(depth=2), frozenset({"pretrained_weights", "arch"}))
    section = resolve({"student": {"pretrained_weights": "w"}})["student"]  # left out: the weights decide
    _check_loaded_arch(section, tiny_vit(depth=2), frozenset({"pretrained_weights"}))
    assert (section["arch"], section["embed_dim"], section["patch_size"]) == ("custom", 48, 14)


def test_a_released_arch_other_than_the_weights_is_told_to_name_theirs():
    """student.arch=vit_small with 48-wide weights: the hint once said "set student.embed_dim=48", which the
    arch's sizes override (the same error again); it names the arch that fits, or custom with the sizes."""
    from pretrain.config import resolve

    weights, given = tiny_vit(depth=2), frozenset({"pretrained_weights", "arch"})
    section = resolve({"student": {"pretrained_weights": "w", "arch": "vit_small"}})["student"]
    with pytest.raises(ValueError, match=r"student.arch = 'vit_small' has embed_dim 384, .* has embed_dim 48: the "
                                         r"weights decide the model; set student.arch=custom with student.embed_dim=48 "
                                         r"student.depth=2 student.num_heads=2, or leave student.arch out$"):
        _check_loaded_arch(section, weights, given)
    hinted = resolve({"student": {"pretrained_weights": "w", "arch": "custom", "embed_dim": 48, "depth": 2,
                                  "num_heads": 2}})["student"]
    _check_loaded_arch(hinted, weights, given | {"embed_dim", "depth", "num_heads"})  # the hint, followed: accepted
    small = DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=384, depth=12, num_heads=6)
    section = resolve({"student": {"pretrained_weights": "w", "arch": "vit_base"}})["student"]
    with pytest.raises(ValueError, match=r"set student.arch=vit_small, or leave student.arch out$"):
        _check_loaded_arch(section, small, given)


def test_a_missing_teacher_head_says_where_it_came_from_and_how_to_train_a_fresh_one(tmp_path, capsys):
    """distill_tiny_cpu.py sets distill.teacher_head itself: leaving --teacher-head out (the old advice) still
    reads it, and the error said only `no such file`. It now says where the value came from (the config,
    --teacher-head, --cfg-options) and the option that trains a fresh head; that option runs."""
    import re
    import shlex

    export = export_backbone(tiny_vit(depth=2), tmp_path / "ssl" / "export")["safetensors"]
    missing = tmp_path / "no_run"  # as the config's work_dirs/pretrain/tiny_cpu before tiny_cpu.py has run
    cfg = _py_config(tmp_path / "d.py", tiny(2, distill=dict(teacher_head=str(missing),
                                                             students=[dict(embed_dim=16, num_heads=1)])))
    work = tmp_path / "d"
    common = ["distill", str(cfg), "--work-dir", str(work), "--no-progress", "--teacher", str(export)]

    def error(*extra: str) -> str:
        assert main([*common, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not work.exists()
        return err

    err = error()  # the value of the config
    assert f"distill.teacher_head={missing}: no such file; it came from the config {cfg}; give --cfg-options " \
           "distill.teacher_head=None to train a fresh random head instead (leaving --teacher-head out keeps the " \
           "config's)" in err
    fresh = shlex.split(re.search(r"give (--cfg-options \S+) to train a fresh random head", err).group(1))
    err = error("--teacher-head", str(tmp_path / "other"))  # the option's, over the config's
    assert f"distill.teacher_head={tmp_path / 'other'}: no such file; it came from --teacher-head; give " \
           "--cfg-options distill.teacher_head=None to train a fresh random head instead (without --teacher-head, the config's " \
           f"distill.teacher_head={missing} is taken)" in err
    err = error("--cfg-options", f"distill.teacher_head={tmp_path / 'third'}")
    assert "no such file; it came from --cfg-options; give --cfg-options distill.teacher_head=None" in err
    bare = _py_config(tmp_path / "bare.py", tiny(2, distill=dict(students=[dict(embed_dim=16, num_heads=1)])))
    assert main(["distill", str(bare), *common[2:], "--teacher-head", str(missing)]) == 2  # no head in the config
    assert "it came from --teacher-head; leave --teacher-head out to train a fresh random head" in \
           capsys.readouterr().err
    # the advice, as printed, trains (a fresh head) and exports the student
    assert main([*common, *fresh]) == 0, capsys.readouterr().err
    assert (work / "export" / "student0.safetensors").is_file()
    assert json.loads((work / "config.json").read_text())["distill"]["teacher_head"] is None
