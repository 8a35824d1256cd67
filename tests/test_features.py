"""Dense features: image conversion, centre padding, layer selection, batching, tiling, dtype."""

import re
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2_dense.features import DenseFeatures, FeatureOptions, extract_features, load_image, to_rgb_float

from .conftest import tiny_vit

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


@pytest.fixture(scope="module")
def reg_model():
    return tiny_vit(registers=4)


def rand_image(h, w, c=3, seed=0, dtype=np.uint8):
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top + 1, size=(h, w, c) if c else (h, w), dtype=dtype)


def padded_input(rgb_uint8):
    """Independent reference input: ImageNet-normalise, then zero-pad centred to multiples of 14."""
    x = (torch.from_numpy(rgb_uint8).permute(2, 0, 1).float() / 255 - MEAN) / STD
    ph, pw = (-x.shape[1]) % 14, (-x.shape[2]) % 14
    return F.pad(x[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)


# -- image conversion ----------------------------------------------------------------------
def test_grayscale_arrays_become_rgb():
    g = rand_image(5, 7, c=0)
    for arr in (g, g[..., None]):
        out = load_image(arr)
        assert out.shape == (5, 7, 3) and out.dtype == np.float32
        for c in range(3):
            np.testing.assert_allclose(out[..., c], g / 255.0, atol=1e-7)


def test_rgba_drops_alpha_keeps_colours():
    rgba = rand_image(4, 6, c=4)
    out = to_rgb_float(rgba)
    np.testing.assert_allclose(out, rgba[..., :3] / 255.0, atol=1e-7)


def test_float_array_kept():
    arr = np.random.default_rng(1).random((4, 5, 3))
    out = to_rgb_float(arr)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, arr, atol=1e-7)


def test_big_endian_16bit_and_bad_values():
    a = np.array([[0, 10, 65535]], dtype=">u2")
    np.testing.assert_allclose(to_rgb_float(a)[0, :, 0], [0, 10 / 65535, 1], atol=1e-7)
    for bad in (np.full((2, 2), np.nan), np.full((2, 2, 3), 255.0), np.full((2, 2), -3, np.int32)):
        with pytest.raises(ValueError):
            to_rgb_float(bad)


def test_file_colour_order_is_rgb(tmp_path):
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[..., 2] = 255  # pure red in OpenCV's BGR order
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), bgr)
    out = load_image(path)
    np.testing.assert_array_equal(out[..., 0], 1.0)
    np.testing.assert_array_equal(out[..., 1:], 0.0)


def test_rgba_file_keeps_colours(tmp_path):
    rgba = rand_image(5, 6, c=4, seed=3)
    path = tmp_path / "rgba.png"
    cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_allclose(load_image(str(path)), rgba[..., :3] / 255.0, atol=1e-7)


def test_16bit_png_files(tmp_path):
    rgb = rand_image(5, 6, seed=4, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), rgb[..., ::-1].copy())
    np.testing.assert_allclose(load_image(tmp_path / "c16.png"), rgb / 65535.0, atol=1e-6)
    gray = rand_image(5, 6, c=0, seed=5, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), gray)
    out = load_image(tmp_path / "g16.png")
    assert out.shape == (5, 6, 3)
    np.testing.assert_allclose(out, np.repeat(gray[..., None], 3, axis=2) / 65535.0, atol=1e-6)


def test_pil_modes():
    rgb = rand_image(6, 7, seed=6)
    gray = rand_image(6, 7, c=0, seed=7)
    np.testing.assert_allclose(load_image(Image.fromarray(gray, mode="L")), np.stack([gray] * 3, -1) / 255.0, atol=1e-7)
    rgba = np.concatenate([rgb, rand_image(6, 7, c=1, seed=8)], axis=2)
    np.testing.assert_allclose(load_image(Image.fromarray(rgba, mode="RGBA")), rgb / 255.0, atol=1e-7)
    pal = Image.fromarray(rgb).quantize(colors=8)
    assert pal.mode == "P"
    np.testing.assert_allclose(load_image(pal), np.asarray(pal.convert("RGB")) / 255.0, atol=1e-7)
    pal.info["transparency"] = 0  # a palette with a transparent entry: colours kept, alpha dropped
    np.testing.assert_allclose(load_image(pal), np.asarray(pal.convert("RGB")) / 255.0, atol=1e-7)
    g16 = rand_image(6, 7, c=0, seed=9, dtype=np.uint16)
    im16 = Image.frombytes("I;16", (7, 6), g16.astype("<u2").tobytes())
    np.testing.assert_allclose(load_image(im16)[..., 1], g16 / 65535.0, atol=1e-6)


def test_skimage_sample():
    import skimage.data

    out = load_image("skimage:astronaut")
    assert out.shape == (512, 512, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, skimage.data.astronaut() / 255.0, atol=1e-7)


def test_missing_and_corrupt_files_name_the_path(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_image(missing)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ValueError, match=re.escape(str(corrupt))):
        load_image(corrupt)


