"""Reading weights in every supported layout (official, training, timm, Hugging Face sharded
saves), the errors for files that do not fit and for bad architecture JSONs, and atomic
safetensors writes. Tiny random-weight ViTs, no network."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import torch
from torch import Tensor

from dinov2_dense.checkpoints import (
    CheckpointError,
    detect_format,
    load_backbone_weights,
    read_checkpoint,
    save_safetensors,
)
from dinov2_dense.hub import load_backbone
from dinov2_dense.models import DinoVisionTransformer

from .conftest import randomize_, tiny_vit


def _image(size: int = 98, seed: int = 3) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_same_outputs(a: DinoVisionTransformer, b: DinoVisionTransformer, atol: float = 0.0) -> None:
    """Same tokens at the stored grid and at an interpolated one (which exercises pos_embed[:, 0])."""
    for size in (98, 126):
        x = _image(size)
        with torch.no_grad():
            out_a, out_b = a.forward_features(x), b.forward_features(x)
        for key in ("x_norm_clstoken", "x_norm_regtokens", "x_norm_patchtokens"):
            torch.testing.assert_close(out_b[key], out_a[key], rtol=0, atol=atol)
        assert out_a["x_norm_patchtokens"].std() > 0.1  # not vacuous


def _fresh_like(source: DinoVisionTransformer, **kw) -> DinoVisionTransformer:
    """Same architecture as ``source`` with other random weights, so a no-op load would be caught."""
    model = tiny_vit(**kw)
    model.load_state_dict({k: torch.randn_like(v) for k, v in model.state_dict().items()})
    assert not torch.equal(model.pos_embed, source.pos_embed)
    return model


# -- official and training layouts --------------------------------------------------------
def test_official_pth_loads_strictly(tmp_path: Path) -> None:
    source = tiny_vit()
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    torch.save(source.state_dict(), path)
    model = _fresh_like(source)
    assert load_backbone_weights(model, path) == "official"
    _assert_same_outputs(source, model)


def _chunked(sd: dict[str, Tensor], depth: int, chunks: int) -> dict[str, Tensor]:
    """The official ``block_chunks`` layout: chunk C holds blocks with their global index N."""
    size = depth // chunks
    return {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // size}.{m[1]}.", k): v for k, v in sd.items()}


def test_chunked_layout_matches_official_code() -> None:
    keys = _chunked({f"blocks.{i}.norm1.weight": torch.zeros(1) for i in range(4)}, depth=4, chunks=2)
    assert sorted(keys) == [f"blocks.{c}.{n}.norm1.weight" for c, n in ((0, 0), (0, 1), (1, 2), (1, 3))]


def test_training_checkpoint_takes_teacher(tmp_path: Path) -> None:
    teacher, student = tiny_vit(depth=4), tiny_vit(depth=4)
    student.load_state_dict({k: torch.randn_like(v) for k, v in student.state_dict().items()})
    model: dict[str, Tensor] = {}
    for prefix, net in (("teacher.backbone.", teacher), ("student.backbone.", student)):
        model.update({prefix + k: v for k, v in _chunked(net.state_dict(), depth=4, chunks=2).items()})
    model["teacher.dino_head.mlp.0.weight"] = torch.randn(8, 48)
    model["student.dino_head.mlp.0.weight"] = torch.randn(8, 48)
    path = tmp_path / "model_0000005.pth"
    torch.save({"model": model, "iteration": 5}, path)

    target = _fresh_like(teacher, depth=4)
    assert load_backbone_weights(target, path) == "training"
    _assert_same_outputs(teacher, target)


def test_distillation_checkpoint_is_refused_not_read_as_its_frozen_teacher(tmp_path: Path, capsys) -> None:
    """A distillation checkpoint holds the frozen teacher (``teacher.backbone.*``) and each student and its EMA
    (``student.student<i>_backbone.*``, ``teacher.ema<i>_backbone.*``, what ``export/student<i>.*`` holds):
    given as backbone weights it is refused, naming the student export, rather than the teacher given."""
    teacher, student = tiny_vit(depth=2), tiny_vit(depth=2)
    model: dict[str, Tensor] = {}
    for prefix, net in (("teacher.backbone.", teacher), ("student.student0_backbone.", student),
                        ("teacher.ema0_backbone.", student)):
        model.update({prefix + k: v for k, v in net.state_dict().items()})
    model["teacher.dino_head.mlp.0.weight"] = torch.randn(8, 48)
    run = tmp_path / "dist"
    run.mkdir()
    (run / "config.json").write_text('{"distill": {"teacher": "dinov2_vits14"}}')  # as a run writes: no HF config
    path = run / "checkpoint_0000008.pth"
    torch.save({"model": model, "iteration": 8}, path)
    arch = run / "student0.json"  # as --model runs/dist/export/student0.json
    arch.write_text(json.dumps(student.arch_kwargs()))
    for load in (lambda: load_backbone_weights(tiny_vit(depth=2), path), lambda: load_backbone(arch, weights=path)):
        with pytest.raises(CheckpointError) as info:
            load()
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and "distillation checkpoint" in msg and "frozen teacher" in msg
        assert str(run / "export" / "student0.safetensors") in msg and "student0.json" in msg
    # the same with DDP's module. prefix (it failed later, on 'missing keys')
    wrapped = run / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.items()}, "iteration": 8}, wrapped)
    with pytest.raises(CheckpointError, match="a distillation checkpoint"):
        load_backbone_weights(tiny_vit(depth=2), wrapped)
    # given to `test` as a head checkpoint, or to `features` without --model (no backbone.json beside it: the
    # default's "does not fit" error hid this refusal), it is named a distillation checkpoint too
    from dinov2_dense.cli import main
    from dinov2_dense.engine.runner import read_run_checkpoint

    with pytest.raises(CheckpointError, match="not a head checkpoint of `train` but a distillation checkpoint"):
        read_run_checkpoint(path)
    # without an architecture (a distill run writes no backbone.json; as distill --teacher reads it): it said
    # only "no architecture file beside it"
    with pytest.raises(CheckpointError, match="a distillation checkpoint"):
        load_backbone(None, weights=path)
    image = tmp_path / "img.png"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert main(["features", str(image), "--weights", str(path), "--out", str(tmp_path / "f.npy")]) == 2
    err = capsys.readouterr().err
    assert "a distillation checkpoint" in err and "does not fit dinov2_vits14" not in err, err


def test_strict_load_error_reads_as_sentences_on_one_line() -> None:
    """The command line joins an error's lines into one: each part ends as a sentence."""
    from dinov2_dense.cli import _one_line

    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(tiny_vit(registers=4), tiny_vit().state_dict())
    line = _one_line(info.value)
    assert "1 missing key: register_tokens. The checkpoint looks like" in line, line


