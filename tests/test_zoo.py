"""Zoo models: official head files load into load_model and give the official whole-mode outputs."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import dinov2_dense
from dinov2_dense.checkpoints import CheckpointError
from dinov2_dense.hub import build_backbone
from dinov2_dense.zoo import MODELS, build_model, load_model
from heads import DPTHead, LinearDepthHead, LinearHead

from .conftest import randomize_


@pytest.fixture
def weights_dir(tmp_path, torch_home, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(randomize_(build_backbone("dinov2_vits14"), seed=3).state_dict(), folder / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(folder))
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    return folder


def write_head_file(folder, name, seed=7, wrap=True):
    """An official-style head file: random decode_head.* tensors (BN running stats too), mmseg wrapper."""
    head = build_model(name).decode_head
    randomize_(head, seed=seed, std=0.05)
    sd = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = torch.rand_like(sd[k]) + 0.5
        elif k.endswith("running_mean"):
            sd[k] = torch.randn_like(sd[k]) * 0.1
    path = folder / MODELS[name].filename
    torch.save({"meta": {"iter": 40000}, "state_dict": sd} if wrap else sd, path)
    return sd


def padded_input(x):
    h, w = x.shape[-2:]
    ph, pw = (-h) % 14, (-w) % 14
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def test_ade20k_linear_matches_direct_computation(weights_dir):
    sd = write_head_file(weights_dir, "dinov2_vits14_ade20k_linear")
    model = dinov2_dense.load_model("dinov2_vits14_ade20k_linear")
    assert isinstance(model.decode_head, LinearHead)
    x = torch.randn(1, 3, 64, 90)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone.get_intermediate_layers(padded_input(x), n=[8, 9, 10, 11], reshape=True)
    f = feats[3]  # "lin.": the last of the four
    mean, var = sd["decode_head.bn.running_mean"], sd["decode_head.bn.running_var"]
    bn = (f - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 1e-5)
    bn = bn * sd["decode_head.bn.weight"][:, None, None] + sd["decode_head.bn.bias"][:, None, None]
    logits = torch.einsum("bchw,kc->bkhw", bn, sd["decode_head.conv_seg.weight"][:, :, 0, 0])
    logits = logits + sd["decode_head.conv_seg.bias"][:, None, None]
    ref = F.interpolate(logits, size=(64, 90), mode="bilinear", align_corners=False)
    assert out.shape == (1, 150, 64, 90)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_nyu_linear4_matches_direct_computation(weights_dir):
    sd = write_head_file(weights_dir, "dinov2_vits14_nyu_linear4", wrap=False)  # no state_dict wrapper
    model = load_model("dinov2_vits14_nyu_linear4")
    assert isinstance(model.decode_head, LinearDepthHead) and model.max_depth == 10.0
    x = torch.randn(2, 3, 56, 70)
    with torch.no_grad():
        out = model(x)
        pairs = model.backbone.get_intermediate_layers(x, n=[2, 5, 8, 11], reshape=True,
                                                       return_class_token=True, norm=False)
    maps = []
    for fmap, cls in pairs:
        both = torch.cat([fmap, cls[:, :, None, None].expand_as(fmap)], 1)
        maps.append(F.interpolate(both, scale_factor=4, mode="bilinear", align_corners=False))
    logits = F.conv2d(torch.cat(maps, 1), sd["decode_head.conv_depth.weight"], sd["decode_head.conv_depth.bias"])
    prob = torch.relu(logits) + 0.1
    prob = prob / prob.sum(1, keepdim=True)
    bins = torch.linspace(0.001, 10.0, 256)
    depth = (prob * bins[None, :, None, None]).sum(1, keepdim=True).clamp(0.001, 10.0)
    ref = F.interpolate(depth, size=(56, 70), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_full_state_dict_is_official_layout_and_round_trips(weights_dir, tmp_path, monkeypatch):
    write_head_file(weights_dir, "dinov2_vits14_kitti_dpt")
    model = load_model("dinov2_vits14_kitti_dpt")
    assert isinstance(model.decode_head, DPTHead) and model.max_depth == 80.0
    keys = list(model.state_dict())
    assert all(k.startswith(("backbone.", "decode_head.")) for k in keys)
    assert "decode_head.reassemble_blocks.readout_projects.0.0.weight" in keys
    # ours (backbone + head in one safetensors file) loads back without the backbone file
    path = dinov2_dense.save_safetensors(model, tmp_path / "full.safetensors")
    again = load_model("dinov2_vits14_kitti_dpt", weights=path, backbone_weights=None)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    monkeypatch.setenv("HOME", str(tmp_path))  # a file:// URL and ~ as load_backbone takes them
    for other in (path.as_uri(), "~/full.safetensors"):
        same = load_model("dinov2_vits14_kitti_dpt", weights=other, backbone_weights=None).state_dict()
        assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items()), other
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        y = again(x)
    assert y.shape == (1, 1, 42, 56) and y.min() >= 0.001 - 1e-6 and y.max() <= 80.0 + 1e-4


def test_head_file_of_another_size_is_refused_naming_keys(weights_dir, tmp_path):
    other = build_model("dinov2_vitb14_ade20k_linear").decode_head
    path = tmp_path / "b_head.pth"
    torch.save({"state_dict": {f"decode_head.{k}": v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match=r"decode_head|bn\.weight \(768,\) vs \(384,\)"):
        load_model("dinov2_vits14_ade20k_linear", weights=path)
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(150, 384, 1, 1)}}, path)
    with pytest.raises(CheckpointError, match="missing keys: .*bn"):
        load_model("dinov2_vits14_ade20k_linear", weights=path)


def test_head_file_without_num_batches_tracked_loads(weights_dir, tmp_path):
    """Files of older PyTorch or mmcv have no BatchNorm num_batches_tracked: torch's strict load accepts
    them (the counter plays no part in inference), and so does ours, with the same predictions."""
    sd = write_head_file(weights_dir, "dinov2_vits14_ade20k_linear")
    full = load_model("dinov2_vits14_ade20k_linear")
    path = tmp_path / "old_head.pth"
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, path)
    assert any(k.endswith("num_batches_tracked") for k in sd)
    older = load_model("dinov2_vits14_ade20k_linear", weights=path)
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(older(x), full(x))


def test_missing_official_head_file_names_file_and_url(weights_dir):
    with pytest.raises(dinov2_dense.WeightsNotFoundError, match=r"dinov2_vits14_voc2012_ms_head\.pth.*\n.*weights"):
        load_model("dinov2_vits14_voc2012_ms")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_builds_with_official_settings(name):
    spec = MODELS[name]
    with torch.device("meta"):
        model = build_model(name)
    dim = {"s": 384, "b": 768, "l": 1024, "g": 1536}[spec.size]
    depth = {"s": 12, "b": 12, "l": 24, "g": 40}[spec.size]
    if spec.task == "segmentation":
        assert model.layers == list(range(depth - 4, depth)) and model.norm and not model.class_token
        classes = 150 if spec.dataset == "ade20k" else 21
        width = dim if spec.head == "linear" else 4 * dim
        assert model.decode_head.conv_seg.weight.shape == (classes, width, 1, 1)
        assert model.test_cfg["mode"] == "slide" and (("scales" in model.test_cfg) == (spec.head == "ms"))
    else:
        assert not model.norm and model.class_token
        assert model.max_depth == (10.0 if spec.dataset == "nyu" else 80.0)
        if spec.head == "linear":
            assert model.layers == [depth - 1]
            assert model.decode_head.conv_depth.weight.shape == (256, 2 * dim, 1, 1)
        elif spec.head == "linear4":
            assert model.decode_head.conv_depth.weight.shape == (256, 8 * dim, 1, 1)
        else:
            assert model.decode_head.reassemble_blocks.projects[0].conv.weight.shape == (dim // 8, dim, 1, 1)


def test_heads_import_no_backbone_builder():
    """Layering: heads take feature tensors; the zoo that builds backbones lives above them."""
    import ast

    root = Path(__file__).resolve().parents[1] / "heads"
    for path in root.glob("*.py"):
        if path.name == "zoo.py":  # the deprecation alias, which imports nothing at import time
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[:2] not in (["dinov2_dense", m] for m in ("hub", "zoo", "models", "engine")), \
                    f"{path.name} imports {node.module}"


def test_heads_zoo_still_answers_with_a_deprecation_warning():
    import dinov2_dense.zoo as zoo
    import heads.zoo as old

    with pytest.warns(DeprecationWarning, match="dinov2_dense.zoo.load_model"):
        assert old.load_model is zoo.load_model


def _hinted_call(exc) -> str:
    """The load_model call that a "not found" message gives for going on without a download."""
    import re

    m = re.search(r"To go on without a download: (load_model\(.*?\)) in Python", str(exc))
    assert m, str(exc)
    assert "--model" not in str(exc) and "load_backbone(" not in str(exc)  # the backbone's hint, not load_model's
    return m.group(1)


def _run_hint(call: str):
    """Run the hinted call as written (load_model as imported by the README's `import dinov2_dense`)."""
    model = eval(call, {"load_model": dinov2_dense.load_model})  # noqa: S307 - our own message
    with torch.no_grad():
        return model, model(torch.randn(1, 3, 30, 45))


@pytest.mark.parametrize("given", [{}, {"weights": None}])
def test_missing_head_and_backbone_hint_a_load_model_call_that_runs(given, torch_home, monkeypatch):
    """Offline, no file at all: the hint said `weights=None`, and load_model(name, weights=None) then
    failed on the backbone's file. It gives the call that works (both None), and that call runs."""
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    name = "dinov2_vits14_ade20k_linear"
    with pytest.raises(dinov2_dense.WeightsNotFoundError) as exc:
        load_model(name, **given)
    call = _hinted_call(exc.value)
    assert call == f'load_model("{name}", weights=None, backbone_weights=None)'
    assert exc.value.__cause__ is None and exc.value.__suppress_context__  # no traceback of the old hint
    _, out = _run_hint(call)
    assert out.shape == (1, 150, 30, 45)


def test_missing_head_with_backbone_found_hints_weights_none(weights_dir):
    """The backbone's file is here, the head's is not: weights=None alone goes on, on that backbone."""
    name = "dinov2_vits14_voc2012_linear"
    with pytest.raises(dinov2_dense.WeightsNotFoundError) as exc:
        load_model(name)
    call = _hinted_call(exc.value)
    assert call == f'load_model("{name}", weights=None)'
    model, out = _run_hint(call)
    assert out.shape == (1, 21, 30, 45)
    want = torch.load(weights_dir / "dinov2_vits14_pretrain.pth")
    assert torch.equal(model.backbone.state_dict()["blocks.0.attn.qkv.weight"], want["blocks.0.attn.qkv.weight"])


def test_missing_backbone_with_head_found_hints_backbone_weights_none(tmp_path, torch_home, monkeypatch):
    """The head's file is here, the backbone's is not: backbone_weights=None keeps the official head."""
    folder = tmp_path / "heads"
    folder.mkdir()
    name = "dinov2_vits14_nyu_linear"
    sd = write_head_file(folder, name)
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(folder))
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    with pytest.raises(dinov2_dense.WeightsNotFoundError, match=r"dinov2_vits14_pretrain\.pth") as exc:
        load_model(name)
    call = _hinted_call(exc.value)
    assert call == f'load_model("{name}", backbone_weights=None)'
    model, out = _run_hint(call)
    assert out.shape == (1, 1, 30, 45)
    head = model.decode_head.state_dict()
    assert all(torch.equal(head[k[len("decode_head."):]], v) for k, v in sd.items())


