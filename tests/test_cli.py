"""The `dinov2-dense` command and the torch.hub entry points, on weights we make ourselves."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from dinov2_dense import extract_features, load_backbone
from dinov2_dense.cli import main
from dinov2_dense.hub import DEFAULT_EMBEDDED, build_backbone

from .conftest import randomize_

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def weights_dir(tmp_path, torch_home, monkeypatch):
    """$DINOV2_DENSE_WEIGHTS holding a random-weight dinov2_vits14_pretrain.pth; downloads forbidden."""
    folder = tmp_path / "weights"
    folder.mkdir()
    model = randomize_(build_backbone("dinov2_vits14"), seed=5)
    torch.save(model.state_dict(), folder / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(folder))
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    return folder


@pytest.fixture
def image(tmp_path):
    import cv2

    rng = np.random.default_rng(0)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    return path


def test_info_lists_zoo_and_where_weights_are(weights_dir, monkeypatch, capsys):
    monkeypatch.delenv("DINOV2_DENSE_OFFLINE", raising=False)  # (info itself downloads nothing)
    assert main(["info", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) >= {"dinov2_vits14", "dinov2_vitg14_reg", "dinov2_vitl14"}
    assert rows["dinov2_vits14"]["found"] == str(weights_dir / "dinov2_vits14_pretrain.pth")
    assert rows["dinov2_vitb14"]["found"] is None
    assert rows["dinov2_vitg14_kitti_dpt"]["file"] == "dinov2_vitg14_kitti_dpt_head.pth"
    assert rows["dinov2_vits14_ade20k_ms"]["found"] is None and rows["dinov2_vits14_ade20k_ms"]["kind"] == "model"
    assert str(weights_dir / "dinov2_vitb14_pretrain.pth") in rows["dinov2_vitb14"]["looked"]
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "dinov2_vitg14_reg4_pretrain.pth" in text and "not found" in text
    assert "missing files are downloaded on first use" in text


@pytest.mark.parametrize("rank", [0, 1])
def test_info_under_torchrun_lists_once_per_machine(rank, weights_dir, monkeypatch, capsys):
    """Every process printed the list: two JSON documents in one file under `torchrun ... info --json`."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    assert main(["info", "--json"]) == 0
    out = capsys.readouterr().out
    assert (out == "") == (rank == 1), out[:200]
    if rank == 0:
        assert {r["name"] for r in json.loads(out)} >= {"dinov2_vits14"}


def test_info_says_no_download_where_downloads_are_forbidden(weights_dir, monkeypatch, capsys):
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "missing files are not downloaded: DINOV2_DENSE_OFFLINE is set" in text and "first use" not in text


def test_starting_a_command_does_not_import_torchs_fsdp():
    """FSDP's package takes about a second to import, paid by every command; the backbone checks for
    a sharded module without importing it (it is loaded once anything shards)."""
    code = "import sys, dinov2_dense.cli, dinov2_dense.models; print('torch.distributed.fsdp' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-2000:]


