"""What `pip install .` installs: the package data a user's commands need (the embedded backbone, the
configs that the README and the messages name), and the configs found by the names the README gives from
any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dinov2_dense.cli import main
from dinov2_dense.engine.entry import PACKAGED_CONFIGS, config_path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_the_configs_and_the_embedded_backbone_and_no_tests(tmp_path):
    """Built from a copy of the tracked files: a build in the checkout packs what an earlier build left in its
    build/ folder, so a package-data line taken out went unnoticed (a diff review)."""
    import shutil

    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    src, tracked = tmp_path / "src", [n for n in listed.stdout.split("\0") if n and os.path.lexists(ROOT / n)]
    for name in tracked:  # (a tracked file deleted from the working tree is left out, as a build would)
        target = src / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target, follow_symlinks=False)  # dinov2_dense/configs stays a link
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                          "-w", str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    configs = {n for n in tracked if n.startswith("configs/") and n.endswith((".py", ".md"))}
    assert configs and {f"dinov2_dense/{c}" for c in configs} <= names  # every config, under dinov2_dense/configs
    assert {"dinov2_dense/weights/dinov2_dense_tiny.safetensors", "dinov2_dense/weights/dinov2_dense_tiny.json",
            "dinov2_dense/weights/dinov2_dense_tiny.md"} <= names
    assert not [n for n in names if n.startswith(("tests/", "tools/", "benchmarks/"))]


def test_a_config_named_as_the_readme_does_is_found_from_any_folder(tmp_path, monkeypatch, capsys):
    """After `pip install`, `dinov2-dense train configs/segmentation/embedded_synthetic_linear.py` (the README's
    and the messages' name) said "no such config file" from any folder but a checkout's root."""
    monkeypatch.chdir(tmp_path)
    name = "configs/segmentation/tiny_synthetic_linear.py"
    found = config_path(name)
    assert Path(found) == PACKAGED_CONFIGS / "segmentation" / "tiny_synthetic_linear.py"
    assert Path(found).read_bytes() == (ROOT / name).read_bytes()
    assert capsys.readouterr().err.strip() == f"note: {name} is not in this folder: the copy installed with " \
                                               f"dinov2-dense, {found}"
    for key in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):  # under a launcher, process 0 alone says so
        monkeypatch.setenv(key, "1")
        assert config_path(name) == found and capsys.readouterr().err == ""
        monkeypatch.delenv(key)
    # a command takes it (and goes on to what is really missing here: the data set)
    assert main(["test", name, "missing.pth", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert f"error: {found}: test_dataloader.dataset.root = 'data/synthetic/ade': no such folder" in err, err
    # a file of that name in this folder wins; another name is not looked for elsewhere, and the error says where
    # the installed configs are
    (tmp_path / "configs" / "segmentation").mkdir(parents=True)
    (tmp_path / name).write_text("x = 1\n")
    assert config_path(name) == name
    assert config_path("configs/segmentation/nonexistent.py") == "configs/segmentation/nonexistent.py"
    assert main(["train", "configs/segmentation/nonexistent.py", "--work-dir", str(tmp_path / "w2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"configs/segmentation/nonexistent.py: no such config file (those installed with "
                        f"dinov2-dense: {PACKAGED_CONFIGS})"), err
