"""Every ```python block of README.md runs as written, on its own, in a fresh interpreter.

Each block runs in a subprocess whose working directory holds the files a user would have and
the snippets name (``a.jpg``, ``b.jpg``, ``c.jpg``, a Hugging Face folder ``facebook-dinov2-small/``,
a timm file ``vit_small_patch14_dinov2.safetensors``, a training checkpoint
``teacher_checkpoint.pth``, a head training run ``runs/ade/``), with ``$DINOV2_DENSE_WEIGHTS`` pointing at random weights under the
official file names, downloads forbidden, and an empty torch hub. A block added to the README is
picked up without touching this file; one that names another user file needs it added to
``user_files`` below.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def python_blocks(text: str) -> list[tuple[str, str]]:
    """(id, source) of each ```python block; the id is the heading above it (numbered if repeated)."""
    blocks, heading, fence, code, seen = [], "top", None, [], {}
    for line in text.splitlines():
        if fence is None:
            if line.strip().startswith("```"):
                fence, code = line.strip()[3:].strip(), []
            elif m := re.match(r"#+\s+(.+)", line):
                heading = m.group(1).strip()
        elif line.strip() == "```":
            if fence in ("python", "python3", "py"):
                seen[heading] = seen.get(heading, 0) + 1
                name = heading if seen[heading] == 1 else f"{heading} {seen[heading]}"
                blocks.append((name, textwrap.dedent("\n".join(code)) + "\n"))
            fence = None
        else:
            code.append(line)
    return blocks


def test_block_parser():
    text = "# A\n```bash\n# not a heading\nls\n```\n```python\nx = 1\n```\n## B\n```python\ny = 2\n```\n```python\nz = 3\n```\n"
    assert python_blocks(text) == [("A", "x = 1\n"), ("B", "y = 2\n"), ("B 2", "z = 3\n")]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert len(BLOCKS) > 0, f"no ```python blocks found in {README}"


# -- files the snippets read ----------------------------------------------------------------
@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> Path:
    """Random weights under the official file names: ViT-S/14 (plain and reg4) and two head files."""
    from dinov2_dense.hub import build_backbone
    from dinov2_dense.zoo import build_model

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    backbone = build_backbone("dinov2_vits14")
    torch.save(backbone.state_dict(), root / "dinov2_vits14_pretrain.pth")
    torch.save(build_backbone("dinov2_vits14_reg").state_dict(), root / "dinov2_vits14_reg4_pretrain.pth")
    for name in ("dinov2_vits14_ade20k_linear", "dinov2_vits14_nyu_dpt"):
        model = build_model(name, backbone=backbone)  # random head of the official architecture
        head = {k: v for k, v in model.state_dict().items() if k.startswith("decode_head.")}
        torch.save({"state_dict": head}, root / f"{name}_head.pth")  # the official wrapper
    return root


@pytest.fixture(scope="module")
def user_files(tmp_path_factory, weights_dir) -> Path:
    """Images and checkpoints in the formats a user brings (random weights)."""
    import skimage.data
    import transformers
    from PIL import Image

    root = tmp_path_factory.mktemp("user_files")
    for name, image in (("a.jpg", skimage.data.astronaut()), ("b.jpg", skimage.data.chelsea()),
                        ("c.jpg", skimage.data.coffee())):
        Image.fromarray(np.asarray(image)).resize((224, 224)).save(root / name)  # small: a fast test

    official = torch.load(weights_dir / "dinov2_vits14_pretrain.pth", weights_only=True)
    # timm vit_small_patch14_dinov2: the official keys without the (inference-unused) mask token
    from dinov2_dense import save_safetensors

    save_safetensors({k: v for k, v in official.items() if k != "mask_token"},
                     root / "vit_small_patch14_dinov2.safetensors")
    # an official training checkpoint: teacher.backbone.* beside the DINO head
    teacher = {f"backbone.{k}": v for k, v in official.items()}
    teacher["dino_head.last_layer.weight_g"] = torch.ones(16, 1)
    torch.save({"teacher": teacher, "iteration": 1000}, root / "teacher_checkpoint.pth")
    # a Hugging Face save_pretrained folder of dinov2-small
    config = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                       patch_size=14, image_size=518)
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(root / "facebook-dinov2-small")
    # a training run's work dir (its checkpoint and config copy): a tiny head trained for one iteration
    from dinov2_dense.cli import main
    from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout

    write_ade20k_layout(root / "scenes", 2, 1, config=SceneConfig(size=(112, 112)), seed=0, progress=False)
    options = {**{f"{split}_dataloader.dataset.root": str(root / "scenes") for split in ("train", "val", "test")},
               "train_cfg.max_iters": 1, "train_cfg.val_interval": 1000, "train_dataloader.batch_size": 2,
               "param_scheduler.0.end": 1, "param_scheduler.1.end": 1}
    assert main(["train", str(REPO / "configs/segmentation/tiny_synthetic_linear.py"), "--work-dir",
                 str(root / "runs" / "ade"), "--cfg-options", *(f"{k}={v}" for k, v in options.items())]) == 0
    (root / "runs" / "ade" / "iter_1.pth").rename(root / "runs" / "ade" / "iter_40000.pth")  # the README's name
    return root


# -- one case per block -------------------------------------------------------------------
@pytest.mark.parametrize("source", [s for _, s in BLOCKS], ids=[n for n, _ in BLOCKS])
def test_readme_block_runs(source, weights_dir, user_files, tmp_path):
    for entry in user_files.iterdir():
        (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    (tmp_path / "snippet.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DINOV2_DENSE_")}
    env.update(
        DINOV2_DENSE_WEIGHTS=str(weights_dir), DINOV2_DENSE_OFFLINE="1", TORCH_HOME=str(tmp_path / "torch_home"),
        HF_HUB_OFFLINE="1", MPLBACKEND="Agg", TQDM_DISABLE="1",
        # one thread: on a small shared machine, two spinning OpenMP threads ran these 2-4x slower
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    )
    proc = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README block failed:\n{source}\n--- stderr ---\n{proc.stderr[-6000:]}"