# -- fit, padding, layers ------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(100, 130), (101, 131)])
def test_pad_is_centred_and_matches_manual_padding(model, hw):
    h, w = hw
    img = rand_image(h, w)
    feats = extract_features(model, img)
    assert isinstance(feats, DenseFeatures)
    ph, pw = (-h) % 14, (-w) % 14
    assert feats.padding == (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    assert feats.image_size == (h, w) and feats.input_size == (h + ph, w + pw)
    assert feats.maps[2].shape == (1, 48, -(-h // 14), -(-w // 14))
    (ref, cls), = model.get_intermediate_layers(padded_input(img), 1, reshape=True, return_class_token=True)
    close(feats.maps[2], ref)
    close(feats.cls_tokens[2], cls)


def test_fit_resize(model):
    img = rand_image(100, 130)
    feats = extract_features(model, img, fit="resize")
    assert feats.input_size == (98, 126) and feats.padding == (0, 0, 0, 0)
    assert feats.maps[2].shape[-2:] == (7, 9)
    x = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - MEAN) / STD
    x = F.interpolate(x[None], size=(98, 126), mode="bilinear", align_corners=False, antialias=True)
    close(feats.maps[2], model.get_intermediate_layers(x, 1, reshape=True)[0])
    with pytest.raises(ValueError, match="fit"):
        extract_features(model, img, fit="crop")


def test_layer_selection(model):
    img = rand_image(30, 40)
    x = padded_input(img)
    ref = model.get_intermediate_layers(x, [0, 1, 2], reshape=True)
    assert extract_features(model, img).layers == [2]
    feats = extract_features(model, img, layers=2)
    assert feats.layers == [1, 2]
    feats = extract_features(model, img, layers=[-1, 0, -3])
    assert feats.layers == [0, 2]
    close(feats.maps[0], ref[0])
    close(feats.maps[2], ref[2])
    raw = extract_features(model, img, layers=[1], norm=False)
    close(raw.maps[1], model.get_intermediate_layers(x, [1], reshape=True, norm=False)[0])
    assert not torch.allclose(raw.maps[1], ref[1], atol=1e-3)
    assert extract_features(model, img, layers=np.int64(2)).layers == [1, 2]
    for bad in (0, 4, [3], [-4], []):
        with pytest.raises(ValueError):
            extract_features(model, img, layers=bad)


def test_bad_arguments(model):
    img = rand_image(30, 40)
    for kwargs in (dict(tile=28, tile_overlap=-14), dict(tile=28, tile_overlap=28), dict(batch_size=0), dict(tile=10)):
        with pytest.raises(ValueError):
            extract_features(model, [img], **kwargs)
    with pytest.raises(ValueError, match="normalised"):
        extract_features(model, torch.zeros(3, 28, 28, dtype=torch.uint8))


def test_options_are_the_keywords_in_one_value(model):
    images = [rand_image(30, 40), rand_image(44, 30, seed=1), rand_image(30, 40, seed=2)]
    settings = dict(layers=[0, 2], fit="resize", size=42, norm=False, tile=28, tile_overlap=14, batch_size=2)
    by_keywords = extract_features(model, images, **settings)
    options = FeatureOptions(**settings)
    by_options = extract_features(model, images, options=options)
    for a, b in zip(by_keywords, by_options):
        assert a.layers == b.layers == [0, 2]
        for layer in a.layers:
            torch.testing.assert_close(a.maps[layer], b.maps[layer], rtol=0, atol=0)
    assert options.layers == (0, 2) and hash(options) == hash(FeatureOptions(**settings))  # lists kept as tuples
    with pytest.raises(ValueError, match="fit, batch_size given with options="):
        extract_features(model, images, fit="resize", batch_size=4, options=FeatureOptions(fit="resize"))
    for bad in (dict(fit="crop"), dict(batch_size=0)):  # checked when built, before any model is involved
        with pytest.raises(ValueError, match=next(iter(bad))):
            FeatureOptions(**bad)
    # sizes that meant a 1-pixel image, a torch error, an unpacking error or a silent truncation
    for size in (0, -5, (0, 50), (-3, 40), 2.5, (56, 56, 56), (30.7, 40.2), True):
        with pytest.raises(ValueError, match=r"size=.*: expected None, a positive integer"):
            extract_features(model, images, size=size)
    assert FeatureOptions(size=np.int64(42)).size == 42 and FeatureOptions(size=[np.int32(28), 42]).size == (28, 42)
    with pytest.raises(ValueError, match="tile=10 is smaller than one patch"):
        extract_features(model, images, options=FeatureOptions(tile=10))


def test_features_can_train_a_head_and_bf16_models_run(model):
    feats = extract_features(model, rand_image(30, 40))
    head = torch.nn.Conv2d(48, 2, 1)
    head(feats.maps[2]).sum().backward()  # not inference tensors
    assert head.weight.grad is not None
    low = extract_features(tiny_vit().to(torch.bfloat16), rand_image(30, 40))
    assert low.maps[2].dtype == torch.float32
    assert (low.maps[2] - feats.maps[2]).norm() / feats.maps[2].norm() < 0.05


# -- batching and registers ----------------------------------------------------------------
def test_tensor_batch(model):
    x = torch.randn(3, 3, 30, 40, generator=torch.Generator().manual_seed(0))
    feats = extract_features(model, x, layers=2)
    assert isinstance(feats, DenseFeatures)
    assert feats.maps[2].shape == (3, 48, 3, 3) and feats.cls_tokens[1].shape == (3, 48)
    xp = F.pad(x, (1, 1, 6, 6))  # 30 -> 42, 40 -> 42
    for (ref, cls), layer in zip(model.get_intermediate_layers(xp, 2, reshape=True, return_class_token=True), (1, 2)):
        close(feats.maps[layer], ref)
        close(feats.cls_tokens[layer], cls)


def test_list_of_mixed_sizes_keeps_order(model):
    images = [rand_image(40, 50, seed=1), rand_image(28, 28, seed=2), rand_image(40, 50, seed=3)]
    out = extract_features(model, images, layers=[1, 2], batch_size=2)
    assert isinstance(out, list) and len(out) == 3
    for img, feats in zip(images, out):
        alone = extract_features(model, img, layers=[1, 2])
        assert feats.image_size == img.shape[:2] and feats.maps[2].shape[0] == 1
        for layer in (1, 2):
            close(feats.maps[layer], alone.maps[layer])
            close(feats.cls_tokens[layer], alone.cls_tokens[layer])


def _counting_forwards(model, monkeypatch):
    """The batch sizes of ``model``'s forward passes, as they run."""
    calls, real = [], model.intermediate_maps

    def counted(x, *args, **kwargs):
        calls.append(len(x))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(model, "intermediate_maps", counted)
    return calls


@pytest.mark.parametrize("size", [(42, 56), 28])
@pytest.mark.parametrize("how", ["arrays", "files", "files_8bit", "workers", "tensors"])
def test_images_of_many_sizes_that_size_makes_one_share_forward_passes(model, tmp_path, monkeypatch, size, how):
    """With size=, the batches are made by the size the backbone sees, not by the original size (a folder of
    photos of many sizes ran one image per forward pass): each image's features are still its own, as it
    gives alone, and each is placed on its own original size."""
    hws = [(40, 50), (60, 75), (40, 50), (80, 100), (20, 25)] if isinstance(size, int) else \
          [(40, 50), (33, 71), (40, 50), (90, 60), (28, 28)]
    images = [rand_image(h, w, seed=k) for k, (h, w) in enumerate(hws)]
    if how == "tensors":
        images = [(torch.from_numpy(a).permute(2, 0, 1).float() / 255 - MEAN) / STD for a in images]
    elif how != "arrays":
        for k, a in enumerate(images):
            cv2.imwrite(str(tmp_path / f"{k}.png"), a[..., ::-1])
        images = [str(tmp_path / f"{k}.png") for k in range(len(images))]
    kw = {"resize_8bit": how == "files_8bit", "num_workers": 2 if how == "workers" else 0}
    alone = [extract_features(model, image, layers=[1, 2], size=size, **kw) for image in images]
    calls = _counting_forwards(model, monkeypatch)
    together = extract_features(model, images, layers=[1, 2], size=size, batch_size=8, **kw)
    assert calls == [len(images)]  # one forward pass for all
    for hw, got, want in zip(hws, together, alone):
        assert got.image_size == hw == want.image_size and got.input_size == want.input_size
        assert got.upsample().shape[-2:] == hw
        for layer in (1, 2):
            close(got.maps[layer], want.maps[layer])
            close(got.cls_tokens[layer], want.cls_tokens[layer])
    # feature_batches yields the images of one original size at a time, as views of the batch
    from dinov2_dense.features import feature_batches

    parts = list(feature_batches(model, images, options=FeatureOptions(layers=[2], size=size, batch_size=8)))
    assert sorted(i for chunk, _ in parts for i in chunk) == list(range(len(images)))
    for chunk, feats in parts:
        assert {hws[i] for i in chunk} == {feats.image_size} and feats.maps[2].shape[0] == len(chunk)
        assert feats.source == [f"image {i}" if how in ("arrays", "tensors") else images[i] for i in chunk]
    assert len(parts) == len(set(hws))
    # without size=, each original size is a batch of its own, as before
    calls.clear()
    extract_features(model, images, layers=[2], batch_size=8)
    assert sorted(calls) == sorted(hws.count(hw) for hw in dict.fromkeys(hws))


def test_registers(reg_model):
    x = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(1))
    feats = extract_features(reg_model, x)
    assert feats.registers[2].shape == (2, 4, 48)
    ref = reg_model.forward_features(x)
    close(feats.registers[2], ref["x_norm_regtokens"])
    close(feats.cls_tokens[2], ref["x_norm_clstoken"])
    close(feats.maps[2].flatten(2).transpose(1, 2), ref["x_norm_patchtokens"])


# -- tiling, autocast, upsampling ----------------------------------------------------------
def test_tile_covering_the_image_equals_untiled(model):
    img = rand_image(50, 60)
    whole = extract_features(model, img, layers=2)
    tiled = extract_features(model, img, layers=2, tile=98)
    for layer in (1, 2):
        close(tiled.maps[layer], whole.maps[layer])
        close(tiled.cls_tokens[layer], whole.cls_tokens[layer])


def test_several_tiles(model):
    x = torch.randn(1, 3, 70, 98, generator=torch.Generator().manual_seed(2))  # 5 x 7 patches
    seen = []
    hook = model.patch_embed.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    try:
        tiled = extract_features(model, x, tile=42, tile_overlap=14)  # 3x3-patch tiles, stride 2
    finally:
        hook.remove()
    assert tiled.maps[2].shape == extract_features(model, x).maps[2].shape == (1, 48, 5, 7)
    assert seen and all(h <= 42 and w <= 42 for h, w in seen)  # memory bounded by the tile
    assert len(seen) == 2 * 3  # tile rows start at 0, 2; columns at 0, 2, 4

    def tile_map(y0, x0):
        crop = x[..., y0 * 14 : y0 * 14 + 42, x0 * 14 : x0 * 14 + 42]
        return model.get_intermediate_layers(crop, 1, reshape=True)[0]

    close(tiled.maps[2][..., 0, 0], tile_map(0, 0)[..., 0, 0])  # only the first tile covers (0, 0)
    close(tiled.maps[2][..., 4, 6], tile_map(2, 4)[..., 2, 2])  # only the last covers (4, 6)
    shared = torch.stack([tile_map(y0, x0)[..., 2 - y0, 2 - x0] for y0 in (0, 2) for x0 in (0, 2)]).mean(0)
    close(tiled.maps[2][..., 2, 2], shared)  # four tiles overlap at (2, 2): their mean


def test_tiled_padded_image_grid(model):
    img = rand_image(100, 130)
    tiled = extract_features(model, img, tile=56)
    assert tiled.maps[2].shape == extract_features(model, img).maps[2].shape == (1, 48, 8, 10)
    assert torch.isfinite(tiled.maps[2]).all()


def test_autocast_bf16_close_to_fp32(model):
    img = rand_image(60, 70)
    ref = extract_features(model, img, layers=2)
    low = extract_features(model, img, layers=2, autocast=True)
    for layer in (1, 2):
        assert low.maps[layer].dtype == torch.float32 and low.cls_tokens[layer].dtype == torch.float32
        rel = (low.maps[layer] - ref.maps[layer]).norm() / ref.maps[layer].norm()
        assert rel < 0.05
    assert not torch.equal(low.maps[2], ref.maps[2])  # bf16 really ran


def test_upsample_removes_padding(model):
    img = rand_image(101, 131)
    feats = extract_features(model, img)
    up = feats.upsample()
    assert up.shape == (1, 48, 101, 131)
    full = F.interpolate(feats.maps[2], size=(112, 140), mode="bilinear", align_corners=False)
    close(up, full[..., 5:106, 4:135])
    resized = extract_features(model, img, fit="resize").upsample()
    assert resized.shape == (1, 48, 101, 131)


def test_half_precision_weights_within_bf16_tolerance_and_cpus_without_it_keep_fp32(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    import dinov2_dense.features as features
    from dinov2_dense import load_backbone
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    weights = export_backbone(tiny_vit(depth=2, dim=32, img=56), tmp_path / "export")["safetensors"]
    fp32 = load_backbone(None, weights=weights)
    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: True)
    bf16 = load_backbone(None, weights=weights, dtype="bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    x = torch.randn(2, 3, 56, 70)
    a, b = extract_features(fp32, x, layers=[0, 1]), extract_features(bf16, x, layers=[0, 1])
    for layer in a.maps:
        assert b.maps[layer].dtype == torch.float32 and b.maps[layer].shape == a.maps[layer].shape
        rel = ((a.maps[layer] - b.maps[layer]).norm() / a.maps[layer].norm()).item()
        assert 0 < rel < 3e-2, rel  # bfloat16 rounding (8 bits of mantissa), and not the fp32 path
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(image)
    for dtype in ("fp32", "bf16"):
        assert main(["features", str(image), "--weights", str(weights), "--dtype", dtype, "--out",
                     str(tmp_path / f"{dtype}.npy")]) == 0
    one, half = np.load(tmp_path / "fp32.npy"), np.load(tmp_path / "bf16.npy")
    assert half.dtype == np.float32 and 0 < np.abs(one - half).max() < 0.1 * np.abs(one).max()

    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="float32 kept: this CPU has no native bfloat16"):
        kept = load_backbone(None, weights=weights, dtype="bf16")
    assert {p.dtype for p in kept.parameters()} == {torch.float32}
    with pytest.warns(UserWarning, match="float16 weights requested, float32 kept"):
        load_backbone(None, weights=weights, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype 'int8'"):
        load_backbone(None, weights=weights, dtype="int8")


def test_a_half_precision_model_called_directly_takes_float32_images(tmp_path, monkeypatch):
    """README's Backbones example calls model.forward_features(x) and get_intermediate_layers(x) on a float32
    image: with bf16 weights both raised 'Input type (float) and bias type (c10::BFloat16) should be the same'.
    The model casts the images to its weights' dtype (and answers in it); extract_features gives float32."""
    import dinov2_dense.features as features
    from dinov2_dense import load_backbone
    from pretrain.export import export_backbone

    weights = export_backbone(tiny_vit(depth=2, dim=32, img=56), tmp_path / "export")["safetensors"]
    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: True)
    model = load_backbone(None, weights=weights, dtype="bf16")
    x = torch.randn(2, 3, 56, 70)
    out = model.forward_features(x)["x_norm_patchtokens"]
    (maps,) = model.get_intermediate_layers(x, 1, reshape=True)
    assert out.dtype == maps.dtype == torch.bfloat16 and model(x).shape[0] == 2
    ref = extract_features(model, x).maps[1]
    assert ref.dtype == torch.float32 and torch.equal(maps.float(), ref)


def test_features_records_and_says_the_weights_dtype_that_ran(tmp_path, monkeypatch, capsys):
    """--dtype fp16 on a CPU (or bf16 on one without native bf16) keeps float32 weights, with a warning; the
    .safetensors metadata said "fp16" all the same. It records the dtype that ran, and the summary says it."""
    import json

    from PIL import Image
    from safetensors import safe_open

    import dinov2_dense.features as features
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    weights = export_backbone(tiny_vit(depth=2, dim=32, img=56), tmp_path / "export")["safetensors"]
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 56, 3), dtype=np.uint8)).save(image)
    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: True)
    said = {}
    for dtype in ("fp16", "bf16", "fp32"):
        out = tmp_path / f"{dtype}.safetensors"
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fp16's "float32 kept" (tested above)
            assert main(["features", str(image), "--weights", str(weights), "--dtype", dtype, "--out", str(out)]) == 0
        said[dtype] = capsys.readouterr().out.strip().splitlines()[-1]
        with safe_open(str(out), "pt") as f:
            assert json.loads(f.metadata()["dtype"]) == ("bf16" if dtype == "bf16" else "fp32"), dtype
    assert said["bf16"].endswith("(bf16 weights)") and "weights)" not in said["fp16"] + said["fp32"], said


