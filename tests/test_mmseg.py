"""The mmsegmentation plugin (dinov2_dense.mmseg): the same predictions as DensePredictor in whole and
slide mode (and with the depth flip test), official-layout head files loading strictly, checkpoints
converted both ways, mmseg's Runner training and evaluating on synthetic scenes (mmseg's IoUMetric; for
depth our metric, with the numbers our engine reports), reproducible and resumable runs, and the core
importable without mmcv."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mmengine.config import ConfigDict

ROOT = Path(__file__).resolve().parents[1]


mmseg_plugin = pytest.importorskip("dinov2_dense.mmseg", reason="the mmseg extra is not installed",
                                   exc_type=ImportError)

from mmseg.registry import MODELS  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402


def build(cfg: dict):
    """Build from mmseg's registry outside a Runner, as mmseg's tools do, without leaving the process's
    default scope changed for the tests that follow."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(ConfigDict(cfg))

from dinov2_dense.hub import load_backbone  # noqa: E402
from heads.dpt import DPTHead  # noqa: E402
from heads.linear import LinearDepthHead, LinearHead  # noqa: E402
from heads.predictor import DensePredictor  # noqa: E402
from pretrain.export import export_backbone  # noqa: E402
from tests.conftest import randomize_, tiny_vit  # noqa: E402

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A tiny ViT (32 wide, 4 blocks) with random non-init weights, exported as a pretraining export."""
    model = tiny_vit(depth=4, dim=32, img=56)
    return export_backbone(model, tmp_path_factory.mktemp("bb"))["safetensors"]


@pytest.fixture(scope="module")
def nyu_scenes(tmp_path_factory):
    """Synthetic scenes in the NYU toolbox layout (6 train, 3 test, 84 x 112)."""
    from dinov2_dense.data.synthetic import write_nyu_layout

    return write_nyu_layout(tmp_path_factory.mktemp("nyu"), 6, 3, config=dict(size=(84, 112)), progress=False)


def _metas(x: torch.Tensor) -> list[dict]:
    shape = tuple(x.shape[-2:])
    return [dict(ori_shape=shape, img_shape=shape, pad_shape=shape, padding_size=[0, 0, 0, 0])] * len(x)


def _pair(kind: str, backbone_file, mode: str):
    """(mmseg model, our DensePredictor) with the same weights, heads copied key for key (strict)."""
    out_indices = [3] if kind == "linear" else [0, 1, 2, 3]
    depth = kind in ("dpt_depth", "linear4_depth")
    backbone = dict(type="DINOv2", arch=None, weights=str(backbone_file), out_indices=out_indices, norm=not depth,
                    with_cls_token=depth or kind == "dpt_seg")
    heads = {
        "linear": dict(type="DINOv2BNHead", in_channels=[32], in_index=[0], num_classes=5),
        "ms": dict(type="DINOv2BNHead", in_channels=[32] * 4, in_index=[0, 1, 2, 3], num_classes=5),
        "dpt_seg": dict(type="DINOv2DPTHead", embed_dim=32, num_classes=5, channels=16,
                        post_process_channels=[4, 8, 16, 32]),
        "dpt_depth": dict(type="DINOv2DPTDepthHead", embed_dim=32, channels=16, post_process_channels=[4, 8, 16, 32],
                          min_depth=0.001, max_depth=10.0),
        "linear4_depth": dict(type="DINOv2LinearDepthHead", in_channels=[32] * 4, n_bins=16, min_depth=0.001,
                              max_depth=10.0),
    }
    test_cfg = dict(mode=mode, crop_size=(56, 56), stride=(28, 28)) if mode == "slide" else dict(mode="whole")
    model = build(dict(type="DINOv2DepthEstimator" if depth else "EncoderDecoder",
                              data_preprocessor=dict(type="SegDataPreProcessor", mean=MEAN, std=STD),
                              backbone=backbone, decode_head=heads[kind], test_cfg=test_cfg)).eval()
    randomize_(model.decode_head, seed=3, std=0.2)
    ours_head = {
        "linear": lambda: LinearHead([32], 5, in_index=[0]),
        "ms": lambda: LinearHead([32] * 4, 5),
        "dpt_seg": lambda: DPTHead(32, 16, [4, 8, 16, 32], task="segmentation", num_classes=5),
        "dpt_depth": lambda: DPTHead(32, 16, [4, 8, 16, 32], min_depth=0.001, max_depth=10.0),
        "linear4_depth": lambda: LinearDepthHead([32] * 4, n_bins=16, min_depth=0.001, max_depth=10.0),
    }[kind]()
    head_state = {k: v for k, v in model.decode_head.state_dict().items() if not k.startswith("loss_decode.")}
    ours_head.load_state_dict(head_state, strict=True)  # the same keys: the official decode_head.* layout
    ours = DensePredictor(load_backbone(None, weights=backbone_file), ours_head, task="depth" if depth else
                          "segmentation", layers=out_indices, norm=not depth,
                          class_token=depth or kind == "dpt_seg").eval()
    return model, ours


@pytest.mark.parametrize("kind", ["linear", "ms", "dpt_seg", "dpt_depth", "linear4_depth"])
@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_plugin_predicts_what_the_dense_predictor_predicts(backbone_file, kind, mode):
    model, ours = _pair(kind, backbone_file, mode)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 70, 84)  # not a multiple of 14: centre padding inside, and 2 x 3 slide windows
    with torch.no_grad():
        got = model.inference(x, _metas(x))
        want = ours.slide_inference(x, 56, 28) if mode == "slide" else ours.encode_decode(x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= 1e-4
    assert model.backbone.state_dict().keys() == ours.backbone.state_dict().keys()


def test_plugin_depth_losses_are_the_dense_predictors_unclamped(backbone_file):
    """A DPT depth head beyond max_depth: the plugin's training losses equal DensePredictor.head_losses,
    unclamped as in the official heads (a clamp gave that head no gradient)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    model, ours = _pair("dpt_depth", backbone_file, "whole")
    with DefaultScope.overwrite_default_scope("mmseg"):  # (mmseg's losses, named: not our engine's of a scope left)
        model.decode_head._losses([dict(type="SigLoss", warm_up=True), dict(type="GradientLoss", loss_weight=0.5)])
    for head in (model.decode_head, ours.decode_head):
        with torch.no_grad():
            head.conv_depth.head[-1].bias.fill_(15.0)  # every output above max_depth 10
    x = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    gt = torch.rand(2, 1, 56, 56, generator=torch.Generator().manual_seed(2)) * 8 + 0.5
    samples = [SegDataSample(gt_depth_map=PixelData(data=g)) for g in gt]
    got = model.decode_head.loss(model.extract_feat(x), samples)
    fns = list(model.decode_head.loss_decode)
    want = ours.head_losses(ours.extract_features(x), gt, fns)
    assert len(fns) == len(got) == 2
    for fn in fns:  # the plugin names a loss by its loss_name, head_losses by its class
        torch.testing.assert_close(got[fn.loss_name], want[f"loss_{type(fn).__name__}"], rtol=1e-5, atol=1e-6)
    total = sum(got.values())
    total.backward()
    assert model.decode_head.conv_depth.head[-1].bias.grad.abs().sum() > 0


def test_mmseg_depth_estimator_slide_mode_really_slides(backbone_file):
    model, _ = _pair("dpt_depth", backbone_file, "slide")
    x = torch.randn(1, 3, 70, 84)
    with torch.no_grad():
        slide = model.inference(x, _metas(x))
        model.test_cfg.mode = "whole"
        whole = model.inference(x, _metas(x))
    assert (slide - whole).abs().max().item() > 1e-3
    from mmseg.models.segmentors import DepthEstimator  # mmseg 1.2.2's own: slide mode gives the whole image

    model.test_cfg.mode = "slide"
    with torch.no_grad():
        theirs = DepthEstimator.inference(model, x, _metas(x))
    # the bug the plugin's estimator fixes (mmseg pinned at 1.2.2 by the extra): the slide result is
    # overwritten by a whole-image pass resized to the last window's shape (slide_inference leaves it in
    # the image metadata)
    assert tuple(theirs.shape[-2:]) == (56, 56) and tuple(slide.shape[-2:]) == (70, 84)


