"""Distillation (Oquab et al. 2023, Sec. 5, "Distillation of smaller models"): the same training
loop with a large frozen teacher, and with the paper's changes: no masking and no stochastic depth
for the students, the iBOT loss on every patch of the two global crops, and a spare EMA of each
student kept as the model to export. Several students of any size learn from one teacher at once
(each has its own heads and optimiser groups; the teacher runs once per batch), as DINOv3 does.

A student starts from its ``pretrained_weights`` where its section gives them (loaded by the loop as
for continued pretraining, which settles its sizes), else from a fresh initialisation. The teacher is
anything ``load_backbone`` returns (official weights included). Its DINO head,
never released for the official models, is either loaded (a head trained with it: a pretraining
checkpoint's ``teacher.dino_head.*``) or drawn at random and frozen: a fixed projection of the
teacher's tokens onto prototypes whose softmax the students learn to match. Students and teacher
must share the patch size, so that patch tokens correspond.

:class:`DistillArch` has the interface of :class:`pretrain.meta_arch.SSLMetaArch` that the training
loop uses (``student``, ``teacher``, ``get_params_groups``, ``forward_backward``,
``update_teacher``, ``export_backbones``).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from .heads import DINOHead
from .loss import DINOLoss, KoLeoLoss, iBOTPatchLoss, relative_entropy
from .meta_arch import build_backbone
from .schedules import student_params_groups

__all__ = ["DistillArch", "feature_distance"]


class DistillArch(nn.Module):
    """A frozen teacher (backbone + DINO head) and ``students``: for each, a backbone and a DINO
    head that learn (``student``) and their EMA (``teacher["ema<i>_*"]``), which is exported.
    ``student_backbones``: per student, a backbone to start from (its ``pretrained_weights``, loaded:
    student and EMA begin as it) or None for a fresh one built from its section."""

    def __init__(self, cfg: dict, teacher_backbone: nn.Module, student_sections: list[dict],
                 teacher_head_state: dict[str, Tensor] | None = None,
                 student_backbones: list[nn.Module | None] | None = None):
        super().__init__()
        self.cfg = cfg
        dino = cfg["dino"]
        img = cfg["crops"]["global_crops_size"]
        head_kw = dict(out_dim=dino["head_n_prototypes"], hidden_dim=dino["head_hidden_dim"],
                       bottleneck_dim=dino["head_bottleneck_dim"], nlayers=dino["head_nlayers"])
        frozen_head = DINOHead(in_dim=teacher_backbone.embed_dim, **head_kw)
        if teacher_head_state is not None:
            from dinov2_dense.checkpoints import key_mismatches

            problems = key_mismatches(frozen_head.state_dict(), teacher_head_state)
            if problems:
                from .train import FRESH_HEAD_HINT

                raise ValueError(f"distill.teacher_head: its DINO head does not fit a head on this teacher "
                                 f"({teacher_backbone.embed_dim} wide) with the config's dino section: "
                                 f"{'; '.join(problems)}; {FRESH_HEAD_HINT}")
            frozen_head.load_state_dict(teacher_head_state, strict=True)
        student_parts: dict[str, nn.Module] = {}
        self.n_students = len(student_sections)
        starts = list(student_backbones or []) + [None] * len(student_sections)
        for i, section in enumerate(student_sections):
            backbone = starts[i]  # loaded weights (student.pretrained_weights), built without drop path
            if backbone is None:  # no stochastic depth
                backbone = build_backbone({**section, "drop_path_rate": 0.0}, img, drop_path=False)
            if backbone.patch_size != teacher_backbone.patch_size:
                raise ValueError(f"student {i}: patch size {backbone.patch_size} differs from the teacher's "
                                 f"{teacher_backbone.patch_size}; patch tokens would not correspond")
            student_parts[f"student{i}_backbone"] = backbone
            student_parts[f"student{i}_head"] = DINOHead(in_dim=backbone.embed_dim, **head_kw)
        self.student = nn.ModuleDict(student_parts)
        ema = {f"ema{k[len('student'):]}": copy.deepcopy(v) for k, v in student_parts.items()}
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, "dino_head": frozen_head, **ema})
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(dino["head_n_prototypes"])
        self.ibot_loss = iBOTPatchLoss(dino["head_n_prototypes"])
        self.koleo_loss = KoLeoLoss()

    def get_params_groups(self) -> list[dict]:
        """Fused parameter groups of every student part (layer decay and patch-embed multiplier on
        the backbones; no decay on biases, norms and gammas; the heads' last layers marked)."""
        return student_params_groups(self.student, self.cfg["optim"])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """The spare EMA of each student (the frozen teacher does not move)."""
        for key, part in self.student.items():
            ema = self.teacher[f"ema{key[len('student'):]}"]
            t, s = list(ema.parameters()), list(part.parameters())
            torch._foreach_lerp_(t, s, 1.0 - momentum)

    def export_backbones(self) -> dict[str, nn.Module]:
        return {f"student{i}": self.teacher[f"ema{i}_backbone"] for i in range(self.n_students)}

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward_backward(self, data: dict[str, Any], teacher_temp: float, autocast: Any = None,
                         scaler: Any = None) -> dict[str, Tensor]:
        device = next(self.student.parameters()).device
        n_local = self.cfg["crops"]["local_crops_number"]
        global_crops = data["collated_global_crops"].to(device, non_blocking=True)
        local_crops = data["collated_local_crops"].to(device, non_blocking=True)
        ctx = autocast if autocast is not None else nullcontext
        n_terms = 2 + max(n_local * 2, 1) if n_local else 2
        with torch.no_grad(), ctx():
            out = self.teacher.backbone(global_crops, is_training=True)
            cls = out["x_norm_clstoken"].chunk(2)
            cls = torch.cat((cls[1], cls[0]))  # crop A's student output is matched with crop B's teacher output
            patches = out["x_norm_patchtokens"]
            b, n, d = patches.shape
            after = self.teacher.dino_head(torch.cat([cls, patches.reshape(b * n, d)])).float()
            temp = teacher_temp
            dino_t = self.dino_loss.softmax_center_teacher(after[: cls.shape[0]], teacher_temp=temp).view(2, -1, after.shape[-1])
            self.dino_loss.update_center(after[: cls.shape[0]])
            patch_t = self.ibot_loss.softmax_center_teacher(after[cls.shape[0]:].view(b, n, -1), teacher_temp=temp)
            self.ibot_loss.update_center(after[cls.shape[0]:].view(b, n, -1))
        losses: dict[str, Tensor] = {}
        total = 0.0
        for i in range(self.n_students):
            backbone, head = self.student[f"student{i}_backbone"], self.student[f"student{i}_head"]
            with ctx():
                crops = [global_crops, local_crops] if n_local else [global_crops]
                outs = backbone(crops, is_training=True)
                g = outs[0]
                inputs = ([outs[1]["x_norm_clstoken"]] if n_local else []) + [g["x_norm_clstoken"],
                                                                            g["x_norm_patchtokens"].flatten(0, 1)]
                sizes = [t.shape[0] for t in inputs]
                heads_out = list(head(torch.cat(inputs)).float().split(sizes))
            local_out = heads_out.pop(0) if n_local else None
            global_out, patch_out = heads_out
            loss = self.dino_loss([global_out], [dino_t.flatten(0, 1)]) * 2 / n_terms
            if n_local:
                loss = loss + self.dino_loss(list(local_out.chunk(n_local)), dino_t) / n_terms
            all_patches = torch.ones(b, n, dtype=torch.bool, device=device)
            ibot = self.ibot_loss(patch_out.view(b, n, -1), patch_t, all_patches)
            koleo = self.cfg["dino"]["koleo_loss_weight"] * sum(
                self.koleo_loss(p) for p in g["x_norm_clstoken"].float().chunk(2))
            losses[f"student{i}_dino_loss"] = loss.detach()
            losses[f"student{i}_ibot_loss"] = ibot.detach()
            losses[f"student{i}_koleo_loss"] = koleo.detach()
            total = total + self.cfg["dino"]["loss_weight"] * loss + self.cfg["ibot"]["loss_weight"] * ibot + koleo
        if scaler is not None:
            scaler.scale(total).backward()
        else:
            total.backward()
        losses["dino_teacher_entropy"] = relative_entropy(dino_t)
        losses["ibot_teacher_entropy"] = relative_entropy(patch_t)
        return {k: v.float() for k, v in losses.items()}


@torch.no_grad()
def feature_distance(student: nn.Module, teacher: nn.Module, images: Tensor) -> float:
    """Mean cosine distance between the class tokens of ``student`` and ``teacher`` after a least-
    squares linear map from the student's width to the teacher's (widths differ), on ``images``."""
    s = student.forward_features(images)["x_norm_clstoken"].float()
    t = teacher.forward_features(images)["x_norm_clstoken"].float()
    w = torch.linalg.lstsq(torch.cat([s, torch.ones(len(s), 1)], 1), t).solution
    mapped = torch.cat([s, torch.ones(len(s), 1)], 1) @ w
    return float(1 - torch.nn.functional.cosine_similarity(mapped, t, dim=1).mean())