def test_load_resized_equals_normalising_first(tmp_path):
    """load_resized resizes 8/16-bit data before normalising (cheaper in folder workers): the same
    values as normalising the full image and then resizing, to float rounding, for every kind of file."""
    from dinov2_dense.features import _resize, load_resized, to_input_tensor

    rng = np.random.default_rng(0)
    files = {"rgb.jpg": rng.integers(0, 256, (75, 100, 3), dtype=np.uint8),
             "grey.png": rng.integers(0, 256, (60, 90), dtype=np.uint8),
             "rgba.png": rng.integers(0, 256, (50, 70, 4), dtype=np.uint8),
             "deep.png": rng.integers(0, 65536, (40, 66, 3), dtype=np.uint16)}
    for name, array in files.items():
        cv2.imwrite(str(tmp_path / name), array)
    sources = [str(tmp_path / n) for n in files] + [rng.random((30, 40, 3)), rng.random((30, 40)) > 0.5]
    for source in sources:
        for hw in ((28, 42), (112, 140)):  # down and up
            want = _resize(to_input_tensor(source)[None], hw)[0]
            got = load_resized(source, hw)
            assert got.shape == (3, *hw) and got.is_contiguous()
            assert torch.allclose(got, want, atol=2e-5), (source if isinstance(source, str) else "array", hw)
    with pytest.raises(ValueError, match=r"rgb\.jpg: decoded to 100x75 pixels, but it was 90x60"):
        load_resized(str(tmp_path / "rgb.jpg"), (28, 28), expect=(60, 90))


