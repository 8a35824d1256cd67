"""Heads: official state-dict layout (all sizes), numerics against direct computations, shapes."""

import math

import pytest
import torch
import torch.nn.functional as F

from heads import (
    BACKBONE_SETTINGS,
    DATASET_SETTINGS,
    MS_RATIOS,
    DPTHead,
    LinearDepthHead,
    LinearHead,
    backbone_settings,
)

WIDTHS = {"s": 384, "b": 768, "l": 1024, "g": 1536}


# --- the official layouts, written out independently of heads/ -------------------------------


def official_dpt_keys(d: int) -> dict[str, tuple[int, ...]]:
    """decode_head.* of dinov2_vit*14_{nyu,kitti}_dpt_head.pth (prefix stripped), for width d."""
    c = [d // 8, d // 4, d // 2, d]
    keys = {}
    for i in range(4):
        keys[f"reassemble_blocks.projects.{i}.conv.weight"] = (c[i], d, 1, 1)
        keys[f"reassemble_blocks.projects.{i}.conv.bias"] = (c[i],)
    for i, k in ((0, 4), (1, 2)):  # ConvTranspose2d weights are (in, out, k, k)
        keys[f"reassemble_blocks.resize_layers.{i}.weight"] = (c[i], c[i], k, k)
        keys[f"reassemble_blocks.resize_layers.{i}.bias"] = (c[i],)
    keys["reassemble_blocks.resize_layers.3.weight"] = (c[3], c[3], 3, 3)
    keys["reassemble_blocks.resize_layers.3.bias"] = (c[3],)
    for i in range(4):
        keys[f"reassemble_blocks.readout_projects.{i}.0.weight"] = (d, 2 * d)
        keys[f"reassemble_blocks.readout_projects.{i}.0.bias"] = (d,)
    for i in range(4):
        keys[f"convs.{i}.conv.weight"] = (256, c[i], 3, 3)
    for i in range(4):
        keys[f"fusion_blocks.{i}.project.conv.weight"] = (256, 256, 1, 1)
        keys[f"fusion_blocks.{i}.project.conv.bias"] = (256,)
        for unit in ("res_conv_unit1", "res_conv_unit2") if i else ("res_conv_unit2",):
            for conv in ("conv1", "conv2"):
                keys[f"fusion_blocks.{i}.{unit}.{conv}.conv.weight"] = (256, 256, 3, 3)
    keys["project.conv.weight"] = (256, 256, 3, 3)
    keys["project.conv.bias"] = (256,)
    keys.update({
        "conv_depth.head.0.weight": (128, 256, 3, 3), "conv_depth.head.0.bias": (128,),
        "conv_depth.head.2.weight": (32, 128, 3, 3), "conv_depth.head.2.bias": (32,),
        "conv_depth.head.4.weight": (1, 32, 1, 1), "conv_depth.head.4.bias": (1,),
    })
    return keys


def official_linear_seg_keys(channels: int, num_classes: int) -> dict[str, tuple[int, ...]]:
    return {
        "bn.weight": (channels,), "bn.bias": (channels,), "bn.running_mean": (channels,),
        "bn.running_var": (channels,), "bn.num_batches_tracked": (),
        "conv_seg.weight": (num_classes, channels, 1, 1), "conv_seg.bias": (num_classes,),
    }


def official_linear_depth_keys(d: int, layers: int) -> dict[str, tuple[int, ...]]:
    return {"conv_depth.weight": (256, 2 * d * layers, 1, 1), "conv_depth.bias": (256,)}


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_strict_load(make, expected: dict[str, tuple[int, ...]]) -> None:
    with torch.device("meta"):
        head = make()
    assert shapes(head) == expected
    sd = {k: torch.empty(s, device="meta", dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
          for k, s in expected.items()}
    head.load_state_dict(sd, strict=True, assign=True)
    # and the check can fail: a wrong name or shape is refused
    wrong = dict(sd)
    wrong["extra.weight"] = wrong.pop(next(iter(sd)))
    with pytest.raises(RuntimeError):
        head.load_state_dict(wrong, strict=True, assign=True)


@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
def test_official_layouts_load_strictly(size):
    d = WIDTHS[size]
    assert BACKBONE_SETTINGS[size].embed_dim == d
    check_strict_load(lambda: DPTHead.preset(size, min_depth=0.001, max_depth=10.0), official_dpt_keys(d))
    check_strict_load(lambda: LinearHead.preset("lin.", d, 150), official_linear_seg_keys(d, 150))
    check_strict_load(lambda: LinearHead.preset("+ms", d, 21), official_linear_seg_keys(4 * d, 21))
    check_strict_load(lambda: LinearDepthHead.preset("linear", d), official_linear_depth_keys(d, 1))
    check_strict_load(lambda: LinearDepthHead.preset("linear4", d), official_linear_depth_keys(d, 4))


def test_dpt_real_values_load_and_fusion_block_0_has_no_skip_unit():
    expected = official_dpt_keys(384)
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) for k, s in expected.items()}
    head = DPTHead.preset("s")
    head.load_state_dict(sd, strict=True)
    assert torch.equal(head.reassemble_blocks.readout_projects[2][0].weight, sd["reassemble_blocks.readout_projects.2.0.weight"])
    assert head.fusion_blocks[0].res_conv_unit1 is None
    assert all(b.res_conv_unit1 is not None for b in head.fusion_blocks[1:])


