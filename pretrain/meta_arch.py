"""The DINOv2 meta-architecture: a student and an EMA teacher, each a ViT backbone with a DINO head
(and an iBOT head, shared by default), trained with the DINO, iBOT and KoLeo losses (Oquab et al.
2023, Sec. 4; the released ``dinov2/train/ssl_meta_arch.py`` is the reference for the semantics).

One step (:meth:`SSLMetaArch.forward_backward`):

1. Teacher, without gradients, on the two global crops: class tokens through the DINO head, softmax
   centred (or Sinkhorn-Knopp) at the teacher temperature, the two crops swapped so that crop A's
   student output is matched with crop B's teacher output; the patch tokens at the masked positions
   through the iBOT head likewise.
2. Student on the global crops (their masked patches replaced by the mask token) and on the local
   crops: two forward passes of the backbone (plain ``scaled_dot_product_attention``; the official
   code needs xformers to run the two crop sizes as one). Class tokens of all crops and the masked
   patch tokens go through the head in one call, then are split.
3. Losses, with the official normalisation: DINO on local crops and on the global crops divided by
   the number of (student, teacher) crop pairs, KoLeo (weight 0.1) on each global crop's class
   tokens, iBOT on the masked patches (each image weighted 1 / its number of masked patches).
4. Ours, off by default (``cell.loss_weight``): the cell loss. The teacher reads each patch-sized
   cell of the global crops alone (a one-patch image; its class token through the DINO head,
   Sinkhorn-Knopp balanced), and every patch token of the student's global crops (masked or not)
   is trained towards its own cell's target through the same head. The DINO loss with one-patch
   local crops teaches the class-token path to read a cell's texture; this hands that reading to
   the patch tokens, which the dense heads use (README, "What it does not learn yet").

:meth:`update_teacher` moves the teacher towards the student with the scheduled momentum.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_dense.models import DinoVisionTransformer

from .heads import DINOHead
from .loss import DINOLoss, KoLeoLoss, iBOTPatchLoss, relative_entropy
from .schedules import student_params_groups

__all__ = ["SSLMetaArch", "build_backbone"]

ARCHS = {"vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16),
         "vit_giant2": (1536, 40, 24)}


def build_backbone(student: dict, img_size: int, drop_path: bool) -> DinoVisionTransformer:
    """A backbone from the ``student`` config section: ``arch`` names a released size (vit_small,
    vit_base, vit_large, vit_giant2) or is ``"custom"`` with ``embed_dim``, ``depth``, ``num_heads``;
    the student gets the drop-path rate, the teacher none (as the official ``build_model``)."""
    from dinov2_dense import models
    from dinov2_dense.settings import BACKBONE_SETTINGS

    kwargs = dict(img_size=img_size, patch_size=student["patch_size"], init_values=student["layerscale"],
                  ffn_layer=student["ffn_layer"], num_register_tokens=student.get("num_register_tokens", 0),
                  qkv_bias=student.get("qkv_bias", True), proj_bias=student.get("proj_bias", True),
                  ffn_bias=student.get("ffn_bias", True))
    if student.get("num_register_tokens", 0):
        kwargs.update(interpolate_antialias=True, interpolate_offset=0.0)
    if drop_path:
        kwargs.update(drop_path_rate=student["drop_path_rate"], drop_path_uniform=student["drop_path_uniform"])
    arch = student["arch"]
    if arch == "custom":
        dims = {k: student[k] for k in ("embed_dim", "depth", "num_heads")}
        return DinoVisionTransformer(**dims, **kwargs)
    known = {s.arch for s in BACKBONE_SETTINGS.values()}
    if arch not in known:
        raise ValueError(f"student.arch={arch!r}: use one of {sorted(known)} or 'custom' (with embed_dim, depth, "
                         "num_heads)")
    return getattr(models, arch)(**kwargs)


class SSLMetaArch(nn.Module):
    """Student and teacher (``nn.ModuleDict`` of ``backbone``, ``dino_head``[, ``ibot_head``]) and the
    losses, built from a config dict with the official sections (see ``pretrain.config``)."""

    def __init__(self, cfg: dict, student_backbone: nn.Module | None = None, teacher_backbone: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        dino, ibot, crops = cfg["dino"], cfg["ibot"], cfg["crops"]
        img_size = crops["global_crops_size"]
        student = student_backbone if student_backbone is not None else build_backbone(cfg["student"], img_size, True)
        teacher = teacher_backbone if teacher_backbone is not None else build_backbone(cfg["student"], img_size, False)
        self.embed_dim = student.embed_dim
        self.do_dino = dino["loss_weight"] > 0
        self.do_koleo = dino["koleo_loss_weight"] > 0
        self.do_ibot = ibot["loss_weight"] > 0
        self.ibot_separate_head = bool(ibot["separate_head"])
        self.cell_weight = float(cfg["cell"]["loss_weight"])  # global crops are whole patches (pretrain.config)

        def head(section: dict) -> DINOHead:
            return DINOHead(in_dim=self.embed_dim, out_dim=section["head_n_prototypes"],
                            hidden_dim=section["head_hidden_dim"], bottleneck_dim=section["head_bottleneck_dim"],
                            nlayers=section["head_nlayers"])

        student_dict: dict[str, nn.Module] = {"backbone": student, "dino_head": head(dino)}
        self.dino_loss = DINOLoss(dino["head_n_prototypes"])
        self.koleo_loss = KoLeoLoss()
        if self.do_ibot:
            if self.ibot_separate_head:
                student_dict["ibot_head"] = head(ibot)
            self.ibot_patch_loss = iBOTPatchLoss(ibot["head_n_prototypes"] if self.ibot_separate_head
                                                 else dino["head_n_prototypes"])
        self.student = nn.ModuleDict(student_dict)
        teacher_dict = {k: copy.deepcopy(v) for k, v in student_dict.items() if k != "backbone"}
        teacher_dict["backbone"] = teacher
        self.teacher = nn.ModuleDict(teacher_dict)
        self.teacher.load_state_dict(self.student.state_dict())  # the teacher starts as the student
        self.teacher.requires_grad_(False)

    # -- optimisation --------------------------------------------------------------------------
    def get_params_groups(self) -> list[dict]:
        """Fused parameter groups of every student part (layer decay and patch-embed multiplier on
        the backbones; no decay on biases, norms and gammas; the heads' last layers marked)."""
        return student_params_groups(self.student, self.cfg["optim"])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = momentum * teacher + (1 - momentum) * student, parameter by parameter."""
        for part in (self.student, self.teacher):  # FSDP leaves a root's weights gathered after a
            for module in part.values():           # forward without backward (the teacher's): shard them again
                if hasattr(module, "reshard"):
                    module.reshard()
        s = [p for k in self.student for p in self.student[k].parameters()]
        t = [p for k in self.student for p in self.teacher[k].parameters()]
        torch._foreach_lerp_(t, s, 1.0 - momentum)  # t + (1 - m)(s - t): exactly t where s == t

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    # -- one step ------------------------------------------------------------------------------
    def forward_backward(self, data: dict[str, Any], teacher_temp: float, autocast: Any = None,
                         scaler: Any = None) -> dict[str, Tensor]:
        """Compute the losses of one batch (the output of ``collate_data_and_cast``) and backpropagate
        them; returns the detached loss terms (keys ending in ``loss``) and how uniform the teacher's
        targets are (``dino_teacher_entropy``, ``ibot_teacher_entropy``: mean entropy over log K, 1 =
        uniform). ``autocast``: a context manager factory for mixed precision; ``scaler``: a
        GradScaler (fp16 on CUDA) or None."""
        device = next(self.student.parameters()).device
        n_global = 2
        n_local = self.cfg["crops"]["local_crops_number"]
        global_crops = data["collated_global_crops"].to(device, non_blocking=True)
        local_crops = data["collated_local_crops"].to(device, non_blocking=True)
        masks = data["collated_masks"].to(device, non_blocking=True)
        mask_indices = data["mask_indices_list"].to(device, non_blocking=True)
        n_masked_tensor = data["n_masked_patches"].to(device, non_blocking=True)
        masks_weight = data["masks_weight"].to(device, non_blocking=True)
        n_masked = mask_indices.shape[0]
        n_local_terms = max(n_local * n_global, 1)
        n_global_terms = (n_global - 1) * n_global
        ctx = autocast if autocast is not None else nullcontext
        centering = self.cfg["train"]["centering"]
        # iBOT needs masked patches on every process (its center is all-reduced): a batch without any
        # (possible on tiny patch grids, where int(n_tokens * ratio) rounds to 0) skips iBOT everywhere
        ibot_on = self.do_ibot and _everywhere(n_masked > 0, device)

        with torch.no_grad(), ctx():
            teacher_dino, teacher_ibot = self._teacher_targets(global_crops, mask_indices, n_masked, n_masked_tensor,
                                                               teacher_temp, centering, ibot_on)
            teacher_cells = self._cell_targets(global_crops, teacher_temp) if self.cell_weight > 0 else None
        losses: dict[str, Tensor] = {}
        with ctx():
            crops = [global_crops, local_crops] if n_local > 0 else [global_crops]
            # through forward(), so that DDP and FSDP wrappers see the call
            outputs = self.student.backbone(crops, masks=[masks, None] if n_local > 0 else [masks], is_training=True)
            student_global = outputs[0]
            head_inputs = []
            if n_local > 0:
                head_inputs.append(outputs[1]["x_norm_clstoken"])
            head_inputs.append(student_global["x_norm_clstoken"])
            masked_patches = None
            if ibot_on:
                masked_patches = torch.index_select(student_global["x_norm_patchtokens"].flatten(0, 1), 0, mask_indices)
                if not self.ibot_separate_head:
                    head_inputs.append(masked_patches)
            if teacher_cells is not None:
                head_inputs.append(student_global["x_norm_patchtokens"].flatten(0, 1))
            sizes = [t.shape[0] for t in head_inputs]
            after_head = list(self.student.dino_head(torch.cat(head_inputs)).split(sizes))
            local_out = after_head.pop(0) if n_local > 0 else None
            global_out = after_head.pop(0)
            ibot_out = None
            if ibot_on:
                ibot_out = after_head.pop(0) if not self.ibot_separate_head else self.student.ibot_head(masked_patches)
            cell_out = after_head.pop(0) if teacher_cells is not None else None
        # the losses in float32, as the official heads' outputs are upcast before their softmaxes
        local_out, global_out = (None if local_out is None else local_out.float()), global_out.float()
        ibot_out = None if ibot_out is None else ibot_out.float()
        cls_tokens = student_global["x_norm_clstoken"].float()
        total = 0.0
        if n_local > 0 and self.do_dino:
            loss = self.dino_loss(list(local_out.chunk(n_local)), teacher_dino) / (n_global_terms + n_local_terms)
            losses["dino_local_crops_loss"] = loss
            total = total + self.cfg["dino"]["loss_weight"] * loss
        if self.do_dino:
            loss = self.dino_loss([global_out], [teacher_dino.flatten(0, 1)]) * 2 / (n_global_terms + n_local_terms)
            losses["dino_global_crops_loss"] = loss
            total = total + self.cfg["dino"]["loss_weight"] * loss
            if self.do_koleo:
                koleo = self.cfg["dino"]["koleo_loss_weight"] * sum(self.koleo_loss(p) for p in cls_tokens.chunk(2))
                total = total + koleo
                losses["koleo_loss"] = koleo / 2
        if ibot_on:
            loss = self.ibot_patch_loss.forward_masked(ibot_out, teacher_ibot, student_masks_flat=masks,
                                                       n_masked_patches=n_masked, masks_weight=masks_weight)
            loss = loss * 2 / n_global
            losses["ibot_loss"] = loss / 2
            total = total + self.cfg["ibot"]["loss_weight"] * loss
        if cell_out is not None:
            log_p = F.log_softmax(cell_out.float() / self.dino_loss.student_temp, dim=-1)
            loss = -(teacher_cells * log_p).sum(-1).mean()
            losses["cell_loss"] = loss
            total = total + self.cell_weight * loss
        if scaler is not None:
            scaler.scale(total).backward()
        else:
            total.backward()
        if self.do_dino:
            losses["dino_teacher_entropy"] = relative_entropy(teacher_dino)
        if ibot_on:
            losses["ibot_teacher_entropy"] = relative_entropy(teacher_ibot)
        if teacher_cells is not None:
            losses["cell_teacher_entropy"] = relative_entropy(teacher_cells)
        return {k: v.detach().float() for k, v in losses.items()}

    def _teacher_targets(self, global_crops: Tensor, mask_indices: Tensor, n_masked: int, n_masked_tensor: Tensor,
                         teacher_temp: float, centering: str, ibot_on: bool) -> tuple[Tensor, Tensor | None]:
        out = self.teacher.backbone(global_crops, is_training=True)
        cls = out["x_norm_clstoken"].chunk(2)
        cls = torch.cat((cls[1], cls[0]))  # crop A's student output is matched with crop B's teacher output
        n_cls = cls.shape[0]
        masked = None
        if ibot_on:
            masked = torch.index_select(out["x_norm_patchtokens"].flatten(0, 1), 0, mask_indices)
        if ibot_on and not self.ibot_separate_head:
            after = self.teacher.dino_head(torch.cat([cls, masked]))
            cls_after, masked_after = after[:n_cls], after[n_cls:]
        else:
            cls_after = self.teacher.dino_head(cls)
            masked_after = self.teacher.ibot_head(masked) if ibot_on else None
        cls_after, masked_after = cls_after.float(), None if masked_after is None else masked_after.float()
        if centering == "centering":
            dino = self.dino_loss.softmax_center_teacher(cls_after, teacher_temp=teacher_temp).view(2, -1, cls_after.shape[-1])
            self.dino_loss.update_center(cls_after)
            ibot = None
            if ibot_on:
                ibot = self.ibot_patch_loss.softmax_center_teacher(masked_after.unsqueeze(0), teacher_temp=teacher_temp)
                ibot = ibot.squeeze(0)
                self.ibot_patch_loss.update_center(masked_after.unsqueeze(0))
        elif centering == "sinkhorn_knopp":
            dino = self.dino_loss.sinkhorn_knopp_teacher(cls_after, teacher_temp=teacher_temp).view(2, -1, cls_after.shape[-1])
            ibot = None
            if ibot_on:
                ibot = self.ibot_patch_loss.sinkhorn_knopp_teacher(masked_after, teacher_temp=teacher_temp,
                                                                   n_masked_patches_tensor=n_masked_tensor)
        else:
            raise ValueError(f"train.centering={centering!r}: use 'centering' or 'sinkhorn_knopp'")
        return dino, ibot

    def _cell_targets(self, global_crops: Tensor, teacher_temp: float) -> Tensor:
        """(patches of all global crops, K) targets of the cell loss (``cfg["cell"]``): the teacher's
        DINO-head scores of each patch-sized cell of the crops fed alone (a one-patch image, its class
        token), Sinkhorn-Knopp balanced over the batch; rows in the order of the student's patch
        tokens (crop by crop, each in row-major grid order)."""
        p = self.teacher.backbone.patch_size
        cells = F.unfold(global_crops, p, stride=p)  # (n, 3 p p, cells): row-major grid order
        cells = cells.transpose(1, 2).reshape(-1, global_crops.shape[1], p, p)
        scores = self.teacher.dino_head(self.teacher.backbone(cells, is_training=True)["x_norm_clstoken"])
        return self.dino_loss.sinkhorn_knopp_teacher(scores.float(), teacher_temp=teacher_temp)



def _everywhere(flag: bool, device: torch.device) -> bool:
    """``flag`` on every process (one all-reduce under torch.distributed)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