@pytest.mark.parametrize("kind,mode", [("dpt_depth", "whole"), ("linear4_depth", "whole"), ("linear4_depth", "slide")])
def test_plugin_depth_flip_test_is_the_dense_predictors(backbone_file, kind, mode):
    """test_cfg flip=True: the depth of the image averaged with its mirror's, as DensePredictor.predict
    (our engine's test of NYU and KITTI); the plugin's estimator ignored it and tested without."""
    model, ours = _pair(kind, backbone_file, mode)
    model.test_cfg.flip = True
    x = torch.randn(2, 3, 70, 84, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got = model.inference(x, _metas(x))
        want = ours.predict(x, mode=mode, crop_size=56, stride=28, flip=True)
        plain = ours.predict(x, mode=mode, crop_size=56, stride=28, flip=False)
    assert (want - plain).abs().max().item() > 1e-3  # the flip changes the depth: the comparison tells
    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-4
    model.test_cfg.mode = "slide_flip"
    with pytest.raises(ValueError, match="slide_flip.*already averages"):
        model.inference(x, _metas(x))


#: Each plugin depth config and our engine's config of the same setup.
DEPTH_PAIRS = [("dinov2_vits14_nyu_dpt", "dinov2_vits14_nyu_dpt", "nyu"),
               ("dinov2_vits14_nyu_linear4", "dinov2_vits14_nyu_linear4", "nyu"),
               ("dinov2_vits14_kitti_dpt", "dinov2_vits14_kitti_dpt", "kitti"),
               ("synthetic_nyu_dpt", "dinov2_vits14_synthetic_dpt", "nyu")]


def _loss_settings(configs) -> list[tuple]:
    """(class name, settings) of each loss built from ``configs`` (defaults filled in by the classes)."""
    losses = [build(dict(c)) for c in configs]
    return [(type(m).__name__, {k: v for k, v in vars(m).items() if not k.startswith("_")
                                and k not in ("training", "warm_up_counter")}) for m in losses]


@pytest.mark.parametrize("plugin,ours,dataset", DEPTH_PAIRS, ids=[p[0] for p in DEPTH_PAIRS])
def test_plugin_depth_configs_follow_the_protocol_as_ours_do(plugin, ours, dataset):
    """The losses (what trained the released heads: SigLoss 1.0 with warm-up; their configs' 0.5 GradientLoss
    is 0 at 2 images per GPU), the flip test (missing in every plugin depth config), the blocks, the depth range
    and the evaluation of each plugin depth config are those of our engine's config and the settings."""
    from mmengine.config import Config

    from dinov2_dense.mmseg.heads import DEPTH_LOSSES
    from dinov2_dense.settings import DATASET_SETTINGS

    mm = Config.fromfile(ROOT / "configs" / "mmseg" / f"{plugin}.py")
    we = Config.fromfile(ROOT / "configs" / "depth" / f"{ours}.py")
    head = mm.model.decode_head
    assert _loss_settings(head.get("loss_decode", DEPTH_LOSSES)) == _loss_settings(we.model.losses)
    assert _loss_settings(DEPTH_LOSSES) == _loss_settings(we.model.losses)  # the heads' default too
    flip = DATASET_SETTINGS[dataset].test_flip
    assert flip and mm.model.test_cfg.get("flip", False) == we.model.test_cfg.flip == flip
    assert mm.model.test_cfg.mode == we.model.test_cfg.mode == "whole"
    assert list(mm.model.backbone.out_indices) == list(we.model.layers) and mm.model.backbone.norm == we.model.norm
    assert (head.min_depth, head.max_depth) == (we.model.head.min_depth, we.model.head.max_depth)
    from dinov2_dense.evaluation.mmengine_metrics import DepthMetric
    from mmseg.registry import METRICS

    with DefaultScope.overwrite_default_scope("mmseg"):
        metric = METRICS.build(mm.test_evaluator)
    theirs = {k: v for k, v in we.test_evaluator.items() if k != "type"}
    assert metric.kwargs == DepthMetric(**theirs).kwargs  # the same range, crop and silog as our test


def test_official_head_file_loads_strictly_and_converts_both_ways(tmp_path):
    from mmengine.config import Config

    from dinov2_dense.mmseg import from_mmseg, to_mmseg
    from dinov2_dense.zoo import build_model, load_model

    official = build_model("dinov2_vits14_ade20k_linear")  # random, with the released head's keys and shapes
    randomize_(official.decode_head, seed=1, std=0.2)
    head_file = tmp_path / "dinov2_vits14_ade20k_linear_head.pth"
    torch.save({"state_dict": {f"decode_head.{k}": v for k, v in official.decode_head.state_dict().items()}},
               head_file)
    cfg = Config.fromfile(ROOT / "configs/mmseg/dinov2_vits14_ade20k_linear.py")
    cfg.model.backbone.weights = None
    model = build(cfg.model).eval()
    state = torch.load(head_file, weights_only=True)["state_dict"]
    missing = model.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys and all(k.startswith("backbone.") for k in missing.missing_keys)
    model.decode_head.load_state_dict({k[len("decode_head."):]: v for k, v in state.items()}, strict=True)

    # mmseg checkpoint -> our weights -> load_model: the same predictions
    ckpt = tmp_path / "iter_1.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"iter": 1}}, ckpt)
    ours_file = from_mmseg(ckpt, tmp_path / "ours.safetensors", model="dinov2_vits14_ade20k_linear")
    ours = load_model("dinov2_vits14_ade20k_linear", weights=ours_file)
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        model.test_cfg.mode = "whole"
        assert (model.inference(x, _metas(x)) - ours.encode_decode(x)).abs().max().item() <= 1e-4
    # and back: our weights -> an mmseg checkpoint that loads strictly
    back = to_mmseg(ours_file, tmp_path / "back.pth")
    again = build(cfg.model)
    again.load_state_dict(torch.load(back, weights_only=True)["state_dict"], strict=True)


def _run(cfg_path: Path, data_root: Path, work: Path, backbone_file, extra: dict) -> dict:
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(cfg_path)
    cfg.work_dir = str(work)
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": str(data_root),
                         "val_dataloader.dataset.data_root": str(data_root),
                         "test_dataloader.dataset.data_root": str(data_root),
                         "model.backbone.arch": None, "model.backbone.weights": str(backbone_file),
                         "train_cfg.max_iters": 6, "train_cfg.val_interval": 6,
                         "default_hooks.checkpoint.interval": 6, "default_hooks.logger.interval": 2, **extra})
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False, begin=0, end=6)]
    with DefaultScope.overwrite_default_scope("mmseg"):  # the runner's scope ends with the test
        runner = Runner.from_cfg(cfg)
        runner.train()
        return runner.test()


