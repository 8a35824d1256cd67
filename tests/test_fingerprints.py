"""Which backbone a head or a PCA basis goes with, told by what the backbone computes, not by the file
format its weights were read from; and a head trained on one backbone is not paired with another on
its way to mmseg and back.

- ``features_fingerprint``: the same weights from an official and a timm file (timm drops
  ``mask_token`` and, with registers, folds the class position into ``cls_token``) are one backbone;
  ``fingerprint`` stays as it was (the kNN cache, the curation store, the feature cache and the demo
  are keyed by it).
- ``test`` of a head with its backbone read from a timm file runs (it was refused: "its features
  differ", of bit-identical features); a checkpoint of an older version, which records the weights'
  SHA-256 only, is still judged by it, and the message says that the weights differ, not the features.
- ``to-mmseg --backbone-weights OTHER`` of a `train` checkpoint is refused, naming both files and
  fingerprints (it was written, and `test` of it gave another mIoU silently); ``--other-backbone`` says
  it is meant; the output records the backbone it holds, and ``from-mmseg`` carries the record back.
- ``pca --basis`` fitted on official-format weights, reused with the same weights from a timm file,
  does not warn (it warned "fitted on other weights").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense.checkpoints import fingerprint, load_backbone_weights, save_safetensors
from dinov2_dense.cli import main
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
from pretrain.export import export_backbone

from .conftest import randomize_, tiny_vit

pytestmark = pytest.mark.usefixtures("fresh_mmengine_loggers")

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"


def to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timm layout of an official state dict (the inverse of checkpoints._from_timm, as timm's
    ``_convert_dinov2`` makes it): no mask_token; with registers, ``reg_token``, the class position
    folded into ``cls_token`` and ``pos_embed`` of the patch positions only."""
    out = {k: v.clone() for k, v in sd.items() if k != "mask_token"}
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + out["pos_embed"][:, 0]
        out["pos_embed"] = out["pos_embed"][:, 1:]
    return out


def _old_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """``fingerprint`` as every file written so far records it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return digest.hexdigest()


def _loaded(path: Path) -> torch.nn.Module:
    """A backbone loaded from an export's file (or another file beside its backbone.json)."""
    from dinov2_dense.hub import load_backbone

    return load_backbone(None, weights=path)


# -- the fingerprints themselves -------------------------------------------------------------------
@pytest.mark.parametrize("registers", [0, 4])
def test_the_same_weights_from_a_timm_file_have_the_same_features_fingerprint(registers):
    from dinov2_dense.checkpoints import features_fingerprint, fingerprints

    official = tiny_vit(registers=registers)  # mask_token random, as trained files have it
    from_timm = tiny_vit(registers=registers)
    assert load_backbone_weights(from_timm, to_timm(official.state_dict())) == "timm"
    x = torch.randn(2, 3, 70, 84, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(official.get_intermediate_layers(x, 2), from_timm.get_intermediate_layers(x, 2)):
            assert torch.equal(a, b)  # bit-identical features
    assert features_fingerprint(official) == features_fingerprint(from_timm)
    assert fingerprint(official) != fingerprint(from_timm)  # the bytes as loaded differ
    # fingerprint is what every cache and record written so far holds: unchanged
    assert fingerprint(official) == _old_fingerprint(official.state_dict())
    both = {"sha256": fingerprint(official), "features_sha256": features_fingerprint(official)}
    assert fingerprints(official) == both
    # other weights, a changed class position or another dtype are other features
    other = randomize_(tiny_vit(registers=registers), seed=3)
    assert features_fingerprint(other) != features_fingerprint(official)
    moved = {k: v.clone() for k, v in official.state_dict().items()}
    moved["pos_embed"][:, 0] += 1.0
    assert features_fingerprint(moved) != features_fingerprint(official)
    half = {k: v.half() for k, v in official.state_dict().items()}
    assert features_fingerprint(half) != features_fingerprint(official)


# -- fixtures: a backbone in two formats, another one, and a head trained on the first -------------
@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """``a``: an export of a tiny register ViT (backbone.json, .safetensors, .pth), ``timm``: the same
    weights in timm's layout beside it, ``b``: other weights of that architecture, ``ade``: scenes."""
    root = tmp_path_factory.mktemp("fingerprints")
    a = export_backbone(tiny_vit(registers=4, depth=2, dim=64, heads=2, img=56), root / "a")
    timm = root / "a" / "timm.safetensors"  # backbone.json beside it gives the architecture
    save_safetensors(to_timm({k: v for k, v in torch.load(a["pth"], weights_only=True).items()}), timm)
    b = export_backbone(randomize_(tiny_vit(registers=4, depth=2, dim=64, heads=2, img=56), seed=3), root / "b")
    write_ade20k_layout(root / "ade", 8, 2, config=SceneConfig(size=(56, 56)), seed=0, progress=False)
    return {"a": a["safetensors"], "json": a["json"], "timm": timm, "b": b["safetensors"], "ade": root / "ade",
            "root": root}


def _opts(files: dict[str, Path], weights: Path | str) -> list[str]:
    opts = {f"{s}_dataloader.dataset.root": str(files["ade"]) for s in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": 2, "train_cfg.val_interval": 2, "param_scheduler.0.end": 1,
                 "param_scheduler.1.end": 2, "default_hooks.checkpoint.interval": 2, "train_dataloader.batch_size": 2,
                 "train_dataloader.dataset.pipeline.crop_size": 56,
                 "train_dataloader.dataset.pipeline.scale": "(112,56)",
                 "model.backbone": str(files["json"]), "model.backbone_weights": str(weights)})
    return [f"{k}={v}" for k, v in opts.items()]


