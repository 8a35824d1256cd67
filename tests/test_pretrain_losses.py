"""Pretraining losses (pretrain/loss) and the DINO head (pretrain/heads.py).

Two ways to the same numbers:
(a) the published formulas, written out here independently (float64, loops):
    - centring: target = softmax((t - c) / T_t); after the step c <- m c + (1 - m) mean_batch(t);
    - Sinkhorn-Knopp (SwAV): P = exp(t / T_t) / sum; 3 x (each prototype's mass -> 1/K, each
      sample's mass -> 1/B); rows of B * P are the targets;
    - DINO: sum over (student, teacher) pairs of -mean_i sum_k t_ik log softmax(s_i / T_s)_k;
    - iBOT: per image, the masked patches' cross-entropies / max(n_masked, 1), mean over images;
    - KoLeo: -mean_i log(||x_i - x_nn(i) + 1e-8|| + eps) on L2-normalised rows, nn by inner product.
(b) the official 2023 code (``dinov2.loss``, ``dinov2.layers.DINOHead``) on the same inputs, the
    center updates over several steps included, called the official way.
And a 2-process gloo run: the distributed Sinkhorn-Knopp and centring equal one process on the
concatenated batch.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pretrain.heads import DINOHead, dino_head_state_dict_from_official, dino_head_state_dict_to_official
from pretrain.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp
from tests.conftest import free_port

# The oracle's own deprecation warnings (torch.cuda.amp.autocast, torch.nn.utils.weight_norm).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*torch.cuda.amp.autocast.*:FutureWarning", "ignore:.*torch.nn.utils.weight_norm.*:FutureWarning"
)

TOL = dict(rtol=1e-6, atol=1e-6)


def official_losses():
    """The official ``dinov2.loss`` module (test oracle), or skip."""
    return pytest.importorskip("dinov2.loss", reason="the official dinov2 package is the test oracle")


def official_head_class() -> type:
    """``dinov2.layers.DINOHead``, loaded by file path if ``dinov2.layers`` cannot be imported."""
    try:
        return importlib.import_module("dinov2.layers").DINOHead
    except ImportError:
        spec = importlib.util.find_spec("dinov2")
        if spec is None or spec.origin is None:
            pytest.skip("the official dinov2 package is the test oracle")
        path = Path(spec.origin).parent / "layers" / "dino_head.py"
        module_spec = importlib.util.spec_from_file_location("_official_dino_head", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.DINOHead


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_masks(b: int, n: int, seed: int, empty_image: bool = True) -> torch.Tensor:
    """(b, n) bool masks with a different count per image; the last image has none if `empty_image`."""
    masks = torch.rand(b, n, generator=torch.Generator().manual_seed(seed)) < torch.linspace(0.2, 0.7, b)[:, None]
    if empty_image:
        masks[-1] = False
    return masks


# --- (a) the published formulas ----------------------------------------------------------------


def ref_sinkhorn(t: torch.Tensor, temp: float, n_iterations: int = 3) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp in float64 on (B, K) scores; rows of the result sum to 1."""
    p = torch.exp(t.double() / temp)
    p = p / p.sum()
    b, k = p.shape
    for _ in range(n_iterations):
        p = p / p.sum(dim=0, keepdim=True) / k  # prototype marginals 1/K
        p = p / p.sum(dim=1, keepdim=True) / b  # sample marginals 1/B
    return p * b