def test_mmseg_runner_trains_and_evaluates_synthetic_scenes(tmp_path, backbone_file, nyu_scenes):
    from dinov2_dense.data.synthetic import write_ade20k_layout

    ade = write_ade20k_layout(tmp_path / "ade", 8, 4, config=dict(size=(84, 112)), progress=False)
    metrics = _run(ROOT / "configs/mmseg/synthetic_ade20k_linear.py", ade, tmp_path / "seg", backbone_file, _TINY_LINEAR)
    assert 0.0 <= metrics["mIoU"] <= 100.0
    assert (tmp_path / "seg" / "iter_6.pth").is_file()
    torch.load(tmp_path / "seg" / "iter_6.pth", weights_only=True)  # the sanitizer hook is at work

    metrics = _run(ROOT / "configs/mmseg/synthetic_nyu_dpt.py", nyu_scenes, tmp_path / "depth", backbone_file,
                   _TINY_DPT)
    assert {"abs_rel", "rmse", "d1"} <= set(metrics) and metrics["rmse"] > 0

    # the same checkpoint tested by our engine (its synthetic DPT config: flip test, our metric) gives the
    # same numbers, every key: mmseg's test had no flip averaging and mmseg's silog (x1, lambda 0.5)
    from dinov2_dense.engine.entry import load_config
    from dinov2_dense.engine.runner import DenseRunner

    cfg = load_config(str(ROOT / "configs/depth/dinov2_vits14_synthetic_dpt.py"), {
        **{f"{s}_dataloader.dataset.root": str(nyu_scenes) for s in ("train", "val", "test")},
        "model.backbone": None, "model.backbone_weights": str(backbone_file), "model.layers": [0, 1, 2, 3],
        "model.head.embed_dim": 32, "model.head.channels": 16, "model.head.post_process_channels": [4, 8, 16, 32]},
        str(tmp_path / "ours"))
    cfg.load_from = str(tmp_path / "depth" / "iter_6.pth")
    ours = DenseRunner.from_cfg(cfg).test()
    assert set(metrics) == set(ours), sorted(set(metrics) ^ set(ours))
    for key, value in ours.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, metrics[key], value)


#: The synthetic DPT depth config on the tiny backbone (32 wide, 4 blocks) and 56-pixel crops.
_TINY_DPT = {"model.decode_head.embed_dim": 32, "model.decode_head.channels": 16,
             "model.decode_head.post_process_channels": [4, 8, 16, 32], "model.backbone.out_indices": [0, 1, 2, 3],
             "train_dataloader.dataset.pipeline.2.crop_size": (56, 56), "train_dataloader.batch_size": 2,
             "model.data_preprocessor.size": (56, 56)}


