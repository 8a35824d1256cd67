"""Training losses for the segmentation and depth heads.

Segmentation: `CrossEntropyLoss` (per-pixel softmax cross-entropy with an ignore label).
Depth: `SigLoss`, the loss that trained the DINOv2 depth heads (their configs also list a gradient loss,
which is 0 in their runs: configs/_base_/models/depth_linear.py), `GradientLoss` (spatial, MegaDepth / MiDaS)
and `ScaleShiftInvariantLoss` (MiDaS) for relative depth.

Every loss returns a scalar tensor (except `CrossEntropyLoss(reduction="none")`). When no pixel
is valid a loss returns 0, still connected to the autograd graph with zero gradients, so a batch
without labels never puts NaN into the weights. Invalid pixels never reach a `log` or a division:
they are replaced before, not masked after, so NaN or negative values there do no harm.

Layering: torch only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CrossEntropyLoss", "SigLoss", "GradientLoss", "ScaleShiftInvariantLoss"]


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt(x) for x >= 0 whose gradient at x == 0 is 0 instead of inf (which would give NaN); NaN stays NaN
    (a diverged prediction logged a loss of 0)."""
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))),
                       torch.where(torch.isnan(x), x, torch.zeros_like(x)))


def _nonzero(x: Tensor) -> Tensor:
    """x where x != 0, else 1: a denominator that is safe when its numerator is 0 anyway."""
    return torch.where(x != 0, x, torch.ones_like(x))


def _depth_inputs(
    pred: Tensor, gt: Tensor, mask: Tensor | None, valid_mask: bool, max_depth: float | None, name: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Bring pred/gt to (B, H, W) float and compute the valid-pixel mask (B, H, W) bool.

    Valid pixels: gt > 0 (and gt <= max_depth) when `valid_mask`, every pixel otherwise; an explicit
    `mask` is combined with AND.
    """

    def squeeze(t: Tensor, what: str) -> Tensor:
        if t.dim() == 4 and t.shape[1] == 1:
            return t[:, 0]
        if t.dim() == 3:
            return t
        raise ValueError(f"{name}: {what} must have shape (B, 1, H, W) or (B, H, W), got {tuple(t.shape)}")

    pred, gt = squeeze(pred, "pred"), squeeze(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(
            f"{name}: pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ; "
            "resize the prediction to the ground-truth size before the loss"
        )
    if not pred.is_floating_point():
        raise ValueError(f"{name}: pred must be a floating-point tensor, got {pred.dtype}")
    # Half-precision logs and variances are too coarse (the official heads force fp32 here too).
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    gt = gt.to(pred.dtype)
    if valid_mask:
        valid = gt > 0
        if max_depth is not None:
            valid = valid & (gt <= max_depth)
    else:
        valid = torch.ones_like(gt, dtype=torch.bool)
    if mask is not None:
        mask = squeeze(mask, "mask")
        if mask.shape != gt.shape:
            raise ValueError(f"{name}: mask {tuple(mask.shape)} does not match gt {tuple(gt.shape)}")
        valid = valid & mask.bool()
    return pred, gt, valid


def _log_diff(pred: Tensor, gt: Tensor, valid: Tensor, eps: float, name: str) -> Tensor:
    """log(pred + eps) - log(gt + eps) on valid pixels, exactly 0 elsewhere (no NaN, no gradient).

    A negative prediction on a valid pixel is refused (ValueError): its log would be NaN (below -eps)
    and would reach the weights. The depth heads' outputs are >= 0 (DPT: ReLU + min_depth; bins: an
    expectation of bin centres); the predictor does not clamp them in training (the official heads
    clamp at inference only), so this guards heads of one's own."""
    one = torch.ones_like(pred)
    if bool((torch.where(valid, pred, one) < 0).any()):
        raise ValueError(f"{name}: pred holds negative depths on valid pixels; a depth head's output must be "
                         ">= 0 (end it with a ReLU, or add min_depth as the DPT head does)")
    d = torch.log(torch.where(valid, pred, one) + eps) - torch.log(torch.where(valid, gt, one) + eps)
    return torch.where(valid, d, torch.zeros_like(d))