def ref_cross_entropy(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    """-sum_k t_k log softmax(s / temp)_k per row, float64."""
    z = s.double() / temp
    return -(t.double() * (z - torch.logsumexp(z, dim=-1, keepdim=True))).sum(-1)


def ref_koleo(x: torch.Tensor, eps: float = 1e-8) -> float:
    """KoLeo by loops: nearest other row by inner product, torch's pairwise distance (+1e-8)."""
    u = [r / max(r.norm().item(), eps) for r in x.double()]
    total = 0.0
    for i, ui in enumerate(u):
        j = max((j for j in range(len(u)) if j != i), key=lambda j: float(ui @ u[j]))
        total += math.log((ui - u[j] + 1e-8).norm().item() + eps)
    return -total / len(u)


def test_softmax_centring_and_center_ema_follow_the_formula():
    k, m, temp = 7, 0.8, 0.05
    dino, ibot = DINOLoss(k, center_momentum=m), iBOTPatchLoss(k, center_momentum=m)
    center = torch.zeros(k, dtype=torch.float64)
    for step in range(4):
        t = rand(6, k, seed=step, scale=0.5)
        expected = torch.softmax((t.double() - center) / temp, dim=-1)
        torch.testing.assert_close(dino.softmax_center_teacher(t, temp), expected.float(), **TOL)
        dino.update_center(t)
        torch.testing.assert_close(dino.center.double(), center[None])  # applied at the next centring only
        patches = t.view(2, 3, k)  # iBOT: center of the per-image patch means
        torch.testing.assert_close(ibot.softmax_center_teacher(patches, temp), expected.float().view(2, 3, k), **TOL)
        ibot.update_center(patches)
        center = m * center + (1 - m) * t.double().mean(0)
    dino.apply_center_update()
    ibot.apply_center_update()
    torch.testing.assert_close(dino.center, center.float()[None], **TOL)
    torch.testing.assert_close(ibot.center, center.float()[None, None], **TOL)
    assert dino.center.shape == (1, k) and ibot.center.shape == (1, 1, k)
    assert "center" in dino.state_dict() and "center" in ibot.state_dict()


@pytest.mark.parametrize("n_iterations", [3, 1, 0])
def test_sinkhorn_knopp_follows_the_formula(n_iterations):
    t = rand(12, 5, seed=1)
    expected = ref_sinkhorn(t, 0.3, n_iterations).float()
    dino = DINOLoss(5).sinkhorn_knopp_teacher(t, 0.3, n_iterations=n_iterations)
    ibot = iBOTPatchLoss(5).sinkhorn_knopp_teacher(t, 0.3, torch.tensor([12]), n_iterations=n_iterations)
    for q in (dino, ibot, sinkhorn_knopp(t.double(), 0.3, 12, n_iterations)):
        assert q.dtype == torch.float32 and q.shape == (12, 5)
        torch.testing.assert_close(q, expected, **TOL)
    if n_iterations:
        torch.testing.assert_close(dino.sum(1), torch.ones(12), **TOL)
    # run long enough, every prototype receives B/K of the assignment
    balanced = DINOLoss(5).sinkhorn_knopp_teacher(t, 0.3, n_iterations=200)
    torch.testing.assert_close(balanced.sum(0), torch.full((5,), 12 / 5), rtol=1e-4, atol=1e-4)


def test_dino_cross_entropy_follows_the_formula():
    loss_fn = DINOLoss(9, student_temp=0.2)
    students = [rand(4, 9, seed=i).requires_grad_() for i in range(3)]
    teachers = torch.softmax(rand(2, 4, 9, seed=10), dim=-1)  # (n_crops, n, K) counts as a list
    expected = sum(ref_cross_entropy(t, s, 0.2).mean() for s in students for t in teachers)
    loss = loss_fn(students, teachers)
    torch.testing.assert_close(loss.double(), expected, **TOL)
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in students)


def test_ibot_losses_follow_the_formula():
    b, n, k = 4, 6, 8
    s, t = rand(b, n, k, seed=1), torch.softmax(rand(b, n, k, seed=2), dim=-1)
    masks = random_masks(b, n, seed=3)
    per_image = [
        sum(ref_cross_entropy(t[i, j], s[i, j], 0.1) for j in range(n) if masks[i, j]) / max(int(masks[i].sum()), 1)
        for i in range(b)
    ]
    expected = sum(per_image) / b
    loss_fn = iBOTPatchLoss(k)
    torch.testing.assert_close(loss_fn(s, t, masks).double(), expected, **TOL)
    # the gathered form of the training loop: masked rows, padding after n_masked_patches
    n_masked = int(masks.sum())
    pad = torch.zeros(3, k)
    s_masked, t_masked = torch.cat([s[masks], pad]), torch.cat([t[masks], pad])
    torch.testing.assert_close(
        loss_fn.forward_masked(s_masked, t_masked, masks, n_masked_patches=n_masked).double(), expected, **TOL
    )
    weights = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    got = loss_fn.forward_masked(s[masks], t[masks], student_masks_flat=masks, masks_weight=weights)
    torch.testing.assert_close(got.double(), expected, **TOL)
    with pytest.raises(ValueError, match="n_masked_patches"):
        loss_fn.forward_masked(s_masked, t_masked, masks)