# --- numerics -------------------------------------------------------------------------------


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        for name, buf in module.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=gen))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    return module.eval()


def direct_bn_head(maps, head):
    size = maps[0].shape[-2:]
    x = torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps], dim=1)
    bn = head.bn
    y = (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = y * bn.weight[:, None, None] + bn.bias[:, None, None]
    w = head.conv_seg.weight[:, :, 0, 0]
    return torch.einsum("bchw,kc->bkhw", y, w) + head.conv_seg.bias[:, None, None]


@pytest.mark.parametrize("variant", ["lin.", "+ms"])
def test_linear_head_matches_direct_computation(variant):
    d, k = 16, 5
    gen = torch.Generator().manual_seed(1)
    sizes = [(9, 11), (5, 6), (7, 13), (9, 11)] if variant == "+ms" else [(3, 4), (3, 4), (3, 4), (6, 7)]
    inputs = [torch.randn(2, d, *s, generator=gen) for s in sizes]
    head = randomize(LinearHead.preset(variant, d, k, sync_bn=False))
    with torch.no_grad():
        out = head(inputs)
        chosen = inputs[3:] if variant == "lin." else inputs
        ref = direct_bn_head(chosen, head)
    assert out.shape == (2, k, *chosen[0].shape[-2:])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_linear_head_with_class_token():
    d = 8
    gen = torch.Generator().manual_seed(2)
    pairs = [(torch.randn(1, d, 4, 6, generator=gen), torch.randn(1, d, generator=gen)) for _ in range(2)]
    head = randomize(LinearHead([d, d], 3, use_cls_token=True, sync_bn=False))
    assert head.bn.num_features == 4 * d
    maps = [torch.cat((m, c[:, :, None, None].expand_as(m)), 1) for m, c in pairs]
    with torch.no_grad():
        torch.testing.assert_close(head(pairs), direct_bn_head(maps, head), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pair"):
        head([m for m, _ in pairs])


def direct_bins_depth(pairs, head, upsample=4, align_corners=False):
    h, w = pairs[0][0].shape[-2:]
    feats = []
    for m, c in pairs:
        x = torch.cat((m, c[:, :, None, None].expand_as(m)), 1)
        feats.append(F.interpolate(x, size=(h * upsample, w * upsample), mode="bilinear", align_corners=align_corners))
    x = torch.cat(feats, 1)
    logits = torch.einsum("bchw,kc->bkhw", x, head.conv_depth.weight[:, :, 0, 0]) + head.conv_depth.bias[:, None, None]
    p = logits.clamp(min=0) + 0.1
    p = p / p.sum(1, keepdim=True)
    bins = head.min_depth + (head.max_depth - head.min_depth) * torch.arange(head.n_bins) / (head.n_bins - 1)
    return (p * bins[:, None, None]).sum(1, keepdim=True)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("layers, grids", [(1, [(5, 7)]), (4, [(5, 7)] * 4), (2, [(5, 7), (3, 4)])])
def test_linear_depth_head_matches_bins_expectation(layers, grids, align_corners):
    """The official order (resize the features, then the 1x1 conv) computed directly; the head
    applies the conv first (at the patch grid), also for maps of other grids than the first."""
    d = 12
    gen = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(2, d, *g, generator=gen), torch.randn(2, d, generator=gen)) for g in grids]
    head = randomize(LinearDepthHead([d] * layers, min_depth=0.001, max_depth=10.0, align_corners=align_corners),
                     seed=4)
    with torch.no_grad():
        out = head(pairs)
        ref = direct_bins_depth(pairs, head, align_corners=align_corners)
    assert out.shape == (2, 1, 20, 28)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert out.min() >= 0.001 and out.max() <= 10.0
    assert out.std() > 0  # not a constant map: the test would notice a broken head