def _train_briefly(config: str, data_root: Path, work: Path, backbone_file, iters: int, resume: bool, options: dict):
    """A plugin config in mmseg's Runner on the tiny backbone, a checkpoint every 2 iterations, a constant
    learning rate, no validation: the runner after ``iters`` iterations."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(ROOT / "configs" / "mmseg" / config)
    cfg.merge_from_dict({"train_dataloader.dataset.data_root": str(data_root), "model.backbone.arch": None,
                         "model.backbone.weights": str(backbone_file), "default_hooks.checkpoint.interval": 2,
                         **options})
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=iters)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False, begin=0, end=iters)]
    cfg.work_dir, cfg.resume = str(work), resume
    with DefaultScope.overwrite_default_scope("mmseg"):
        runner = Runner.from_cfg(cfg)
        runner.train()
    return runner


def _train_depth(data_root: Path, work: Path, backbone_file, iters: int, resume: bool = False):
    """The synthetic DPT depth config, SigLoss warm-up 2 iterations: the runner and its loss_sig of each iteration."""
    runner = _train_briefly("synthetic_nyu_dpt.py", data_root, work, backbone_file, iters, resume, {
        "model.decode_head.loss_decode.0.warm_iter": 2, "default_hooks.logger.interval": 1, **_TINY_DPT})
    return runner, [float(v) for v in runner.message_hub.get_scalar("train/decode.loss_sig").data[0]]


def test_mmseg_depth_runs_repeat_and_a_resumed_run_continues_the_warm_up(tmp_path, backbone_file, nyu_scenes):
    """Two runs of one config trained on other crops (DINOv2DepthAugment was not seeded: iteration 1 gave
    loss 0.3079 in one run, 0.3685 in the next), and a resumed run started SigLoss's warm-up again (its
    count is not in the checkpoint). Now a run stopped at iteration 2 and resumed gives the losses of the
    uninterrupted run, iteration for iteration."""
    whole, want = _train_depth(nyu_scenes, tmp_path / "whole", backbone_file, 4)
    _, first = _train_depth(nyu_scenes, tmp_path / "parts", backbone_file, 2)
    assert len(want) == 4 and first == pytest.approx(want[:2], rel=1e-6)  # the same crops, the same losses
    resumed, got = _train_depth(nyu_scenes, tmp_path / "parts", backbone_file, 4, resume=True)
    assert resumed.iter == 4 and got[-2:] == pytest.approx(want[2:], rel=1e-5)
    for runner in (whole, resumed):
        assert [m.warm_up_counter for m in runner.model.decode_head.loss_decode if hasattr(m, "warm_up_counter")] == [2]


#: The synthetic lin. config on the tiny backbone, 56-pixel crops, batch 2.
_TINY_LINEAR = {"model.backbone.out_indices": [3], "model.decode_head.in_channels": [32],
                "model.data_preprocessor.size": (56, 56), "model.test_cfg.crop_size": (56, 56),
                "model.test_cfg.stride": (28, 28), "train_dataloader.dataset.pipeline.4.crop_size": (56, 56),
                "train_dataloader.dataset.pipeline.3.scale": (112, 56), "train_dataloader.batch_size": 2}


def _train_linear(data_root: Path, work: Path, backbone_file, iters: int, resume: bool = False, workers: int = 0):
    """The synthetic lin. config with ``workers`` DataLoader workers: the runner after ``iters`` iterations."""
    return _train_briefly("synthetic_ade20k_linear.py", data_root, work, backbone_file, iters, resume,
                          {"train_dataloader.num_workers": workers, **_TINY_LINEAR})


def test_mmseg_resumed_run_loads_nothing_it_trained_and_ends_as_the_uninterrupted_one(tmp_path, backbone_file,
                                                                                        monkeypatch):
    """The plugin's configs drew from mmengine's InfiniteSampler, and a resumed run loaded and augmented every
    batch it had trained (mmseg's 40k ADE20K schedule resumed at 30k: 480,000 images) to pass over them, while
    mmcv's random transforms drew from each worker's generator, so the number of workers changed the crops.
    Now the data starts at the checkpoint's sample (SeededInfiniteSampler, ResumeDataHook) and each sample is
    augmented from its own seed (SeedAugmentation): a run stopped at 2 of 4 iterations loads only the samples
    of iterations 3 and 4, and ends with the weights of an uninterrupted run on 2 DataLoader workers."""
    from dinov2_dense.data.synthetic import write_ade20k_layout
    from dinov2_dense.mmseg.datasets import SyntheticADE20KDataset

    ade = write_ade20k_layout(tmp_path / "ade", 8, 1, config=dict(size=(84, 112)), progress=False)
    whole = _train_linear(ade, tmp_path / "whole", backbone_file, 4, workers=2)
    loaded: list[int] = []
    prepare = SyntheticADE20KDataset.prepare_data

    def record(self, idx):
        loaded.append(int(idx))
        return prepare(self, idx)

    monkeypatch.setattr(SyntheticADE20KDataset, "prepare_data", record)
    _train_linear(ade, tmp_path / "parts", backbone_file, 2)
    first = list(loaded)
    resumed = _train_linear(ade, tmp_path / "parts", backbone_file, 4, resume=True)
    stream = _train_linear(ade, tmp_path / "again", backbone_file, 4)  # an uninterrupted run in this process
    again, after_resume = loaded[-8:], loaded[4:-8]
    assert resumed.iter == 4 and first == again[:4]
    assert after_resume == again[4:], (after_resume, again)  # before: the 4 trained samples again, then these
    for runner in (resumed, stream):
        for key, value in whole.model.decode_head.state_dict().items():
            assert torch.equal(runner.model.decode_head.state_dict()[key], value), key


MMSEG_CONFIGS = sorted(p for p in (ROOT / "configs" / "mmseg").glob("*.py"))


@pytest.mark.parametrize("path", MMSEG_CONFIGS, ids=lambda p: p.stem)
def test_mmseg_configs_build_their_models(path):
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    assert cfg.default_scope == "mmseg" and cfg.custom_imports.imports == ["dinov2_dense.mmseg"]
    cfg.model.backbone.weights = None  # no download: the architecture only
    model = build(cfg.model)
    assert type(model).__name__ in ("EncoderDecoder", "DINOv2DepthEstimator")
    assert not any(p.requires_grad for p in model.backbone.parameters())  # frozen by default
    evaluator = cfg.test_evaluator.type
    assert evaluator == ("DINOv2DepthMetric" if type(model).__name__ == "DINOv2DepthEstimator" else "IoUMetric")


def test_our_runner_keeps_its_own_classes_after_an_mmseg_run_in_the_process(tmp_path):
    """An mmseg runner leaves "mmseg" as the process's current scope; our runs name "DepthMetric",
    "ADE20KDataset" & co. of mmengine's root registries and must not get mmseg's classes of the same name."""
    from dinov2_dense.data.synthetic import write_nyu_layout
    from dinov2_dense.engine.entry import load_config
    from dinov2_dense.engine.runner import DenseRunner

    root = write_nyu_layout(tmp_path / "nyu", 2, 2, config=dict(size=(56, 56)), progress=False)
    cfg = load_config(str(ROOT / "configs/depth/tiny_synthetic_linear.py"),
                      {f"{s}_dataloader.dataset.root": str(root) for s in ("train", "val", "test")},
                      str(tmp_path / "work"))
    DefaultScope.get_instance("a-stale-mmseg-scope", scope_name="mmseg")  # as an mmseg Runner leaves it
    try:
        runner = DenseRunner.from_cfg(cfg)
        evaluator = runner.build_evaluator(cfg.test_evaluator)
        assert all(type(m).__module__.startswith("dinov2_dense.") for m in evaluator.metrics)
    finally:
        DefaultScope._instance_dict.pop("a-stale-mmseg-scope", None)


def test_depth_protocol_transforms_and_metric_crops(tmp_path):
    import numpy as np

    from dinov2_dense.evaluation.depth import depth_metrics
    from dinov2_dense.mmseg import DINOv2DepthAugment, DINOv2DepthMetric, KBCrop

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (375, 1242, 3), dtype=np.uint8)
    depth = rng.uniform(1, 70, (375, 1242)).astype(np.float32)
    out = KBCrop().transform({"img": img.copy(), "gt_depth_map": depth.copy(), "ori_shape": (375, 1242)})
    assert out["img"].shape[:2] == out["gt_depth_map"].shape == (352, 1216) == tuple(out["img_shape"])
    # the crop is the image the prediction is made for: mmseg resizes the prediction to ori_shape, which
    # stayed 375 x 1242 while the ground truth was cropped (the metric then compared other shapes)
    assert tuple(out["ori_shape"]) == (352, 1216)
    assert np.array_equal(out["gt_depth_map"], depth[23:, 13:1229])
    nyu = DINOv2DepthAugment(crop_size=(416, 544), pre_crop=(45, 472, 43, 608)).transform(
        {"img": img[:480, :640].copy(), "gt_depth_map": depth[:480, :640].copy()})
    assert nyu["img"].shape[:2] == nyu["gt_depth_map"].shape == (416, 544)

    # the plugin's metric over the Garg crop reports what our engine's DepthMetric reports, every key (it was
    # mmseg's: silog sqrt(mean d^2 - 0.5 mean(d)^2) without the x100, 0.55 where ours said 54.4)
    from dinov2_dense.evaluation.mmengine_metrics import DepthMetric

    gt = torch.from_numpy(depth)
    samples = []
    for seed in (1, 2):
        noise = np.random.default_rng(seed).uniform(0.6, 1.4, depth.shape).astype(np.float32)
        pred = (gt * torch.from_numpy(noise) + 0.5).clamp(0.001, 80.0)
        samples.append({"pred_depth_map": {"data": pred[None]}, "gt_depth_map": {"data": gt[None]},
                        "img_path": f"/data/kitti/{seed}.png"})
    metric = DINOv2DepthMetric(crop="garg", min_depth_eval=0.001, max_depth_eval=80.0, output_dir=str(tmp_path),
                               depth_scale_factor=256.0)
    ours = DepthMetric(min_depth=0.001, max_depth=80.0, crop="garg")
    for m in (metric, ours):
        m.process({}, samples)
    got, want = metric.compute_metrics(metric.results), ours.compute_metrics(ours.results)
    assert got == want
    single = [depth_metrics(s["pred_depth_map"]["data"].numpy(), depth, min_depth=0.001, max_depth=80.0, crop="garg")
              for s in samples]
    for key in single[0]:
        assert got[key] == pytest.approx(np.mean([m[key] for m in single]), rel=1e-9), key
    assert 1 < got["silog"] < 100 and got["count"] == 2  # the toolbox's x100 silog
    import cv2  # and mmseg's output_dir: each prediction as a 16-bit PNG of depth x depth_scale_factor

    written = cv2.imread(str(tmp_path / "1.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and np.array_equal(
        written, np.round(samples[0]["pred_depth_map"]["data"][0].numpy() * 256.0).astype(np.uint16))
    with pytest.raises(ValueError, match="crop='eigen'"):
        DINOv2DepthMetric(crop_type="nyu_crop")

    # what mmseg's tools/test.py --out adds (keep_results, output_dir), mmseg's depth_metrics and format_only
    # (a TypeError of our metric's __init__ before); an argument of neither metric is named
    from mmengine import Config

    from mmseg.registry import METRICS

    cfg = Config.fromfile(str(ROOT / "configs/mmseg/dinov2_vits14_nyu_dpt.py"))
    evaluator = dict(cfg.test_evaluator, output_dir=str(tmp_path / "out"), keep_results=True)
    evaluator.update(crop="garg", max_depth_eval=80.0)  # (the samples above are KITTI's)
    with DefaultScope.overwrite_default_scope("mmseg"):
        built = METRICS.build(evaluator)
    built.process({}, samples)
    assert set(built.compute_metrics(built.results)) == set(want) and (tmp_path / "out" / "1.png").is_file()
    some = DINOv2DepthMetric(crop="garg", min_depth_eval=0.001, max_depth_eval=80.0, depth_metrics=["rmse", "d1"])
    some.process({}, samples)
    assert {k: v for k, v in some.compute_metrics(some.results).items() if k in want} == {
        k: v for k, v in want.items() if k not in {"abs_rel", "sq_rel", "rmse_log", "log10", "d2", "d3", "silog"}}
    only = DINOv2DepthMetric(output_dir=str(tmp_path / "only"), format_only=True, depth_scale_factor=256.0)
    only.process({}, [{k: v for k, v in x.items() if k != "gt_depth_map"} for x in samples])  # no ground truth
    assert only.compute_metrics(only.results) == {} and (tmp_path / "only" / "2.png").is_file()
    for bad, match in ((dict(depth_metrics=["mae"]), r"depth_metrics \['mae'\]"),
                       (dict(nonsense=1), "nonsense: not an argument of this metric"),
                       (dict(format_only=True), "give output_dir")):
        with pytest.raises(ValueError, match=match):
            DINOv2DepthMetric(**bad)


# -- python -m dinov2_dense.mmseg.convert ------------------------------------------------------------
def _mmseg_checkpoint(path: Path, backbone: dict | None = None) -> Path:
    """An mmseg training checkpoint of dinov2_vits14_ade20k_linear's head (random, non-init), with the
    meta and optimizer state a Runner saves beside the weights."""
    head = LinearHead.preset("lin.", 384, 150)
    randomize_(head, seed=5, std=0.2)
    state = {f"decode_head.{k}": v for k, v in head.state_dict().items()}
    state.update({f"backbone.{k}": v for k, v in (backbone or {}).items()})
    torch.save({"state_dict": state, "meta": {"iter": 40}, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path


def _convert(capsys, *argv) -> tuple[int, str]:
    from dinov2_dense.mmseg.convert import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_convert_refuses_to_write_over_its_input_or_an_existing_file(tmp_path, capsys):
    from dinov2_dense.checkpoints import read_checkpoint

    ckpt = _mmseg_checkpoint(tmp_path / "iter_40.pth")
    before = ckpt.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.pth").symlink_to(ckpt)
    for out in (ckpt, tmp_path / "sub" / ".." / "iter_40.pth", tmp_path / "link.pth"):
        for extra in ((), ("--overwrite",)):  # never, not even when asked to replace an existing output
            code, err = _convert(capsys, "from-mmseg", ckpt, out, *extra)
            assert code == 2 and len(err.strip().splitlines()) == 1, err
            assert f"output {out} is the input checkpoint {ckpt}" in err
    assert ckpt.read_bytes() == before and torch.load(ckpt, weights_only=True)["meta"] == {"iter": 40}

    # another file (a user's checkpoint, a pretraining export) is never replaced, as the README's rule for every
    # output file says (a reviewer's --overwrite turned an export's backbone.pth into an mmseg checkpoint)
    for content in ({"pos_embed": torch.zeros(1, 2, 3)}, {"state_dict": {"backbone.x": torch.zeros(1)},
                                                          "meta": {"iter": 9}, "optimizer": {}}):
        other = tmp_path / "backbone.pth"
        torch.save(content, other)
        before_other = other.read_bytes()
        for extra in ((), ("--overwrite",)):
            code, err = _convert(capsys, "from-mmseg", ckpt, other, *extra)
            assert code == 2 and "is never replaced, even with --overwrite" in err, err
        assert other.read_bytes() == before_other
    # a file that is not a checkpoint at all (text, empty, a safetensors header of noise): no crash, not replaced
    for name, data in (("text.pth", b"hello\n"), ("empty.pth", b""), ("noise.safetensors", bytes(range(100)))):
        other = tmp_path / name
        other.write_bytes(data)
        for extra in ((), ("--overwrite",)):
            code, err = _convert(capsys, "from-mmseg", ckpt, other, *extra)
            assert code == 2 and "is never replaced, even with --overwrite" in err, (name, err)
        assert other.read_bytes() == data
    # an earlier output of the converter is replaced only with --overwrite, in either direction and format
    for out in (tmp_path / "iter_20.pth", tmp_path / "iter_20.safetensors"):
        assert _convert(capsys, "from-mmseg", ckpt, out)[0] == 0
        code, err = _convert(capsys, "from-mmseg", ckpt, out)
        assert code == 2 and f"output {out} exists: a file this converter wrote" in err and "--overwrite" in err
        assert _convert(capsys, "from-mmseg", ckpt, out, "--overwrite")[0] == 0
        assert read_checkpoint(out).keys() == torch.load(ckpt, weights_only=True)["state_dict"].keys()
    back = tmp_path / "back.pth"
    assert _convert(capsys, "to-mmseg", tmp_path / "iter_20.safetensors", back)[0] == 0
    assert _convert(capsys, "to-mmseg", tmp_path / "iter_20.safetensors", back)[0] == 2
    assert _convert(capsys, "to-mmseg", tmp_path / "iter_20.safetensors", back, "--overwrite")[0] == 0

    # to-mmseg: neither the weights file nor the backbone weights are the output
    ours = tmp_path / "ours.safetensors"
    assert _convert(capsys, "from-mmseg", ckpt, ours)[0] == 0
    written = ours.read_bytes()
    for argv in (("to-mmseg", ours, ours), ("to-mmseg", ours, ours, "--overwrite"),
                 ("to-mmseg", ours, tmp_path / "sub" / ".." / "ours.safetensors", "--backbone-weights", ckpt),
                 ("to-mmseg", ckpt, ckpt, "--backbone-weights", ours)):
        code, err = _convert(capsys, *argv)
        assert code == 2 and " is the input " in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert ours.read_bytes() == written and ckpt.read_bytes() == before


def test_convert_errors_are_one_line_naming_the_file_or_option_with_exit_code_2(tmp_path, capsys):
    ckpt = _mmseg_checkpoint(tmp_path / "iter_40.pth")
    out = tmp_path / "ours.safetensors"
    whole = _mmseg_checkpoint(tmp_path / "with_backbone.pth", backbone={"cls_token": torch.zeros(1, 1, 384)})
    cases = [
        (("from-mmseg", tmp_path / "nope.pth", out), f"{tmp_path / 'nope.pth'}: no such weight file"),
        (("from-mmseg", ckpt, out, "--model", "nope"), "--model nope: unknown model 'nope'"),
        (("from-mmseg", ckpt, out, "--model", "dinov2_vitb14_ade20k_linear"),
         "does not fit the head of dinov2_vitb14_ade20k_linear"),
        (("to-mmseg", tmp_path / "nope.safetensors", tmp_path / "back.pth"), "nope.safetensors: no such weight file"),
        (("to-mmseg", ckpt, tmp_path / "back.pth", "--backbone", "nope", "--backbone-weights", ckpt),
         "--backbone nope: unknown backbone 'nope'"),
        # weights with a backbone and --backbone-weights: the second was silently ignored
        (("to-mmseg", whole, tmp_path / "back.pth", "--backbone-weights", ckpt),
         f"{whole} holds a backbone already (backbone.* tensors); --backbone-weights {ckpt} would be ignored"),
    ]
    for argv, says in cases:
        code, err = _convert(capsys, *argv)
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err and says in err, (argv, err)
        assert err.startswith(f"python -m dinov2_dense.mmseg.convert {argv[0]}: error: ")
    # a head that fits with a backbone that does not (torch's strict load raised RuntimeError: exit 1)
    bad = _mmseg_checkpoint(tmp_path / "other_backbone.pth", backbone={"cls_token": torch.zeros(1, 1, 32)})
    code, err = _convert(capsys, "from-mmseg", bad, out, "--model", "dinov2_vits14_ade20k_linear")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{bad}: its backbone.* tensors do not fit the backbone of dinov2_vits14_ade20k_linear" in err
    assert "cls_token (1, 1, 32) vs (1, 1, 384)" in err
    assert not out.exists()
    # --debug (before or after the direction) shows the traceback, with the same exit code
    for argv in (("--debug", "from-mmseg", ckpt, out, "--model", "nope"),
                 ("from-mmseg", ckpt, out, "--model", "nope", "--debug")):
        code, err = _convert(capsys, *argv)
        assert code == 2 and "Traceback" in err and "--model nope: unknown model" in err, err


def test_convert_says_a_users_file_is_not_a_checkpoint_without_advising_to_delete_it(tmp_path, capsys):
    from dinov2_dense.checkpoints import CheckpointError
    from dinov2_dense.mmseg import from_mmseg, to_mmseg

    notes = tmp_path / "notes.py"
    notes.write_text("x = 1\n")
    cut = _mmseg_checkpoint(tmp_path / "cut.pth")
    cut.write_bytes(cut.read_bytes()[:5000])  # cut short
    for convert, src, expected in ((from_mmseg, notes, "expected an mmseg checkpoint"),
                                   (from_mmseg, cut, "cut short or damaged"),  # the right kind, damaged
                                   (to_mmseg, notes, "expected a dinov2-dense weights file")):
        with pytest.raises(CheckpointError) as info:
            convert(src, tmp_path / "out.pth")
        message = str(info.value)
        assert message.startswith(f"{src}: not a") and expected in message, message
        assert "delete" not in message and ("fetch" not in message or src == cut), message
    assert "text file" in _convert(capsys, "from-mmseg", notes, tmp_path / "out.safetensors")[1]
    assert notes.read_text() == "x = 1\n" and not (tmp_path / "out.pth").exists()


def test_python_m_convert_converts_without_a_runpy_warning(tmp_path):
    import os
    import subprocess
    import sys

    from dinov2_dense.checkpoints import read_checkpoint
    from dinov2_dense.mmseg import convert

    # the package's names still come from the converter, imported when first asked for
    assert mmseg_plugin.from_mmseg is convert.from_mmseg and mmseg_plugin.to_mmseg is convert.to_mmseg
    assert {"from_mmseg", "to_mmseg"} <= set(mmseg_plugin.__all__) <= set(dir(mmseg_plugin))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mmseg_plugin.nope  # noqa: B018

    ckpt = _mmseg_checkpoint(tmp_path / "iter_40.pth")
    run = subprocess.run([sys.executable, "-m", "dinov2_dense.mmseg.convert", "from-mmseg", str(ckpt), "ours.pth"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "RuntimeWarning" not in run.stderr and "sys.modules" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.strip() == "ours.pth"
    want = torch.load(ckpt, weights_only=True)["state_dict"]
    got = read_checkpoint(tmp_path / "ours.pth")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_backbone_init_weights_keeps_the_loaded_weights():
    """init_weights() on the plugin's backbone itself (not only through mmseg's EncoderDecoder, which
    skips it) keeps the weights loaded in __init__."""
    from dinov2_dense.mmseg.backbone import DINOv2

    backbone = DINOv2(arch="dinov2_dense_tiny", weights="official")
    backbone.init_weights()
    reference = load_backbone("dinov2_dense_tiny").state_dict()
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_to_mmseg_takes_the_architecture_beside_an_export(tmp_path, capsys):
    """An official head file plus a pretraining export: `--backbone` defaulted to dinov2_vits14 whatever the
    export was ("cannot load dinov2_vits14"); the export's backbone.json now gives the architecture."""
    from safetensors.torch import load_file

    head = _mmseg_checkpoint(tmp_path / "head.pth")
    export = export_backbone(randomize_(tiny_vit(), seed=3), tmp_path / "export")["safetensors"]
    out = tmp_path / "with_backbone.pth"
    code, err = _convert(capsys, "to-mmseg", head, out, "--backbone-weights", export)
    assert code == 0, err
    state = torch.load(out, weights_only=True)["state_dict"]
    want = load_file(export)
    assert {k[len("backbone."):] for k in state if k.startswith("backbone.")} == set(want)
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in want.items())
    # a file:// URL of the export too (its backbone.json was not looked for)
    code, err = _convert(capsys, "to-mmseg", head, tmp_path / "url.pth", "--backbone-weights", export.as_uri())
    assert code == 0, err
    # without an architecture beside the weights, the official heads' backbone is the default, as before
    lone = tmp_path / "lone" / "weights.safetensors"
    lone.parent.mkdir()
    lone.write_bytes(export.read_bytes())
    code, err = _convert(capsys, "to-mmseg", head, tmp_path / "other.pth", "--backbone-weights", lone)
    assert code == 2 and "dinov2_vits14" in err, err