@pytest.fixture(scope="module")
def trained(files) -> Path:
    """iter_2.pth of a 2-iteration run of the tiny config on backbone ``a`` (its official-format file)."""
    work = files["root"] / "run"
    assert main(["train", str(SEG_CFG), "--work-dir", str(work), "--cfg-options", *_opts(files, files["a"])]) == 0
    return work / "iter_2.pth"


def _test(capsys, files, checkpoint: Path, weights: Path, work: Path, *extra: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["test", str(SEG_CFG), str(checkpoint), "--work-dir", str(work), *extra,
                 "--cfg-options", *_opts(files, weights)])
    out, err = capsys.readouterr()
    return code, out, err


def _miou(out: str) -> str:
    line = [ln for ln in out.splitlines() if "mIoU" in ln][-1]
    return line[line.index("'mIoU'"):].split(",")[0]


# -- test: a head with its backbone from a timm file -----------------------------------------------
def test_test_runs_a_head_with_its_backbone_read_from_a_timm_file(files, trained, tmp_path, capsys):
    code, out, err = _test(capsys, files, trained, files["a"], tmp_path / "a")
    assert code == 0, err
    code, timm_out, err = _test(capsys, files, trained, files["timm"], tmp_path / "timm")
    assert code == 0, err  # was: "holds a head trained on another backbone ...: its features differ"
    assert _miou(timm_out) == _miou(out)
    # the checkpoint records both fingerprints: the weights' (as before) and their features'
    recorded = torch.load(trained, weights_only=True)["meta"]["backbone"]
    assert recorded["weights"] == str(files["a"]) and recorded["sha256"] == fingerprint(_loaded(files["a"]))
    assert "features_sha256" in recorded, recorded
    # other weights: refused, the features named as what differs
    code, _, err = _test(capsys, files, trained, files["b"], tmp_path / "b")
    assert code == 2 and "another backbone" in err and "its features differ" in err, err
    assert str(files["a"]) in err and str(files["b"]) in err, err
    # a checkpoint of an older version (the weights' SHA-256 only) is judged by it, and says so
    older = tmp_path / "older.pth"
    checkpoint = torch.load(trained, weights_only=True)
    del checkpoint["meta"]["backbone"]["features_sha256"]
    torch.save(checkpoint, older)
    assert _test(capsys, files, older, files["a"], tmp_path / "older_a")[0] == 0
    code, _, err = _test(capsys, files, older, files["timm"], tmp_path / "older_timm")
    assert code == 2 and "its weights differ" in err and "timm" in err and "its features differ" not in err, err
    assert _test(capsys, files, older, files["timm"], tmp_path / "older_timm2", "--other-backbone")[0] == 0