def test_koleo_follows_the_formula():
    for b, d, seed in ((2, 3, 0), (7, 5, 1), (16, 32, 2)):
        x = rand(b, d, seed=seed, scale=3.0)
        assert KoLeoLoss()(x).item() == pytest.approx(ref_koleo(x), rel=1e-6, abs=1e-6)
    x = rand(5, 4, seed=3)
    assert KoLeoLoss()(x, eps=1e-3).item() == pytest.approx(ref_koleo(x, eps=1e-3), rel=1e-6)


def test_relative_entropy_of_the_teacher_targets():
    from pretrain.loss import relative_entropy

    k = 37
    assert relative_entropy(torch.full((3, 5, k), 1.0 / k)).item() == pytest.approx(1.0, abs=1e-6)
    assert relative_entropy(torch.eye(k)[:6]).item() == pytest.approx(0.0, abs=1e-6)
    p = rand(2, 9, k, seed=4, scale=2.0).softmax(-1)
    want = sum(-sum(float(q) * math.log(float(q)) for q in row) for row in p.reshape(-1, k)) / (18 * math.log(k))
    assert relative_entropy(p).item() == pytest.approx(want, rel=1e-6)
    assert relative_entropy(torch.empty(0, k)).item() == 0.0  # no masked patches: nothing to measure


