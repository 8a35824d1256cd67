"""Pretraining schedules, parameter groups and config checks, against the formulas and the
original DINOv2 code (``dinov2==0.0.1.dev2``, a test oracle)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pretrain.config import ConfigError, resolve
from pretrain.schedules import CosineScheduler, build_schedules, layer_decay, params_groups, scaled_lr

from .conftest import tiny_vit


def test_cosine_scheduler_formula_and_oracle():
    from dinov2.utils.utils import CosineScheduler as Official

    for kw in (dict(base_value=1e-3, final_value=1e-6, total_iters=100, warmup_iters=10),
               dict(base_value=0.992, final_value=1.0, total_iters=57),
               dict(base_value=0.07, final_value=0.07, total_iters=30, warmup_iters=30, start_warmup_value=0.04),
               dict(base_value=0.5, final_value=0.1, total_iters=40, warmup_iters=5, freeze_iters=7)):
        ours, official = CosineScheduler(**kw), Official(**kw)
        assert [ours[i] for i in range(kw["total_iters"] + 3)] == pytest.approx(
            [official[i] for i in range(kw["total_iters"] + 3)], abs=1e-15)
    s = CosineScheduler(1.0, 0.0, 110, warmup_iters=10)
    assert s[0] == 0.0 and s[9] == pytest.approx(1.0) and s[10] == pytest.approx(1.0)
    assert s[10 + 50] == pytest.approx(0.5 * (1 + math.cos(math.pi * 50 / 100)))  # half the cosine: 0.5
    assert s[1000] == 0.0


def test_build_schedules_match_the_official_train_script():
    optim = dict(epochs=4, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1, min_lr=1e-6,
                 freeze_last_layer_epochs=1)
    teacher = dict(momentum_teacher=0.992, final_momentum_teacher=1.0, warmup_teacher_temp=0.04, teacher_temp=0.07,
                   warmup_teacher_temp_epochs=2)
    s = build_schedules(optim, teacher, epoch_length=10, lr=2e-3)
    it = np.arange(45)
    assert s.lr[0] == 0.0 and s.lr[10] == pytest.approx(2e-3) and s.lr[44] == pytest.approx(1e-6)
    assert s.wd[0] == pytest.approx(0.04) and s.wd[40] == pytest.approx(0.4)
    assert s.momentum[0] == pytest.approx(0.992) and s.momentum[40] == pytest.approx(1.0)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[19] == pytest.approx(0.07)
    assert s.teacher_temp[30] == pytest.approx(0.07)
    assert all(s.last_layer_lr[i] == 0.0 for i in range(10)) and s.last_layer_lr[15] == s.lr[15]
    wd = [s.wd[i] for i in it[:40]]
    assert wd == pytest.approx([0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * i / 40)) for i in range(40)])
    assert scaled_lr(0.004, 256) == pytest.approx(0.002) and scaled_lr(0.004, 1024) == pytest.approx(0.004)


def test_params_groups_match_the_official_ones():
    from dinov2.utils.param_groups import get_params_groups_with_decay

    model = tiny_vit(depth=4)
    ours = {g["name"]: g for g in params_groups(model, 0.9, 0.2)}
    official = {g["name"]: g for g in get_params_groups_with_decay(model, 0.9, 0.2)}
    assert set(ours) == set(official)
    for name, g in official.items():
        for key in ("lr_multiplier", "wd_multiplier", "is_last_layer"):
            assert ours[name][key] == pytest.approx(g[key]), (name, key)
    assert ours["patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.2 * 0.9 ** 5)
    assert ours["blocks.3.mlp.fc1.weight"]["lr_multiplier"] == pytest.approx(0.9)
    assert ours["norm.weight"]["lr_multiplier"] == 1.0 and ours["norm.weight"]["wd_multiplier"] == 0.0
    assert layer_decay("blocks.0.attn.qkv.weight", 0.5, 2) == pytest.approx(0.25)


def test_config_refuses_unknown_keys_and_bad_values():
    cfg = resolve({"optim": {"epochs": 2, "warmup_epochs": 1}}, "c.py")
    assert cfg["optim"]["epochs"] == 2 and cfg["dino"]["head_n_prototypes"] == 65536
    with pytest.raises(ConfigError, match=r"c.py: unknown key optim.warmup_epoch \(did you mean warmup_epochs\?\)"):
        resolve({"optim": {"warmup_epoch": 1}}, "c.py")
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        resolve({"optimizer": {}}, "c.py")
    with pytest.raises(ConfigError, match="optim.base_lr = 'fast': expected a number"):
        resolve({"optim": {"base_lr": "fast"}}, "c.py")
    with pytest.raises(ConfigError, match="crops.global_crops_size"):
        resolve({"crops": {"global_crops_size": 100}}, "c.py")
    with pytest.raises(ConfigError, match="student.embed_dim"):
        resolve({"student": {"arch": "custom"}}, "c.py")


@pytest.mark.parametrize("section, key, value", [
    ("train", "checkpoint_period", 0), ("train", "log_freq", 0), ("train", "max_to_keep", 0),
    ("student", "patch_size", 0), ("student", "drop_path_rate", 1.5), ("ibot", "mask_ratio_min_max", 0.3),
    ("dino", "head_n_prototypes", 0), ("ibot", "head_hidden_dim", 0), ("optim", "base_lr", -1.0),
    ("teacher", "teacher_temp", 0.0), ("compute", "device", 3), ("monitor", "period", -1),
    ("monitor", "knn_scenes", 5), ("monitor", "probe_scenes", (0, 4)), ("monitor", "probe_size", 4),
    ("monitor", "images", "skimage:coffee"), ("monitor", "appearance", "stripes"),
    ("train", "seed", -1), ("train", "seed", 1.5), ("train", "num_workers", -1), ("train", "OFFICIAL_EPOCH_LENGTH", 0),
    ("train", "OFFICIAL_EPOCH_LENGTH", 2.5), ("optim", "epochs", 0),
    # these trained, silently wrong (gradient ascent, a teacher moving away from the student, ...), or failed
    # with a message that did not name the key (a CosineScheduler's, torch's AdamW's)
    ("optim", "clip_grad", -1.0), ("optim", "freeze_last_layer_epochs", -1), ("teacher", "momentum_teacher", 1.5),
    ("teacher", "final_momentum_teacher", -0.1), ("optim", "weight_decay", -0.04), ("optim", "weight_decay_end", -1.0),
    ("dino", "loss_weight", -1.0), ("dino", "koleo_loss_weight", -0.1), ("ibot", "loss_weight", -1.0),
    ("optim", "layerwise_decay", 0.0), ("optim", "layerwise_decay", 1.1), ("optim", "adamw_beta1", 1.0),
    ("optim", "adamw_beta2", 1.5), ("optim", "adamw_beta2", -0.1), ("teacher", "warmup_teacher_temp_epochs", -1),
    ("optim", "patch_embed_lr_mult", -0.2), ("optim", "backbone_lr_mult", -1.0), ("optim", "freeze_backbone_iters", -5),
    ("ibot", "mask_sample_probability", 1.5),
])
def test_config_values_that_would_fail_in_the_loop_are_refused_naming_the_key(section, key, value):
    """Each of these ran and then failed with a traceback (a division by zero at the first log line, an
    unpacking error at the first monitor check...) or trained with a meaningless setting."""
    with pytest.raises(ConfigError, match=rf"^c.py: {section}.{key} = {re.escape(repr(value))}: "):
        resolve({section: {key: value}}, "c.py")


def test_the_limits_of_the_range_checks_are_legal_settings():
    """What the official recipe and code allow stays allowed: clip_grad 0 (no clipping, as the official
    ``if clip_grad``), no layer decay, a teacher that does not move, no weight decay, a loss turned off."""
    cfg = resolve({"optim": dict(clip_grad=0.0, layerwise_decay=1.0, weight_decay=0.0, weight_decay_end=0.0,
                                 adamw_beta1=0.0, freeze_last_layer_epochs=0, freeze_backbone_iters=0),
                   "teacher": dict(momentum_teacher=1.0, final_momentum_teacher=1.0, warmup_teacher_temp_epochs=0),
                   "dino": dict(loss_weight=0.0, koleo_loss_weight=0.0), "ibot": dict(loss_weight=0.0)}, "c.py")
    assert cfg["optim"]["clip_grad"] == 0.0 and cfg["teacher"]["momentum_teacher"] == 1.0


def test_a_run_shorter_than_the_temperature_warm_up_ends_part_way_as_the_official_schedule():
    """optim.epochs below teacher.warmup_teacher_temp_epochs: the official CosineScheduler keeps the
    warm-up's own length (the run ends part way up); ours squeezed the warm-up into the run."""
    from dinov2.utils.utils import CosineScheduler as Official

    teacher = dict(momentum_teacher=0.992, final_momentum_teacher=1.0, warmup_teacher_temp=0.04, teacher_temp=0.07,
                   warmup_teacher_temp_epochs=30)
    optim = dict(epochs=2, weight_decay=0.04, weight_decay_end=0.4, warmup_epochs=1, min_lr=1e-6,
                 freeze_last_layer_epochs=1)
    ours = build_schedules(optim, teacher, epoch_length=10, lr=1e-3)
    official = Official(base_value=0.07, final_value=0.07, total_iters=300, warmup_iters=300, start_warmup_value=0.04)
    assert [ours.teacher_temp[i] for i in range(25)] == pytest.approx([official[i] for i in range(25)], abs=1e-15)
    assert ours.teacher_temp[19] == pytest.approx(0.04 + 0.03 * 19 / 299)  # the run's last iteration: 1/15 of the way