def test_teacher_checkpoint_loads(tmp_path: Path) -> None:
    teacher = tiny_vit(depth=4)
    sd = {"backbone." + k: v for k, v in _chunked(teacher.state_dict(), depth=4, chunks=2).items()}
    sd["dino_head.last_layer.weight"] = torch.randn(16, 8)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": sd}, path)

    target = _fresh_like(teacher, depth=4)
    assert load_backbone_weights(target, path) == "training"
    _assert_same_outputs(teacher, target)


# -- timm -----------------------------------------------------------------------------------
def to_timm(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """What timm's ``checkpoint_filter_fn`` makes of an official DINOv2 state dict."""
    sd = dict(sd)
    sd.pop("mask_token", None)
    out: dict[str, Tensor] = {}
    if "register_tokens" in sd:
        # timm's no_embed_class form: the class position folds into cls_token
        out["reg_token"] = sd.pop("register_tokens")
        out["cls_token"] = sd.pop("cls_token") + sd["pos_embed"][:, 0]
        out["pos_embed"] = sd.pop("pos_embed")[:, 1:]
    for key, value in sd.items():
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", key)
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", key)
        out[key] = value
    return out


@pytest.mark.parametrize(
    "arch", [dict(), dict(registers=4), dict(ffn="swiglufused"), dict(registers=4, ffn="swiglufused")],
    ids=["plain", "reg4", "swiglu", "reg4-swiglu"],
)
def test_timm_layout_round_trip(tmp_path: Path, arch: dict) -> None:
    source = tiny_vit(**arch)
    timm_sd = to_timm(source.state_dict())
    assert "mask_token" not in timm_sd
    assert not any(".w12." in k or ".w3." in k for k in timm_sd)
    assert detect_format(timm_sd) == "timm"
    path = tmp_path / "timm.safetensors"
    save_safetensors(timm_sd, path)

    model = _fresh_like(source, **arch)
    assert load_backbone_weights(model, path) == "timm"
    _assert_same_outputs(source, model, atol=1e-5)


# -- checkpoints that do not fit -----------------------------------------------------------
def test_other_width_names_keys_and_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "wide.pth"
    torch.save(tiny_vit(dim=64).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(tiny_vit(dim=48), path)
    msg = str(info.value)
    assert str(path) in msg
    assert "cls_token (1, 1, 64) vs (1, 1, 48)" in msg
    assert "pos_embed (1, 50, 64) vs (1, 50, 48)" in msg
    assert "looks like a ViT of no released size: width 64" in msg


def test_vitb_into_vits_names_sizes() -> None:
    small = DinoVisionTransformer(img_size=98, embed_dim=384, depth=1, num_heads=6)
    base = DinoVisionTransformer(img_size=98, embed_dim=768, depth=2, num_heads=12)
    with pytest.raises(CheckpointError) as info:
        load_backbone_weights(small, base.state_dict())
    msg = str(info.value)
    assert "this model (dinov2_vits14: width 384, 1 blocks" in msg
    assert "looks like dinov2_vitb14: width 768, 2 blocks" in msg
    assert "unexpected keys: blocks.1." in msg
    assert "cls_token (1, 1, 768) vs (1, 1, 384)" in msg


def test_missing_key_is_named() -> None:
    sd = tiny_vit().state_dict()
    del sd["norm.weight"], sd["blocks.2.ls1.gamma"]
    with pytest.raises(CheckpointError, match=r"2 missing keys: norm\.weight, blocks\.2\.ls1\.gamma"):
        load_backbone_weights(tiny_vit(), sd)


def test_unexpected_key_is_named() -> None:
    sd = tiny_vit().state_dict()
    sd["head.weight"] = torch.zeros(10, 48)
    with pytest.raises(CheckpointError, match=r"1 unexpected key: head\.weight") as info:
        load_backbone_weights(tiny_vit(), sd)
    assert "missing" not in str(info.value)


def test_registers_into_plain_model_is_named() -> None:
    with pytest.raises(CheckpointError, match=r"unexpected key: register_tokens") as info:
        load_backbone_weights(tiny_vit(), tiny_vit(registers=4).state_dict())
    assert "4 register tokens" in str(info.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_names_path(tmp_path: Path, suffix: str) -> None:
    good = tmp_path / f"good{suffix}"
    sd = tiny_vit().state_dict()
    save_safetensors(sd, good) if suffix == ".safetensors" else torch.save(sd, good)
    bad = tmp_path / f"truncated{suffix}"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as info:
        load_backbone_weights(tiny_vit(), bad)
    assert str(bad) in str(info.value)
    # as a head checkpoint of `test` or `train`'s load_from (torch.load reads a .safetensors through safetensors,
    # whose error was not caught: an internal error, exit 1)
    from dinov2_dense.engine.runner import read_run_checkpoint

    with pytest.raises(CheckpointError, match="truncated") as info:
        read_run_checkpoint(bad)
    assert str(bad) in str(info.value)


def test_garbage_and_empty_files_name_path(tmp_path: Path) -> None:
    for name, data in (("garbage.pth", b"not a checkpoint at all"), ("empty.pth", b"")):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            read_checkpoint(path)


def test_file_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"model": {"iteration": 5, "lr": 0.1}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}: holds no tensors \(keys: iteration, lr\)"):
        load_backbone_weights(tiny_vit(), path)
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such weight file"):
        read_checkpoint(tmp_path / "absent.pth")


# -- writing ---------------------------------------------------------------------------------
def test_save_safetensors_round_trip(tmp_path: Path) -> None:
    source = tiny_vit(registers=4)
    path = save_safetensors(source, tmp_path / "sub" / "w.safetensors")
    assert list(path.parent.iterdir()) == [path]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask, "mode as umask allows, not mkstemp's 0600"
    model = _fresh_like(source, registers=4)
    assert load_backbone_weights(model, path) == "official"
    _assert_same_outputs(source, model)


def test_save_safetensors_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    path = tmp_path / "w.safetensors"
    save_safetensors({"x": torch.arange(4.0)}, path)
    before = path.read_bytes()

    def failing_save(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"half a file")  # fail after writing part of it
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"x": torch.zeros(4)}, path)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path], "no temp file may remain"