# -- 8-bit resize (opt-in) ---------------------------------------------------------------------
def _photo_files(tmp_path):
    """A real photograph (skimage's astronaut at 200x260) as JPEG, PNG, grey PNG and RGBA PNG, and a 16-bit PNG."""
    from skimage import data

    rgb = cv2.resize(data.astronaut(), (260, 200), interpolation=cv2.INTER_AREA)
    files = {"photo.jpg": rgb[..., ::-1], "photo.png": rgb[..., ::-1], "grey.png": cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY),
             "rgba.png": np.dstack([rgb[..., ::-1], np.full(rgb.shape[:2], 200, np.uint8)])}
    for name, array in files.items():
        assert cv2.imwrite(str(tmp_path / name), array)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 257)
    return {name: str(tmp_path / name) for name in [*files, "deep.png"]}


def _float_resize_reference(path, hw):
    """The float path as it was before the option: uint8 -> float32, antialiased bilinear resize, /255, normalise."""
    array = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    array = array[..., None] if array.ndim == 2 else array[..., :3][..., ::-1]
    x = torch.from_numpy(np.ascontiguousarray(array))
    x = F.interpolate(x.permute(2, 0, 1)[None].float(), size=hw, mode="bilinear", align_corners=False,
                      antialias=True)[0].expand(3, -1, -1)
    return ((x / 255.0 - MEAN) / STD).contiguous()