def test_test_refuses_a_head_fed_other_blocks_than_its_run_fed_it(files, trained, tmp_path, capsys):
    """A head trained on one block, tested with a config that feeds it another of the same width, ran and
    scored with no error (a reviewer: mIoU 3.4294 against 3.4683). The checkpoint records what the head read."""
    recorded = torch.load(trained, weights_only=True)["meta"]["head_inputs"]
    assert recorded == {"layers": [1], "norm": True, "class_token": False}, recorded
    run = ["test", str(SEG_CFG), str(trained), "--work-dir", str(tmp_path / "w")]
    capsys.readouterr()
    assert main([*run, "--cfg-options", *_opts(files, files["a"]), "model.layers=[0]", "model.norm=False"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert ("holds a head trained on other features of its backbone than this config feeds it (model.layers [1] in "
            "its run, [0] here; model.norm True in its run, False here): give --cfg-options model.layers=[1] "
            "model.norm=True") in err, err
    assert main([*run, "--other-backbone", "--cfg-options", *_opts(files, files["a"]), "model.layers=[0]"]) == 0
    assert "(--other-backbone: going on)" in capsys.readouterr().out


def test_test_refuses_a_head_on_the_same_weights_built_with_other_heads(files, trained, tmp_path, capsys):
    """The checks compared tensors only: the same weights read with an architecture of other num_heads (whose
    features differ) passed as the head's backbone. The checkpoint records the settings (meta.backbone.forward)."""
    import json

    recorded = torch.load(trained, weights_only=True)["meta"]["backbone"]["forward"]
    assert recorded == {"num_heads": 2, "interpolate_antialias": True, "interpolate_offset": 0.0}, recorded
    arch = json.loads(Path(files["json"]).read_text())
    other = tmp_path / "four_heads.json"
    other.write_text(json.dumps({**arch, "num_heads": 4}))
    capsys.readouterr()
    code = main(["test", str(SEG_CFG), str(trained), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 *_opts(files, files["a"]), f"model.backbone={other}"])
    err = capsys.readouterr().err
    assert code == 2 and "the same backbone weights built with other settings (num_heads 2 -> 4" in err, err
    # to-mmseg pairs it with those weights built so: refused too (it was written, and the record lost)
    out = tmp_path / "mm.pth"
    code, err = _convert(capsys, "to-mmseg", trained, out, "--backbone-weights", files["a"], "--backbone", other)
    assert code == 2 and "built with other settings (num_heads 2 -> 4" in err and not out.exists(), err
    code, err = _convert(capsys, "to-mmseg", trained, out, "--backbone-weights", files["a"])
    assert code == 0 and torch.load(out, weights_only=True)["meta"]["backbone"]["forward"] == recorded, err


# -- to-mmseg / from-mmseg: the record travels and is checked --------------------------------------
def _convert(capsys, *argv) -> tuple[int, str]:
    pytest.importorskip("dinov2_dense.mmseg", reason="the mmseg extra is not installed", exc_type=ImportError)
    from dinov2_dense.mmseg.convert import main as convert

    capsys.readouterr()
    code = convert([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_to_mmseg_refuses_a_head_with_another_backbone_and_records_the_one_it_writes(files, trained, tmp_path,
                                                                                    capsys):
    recorded = torch.load(trained, weights_only=True)["meta"]["backbone"]
    other = tmp_path / "other.pth"
    code, err = _convert(capsys, "to-mmseg", trained, other, "--backbone-weights", files["b"])
    assert code == 2, err  # was: written (exit 0), and `test` of it gave another mIoU silently
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(trained) in err and str(files["b"]) in err and "--other-backbone" in err, err
    from dinov2_dense.checkpoints import fingerprints

    b = fingerprints(_loaded(files["b"]))
    assert recorded["features_sha256"][:12] in err and b["features_sha256"][:12] in err, err
    assert not other.exists()
    # --other-backbone: meant; the output records the backbone it holds, and the head's beside it
    code, err = _convert(capsys, "to-mmseg", trained, other, "--backbone-weights", files["b"], "--other-backbone")
    assert code == 0, err
    meta = torch.load(other, weights_only=True)["meta"]
    from dinov2_dense.checkpoints import forward_settings

    assert meta["backbone"] == {"weights": str(files["b"]), **b, "forward": forward_settings(_loaded(files["b"]))}
    assert meta["head_trained_on"] == recorded
    # the same weights from the timm file: the same backbone; `test` of the output gives the run's mIoU
    same = tmp_path / "same.pth"
    code, err = _convert(capsys, "to-mmseg", trained, same, "--backbone-weights", files["timm"])
    assert code == 0, err
    meta = torch.load(same, weights_only=True)["meta"]
    assert meta["backbone"]["weights"] == str(files["timm"]) and "head_trained_on" not in meta
    assert meta["backbone"]["features_sha256"] == recorded["features_sha256"], meta
    code, out, err = _test(capsys, files, trained, files["a"], tmp_path / "t_head")
    assert code == 0, err
    code, converted_out, err = _test(capsys, files, same, files["a"], tmp_path / "t_same")
    assert code == 0, err
    assert _miou(converted_out) == _miou(out)


def test_the_record_survives_a_round_trip_through_mmseg_and_is_checked_after_it(files, trained, tmp_path, capsys):
    """A head alone to mmseg and back keeps the record of the backbone it was trained on (it was dropped:
    the file then paired with any backbone); a file whose own backbone.* tensors are not the recorded
    backbone is refused as well."""
    recorded = torch.load(trained, weights_only=True)["meta"]["backbone"]
    head = tmp_path / "head.pth"
    assert _convert(capsys, "to-mmseg", trained, head)[0] == 0
    assert torch.load(head, weights_only=True)["meta"].get("backbone") == recorded  # was: dropped
    for name in ("ours.safetensors", "ours.pth"):
        ours, kind = tmp_path / name, name.split(".")[1]
        code, err = _convert(capsys, "from-mmseg", head, ours)
        assert code == 0, err
        code, err = _convert(capsys, "to-mmseg", ours, tmp_path / f"{kind}_b.pth", "--backbone-weights", files["b"])
        assert code == 2 and str(ours) in err and str(files["b"]) in err, err
        code, err = _convert(capsys, "to-mmseg", ours, tmp_path / f"{kind}_a.pth", "--backbone-weights", files["a"])
        assert code == 0, err
        # and back from mmseg with the backbone: the record of the backbone it holds
        back = tmp_path / f"{kind}_back.pth"
        assert _convert(capsys, "from-mmseg", tmp_path / f"{kind}_a.pth", back)[0] == 0
        assert torch.load(back, weights_only=True)["meta"]["backbone"]["features_sha256"] == recorded["features_sha256"]
    # `test` of from-mmseg's .pth and .safetensors reads the record: other backbone weights are refused (the
    # .safetensors one was not read: its record is in the file's metadata)
    for name in ("ours.pth", "ours.safetensors"):
        code, _, err = _test(capsys, files, tmp_path / name, files["b"], tmp_path / f"t_b_{name}")
        assert code == 2 and "another backbone" in err, (name, err)
        # and what the head read travels too (to-mmseg and from-mmseg dropped meta.head_inputs)
        code = main(["test", str(SEG_CFG), str(tmp_path / name), "--work-dir", str(tmp_path / f"t_l_{name}"),
                     "--cfg-options", *_opts(files, files["a"]), "model.layers=[0]"])
        assert code == 2 and "model.layers [1] in its run, [0] here" in capsys.readouterr().err, name
    assert torch.load(tmp_path / "pth_back.pth", weights_only=True)["meta"]["head_inputs"]["layers"] == [1]
    # a head file holding backbone.* tensors that are not the backbone it records
    state = torch.load(trained, weights_only=True)
    b = _loaded(files["b"]).state_dict()
    mixed = tmp_path / "mixed.pth"
    torch.save({"state_dict": {**state["state_dict"], **{f"backbone.{k}": v for k, v in b.items()}},
                "meta": {"backbone": recorded}}, mixed)
    code, err = _convert(capsys, "to-mmseg", mixed, tmp_path / "mixed_out.pth")
    assert code == 2 and "the backbone.* tensors it holds" in err, err
    assert _convert(capsys, "to-mmseg", mixed, tmp_path / "mixed_out.pth", "--other-backbone")[0] == 0


# -- pca --basis with the same weights from a timm file ----------------------------------------------
def _image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 120, (56, 70, 3)).astype(np.uint8)
    img[14:42, 20:50] = (30, 200, 240)
    Image.fromarray(img).save(path)
    return path


def test_a_pca_basis_is_reused_without_warning_with_the_same_weights_from_a_timm_file(files, tmp_path, capsys):
    from dinov2_dense.viz.pca import PCABasis

    images = [_image(tmp_path / "a.png", 0), _image(tmp_path / "b.png", 1)]
    common = ["--size", "56", "--num-workers", "0"]
    assert main(["pca", str(images[0]), "--weights", str(files["a"]), "--out", str(tmp_path / "fit"), *common]) == 0
    basis = tmp_path / "fit" / "pca_basis.npz"

    def warnings(weights: Path, name: str) -> list[str]:
        capsys.readouterr()
        assert main(["pca", str(images[1]), "--basis", str(basis), "--weights", str(weights),
                     "--out", str(tmp_path / name), *common]) == 0
        return [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning")]

    assert warnings(files["timm"], "timm") == []  # was: "was fitted on other weights"
    from dinov2_dense.checkpoints import features_fingerprint

    assert PCABasis.load(basis).info["features_sha256"] == features_fingerprint(_loaded(files["a"]))
    other = warnings(files["b"], "other")
    assert len(other) == 1 and other[0].startswith(f"warning: {basis} was fitted on other weights"), other
    # a basis of an older version (the weights' SHA-256 only) is judged by that, as before
    old = PCABasis.load(basis)
    del old.info["features_sha256"]
    old.save(basis)
    assert warnings(files["a"], "old_same") == []
    assert len(warnings(files["timm"], "old_timm")) == 1


def test_checkpoints_name_the_embedded_backbone_as_embedded_not_official():
    """A head trained on the embedded backbone (model.backbone=dinov2_dense_tiny, backbone_weights "official",
    the default) was recorded as trained on "official" weights, and the refusal of a head on another backbone
    then read "a head trained on another backbone (official, ...)". The record names the backbone and says
    where its weights came from."""
    from dinov2_dense.engine.model import DenseModel

    def record(**kwargs) -> str:
        model = DenseModel(backbone="dinov2_dense_tiny", task="depth", layers=[3],
                           class_token=True, head=dict(type="LinearDepthHead", in_channels=[96], n_bins=8), **kwargs)
        return model.backbone_info()["weights"]

    assert record() == "dinov2_dense_tiny (embedded weights)"
    assert record(backbone_weights=None, backbone_seed=3) == "random weights (seed 3)"


def test_forward_settings_have_one_json_form_whatever_numbers_an_architecture_gives():
    """numpy numbers were dropped from the record (never compared) and an int offset 0 was not 0.0 (the kNN
    cache key, a JSON text, then missed for the same model)."""
    from dinov2_dense.checkpoints import forward_settings

    plain = forward_settings(tiny_vit())
    numpy_made = tiny_vit()
    numpy_made.num_heads, numpy_made.interpolate_antialias = np.int64(2), np.bool_(False)
    numpy_made.interpolate_offset = np.float64(0.1)
    assert forward_settings(numpy_made) == plain == {"num_heads": 2, "interpolate_antialias": False,
                                                     "interpolate_offset": 0.1}
    zero = tiny_vit(interpolate_offset=0)
    assert repr(forward_settings(zero)["interpolate_offset"]) == "0.0"
    assert forward_settings(torch.nn.Linear(2, 2)) == {}