def test_damaged_zip_entry_message_is_whole(tmp_path: Path) -> None:
    """torch's text for a damaged entry runs on with a paragraph of advice; the message keeps its
    first sentence whole instead of cutting it off mid-word."""
    good = tmp_path / "good.pth"
    torch.save(tiny_vit().state_dict(), good)
    with zipfile.ZipFile(good) as archive:
        entry = next(i for i in archive.infolist() if i.filename.endswith("/data/0"))
    data = bytearray(good.read_bytes())
    data[entry.header_offset : entry.header_offset + 4] = b"XXXX"  # that entry's local header
    bad = tmp_path / "damaged.pth"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(bad)
    msg = str(info.value)
    assert re.search(r"PytorchStreamReader failed reading file data/0: [^()]*corrupted\.\)", msg), msg
    assert "If you are seeing" not in msg
    assert msg.startswith(str(bad)) and msg.endswith("if it was downloaded, fetch it again")


# -- Hugging Face sharded saves ----------------------------------------------------------------

def _sharded_bin(folder: Path, out: Path) -> None:
    """The pytorch_model.bin flavour of a sharded save (transformers 4's ``safe_serialization=False``;
    transformers 5 writes safetensors only): the same shards as torch files, and their index."""
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    names = {s: s.replace("model-", "pytorch_model-").replace(".safetensors", ".bin") for s in shards}
    out.mkdir()
    for shard, name in names.items():
        torch.save(load_file(str(folder / shard)), out / name)
    index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def test_sharded_hugging_face_folder_matches_transformers(tmp_path: Path, monkeypatch) -> None:
    hf_lib = pytest.importorskip("transformers")
    cfg = hf_lib.Dinov2Config(hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=192,
                              image_size=56, patch_size=14)
    hf = randomize_(hf_lib.Dinov2Model(cfg), seed=4).eval()
    folder = tmp_path / "hf"
    hf.save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert (folder / "model.safetensors.index.json").is_file() and len(shards) > 1
    assert not (folder / "model.safetensors").exists()
    _sharded_bin(folder, tmp_path / "hf_bin")

    arch = dict(img_size=56, patch_size=14, embed_dim=48, depth=2, num_heads=2)
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = hf(pixel_values=x).last_hidden_state
    for weights in (folder, folder / "model.safetensors.index.json", tmp_path / "hf_bin"):
        model = load_backbone(arch, weights=weights)
        with torch.no_grad():
            out = model.forward_features(x)
        ours = torch.cat([out["x_norm_clstoken"][:, None], out["x_norm_patchtokens"]], dim=1)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        assert ref[:, 1:].std() > 0.1  # not vacuous
    monkeypatch.chdir(folder)  # `--weights .` in the folder, its architecture from its config.json
    with torch.no_grad():
        out = load_backbone(None, weights=".").forward_features(x)
    torch.testing.assert_close(out["x_norm_patchtokens"], ref[:, 1:], rtol=0, atol=1e-5)
    # an index given without an architecture takes the folder's config.json too (it was read as an architecture
    # file itself: "unknown settings 'metadata', 'weight_map'")
    (tmp_path / "hf_bin" / "config.json").write_bytes((folder / "config.json").read_bytes())
    for index in (folder / "model.safetensors.index.json", tmp_path / "hf_bin" / "pytorch_model.bin.index.json"):
        with torch.no_grad():
            out = load_backbone(None, weights=index).forward_features(x)
        torch.testing.assert_close(out["x_norm_patchtokens"], ref[:, 1:], rtol=0, atol=1e-5)

    shards[-1].unlink()  # a shard that did not arrive
    with pytest.raises(CheckpointError) as info:
        load_backbone(arch, weights=folder)
    msg = str(info.value)
    assert "model.safetensors.index.json" in msg and shards[-1].name in msg and "missing" in msg


