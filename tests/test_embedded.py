"""The backbone embedded in the package (``dinov2_dense_tiny``): it loads by name with no network
and no weights directory, it is what its files say, it is listed by ``info``, and the demo falls
back to it when the official weights are not on this machine."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dinov2_dense import hub
from dinov2_dense.cli import main
from dinov2_dense.demo import default_backbone
from dinov2_dense.hub import BACKBONES, DEFAULT_EMBEDDED, EMBEDDED_DIR, architecture, load_backbone

ROOT = Path(__file__).resolve().parents[1]


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the embedded backbone must not download anything")

    monkeypatch.setattr(hub, "download", refuse)
    monkeypatch.setattr(hub, "_fetch_url", refuse)


def test_the_embedded_backbone_loads_by_name_offline(torch_home, monkeypatch):
    _no_network(monkeypatch)
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    spec = BACKBONES[DEFAULT_EMBEDDED]
    assert spec.embedded and spec.package_file == EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.safetensors"
    model = load_backbone(DEFAULT_EMBEDDED)
    arch = json.loads((EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.json").read_text())
    assert (model.embed_dim, len(model.blocks), model.num_heads) == (arch["embed_dim"], arch["depth"], arch["num_heads"])
    stored = load_file(spec.package_file)
    state = model.state_dict()
    assert set(stored) == set(state)
    for key, value in stored.items():
        torch.testing.assert_close(state[key], value.to(state[key].dtype), rtol=0, atol=0, msg=key)
    # trained, not an init: the blocks moved far from what the architecture starts from
    torch.manual_seed(0)
    init = architecture(DEFAULT_EMBEDDED).state_dict()
    moved = (state["blocks.0.attn.qkv.weight"] - init["blocks.0.attn.qkv.weight"]).norm()
    assert moved > 0.5 * init["blocks.0.attn.qkv.weight"].norm()
    assert not torch.equal(state["blocks.0.ls1.gamma"], init["blocks.0.ls1.gamma"])
    # features at any size, as for the official backbones
    with torch.no_grad():
        out = model.forward_features(torch.rand(1, 3, 70, 42))
    assert out["x_norm_patchtokens"].shape == (1, 15, model.embed_dim)


def test_the_embedded_files_are_package_data_and_small():
    size = (EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.safetensors").stat().st_size
    assert size <= 25 * 2**20
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["dinov2_dense"]
    for name in (f"{DEFAULT_EMBEDDED}.safetensors", f"{DEFAULT_EMBEDDED}.json", f"{DEFAULT_EMBEDDED}.md"):
        assert (EMBEDDED_DIR / name).is_file(), name
        assert any(Path(f"weights/{name}").match(pattern) for pattern in data), name
    card = (EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.md").read_text()
    # the card's reproduce command names files that exist
    assert "tools/pretrain_dinov2_dense_tiny.sh" in card and (ROOT / "tools" / "pretrain_dinov2_dense_tiny.sh").is_file()
    for config in sorted((ROOT / "configs" / "pretrain" / "dinov2_dense_tiny").glob("*.py")):
        assert config.name in card, config.name


def test_a_missing_package_file_says_reinstall(torch_home, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "EMBEDDED_DIR", tmp_path)
    with pytest.raises(hub.WeightsNotFoundError, match="reinstall"):
        load_backbone(DEFAULT_EMBEDDED)


def test_info_lists_the_embedded_backbone(torch_home, capsys):
    assert main(["info"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if DEFAULT_EMBEDDED in l)
    assert "in the package" in line and str(EMBEDDED_DIR) in line
    assert main(["info", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[DEFAULT_EMBEDDED]["embedded"] and rows[DEFAULT_EMBEDDED]["found"]
    assert not rows["dinov2_vits14"]["embedded"]


def test_the_demo_prefers_official_weights_that_are_here(torch_home, monkeypatch, tmp_path):
    _no_network(monkeypatch)
    name, why = default_backbone()
    assert name == DEFAULT_EMBEDDED and "not on this machine" in why
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "dinov2_vits14_pretrain.pth").write_bytes(b"not read here")
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(folder))
    name, why = default_backbone()
    assert name == "dinov2_vits14" and str(folder) in why


def test_the_reproduce_script_chains_the_stage_configs():
    """Each stage of configs/pretrain/dinov2_dense_tiny starts from the export of the stage before it
    (in the script's order), every config resolves, and the first starts from scratch."""
    import re

    from dinov2_dense.engine.entry import load_config
    from pretrain.config import resolve

    script = (ROOT / "tools" / "pretrain_dinov2_dense_tiny.sh").read_text()
    stages = re.search(r"STAGES=\(([^)]*)\)", script).group(1).split()
    folder = ROOT / "configs" / "pretrain" / "dinov2_dense_tiny"
    assert sorted(stages) == sorted(p.stem for p in folder.glob("*.py"))
    previous = None
    for stage in stages:
        cfg = load_config(str(folder / f"{stage}.py"), {}, None)
        assert Path(cfg.work_dir) == Path("work_dirs/dinov2_dense_tiny") / stage
        sections = resolve({k: v for k, v in cfg.to_dict().items() if k not in ("work_dir", "launcher")})
        start = sections["student"]["pretrained_weights"]
        expected = None if previous is None else f"work_dirs/dinov2_dense_tiny/{previous}/export/backbone.safetensors"
        assert start == expected, stage
        previous = stage
    arch = json.loads((EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.json").read_text())
    student = sections["student"]
    assert (student["embed_dim"], student["depth"], student["num_heads"]) == (arch["embed_dim"], arch["depth"], arch["num_heads"])


def test_the_reproduce_script_runs_every_stage_and_packages_the_last(tmp_path, monkeypatch, capsys):
    """tools/pretrain_dinov2_dense_tiny.sh end to end at a toy length (one iteration an "epoch", 3 a stage, batch
    4). Every stage but the last runs here as the script runs it (in this process: 7 fresh processes took a
    minute of the suite), each from the previous one's export. Then the script itself skips those, runs
    the last one through the `dinov2-dense` command from the previous stage's export, and packages it;
    a rerun skips all stages."""
    import re
    import shutil
    import subprocess

    script = ROOT / "tools" / "pretrain_dinov2_dense_tiny.sh"
    (tmp_path / "tools").mkdir()
    shutil.copy(script, tmp_path / "tools")
    shutil.copytree(ROOT / "configs" / "pretrain" / "dinov2_dense_tiny", tmp_path / "configs" / "pretrain" / "dinov2_dense_tiny")
    toy = ["--no-progress", "--cfg-options", "train.OFFICIAL_EPOCH_LENGTH=1", "train.batch_size_per_gpu=4",
           "train.num_workers=0", "optim.epochs=3"]
    stages = re.search(r"^STAGES=\((.*)\)$", script.read_text(), re.M).group(1).split()
    configs = sorted(p.stem for p in (tmp_path / "configs" / "pretrain" / "dinov2_dense_tiny").glob("*.py"))
    assert stages == configs  # every config is a stage, in the order of their names
    work = tmp_path / "work_dirs" / "dinov2_dense_tiny"
    monkeypatch.chdir(tmp_path)  # the stages name the previous export relative to the checkout
    for stage in stages[:-1]:
        assert main(["pretrain", f"configs/pretrain/dinov2_dense_tiny/{stage}.py", *toy]) == 0, capsys.readouterr().err
    cmd = ["bash", str(tmp_path / "tools" / "pretrain_dinov2_dense_tiny.sh"), *toy]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count(": done (") == len(stages) - 1 and f"{stages[-1]}: dinov2-dense pretrain" in run.stdout
    for stage in stages:
        assert (work / stage / "export" / "backbone.safetensors").is_file(), stage
    package = work / "package" / "dinov2_dense_tiny.safetensors"
    assert package.read_bytes() == (work / stages[-1] / "export" / "backbone.safetensors").read_bytes()
    model = load_backbone(None, weights=str(package))
    assert model.embed_dim == json.loads((EMBEDDED_DIR / f"{DEFAULT_EMBEDDED}.json").read_text())["embed_dim"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout.count(": done (") == len(stages), again.stdout