def test_the_zoo_is_an_attribute_of_the_package_after_import_dinov2_dense():
    """The README names dinov2_dense.zoo: after `import dinov2_dense` alone it was no attribute (AttributeError)."""
    import subprocess
    import sys

    code = ("import dinov2_dense; assert dinov2_dense.zoo.load_model is dinov2_dense.load_model; "
            "assert not hasattr(dinov2_dense, 'no_such_module'); "
            "assert not hasattr(dinov2_dense, 'models.vision_transformer'); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_load_model_refuses_a_trained_depth_head_of_another_range(tmp_path):
    """A head that `train` wrote for 0.001-80 m loaded into a 10 m zoo model with no error, its outputs x7.59
    smaller than under its own range; `test` refuses the same mismatch (the diff review)."""
    torch.manual_seed(0)
    kitti = build_model("dinov2_vits14_kitti_linear", backbone=build_backbone("dinov2_vits14"))
    head = {k: v for k, v in kitti.state_dict().items() if k.startswith("decode_head.")}
    path = tmp_path / "kitti_head.pth"
    torch.save({"state_dict": head, "meta": {"head_output": {"min_depth": 0.001, "max_depth": 80.0},
                                             "backbone": {"weights": "dinov2_vits14 (random)"}}}, path)
    assert load_model("dinov2_vits14_kitti_linear", weights=path, backbone_weights=None).max_depth == 80.0
    with pytest.raises(CheckpointError, match=r"another output than dinov2_vits14_nyu_linear builds \(max_depth 80.0 "
                                              r"in its run, 10.0 in dinov2_vits14_nyu_linear\).*load_trained"):
        load_model("dinov2_vits14_nyu_linear", weights=path, backbone_weights=None)
    # the linear head's normalisation too, as test refuses it (a softmax head loaded as a linear one)
    torch.save({"state_dict": head, "meta": {"head_output": {"min_depth": 0.001, "max_depth": 80.0,
                                                             "norm_strategy": "softmax"}}}, path)
    with pytest.raises(CheckpointError, match=r"norm_strategy 'softmax' in its run, 'linear' in"):
        load_model("dinov2_vits14_kitti_linear", weights=path, backbone_weights=None)