# -- architecture JSONs -----------------------------------------------------------------------
BASE_ARCH = {"embed_dim": 48, "depth": 1, "num_heads": 3}


@pytest.mark.parametrize(
    "arch, key, value",
    [
        ({**BASE_ARCH, "patch_size": 0}, "patch_size", "0"),
        ({**BASE_ARCH, "num_heads": 0}, "num_heads", "0"),
        ({**BASE_ARCH, "embed_dim": "48"}, "embed_dim", '"48"'),
        ({**BASE_ARCH, "embed_dim": 48.5}, "embed_dim", "48.5"),
        ({**BASE_ARCH, "mlp_ratio": 0}, "mlp_ratio", "0"),
        ({**BASE_ARCH, "init_values": "x"}, "init_values", '"x"'),
        ({**BASE_ARCH, "depth": 0}, "depth", "0"),
        ({**BASE_ARCH, "depth": True}, "depth", "true"),
        ({**BASE_ARCH, "num_register_tokens": -1}, "num_register_tokens", "-1"),
        ({**BASE_ARCH, "img_size": 0}, "img_size", "0"),
        ({**BASE_ARCH, "ffn_layer": "foo"}, "ffn_layer", '"foo"'),
        ({**BASE_ARCH, "qkv_bias": "yes"}, "qkv_bias", '"yes"'),
        ({**BASE_ARCH, "embed_dim": 50}, "embed_dim", "50"),  # not a multiple of num_heads
        ({**BASE_ARCH, "embeddim": 48}, "embeddim", ""),
        ([1, 2], "JSON object", "a list"),
    ],
)
def test_bad_architecture_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture, arch, key: str,
                                         value: str) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))
    with pytest.raises(ValueError) as info:
        load_backbone(str(path), None)
    msg = str(info.value)
    assert str(path) in msg and key in msg and value in msg, msg
    assert "\n" not in msg
    if key == "patch_size":  # the command: one line, exit code 2 (it was a ZeroDivisionError traceback)
        from dinov2_dense.cli import main

        capsys.readouterr()
        image = tmp_path / "a.png"
        import cv2

        cv2.imwrite(str(image), torch.zeros(28, 28, 3, dtype=torch.uint8).numpy())
        out = tmp_path / "f.npy"
        rc = main(["features", str(image), "--model", str(path), "--weights", "random", "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and "patch_size = 0" in err and "Traceback" not in err, err


def test_architecture_json_without_layerscale_round_trips(tmp_path: Path) -> None:
    """``arch_kwargs`` writes ``init_values: null`` for a model without LayerScale: that file must
    rebuild that model (null is not "the default", which is LayerScale 1.0)."""
    source = randomize_(DinoVisionTransformer(img_size=56, embed_dim=48, depth=2, num_heads=2, init_values=None)).eval()
    (tmp_path / "backbone.json").write_text(json.dumps(source.arch_kwargs()))
    save_safetensors(source, tmp_path / "backbone.safetensors")
    model = load_backbone(None, weights=tmp_path / "backbone.safetensors")
    x = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)["x_prenorm"], source.forward_features(x)["x_prenorm"])
    # 0, the model's other way to say "no LayerScale", rebuilds it too
    (tmp_path / "backbone.json").write_text(json.dumps({**source.arch_kwargs(), "init_values": 0}))
    model = load_backbone(None, weights=tmp_path / "backbone.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x)["x_prenorm"], source.forward_features(x)["x_prenorm"])


def test_architecture_json_without_weights_names_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(BASE_ARCH))
    with pytest.raises(ValueError) as info:
        load_backbone(str(path))  # weights="official": an architecture file has none
    msg = str(info.value)
    for way in ("weights=FILE", "weights=None", "--weights FILE", "--weights random"):
        assert way in msg, msg