def test_to_mmseg_writes_only_what_mmseg_loads(tmp_path, capsys):
    """A .safetensors output was written with torch.save under that name (exit 0), which mmseg's
    tools/test.py could not read ("SafetensorError: header too large"); it is refused before anything is
    written, naming the file and what to name it instead, and a .pth output loads in mmengine."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from dinov2_dense.fileio import OutputError
    from dinov2_dense.mmseg import to_mmseg

    head = _mmseg_checkpoint(tmp_path / "head.pth")
    for name in ("back.safetensors", "back.bin", "back"):
        out = tmp_path / name
        code, err = _convert(capsys, "to-mmseg", head, out)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"output {out}: " in err and f"name the output {tmp_path / 'back.pth'}" in err, err
        assert not out.exists()
        with pytest.raises(OutputError, match="name the output"):
            to_mmseg(head, out)
    assert "cannot read safetensors" in _convert(capsys, "to-mmseg", head, tmp_path / "back.safetensors")[1]
    # an existing file of that name is kept, even with --overwrite
    kept = tmp_path / "kept.safetensors"
    kept.write_bytes(b"another file")
    assert _convert(capsys, "to-mmseg", head, kept, "--overwrite")[0] == 2 and kept.read_bytes() == b"another file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.pth", "kept.safetensors"]
    # what mmseg's load_from reads
    code, err = _convert(capsys, "to-mmseg", head, tmp_path / "back.pth")
    assert code == 0, err
    loaded = CheckpointLoader.load_checkpoint(str(tmp_path / "back.pth"), map_location="cpu")["state_dict"]
    want = torch.load(head, weights_only=True)["state_dict"]
    assert loaded.keys() == want.keys() and all(torch.equal(loaded[k], want[k]) for k in want)


def test_to_mmseg_refuses_a_backbone_name_without_its_weights(tmp_path, capsys):
    """`--backbone NAME` names the architecture of --backbone-weights (README); alone it was silently
    dropped (an output without backbone.* tensors, exit 0). It is refused, saying what is missing."""
    from dinov2_dense.mmseg import to_mmseg

    head = _mmseg_checkpoint(tmp_path / "head.pth")
    whole = _mmseg_checkpoint(tmp_path / "whole.pth", backbone={"cls_token": torch.zeros(1, 1, 384)})
    out = tmp_path / "back.pth"
    code, err = _convert(capsys, "to-mmseg", head, out, "--backbone", "dinov2_dense_tiny")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--backbone dinov2_dense_tiny names the architecture of --backbone-weights, which was not given" in err
    assert f"{head} holds no backbone" in err and "add --backbone-weights FILE" in err, err
    code, err = _convert(capsys, "to-mmseg", whole, out, "--backbone", "dinov2_vits14")
    assert code == 2 and f"{whole} holds a backbone already" in err and "--backbone dinov2_vits14 would be ignored" in err
    with pytest.raises(ValueError, match="--backbone-weights, which was not given"):
        to_mmseg(head, out, backbone="dinov2_dense_tiny")
    assert not out.exists()
    # with its weights, the backbone is in the output
    tiny = load_backbone("dinov2_dense_tiny")
    weights = ROOT / "dinov2_dense" / "weights" / "dinov2_dense_tiny.safetensors"
    code, err = _convert(capsys, "to-mmseg", head, out, "--backbone", "dinov2_dense_tiny", "--backbone-weights", weights)
    assert code == 0, err
    state = torch.load(out, weights_only=True)["state_dict"]
    assert all(torch.equal(state[f"backbone.{k}"], v) for k, v in tiny.state_dict().items())


def test_to_mmseg_says_a_backbone_file_is_missing(tmp_path, capsys):
    """`--backbone nothere.json` was reported as an unknown zoo name; a value that looks like a path is a
    missing file, named as such (with or without --backbone-weights)."""
    head = _mmseg_checkpoint(tmp_path / "head.pth")
    missing = tmp_path / "nothere.json"
    for backbone in (missing, "nothere.json", tmp_path / "sub" / "arch"):
        for extra in (("--backbone-weights", head), ()):
            code, err = _convert(capsys, "to-mmseg", head, tmp_path / "back.pth", "--backbone", backbone, *extra)
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
            assert f"--backbone {backbone}: no such architecture file" in err and "unknown backbone" not in err, err
    code, err = _convert(capsys, "to-mmseg", head, tmp_path / "back.pth", "--backbone", head)
    assert code == 2 and f"--backbone {head}: not an architecture JSON" in err, err
    assert not (tmp_path / "back.pth").exists()


def test_backbone_honours_a_pretrained_init_cfg(backbone_file):
    """`init_cfg=dict(type="Pretrained", checkpoint=PATH)` was accepted and ignored (random weights with
    weights=None); it loads PATH as weights=PATH does. Both given, or another init_cfg: a clear error."""
    reference = build(dict(type="DINOv2", arch=None, weights=str(backbone_file))).state_dict()
    pretrained = dict(type="Pretrained", checkpoint=str(backbone_file))
    for weights in ({"weights": None}, {}):  # weights=None, or left at its default
        model = build(dict(type="EncoderDecoder", backbone=dict(type="DINOv2", arch=None, init_cfg=pretrained, **weights),
                           decode_head=dict(type="DINOv2BNHead", in_channels=[32], in_index=[0], num_classes=5)))
        model.init_weights()  # as mmseg's Runner does before load_from
        got = model.backbone.state_dict()
        assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in reference)
    with_prefix = build(dict(type="DINOv2", arch=None, weights=None, init_cfg={**pretrained, "prefix": "backbone."}))
    assert all(torch.equal(v, reference[k]) for k, v in with_prefix.state_dict().items())

    refused = [
        (dict(weights=str(backbone_file), init_cfg=pretrained), "both weights="),
        (dict(weights="official", init_cfg=pretrained), "both weights="),
        (dict(weights=None, init_cfg=dict(type="Normal", std=0.02)), "is not supported"),
        (dict(weights=None, init_cfg=[pretrained]), "is not supported"),
        (dict(weights=None, init_cfg=dict(type="Pretrained")), "has no checkpoint"),
        (dict(weights=None, init_cfg={**pretrained, "prefix": "decode_head."}), "prefix='decode_head.' not supported"),
    ]
    for kwargs, says in refused:
        with pytest.raises(ValueError, match=says) as info:
            build(dict(type="DINOv2", arch=None, **kwargs))
        assert "DINOv2: " in str(info.value) and "init_cfg" in str(info.value)


def test_depth_augment_is_seeded_from_the_run_and_workers_do_not_repeat_each_other():
    """DINOv2DepthAugment drew from fresh entropy: two runs of one config trained on other crops. It takes
    the run's seed (torch's, set by mmengine's Runner before it builds the data sets); DataLoader workers
    (mmengine's worker_init_fn: seed + worker id) reseed their copies and draw apart, reproducibly."""
    from functools import partial

    import numpy as np
    from mmengine.dataset.utils import worker_init_fn

    from dinov2_dense.mmseg import DINOv2DepthAugment

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    depth = rng.uniform(1, 9, (60, 80)).astype(np.float32)

    def crops(seed: int) -> list[np.ndarray]:
        torch.manual_seed(seed)  # as the Runner does (randomness.seed)
        augment = DINOv2DepthAugment(crop_size=(24, 24))
        return [augment.transform({"img": img.copy(), "gt_depth_map": depth.copy()})["gt_depth_map"] for _ in range(4)]

    a, b, c = crops(5), crops(5), crops(6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))

    class Same(torch.utils.data.Dataset):  # one image four times: worker 0 gets items 0, 2; worker 1 items 1, 3
        def __init__(self):
            torch.manual_seed(5)
            self.augment = DINOv2DepthAugment(crop_size=(24, 24))

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return self.augment.transform({"img": img.copy(), "gt_depth_map": depth.copy()})["gt_depth_map"]

    def loaded() -> list[np.ndarray]:
        loader = torch.utils.data.DataLoader(Same(), batch_size=None, num_workers=2, multiprocessing_context="fork",
                                             worker_init_fn=partial(worker_init_fn, num_workers=2, rank=0, seed=5))
        return [np.asarray(x) for x in loader]

    first, again = loaded(), loaded()
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[2], first[3])