def test_resize_8bit_is_within_one_grey_level_of_the_float_resize(tmp_path):
    from dinov2_dense.features import load_resized

    files = _photo_files(tmp_path)
    for name in ("photo.jpg", "photo.png", "grey.png", "rgba.png"):
        for hw in ((56, 70), (98, 140), (300, 390)):  # down (antialiased) and up
            float_path = load_resized(files[name], hw)
            assert torch.equal(float_path, _float_resize_reference(files[name], hw)), (name, hw)  # unchanged by default
            assert torch.equal(load_resized(files[name], hw, resize_8bit=False), float_path)
            eight = load_resized(files[name], hw, resize_8bit=True)
            assert eight.shape == (3, *hw) and eight.dtype == torch.float32 and eight.is_contiguous()
            assert not torch.equal(eight, float_path), (name, hw)
            grey_levels = (eight * STD + MEAN) * 255  # before normalisation: whole grey levels, as PIL's uint8 resize
            assert (grey_levels - grey_levels.round()).abs().max() < 1e-3, (name, hw)
            # within one grey level (1/(255 std) after normalising); torch's uint8 kernel has fixed-point
            # weights, so enlarging puts a few pixels up to 1.002 levels off (measured): 1% slack
            diff = ((eight - float_path) * STD).abs() * 255
            assert diff.max() <= (1.0 if hw[0] < 200 else 1.01), (name, hw, diff.max())
            assert diff.mean() < 0.5, (name, hw, diff.mean())  # rounding: 0.25 on average, more at half-way points
            if name == "grey.png":
                assert torch.equal(grey_levels[0].round(), grey_levels[2].round())  # grey stays grey


