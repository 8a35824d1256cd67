"""Two costs of the backbone's forward outside the blocks, removed without changing a result:

* the interpolated position embedding is cached when no gradient can reach ``pos_embed``; the cache
  must give the uncached values bit for bit and follow every change of the weights;
* on CUDA devices the patch embedding runs as one GEMM (``patch_embed_matmul``), checked here on the
  CPU against the convolution it replaces (CI has no GPU).
"""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import dinov2_dense.models.vision_transformer as vt
from dinov2_dense.models.layers import patch_embed_matmul

from .conftest import randomize_, tiny_vit

SIZE = (70, 98)  # a 5x7 grid: the stored grid is 7x7, so the embedding is interpolated


def _image(seed: int = 0, size=SIZE, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _layers(model, x):
    with torch.no_grad():
        return model.get_intermediate_layers(x, n=[0, 2], return_class_token=True, norm=False)


def _flat(outputs):
    return [t for pair in outputs for t in pair]


def _assert_identical(got, want):
    for g, w in zip(_flat(got), _flat(want), strict=True):
        assert g.dtype == w.dtype and torch.equal(g, w)


def _uncached(model):
    """A copy of ``model`` that never caches (the reference)."""
    ref = copy.deepcopy(model)
    ref.pos_embed_cache_size = 0
    return ref


@pytest.fixture
def interpolations(monkeypatch):
    """Counts the bicubic resamplings the model really computes."""
    calls = []
    real = vt.interpolate_pos_embed

    def counting(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(vt, "interpolate_pos_embed", counting)
    return calls


# -- the position-embedding cache -------------------------------------------------------------
@pytest.mark.parametrize("registers", [0, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "frozen"])
def test_cached_pos_embed_gives_bit_identical_intermediate_layers(registers, dtype, mode, interpolations):
    model = tiny_vit(registers=registers).to(dtype)
    ref = _uncached(model)
    x = _image().to(dtype)
    if mode == "frozen":  # grad mode on, but nothing can reach pos_embed: cached as well
        model.requires_grad_(False)
        ref.requires_grad_(False)

    def run(m):
        if mode == "no_grad":
            with torch.no_grad():
                return m.get_intermediate_layers(x, n=[0, 2], return_class_token=True, norm=False)
        if mode == "inference_mode":
            with torch.inference_mode():
                return m.get_intermediate_layers(x, n=[0, 2], return_class_token=True, norm=False)
        return m.get_intermediate_layers(x, n=[0, 2], return_class_token=True, norm=False)

    want = run(ref)
    assert len(interpolations) == 1 and interpolations[0] == (5, 7)
    first, second = run(model), run(model)
    assert len(interpolations) == 2  # the second call came from the cache
    assert len(model._pos_embed_cache.entries) == 1 and not ref._pos_embed_cache.entries
    _assert_identical(first, want)
    _assert_identical(second, want)
    assert _flat(want)[0].abs().max() > 0.1


def test_native_grid_and_gradients_do_not_use_the_cache(interpolations):
    model = tiny_vit()
    _layers(model, _image(size=(98, 98)))
    assert not interpolations and not model._pos_embed_cache.entries  # the stored grid: nothing to resample
    _layers(model, _image())  # fills the cache
    x = _image()
    with torch.enable_grad():
        out = model.get_intermediate_layers(x, n=1)[0]
        out.square().sum().backward()
    assert len(interpolations) == 2  # a gradient is wanted: computed again, not taken from the cache
    grad = model.pos_embed.grad
    assert grad is not None and grad[0, 1:].abs().max() > 0  # the patch positions get their gradient
    ref = _uncached(model)
    ref.zero_grad()
    ref.get_intermediate_layers(x, n=1)[0].square().sum().backward()
    torch.testing.assert_close(grad, ref.pos_embed.grad, atol=0, rtol=0)


@pytest.mark.parametrize("assign", [False, True])
def test_cache_follows_load_state_dict(assign, interpolations):
    """Loading copies into the parameter (a new version) or, with ``assign``, puts the loaded tensor
    in its place (other memory, here at the same version)."""
    model, other = randomize_(tiny_vit(), seed=2), randomize_(tiny_vit(), seed=1)
    x = _image()
    before = _layers(model, x)
    version = model.pos_embed._version
    model.load_state_dict(other.state_dict(), assign=assign)
    assert (model.pos_embed._version == version) == assign  # so only the memory tells, with assign
    after = _layers(model, x)
    _assert_identical(after, _layers(_uncached(other), x))
    assert not torch.equal(after[0][0], before[0][0])
    assert len(interpolations) == 3  # before, after, and the reference: the stale entry was not used


def test_cache_follows_in_place_changes_and_optimiser_steps():
    model = tiny_vit()
    x = _image()
    before = _layers(model, x)
    with torch.no_grad():
        model.pos_embed.mul_(-2.0)  # same memory, new version
    changed = _layers(model, x)
    _assert_identical(changed, _layers(_uncached(model), x))
    assert not torch.equal(changed[0][0], before[0][0])
    # an optimiser step (training with grad), then inference again
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    with torch.enable_grad():
        model.get_intermediate_layers(x, n=1)[0].square().sum().backward()
    opt.step()
    stepped = _layers(model, x)
    _assert_identical(stepped, _layers(_uncached(model), x))
    assert not torch.equal(stepped[0][0], changed[0][0])


def test_a_teacher_in_train_mode_updated_through_data_never_reads_the_cache():
    """DINO v1's EMA (``p.data.mul_(m).add_((1 - m) * q.data)``) bypasses the version counter; its
    teacher stays in train mode, where nothing is cached, so each update is seen."""
    student, x = tiny_vit(), _image()
    teacher = copy.deepcopy(student).train()
    teacher.requires_grad_(False)
    for _ in range(3):
        _layers(teacher, x)
        with torch.no_grad():
            student.pos_embed.add_(0.3)
        for pt, ps in zip(teacher.parameters(), student.parameters()):
            pt.data.mul_(0.5).add_(0.5 * ps.data)
        _assert_identical(_layers(teacher, x), _layers(_uncached(teacher), x))
    assert not teacher._pos_embed_cache.entries


def test_ema_teacher_deep_copied_from_a_cached_model():
    """The EMA teacher of pretraining is a deep copy of the student, frozen, updated in place by
    ``torch._foreach_lerp_``: it must start with its own empty cache and follow each update."""
    student = tiny_vit()
    x = _image()
    _layers(student, x)  # the student holds a cache entry now
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    assert not teacher._pos_embed_cache.entries and teacher._pos_embed_cache is not student._pos_embed_cache
    _assert_identical(_layers(teacher, x), _layers(_uncached(student), x))
    with torch.no_grad():
        student.pos_embed.add_(0.5)
        torch._foreach_lerp_(list(teacher.parameters()), list(student.parameters()), 0.5)
    got = _layers(teacher, x)
    _assert_identical(got, _layers(_uncached(teacher), x))
    _assert_identical(_layers(student, x), _layers(_uncached(student), x))


def test_pickle_and_state_dict_leave_the_cache_out():
    model = tiny_vit()
    x = _image()
    want = _layers(model, x)
    assert model._pos_embed_cache.entries
    assert list(model.state_dict()) == list(tiny_vit().state_dict())
    clone = pickle.loads(pickle.dumps(model))
    assert not clone._pos_embed_cache.entries
    _assert_identical(_layers(clone, x), want)


def test_cached_value_is_a_plain_tensor_usable_after_inference_mode():
    model = tiny_vit().requires_grad_(False)
    x = _image()
    with torch.inference_mode():
        model.get_intermediate_layers(x, n=1)
    (_, _, value), = model._pos_embed_cache.entries
    assert not value.is_inference() and not value.requires_grad
    # outside inference mode, with a gradient to the input: autograd may use the cached value
    xg = x.clone().requires_grad_(True)
    out = model.get_intermediate_layers(xg, n=1)[0]
    out.sum().backward()
    assert xg.grad is not None and xg.grad.abs().max() > 0
    assert len(model._pos_embed_cache.entries) == 1


def test_cache_keys_dtype_and_forgets_on_to(interpolations):
    model = tiny_vit()
    tokens32 = torch.zeros(1, 1 + 35, 48)
    with torch.no_grad():
        a = model.interpolate_pos_encoding(tokens32, *SIZE)
        b = model.interpolate_pos_encoding(tokens32.bfloat16(), *SIZE)
        assert a.dtype == torch.float32 and b.dtype == torch.bfloat16 and len(interpolations) == 2
        assert model.interpolate_pos_encoding(tokens32, *SIZE) is a
        assert torch.equal(b, a.bfloat16())
    x = _image()
    full = _layers(model, x)
    # a round trip through bf16 rounds the weights: nothing computed before may come back
    model.to(torch.bfloat16)
    assert not model._pos_embed_cache.entries
    _layers(model, x.bfloat16())
    model.to(torch.float32)
    rounded = _layers(model, x)
    _assert_identical(rounded, _layers(_uncached(model), x))
    assert not torch.equal(rounded[0][0], full[0][0])
    # the resampling mode is part of the key too (register models: explicit size, antialiased)
    model.interpolate_offset, model.interpolate_antialias = 0.0, True
    other_mode = _layers(model, x)
    _assert_identical(other_mode, _layers(_uncached(model), x))
    assert not torch.equal(other_mode[0][0], rounded[0][0])


def test_cache_keeps_the_last_sizes_only(interpolations):
    model = tiny_vit()
    sizes = [(14 * h, 14 * w) for h, w in [(2, 3), (3, 2), (4, 4), (5, 6), (6, 5), (8, 3)]]
    for size in sizes:
        _layers(model, _image(size=size, batch=1))
    assert len(interpolations) == 6 and len(model._pos_embed_cache.entries) == model.pos_embed_cache_size == 4
    _layers(model, _image(size=sizes[-1], batch=1))
    _layers(model, _image(size=sizes[2], batch=1))  # the oldest kept: used, then the most recent
    assert len(interpolations) == 6
    _layers(model, _image(size=sizes[0], batch=1))  # dropped: computed again
    assert len(interpolations) == 7
    assert [k[0] for k, _, _ in model._pos_embed_cache.entries] == [(6, 5), (8, 3), (4, 4), (2, 3)]
    model.clear_pos_embed_cache()
    assert not model._pos_embed_cache.entries


def test_compiling_the_forward_traces_the_uncached_interpolation(interpolations):
    """Under torch.compile (the "reduce-overhead" mode compiles forward_layers whole) the cache is
    skipped: the graph computes the embedding from the parameter, so a later weight change shows."""
    torch._dynamo.reset()
    model = tiny_vit(depth=1)
    x = _image()
    compiled = torch.compile(model.forward_layers, backend="eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        got = compiled(x, [0])[0]  # (traced, the blocks take the plain ops: equal to float rounding)
        torch.testing.assert_close(got, model.forward_layers(x, [0])[0], atol=1e-5, rtol=1e-5)
        model.pos_embed.mul_(3.0)
        again = compiled(x, [0])[0]
        torch.testing.assert_close(again, _uncached(model).forward_layers(x, [0])[0], atol=1e-5, rtol=1e-5)
    assert not torch.equal(again, got)
    torch._dynamo.reset()


def test_fsdp_teacher_is_never_served_from_the_cache(single_process_group, interpolations):
    """Pretraining under FSDP shards the teacher backbone (``fully_shard``) and updates it by EMA on
    the shards; each forward gathers the parameter again into the same tensor, at the same version.
    So a sharded backbone never caches: each forward equals a plain model holding the same weights."""
    from torch.distributed.fsdp import fully_shard

    teacher = tiny_vit()
    plain = copy.deepcopy(teacher)
    for block in teacher.blocks:
        fully_shard(block)
    fully_shard(teacher)
    teacher.requires_grad_(False)
    x = _image()
    for _ in range(3):
        with torch.no_grad():  # through forward(), where FSDP gathers the weights (as pretraining does)
            got = teacher(x, is_training=True)["x_prenorm"]
            teacher.reshard()
            want = _uncached(plain)(x, is_training=True)["x_prenorm"]
        assert torch.equal(got, want)
        with torch.no_grad():  # an update of the shards in place (the EMA step, towards a constant)
            for model in (teacher, plain):
                params = list(model.parameters())
                torch._foreach_lerp_(params, [torch.full_like(p, 0.1) for p in params], 0.5)
    assert not teacher._pos_embed_cache.entries and len(interpolations) == 6


# -- the patch embedding as one GEMM ----------------------------------------------------------
def _conv_tokens(x, weight, bias):
    return F.conv2d(x, weight, bias, stride=weight.shape[-2:]).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("shape", [(2, 3, 28, 42), (1, 3, 14, 14), (3, 3, 70, 56), (1, 4, 42, 28)])
@pytest.mark.parametrize("patch", [(14, 14), (7, 14)])
@pytest.mark.parametrize("bias", [True, False])
def test_matmul_patch_embedding_equals_the_conv(shape, patch, bias):
    gen = torch.Generator().manual_seed(sum(shape) + patch[1])
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weight = 0.05 * torch.randn(24, shape[1], *patch, generator=gen, dtype=torch.float64)
    b = torch.randn(24, generator=gen, dtype=torch.float64) if bias else None
    want = _conv_tokens(x, weight, b)
    got = patch_embed_matmul(x, weight, b)
    assert got.shape == want.shape == (shape[0], (shape[2] // patch[0]) * (shape[3] // patch[1]), 24)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # fp32, also from a channels-last image
    x32, w32, b32 = x.float(), weight.float(), b.float() if bias else None
    want32 = _conv_tokens(x32, w32, b32)
    for image in (x32, x32.contiguous(memory_format=torch.channels_last)):
        torch.testing.assert_close(patch_embed_matmul(image, w32, b32), want32, atol=1e-5, rtol=1e-5)
    # bf16: both round the same bf16 inputs; the sums differ in order and in the rounding of the output
    xb, wb, bb = x.bfloat16(), weight.bfloat16(), b.bfloat16() if bias else None
    got_bf16 = patch_embed_matmul(xb, wb, bb)
    assert got_bf16.dtype == torch.bfloat16
    exact = _conv_tokens(xb.double(), wb.double(), bb.double() if bias else None)
    scale = exact.abs().max()
    assert (got_bf16.double() - exact).abs().max() <= 2e-2 * scale
    assert (got_bf16.double() - _conv_tokens(xb, wb, bb).double()).abs().max() <= 3e-2 * scale


def test_patch_embed_keeps_the_conv_on_the_cpu(monkeypatch):
    import dinov2_dense.models.layers as layers

    model = tiny_vit()
    x = _image()
    with torch.no_grad():
        want = model.patch_embed.proj(x).flatten(2).transpose(1, 2)

    def refuse(*args):
        raise AssertionError("the GEMM path ran on the CPU")

    monkeypatch.setattr(layers, "patch_embed_matmul", refuse)
    with torch.no_grad():
        assert torch.equal(model.patch_embed(x), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_patch_embed_on_cuda_takes_the_gemm_and_matches_the_conv(dtype, monkeypatch):
    import dinov2_dense.models.layers as layers

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = tiny_vit().to("cuda", dtype)
    x = _image(size=(644, 644)).to("cuda", dtype)
    calls = []
    real = layers.patch_embed_matmul
    monkeypatch.setattr(layers, "patch_embed_matmul", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        got = model.patch_embed(x)
        want = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert calls == [1] and got.shape == want.shape
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, want, **tol)
    with torch.enable_grad():  # a gradient wanted: the convolution, as in training
        model.patch_embed(x)
    assert calls == [1]