def test_linear_depth_presets_and_range():
    assert LinearDepthHead.preset("linear", 384).conv_depth.in_channels == 768
    assert LinearDepthHead.preset("linear4", 384).conv_depth.in_channels == 3072
    kitti = DATASET_SETTINGS["kitti"]
    head = LinearDepthHead([4], min_depth=kitti.min_depth, max_depth=kitti.max_depth)
    assert head.bins()[-1].item() == pytest.approx(80.0) and head.bins()[0].item() == pytest.approx(0.001)


# --- DPT ------------------------------------------------------------------------------------


def dpt_pairs(d, h, w, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, d, h, w, generator=gen), torch.randn(1, d, generator=gen)) for _ in range(4)]


@pytest.mark.parametrize("grid", [(37, 37), (23, 31), (5, 7)])
def test_dpt_output_shapes(grid):
    h, w = grid
    d = 48
    pairs = dpt_pairs(d, h, w)
    depth_head = randomize(DPTHead(d, channels=32, min_depth=0.001, max_depth=10.0))
    seg_head = randomize(DPTHead(d, channels=32, task="segmentation", num_classes=7))
    with torch.no_grad():
        depth = depth_head(pairs)
        logits = seg_head(pairs)
    hh, ww = math.ceil(h / 2), math.ceil(w / 2)
    assert depth.shape == (1, 1, 32 * hh, 32 * ww)
    assert logits.shape == (1, 7, 16 * hh, 16 * ww)
    assert depth.min() >= 0.001
    assert not hasattr(seg_head, "conv_depth") and not hasattr(depth_head, "conv_seg")


def test_dpt_default_width_small_grid():
    head = DPTHead(48).eval()
    with torch.no_grad():
        assert head(dpt_pairs(48, 5, 7)).shape == (1, 1, 96, 128)


def test_dpt_depth_head_is_never_dead_at_init():
    """A fresh depth head must pass gradient: with PyTorch's default init, half of the seeds gave a
    negative output at every pixel (ReLU: constant min_depth, zero gradient, a head that never trains)."""
    from .conftest import tiny_vit

    backbone = tiny_vit(depth=4, dim=64)
    with torch.no_grad():
        maps, cls, _ = backbone.intermediate_maps(torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0)),
                                                  [0, 1, 2, 3], norm=False)
    pairs = list(zip(maps, cls))
    for seed in range(12):
        torch.manual_seed(seed)
        head = DPTHead(64, post_process_channels=[8, 16, 32, 64], max_depth=10.0)
        depth = head(pairs)
        assert (depth > head.min_depth).float().mean() > 0.5, seed
        depth.mean().backward()
        assert head.convs[0].conv.weight.grad.abs().sum() > 0, seed