def test_koleo_degenerate_inputs_stay_finite():
    d = 16
    dup_term = -math.log(1e-8 * (math.sqrt(d) + 1))  # an exact duplicate's distance is 1e-8 * sqrt(D)
    row = rand(1, d, seed=0)
    x = torch.cat([row, row, row, rand(5, d, seed=1)]).requires_grad_()
    loss = KoLeoLoss()(x)
    others = ref_koleo(x.detach()) * 8 - 3 * dup_term
    assert loss.item() == pytest.approx((3 * dup_term + others) / 8, rel=1e-5)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 1.0
    # one row: it is its own neighbour, a duplicate (value as the official code, zero gradient)
    one = rand(1, d, seed=2).requires_grad_()
    loss = KoLeoLoss()(one)
    assert loss.item() == pytest.approx(dup_term, rel=1e-6)
    loss.backward()
    assert torch.count_nonzero(one.grad) == 0
    # all rows equal, in float16 and bfloat16 (computed in float32), and zero rows
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        same = row.expand(4, d).to(dtype).clone().requires_grad_()
        loss = KoLeoLoss()(same)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and torch.isfinite(same.grad).all()
    zeros = torch.zeros(3, d, requires_grad=True)
    loss = KoLeoLoss()(zeros)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zeros.grad).all()
    # two opposite rows are each other's neighbour: distance 2
    assert KoLeoLoss()(torch.cat([row, -row])).item() == pytest.approx(-math.log(2 + 1e-8), rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        KoLeoLoss()(torch.zeros(0, d))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        KoLeoLoss()(torch.zeros(2, 3, d))


def test_input_errors_name_the_shapes():
    with pytest.raises(ValueError, match="same shape"):
        DINOLoss(4)([torch.zeros(3, 4)], [torch.zeros(2, 4)])
    with pytest.raises(ValueError, match="same shape"):  # a bare (n, K) tensor would iterate over rows
        DINOLoss(4)([torch.zeros(3, 4)], torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least one"):
        DINOLoss(4)([], [torch.zeros(3, 4)])
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        iBOTPatchLoss(4)(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_prototypes"):
        DINOLoss(4).sinkhorn_knopp_teacher(torch.zeros(2, 3, 4), 0.1)


# --- (b) the official code on the same inputs --------------------------------------------------


def test_signatures_match_the_official_ones():
    official = official_losses()
    pairs = [
        (DINOLoss, official.DINOLoss),
        (iBOTPatchLoss, official.iBOTPatchLoss),
        (KoLeoLoss, official.KoLeoLoss),
        (DINOHead, official_head_class()),
    ]
    for ours, theirs in pairs:
        for name in ("__init__", "forward", "softmax_center_teacher", "sinkhorn_knopp_teacher", "update_center",
                     "apply_center_update", "reduce_center_update", "forward_masked", "pairwise_NNs_inner"):
            if not hasattr(theirs, name):
                continue
            sig_ours, sig_theirs = inspect.signature(getattr(ours, name)), inspect.signature(getattr(theirs, name))
            assert list(sig_ours.parameters) == list(sig_theirs.parameters), (ours.__name__, name)
            for p_ours, p_theirs in zip(sig_ours.parameters.values(), sig_theirs.parameters.values()):
                if not (ours is DINOHead and p_ours.name == "out_dim"):  # ours defaults to 65536, theirs has none
                    assert p_ours.default == p_theirs.default, (ours.__name__, name, p_ours.name)


def test_dino_loss_matches_official_over_steps():
    official = official_losses()
    k, n, n_local = 16, 5, 3
    ours, theirs = DINOLoss(k, student_temp=0.1, center_momentum=0.7), official.DINOLoss(k, 0.1, 0.7)
    for step in range(4):
        teacher = rand(2 * n, k, seed=10 * step, scale=0.4)
        temp = 0.04 + 0.01 * step
        targets = ours.softmax_center_teacher(teacher, teacher_temp=temp).view(2, n, k)
        targets_official = theirs.softmax_center_teacher(teacher, temp).view(2, n, k)
        torch.testing.assert_close(targets, targets_official, **TOL)
        ours.update_center(teacher)
        theirs.update_center(teacher_output=teacher)
        sk = ours.sinkhorn_knopp_teacher(teacher, temp, 3)
        torch.testing.assert_close(sk, theirs.sinkhorn_knopp_teacher(teacher, teacher_temp=temp), **TOL)
        sk = ours.sinkhorn_knopp_teacher(teacher, teacher_temp=temp, n_iterations=step)
        torch.testing.assert_close(sk, theirs.sinkhorn_knopp_teacher(teacher, temp, step), **TOL)

        local = rand(n_local * n, k, seed=10 * step + 1).requires_grad_()
        glob = rand(2 * n, k, seed=10 * step + 2).requires_grad_()
        local_o, glob_o = local.detach().clone().requires_grad_(), glob.detach().clone().requires_grad_()
        loss = ours(local.chunk(n_local), targets) + ours(
            student_output_list=[glob], teacher_out_softmaxed_centered_list=[targets.flatten(0, 1)]
        )
        loss_o = theirs(local_o.chunk(n_local), targets_official) + theirs(
            student_output_list=[glob_o], teacher_out_softmaxed_centered_list=[targets_official.flatten(0, 1)]
        )
        torch.testing.assert_close(loss, loss_o, **TOL)
        loss.backward()
        loss_o.backward()
        torch.testing.assert_close(local.grad, local_o.grad, **TOL)
        torch.testing.assert_close(glob.grad, glob_o.grad, **TOL)
    ours.apply_center_update()
    theirs.apply_center_update()
    torch.testing.assert_close(ours.center, theirs.center, **TOL)
    ours2 = DINOLoss(k)
    ours2.load_state_dict(theirs.state_dict(), strict=True)


def test_ibot_loss_matches_official_over_steps():
    official = official_losses()
    b, n, k = 3, 8, 12
    ours, theirs = iBOTPatchLoss(k, 0.1, 0.85), official.iBOTPatchLoss(patch_out_dim=k, student_temp=0.1,
                                                                       center_momentum=0.85)
    for step in range(4):
        teacher = rand(b, n, k, seed=step, scale=0.4)
        targets = ours.softmax_center_teacher(teacher, 0.07)
        torch.testing.assert_close(targets, theirs.softmax_center_teacher(teacher, teacher_temp=0.07), **TOL)
        ours.update_center(teacher)
        theirs.update_center(teacher)
        masks = random_masks(b, n, seed=step)
        s = rand(b, n, k, seed=100 + step).requires_grad_()
        s_o = s.detach().clone().requires_grad_()
        torch.testing.assert_close(ours(s, targets, masks), theirs(s_o, targets, student_masks_flat=masks), **TOL)
        n_masked = int(masks.sum())
        pad = rand(2, k, seed=200 + step)
        s_m = torch.cat([s[masks], pad]).detach().requires_grad_()
        s_m_o = s_m.detach().clone().requires_grad_()
        t_m = torch.cat([targets[masks], pad.softmax(-1)])
        loss = ours.forward_masked(s_m, t_m, masks, n_masked)
        loss_o = theirs.forward_masked(s_m_o, t_m, student_masks_flat=masks, n_masked_patches=n_masked)
        torch.testing.assert_close(loss, loss_o, **TOL)
        loss.backward()
        loss_o.backward()
        torch.testing.assert_close(s_m.grad, s_m_o.grad, **TOL)
    ours.apply_center_update()
    theirs.apply_center_update()
    torch.testing.assert_close(ours.center, theirs.center, **TOL)


def test_koleo_matches_official():
    official = official_losses()
    for b, d, seed in ((2, 8, 0), (9, 16, 1), (64, 384, 2)):
        x = rand(b, d, seed=seed).requires_grad_()
        x_o = x.detach().clone().requires_grad_()
        loss, loss_o = KoLeoLoss()(x), official.KoLeoLoss()(x_o)
        torch.testing.assert_close(loss, loss_o, **TOL)
        loss.backward()
        loss_o.backward()
        torch.testing.assert_close(x.grad, x_o.grad, **TOL)
    row = rand(1, 32, seed=3)
    dup = torch.cat([row, row, rand(4, 32, seed=4)])
    torch.testing.assert_close(KoLeoLoss()(dup, eps=1e-8), official.KoLeoLoss()(dup, eps=1e-8), **TOL)
    torch.testing.assert_close(KoLeoLoss()(row), official.KoLeoLoss()(row), **TOL)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(nlayers=3, hidden_dim=24, bottleneck_dim=8),
        dict(nlayers=1, bottleneck_dim=8),
        dict(nlayers=2, hidden_dim=24, bottleneck_dim=8, use_bn=True, mlp_bias=False),
    ],
)
def test_dino_head_matches_official(kwargs):
    official_cls = official_head_class()
    torch.manual_seed(0)
    theirs = official_cls(16, 40, **kwargs)
    torch.manual_seed(0)
    ours = DINOHead(16, 40, **kwargs)
    # the same seed gives the same init: the official order of construction and init
    converted = dino_head_state_dict_from_official(theirs.state_dict())
    assert list(converted) == list(ours.state_dict())
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, converted[key], rtol=0, atol=0, msg=key)
    assert (ours.last_layer.parametrizations.weight.original0 == 1).all()
    assert [p.requires_grad for p in ours.parameters()] == [p.requires_grad for p in theirs.parameters()]

    with torch.no_grad():  # weights that are not an init
        for p in theirs.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fresh = DINOHead(16, 40, **kwargs)
    fresh.load_state_dict(theirs.state_dict(), strict=True)  # the official keys load as they are
    x = rand(6, 16, seed=5)
    for mode in ("train", "eval"):
        getattr(fresh, mode)()
        getattr(theirs, mode)()
        torch.testing.assert_close(fresh(x), theirs(x), **TOL)
    back = official_cls(16, 40, **kwargs)
    back.load_state_dict(dino_head_state_dict_to_official(fresh.state_dict()), strict=True)
    torch.testing.assert_close(back.eval()(x), theirs(x), **TOL)


