"""The ViT's own API: inference fast path, official get_intermediate_layers semantics, masks, zoo shapes."""

import pytest
import torch

from dinov2_dense.hub import BACKBONES, build_backbone
from dinov2_dense.models import DinoVisionTransformer

from .conftest import tiny_vit


@pytest.mark.parametrize("ffn", ["mlp", "swiglufused"])
@pytest.mark.parametrize("registers", [0, 4])
def test_inference_fast_path_equals_textbook_block(ffn, registers):
    model = tiny_vit(registers=registers, ffn=ffn)
    x = torch.randn(2, 3, 70, 98)
    with torch.no_grad():
        fast = model.forward_features(x)["x_prenorm"]
        model.train()  # drop_path is 0: training mode runs the plain residual order, same maths
        slow = model.forward_features(x)["x_prenorm"]
    model.eval()
    with torch.enable_grad():  # autograd falls back to plain ops and must agree too
        grad_path = model.forward_features(x.requires_grad_())["x_prenorm"]
    assert slow.abs().max() > 0.5
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(grad_path.detach(), slow, atol=2e-5, rtol=1e-5)


def test_get_intermediate_layers_official_semantics():
    model = tiny_vit(registers=4, depth=4)
    x = torch.randn(1, 3, 56, 84)
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(x)
        per_block = []
        for block in model.blocks:
            tokens = block(tokens)
            per_block.append(tokens)
        last2 = model.get_intermediate_layers(x, n=2)
        chosen = model.get_intermediate_layers(x, n=[0, 2], reshape=True, return_class_token=True, norm=False)
    assert len(last2) == 2 and last2[0].shape == (1, 4 * 6, 48)
    torch.testing.assert_close(last2[1], model.norm(per_block[3])[:, 5:])
    torch.testing.assert_close(last2[0], model.norm(per_block[2])[:, 5:])
    (map0, cls0), (map2, cls2) = chosen
    assert map0.shape == (1, 48, 4, 6)
    torch.testing.assert_close(map2, per_block[2][:, 5:].reshape(1, 4, 6, 48).permute(0, 3, 1, 2))
    torch.testing.assert_close(cls0, per_block[0][:, 0])
    with pytest.raises(ValueError, match="4 blocks"):
        model.get_intermediate_layers(x, n=[4])


def test_masks_replace_patch_embeddings_with_mask_token():
    model = tiny_vit()
    x = torch.randn(2, 3, 42, 42)
    masks = torch.zeros(2, 9, dtype=torch.bool)
    masks[0, 3] = True
    with torch.no_grad():
        model.mask_token.fill_(7.0)
        out = model.forward_features(x, masks=masks)
        plain = model.forward_features(x)
        tokens = model.prepare_tokens_with_masks(x, masks)
    assert out["masks"] is masks
    assert torch.equal(out["x_norm_patchtokens"][1], plain["x_norm_patchtokens"][1])
    assert not torch.allclose(out["x_norm_patchtokens"][0], plain["x_norm_patchtokens"][0])
    pos = model.interpolate_pos_encoding(tokens, 42, 42)
    torch.testing.assert_close(tokens[0, 1 + 3], 7.0 + pos[0, 1 + 3])
    # a list of crops (multi-crop) gives a list of dicts
    outs = model.forward_features([x, x[:, :, :28, :28]], [masks, None])
    assert [o["x_norm_patchtokens"].shape[1] for o in outs] == [9, 4]


def test_non_multiple_input_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        tiny_vit()(torch.randn(1, 3, 50, 56))


@pytest.mark.parametrize("name", [n for n, spec in BACKBONES.items() if not spec.embedded])
def test_zoo_architectures_have_official_shapes(name):
    widths = {"s": 384, "b": 768, "l": 1024, "g": 1536}
    depth = {"s": 12, "b": 12, "l": 24, "g": 40}
    size = name.split("vit")[1][0]
    with torch.device("meta"):
        model = build_backbone(name)
    sd = model.state_dict()
    dim = widths[size]
    assert len(model.blocks) == depth[size]
    assert sd["pos_embed"].shape == (1, 1370, dim) and sd["mask_token"].shape == (1, dim)
    assert ("register_tokens" in sd) == name.endswith("_reg")
    if size == "g":
        assert sd["blocks.0.mlp.w12.weight"].shape == (8192, 1536)
        assert sd["blocks.39.mlp.w3.weight"].shape == (1536, 4096)
    else:
        assert sd["blocks.0.mlp.fc1.weight"].shape == (4 * dim, dim)
    assert sd["blocks.0.ls1.gamma"].shape == (dim,)


@pytest.mark.parametrize("ffn, biases", [("mlp", dict(qkv_bias=False)), ("mlp", dict(proj_bias=False, ffn_bias=False)),
                                         ("swiglufused", dict(ffn_bias=False)), ("mlp", {})])
def test_an_export_without_biases_loads_as_it_was(tmp_path, ffn, biases):
    """arch_kwargs (backbone.json) names the biases a model lacks: an export of a student built with
    qkv_bias=False loaded strictly, the same outputs; with every bias it holds no bias key (files as before)."""
    from dinov2_dense import load_backbone
    from pretrain.export import export_backbone

    from .conftest import randomize_

    model = randomize_(DinoVisionTransformer(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2,
                                             ffn_layer=ffn, **biases)).eval()
    assert {k: v for k, v in model.arch_kwargs().items() if k.endswith("_bias")} == biases
    paths = export_backbone(model, tmp_path)
    loaded = load_backbone(None, weights=str(paths["safetensors"])).eval()
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_features(x)["x_norm_patchtokens"],
                                   model.forward_features(x)["x_norm_patchtokens"], rtol=0, atol=0)


def test_a_missing_weights_file_is_named_as_missing(tmp_path):
    """load_backbone(None, weights=...) of a file that is not there says so (it said no architecture file
    was beside it, sending the user after the wrong file)."""
    from dinov2_dense import load_backbone
    from dinov2_dense.hub import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match=r"nope.safetensors: no such weights file$"):
        load_backbone(None, weights=str(tmp_path / "nope.safetensors"))
    (tmp_path / "there.safetensors").write_bytes(b"")
    with pytest.raises(WeightsNotFoundError, match="no architecture file beside it"):
        load_backbone(None, weights=str(tmp_path / "there.safetensors"))
