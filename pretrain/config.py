"""Pretraining configuration: the official sections and defaults of the released
``dinov2/configs/ssl_default_config.yaml`` (for a ViT-L/16 there; patch 14 here, as the released
models), plus our own sections, with every user value checked at start.

A config is a dict of sections (``student``, ``teacher``, ``dino``, ``ibot``, ``train``, ``optim``,
``crops``, ``compute``, ``monitor``, ``cell``, ``distill``); :func:`resolve` fills the defaults and refuses an
unknown section or key, naming it (``optim.warmup_epoch``: a typo would otherwise be ignored), and
values of the wrong kind. Config files in ``configs/pretrain/`` are mmengine ``.py`` files with one
``dict`` per section.
"""

from __future__ import annotations

import copy
import difflib
import math
from numbers import Number
from typing import Any, Callable

__all__ = ["DEFAULTS", "ConfigError", "resolve"]


class ConfigError(ValueError):
    """A pretraining config value that cannot be used; the message names the key."""


#: The DINO / iBOT head settings (65,536 prototypes; 131,072 and bottleneck 384 in the ViT-g config).
_HEAD = dict(head_n_prototypes=65536, head_bottleneck_dim=256, head_nlayers=3, head_hidden_dim=2048)

DEFAULTS: dict[str, dict[str, Any]] = {
    "student": dict(
        arch="vit_large",  # vit_small, vit_base, vit_large, vit_giant2, or "custom" with the three below
        embed_dim=None, depth=None, num_heads=None,
        patch_size=14,
        num_register_tokens=0,
        drop_path_rate=0.3,
        layerscale=1.0e-5,
        drop_path_uniform=True,
        ffn_layer="mlp",  # "swiglufused" for ViT-g
        qkv_bias=True, proj_bias=True, ffn_bias=True,
        pretrained_weights=None,  # continued pretraining: a zoo name or a file load_backbone reads
    ),
    "teacher": dict(
        momentum_teacher=0.992,
        final_momentum_teacher=1.0,
        warmup_teacher_temp=0.04,
        teacher_temp=0.07,
        warmup_teacher_temp_epochs=30,
    ),
    "dino": dict(loss_weight=1.0, **_HEAD, koleo_loss_weight=0.1),
    "ibot": dict(loss_weight=1.0, mask_sample_probability=0.5, mask_ratio_min_max=(0.1, 0.5), separate_head=False,
                 **_HEAD),
    "train": dict(
        batch_size_per_gpu=64,
        dataset=None,  # dict(type=..., ...) or a list of them: see pretrain.data
        seed=0,
        num_workers=10,
        OFFICIAL_EPOCH_LENGTH=1250,
        centering="centering",  # or "sinkhorn_knopp"
        checkpoint_period=3750,  # iterations between checkpoints (the official 3 epochs)
        max_to_keep=3,
        log_freq=10,  # iterations between log lines
    ),
    "optim": dict(
        epochs=100,
        weight_decay=0.04,
        weight_decay_end=0.4,
        base_lr=0.004,  # for a total batch of 1024
        lr=0.0,  # set from base_lr by the scaling rule
        warmup_epochs=10,
        min_lr=1.0e-6,
        clip_grad=3.0,
        freeze_last_layer_epochs=1,
        scaling_rule="sqrt_wrt_1024",
        patch_embed_lr_mult=0.2,
        layerwise_decay=0.9,
        adamw_beta1=0.9,
        adamw_beta2=0.999,
        freeze_backbone_iters=0,  # continued pretraining: heads warm up on a frozen backbone first
        backbone_lr_mult=1.0,  # continued pretraining: a lower backbone rate after the warm-up
    ),
    "crops": dict(
        global_crops_scale=(0.32, 1.0),
        local_crops_number=8,
        local_crops_scale=(0.05, 0.32),
        global_crops_size=224,
        local_crops_size=98,  # 96 in the released ViT/16 config: a multiple of the patch size here
        # Gaussian-blur probabilities of (global crop 1, global crop 2, local crops): the published recipe;
        # (0.0, 0.9, 0.5) is what the released code did. Less blur keeps fine textures of small images.
        blur_probabilities=(1.0, 0.1, 0.5),
        # colour jitter strengths (brightness, contrast, saturation, hue) and how often it and grey apply
        color_jitter=(0.4, 0.4, 0.2, 0.1),
        color_jitter_probability=0.8,
        grayscale_probability=0.2,
    ),
    "compute": dict(
        precision="auto",  # auto (bf16 where the device has it, else fp32), fp32, bf16, fp16 (CUDA, with a scaler)
        distributed="ddp",  # under torchrun: ddp or fsdp (torch's fully_shard)
        device=None,  # cpu, cuda; default: cuda when available
    ),
    "monitor": dict(
        period=0,  # iterations between dense-quality checks (0: off)
        images=("skimage:astronaut", "skimage:coffee", "skimage:chelsea"),
        pca_size=224,
        probe_scenes=(8, 32),  # synthetic scenes to fit / score the frozen linear probe on (few: colour alone
        #                        separates the scenes' classes, so more fitting scenes saturate the probe)
        probe_size=112,
        knn_scenes=(200, 100),
        appearance="colour",  # the scenes' SceneConfig.appearance: "colour" or "texture" (classes shown by texture only)
    ),
    "cell": dict(
        # ours, not the DINOv2 recipe (0: off): every patch token of the student's global crops is trained,
        # through the DINO head, towards the teacher's class-token targets of its own patch-sized cell fed
        # alone (a one-patch image), Sinkhorn-Knopp balanced at the teacher temperature (pretrain.meta_arch)
        loss_weight=0.0,
    ),
    "distill": dict(
        teacher=None,  # distillation: a zoo name or a file load_backbone reads (the frozen teacher)
        # a pretraining checkpoint (or its run folder: the newest) holding teacher.dino_head.*; config.json records
        # the file a folder gave, and a resume reads none: its checkpoint holds the frozen head
        teacher_head=None,
        students=(),  # dicts of student settings over the student section; empty: the student section
    ),
}


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def resolve(user: dict[str, Any] | None, source: str = "config") -> dict[str, dict[str, Any]]:
    """The defaults updated by ``user``'s sections; unknown sections or keys and values of the wrong
    kind raise :class:`ConfigError` naming ``source`` and the key."""
    cfg = copy.deepcopy(DEFAULTS)
    for section, values in (user or {}).items():
        if section.startswith("_") or section in ("work_dir", "filename"):
            continue
        if section not in cfg:
            raise ConfigError(f"{source}: unknown section {section!r}{_suggest(section, cfg)}; known: "
                              f"{', '.join(cfg)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section} must be a dict of settings, not {type(values).__name__}")
        for key, value in values.items():
            if key not in cfg[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}{_suggest(key, cfg[section])}")
            _check_kind(cfg[section][key], value, f"{section}.{key}", source)
            cfg[section][key] = value
    _check(cfg, source)
    students = cfg["distill"]["students"]
    if not isinstance(students, (list, tuple)) or not all(isinstance(st, dict) for st in students):
        raise ConfigError(f"{source}: distill.students = {students!r}: a list of dicts of student settings")
    for i, student in enumerate(students):  # checked here, where the config's file is known
        try:
            _check({**cfg, "student": resolve_student(cfg["student"], student, source)}, source)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (distill.students[{i}] over the student section)") from None
    return cfg