def test_dino_head_in_a_model_and_as_teacher_copy():
    official_cls = official_head_class()
    theirs = torch.nn.ModuleDict({"dino_head": official_cls(8, 20, hidden_dim=12, bottleneck_dim=4)})
    ours = torch.nn.ModuleDict({"dino_head": DINOHead(8, 20, hidden_dim=12, bottleneck_dim=4)})
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert "dino_head.last_layer.weight_g" in dino_head_state_dict_to_official(ours.state_dict())
    student = ours["dino_head"]
    x = rand(3, 8, seed=0)
    assert student(x).shape == (3, 20)
    teacher = copy.deepcopy(student)  # after a forward pass, as a training loop does
    torch.testing.assert_close(teacher(x), student(x), rtol=0, atol=0)
    assert DINOHead(8).last_layer.parametrizations.weight.original1.shape == (65536, 256)


# --- two processes: torch.distributed (gloo) ---------------------------------------------------
# The official iBOT Sinkhorn-Knopp all-reduces its count unconditionally: it is compared here only.

WORLD = 2
K = 10
ROWS = (4, 4)  # DINO: every rank holds the same number of samples
MASKED = (5, 9)  # iBOT: masked patches per rank may differ
TEMP = 0.07


def _global_inputs() -> dict[str, torch.Tensor]:
    return {
        "dino": rand(sum(ROWS), K, seed=1, scale=0.3),
        "ibot": rand(sum(MASKED), K, seed=2, scale=0.3),
        "center_steps": rand(3, sum(ROWS), K, seed=3, scale=0.4),
        "patch_steps": rand(3, sum(ROWS), 6, K, seed=4, scale=0.4),
    }