def test_to_mmseg_refuses_a_backbone_of_another_width(tmp_path):
    """A head trained on one backbone joined to the weights of a backbone of another width was written
    (exit 0), and failed in mmseg with a raw torch error; it is refused, naming the key and both widths."""
    from dinov2_dense.checkpoints import CheckpointError
    from dinov2_dense.mmseg import to_mmseg

    tiny = ROOT / "dinov2_dense" / "weights" / "dinov2_dense_tiny.safetensors"  # 96 wide
    heads = {  # a head trained on a backbone 32 wide: lin., linear4 depth, DPT depth
        "decode_head.bn.weight": LinearHead([32], 5, in_index=[0]),
        "decode_head.conv_depth.weight": LinearDepthHead([32] * 4, n_bins=16),
        "decode_head.reassemble_blocks.projects.0.conv.weight": DPTHead(32, 16, [4, 8, 16, 32]),
    }
    for key, head in heads.items():
        src = tmp_path / "head.pth"
        torch.save({"state_dict": {f"decode_head.{k}": v for k, v in head.state_dict().items()}}, src)
        with pytest.raises(CheckpointError) as info:
            to_mmseg(src, tmp_path / "out.pth", backbone_weights=str(tiny), backbone="dinov2_dense_tiny",
                     overwrite=True)
        message = str(info.value)
        assert message.startswith(f"{src}: its head does not fit the backbone") and key in message, message
        assert "96 wide" in message and ("32 channels" in message or "256 channels" in message), message
        assert not (tmp_path / "out.pth").exists()
    # a head of that width converts
    head = LinearHead([96], 5, in_index=[0])
    torch.save({"state_dict": {f"decode_head.{k}": v for k, v in head.state_dict().items()}}, tmp_path / "fits.pth")
    to_mmseg(tmp_path / "fits.pth", tmp_path / "out.pth", backbone_weights=str(tiny), backbone="dinov2_dense_tiny")