def test_distillation_students_are_checked_with_the_config_file_named():
    with pytest.raises(ConfigError, match=r"^d.py: unknown key distill.students\[\].foo"):
        resolve({"distill": {"students": [{"foo": 1}]}}, "d.py")
    with pytest.raises(ConfigError, match=r"^d.py: distill.students\[\].drop_path_rate = '0.1': expected a number"):
        resolve({"distill": {"students": [{"drop_path_rate": "0.1"}]}}, "d.py")
    with pytest.raises(ConfigError, match=r"^d.py: distill.students = 'x': a list of dicts"):
        resolve({"distill": {"students": "x"}}, "d.py")
    custom = dict(arch="custom", embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ConfigError, match=r"^d.py: student.embed_dim = 32: must be a multiple of num_heads "
                                          r"\(distill.students\[1\] over the student section\)"):
        resolve({"student": custom, "distill": {"students": [{}, {"num_heads": 5}]}}, "d.py")


def test_a_ddp_wrapped_student_gives_the_groups_of_the_bare_one(tmp_path):
    """Under DDP the student parts are wrapped before the optimizer is built; the wrapper has no
    ``blocks`` of its own, which once turned layer-wise decay off (7 groups instead of 11) and made
    DDP checkpoints unresumable in one process. A gloo group of one process wraps as torchrun does."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pretrain.meta_arch import SSLMetaArch
    from pretrain.schedules import student_params_groups

    head = dict(head_n_prototypes=16, head_bottleneck_dim=8, head_hidden_dim=16)
    cfg = resolve({"student": dict(arch="custom", embed_dim=32, depth=3, num_heads=2), "dino": head, "ibot": head,
                   "crops": dict(global_crops_size=28, local_crops_size=14)})
    torch.manual_seed(0)
    model = SSLMetaArch(cfg)

    def summary(groups):
        return [(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"], [id(p) for p in g["params"]])
                for g in groups]

    bare = summary(student_params_groups(model.student, cfg["optim"]))
    assert len({g[0] for g in bare}) == 6  # layers 0..depth+1 of the backbone (patch embed x 0.2) and the heads
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        wrapped = nn.ModuleDict({k: DDP(v) for k, v in model.student.items()})
        assert summary(student_params_groups(wrapped, cfg["optim"])) == bare
    finally:
        dist.destroy_process_group()