#: The largest float32: settings become float32 tensors (a learning rate of 1e40 overflowed).
FLOAT32_MAX = 3.4028234663852886e38


def _check_kind(default: Any, value: Any, key: str, source: str) -> None:
    """A value of the kind of its default: true or false for a flag, a number for a number."""
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"{source}: {key} = {value!r}: expected true or false")
    if isinstance(default, Number) and not isinstance(default, bool):
        if not isinstance(value, Number) or isinstance(value, bool):
            raise ConfigError(f"{source}: {key} = {value!r}: expected a number")
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:  # (inf passed "> 0": a temperature of inf made
            # every target uniform; 1e40 overflowed a float32 tensor, an internal error)
            raise ConfigError(f"{source}: {key} = {value!r}: expected a finite number (float32's range: within "
                              "+-3.4e38)")


def _check(cfg: dict, source: str) -> None:
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {key} = {_get(cfg, key)!r}: {what}")

    def whole(key: str, low: int, what: str = "") -> None:
        value = _get(cfg, key)
        need(isinstance(value, int) and not isinstance(value, bool) and value >= low, key,
             what or f"an integer >= {low}")

    def pair(key: str, ok: Callable[[Any, Any], bool], what: str) -> None:
        value = _get(cfg, key)
        need(isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, Number) for v in value)
             and ok(*value), key, what)

    s, crops, optim, train, teacher = cfg["student"], cfg["crops"], cfg["optim"], cfg["train"], cfg["teacher"]
    whole("student.patch_size", 1)
    whole("student.num_register_tokens", 0)
    need(0 <= s["drop_path_rate"] < 1, "student.drop_path_rate", "a rate in [0, 1)")
    for head in ("dino", "ibot"):
        for k in ("head_n_prototypes", "head_bottleneck_dim", "head_hidden_dim", "head_nlayers"):
            whole(f"{head}.{k}", 1)
    for key in ("teacher.teacher_temp", "teacher.warmup_teacher_temp"):
        need(_get(cfg, key) > 0, key, "a temperature > 0")
    need(teacher["warmup_teacher_temp_epochs"] >= 0, "teacher.warmup_teacher_temp_epochs", "a number of epochs >= 0")
    for key in ("teacher.momentum_teacher", "teacher.final_momentum_teacher"):
        need(0 <= _get(cfg, key) <= 1, key, "an EMA momentum in [0, 1] (1: the teacher stays as it is)")
    for key in ("optim.base_lr", "optim.min_lr"):
        need(_get(cfg, key) >= 0, key, "a learning rate >= 0")
    for key in ("optim.weight_decay", "optim.weight_decay_end"):
        need(_get(cfg, key) >= 0, key, "a weight decay >= 0")
    need(optim["clip_grad"] >= 0, "optim.clip_grad", "a gradient norm >= 0 (0: no clipping)")
    need(optim["freeze_last_layer_epochs"] >= 0, "optim.freeze_last_layer_epochs", "a number of epochs >= 0")
    need(0 < optim["layerwise_decay"] <= 1, "optim.layerwise_decay", "a rate decay in (0, 1] (1: none)")
    for key in ("optim.patch_embed_lr_mult", "optim.backbone_lr_mult"):
        need(_get(cfg, key) >= 0, key, "a learning-rate multiplier >= 0")
    need(optim["freeze_backbone_iters"] >= 0, "optim.freeze_backbone_iters", "a number of iterations >= 0")
    for key in ("optim.adamw_beta1", "optim.adamw_beta2"):
        need(0 <= _get(cfg, key) < 1, key, "an AdamW beta in [0, 1)")
    for key in ("dino.loss_weight", "dino.koleo_loss_weight", "ibot.loss_weight"):
        need(_get(cfg, key) >= 0, key, "a weight >= 0 (0: the loss is off)")
    need(0 <= cfg["ibot"]["mask_sample_probability"] <= 1, "ibot.mask_sample_probability", "a probability in [0, 1]")
    for key in ("train.checkpoint_period", "train.log_freq", "train.max_to_keep"):
        whole(key, 1)
    whole("train.num_workers", 0, "DataLoader worker processes: an integer >= 0 (0: load in the main process)")
    seed = train["seed"]
    need(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32, "train.seed",
         "an integer in [0, 2**32)")
    if s["arch"] == "custom":
        for k in ("embed_dim", "depth", "num_heads"):
            need(isinstance(s[k], int) and s[k] > 0, f"student.{k}", "a custom arch needs a positive integer")
        need(s["embed_dim"] % s["num_heads"] == 0, "student.embed_dim", "must be a multiple of num_heads")
    need(s["ffn_layer"] in ("mlp", "swiglufused", "swiglu"), "student.ffn_layer", "use mlp or swiglufused")
    # continued pretraining with the patch size left at its default: the weights settle it, and the crops
    # are checked against theirs once they are loaded (pretrain.train._check_crops), still before any write
    settled_by_weights = (s["pretrained_weights"] and s["patch_size"] == DEFAULTS["student"]["patch_size"]
                          and not cfg["distill"]["teacher"])
    for k in ("global_crops_size", "local_crops_size"):
        need(isinstance(crops[k], int) and (settled_by_weights or (crops[k] >= s["patch_size"] and
                                                                   crops[k] % s["patch_size"] == 0)),
             f"crops.{k}", f"a multiple of the patch size {s['patch_size']}" if not settled_by_weights else
             "a whole number of pixels")
    blur = crops["blur_probabilities"]
    need(isinstance(blur, (list, tuple)) and len(blur) == 3 and all(isinstance(p, Number) and 0 <= p <= 1 for p in blur),
         "crops.blur_probabilities", "three probabilities in [0, 1] (global crop 1, global crop 2, local crops)")
    jitter = crops["color_jitter"]
    need(isinstance(jitter, (list, tuple)) and len(jitter) == 4 and all(isinstance(v, Number) for v in jitter)
         and all(0 <= v <= 1 for v in jitter[:3]) and 0 <= jitter[3] <= 0.5, "crops.color_jitter",
         "(brightness, contrast, saturation, hue): the first three in [0, 1], hue in [0, 0.5]")
    for key in ("color_jitter_probability", "grayscale_probability"):
        need(0 <= crops[key] <= 1, f"crops.{key}", "a probability in [0, 1]")
    need(isinstance(crops["local_crops_number"], int) and crops["local_crops_number"] >= 0, "crops.local_crops_number",
         "an integer >= 0")
    need(isinstance(train["batch_size_per_gpu"], int) and train["batch_size_per_gpu"] >= 2, "train.batch_size_per_gpu",
         "an integer >= 2 (KoLeo needs neighbours)")
    need(train["centering"] in ("centering", "sinkhorn_knopp"), "train.centering", "use centering or sinkhorn_knopp")
    whole("train.OFFICIAL_EPOCH_LENGTH", 1, "iterations an epoch: an integer >= 1")
    need(optim["epochs"] > 0, "optim.epochs", "a number of epochs > 0")
    need(optim["epochs"] * train["OFFICIAL_EPOCH_LENGTH"] >= 1, "optim.epochs",
         f"less than one iteration in all with train.OFFICIAL_EPOCH_LENGTH = {train['OFFICIAL_EPOCH_LENGTH']}")
    need(0 <= optim["warmup_epochs"] <= optim["epochs"], "optim.warmup_epochs", "between 0 and optim.epochs")
    need(cfg["compute"]["precision"] in ("auto", "fp32", "bf16", "fp16"), "compute.precision",
         "use auto, fp32, bf16 or fp16")
    need(cfg["compute"]["distributed"] in ("ddp", "fsdp"), "compute.distributed", "use ddp or fsdp")
    pair("ibot.mask_ratio_min_max", lambda lo, hi: 0 <= lo <= hi < 1, "(min, max) with 0 <= min <= max < 1")
    device = cfg["compute"]["device"]
    need(device is None or isinstance(device, str), "compute.device", "a device name: cpu, cuda, cuda:1")
    monitor = cfg["monitor"]
    whole("monitor.period", 0, "iterations between checks: an integer >= 0 (0: off)")
    for key in ("monitor.probe_scenes", "monitor.knn_scenes"):
        pair(key, lambda fit, test: all(isinstance(n, int) and n >= 1 for n in (fit, test)),
             "(scenes to fit on, scenes to score): two integers >= 1")
    whole("monitor.pca_size", 1)
    whole("monitor.probe_size", 8, "the scenes' side in pixels: an integer >= 8")
    need(isinstance(monitor["images"], (list, tuple)) and all(isinstance(i, str) for i in monitor["images"]),
         "monitor.images", "a list of image files (or skimage:NAME)")
    from dinov2_dense.data.synthetic import APPEARANCES

    need(monitor["appearance"] in APPEARANCES, "monitor.appearance", f"use {' or '.join(APPEARANCES)}")
    need(cfg["cell"]["loss_weight"] >= 0, "cell.loss_weight", "a weight >= 0")
    need(cfg["cell"]["loss_weight"] == 0 or cfg["distill"]["teacher"] is None, "cell.loss_weight",
         "distillation has no cell loss: set it to 0 with distill.teacher")


def resolve_student(base: dict, override: dict, source: str = "config") -> dict:
    """A distillation student: the ``student`` section updated by one entry of ``distill.students``."""
    unknown = set(override) - set(DEFAULTS["student"])
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{source}: unknown key distill.students[].{key}{_suggest(key, DEFAULTS['student'])}")
    for key, value in override.items():
        _check_kind(DEFAULTS["student"][key], value, f"distill.students[].{key}", source)
    return {**base, **override}


def _get(cfg: dict, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return cfg[section][key]