class LabelRangeError(ValueError):
    """Labels outside the logits' classes and not the ignore index: ``values`` (up to 8), ``samples`` (the
    batch indices whose labels hold them), ``classes`` and ``ignore_index`` (the loss's), for a caller that
    knows the labels' files to name them (``DenseModel.loss``)."""

    def __init__(self, message: str, values: list[int], samples: list[int], classes: int, ignore_index: int):
        super().__init__(message)
        self.values, self.samples, self.classes, self.ignore_index = values, samples, classes, ignore_index


class CrossEntropyLoss(nn.Module):
    """Per-pixel softmax cross-entropy for semantic segmentation, with an ignore label.

    The loss of mmsegmentation's `CrossEntropyLoss(use_sigmoid=False)` that the DINOv2 linear
    segmentation heads are trained with (Oquab et al., "DINOv2", 2023, Sec. 7).

    Args:
        ignore_index: label value that contributes neither loss nor gradient (255: padding and
            the "other" class after reduce_zero_label).
        class_weight: optional per-class weights, length K.
        loss_weight: factor applied to the result.
        reduction: "mean", "sum" or "none" ((B, H, W) per-pixel losses, 0 where ignored).
        avg_non_ignore: for "mean", divide by the (weighted) number of non-ignored pixels, as
            `torch.nn.functional.cross_entropy` does: sum_i w[y_i] * l_i / sum_i w[y_i]. False
            divides by all B*H*W pixels, ignored ones included: mmsegmentation's default
            (avg_non_ignore=False), hence what the official DINOv2 configs trained with.

    Shapes: logits (B, K, H, W) float; labels (B, H, W) or (B, 1, H, W) integer, values in [0, K)
    or `ignore_index`. The logits must already be resized to the label size.
    Returns a scalar (or (B, H, W) for reduction="none"). If every pixel is ignored, "mean"
    returns 0 with zero gradients instead of NaN.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        class_weight: Sequence[float] | Tensor | None = None,
        loss_weight: float = 1.0,
        reduction: str = "mean",
        avg_non_ignore: bool = True,
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.ignore_index = int(ignore_index)
        self.loss_weight = float(loss_weight)
        self.reduction = reduction
        self.avg_non_ignore = bool(avg_non_ignore)
        weight = None
        if class_weight is not None:
            weight = torch.as_tensor(class_weight, dtype=torch.float32).flatten()
            if (weight < 0).any():
                raise ValueError("CrossEntropyLoss: class_weight must be non-negative")
        # Not persistent: a head's state dict stays identical to the official checkpoints.
        self.register_buffer("class_weight", weight, persistent=False)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.dim() != 4:
            raise ValueError(f"CrossEntropyLoss: logits must be (B, K, H, W), got {tuple(logits.shape)}")
        if labels.dim() == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
        b, k, h, w = logits.shape
        if labels.shape != (b, h, w):
            raise ValueError(
                f"CrossEntropyLoss: labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}; "
                "expected (B, H, W) with the logits resized to the label size"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"CrossEntropyLoss: labels must be an integer tensor, got {labels.dtype}")
        labels = labels.long()
        keep = labels != self.ignore_index
        outside = ((labels < 0) | (labels >= k)) & keep
        if outside.any():
            bad = labels[outside].unique()[:8].tolist()
            raise LabelRangeError(
                f"CrossEntropyLoss: labels {bad[:5]} are outside [0, {k}) and are not ignore_index="
                f"{self.ignore_index}; check num_classes and reduce_zero_label", bad,
                outside.flatten(1).any(1).nonzero().flatten().tolist(), k, self.ignore_index
            )
        weight = self.class_weight
        if weight is not None:
            if weight.numel() != k:
                raise ValueError(f"CrossEntropyLoss: class_weight has {weight.numel()} entries for {k} classes")
            weight = weight.to(device=logits.device, dtype=logits.dtype)
        # Ignored pixels: loss 0 and gradient 0 (torch handles ignore_index).
        loss = F.cross_entropy(logits, labels, weight=weight, ignore_index=self.ignore_index, reduction="none")
        if self.reduction == "none":
            return self.loss_weight * loss
        total = loss.sum()
        if self.reduction == "mean":
            if not self.avg_non_ignore:
                total = total / loss.numel()
            else:
                if weight is None:
                    den = keep.sum().to(loss.dtype)
                else:
                    den = torch.where(keep, weight[labels.clamp(0, k - 1)], torch.zeros_like(loss)).sum()
                total = total / _nonzero(den)
        return self.loss_weight * total


class SigLoss(nn.Module):
    """Scale-invariant log loss (Eigen et al., "Depth Map Prediction from a Single Image using a
    Multi-Scale Deep Network", NeurIPS 2014), in the form of AdaBins (Bhat et al., 2021) used by
    the DINOv2 depth heads and the Depth-Estimation-Toolbox.

    On the valid pixels of the whole batch (pooled, not per image):
        g = log(pred + eps) - log(gt + eps),   eps = 1e-3
        loss = loss_weight * sqrt(var(g) + 0.15 * mean(g)^2)
    with the unbiased variance (torch.var's default, as in the official code). During warm-up
    (the first `warm_iter` forward calls when `warm_up`) the variance term is dropped:
    loss = loss_weight * sqrt(0.15 * mean(g)^2).

    Args:
        valid_mask: keep only pixels with gt > 0 (and gt <= max_depth); False uses every pixel.
        loss_weight: factor applied to the result (the official configs use 10; the DINOv2
            depth notebook uses 1 with warm_up=True).
        max_depth: optional upper bound on valid gt.
        warm_up: use the warm-up form for the first `warm_iter` calls.
        warm_iter: number of warm-up calls. Every forward call counts (as in the official code);
            the counter is `warm_up_counter` and is not saved in the state dict (official head files
            load strictly); a resumed `dinov2-dense train` sets it from the resumed iteration
            (one call per iteration), so that the run goes on as if it had not stopped.
        eps: added inside both logs (the official 1e-3, "avoid grad explode").
        group_size: None (default): the whole batch is one pool. A number: the batch's images in
            consecutive groups of that many, the loss of each group as above, averaged over the groups
            that have a valid pixel.
            The released depth heads trained on 2 images per GPU on 8 GPUs, each GPU's loss its own 2
            images' and the gradients averaged: a batch of 16 with ``group_size=2`` is that objective on
            one process (the variance pools the images it is given: 16 pooled are another loss).

    Shapes: pred, gt (B, 1, H, W) or (B, H, W); optional mask of the same shape, ANDed with the
    validity rule. Returns a scalar. Differences from the official code, which would give NaN:
    one valid pixel gives var = 0; no valid pixel gives 0 (zero gradients); a zero argument of
    the sqrt (a perfect prediction) has gradient 0 instead of NaN; a negative pred on a valid pixel
    is refused (ValueError). pred is not clamped to a depth range: with eps, any pred >= 0 gives a
    finite loss and gradient (at most 1 / eps per pixel in the log).
    """

    def __init__(
        self,
        valid_mask: bool = True,
        loss_weight: float = 1.0,
        max_depth: float | None = None,
        warm_up: bool = False,
        warm_iter: int = 100,
        eps: float = 1e-3,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size < 1):
            raise ValueError(f"SigLoss: group_size={group_size!r}: a number of images >= 1, or None")
        self.valid_mask = valid_mask
        self.loss_weight = float(loss_weight)
        self.max_depth = max_depth
        self.warm_up = warm_up
        self.warm_iter = int(warm_iter)
        self.eps = float(eps)
        self.group_size = group_size
        self.warm_up_counter = 0

    def forward(self, pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
        pred, gt, valid = _depth_inputs(pred, gt, mask, self.valid_mask, self.max_depth, "SigLoss")
        g = _log_diff(pred, gt, valid, self.eps, "SigLoss")
        warm = self.warm_up and self.warm_up_counter < self.warm_iter
        if warm:
            self.warm_up_counter += 1  # (one call, one count, whatever the groups)
        size = len(g) if self.group_size is None else self.group_size
        groups = list(zip(g.split(size), valid.split(size)))
        losses = [self._pooled(gs, vs, warm) for gs, vs in groups]
        if len(losses) == 1:
            return self.loss_weight * losses[0]
        # a group without a valid pixel has no loss (its 0 would pull the mean down): averaged over the others,
        # on the device (no wait for it)
        has = torch.stack([vs.any() for _, vs in groups]).to(losses[0].dtype)
        return self.loss_weight * (torch.stack(losses) * has).sum() / has.sum().clamp_min(1)

    @staticmethod
    def _pooled(g: Tensor, valid: Tensor, warm: bool) -> Tensor:
        """The loss of one pool of images (before loss_weight)."""
        n = valid.sum().to(g.dtype)
        mean = g.sum() / n.clamp_min(1)
        if warm:
            dg = 0.15 * mean**2
        else:
            centred = torch.where(valid, g - mean, torch.zeros_like(g))
            var = (centred**2).sum() / (n - 1).clamp_min(1)
            dg = var + 0.15 * mean**2
        return _safe_sqrt(dg)


class GradientLoss(nn.Module):
    """Multi-scale gradient-matching loss on log depth (Li & Snavely, "MegaDepth", CVPR 2018;
    Ranftl et al., "Towards Robust Monocular Depth Estimation" (MiDaS), TPAMI 2020).

    With R = log(pred + eps) - log(gt + eps) on valid pixels (0 elsewhere), at each scale
    s = 0 .. scales-1 the maps are subsampled with step 2**s (x[..., ::2**s, ::2**s]) and
        L_s = (sum |R[y, x+1] - R[y, x]| * V[y, x+1] * V[y, x]
               + sum |R[y+1, x] - R[y, x]| * V[y+1, x] * V[y, x]) / N_s
    where V is the valid mask at that scale and N_s its number of valid pixels; sums and N_s run
    over the whole batch. loss = loss_weight * sum_s L_s. A scale with no valid pixel adds 0.
    Only differences of R enter, so pred = c * gt gives 0 for any c > 0 (exactly with eps=0;
    with eps > 0 up to terms of order eps / depth).

    Args:
        valid_mask: keep only pixels with gt > 0 (and gt <= max_depth); False uses every pixel.
        loss_weight: factor applied to the result (the DINOv2 depth notebook uses 0.5).
        max_depth: optional upper bound on valid gt.
        scales: number of scales (4 as in MegaDepth and MiDaS).
        eps: added inside both logs, as in the official code.

    Shapes: pred, gt (B, 1, H, W) or (B, H, W); optional mask of the same shape. Returns a scalar.

    Note: this is not the official DINOv2 `GradientLoss` bit for bit. That code slices
    `x[::2*i, ::2*i]` (steps 1, 2, 4, 6) and differences at offset 2 on dims 0 and 1, which for
    the (B, 1, H, W) tensors the heads pass are the batch and channel dims: it compares image b
    with image b+2 and is exactly 0 when B <= 2. We apply the MiDaS scheme to the spatial dims.
    """

    def __init__(
        self,
        valid_mask: bool = True,
        loss_weight: float = 1.0,
        max_depth: float | None = None,
        scales: int = 4,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        if scales < 1:
            raise ValueError(f"GradientLoss: scales must be >= 1, got {scales}")
        self.valid_mask = valid_mask
        self.loss_weight = float(loss_weight)
        self.max_depth = max_depth
        self.scales = int(scales)
        self.eps = float(eps)

    def forward(self, pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
        pred, gt, valid = _depth_inputs(pred, gt, mask, self.valid_mask, self.max_depth, "GradientLoss")
        r_full = _log_diff(pred, gt, valid, self.eps, "GradientLoss")
        total = r_full.new_zeros(())
        for s in range(self.scales):
            step = 2**s
            r, v = r_full[:, ::step, ::step], valid[:, ::step, ::step]
            gx = (r[:, :, 1:] - r[:, :, :-1]).abs() * (v[:, :, 1:] & v[:, :, :-1])
            gy = (r[:, 1:, :] - r[:, :-1, :]).abs() * (v[:, 1:, :] & v[:, :-1, :])
            n = v.sum().to(r.dtype)
            total = total + (gx.sum() + gy.sum()) / n.clamp_min(1)
        return self.loss_weight * total


class ScaleShiftInvariantLoss(nn.Module):
    """Scale- and shift-invariant MSE for relative depth (Ranftl et al., "Towards Robust Monocular
    Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer" (MiDaS), TPAMI 2020,
    the ssi-mse loss).

    Per image, on its M valid pixels, the prediction is aligned to the target by least squares,
        (s, t) = argmin sum (s * pred + t - gt)^2
    solved in closed form (s = cov(pred, gt) / var(pred), t = mean(gt) - s * mean(pred); the
    gradient flows through s and t, as in MiDaS), and
        L_img = 1 / (2M) * sum (s * pred + t - gt)^2        (the 1/2 is the paper's)
    loss = loss_weight * mean of L_img over the images with at least 2 valid pixels; 0 (zero
    gradients) if there are none. A prediction that is constant on an image's valid pixels has no
    unique fit; we take s = 0, t = mean(gt), so L_img = var(gt) / 2 (biased), without NaN.
    The result is unchanged when pred becomes a * pred + b (a != 0) per image.

    Works in whatever space pred and gt are given (MiDaS uses disparity); the caller chooses.

    Args:
        valid_mask: keep only pixels with gt > 0 (and gt <= max_depth); False uses every pixel.
        loss_weight: factor applied to the result.
        max_depth: optional upper bound on valid gt.

    Shapes: pred, gt (B, 1, H, W) or (B, H, W); optional mask of the same shape. Returns a scalar.
    """

    def __init__(self, valid_mask: bool = True, loss_weight: float = 1.0, max_depth: float | None = None) -> None:
        super().__init__()
        self.valid_mask = valid_mask
        self.loss_weight = float(loss_weight)
        self.max_depth = max_depth

    def forward(self, pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
        pred, gt, valid = _depth_inputs(pred, gt, mask, self.valid_mask, self.max_depth, "ScaleShiftInvariantLoss")
        vf = valid.to(pred.dtype)
        zero = torch.zeros_like(pred)
        p = torch.where(valid, pred, zero)
        g = torch.where(valid, gt, zero)
        n = vf.sum(dim=(1, 2))  # (B,)
        n1 = n.clamp_min(1)
        mp = p.sum(dim=(1, 2)) / n1
        mg = g.sum(dim=(1, 2)) / n1
        # Centred sums are stable in float32 (the raw 2x2 normal equations are not).
        pc = (p - mp[:, None, None]) * vf
        gc = (g - mg[:, None, None]) * vf
        var_p = (pc**2).sum(dim=(1, 2))
        cov = (pc * gc).sum(dim=(1, 2))
        # Constant prediction: var_p is 0 up to rounding of the mean (~ eps^2 * mean(p^2) per pixel).
        tiny = 16 * torch.finfo(pred.dtype).eps ** 2 * (p**2).sum(dim=(1, 2)) + torch.finfo(pred.dtype).tiny
        solvable = var_p > tiny
        scale = torch.where(solvable, cov / torch.where(solvable, var_p, torch.ones_like(var_p)), torch.zeros_like(cov))
        # aligned - gt = s * (p - mean p) + mean g - g
        res = (scale[:, None, None] * pc - gc) * vf
        per_image = (res**2).sum(dim=(1, 2)) / (2 * n1)
        used = n >= 2
        count = used.sum().to(pred.dtype)
        loss = torch.where(used, per_image, torch.zeros_like(per_image)).sum() / count.clamp_min(1)
        return self.loss_weight * loss
