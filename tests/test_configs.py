"""Every config parses, names classes that exist, and (for ViT-S and the tiny ones) builds and runs."""

from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import heads
from dinov2_dense.data import pipelines
from dinov2_dense.engine import DATASETS, FUNCTIONS, METRICS, MODELS
from heads.settings import BACKBONE_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for d in ("segmentation", "depth") for p in (ROOT / "configs" / d).glob("*.py"))


def test_the_promised_configs_exist():
    names = {p.stem for p in CONFIGS}
    for size in "sblg":
        for ds in ("ade20k", "voc2012", "cityscapes", "synthetic"):
            for kind in ("linear", "ms", "dpt"):
                assert f"dinov2_vit{size}14_{ds}_{kind}" in names
        for ds in ("nyu", "kitti", "synthetic"):
            for kind in ("linear", "linear4", "dpt"):
                assert f"dinov2_vit{size}14_{ds}_{kind}" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_names_real_classes(path):
    cfg = Config.fromfile(str(path))
    model = cfg.model
    assert MODELS.get(model.type) is not None
    assert hasattr(heads, model.head.type)
    for split in ("train", "val", "test"):
        loader = cfg[f"{split}_dataloader"]
        assert DATASETS.get(loader.dataset.type) is not None
        assert FUNCTIONS.get(loader.collate_fn.type) is not None
        if loader.dataset.get("pipeline"):
            assert callable(getattr(pipelines, loader.dataset.pipeline.type))
    assert METRICS.get(cfg.val_evaluator.type) is not None
    if isinstance(model.backbone, str):
        size = BACKBONE_SETTINGS[model.backbone[len("dinov2_vit")]]
        assert max(model.layers) < size.depth
        head = model.head
        dim = size.embed_dim
        assert head.get("in_channels", [dim])[0] == dim and head.get("embed_dim", dim) == dim
    loss_names = [l.type for l in model.get("losses") or []]
    assert all(hasattr(heads, n) for n in loss_names)


@pytest.mark.parametrize("path", [p for p in CONFIGS if "vits14" in p.stem or "tiny" in p.stem][::3],
                         ids=lambda p: p.stem)
def test_config_model_builds_and_runs(path):
    cfg = Config.fromfile(str(path))
    model_cfg = dict(cfg.model)
    model_cfg["backbone_weights"] = None
    model = MODELS.build(model_cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 56, 70), mode="tensor")
    channels = 1 if model.task == "depth" else model.decode_head.state_dict()["conv_seg.weight"].shape[0]
    assert out.shape == (1, channels, 56, 70)


def test_dense_model_from_a_zoo_name_keeps_official_settings():
    model = MODELS.build(dict(type="DenseModel", zoo="dinov2_vits14_nyu_linear4", backbone_weights=None))
    assert model.task == "depth" and model.predictor.layers == [2, 5, 8, 11] and model.predictor.max_depth == 10.0
    assert [type(l).__name__ for l in model.losses] == ["SigLoss", "GradientLoss"]
    assert set(k.split(".")[0] for k in model.state_dict()) == {"decode_head"}  # frozen backbone not saved
    with pytest.raises(ValueError, match="zoo=..."):
        MODELS.build(dict(type="DenseModel", backbone="dinov2_vits14", backbone_weights=None))


def test_committed_configs_are_what_the_generator_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_configs", ROOT / "tools" / "make_configs.py")
    make_configs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_configs)
    files = make_configs.generate()
    assert len(files) == 84
    stale = [rel for rel, text in files.items() if (ROOT / "configs" / rel).read_text() != text]
    assert not stale, f"run python tools/make_configs.py: {stale}"