def reference_dpt_depth(sd, pairs, min_depth):
    """A functional DPT forward written from the official module's description (incl. its
    in-place ReLUs after cloning the residual input)."""

    def conv(x, name, padding=0, stride=1):
        return F.conv2d(x, sd[name + ".weight"], sd.get(name + ".bias"), stride=stride, padding=padding)

    def rcu(x, name):
        res = x.clone()
        y = conv(F.relu(x), f"{name}.conv1.conv", 1)
        y = conv(F.relu(y), f"{name}.conv2.conv", 1)
        return y + res

    feats = []
    for i, (m, c) in enumerate(pairs):
        b, d, h, w = m.shape
        t = m.flatten(2).permute(0, 2, 1)
        t = torch.cat((t, c.unsqueeze(1).expand_as(t)), -1)
        t = F.gelu(F.linear(t, sd[f"reassemble_blocks.readout_projects.{i}.0.weight"], sd[f"reassemble_blocks.readout_projects.{i}.0.bias"]))
        x = conv(t.permute(0, 2, 1).reshape(b, d, h, w), f"reassemble_blocks.projects.{i}.conv")
        r = f"reassemble_blocks.resize_layers.{i}"
        if i in (0, 1):
            x = F.conv_transpose2d(x, sd[r + ".weight"], sd[r + ".bias"], stride=4 if i == 0 else 2)
        elif i == 3:
            x = conv(x, r, padding=1, stride=2)
        feats.append(conv(x, f"convs.{i}.conv", 1))
    out = None
    for i in range(4):
        skip = feats[-(i + 1)]
        if out is None:
            out = skip
        else:
            if skip.shape != out.shape:
                skip = F.interpolate(skip, size=out.shape[-2:], mode="bilinear", align_corners=False)
            out = out + rcu(skip, f"fusion_blocks.{i}.res_conv_unit1")
        out = rcu(out, f"fusion_blocks.{i}.res_conv_unit2")
        out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
        out = conv(out, f"fusion_blocks.{i}.project.conv")
    out = F.relu(conv(out, "project.conv", 1))
    out = conv(out, "conv_depth.head.0", 1)
    out = F.interpolate(out, scale_factor=2, mode="bilinear", align_corners=True)
    out = conv(F.relu(conv(out, "conv_depth.head.2", 1)), "conv_depth.head.4")
    return F.relu(out) + min_depth


def test_dpt_depth_matches_functional_reference():
    d = 48
    head = randomize(DPTHead(d, channels=32, min_depth=0.5, max_depth=10.0), seed=5)
    pairs = dpt_pairs(d, 6, 9, seed=6)
    with torch.no_grad():
        out = head(pairs)
        ref = reference_dpt_depth(head.state_dict(), pairs, 0.5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert out.min() >= 0.5 and out.std() > 0


# --- batch norm flavour and settings ---------------------------------------------------------


def test_sync_batch_norm_when_asked():
    assert isinstance(LinearHead([8], 3, sync_bn=True).bn, torch.nn.SyncBatchNorm)
    plain = LinearHead([8], 3, sync_bn=False).bn
    assert isinstance(plain, torch.nn.BatchNorm2d) and not isinstance(plain, torch.nn.SyncBatchNorm)
    # None: SyncBatchNorm only under torch.distributed (not initialised in tests)
    assert not isinstance(LinearHead([8], 3).bn, torch.nn.SyncBatchNorm)
    # both flavours compute the same thing in eval mode and share the state-dict layout
    sync = randomize(LinearHead([8], 3, sync_bn=True))
    bn = LinearHead([8], 3, sync_bn=False).eval()
    bn.load_state_dict(sync.state_dict(), strict=True)
    x = [torch.randn(2, 8, 3, 5)]
    with torch.no_grad():
        torch.testing.assert_close(sync(x), bn(x))


def test_settings_table():
    for key, s in BACKBONE_SETTINGS.items():
        assert s.seg_layers[-1] == s.depth_layers[-1] == s.depth - 1
        assert len(s.seg_layers) == len(s.depth_layers) == 4
        assert s.post_process_channels == (s.embed_dim // 8, s.embed_dim // 4, s.embed_dim // 2, s.embed_dim)
        assert backbone_settings(f"vit{key}14") is s and backbone_settings(s.arch) is s
    assert BACKBONE_SETTINGS["l"].depth_layers == (4, 11, 17, 23)
    assert BACKBONE_SETTINGS["g"].depth_layers == (9, 19, 29, 39)
    assert DATASET_SETTINGS["nyu"].max_depth == 10.0 and DATASET_SETTINGS["kitti"].max_depth == 80.0
    assert DATASET_SETTINGS["ade20k"].num_classes == 150 and DATASET_SETTINGS["voc2012"].num_classes == 21
    assert MS_RATIOS == (1.0, 1.32, 1.73, 2.28, 3.0)
    with pytest.raises(KeyError, match="unknown backbone"):
        backbone_settings("h")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="reads inputs"):
        LinearHead.preset("lin.", 8, 3)([torch.randn(1, 8, 2, 2)])
    with pytest.raises(ValueError, match=r"\(B, 8, h, w\)"):
        LinearHead([8], 3)([torch.randn(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="4 \\(map, cls\\) pairs"):
        DPTHead(16)(dpt_pairs(16, 2, 2)[:3])
    with pytest.raises(ValueError, match="num_classes"):
        DPTHead(16, task="segmentation")