def test_features_npy_matches_library(weights_dir, image, tmp_path):
    out = tmp_path / "f.npy"
    assert main(["features", str(image), str(image), "--model", "dinov2_vits14", "--layers", "8", "11",
                 "--out", str(out)]) == 0
    array = np.load(out)
    assert array.shape == (2, 2, 384, 5, 6)  # (images, layers, C, ceil(60/14), ceil(80/14))
    model = load_backbone("dinov2_vits14")
    ref = extract_features(model, str(image), layers=[8, 11])
    np.testing.assert_allclose(array[0, 1], ref.maps[11][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(array[1, 0], ref.maps[8][0].numpy(), atol=1e-5)


def test_features_safetensors_mixed_sizes(weights_dir, image, tmp_path, capsys):
    import cv2

    other = tmp_path / "gray16.png"
    cv2.imwrite(str(other), (np.arange(30 * 45, dtype=np.uint16).reshape(30, 45) * 40))
    out = tmp_path / "f.safetensors"
    assert main(["features", str(image), str(other), "--out", str(out)]) == 0
    # the summary names both shapes (it named the last batch's alone)
    assert "maps of 2 shapes: (384, 5, 6) (1 image), (384, 3, 4) (1 image)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        assert json.loads(meta["layers"]) == [11]
        assert f.get_tensor("0/layer11").shape == (384, 5, 6)
        assert f.get_tensor("1/layer11").shape == (384, 3, 4)
        assert f.get_tensor("1/cls11").shape == (384,)
    # .npy cannot hold maps of two sizes: refused (exit code 2, one line), and nothing is written
    npy = tmp_path / "f.npy"
    assert main(["features", str(image), str(other), "--out", str(npy)]) == 2
    assert not npy.exists()


def test_features_are_written_batch_by_batch_in_input_order(tmp_path, monkeypatch):
    """features writes each batch as it comes (the .npy through a memory map): images of two sizes
    are batched by size, out of input order, yet each row is its own image's maps; the .safetensors
    keys, paddings and sizes follow the input too. A run that fails half way leaves the old file."""
    import cv2

    import dinov2_dense.features as features

    from .conftest import tiny_vit

    model = tiny_vit(depth=2)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    rng = np.random.default_rng(0)
    images = []
    for i, hw in enumerate([(40, 50), (30, 33), (40, 50), (30, 33), (40, 50)]):  # batches [0, 2], [4], [1, 3]
        images.append(str(tmp_path / f"im{i}.png"))
        cv2.imwrite(images[-1], rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
    common = ["features", *images, "--weights", str(tmp_path / "backbone.pth"), "--batch-size", "2"]
    assert main([*common, "--size", "28", "42", "--layers", "0", "1", "--out", str(tmp_path / "f.npy")]) == 0
    array = np.load(tmp_path / "f.npy")
    assert array.shape == (5, 2, model.embed_dim, 2, 3)
    for i, path in enumerate(images):
        want = extract_features(model, path, layers=[0, 1], size=(28, 42))
        np.testing.assert_allclose(array[i, 1], want.maps[1][0].numpy(), atol=1e-5)
        np.testing.assert_allclose(array[i, 0], want.maps[0][0].numpy(), atol=1e-5)

    for size in ([], ["--size", "28", "42"]):  # with --size, both sizes share batches ([1, 3], [0, 2], [4])
        assert main([*common, *size, "--out", str(tmp_path / "f.safetensors"), "--overwrite"]) == 0
        with safe_open(str(tmp_path / "f.safetensors"), "pt") as f:
            meta = f.metadata()
            for i, path in enumerate(images):
                want = extract_features(model, path, size=(28, 42) if size else None)
                torch.testing.assert_close(f.get_tensor(f"{i}/layer1"), want.maps[1][0], atol=1e-5, rtol=0)
                torch.testing.assert_close(f.get_tensor(f"{i}/cls1"), want.cls_tokens[1][0], atol=1e-5, rtol=0)
                assert json.loads(meta["image_sizes"])[i] == list(want.image_size) == list(cv2.imread(path).shape[:2])
                assert json.loads(meta["input_sizes"])[i] == list(want.input_size)
                assert json.loads(meta["padding"])[i] == list(want.padding)

    real = features.feature_batches

    def failing(*a, **k):
        batches = real(*a, **k)
        yield next(batches)
        raise OSError("disk gone")

    monkeypatch.setattr(features, "feature_batches", failing)
    before = (tmp_path / "f.npy").read_bytes()
    assert main([*common, "--size", "28", "42", "--out", str(tmp_path / "f.npy")]) == 2
    assert (tmp_path / "f.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["f.npy"] and not list(tmp_path.glob(".*"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_features_on_cuda_written_batch_by_batch_match_the_cpu(tmp_path):
    """On a GPU each batch is read back (pinned, non-blocking) while the next runs, the workers' batches
    come pinned: the .npy and .safetensors equal the CPU's to float tolerance."""
    import cv2

    from .conftest import tiny_vit

    model = tiny_vit(depth=2)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    rng = np.random.default_rng(1)
    images = []
    for i in range(9):
        images.append(str(tmp_path / f"im{i}.png"))
        cv2.imwrite(images[-1], rng.integers(0, 255, (40 + 3 * (i % 2), 50, 3), dtype=np.uint8))
    common = ["features", *images, "--weights", str(tmp_path / "backbone.pth"), "--batch-size", "2",
              "--num-workers", "2", "--size", "28", "42"]
    for device in ("cpu", "cuda"):
        assert main([*common, "--device", device, "--out", str(tmp_path / f"{device}.npy")]) == 0
        assert main([*common, "--device", device, "--out", str(tmp_path / f"{device}.safetensors")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cuda.npy"), np.load(tmp_path / "cpu.npy"), atol=1e-4, rtol=0)
    with safe_open(str(tmp_path / "cpu.safetensors"), "pt") as cpu, safe_open(str(tmp_path / "cuda.safetensors"), "pt") as gpu:
        assert set(cpu.keys()) == set(gpu.keys()) and cpu.metadata()["padding"] == gpu.metadata()["padding"]
        for key in cpu.keys():
            torch.testing.assert_close(gpu.get_tensor(key), cpu.get_tensor(key), atol=1e-4, rtol=0)


def test_features_errors_name_the_input_and_keep_old_output(weights_dir, image, tmp_path, capsys):
    out = tmp_path / "f.npy"
    np.save(out, np.zeros((1, 384, 4, 6), np.float32))  # an earlier run's features, which --overwrite may replace
    old = out.read_bytes()
    missing = tmp_path / "nope.jpg"
    assert main(["features", str(image), str(missing), "--out", str(out), "--overwrite"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert out.read_bytes() == old
    wide = tmp_path / "b.npy"  # an earlier ViT-B/14 run's (768 channels)
    np.save(wide, np.zeros((1, 768, 4, 6), np.float32))
    assert main(["features", str(image), "--model", "dinov2_vitb14", "--out", str(wide), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "dinov2_vitb14_pretrain.pth" in err and "https://" in err
    assert out.read_bytes() == old and np.load(wide).shape == (1, 768, 4, 6)
    assert main(["features", str(image), "--model", "no_such_model", "--out", str(out)]) == 2
    assert "dinov2_vits14" in capsys.readouterr().err  # the zoo is listed


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "dinov2_dense", "features", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--layers" in out.stdout and "--tile" in out.stdout


def test_output_into_a_pipe_whose_reader_left_ends_quietly(tmp_path):
    """`dinov2-dense info | head -1`: once the reader has gone, the command stops with the shell's code for
    SIGPIPE (141) and no error line or traceback."""
    reader, writer = os.pipe()
    os.close(reader)
    env = dict(os.environ, DINOV2_DENSE_WEIGHTS=str(tmp_path))
    env.pop("PYTHONUNBUFFERED", None)  # buffered, as stdout into a pipe is by default: the last flush meets it
    try:
        run = subprocess.run([sys.executable, "-m", "dinov2_dense.cli", "info"], stdout=writer, stderr=subprocess.PIPE,
                             text=True, env=env, timeout=120)
    finally:
        os.close(writer)
    assert run.returncode == 141 and run.stderr == "", run.stderr


def test_a_broken_pipe_elsewhere_is_still_an_error(monkeypatch, capsys):
    import dinov2_dense.cli as cli

    def fails(args):
        raise BrokenPipeError("a worker's pipe")

    monkeypatch.setattr(cli, "_cmd_info", fails)
    assert cli.main(["info"]) == 2  # standard output is fine: an error like any other OSError
    assert "dinov2-dense info: error: a worker's pipe" in capsys.readouterr().err


def test_torch_hub_local_entry_points(weights_dir):
    random_reg = torch.hub.load(str(ROOT), "dinov2_vits14_reg", source="local", pretrained=False)
    assert random_reg.num_register_tokens == 4 and random_reg.interpolate_antialias
    hub_model = torch.hub.load(str(ROOT), "dinov2_vits14", source="local")
    saved = torch.load(weights_dir / "dinov2_vits14_pretrain.pth", weights_only=True)
    for key, value in hub_model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert not hub_model.training


def test_features_safetensors_metadata_names_the_embedded_weights(image, tmp_path, torch_home):
    """The metadata says what was loaded: dinov2_dense_tiny's weights are embedded in the package (it
    said "official")."""
    out = tmp_path / "f.safetensors"
    assert main(["features", str(image), "--model", "dinov2_dense_tiny", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["weights"].startswith("embedded in the package (dinov2_dense_tiny.safetensors")
    assert meta["model"] == "dinov2_dense_tiny"


def test_info_shows_a_found_file_that_is_not_a_weight_file(torch_home, monkeypatch, capsys):
    """A proxy's HTML page under the official name in the hub cache: `info` prints what it is (the
    table showed it as found, like a good file; --json has the same `problem`)."""
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "dinov2_vits14_pretrain.pth").write_text("<html><body>Sign in to the network</body></html>")
    assert main(["info", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    problem = rows["dinov2_vits14"]["problem"]
    assert problem and "HTML" in problem and rows["dinov2_vitb14"]["problem"] is None
    assert main(["info"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("dinov2_vits14 "))
    assert str(cache / "dinov2_vits14_pretrain.pth") in line and f"NOT a whole weight file: {problem}" in line


def test_file_url_weights_find_the_architecture_beside_them(image, tmp_path, torch_home):
    """--weights file:///.../backbone.pth without --model takes backbone.json beside the file, as a
    plain path does (the URL was taken for dinov2_vits14, whose weights do not fit)."""
    from .conftest import tiny_vit

    model = tiny_vit(depth=2)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    out = tmp_path / "f.npy"
    assert main(["features", str(image), "--weights", (tmp_path / "backbone.pth").as_uri(), "--out", str(out)]) == 0
    want = extract_features(model, str(image))
    np.testing.assert_allclose(np.load(out)[0], want.maps[1][0].numpy(), atol=1e-5)


def test_a_hugging_face_folder_without_model_takes_its_config(image, tmp_path, torch_home):
    """--weights HF_FOLDER without --model: the architecture from its config.json (registers here), not
    dinov2_vits14, whose weights would not fit."""
    transformers = pytest.importorskip("transformers")
    from .conftest import randomize_

    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                 intermediate_size=192, image_size=56, patch_size=14)
    randomize_(transformers.Dinov2WithRegistersModel(cfg), seed=6).save_pretrained(tmp_path / "hf")
    out = tmp_path / "f.npy"
    assert main(["features", str(image), "--weights", str(tmp_path / "hf"), "--out", str(out)]) == 0
    model = load_backbone(None, weights=tmp_path / "hf")
    assert model.num_register_tokens == 4 and model.embed_dim == 48
    want = extract_features(model, str(image)).maps[1][0].numpy()
    np.testing.assert_allclose(np.load(out)[0], want, atol=1e-5)
    assert want.std() > 0.1


def test_layer_errors_name_the_option_given(image, tmp_path, torch_home, capsys):
    """--last 9 on a 4-block model names --last (it said layers=9, the library's argument)."""
    out = tmp_path / "f.npy"
    assert main(["features", str(image), "--model", "dinov2_dense_tiny", "--last", "9", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--last 9: dinov2_dense_tiny has 4 blocks" in err and "layers=" not in err
    assert main(["features", str(image), "--model", "dinov2_dense_tiny", "--layers", "1", "7", "--out", str(out)]) == 2
    assert "--layers 1 7: layer 7 out of range" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("command", ["pca", "features"])
def test_an_image_taken_for_a_size_value_gets_a_hint(command, capsys):
    """`pca --size 56 a.png`: --size takes several numbers, so it took the image; the error says how to
    order the arguments. The README's commands put --size after the images, and parse."""
    import re
    import shlex

    from dinov2_dense.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        main([command, "--size", "56", "a.png", "--out", "x.npy"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "'a.png' is not an integer; put --size after the images (see" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):  # a mistyped number after the images: no advice to move the option
        main([command, "a.png", "--size", "1.5", "--out", "x.npy"])
    err = capsys.readouterr().err
    assert "'1.5'" in err and "put --size" not in err
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for line in re.findall(rf"^dinov2-dense {command} .*$", readme, flags=re.M):
        args = build_parser().parse_args(shlex.split(line.split("  #")[0])[1:])
        assert args.images or getattr(args, "video", None), line


def test_pretrain_and_distill_without_weights_suggest_their_own_options(tmp_path, monkeypatch, capsys):
    """A missing teacher (distill) or pretrained student (pretrain) names options those commands have
    (--teacher, --cfg-options student.*), not the --model of the feature commands; the shipped ViT-S
    continued-pretraining config runs with the options the hint gives (the embedded backbone's sizes)."""
    (tmp_path / "no_weights_here").mkdir()
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(tmp_path / "no_weights_here"))
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    config = tmp_path / "tiny.py"
    config.write_text('student = dict(arch="custom", embed_dim=48, depth=2, num_heads=2, patch_size=14)\n'
                      'crops = dict(global_crops_size=56, local_crops_size=28, local_crops_number=2)\n'
                      f'train = dict(batch_size_per_gpu=4, num_workers=0, dataset={str(tmp_path)!r})\n')
    assert main(["distill", str(config), "--teacher", "dinov2_vits14", "--work-dir", str(tmp_path / "d"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "dinov2_vits14" in err and "--model" not in err and f"--teacher {DEFAULT_EMBEDDED} " in err, err
    small = ["train.dataset=synthetic:8", "train.batch_size_per_gpu=4", "crops.global_crops_size=56",
             "crops.local_crops_size=28", "crops.local_crops_number=2"]
    shipped = str(ROOT / "configs" / "pretrain" / "continued_vits14.py")
    run = ["pretrain", shipped, "--work-dir", str(tmp_path / "p"), "--no-progress", "--max-iters", "1"]
    assert main([*run, "--cfg-options", *small]) == 2
    err = capsys.readouterr().err
    assert "dinov2_vits14" in err and "--model" not in err and "--teacher" not in err, err
    hinted = err.strip().rsplit("--cfg-options ", 1)[1].split()
    assert f"student.pretrained_weights={DEFAULT_EMBEDDED}" in hinted, err
    assert main([*run, "--cfg-options", *small, *hinted]) == 0, capsys.readouterr().err


def test_features_say_which_block_each_index_of_the_npy_layer_axis_is(image, tmp_path, capsys):
    """--layers 3 0 -1 are read in block order, each once: a .npy (no metadata) has its layer axis told in
    the output line, with the order it took; a .safetensors names its keys by block."""
    npy, st = tmp_path / "f.npy", tmp_path / "f.safetensors"
    common = ["--model", DEFAULT_EMBEDDED, "--num-workers", "0", "--layers", "2", "0", "-1", "2"]
    assert main(["features", str(image), *common, "--out", str(npy)]) == 0
    out = capsys.readouterr().out
    depth = len(load_backbone(DEFAULT_EMBEDDED).blocks)
    blocks = sorted({0, 2, depth - 1})
    assert np.load(npy).shape[:2] == (1, len(blocks))
    assert f"(image, layer, channel, row, column); its layer axis holds blocks {blocks}, in that order" in out
    assert "--layers 2 0 -1 2 are taken in block order, each once" in out
    assert main(["features", str(image), *common, "--out", str(st)]) == 0
    assert "--layers 2 0 -1 2 are taken in block order, each once" in capsys.readouterr().out
    with safe_open(str(st), "pt") as f:
        assert json.loads(f.metadata()["layers"]) == blocks
    # in block order already: nothing to say
    assert main(["features", str(image), "--model", DEFAULT_EMBEDDED, "--num-workers", "0", "--layers", "0", "-1",
                 "--out", str(npy), "--overwrite"]) == 0
    assert "block order" not in capsys.readouterr().out


def test_weights_without_an_architecture_beside_them_say_so(image, tmp_path, torch_home, capsys):
    """A backbone file copied away from its export (no backbone.json beside it) and no --model: the error
    says that no architecture was given and none is beside the file, not that dinov2_vits14 (never named)
    cannot be loaded."""
    from pretrain.export import export_backbone

    from .conftest import tiny_vit

    export = export_backbone(tiny_vit(depth=2, dim=48, img=56), tmp_path / "export")
    copied = tmp_path / "elsewhere" / "weights.pth"
    copied.parent.mkdir()
    copied.write_bytes(export["pth"].read_bytes())
    assert main(["features", str(image), "--weights", str(copied), "--out", str(tmp_path / "f.npy"),
                 "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot load dinov2_vits14" not in err[0], err
    assert f"--weights {copied}: no --model was given and no architecture file is beside it" in err[0]
    assert "width 48, 2 blocks" in err[0] and "Give --model NAME" in err[0]
    # with its architecture named, or beside it, the same file loads
    assert main(["features", str(image), "--weights", str(copied), "--model", str(export["json"]),
                 "--out", str(tmp_path / "g.npy"), "--num-workers", "0"]) == 0


def test_a_weights_file_that_cannot_be_loaded_is_named_not_a_model_nobody_gave(image, tmp_path, torch_home, capsys):
    """--weights FILE without --model: a load error names that file, not dinov2_vits14 (only the default taken
    for it; it read "cannot load dinov2_vits14: ..."); with --model NAME it names the model, then the file."""
    bad = tmp_path / "bad.pth"
    bad.write_text("garbage")
    out = tmp_path / "f.npy"
    assert main(["features", str(image), "--weights", str(bad), "--out", str(out), "--num-workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dinov2_vits14" not in err, err
    assert f"error: cannot load {bad}: not a weight file: it is a text file of 7 bytes" in err, err
    assert main(["features", str(image), "--model", DEFAULT_EMBEDDED, "--weights", str(bad), "--out", str(out)]) == 2
    assert f"error: cannot load {DEFAULT_EMBEDDED}: {bad}: not a weight file" in capsys.readouterr().err
    assert not out.exists()


def test_features_never_write_over_what_they_read(image, tmp_path, torch_home, monkeypatch, capsys):
    """--out that is the --weights file (or a hard link to it), a weight-like file in a --weights folder, is the zoo
    file that --weights official reads, or is an input image: refused before the model is built, naming
    the clash, and the input is left as it was (the weight file was overwritten, exit code 0)."""
    import shutil

    import dinov2_dense.hub as hub

    package = hub.BACKBONES[DEFAULT_EMBEDDED].package_file
    weights = tmp_path / "w.safetensors"
    shutil.copyfile(package, weights)
    os.link(weights, tmp_path / "link.safetensors")
    (tmp_path / "wdir").mkdir()
    as_npy = tmp_path / "img.npy"  # a PNG under another suffix still reads as an image
    shutil.copyfile(image, as_npy)
    zoo = tmp_path / "zoo.safetensors"
    shutil.copyfile(package, zoo)
    real_find = hub.find_weights
    monkeypatch.setattr(hub, "find_weights", lambda name: zoo if name == DEFAULT_EMBEDDED else real_find(name))
    monkeypatch.setattr(hub, "load_backbone", lambda *a, **k: pytest.fail("the model was built"))
    tiny = ["--model", DEFAULT_EMBEDDED]
    for args, out, said in (
            ([str(image), *tiny, "--weights", str(weights)], weights, "is the --weights file"),
            ([str(image), *tiny, "--weights", str(weights)], tmp_path / "link.safetensors", "is the --weights file"),
            ([str(image), *tiny, "--weights", str(tmp_path / "wdir")], tmp_path / "wdir" / "f.safetensors",
             "lies inside the --weights folder"),
            ([str(image), *tiny], zoo, f"is the weights file of {DEFAULT_EMBEDDED}"),
            ([str(as_npy), *tiny, "--weights", "random"], as_npy, "is an input image")):
        before = Path(out).read_bytes() if Path(out).is_file() else None
        assert main(["features", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--out {out} {said}" in err and "give another --out" in err, err
        assert (Path(out).read_bytes() if Path(out).is_file() else None) == before
    assert weights.read_bytes() == package.read_bytes() == zoo.read_bytes()
    assert not (tmp_path / "wdir" / "f.safetensors").exists()
    # an .npy in a weights folder is no file that loading the folder reads: it may go there
    from dinov2_dense.cli import _refuse_writing_over_inputs

    _refuse_writing_over_inputs(tmp_path / "wdir" / "f.npy", [("the --weights folder", tmp_path / "wdir")], "--out")


def test_an_option_after_double_dash_is_named_not_taken_for_an_image(image, tmp_path, capsys):
    """After `--` every argument is an image: an option of the command there (no file of that name)
    gets one line saying to put it before `--` (it said "--out is required"); the README's form parses."""
    from dinov2_dense.cli import build_parser

    out = str(tmp_path / "f.npy")
    for argv in (["features", "--size", "56", "--", str(image), "--weights", "random", "--out", out],
                 ["features", "--out", out, "--", str(image), "--weights=random"],
                 ["pca", "--size", "56", "--", str(image), "--out", out]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip()
        option = "--out" if argv[0] == "pca" else "--weights"
        assert len(err.splitlines()) == 1 and f"error: {option} comes after `--`" in err, err
        assert f"put {option} and every other option before `--`" in err
    assert not Path(out).exists()
    args = build_parser().parse_args(["features", "--size", "56", "--out", out, "--", str(image)])
    assert args.images == [str(image)] and args.size == [56] and args.out == out


def test_features_safetensors_metadata_say_how_to_compute_them_again(image, tmp_path, torch_home):
    """The metadata hold the seed of random weights and the settings (size, fit, tile, norm, ...), and
    each image's size before and after resizing and padding: the next reader computes the same maps from
    them alone, and finds the image inside the padded input."""
    out = tmp_path / "f.safetensors"
    assert main(["features", str(image), "--model", DEFAULT_EMBEDDED, "--weights", "random", "--seed", "7",
                 "--size", "56", "--no-norm", "--out", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        meta, saved = f.metadata(), f.get_tensor("0/layer3")
    info = {k: json.loads(v) for k, v in meta.items() if k not in ("model", "weights")}
    assert meta["weights"] == "random" and info["seed"] == 7 and info["size"] == 56 and info["fit"] == "pad"
    assert info["tile"] is None and info["norm"] is False and info["resize_8bit"] is False
    assert info["image_sizes"] == [[60, 80]] and info["input_sizes"] == [[56, 84]]  # 56x75 padded to the grid
    (h, w), (t, b, l, r) = info["input_sizes"][0], info["padding"][0]
    assert (h - t - b, w - l - r) == (56, 75)
    torch.manual_seed(info["seed"])
    model = load_backbone(meta["model"], weights=None)
    again = extract_features(model, str(image), layers=info["layers"], size=info["size"], fit=info["fit"],
                             tile=info["tile"], norm=info["norm"], resize_8bit=info["resize_8bit"])
    torch.testing.assert_close(saved, again.maps[3][0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("command", ["features", "pca"])
def test_an_image_after_the_options_names_the_command_and_where_images_go(command, capsys):
    """`features a.jpg --layers 1 2 --out f.npy --model M b.jpg`: argparse takes the images given together,
    once, and left b.jpg over. The error named the program (`dinov2-dense: error:`), not the command, and
    gave no hint; it now says both, as the other errors of a command do."""
    with pytest.raises(SystemExit) as exit_:
        main([command, "photo1.jpg", "--layers" if command == "features" else "--layer", "1", "--out", "pq.npy",
              "--model", "dinov2_dense_tiny", "photo2.jpg", "skimage:coins"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"dinov2-dense {command}: error: unrecognized arguments: photo2.jpg skimage:coins; put the images "
                   f"together, before the options (see dinov2-dense {command} --help)\n")
    # an unknown option, or a stray number, is no image out of place: the command is named, no advice to move
    for extra in (["--bogus", "x.png"], ["3"]):
        with pytest.raises(SystemExit):
            main([command, "a.png", "--out", "f.npy", *extra])
        err = capsys.readouterr().err
        assert err.startswith(f"dinov2-dense {command}: error: unrecognized arguments: {' '.join(extra)} (see"), err


def test_a_second_knn_folder_names_the_command_and_that_it_takes_one(tmp_path, capsys):
    """knn takes one folder: a second one left over is refused under `dinov2-dense knn`, saying so."""
    (tmp_path / "other").mkdir()
    with pytest.raises(SystemExit) as exit_:
        main(["knn", str(tmp_path), "--model", "dinov2_dense_tiny", str(tmp_path / "other")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dinov2-dense knn: error: unrecognized arguments: {tmp_path / 'other'}; knn takes one "
                          "folder (one sub-folder per class, or train/ and val/ each with one per class) (see "
                          "dinov2-dense knn --help)"), err


@pytest.mark.parametrize("argv, named", [
    (["features", "a.jpg", "--model", "dinov2_dense_tiny", "--ouput", "g3.npy"],
     "unrecognized argument --ouput (did you mean --out?)"),
    (["features", "a.jpg", "--modle", "dinov2_dense_tiny", "--output=g3.npy", "--bogus"],
     "unrecognized arguments --modle (did you mean --model?), --output (did you mean --out?), --bogus"),
    (["curate", "images/", "--target", "5", "--ouput", "sel"], "unrecognized argument --ouput (did you mean --out?)"),
    (["synth", "--overwite"], "unrecognized argument --overwite (did you mean --overwrite?)"),
])
def test_a_mistyped_option_is_named_when_a_required_one_is_missing(argv, named, capsys):
    """`features a.jpg --model M --ouput g3.npy` said only "the following arguments are required: --out":
    argparse names left-over options only once every required one is there, and the typo that left it out
    went unnamed. The error names it now, with the option meant, in every command; a left-over typo
    with the required ones given gets the "did you mean" too."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the following arguments are required" in err, err
    assert f"; {named} (see dinov2-dense {argv[0]} --help)" in err, err
    with pytest.raises(SystemExit):
        main(["features", "a.jpg", "--out", "g.npy", "--sise", "224"])
    err = capsys.readouterr().err
    assert err.startswith("dinov2-dense features: error: unrecognized arguments: --sise 224; --sise: did you mean "
                          "--size? (see"), err
    # an abbreviation argparse takes, or a value after `--`, is no unknown option
    with pytest.raises(SystemExit):
        main(["features", "--mod", "dinov2_dense_tiny", "--", "--weird-name.png"])
    err = capsys.readouterr().err
    assert "required: --out (see" in err and "unrecognized" not in err, err


def test_version_and_a_mistyped_program_option(capsys):
    """`--version` was taken for a missing command; `--debg info` named no --debug (a command's options did)."""
    import dinov2_dense

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"dinov2-dense {dinov2_dense.__version__}"
    with pytest.raises(SystemExit) as done:
        main(["--debg", "info"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and err == ("dinov2-dense: error: unrecognized arguments: --debg; --debg: did you mean "
                                            "--debug? (see dinov2-dense --help)"), err
    with pytest.raises(SystemExit) as done:  # and without a command
        main(["--debg"])
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and err.startswith("dinov2-dense: error: the following arguments are required: command; "
                                                   "unrecognized argument --debg (did you mean --debug?)"), err