def test_from_mmseg_writes_only_weights_files_and_calls_text_no_checkpoint(tmp_path):
    """from-mmseg wrote a torch file under any name (out/i.txt, exit 0); it writes .safetensors, .pth or
    .pt, and refuses another suffix naming them. A text file given as the checkpoint was told "if it was
    downloaded, fetch it again": a text file is no damaged checkpoint; it is said what was expected."""
    from dinov2_dense.checkpoints import CheckpointReadError
    from dinov2_dense.fileio import OutputError
    from dinov2_dense.mmseg import from_mmseg

    ckpt = _mmseg_checkpoint(tmp_path / "iter_40.pth")
    for name in ("i.txt", "weights", "ours.bin"):
        with pytest.raises(OutputError) as info:
            from_mmseg(ckpt, tmp_path / name)
        message = str(info.value)
        assert f"output {tmp_path / name}: " in message and ".safetensors / .pth / .pt" in message, message
        assert not (tmp_path / name).exists()
    assert from_mmseg(ckpt, tmp_path / "ours.pt").is_file()
    hello = tmp_path / "notackpt.pth"
    hello.write_text("hello")
    with pytest.raises(CheckpointReadError) as info:
        from_mmseg(hello, tmp_path / "x.safetensors")
    message = str(info.value)
    assert message.startswith(f"{hello}: not a weight file: it is a text file of 5 bytes"), message
    assert "expected an mmseg checkpoint" in message and "fetch" not in message and "downloaded" not in message