def test_resize_8bit_leaves_16bit_float_and_same_size_images_alone(tmp_path):
    from dinov2_dense.features import load_resized

    files = _photo_files(tmp_path)
    for hw in ((56, 70), (300, 390)):
        assert torch.equal(load_resized(files["deep.png"], hw, resize_8bit=True), load_resized(files["deep.png"], hw))
        floats = np.random.default_rng(0).random((40, 50, 3)).astype(np.float32)
        assert torch.equal(load_resized(floats, hw, resize_8bit=True), load_resized(floats, hw))
    same = load_resized(files["photo.png"], (200, 260), resize_8bit=True)  # already at the size: nothing resized
    assert torch.equal(same, load_resized(files["photo.png"], (200, 260)))
    assert torch.equal(same, _float_resize_reference(files["photo.png"], (200, 260)))


def test_extract_features_resize_8bit_reaches_every_decoding_path(model, tmp_path):
    """The option (keyword or FeatureOptions) resizes the files in 8 bits, in this process and in workers:
    features equal those of the 8-bit resized batch, close to but not the float resize's."""
    from dinov2_dense.features import load_resized

    files = _photo_files(tmp_path)
    paths = [files["photo.jpg"], files["photo.png"], files["grey.png"]]
    size = (42, 56)
    batch = torch.stack([load_resized(p, size, resize_8bit=True) for p in paths])
    want = extract_features(model, batch)
    default = extract_features(model, paths, size=size, batch_size=2)
    by_keyword = extract_features(model, paths, size=size, batch_size=2, resize_8bit=True)
    by_options = extract_features(model, paths, options=FeatureOptions(size=size, batch_size=2, resize_8bit=True))
    in_workers = extract_features(model, paths, size=size, batch_size=2, resize_8bit=True, num_workers=2)
    layer = want.layers[-1]
    for k in range(len(paths)):
        for got in (by_keyword, by_options, in_workers):
            torch.testing.assert_close(got[k].maps[layer][0], want.maps[layer][k], atol=1e-5, rtol=1e-4)
        assert not torch.allclose(default[k].maps[layer], by_keyword[k].maps[layer], atol=1e-6, rtol=0)
        torch.testing.assert_close(default[k].maps[layer], by_keyword[k].maps[layer], atol=0.05, rtol=0)
    assert FeatureOptions().resize_8bit is False


def test_keep_8bit_hands_over_uint8_that_normalises_to_the_same_floats(tmp_path):
    """keep_8bit: the 8-bit resized image as uint8 (a quarter of the bytes); normalised where the model is, it
    gives the floats of load_resized bit for bit, which are the published normalisation of those grey levels."""
    from dinov2_dense.features import load_resized, normalise_8bit

    files = _photo_files(tmp_path)
    for name in ("photo.jpg", "photo.png", "grey.png", "rgba.png"):
        for hw in ((56, 70), (200, 260), (300, 390)):  # down, the same size, up
            kept = load_resized(files[name], hw, resize_8bit=True, keep_8bit=True)
            assert kept.dtype == torch.uint8 and kept.shape == (3, *hw) and kept.is_contiguous(), (name, hw)
            floats = load_resized(files[name], hw, resize_8bit=True)
            assert torch.equal(normalise_8bit(kept), floats), (name, hw)
            assert torch.equal(floats, (kept.float() / 255.0 - MEAN) / STD), (name, hw)
            assert torch.equal(normalise_8bit(kept[None])[0], floats)  # batches too
    # 16-bit and float images are not 8-bit: they come back normalised, as without keep_8bit
    deep = load_resized(files["deep.png"], (56, 70), resize_8bit=True, keep_8bit=True)
    assert deep.dtype == torch.float32 and torch.equal(deep, load_resized(files["deep.png"], (56, 70)))
    # without resize_8bit nothing is kept in 8 bits
    assert load_resized(files["photo.jpg"], (56, 70), keep_8bit=True).dtype == torch.float32


def test_normalise_8bit_is_the_published_normalisation_of_every_grey_level():
    from dinov2_dense.features import _normalised_by_table, _table_8bit, normalise_8bit, stack_decoded, to_model_input

    levels = torch.arange(256, dtype=torch.uint8)
    x = torch.stack([levels, levels.flip(0), levels.roll(7)]).view(1, 3, 16, 16)
    want = (x.double() / 255 - MEAN.double()) / STD.double()
    got = normalise_8bit(x)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.equal(got, ((x.float() / 255.0 - MEAN) / STD))
    assert (got.double() - want).abs().max() < 1e-6
    table = _table_8bit()  # what other devices look up: the same floats
    for c in range(3):
        assert torch.equal(table[c][x[0, c].long()], got[0, c])
    assert torch.equal(_normalised_by_table(x), got)  # the lookup itself, as a GPU runs it
    assert torch.equal(_normalised_by_table(x[0, :, :4]), got[0, :, :4])  # one image, a strided view
    for bad in (x.float(), x[0, :2], levels):
        with pytest.raises(ValueError, match="uint8 images of shape"):
            normalise_8bit(bad)
    # a batch of uint8 images stays uint8 until it reaches the model; a mixed one is normalised here
    floats = torch.zeros(3, 16, 16)
    assert stack_decoded([x[0], x[0]]).dtype == torch.uint8
    mixed = stack_decoded([x[0], floats])
    assert mixed.dtype == torch.float32 and torch.equal(mixed[0], got[0]) and torch.equal(mixed[1], floats)
    assert torch.equal(to_model_input(x, torch.device("cpu")), got)
    assert to_model_input(floats, torch.device("cpu")) is floats
    if torch.cuda.is_available():  # a GPU divides by a constant through its reciprocal: the table keeps the floats
        assert torch.equal(normalise_8bit(x.cuda()).cpu(), got)


