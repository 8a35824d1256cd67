"""Training that goes wrong, and half precision that overflows (a review): a diverged `train` stops naming the
iteration instead of saving NaN heads that validation scored as plausible (an argmax of NaN is class 0), a
diverged last pretraining step is not exported, and NaN features or predictions are refused, naming the
images, where features, pca and predict wrote them without a word."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from dinov2_dense.checkpoints import nonfinite_keys
from dinov2_dense.cli import main
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
from dinov2_dense.features import NonfiniteFeaturesError, extract_features
from heads.losses import SigLoss
from heads.predictor import DensePredictor
from heads.linear import LinearHead
from pretrain.config import ConfigError, resolve
from tests.conftest import tiny_vit
from tests.test_pretrain_train import _py_config, tiny

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"


def _error(capsys, prog: str) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(f"dinov2-dense {prog}: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_train_stops_at_a_diverged_step_and_saves_no_nan_head(tmp_path, capsys):
    scenes = tmp_path / "ade"
    write_ade20k_layout(scenes, 6, 2, config=SceneConfig(size=(56, 56)), seed=0, progress=False)
    work = tmp_path / "run"
    opts = {**{f"{s}_dataloader.dataset.root": str(scenes) for s in ("train", "val", "test")},
            "train_cfg.max_iters": 12, "train_cfg.val_interval": 4, "train_dataloader.batch_size": 2,
            "default_hooks.checkpoint.interval": 1, "optim_wrapper.optimizer.lr": 1e30}
    assert main(["train", str(SEG_CFG), "--work-dir", str(work), "--cfg-options",
                 *(f"{k}={v}" for k, v in opts.items())]) == 2
    line = _error(capsys, "train")
    assert re.search(r"the loss is (nan|inf) at iteration \d+ \(loss_\w+ (nan|inf)\); stopped before this step",
                     line), line
    assert "optim_wrapper.optimizer.lr" in line
    for ckpt in work.glob("iter_*.pth"):  # whatever was saved before the stop is finite
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
        assert not nonfinite_keys(state), ckpt


def test_the_loss_check_names_the_iteration_and_the_terms():
    from mmengine.logging import MessageHub

    from dinov2_dense.engine.model import DenseModel, TrainingDiverged

    MessageHub.get_current_instance().update_info("iter", 6)
    model = DenseModel.__new__(DenseModel)  # parse_losses reads no attribute of the model
    loss, logged = DenseModel.parse_losses(model, {"loss_ce": torch.tensor(0.7), "loss_grad": torch.tensor(0.1)})
    assert float(loss) == pytest.approx(0.8)
    with pytest.raises(TrainingDiverged, match=r"the loss is nan at iteration 7 \(loss_ce 0.7, loss_grad nan\)"):
        DenseModel.parse_losses(model, {"loss_ce": torch.tensor(0.7), "loss_grad": torch.tensor(math.nan)})


def test_the_save_check_refuses_nan_trained_weights_and_statistics_and_leaves_a_frozen_backbone_alone():
    from dinov2_dense.engine.model import TrainingDiverged
    from dinov2_dense.engine.runner import _refuse_diverged

    model = torch.nn.Module()
    model.backbone = torch.nn.Linear(2, 2).requires_grad_(False)
    model.head = torch.nn.Sequential(torch.nn.BatchNorm1d(2), torch.nn.Linear(2, 3))
    with torch.no_grad():
        model.backbone.weight.fill_(math.nan)  # frozen: not this run's doing, and not in its checkpoint's head
    _refuse_diverged(model, "iter_2.pth")
    with torch.no_grad():
        model.head[0].running_var.fill_(math.inf)
    with pytest.raises(TrainingDiverged, match=r"1 trained tensor\(s\) hold NaN or infinite values \(head.0.running_var"
                                               r"\); stopped before writing iter_2.pth"):
        _refuse_diverged(model, "iter_2.pth")
    model.head[0].running_var.fill_(1.0)
    with torch.no_grad():
        model.head[1].weight[0, 0] = math.nan
    with pytest.raises(TrainingDiverged, match=r"\(head.1.weight\)"):
        _refuse_diverged(model, "iter_2.pth")


def test_amp_optim_wrapper_on_the_cpu_is_a_config_error(tmp_path, capsys):
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 "optim_wrapper.type=AmpOptimWrapper"]) == 2
    assert "optim_wrapper.type = 'AmpOptimWrapper'" in _error(capsys, "train")
    assert not (tmp_path / "w").exists()


def test_sigloss_is_nan_for_nan_predictions_and_zero_with_a_finite_gradient_for_a_perfect_one():
    gt = torch.rand(2, 1, 8, 8) * 5 + 0.5
    for bad in (math.nan, math.inf):
        pred = gt.clone().requires_grad_(True)
        with torch.no_grad():
            pred[0, 0, 3, 3] = bad
        assert not torch.isfinite(SigLoss()(pred, gt))  # (it was 0: a diverged head looked like a perfect fit)
    pred = gt.clone().requires_grad_(True)
    loss = SigLoss()(pred, gt)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(pred.grad).all()


def test_a_diverged_last_pretraining_step_is_not_exported(tmp_path, capsys):
    cfg = _py_config(tmp_path / "tiny.py", tiny(1, optim=dict(base_lr=1e30, epochs=1, warmup_epochs=0,
                                                              freeze_last_layer_epochs=0)))
    work = tmp_path / "run"
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress"]) == 2
    line = _error(capsys, "pretrain")
    assert re.search(r"the weights of 'backbone' after iteration 1 give NaN or infinite features .*it was not exported",
                     line) or re.search(r"the loss is (nan|inf) at iteration 1", line), line
    assert not (work / "export").exists()


@pytest.mark.parametrize("key, value", [("teacher.teacher_temp", math.inf), ("optim.base_lr", math.nan),
                                        ("dino.loss_weight", math.inf), ("optim.base_lr", 1e40)])
def test_pretraining_numbers_must_be_finite_in_float32(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} = {re.escape(repr(value))}: expected a finite number"):
        resolve(tiny(1, **{section: {name: value}}))


def test_a_learning_rate_beyond_float32_is_a_config_error(tmp_path, capsys):
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "w"), "--cfg-options",
                 "optim_wrapper.optimizer.lr=1e45"]) == 2
    assert "optim_wrapper.optimizer.lr = 1e+45: expected a positive number (within float32's range" in \
        _error(capsys, "train")


def test_nan_features_are_refused_naming_the_image(tmp_path):
    model = tiny_vit().eval()
    with torch.no_grad():
        model.blocks[0].mlp.fc2.weight.fill_(math.nan)
    image = torch.zeros(3, 28, 42)
    with pytest.raises(NonfiniteFeaturesError, match=r"image 0: the backbone gave NaN or infinite features .* "
                                                     r"damaged or come from a run that diverged"):
        extract_features(model, [image])


def test_float16_overflow_is_refused_with_its_cause(tmp_path):
    from dinov2_dense import load_backbone

    model = load_backbone("dinov2_dense_tiny")  # trained weights, as a reviewer scaled them
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight.mul_(1e6)  # activations far above float16's 65504
    image = "skimage:coins"
    assert all(torch.isfinite(m).all() for m in extract_features(model, image).maps.values())  # float32: finite
    with pytest.raises(NonfiniteFeaturesError, match="float16 overflows on this model's activations"):
        extract_features(model, image, autocast=torch.float16)
    with pytest.raises(NonfiniteFeaturesError, match="float16 overflows"):
        extract_features(model.half(), image)


def test_pca_names_the_file_whose_features_are_nan(tmp_path, capsys):
    from dinov2_dense.viz.pca import pca_maps

    model = tiny_vit().eval()
    with torch.no_grad():
        model.norm.weight.fill_(math.nan)
    with pytest.raises(NonfiniteFeaturesError, match=r"^skimage:coins: the backbone gave NaN"):
        pca_maps(model, ["skimage:coins"], size=56)


def test_predict_refuses_nan_outputs():
    backbone = tiny_vit().eval()
    predictor = DensePredictor(backbone, LinearHead(in_channels=[backbone.embed_dim], num_classes=3),
                               task="segmentation", layers=[len(backbone.blocks) - 1])
    image = torch.zeros(1, 3, 28, 28)
    assert torch.isfinite(predictor.predict(image)).all()
    with torch.no_grad():
        predictor.decode_head.conv_seg.weight.fill_(math.nan)
    with pytest.raises(ValueError, match=r"predict\(\): the model gave NaN or infinite outputs .* diverged"):
        predictor.predict(image)


def test_only_the_images_whose_features_are_nan_are_named():
    from dinov2_dense.features import _refuse_nonfinite_features

    maps, cls = torch.zeros(4, 8, 2, 3), torch.zeros(4, 8)
    maps[2, 0, 1, 1] = math.inf
    cls[3, 5] = math.nan
    with pytest.raises(NonfiniteFeaturesError, match=r"^c.png, d.png: .*\(2 of 224 values\): float16") as raised:
        _refuse_nonfinite_features([maps, cls], ["a.png", "b.png", "c.png", "d.png"], half=True)
    assert raised.value.indices == [2, 3] and raised.value.named(["w", "x", "y", "z"]).names == ["y", "z"]
    with pytest.raises(NonfiniteFeaturesError, match=r"^image 2, image 3: "):  # a batch tensor's images
        _refuse_nonfinite_features([maps, cls], [""], half=False)


def _folder(root: Path, n: int = 2) -> Path:
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (28, 28), (40 * i, 80, 120)).save(root / c / f"{i}.png")
    return root


def test_knn_and_curate_name_the_files_whose_features_are_nan(tmp_path):
    from dinov2_dense.evaluation.knn import folder_features
    from pretrain.curation.store import embed_images

    model = tiny_vit().eval()
    with torch.no_grad():
        model.norm.weight.fill_(math.nan)
    root = _folder(tmp_path / "pool")
    with pytest.raises(NonfiniteFeaturesError, match=rf"^{re.escape(str(root / 'a' / '0.png'))}, "):
        folder_features(model, root, size=28, progress=False)
    with pytest.raises(NonfiniteFeaturesError, match=rf"^{re.escape(str(root / 'a' / '0.png'))}, "):
        embed_images(model, root, tmp_path / "store", size=28, progress=False)