def test_plugin_names_the_config_key_of_a_wrong_width_or_block(backbone_file):
    """A head's in_channels (or embed_dim) that is not the backbone's width gave a raw torch error (a
    BatchNorm's "running_mean should contain ..."), and out_indices=[7] "layer 7 out of range" without
    naming out_indices: each names its key and both sizes."""
    x = torch.randn(1, 3, 56, 56)
    backbone = dict(type="DINOv2", arch=None, weights=str(backbone_file))
    cases = [
        (dict(type="EncoderDecoder", backbone={**backbone, "out_indices": [3]},
              decode_head=dict(type="DINOv2BNHead", in_channels=[48], in_index=[0], num_classes=5)),
         "DINOv2BNHead: decode_head.in_channels[0]=48 but the backbone's output 0 has 32 channels"),
        (dict(type="DINOv2DepthEstimator", backbone={**backbone, "out_indices": [0, 1, 2, 3], "norm": False,
                                                      "with_cls_token": True},
              decode_head=dict(type="DINOv2LinearDepthHead", in_channels=[48] * 4, n_bins=16)),
         "decode_head.in_channels[0]=48 but the backbone's output 0 has 32 channels"),
        (dict(type="DINOv2DepthEstimator", backbone={**backbone, "out_indices": [0, 1, 2, 3], "norm": False,
                                                      "with_cls_token": True},
              decode_head=dict(type="DINOv2DPTDepthHead", embed_dim=48, channels=16,
                               post_process_channels=[4, 8, 16, 32])),
         "decode_head.embed_dim=48 but the backbone's output 0 has 32 channels"),
    ]
    for cfg, says in cases:
        model = build({**cfg, "data_preprocessor": dict(type="SegDataPreProcessor", mean=MEAN, std=STD),
                       "test_cfg": dict(mode="whole")}).eval()
        with torch.no_grad(), pytest.raises(ValueError, match=re.escape(says)):
            model.inference(x, _metas(x))
    with pytest.raises(ValueError, match=re.escape("DINOv2: out_indices=[7]: layer 7 out of range")):
        build({**backbone, "out_indices": [7]})


def test_plugin_configs_say_what_one_and_n_gpus_get_and_whose_the_ms_stride_is():
    """mmseg's batch_size is per GPU: the comments called ADE20K's 16 "images per step" (on N GPUs it is
    16 x N); they say what one GPU and N GPUs get and how to keep the released total. The +ms header called
    the slide stride 426 released; settings.py says it is our choice."""
    from mmengine.config import Config

    base = ROOT / "configs" / "mmseg" / "_base_"
    for name in ("ade20k.py", "nyu.py"):
        text = (base / name).read_text()
        line = next(ln for ln in text.splitlines()
                    if ln.lstrip().startswith("batch_size=") and "batch_size=1," not in ln)
        assert "per GPU" in line, line
        assert "N GPUs" in text and "16 // N" in text, name
        cfg = Config.fromfile(base / name)  # (and the rest of that line is still config, not comment)
        assert cfg.train_dataloader.sampler.type == "SeededInfiniteSampler" and cfg.train_dataloader.num_workers == 4
    ms = (base / "ade20k_ms.py").read_text()
    settings = (ROOT / "dinov2_dense" / "settings.py").read_text()
    assert "stride 426 (the model's test_cfg) is our choice" in " ".join(ms.split())
    assert "stride of the 640 crops is our choice: 426" in " ".join(settings.split())
    assert "(the released dinov2_vit*14_ade20k_ms_config.py)" not in ms


@pytest.mark.parametrize("plugin, ours", [("nyu", "NYUDepthDataset"), ("kitti", "KITTIDepthDataset")])
def test_plugin_depth_data_sets_list_what_ours_list_on_the_toolboxes_layouts(tmp_path, plugin, ours):
    """The plugin's split-file data set joined each path straight onto data_root: the toolboxes' own NYU split
    files (paths with a leading '/') failed at the first sample, and its KITTI config found neither
    input/ nor gt_depth/ and kept the lines without ground truth ('None'). Both now list what ours list."""
    import cv2
    import numpy as np
    from mmengine.config import Config
    from mmseg.registry import DATASETS

    import dinov2_dense.data as data

    kitti = plugin == "kitti"
    images, depths = (tmp_path / "input", tmp_path / "gt_depth") if kitti else (tmp_path, tmp_path)
    lines = []
    for i in range(3):
        rgb, depth = f"/scene/rgb_{i:05d}.png", f"/scene/sync_depth_{i:05d}.png"
        for folder, name in ((images, rgb), (depths, depth)):
            (folder / name[1:]).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / name[1:]), np.full((4, 6), 1000 * (i + 1), np.uint16))
        lines.append(f"{rgb} {depth if i != 1 else 'None'} 518.8579")
    split = "kitti_eigen_test.txt" if kitti else "nyu_test.txt"
    (tmp_path / split).write_text("\n".join(lines) + "\n")
    cfg = Config.fromfile(str(ROOT / "configs" / "mmseg" / f"dinov2_vits14_{plugin}_dpt.py")).test_dataloader.dataset
    cfg.data_root = str(tmp_path)
    with DefaultScope.overwrite_default_scope("mmseg"):
        theirs = DATASETS.build(cfg)
    listed = [(theirs.get_data_info(i)["img_path"], theirs.get_data_info(i)["depth_map_path"])
              for i in range(len(theirs))]
    mine = getattr(data, ours)(tmp_path, split) if kitti else data.NYUDepthDataset(tmp_path, split)
    assert listed == [(str(item.image), str(item.target)) for item in mine.items]
    assert len(listed) == 2 and all(Path(p).is_file() for pair in listed for p in pair)


def test_plugin_bn_head_takes_syncbn_where_our_linear_head_does(monkeypatch):
    """The released heads' SyncBN: the plugin's DINOv2BNHead, as heads.LinearHead, takes SyncBatchNorm by default
    under torch.distributed with CUDA (statistics over every GPU's images) and BatchNorm2d elsewhere (SyncBatchNorm
    has no CPU kernel); sync_bn given is kept. Before, the plugin's ADE20K config trained per-GPU statistics."""
    from mmengine.config import Config

    from heads import LinearHead

    cfg = Config.fromfile(ROOT / "configs" / "mmseg" / "dinov2_vits14_ade20k_linear.py")
    head_cfg = {k: v for k, v in cfg.model.decode_head.items()}
    for distributed in (False, True):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: distributed)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: distributed)
        with DefaultScope.overwrite_default_scope("mmseg"):
            head = MODELS.build(head_cfg)
        ours = LinearHead([384], 150, in_index=[3])
        assert type(head.bn) is type(ours.bn) is (torch.nn.SyncBatchNorm if distributed else torch.nn.BatchNorm2d)
        for given in (False, True):
            with DefaultScope.overwrite_default_scope("mmseg"):
                kept = MODELS.build({**head_cfg, "sync_bn": given})
            assert isinstance(kept.bn, torch.nn.SyncBatchNorm) == given


def test_plugin_run_stops_at_a_nan_loss_before_its_checkpoint(tmp_path, backbone_file):
    """The plugin's runner (mmseg's) had neither of our engine's divergence checks: a learning rate of 1e6 trained
    on through NaN losses and saved NaN heads. DivergenceHook stops it at the first non-finite loss, before that
    iteration's checkpoint; CheckpointSanitizerHook refuses to write NaN heads."""
    from dinov2_dense.data.synthetic import write_ade20k_layout
    from dinov2_dense.engine.model import TrainingDiverged

    ade = write_ade20k_layout(tmp_path / "ade", 8, 4, config=dict(size=(84, 112)), progress=False)
    work = tmp_path / "seg"
    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at iteration \d+ .*stopped before this "
                                               r"iteration's checkpoint: lower optim_wrapper.optimizer.lr"):
        _run(ROOT / "configs/mmseg/synthetic_ade20k_linear.py", ade, work, backbone_file,
             {**_TINY_LINEAR, "optim_wrapper.optimizer.lr": 1e12, "default_hooks.checkpoint.interval": 1})
    for ckpt in work.glob("iter_*.pth"):  # those written before the loss went wrong hold finite heads
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), ckpt.name
    # a NaN head is not written, whatever the loss said
    from mmengine.runner import Runner

    from dinov2_dense.engine.runner import CheckpointSanitizerHook

    class Stub(Runner):  # only what the hook reads of a runner
        def __init__(self, model):
            self.__dict__.update(model=model, cfg=None)

    model = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    model[0].weight.data[0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"1 trained tensor\(s\) hold NaN or infinite values \(0.weight\)"):
        CheckpointSanitizerHook().before_save_checkpoint(Stub(model), {"meta": {}})
