"""The opt-in FP8 path (dinov2_dense.models.float8): one layer against the published rowwise formula
computed by hand, its distance to the float layer, and whole backbones against their float selves."""

import copy

import pytest
import torch
from torch import nn

from dinov2_dense import load_backbone
from dinov2_dense.models import float8
from dinov2_dense.models.float8 import Float8Linear, float8_linears

from .conftest import randomize_, tiny_vit

E4M3_MAX = 448.0


def _cpu_fp8_missing() -> str | None:
    try:
        float8.check_float8_device("cpu")
    except ValueError as exc:
        return str(exc)
    return None


# rowwise-scaled FP8 products on a CPU came with torch 2.13 (2.11 has only per-tensor scaling there)
pytestmark = pytest.mark.skipif(_cpu_fp8_missing() is not None, reason=f"{_cpu_fp8_missing()}")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()


def _linear(k: int, n: int, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    layer = nn.Linear(k, n)
    with torch.no_grad():
        layer.bias.normal_(0, 0.5)
    return layer


def _by_hand(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """Rowwise e4m3 quantisation of input and weight (scale amax/448), dequantised, multiplied in float64;
    the bias as the bfloat16 output takes it."""
    def q(t):
        scale = t.abs().amax(dim=1, keepdim=True) / E4M3_MAX
        scale[scale == 0] = 1.0
        return (t / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).double() * scale.double()

    return q(x.float()) @ q(layer.weight.detach().float()).T + layer.bias.detach().to(torch.bfloat16).double()


def test_float8_linear_computes_the_rowwise_formula():
    layer = _linear(64, 48)
    x = torch.randn(3, 5, 64) * torch.logspace(-2, 2, 5).unsqueeze(-1)  # rows of very different sizes
    q = Float8Linear.from_linear(layer)
    assert q.weight8.dtype == torch.float8_e4m3fn and q.weight_scale.shape == (1, 48)
    assert q.weight8.t().stride() == (1, 64)  # the column-major second operand _scaled_mm needs
    out = q(x)
    assert out.shape == (3, 5, 48) and out.dtype == torch.float32
    ref = _by_hand(x.reshape(-1, 64), layer).reshape(3, 5, 48)
    # the output is rounded to bfloat16 (8 bits of mantissa): equal to within that rounding
    torch.testing.assert_close(out.double(), ref, rtol=2**-8, atol=1e-7 * ref.abs().max().item())
    for dtype in (torch.bfloat16, torch.float16):  # half inputs give half outputs
        assert q(x.to(dtype)).dtype == dtype


def test_float8_linear_is_close_to_the_float_layer_but_not_equal():
    layer = _linear(256, 128, seed=1)
    x = torch.randn(64, 256)
    with torch.no_grad():
        ref, out = layer(x), Float8Linear.from_linear(layer)(x)
    err = ((out - ref).norm() / ref.norm()).item()
    assert 0.005 < err < 0.08, err  # measured 0.035: e4m3 keeps 3 mantissa bits; 0 would mean no FP8 at all


def test_zero_rows_give_the_bias_not_nan():
    layer = _linear(32, 16)
    with torch.no_grad():
        layer.weight[3] = 0  # a zero weight row: its scale is 1, not 0
    x = torch.randn(4, 32)
    x[1] = 0
    out = Float8Linear.from_linear(layer)(x)
    assert torch.isfinite(out).all()
    bias = layer.bias.detach().to(torch.bfloat16).float()
    torch.testing.assert_close(out[1], bias, rtol=0, atol=0)
    torch.testing.assert_close(out[:, 3], bias[3].expand(4), rtol=0, atol=0)


def test_shapes_that_do_not_fit_stay_plain_linears():
    with pytest.raises(ValueError, match="multiples of 16"):
        Float8Linear.from_linear(nn.Linear(40, 48))
    # mlp_ratio 2.5: fc1 48 -> 120 and fc2 120 -> 48 do not fit; qkv 48 -> 144 and proj 48 -> 48 do
    model = tiny_vit(depth=2, mlp_ratio=2.5)
    with pytest.warns(UserWarning, match=r"4 of 8 linear layers stay in float32: .*blocks\.0\.mlp\.fc1 \(48x120\)"):
        assert float8_linears(model) == 2 * 2
    for block in model.blocks:
        assert isinstance(block.attn.qkv, Float8Linear) and isinstance(block.attn.proj, Float8Linear)
        assert type(block.mlp.fc1) is nn.Linear and type(block.mlp.fc2) is nn.Linear
    with torch.no_grad():
        assert torch.isfinite(model.forward_features(torch.randn(1, 3, 28, 42))["x_norm_patchtokens"]).all()


@pytest.mark.parametrize("ffn", ["mlp", "swiglufused"])
def test_float8_backbone_keeps_the_features(ffn):
    # std 0.1: the blocks change the tokens a lot (without them the class token's cosine is ~0.3-0.7),
    # so the bounds below say something about the FP8 layers
    model = randomize_(tiny_vit(ffn=ffn, depth=3), std=0.1)
    fp8 = copy.deepcopy(model)
    n = float8_linears(fp8)
    assert n == 4 * 3  # qkv, proj and two FFN layers (fc1/fc2 or w12/w3) a block
    assert sum(isinstance(m, Float8Linear) for m in fp8.modules()) == n
    assert not any(isinstance(m, nn.Linear) for m in fp8.blocks.modules())
    # everything but the blocks' linear layers is untouched
    before, after = model.state_dict(), fp8.state_dict()
    kept = [k for k in before if not k.startswith("blocks.") or "norm" in k or ".ls" in k]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)
    assert isinstance(fp8.patch_embed.proj, nn.Conv2d) and isinstance(fp8.head, nn.Identity)

    x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = model.forward_features(x), fp8.forward_features(x)
        tokens = model.prepare_tokens_with_masks(x)
        maps = fp8.intermediate_maps(x, None)[0][0]
    assert _cos(ref["x_norm_clstoken"], tokens[:, 0]) < 0.9  # the blocks matter
    for key in ("x_norm_clstoken", "x_norm_patchtokens"):  # measured: >= 0.9979 (cls), 0.99997 (patches)
        assert _cos(ref[key], out[key]) > 0.99, key
    added, added8 = ref["x_prenorm"] - tokens, out["x_prenorm"] - tokens  # what the blocks add
    assert _cos(added, added8) > 0.99  # measured 0.998-0.999
    assert 0.005 < ((added8 - added).norm() / added.norm()).item() < 0.1  # measured 0.047-0.062
    torch.testing.assert_close(maps.flatten(2).transpose(1, 2), out["x_norm_patchtokens"])


def test_load_backbone_float8_on_cpu():
    torch.manual_seed(0)
    plain = load_backbone("dinov2_vits14", weights=None, depth=2)
    torch.manual_seed(0)  # the same random weights
    model = load_backbone("dinov2_vits14", weights=None, depth=2, float8=True)
    assert sum(isinstance(m, Float8Linear) for m in model.modules()) == 4 * 2
    x = torch.randn(1, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (patches, cls), = model.get_intermediate_layers(x, 1, return_class_token=True)
        (ref_patches, ref_cls), = plain.get_intermediate_layers(x, 1, return_class_token=True)
    assert patches.shape == (1, 16, 384) and cls.shape == (1, 384)
    assert _cos(patches, ref_patches) > 0.99 and _cos(cls, ref_cls) > 0.99


def test_embedded_backbone_with_trained_weights_keeps_its_features():
    plain = load_backbone("dinov2_dense_tiny")
    fp8 = load_backbone("dinov2_dense_tiny", float8=True)
    assert sum(isinstance(m, Float8Linear) for m in fp8.modules()) == 4 * len(plain.blocks)
    x = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, out = plain.forward_features(x), fp8.forward_features(x)
    for key in ("x_norm_clstoken", "x_norm_patchtokens"):  # measured 0.9954 (cls), 0.99999 (patches)
        assert _cos(ref[key], out[key]) > 0.99, key


def test_old_gpus_are_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    with pytest.raises(ValueError, match=r"H100/Ada-class GPU \(compute capability 8.9\+\), found NVIDIA A100 \(8.0\)"):
        float8.check_float8_device("cuda")


def test_compiled_float8_blocks_equal_the_eager_ones(monkeypatch):
    from dinov2_dense.models.speed import FLOAT8_OPTIONS, compile_blocks

    torch._dynamo.reset()
    model = randomize_(tiny_vit(depth=1), std=0.1)
    float8_linears(model)
    x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model.forward_features(x)["x_norm_patchtokens"]
    asked = []
    real = nn.Module.compile
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: asked.append(k) or real(self, *a, **k))
    assert compile_blocks(model) is True  # with FLOAT8_OPTIONS (a CPU ignores the Triton ones)
    assert asked == [dict(mode=None, dynamic=True, options=FLOAT8_OPTIONS)]
    assert FLOAT8_OPTIONS["triton.multi_kernel"] and FLOAT8_OPTIONS["fx_graph_cache"] is False
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)["x_norm_patchtokens"], ref, atol=1e-5, rtol=1e-4)
    torch._dynamo.reset()


def test_casting_a_converted_model_is_refused_clearly():
    model = tiny_vit(depth=1, dim=64, heads=4, img=28).eval()
    float8_linears(model)
    model.to(torch.bfloat16)  # casts the e4m3 weights too
    with pytest.raises(RuntimeError, match=r"Float8Linear blocks\.0\.attn\.qkv weights were cast to .*set the dtype first"):
        model(torch.zeros(1, 3, 28, 28, dtype=torch.bfloat16))


def test_a_torch_without_fp16_outputs_refuses_an_fp16_model_up_front(monkeypatch):
    """Rowwise scaling took float16 outputs later than bfloat16: the device check asks for the model's dtype."""
    real = torch._scaled_mm

    def bf16_only(*args, out_dtype=None, **kwargs):
        if out_dtype == torch.float16:
            raise RuntimeError("Only bf16 high precision output types are supported for row-wise scaling.")
        return real(*args, out_dtype=out_dtype, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", bf16_only)
    float8.check_float8_device("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match=r"for a float16 model do not run on cpu .*Only bf16"):
        float8.check_float8_device("cpu", torch.float16)
    with pytest.raises(ValueError, match="float16 model"):
        float8_linears(tiny_vit(depth=1).to(torch.float16))