def _centring_run(loss: DINOLoss | iBOTPatchLoss, steps: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Targets of each step and the final center of centring + center updates over `steps`."""
    targets = []
    for t in steps:
        targets.append(loss.softmax_center_teacher(t, TEMP))
        loss.update_center(t)
    loss.apply_center_update()
    return targets, loss.center.clone()


def _distributed_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        data = _global_inputs()
        rows = slice(sum(ROWS[:rank]), sum(ROWS[: rank + 1]))
        masked = slice(sum(MASKED[:rank]), sum(MASKED[: rank + 1]))
        count = torch.tensor([MASKED[rank]])
        out = {
            "dino": DINOLoss(K).sinkhorn_knopp_teacher(data["dino"][rows], TEMP),
            "ibot": iBOTPatchLoss(K).sinkhorn_knopp_teacher(data["ibot"][masked], TEMP, count),
            "count": count,
            "dino_center": _centring_run(DINOLoss(K, center_momentum=0.6), data["center_steps"][:, rows]),
            "ibot_center": _centring_run(iBOTPatchLoss(K, center_momentum=0.6), data["patch_steps"][:, rows]),
        }
        try:
            official = importlib.import_module("dinov2.loss")
        except ImportError:
            official = None
        if official is not None:
            out["official_dino"] = official.DINOLoss(K).sinkhorn_knopp_teacher(data["dino"][rows], TEMP)
            out["official_ibot"] = official.iBOTPatchLoss(K).sinkhorn_knopp_teacher(
                data["ibot"][masked], TEMP, count.clone()
            )
            out["official_dino_center"] = _centring_run(
                official.DINOLoss(K, center_momentum=0.6), data["center_steps"][:, rows]
            )
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
@pytest.mark.skipif(sys.platform == "win32", reason="gloo over tcp on Linux/macOS")
def test_two_process_gloo_equals_one_process_on_the_whole_batch(tmp_path):
    torch.multiprocessing.spawn(_distributed_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    data = _global_inputs()

    whole = DINOLoss(K).sinkhorn_knopp_teacher(data["dino"], TEMP)
    torch.testing.assert_close(torch.cat([r["dino"] for r in ranks]), whole, **TOL)
    whole = iBOTPatchLoss(K).sinkhorn_knopp_teacher(data["ibot"], TEMP, torch.tensor([sum(MASKED)]))
    torch.testing.assert_close(torch.cat([r["ibot"] for r in ranks]), whole, **TOL)
    torch.testing.assert_close(whole, ref_sinkhorn(data["ibot"], TEMP).float(), **TOL)
    assert [r["count"].item() for r in ranks] == list(MASKED)  # the caller's counts are left as they were

    for key, loss in (("dino_center", DINOLoss), ("ibot_center", iBOTPatchLoss)):
        steps = data["center_steps"] if key == "dino_center" else data["patch_steps"]
        targets, center = _centring_run(loss(K, center_momentum=0.6), steps)
        for r in ranks:
            torch.testing.assert_close(r[key][1], center, **TOL)
        for step, expected in enumerate(targets):
            torch.testing.assert_close(torch.cat([r[key][0][step] for r in ranks]), expected, **TOL)

    if "official_dino" in ranks[0]:
        for r in ranks:
            torch.testing.assert_close(r["dino"], r["official_dino"], **TOL)
            torch.testing.assert_close(r["ibot"], r["official_ibot"], **TOL)
            torch.testing.assert_close(r["dino_center"][1], r["official_dino_center"][1], **TOL)
            for a, b in zip(r["dino_center"][0], r["official_dino_center"][0]):
                torch.testing.assert_close(a, b, **TOL)