def test_8bit_batches_travel_from_the_workers_as_uint8(model, tmp_path, monkeypatch):
    """With resize_8bit the decoding workers of extract_features and folder_features hand over uint8 images
    (a quarter of the bytes of floats); the features are those of decoding in this process."""
    import dinov2_dense.features as features
    from dinov2_dense.evaluation.knn import folder_features
    from dinov2_dense.features import load_resized

    files = _photo_files(tmp_path)
    # in batches of 2: an 8-bit and a 16-bit image (a float batch), two 8-bit ones, one 8-bit one
    paths = [files["photo.jpg"], files["deep.png"], files["photo.png"], files["grey.png"], files["rgba.png"]]
    seen: list[torch.dtype] = []
    real = features.map_in_workers

    def spy(fn, items, num_workers=0, pin_memory=False):
        for out in real(fn, items, num_workers, pin_memory):
            seen.extend(t.dtype for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor))
            yield out

    monkeypatch.setattr(features, "map_in_workers", spy)
    here = extract_features(model, paths, size=(42, 56), batch_size=2, resize_8bit=True)
    there = extract_features(model, paths, size=(42, 56), batch_size=2, resize_8bit=True, num_workers=2)
    assert seen == [torch.float32, torch.uint8, torch.uint8] * 2  # three batches each way
    layer = here[0].layers[-1]
    for a, b in zip(here, there):
        assert torch.equal(a.maps[layer], b.maps[layer])
    want = extract_features(model, torch.stack([load_resized(p, (42, 56), resize_8bit=True) for p in paths]))
    for k, got in enumerate(there):  # the 16-bit image took the float resize, the others the 8-bit one
        torch.testing.assert_close(got.maps[layer][0], want.maps[layer][k], atol=1e-5, rtol=1e-4)
    seen.clear()
    extract_features(model, paths, size=(42, 56), batch_size=2, num_workers=2)
    assert seen == [torch.float32] * 3  # the float resize still hands over floats

    folder = tmp_path / "classes" / "a"
    folder.mkdir(parents=True)
    for name in ("deep.png", "grey.png", "photo.png", "rgba.png"):
        shutil.copy(files[name], folder / name)
    seen.clear()
    by_workers = folder_features(model, tmp_path / "classes", size=28, batch_size=2, progress=False, num_workers=2,
                                 resize_8bit=True)
    assert seen == [torch.float32, torch.uint8]  # batches of 2 files: the 16-bit one beside an 8-bit one, two 8-bit
    in_process = folder_features(model, tmp_path / "classes", size=28, batch_size=2, progress=False,
                                 resize_8bit=True)
    assert torch.equal(by_workers.features, in_process.features)


def test_features_and_pca_commands_take_resize_8bit(tmp_path, monkeypatch):
    """--resize-8bit on the commands reaches the resize: `features` writes the 8-bit resized features;
    `pca` resizes with it; without --size there is nothing to resize and the flag is refused."""
    import dinov2_dense.features as features
    from dinov2_dense import load_backbone
    from dinov2_dense.cli import build_parser, main
    from pretrain.export import export_backbone

    weights = export_backbone(tiny_vit(depth=2, dim=32, img=28), tmp_path / "export")["safetensors"]
    files = _photo_files(tmp_path)
    image = files["photo.jpg"]
    common = ["--weights", str(weights), "--num-workers", "0"]
    assert main(["features", image, "--size", "42", "--resize-8bit", "--out", str(tmp_path / "8bit.npy"), *common]) == 0
    assert main(["features", image, "--size", "42", "--out", str(tmp_path / "float.npy"), *common]) == 0
    model = load_backbone(None, weights=str(weights))
    want = extract_features(model, image, size=42, resize_8bit=True)
    got, plain = np.load(tmp_path / "8bit.npy"), np.load(tmp_path / "float.npy")
    np.testing.assert_allclose(got[0], want.maps[want.layers[-1]][0].numpy(), atol=1e-5)
    assert not np.array_equal(got, plain)
    assert main(["features", image, "--resize-8bit", "--out", str(tmp_path / "none.npy"), *common]) == 2

    seen = []
    real = features.load_resized
    monkeypatch.setattr(features, "load_resized", lambda *a, **k: seen.append(k.get("resize_8bit")) or real(*a, **k))
    assert main(["pca", image, "--size", "42", "--resize-8bit", "--out", str(tmp_path / "pca"), *common]) == 0
    assert seen == [True]
    assert main(["pca", image, "--size", "0", "--resize-8bit", "--out", str(tmp_path / "pca0"), *common]) == 2
    parser = build_parser()
    for command in (["features", image, "--out", "x.npy"], ["pca", image], ["knn", "folder"],
                    ["curate", "pool", "--target", "1", "--out", "o"]):
        assert parser.parse_args([*command, "--resize-8bit"]).resize_8bit is True
        # pca's default is left to a --basis (which records it); --no-resize-8bit says the float resize
        assert parser.parse_args(command).resize_8bit is (None if command[0] == "pca" else False)
    assert parser.parse_args(["pca", image, "--no-resize-8bit"]).resize_8bit is False