def test_a_users_text_file_is_not_a_weight_file_and_is_not_to_be_deleted(tmp_path):
    """A file of the user's given as weights by mistake: the error says what it is and what to give,
    without telling the user to delete it or fetch it again (that advice is for the weights cache)."""
    notes = tmp_path / "notes.pth"
    notes.write_text("x = 1\n")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(notes)
    msg = str(info.value)
    assert msg.startswith(str(notes)) and "text file" in msg and "give a weight file" in msg, msg
    assert "delete" not in msg and "fetch" not in msg, msg


def test_a_safetensors_file_written_twice_is_the_same_bytes(tmp_path):
    """safetensors writes the metadata in the order of a hash map seeded anew for each file: two writes of
    the same features or weights differed in bytes, so a checksum or cmp could not show that they agree.
    save_safetensors puts the metadata in key order (escapes and non-ASCII values included)."""
    from safetensors import safe_open

    from dinov2_dense.checkpoints import save_safetensors

    metadata = {f"key{i}": f'value "{i}"\n\u00e9' for i in range(8)}
    written = set()
    for i in range(4):
        path = save_safetensors({"b": torch.zeros(2), "a": torch.arange(3.0)}, tmp_path / f"{i}.safetensors", metadata)
        written.add(path.read_bytes())
    assert len(written) == 1
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata and torch.equal(f.get_tensor("a"), torch.arange(3.0))
