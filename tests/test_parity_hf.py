"""Parity with Hugging Face transformers (our oracle) on the same random weights, at 518x518."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from dinov2_dense import load_backbone, save_safetensors  # noqa: E402
from dinov2_dense.checkpoints import load_backbone_weights  # noqa: E402
from dinov2_dense.models import DinoVisionTransformer  # noqa: E402

from .conftest import randomize_  # noqa: E402


def _hf_model(registers: bool, **config):
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(patch_size=14, num_register_tokens=4, **config)
        model = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(patch_size=14, **config)
        model = transformers.Dinov2Model(cfg)
    return randomize_(model, seed=1).eval()


def _compare(ours: DinoVisionTransformer, hf, size: int = 518, batch: int = 1):
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True)
        out = ours.forward_features(x)
        mid = ours.get_intermediate_layers(x, n=[1], norm=False)[0]
    r = ours.num_register_tokens
    seq = ref.last_hidden_state
    assert (out["x_norm_clstoken"] - seq[:, 0]).abs().max() < 1e-4
    assert out["x_norm_regtokens"].shape[1] == r
    if r:
        assert (out["x_norm_regtokens"] - seq[:, 1 : 1 + r]).abs().max() < 1e-4
    assert (out["x_norm_patchtokens"] - seq[:, 1 + r :]).abs().max() < 1e-4
    assert (mid - ref.hidden_states[2][:, 1 + r :]).abs().max() < 1e-4
    # the comparison is not vacuous: the tokens vary
    assert seq[:, 1 + r :].std() > 0.1


@pytest.mark.parametrize("registers", [False, True])
def test_vits14_matches_transformers(tmp_path, registers):
    hf = _hf_model(registers, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, image_size=518)
    hf.save_pretrained(tmp_path)
    name = "dinov2_vits14_reg" if registers else "dinov2_vits14"
    ours = load_backbone(name, weights=tmp_path)  # a save_pretrained directory (model.safetensors)
    _compare(ours, hf)
    # without a name, the architecture comes from the folder's config.json: the zoo's, registers included,
    # and the same tensors (so the same outputs as those just compared)
    expected = ours.state_dict()
    for weights in (tmp_path, tmp_path / "model.safetensors"):
        unnamed = load_backbone(None, weights=weights)
        assert unnamed.arch_kwargs() == ours.arch_kwargs()
        state = unnamed.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], v) for k, v in expected.items())


@pytest.mark.parametrize("registers", [False, True])
def test_swiglu_g_like_matches_transformers(tmp_path, registers):
    cfg = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=2, image_size=518, use_swiglu_ffn=True)
    hf = _hf_model(registers, **cfg)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")  # the .bin flavour
    reg = dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0) if registers else {}
    ours = DinoVisionTransformer(embed_dim=128, depth=3, num_heads=2, ffn_layer="swiglufused", **reg).eval()
    assert load_backbone_weights(ours, tmp_path / "pytorch_model.bin") == "hf"
    assert ours.blocks[0].mlp.w12.weight.shape == (2 * 344, 128)
    _compare(ours, hf)
    hf.config.save_pretrained(tmp_path)  # config.json beside the .bin: the architecture without a name
    unnamed = load_backbone(None, weights=tmp_path / "pytorch_model.bin")
    assert unnamed.arch_kwargs() == ours.arch_kwargs()
    _compare(unnamed, hf)


def test_a_config_json_of_another_model_is_no_architecture(tmp_path):
    """A config.json that is no DINOv2 config (a timm download's, a training run's) is left alone: the
    weights need a name, as without it; a DINOv2 config of settings we lack is refused, naming them."""
    from dinov2_dense.hub import WeightsNotFoundError, architecture_beside, hf_architecture

    torch.save({}, tmp_path / "pytorch_model.bin")
    for text in ('{"architecture": "vit_small_patch14_dinov2", "num_classes": 0}', '{"model_type": "vit"}', "[1]",
                 "not json"):
        (tmp_path / "config.json").write_text(text)
        assert not architecture_beside(tmp_path / "pytorch_model.bin")
        with pytest.raises(WeightsNotFoundError, match="no architecture file beside it"):
            load_backbone(None, weights=tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(ValueError, match=r"config\.json: model_type 'vit' is not a DINOv2 backbone"):
        hf_architecture(tmp_path / "config.json")
    (tmp_path / "config.json").write_text('{"model_type": "dinov2", "hidden_act": "relu"}')
    with pytest.raises(ValueError, match=r"config\.json: hidden_act = 'relu'"):
        load_backbone(None, weights=tmp_path / "pytorch_model.bin")


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_with_registers"])
def test_what_a_config_json_leaves_out_is_what_transformers_builds(kind, tmp_path):
    """A config.json without some settings: transformers builds its config class's defaults, so do we (the
    registers config's patch size is 16, not the 14 we assumed: weights of it were refused as mis-shaped)."""
    import transformers

    config_class = {"dinov2": transformers.Dinov2Config,
                    "dinov2_with_registers": getattr(transformers, "Dinov2WithRegistersConfig", None)}[kind]
    if config_class is None:
        pytest.skip("this transformers has no Dinov2WithRegistersConfig")
    from dinov2_dense.hub import hf_architecture

    (tmp_path / "config.json").write_text(json.dumps({"model_type": kind}))
    theirs = config_class()
    arch = hf_architecture(tmp_path / "config.json")
    assert (arch["patch_size"], arch["img_size"], arch["embed_dim"], arch["depth"], arch["num_heads"]) == (
        theirs.patch_size, theirs.image_size, theirs.hidden_size, theirs.num_hidden_layers,
        theirs.num_attention_heads)


def test_safetensors_round_trip_is_exact(tmp_path):
    a = randomize_(DinoVisionTransformer(embed_dim=64, depth=2, num_heads=1, num_register_tokens=4), seed=3).eval()
    path = save_safetensors(a, tmp_path / "ours.safetensors")
    b = DinoVisionTransformer(embed_dim=64, depth=2, num_heads=1, num_register_tokens=4).eval()
    assert load_backbone_weights(b, path) == "official"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    x = torch.randn(2, 3, 98, 126)
    with torch.no_grad():
        assert torch.equal(a.forward_features(x)["x_prenorm"], b.forward_features(x)["x_prenorm"])