def test_features_of_a_model_in_train_mode_are_its_eval_features_and_the_modes_come_back():
    """extract_features ran a model in train mode as it was: with drop path, two calls on one image gave other
    features (a reviewer: 0.4952 apart). It computes in eval mode and gives each module its mode back."""
    model = tiny_vit(drop_path_rate=0.5)
    x = torch.randn(1, 3, 56, 70, generator=torch.Generator().manual_seed(0))
    want = extract_features(model, x, layers=[1, 2]).maps
    model.train()
    model.blocks[0].eval()  # a mix of modes, each given back as it was
    got = [extract_features(model, x, layers=[1, 2]).maps for _ in range(2)]
    for maps in got:
        for layer in (1, 2):
            torch.testing.assert_close(maps[layer], want[layer], rtol=0, atol=0)
    assert model.training and not model.blocks[0].training and model.blocks[1].training
    # a model in train mode written through .data between calls (a DINO v1 teacher's update, unseen by the eval-mode
    # cache of interpolated position embeddings) gives its new weights' features (the diff review: 0.37 off)
    other = tiny_vit(drop_path_rate=0.5)
    gen = torch.Generator().manual_seed(1)
    other.load_state_dict({k: v + 0.5 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()})
    for p, q in zip(model.parameters(), other.parameters()):
        p.data.mul_(0).add_(q.data)
    fresh = extract_features(other, x, layers=[1, 2]).maps
    moved = extract_features(model, x, layers=[1, 2]).maps
    for layer in (1, 2):
        torch.testing.assert_close(moved[layer], fresh[layer], rtol=0, atol=0)
    # and the backbone's own forward after eval() (the cache kept from the eval-mode call above: 3.64 off)
    model.train()
    extract_features(model, x, layers=[1, 2])
    for p, q in zip(model.parameters(), tiny_vit().parameters()):
        p.data.copy_(q.data)
    model.eval()
    with torch.no_grad():  # (where the cache serves)
        torch.testing.assert_close(model.get_intermediate_layers(x, n=1)[0],
                                   tiny_vit().eval().get_intermediate_layers(x, n=1)[0], rtol=0, atol=0)


def test_tensors_that_are_not_normalised_images_are_refused(tmp_path):
    """Pixel levels (0-255) as floats ran as if normalised (a reviewer: cosine 0.46 to the right features);
    DensePredictor.predict took a uint8 tensor as normalised and failed on a (3, H, W) tensor or an array with
    Python's own errors. Images the package decodes are not checked: a hazy photo's normalised values all lie in
    [0, 1], like a ToTensor output's, so nothing is said of those (the diff review: a warning per image)."""
    from heads import DensePredictor, LinearHead

    model = tiny_vit()
    levels = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    predictor = DensePredictor(model, LinearHead([48], 3, sync_bn=False), task="segmentation", layers=[2])
    for call, where in ((lambda x: extract_features(model, x), "image tensor"),
                        (lambda x: extract_features(model, [x[0]]), "image tensor"),
                        (lambda x: predictor.predict(x), "predict()'s images")):
        with pytest.raises(ValueError, match=re.escape(where) + r" with values from 0\.\d+ to 2\d\d\.\d+: tensors are "
                                             r"taken as ImageNet-normalised floats \(about -2\.1 to 2\.6\)"):
            call(levels * 255)
        with pytest.raises(ValueError, match=re.escape(where) + " of dtype torch.uint8"):
            call((levels * 255).to(torch.uint8))
        nan = levels.clone()
        nan[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match=re.escape(where) + " with NaN or infinite values"):
            call(nan)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call(levels)  # in [0, 1]: as a dim normalised image's may be
    hazy = tmp_path / "hazy.png"
    # levels 130-157: every channel normalises into [0, 1], which the removed warning took for ToTensor output
    cv2.imwrite(str(hazy), np.full((28, 28, 3), 130, np.uint8) + np.arange(28, dtype=np.uint8)[:, None, None])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(model, hazy)
    for call, where in ((lambda x: extract_features(model, x), "image tensor"),
                        (lambda x: predictor.predict(x), "predict()'s images")):
        with pytest.raises(ValueError, match=re.escape(where) + r" of shape \(0, 3, 28, 28\): an empty batch"):
            call(torch.zeros(0, 3, 28, 28))
    for bad, what in ((torch.randn(3, 28, 28), r"a tensor of shape \(3, 28, 28\)"),
                      (np.zeros((28, 28, 3), np.uint8), "ndarray")):
        with pytest.raises(ValueError, match=r"predict\(\) takes a \(B, 3, H, W\) batch of ImageNet-normalised "
                                             rf"images, not {what}: e\.g\. to_input_tensor\(path\)\[None\]"):
            predictor.predict(bad)
