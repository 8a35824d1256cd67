"""Losses of heads/losses.py against values worked out by hand or with plain python / numpy loops.

Reference formulas (independent of the implementation under test):
- cross-entropy: l_i = -log softmax(z_i)[y_i]; mean = sum w[y_i] l_i / sum w[y_i] over non-ignored i.
- SigLoss: g = log(p + 1e-3) - log(t + 1e-3) on gt > 0; sqrt(unbiased var(g) + 0.15 mean(g)^2).
- GradientLoss: sum over scales 2**s of (sum of |dR| over adjacent valid pairs) / (valid pixels).
- ScaleShiftInvariantLoss: per image least squares fit (numpy lstsq), 1/(2M) sum residual^2.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from heads.losses import CrossEntropyLoss, GradientLoss, ScaleShiftInvariantLoss, SigLoss


def _finite_zero_grad(loss: torch.Tensor, x: torch.Tensor) -> None:
    assert loss.requires_grad, "the zero loss must stay connected to the graph"
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert torch.count_nonzero(grad) == 0


# ---------------------------------------------------------------- CrossEntropyLoss


def test_ce_hand_computed():
    # One image, 2 classes, 1x3 pixels; the third pixel is ignored.
    logits = torch.tensor([[[[2.0, 0.0, 5.0]], [[0.0, 1.0, -5.0]]]])  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1))  # log(1 + e^-2)
    l1 = -math.log(math.e / (1 + math.e))  # log(1 + e^-1)
    loss = CrossEntropyLoss()(logits, labels)
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert loss.item() == pytest.approx((0.126928011 + 0.313261688) / 2, rel=1e-6)
    # mmseg's default divides by every pixel, the ignored one included.
    assert CrossEntropyLoss(avg_non_ignore=False)(logits, labels).item() == pytest.approx((l0 + l1) / 3, rel=1e-6)
    assert CrossEntropyLoss(reduction="sum")(logits, labels).item() == pytest.approx(l0 + l1, rel=1e-6)
    none = CrossEntropyLoss(reduction="none", loss_weight=2.0)(logits, labels)
    assert none.shape == (1, 1, 3)
    assert none.flatten().tolist() == pytest.approx([2 * l0, 2 * l1, 0.0], rel=1e-6)
    assert CrossEntropyLoss(loss_weight=0.5)(logits, labels).item() == pytest.approx((l0 + l1) / 4, rel=1e-6)


def _manual_ce(logits: np.ndarray, labels: np.ndarray, weight, ignore: int) -> tuple[float, float]:
    """(weighted sum of losses, sum of weights) over non-ignored pixels, by loops."""
    b, k, h, w = logits.shape
    num = den = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(labels[i, y, x])
                if lab == ignore:
                    continue
                z = logits[i, :, y, x].astype(np.float64)
                lse = math.log(sum(math.exp(v) for v in z))
                wt = 1.0 if weight is None else weight[lab]
                num += wt * (lse - z[lab])
                den += wt
    return num, den


@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0, 3.0]])
def test_ce_matches_manual_and_torch(weight):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 5, generator=gen)
    labels = torch.randint(0, 4, (2, 3, 5), generator=gen)
    labels[0, 0, :3] = 255
    labels[1, 2, 4] = 255
    num, den = _manual_ce(logits.numpy(), labels.numpy(), weight, 255)
    loss = CrossEntropyLoss(class_weight=weight)(logits, labels)
    assert loss.item() == pytest.approx(num / den, rel=1e-5)
    wt = None if weight is None else torch.tensor(weight)
    ref = F.cross_entropy(logits, labels, weight=wt, ignore_index=255)
    torch.testing.assert_close(loss, ref)
    # (B, 1, H, W) labels, as mmseg stores them, give the same.
    torch.testing.assert_close(CrossEntropyLoss(class_weight=weight)(logits, labels[:, None]), ref)
    assert CrossEntropyLoss(class_weight=weight, avg_non_ignore=False)(logits, labels).item() == pytest.approx(
        num / labels.numel(), rel=1e-5
    )


def test_ce_ignore_index_has_no_effect():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=gen, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4), generator=gen)
    labels[0, :2] = 7
    loss = CrossEntropyLoss(ignore_index=7)(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.count_nonzero(grad[0, :, :2]) == 0
    # Changing the logits of ignored pixels changes nothing.
    other = logits.detach().clone()
    other[0, :, :2] = 100.0
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=7)(other, labels), loss.detach())


def test_ce_all_ignored_is_zero_and_connected():
    logits = torch.randn(2, 3, 2, 2, requires_grad=True)
    labels = torch.full((2, 2, 2), 255)
    loss = CrossEntropyLoss()(logits, labels)
    assert loss.item() == 0.0
    _finite_zero_grad(loss, logits)
    loss = CrossEntropyLoss(class_weight=[1.0, 2.0, 3.0])(logits, labels)
    assert loss.item() == 0.0
    _finite_zero_grad(loss, logits)


def test_ce_errors_and_state_dict():
    logits = torch.randn(1, 3, 2, 2)
    with pytest.raises(ValueError, match="outside"):
        CrossEntropyLoss()(logits, torch.tensor([[[0, 1], [3, 255]]]))
    with pytest.raises(ValueError, match="do not match"):
        CrossEntropyLoss()(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weight"):
        CrossEntropyLoss(class_weight=[1.0, 1.0])(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        CrossEntropyLoss()(logits, torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    # The loss adds nothing to a head's state dict (official checkpoints load strictly).
    assert CrossEntropyLoss(class_weight=[1.0, 2.0, 3.0]).state_dict() == {}


# ---------------------------------------------------------------- SigLoss

EPS = 1e-3


def _sig_ref(g: list[float], warm: bool = False) -> float:
    n = len(g)
    mean = sum(g) / n
    if warm:
        return math.sqrt(0.15 * mean**2)
    var = sum((v - mean) ** 2 for v in g) / (n - 1)
    return math.sqrt(var + 0.15 * mean**2)


def test_sigloss_2x2_exact():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 0.5]]]])  # (1, 1, 2, 2)
    gt = torch.tensor([[[[1.0, 1.0], [2.0, 0.0]]]])  # gt = 0: invalid pixel
    g = [0.0, math.log(2.001) - math.log(1.001), math.log(4.001) - math.log(2.001)]
    expected = _sig_ref(g)
    # g ~ (0, 0.69265, 0.69290): mean 0.46185, var 0.15998, 0.15 mean^2 0.03200
    assert expected == pytest.approx(0.43815, abs=1e-5)
    assert SigLoss()(pred, gt).item() == pytest.approx(expected, rel=1e-5)
    assert SigLoss(loss_weight=10)(pred, gt).item() == pytest.approx(10 * expected, rel=1e-5)
    assert SigLoss()(pred[:, 0], gt[:, 0]).item() == pytest.approx(expected, rel=1e-5)
    # valid_mask=False keeps the gt = 0 pixel: log(0.501) - log(0.001).
    g_all = g + [math.log(0.501) - math.log(0.001)]
    assert SigLoss(valid_mask=False)(pred, gt).item() == pytest.approx(_sig_ref(g_all), rel=1e-5)


def test_sigloss_groups_average_the_loss_of_each_group():
    """group_size=k: the batch in consecutive groups of k images (the last may be smaller), the loss of each
    pooled as SigLoss pools a batch, then averaged; None pools the whole batch."""
    gen = torch.Generator().manual_seed(3)
    pred = torch.rand(5, 1, 3, 4, generator=gen) * 5 + 0.2
    gt = torch.rand(5, 1, 3, 4, generator=gen) * 5 + 0.2
    gt[1, 0, 0] = 0.0

    def g_of(idx):
        return [math.log(pred[i, 0, y, x].item() + EPS) - math.log(gt[i, 0, y, x].item() + EPS)
                for i in idx for y in range(3) for x in range(4) if gt[i, 0, y, x] > 0]

    groups = [[0, 1], [2, 3], [4]]
    want = sum(_sig_ref(g_of(idx)) for idx in groups) / 3
    assert SigLoss(group_size=2)(pred, gt).item() == pytest.approx(want, rel=1e-5)
    assert SigLoss(group_size=2, loss_weight=3)(pred, gt).item() == pytest.approx(3 * want, rel=1e-5)
    assert SigLoss(group_size=5)(pred, gt).item() == pytest.approx(_sig_ref(g_of(range(5))), rel=1e-5)
    assert SigLoss()(pred, gt).item() == pytest.approx(_sig_ref(g_of(range(5))), rel=1e-5)
    warm = SigLoss(group_size=2, warm_up=True, warm_iter=1)
    assert warm(pred, gt).item() == pytest.approx(sum(_sig_ref(g_of(i), warm=True) for i in groups) / 3, rel=1e-5)
    assert warm.warm_up_counter == 1  # one call, one count
    assert warm(pred, gt).item() == pytest.approx(want, rel=1e-5)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="group_size"):
            SigLoss(group_size=bad)
    # a group without a valid pixel has no loss: the mean is over the others (its 0 pulled the mean down)
    empty = gt.clone()
    empty[2:4] = 0.0
    others = [[0, 1], [4]]
    g_empty = lambda idx: [math.log(pred[i, 0, y, x].item() + EPS) - math.log(empty[i, 0, y, x].item() + EPS)  # noqa: E731
                           for i in idx for y in range(3) for x in range(4) if empty[i, 0, y, x] > 0]
    assert SigLoss(group_size=2)(pred, empty).item() == pytest.approx(
        sum(_sig_ref(g_empty(i)) for i in others) / 2, rel=1e-5)
    none = pred.clone().requires_grad_()
    loss = SigLoss(group_size=2)(none, torch.zeros_like(gt))  # no valid pixel at all: 0, zero gradients
    assert loss.item() == 0.0
    _finite_zero_grad(loss, none)


def test_sigloss_pools_the_batch_and_max_depth():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 1, 3, 3, generator=gen) * 12 + 0.1
    gt = torch.rand(2, 1, 3, 3, generator=gen) * 12 + 0.1
    gt[0, 0, 0, 0] = 0.0
    p, t = pred.flatten().tolist(), gt.flatten().tolist()
    g = [math.log(a + EPS) - math.log(b + EPS) for a, b in zip(p, t) if b > 0]
    assert SigLoss()(pred, gt).item() == pytest.approx(_sig_ref(g), rel=1e-5)
    g10 = [math.log(a + EPS) - math.log(b + EPS) for a, b in zip(p, t) if 0 < b <= 10]
    assert len(g10) < len(g)
    assert SigLoss(max_depth=10)(pred, gt).item() == pytest.approx(_sig_ref(g10), rel=1e-5)
    # An explicit mask is ANDed with the rule.
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[1] = False
    g0 = [math.log(a + EPS) - math.log(b + EPS) for a, b in zip(p[:9], t[:9]) if b > 0]
    assert SigLoss()(pred, gt, mask).item() == pytest.approx(_sig_ref(g0), rel=1e-5)


def test_sigloss_warm_up():
    pred = torch.tensor([[[[1.0, 2.0], [4.0, 3.0]]]])
    gt = torch.tensor([[[[2.0, 1.0], [1.0, 1.0]]]])
    g = [math.log(a + EPS) - math.log(b + EPS) for a, b in zip([1, 2, 4, 3], [2, 1, 1, 1])]
    loss = SigLoss(warm_up=True, warm_iter=2)
    warm, full = _sig_ref(g, warm=True), _sig_ref(g)
    assert warm != pytest.approx(full)
    assert loss(pred, gt).item() == pytest.approx(warm, rel=1e-5)
    assert loss(pred, gt).item() == pytest.approx(warm, rel=1e-5)
    assert loss.warm_up_counter == 2
    assert loss(pred, gt).item() == pytest.approx(full, rel=1e-5)
    assert loss(pred, gt).item() == pytest.approx(full, rel=1e-5)
    # Without warm_up the counter is irrelevant.
    assert SigLoss(warm_iter=5)(pred, gt).item() == pytest.approx(full, rel=1e-5)


def test_sigloss_degenerate_cases_are_finite():
    pred = torch.rand(2, 1, 3, 3, requires_grad=True)
    gt = torch.zeros(2, 1, 3, 3)
    for loss_fn in (SigLoss(), SigLoss(warm_up=True)):
        loss = loss_fn(pred, gt)
        assert loss.item() == 0.0
        _finite_zero_grad(loss, pred)
    # One valid pixel: var = 0 (the official torch.var would be NaN), loss = sqrt(0.15) |g|.
    gt1 = gt.clone()
    gt1[0, 0, 1, 1] = 2.0
    loss = SigLoss()(pred, gt1)
    g = math.log(pred[0, 0, 1, 1].item() + EPS) - math.log(2.0 + EPS)
    assert loss.item() == pytest.approx(math.sqrt(0.15) * abs(g), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all()
    # Perfect prediction: loss 0, finite gradient; NaN in invalid pixels does not leak.
    gt2 = torch.rand(2, 1, 3, 3) + 0.5
    gt2[1, 0, 0, 0] = float("nan")
    p2 = gt2.clone()
    p2[1, 0, 0, 0] = float("nan")
    p2.requires_grad_(True)
    loss = SigLoss()(p2, gt2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    (grad,) = torch.autograd.grad(loss, p2)
    assert torch.isfinite(grad).all()


def test_sigloss_gradcheck():
    gen = torch.Generator().manual_seed(3)
    pred = (torch.rand(1, 1, 3, 3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    gt = torch.rand(1, 1, 3, 3, generator=gen, dtype=torch.float64) + 0.5
    gt[0, 0, 0] = 0.0
    assert torch.autograd.gradcheck(lambda p: SigLoss()(p, gt), (pred,))


def test_depth_losses_reject_bad_shapes():
    for loss_fn in (SigLoss(), GradientLoss(), ScaleShiftInvariantLoss()):
        with pytest.raises(ValueError, match="resize"):
            loss_fn(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 8, 8))
        with pytest.raises(ValueError, match="shape"):
            loss_fn(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4))


# ---------------------------------------------------------------- GradientLoss


def _grad_ref(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, scales: int, eps: float) -> float:
    """Loops over (B, H, W) arrays: sum over scales of |dR| on valid pairs / valid pixels."""
    total = 0.0
    for s in range(scales):
        st = 2**s
        p, t, v = pred[:, ::st, ::st], gt[:, ::st, ::st], valid[:, ::st, ::st]
        b, h, w = p.shape
        r = np.zeros(p.shape)
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    if v[i, y, x]:
                        r[i, y, x] = math.log(p[i, y, x] + eps) - math.log(t[i, y, x] + eps)
        acc = 0.0
        for i in range(b):
            for y in range(h):
                for x in range(w):
                    if x + 1 < w and v[i, y, x] and v[i, y, x + 1]:
                        acc += abs(r[i, y, x + 1] - r[i, y, x])
                    if y + 1 < h and v[i, y, x] and v[i, y + 1, x]:
                        acc += abs(r[i, y + 1, x] - r[i, y, x])
        n = int(v.sum())
        total += acc / n if n else 0.0
    return total


def test_gradient_loss_scaled_gt_is_zero():
    gt = torch.rand(2, 1, 8, 8) * 5 + 0.5
    assert GradientLoss(eps=0.0)(3.0 * gt, gt).item() == pytest.approx(0.0, abs=1e-6)
    assert GradientLoss(eps=0.0)(gt, gt).item() == 0.0
    # With the default eps it is only nearly zero.
    assert GradientLoss()(3.0 * gt, gt).item() < 1e-2


def test_gradient_loss_known_step():
    # R = 0 on columns 0-3, 1 on columns 4-7 (pred = e there, gt = 1, eps = 0).
    gt = torch.ones(1, 1, 8, 8)
    pred = torch.ones(1, 1, 8, 8)
    pred[..., 4:] = math.e
    # scale 0: 8 jumps / 64 px; scale 1 (4x4): 4 / 16; scale 2 (2x2): 2 / 4; scale 3 (1x1): 0.
    assert GradientLoss(eps=0.0)(pred, gt).item() == pytest.approx(0.125 + 0.25 + 0.5, rel=1e-6)
    assert GradientLoss(eps=0.0, scales=1)(pred, gt).item() == pytest.approx(0.125, rel=1e-6)
    assert GradientLoss(eps=0.0, loss_weight=0.5)(pred, gt).item() == pytest.approx(0.4375, rel=1e-6)
    # A jump across an invalid pixel is not counted: invalidate column 4 entirely.
    gt_masked = gt.clone()
    gt_masked[..., 4] = 0.0
    # scale 0: no valid pair crosses the step, 56 valid px -> 0; scale 1 keeps cols 0,2,4,6 with col 4
    # invalid -> 0 / 12; scale 2 keeps cols 0,4: col 4 invalid -> 0; scale 3: 0.
    assert GradientLoss(eps=0.0)(pred, gt_masked).item() == pytest.approx(0.0, abs=1e-7)
    # Step between columns 2 and 3 instead, invalid column 5: scale 0 sees 8 jumps over 56 px.
    pred2 = torch.ones(1, 1, 8, 8)
    pred2[..., 3:] = math.e
    gt2 = torch.ones(1, 1, 8, 8)
    gt2[..., 5] = 0.0
    # scale 1: cols 0,2,4,6 -> jump between 2 and 4 in 4 rows, 16 px; scale 2: cols 0,4 -> 2 jumps / 4 px.
    assert GradientLoss(eps=0.0)(pred2, gt2).item() == pytest.approx(8 / 56 + 4 / 16 + 2 / 4, rel=1e-6)


def test_gradient_loss_matches_loops():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 1, 9, 7, generator=gen) * 10 + 0.05
    gt = torch.rand(2, 1, 9, 7, generator=gen) * 12
    gt[gt < 2] = 0.0
    valid = (gt > 0).numpy()[:, 0]
    ref = _grad_ref(pred.numpy()[:, 0].astype(np.float64), gt.numpy()[:, 0].astype(np.float64), valid, 4, EPS)
    assert GradientLoss()(pred, gt).item() == pytest.approx(ref, rel=1e-5)
    valid10 = valid & (gt.numpy()[:, 0] <= 10)
    ref10 = _grad_ref(pred.numpy()[:, 0].astype(np.float64), gt.numpy()[:, 0].astype(np.float64), valid10, 4, EPS)
    assert ref10 != pytest.approx(ref)
    assert GradientLoss(max_depth=10)(pred, gt).item() == pytest.approx(ref10, rel=1e-5)
    assert GradientLoss(max_depth=10, scales=2)(pred[:, 0], gt[:, 0]).item() == pytest.approx(
        _grad_ref(pred.numpy()[:, 0].astype(np.float64), gt.numpy()[:, 0].astype(np.float64), valid10, 2, EPS),
        rel=1e-5,
    )


def test_gradient_loss_no_valid_pixel():
    pred = torch.rand(1, 1, 8, 8, requires_grad=True)
    gt = torch.zeros(1, 1, 8, 8)
    gt[0, 0, 0, 0] = -1.0
    gt[0, 0, 0, 1] = float("nan")
    loss = GradientLoss()(pred, gt)
    assert loss.item() == 0.0
    _finite_zero_grad(loss, pred)


# ---------------------------------------------------------------- ScaleShiftInvariantLoss


def _ssi_ref(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> float:
    """numpy lstsq per image, 1/(2M) sum residual^2, mean over images with >= 2 valid pixels."""
    losses = []
    for p, t, v in zip(pred, gt, valid):
        p, t = p[v].astype(np.float64), t[v].astype(np.float64)
        if p.size < 2:
            continue
        a = np.stack([p, np.ones_like(p)], axis=1)
        (s, sh), *_ = np.linalg.lstsq(a, t, rcond=None)
        losses.append(((s * p + sh - t) ** 2).sum() / (2 * p.size))
    return float(np.mean(losses)) if losses else 0.0


def test_ssi_known_value():
    pred = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    gt = torch.tensor([[[1.0, 1.0], [2.0, 2.0]]])
    # s = 0.4, t = 0.9; residuals (-0.1, 0.3, -0.3, 0.1); 0.2 / (2 * 4).
    assert ScaleShiftInvariantLoss()(pred, gt).item() == pytest.approx(0.025, rel=1e-5)
    assert ScaleShiftInvariantLoss(loss_weight=4)(pred[:, None], gt[:, None]).item() == pytest.approx(0.1, rel=1e-5)


def test_ssi_matches_lstsq_and_is_invariant():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 1, 6, 5, generator=gen) * 4
    gt = torch.rand(3, 1, 6, 5, generator=gen) * 10
    gt[gt < 3] = 0.0
    gt[2] = 0.0
    gt[2, 0, 1, 1] = 5.0  # one valid pixel: excluded from the mean
    valid = (gt > 0).numpy()[:, 0]
    ref = _ssi_ref(pred.numpy()[:, 0], gt.numpy()[:, 0], valid)
    assert ref > 0.1
    loss_fn = ScaleShiftInvariantLoss()
    loss = loss_fn(pred, gt)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    # Image 2 is excluded, so the mean is over images 0 and 1 only.
    pair = 0.5 * (loss_fn(pred[:1], gt[:1]) + loss_fn(pred[1:2], gt[1:2]))
    assert loss.item() == pytest.approx(pair.item(), rel=1e-5)
    # Per-image affine changes of the prediction (any non-zero scale) leave it unchanged.
    a = torch.tensor([3.7, 0.02, -2.0]).view(3, 1, 1, 1)
    b = torch.tensor([-2.0, 50.0, 1.0]).view(3, 1, 1, 1)
    assert loss_fn(a * pred + b, gt).item() == pytest.approx(loss.item(), rel=1e-4)
    # ... but changing gt's shape does change it.
    assert loss_fn(pred, gt**2).item() != pytest.approx(loss.item(), rel=1e-2)


def test_ssi_perfect_and_degenerate():
    gt = torch.rand(2, 1, 4, 4) + 1.0
    assert ScaleShiftInvariantLoss()(2.5 * gt - 7.0, gt).item() == pytest.approx(0.0, abs=1e-10)
    # Constant prediction on valid pixels: s = 0, t = mean(gt) -> var(gt) / 2 (biased), finite grads.
    pred = torch.full((1, 1, 4, 4), 3.0, requires_grad=True)
    gtc = torch.arange(16.0).view(1, 1, 4, 4) + 1
    loss = ScaleShiftInvariantLoss()(pred, gtc)
    assert loss.item() == pytest.approx(np.var(np.arange(16.0)) / 2, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all()
    # No image with >= 2 valid pixels.
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    gt0 = torch.zeros(2, 1, 4, 4)
    gt0[0, 0, 0, 0] = 1.0
    loss = ScaleShiftInvariantLoss()(pred, gt0)
    assert loss.item() == 0.0
    _finite_zero_grad(loss, pred)


def test_ssi_gradcheck():
    gen = torch.Generator().manual_seed(5)
    pred = torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    gt = torch.rand(2, 1, 3, 3, generator=gen, dtype=torch.float64) + 0.1
    gt[1, 0, 0] = 0.0
    assert torch.autograd.gradcheck(lambda p: ScaleShiftInvariantLoss()(p, gt), (pred,))


def test_gradient_loss_gradcheck():
    gen = torch.Generator().manual_seed(6)
    pred = (torch.rand(1, 1, 5, 5, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    gt = torch.rand(1, 1, 5, 5, generator=gen, dtype=torch.float64) + 0.5
    gt[0, 0, 2, 2] = 0.0
    assert torch.autograd.gradcheck(lambda p: GradientLoss()(p, gt), (pred,))
