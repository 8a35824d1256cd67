"""``dinov2-dense demo``: the toolkit end to end on one machine, with nothing to download.

1. synthetic scenes (ADE20K and NYU layouts of the same scenes, train and validation), and
   one-object scenes for the PCA figures; the shapes have one physical size per class
   (``DemoSettings.class_sizes``), so their apparent size tells their depth to a model that knows
   the class, as familiar sizes do in photographs;
2. a backbone (the named one; by default dinov2_vits14 where its weights are on this machine,
   otherwise the embedded dinov2_dense_tiny, so nothing is downloaded) and the same architecture
   at random init;
3. on each frozen backbone, a linear segmentation head and two depth heads, the paper's DPT and
   linear (lin.4) protocols, trained from feature caches (the backbone runs once per image and
   task), then evaluated on the validation scenes (mIoU and per-class IoU; abs_rel, rmse, d1);
   predictions are saved as files;
4. PCA maps of the scikit-image samples, of validation scenes and of one-object scenes, with the
   IoU of the first component's foreground against all objects of the validation scenes and
   against the object of the one-object scenes (one basis fitted jointly over each set, as in the
   paper's figures);
5. a report: ``report.html`` (self-contained: figures inlined), ``report.md`` and ``report.json``,
   with figures of the saved predictions next to the ground truth (``figures/``).

Each step's outputs are written whole (staged, then renamed) and the step is then recorded in
``demo.json``: Ctrl-C leaves no half-written file, and a rerun goes on from the first unfinished
step. A rerun with other settings refuses to mix them (``--overwrite`` starts afresh).
"""

from __future__ import annotations

import base64
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .fileio import staged_dir, write_json, write_text

__all__ = ["DemoSettings", "run_demo"]

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket")
TASKS = ("segmentation", "depth")
#: The heads trained on each backbone: step name -> (task, what the report calls it). Depth has the
#: paper's two protocols: the DPT decoder, and the linear head on the same 4 blocks (lin.4), whose
#: figures show the frozen features with the least help from the head.
HEADS = {"segmentation": ("segmentation", "linear head"), "depth": ("depth", "DPT head"),
         "depth_linear": ("depth", "linear head, lin.4")}
#: The PCA figures' one-object scenes: one large shape each, so "the largest object" is one object.
OBJECT_SCENES = dict(min_shapes=1, max_shapes=1, shape_size=(0.3, 0.45))


@dataclass(frozen=True)
class DemoSettings:
    """Scene counts and size, head training epochs (segmentation, DPT depth, linear depth), the scenes' appearance
    (see SceneConfig; "texture" by default: classes that show by texture only, which random
    features hardly see) and the number of one-object scenes of the PCA figures."""

    size: int = 168
    train: int = 192
    val: int = 48
    seg_epochs: int = 40
    depth_epochs: int = 25
    linear_depth_epochs: int = 25
    appearance: str = "texture"
    class_sizes: tuple[float, ...] | None = (0.2, 0.3, 0.45, 0.65)
    seed: int = 0
    pca_scenes: int = 12

    @classmethod
    def quick(cls, **kw) -> "DemoSettings":
        return cls(**{"size": 112, "train": 64, "val": 16, "seg_epochs": 20, "depth_epochs": 40, "linear_depth_epochs": 20,
                    "pca_scenes": 8, **kw})


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _settings_difference(old: dict, new: dict) -> str:
    """``size 112 -> 168, other weights``: how a demo's recorded settings differ from this run's."""
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            changes.append("other weights (their fingerprint differs)" if key == "weights" else
                           f"{key} {old.get(key, '(not set)')} -> {new.get(key, '(not set)')}")
    return ", ".join(changes)


class _State:
    """``demo.json``: the settings and the results of every finished step."""

    def __init__(self, work_dir: Path, settings: dict, overwrite: bool):
        self.path = work_dir / "demo.json"
        self.data = {"settings": settings, "steps": {}}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            # a setting that an older demo.json lacks came with a later version: taken as matching, so
            # that an older run continues with only the new steps to do
            old_settings = old.get("settings") or {}
            if old_settings and all(old_settings.get(k, v) == v for k, v in settings.items()) \
                    and set(old_settings) <= set(settings):
                old["settings"] = settings
            if old.get("settings") != settings and not overwrite:
                raise ValueError(f"{work_dir}: a demo with other settings is there ({self.path}: "
                                 f"{_settings_difference(old.get('settings') or {}, settings)}); pass --overwrite to "
                                 "start afresh, or another --work-dir")
            if old.get("settings") == settings and not overwrite:
                self.data = old

    def done(self, step: str):
        return self.data["steps"].get(step)

    def record(self, step: str, result) -> None:
        self.data["steps"][step] = result
        write_json(self.path, self.data)


def _scenes(root: Path, s: DemoSettings, progress: bool) -> None:
    from .data.synthetic import SceneConfig, write_ade20k_layout, write_folder_layout, write_nyu_layout

    cfg = SceneConfig(size=(s.size, s.size), appearance=s.appearance, class_sizes=s.class_sizes)
    with staged_dir(root, overwrite=True) as tmp:
        write_ade20k_layout(tmp / "ade", s.train, s.val, config=cfg, seed=s.seed, progress=progress)
        write_nyu_layout(tmp / "nyu", s.train, s.val, config=cfg, seed=s.seed, progress=progress)
        objects = SceneConfig(size=(s.size, s.size), appearance=s.appearance, **OBJECT_SCENES)
        write_folder_layout(tmp / "objects", s.pca_scenes, config=objects, seed=s.seed + 1, progress=progress)


def _predictor(backbone, head: str, num_classes: int, seed: int):
    """The predictor of one of HEADS on ``backbone`` (the official layouts: linear segmentation on
    the last block with the final norm; depth on 4 blocks without it, with class tokens)."""
    from heads import DensePredictor, DPTHead, LinearDepthHead, LinearHead

    torch.manual_seed(seed)
    d, depth = backbone.embed_dim, len(backbone.blocks)
    if head == "segmentation":
        return DensePredictor(backbone, LinearHead([d], num_classes, sync_bn=False), task="segmentation",
                              layers=[depth - 1])
    layers = depth_layers(depth)
    blocks = sorted(set(layers))  # what the backbone computes (and the feature cache holds), once each
    if head == "depth_linear":
        decoder = LinearDepthHead([d] * 4, max_depth=10.0)
    else:  # the DPT decoder at a width for the backbone (256 for ViT-L in the paper; 64 for a 192-wide ViT)
        decoder = DPTHead(d, channels=min(256, max(32, d // 3)), max_depth=10.0,
                          post_process_channels=[max(1, d // 8), max(1, d // 4), max(1, d // 2), d])
    if blocks != layers:  # fewer than 4 blocks: the head's 4 inputs repeat some (its weights keep their layout)
        index = [blocks.index(layer) for layer in layers]
        decoder.register_forward_pre_hook(lambda _, args: ([args[0][i] for i in index], *args[1:]))
    return DensePredictor(backbone, decoder, task="depth", layers=blocks, norm=False, class_token=True)


def depth_layers(depth: int) -> list[int]:
    """The 4 blocks the depth heads read: the official ones for the depth of a released backbone (12: [2, 5, 8,
    11]; ViT-L's 24: [4, 11, 17, 23]; 40: [9, 19, 29, 39]), else at the quarters of the depth (4 blocks: [0, 1, 2,
    3]). A backbone of fewer blocks repeats some, in block order (3: [0, 1, 1, 2]; 2: [0, 0, 1, 1]; 1: [0, 0, 0,
    0]), so that any depth gives the heads their 4 inputs."""
    from .settings import BACKBONE_SETTINGS

    if depth < 1:
        raise ValueError(f"a backbone of {depth} blocks has no features for the depth heads")
    official = next((list(s.depth_layers) for s in BACKBONE_SETTINGS.values() if s.depth == depth), None)
    if official is not None:
        return official
    layers = [max(0, round(depth * f) - 1) for f in (0.25, 0.5, 0.75, 1.0)]
    return layers if depth < 4 or len(set(layers)) == 4 else list(range(depth - 4, depth))


def _datasets(root: Path, task: str):
    from .data import ADE20KDataset, NYUDepthDataset

    if task == "segmentation":
        return ADE20KDataset(root / "ade", "training"), ADE20KDataset(root / "ade", "validation")
    return NYUDepthDataset(root / "nyu", "nyu_train.txt"), NYUDepthDataset(root / "nyu", "nyu_test.txt")


def _heads_step(work: Path, label: str, backbone, head: str, s: DemoSettings, progress: bool) -> dict:
    """Train one of HEADS from a feature cache, predict the validation scenes into files, score them."""
    from heads import CrossEntropyLoss, GradientLoss, SigLoss

    from .engine.feature_cache import FeatureCache, train_head
    from .evaluation.depth import depth_png_units

    task = HEADS[head][0]
    predictor = _predictor(backbone, head, 5, s.seed)
    train, val = _datasets(work / "scenes", task)
    cache_dir = work / "cache" / f"{label}_{task}"  # the two depth heads read the same features
    cache = None
    if (cache_dir / "meta.json").is_file():  # an earlier run's: kept while it fits the backbone and the scenes
        cache = FeatureCache(cache_dir)
        try:
            cache.check(predictor)
        except ValueError:
            cache = None
            shutil.rmtree(cache_dir)
    if cache is None:
        cache = FeatureCache.build(predictor, train, cache_dir, progress=progress)
    # SigLoss, as the released depth heads trained, with our spatial gradient loss, which sharpens the demo's
    # short runs (the released configs list a gradient loss that is 0 in their runs), for both depth heads
    losses = [CrossEntropyLoss()] if task == "segmentation" else [SigLoss(), GradientLoss(loss_weight=0.5)]
    t = time.time()
    epochs = {"segmentation": s.seg_epochs, "depth": s.depth_epochs, "depth_linear": s.linear_depth_epochs}[head]
    # 5e-3 for the linear depth head (the rate of Denoising-ViT's copy of the NYU linear config; the
    # released files say 1e-4 over 38,400 iterations): at 1e-3 it is far from converged in 25 epochs
    lr = 5e-3 if head == "depth_linear" else 1e-3
    history = train_head(predictor, cache, losses, epochs=epochs, batch_size=8, lr=lr, seed=s.seed,
                         progress=progress)
    predictor.eval()
    out = work / "predictions" / f"{label}_{head}"
    root = ground_truth_root(val)
    with staged_dir(out, overwrite=True) as tmp, torch.no_grad():
        for i in range(len(val)):
            sample = val[i]
            pred = predictor.predict(sample["image"][None])
            # named as its ground truth below the root (NYU-layout stems repeat across scene folders), as
            # `test --out` names them: eval-depth and other tools pair the files by these names
            path = tmp / _prediction_name(sample, root)
            path.parent.mkdir(parents=True, exist_ok=True)
            if task == "segmentation":
                _write_png(path, pred.argmax(1)[0].numpy().astype(np.uint8))
            else:
                _write_png(path, depth_png_units(pred[0, 0].numpy(), 1000.0))  # millimetres
        # the official head files' layout (decode_head.*), which `test` and load_model(weights=...) read
        torch.save({f"decode_head.{k}": v for k, v in predictor.decode_head.state_dict().items()}, tmp / "head.pth")
    return {"metrics": score_predictions(out, work / "scenes", task), "final_loss": float(np.mean(history[-10:])),
            "train_seconds": round(time.time() - t, 1)}


def _write_png(path: Path, array: np.ndarray) -> None:
    from .fileio import write_image  # (encoded in memory: OpenCV crashed on a work dir whose name is not UTF-8)

    write_image(path, array)


def eval_depth_command(work: Path, predictions: str) -> str:
    """The ``eval-depth`` command that scores a folder of the demo's depth predictions as the report does
    (the NYU preset's range and scale, no Eigen crop: the scenes are not 480x640)."""
    import shlex

    from .evaluation.depth_files import eval_depth_options

    _, val = _datasets(work / "scenes", "depth")
    options = eval_depth_options("nyu", pred_scale=1000.0, max_depth=10.0, crop=None)
    return shlex.join(["dinov2-dense", "eval-depth", str(work / "predictions" / predictions),
                       str(ground_truth_root(val)), *options])


def ground_truth_root(dataset) -> Path:
    """The folder holding every ground-truth file of ``dataset`` (the narrowest): the demo's prediction
    files are named as their ground truth below it, so ``eval-depth PREDICTIONS ROOT`` pairs them."""
    import os

    return Path(os.path.commonpath([str(Path(item.target).parent) for item in dataset.items]))


def _prediction_name(sample: dict, root: Path) -> Path:
    return Path(sample["meta"]["target_path"]).relative_to(root).with_suffix(".png")


def _name_older_predictions(work: Path) -> None:
    """Predictions of an older demo, named by index (``00000.png``), get their ground truth's names."""
    for task in TASKS:
        folders = [work / "predictions" / f"{b}_{h}" for h, (t, _) in HEADS.items() if t == task
                   for b in ("pretrained", "random")]
        folders = [f for f in folders if (f / "00000.png").is_file()]
        if not folders:
            continue
        _, val = _datasets(work / "scenes", task)
        root = ground_truth_root(val)
        for folder in folders:
            for i in range(len(val)):
                target = {"meta": {"target_path": str(val.items[i].target)}}  # the name, without decoding the sample
                old, new = folder / f"{i:05d}.png", folder / _prediction_name(target, root)
                if old.is_file() and not new.exists():
                    new.parent.mkdir(parents=True, exist_ok=True)
                    old.rename(new)


def _read_prediction(pred_dir: Path, index: int, sample: dict, root: Path) -> np.ndarray:
    from .images import ImageError, decode_image  # (from the file's bytes: any name)

    path = pred_dir / _prediction_name(sample, root)
    try:
        return decode_image(path, "unchanged")
    except (FileNotFoundError, ImageError):
        raise FileNotFoundError(f"{path}: no prediction for {sample['meta']['path']} (missing or unreadable)") from None


def score_predictions(pred_dir: str | Path, scenes: str | Path, task: str) -> dict:
    """The metrics of a folder of saved predictions against the scenes' ground truth: the numbers
    the report shows, recomputed from the files (segmentation: aAcc, mIoU, per-class IoU; depth:
    the averaged depth metrics)."""
    from .evaluation import segmentation_metrics
    from .evaluation.depth import average_depth_metrics, depth_metrics

    from .images import read_depth

    _, val = _datasets(Path(scenes), task)
    root = ground_truth_root(val)
    preds, gts, per_image = [], [], []
    for i in range(len(val)):
        sample = val[i]
        raw = _read_prediction(Path(pred_dir), i, sample, root)
        if task == "segmentation":
            preds.append(raw.astype(np.int64))
            gts.append(sample["seg"].numpy())
        else:  # both read from the millimetre files in float64, as eval-depth reads them
            per_image.append(depth_metrics(raw.astype(np.float64) / 1000, read_depth(sample["meta"]["target_path"], 1000),
                                           max_depth=10.0))
    if task == "segmentation":
        m = segmentation_metrics(preds, gts, 5)
        return {"mIoU": float(m["mIoU"]), "aAcc": float(m["aAcc"]), "IoU": [float(v) for v in m["IoU"]]}
    m = average_depth_metrics(per_image)
    return {k: float(m[k]) for k in ("abs_rel", "rmse", "d1")}


def _pca_step(work: Path, backbones: dict, s: DemoSettings) -> dict:
    """PCA figures (scikit-image samples, validation scenes, one-object scenes) per backbone, and
    the IoU of the first component's foreground against all objects of the validation scenes and
    against the largest (there: the only) object of the one-object scenes."""
    from .data import ADE20KDataset
    from .images import decode_image
    from .viz import pca_maps, save_figure

    val = ADE20KDataset(work / "scenes" / "ade", "validation")
    n = min(6, len(val))
    scene_files = [str(val[i]["meta"]["path"]) for i in range(n)]
    objects = [(seg > 0) & (seg < 255) for seg in (val[i]["seg"].numpy() for i in range(n))]
    object_files = sorted((work / "scenes" / "objects" / "images").glob("*.png"))
    largest = [_largest_object(decode_image(work / "scenes" / "objects" / "masks" / f.name)) for f in object_files]
    result = {}
    with staged_dir(work / "pca", overwrite=True) as tmp:
        for label, backbone in backbones.items():
            samples = pca_maps(backbone, [f"skimage:{name}" for name in SKIMAGE_SAMPLES], size=224, progress=False)
            save_figure(samples, tmp / f"{label}_skimage.png", title=f"{label}: PCA of the scikit-image samples")
            scenes = pca_maps(backbone, scene_files, size=s.size, progress=False)
            save_figure(scenes, tmp / f"{label}_scenes.png", title=f"{label}: PCA of validation scenes")
            single = pca_maps(backbone, [str(f) for f in object_files], size=s.size, progress=False)
            save_figure(single[:6], tmp / f"{label}_objects.png", title=f"{label}: PCA of one-object scenes")
            ious = [_iou(m.mask, g) for m, g in zip(single, largest)]
            fg = [_iou(m.mask, g) for m, g in zip(scenes, objects)]
            result[label] = {"largest_object_iou": ious, "mean_largest_object_iou": float(np.mean(ious)),
                             "objects_iou": fg, "mean_objects_iou": float(np.mean(fg))}
    return result


def _prediction_figures(work: Path, n: int = 4) -> list[Path]:
    """Figures of the first ``n`` validation scenes, one per task, drawn from the saved prediction
    files: image | ground truth | then pretrained and random init for each head of the task (depth
    in magma, near = bright, one range per row: the ground truth's)."""
    from .images import decode_image
    from .viz import colour_depth, colour_labels, save_grid

    paths = []
    with staged_dir(work / "figures", overwrite=True) as tmp:
        for task in TASKS:
            _, val = _datasets(work / "scenes", task)
            heads = [h for h, (t, _) in HEADS.items() if t == task]
            root = ground_truth_root(val)
            rows, labels = [], []
            for i in range(min(n, len(val))):
                sample = val[i]
                preds = [_read_prediction(work / "predictions" / f"{b}_{h}", i, sample, root)
                         for h in heads for b in ("pretrained", "random")]
                if task == "segmentation":
                    maps = [colour_labels(m, palette=[(64, 64, 64)]) for m in [sample["seg"].numpy(), *preds]]  # grey bg
                else:
                    gt = sample["depth"].numpy().squeeze()
                    lo, hi = float(gt[gt > 0].min()), float(gt.max())
                    maps = [colour_depth(m, lo, hi) for m in [gt, *[p.astype(np.float32) / 1000 for p in preds]]]
                rows.append([decode_image(sample["meta"]["path"]), *maps])
                labels.append(Path(sample["meta"]["path"]).name)
            name = f"{task}_predictions.png"
            titles = ["image", "ground truth"] + [f"{b}, {HEADS[h][1]}" for h in heads for b in ("pretrained", "random init")]
            save_grid(rows, tmp / name, titles=titles,
                      row_labels=labels, suptitle=f"{task}: validation scenes, heads on the frozen backbones")
            paths.append(work / "figures" / name)
    return paths


def _largest_object(seg: np.ndarray) -> np.ndarray:
    """The largest non-background class region of a class-id mask (the object of a one-object scene)."""
    counts = np.bincount(seg[seg < 255].ravel(), minlength=2)
    counts[0] = 0
    return seg == counts.argmax()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


#: Decimals of the report's numbers, one per kind, whatever their size: segmentation metrics (mIoU, aAcc, per-class
#: IoU) are percent, with 2 as `test` and the paper give them; depth metrics (metres, ratios) and the PCA IoUs
#: (fractions) with 3. report.json keeps every number unrounded.
DECIMALS = {"segmentation": 2, "depth": 3, "pca": 3}


def _number(value, decimals: int) -> str:
    """A number of the report (None or NaN: a class absent from the scenes and the predictions: "nan")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return f"{value:.{decimals}f}"


def _difference(a, b):
    return None if a is None or b is None else a - b


def _report(work: Path, state: dict, model: str) -> Path:
    s = state["settings"]
    steps = state["steps"]
    seg = {b: steps[f"{b}_segmentation"]["metrics"] for b in ("pretrained", "random")}
    dep = {b: steps[f"{b}_depth"]["metrics"] for b in ("pretrained", "random")}
    lin = {b: steps[f"{b}_depth_linear"]["metrics"] for b in ("pretrained", "random")}
    pca = steps["pca"]
    from .data.synthetic import class_names

    names = class_names(5)
    rows_seg = [("mIoU", seg["pretrained"]["mIoU"], seg["random"]["mIoU"])] + [
        (f"IoU {n}", seg["pretrained"]["IoU"][k], seg["random"]["IoU"][k]) for k, n in enumerate(names)]
    rows_dep = [(k, dep["pretrained"][k], dep["random"][k]) for k in ("abs_rel", "rmse", "d1")]
    rows_lin = [(k, lin["pretrained"][k], lin["random"][k]) for k in ("abs_rel", "rmse", "d1")]
    rows_pca = [("first-component foreground vs all objects (validation scenes), IoU",
                 pca["pretrained"]["mean_objects_iou"], pca["random"]["mean_objects_iou"]),
                ("first-component foreground vs the object (one-object scenes), IoU",
                 pca["pretrained"]["mean_largest_object_iou"], pca["random"]["mean_largest_object_iou"])]
    summary = {"model": model, "settings": s, "segmentation": seg, "depth": dep, "depth_linear": lin, "pca": pca}
    write_json(work / "report.json", summary)
    title = f"dinov2-dense demo: {model} against the same architecture at random init"
    intro = (f"{s['train']} training and {s['val']} validation synthetic scenes of {s['size']}x{s['size']} pixels "
             f"(appearance: {s['appearance']}); on frozen features, the linear segmentation head trained "
             f"{s['seg_epochs']} epochs, the DPT depth head {s['depth_epochs']} and the linear depth head "
             f"{s['linear_depth_epochs']}.")
    if s.get("class_sizes"):
        intro += (" Each shape class has its own physical size, so a shape's apparent size (size / depth) shows "
                  "its depth to a model that tells the classes apart (the familiar-size cue).")
    intro += f" The depth metrics again from the saved maps: {eval_depth_command(work, 'pretrained_depth')}"

    def cells(row, decimals):
        return [row[0], *(_number(v, decimals) for v in (row[1], row[2], _difference(row[1], row[2])))]

    def md_table(header, rows, decimals):
        lines = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)]
        lines += [f"| {' | '.join(cells(r, decimals))} |" for r in rows]
        return "\n".join(lines)

    def html_table(header, rows, decimals):
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(r, decimals)) + "</tr>" for r in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    header = ["", model, "random init", "difference"]
    sections = [("Segmentation (linear head), percent", rows_seg, DECIMALS["segmentation"]),
                ("Depth (DPT head), metres", rows_dep, DECIMALS["depth"]),
                ("Depth (linear head on 4 blocks, lin.4), metres", rows_lin, DECIMALS["depth"]),
                ("PCA maps", rows_pca, DECIMALS["pca"])]
    figures = _prediction_figures(work) + sorted((work / "pca").glob("*.png"))
    md = [f"# {title}", "", intro, ""]
    html = [f"<!doctype html><meta charset='utf-8'><title>{title}</title><style>body{{font-family:sans-serif;"
            "max-width:1000px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            f"img{{max-width:100%}}</style><h1>{title}</h1><p>{intro}</p>"]
    for name, rows, decimals in sections:
        md += [f"## {name}", "", md_table(header, rows, decimals), ""]
        html.append(f"<h2>{name}</h2>{html_table(header, rows, decimals)}")
    for fig in figures:
        md += [f"![{fig.stem}]({fig.parent.name}/{fig.name})", ""]
        data = base64.b64encode(fig.read_bytes()).decode()
        html.append(f"<h3>{fig.stem}</h3><img alt='{fig.stem}' src='data:image/png;base64,{data}'>")
    write_text(work / "report.md", "\n".join(md))
    path = work / "report.html"
    write_text(path, "".join(html))
    return path


#: What the demo says instead of the general "try random weights" hint: it compares against random init.
DEMO_WEIGHTS_HINT = ("The demo compares a backbone with its random initialisation, so it needs real weights: "
                     "leave out --model to use the backbone embedded in the package (dinov2_dense_tiny), or "
                     "--weights FILE (a backbone file, e.g. a pretraining export: dinov2-dense pretrain "
                     "configs/pretrain/tiny_cpu.py writes work_dirs/pretrain/tiny_cpu/export/backbone.safetensors).")
#: The official backbone the demo prefers when its weights are already on this machine.
PREFERRED_OFFICIAL = "dinov2_vits14"


def default_backbone() -> tuple[str, str]:
    """The demo's backbone when none is named: dinov2_vits14 where its weights are on this machine
    (nothing is downloaded), else the embedded one. Returns (zoo name, why, for the log)."""
    from .hub import DEFAULT_EMBEDDED, find_weights

    found = find_weights(PREFERRED_OFFICIAL)
    if found is not None:
        return PREFERRED_OFFICIAL, f"backbone: {PREFERRED_OFFICIAL} (official weights found at {found})"
    return DEFAULT_EMBEDDED, (f"backbone: {DEFAULT_EMBEDDED}, embedded in the package ({PREFERRED_OFFICIAL}'s weights "
                              f"are not on this machine; --model {PREFERRED_OFFICIAL} downloads them)")


#: What the demo writes into its work dir (and all that --overwrite removes).
DEMO_ENTRIES = ("demo.json", "scenes", "cache", "predictions", "pca", "figures", "report.json", "report.md",
                "report.html")


def _work_dir(work: Path, overwrite: bool) -> Path:
    """The demo's work dir, checked before anything is written: a new or empty folder, or one that an
    earlier demo wrote (it holds :data:`~dinov2_dense.fileio.MARKER`, or only demo entries: an older
    version's), which a rerun continues. ``overwrite`` removes the demo's own entries only, never
    other files, and never in the current directory or a folder holding it."""
    from .fileio import MARKER, OutputError, check_output_dir, is_inside

    if work.exists() and not work.is_dir():
        raise OutputError(f"--work-dir {work} is a file; give a folder (the demo writes scenes, caches and a report "
                          "into it)")
    entries = sorted(p.name for p in work.iterdir()) if work.is_dir() else []
    foreign = [e for e in entries if e not in DEMO_ENTRIES and e != MARKER and not e.startswith(".")]
    # the demo's: marked, or an older version's (its demo.json among demo entries only)
    ours = (work / MARKER).is_file() or ((work / "demo.json").is_file() and not foreign)
    if entries and not ours:
        shown = foreign or [e for e in entries if not e.startswith(".")] or entries
        raise OutputError(f"--work-dir {work} holds files that the demo did not write ({', '.join(shown[:3])}"
                          f"{', ...' if len(shown) > 3 else ''}); give an empty or new folder")
    if overwrite and entries:
        if is_inside(Path.cwd(), work):
            raise OutputError(f"--work-dir {work} --overwrite: it is or holds the current directory; run it from "
                              "elsewhere, or give another folder")
        for name in DEMO_ENTRIES:  # the demo's own entries; anything else (a user's notes) stays
            target = work / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    if (work / "figures").is_dir():  # written again at the end: a file of the user's in it stops the demo now
        check_output_dir(work / "figures", overwrite=True, what="the demo's figures folder")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).touch()
    return work


def run_demo(work_dir: str | Path, model: str | None = None, weights: str | None = "official", *,
             settings: DemoSettings | None = None, label: str | None = None, overwrite: bool = False,
             progress: bool = True) -> Path:
    """Run (or continue) the demo in ``work_dir``; returns the path of ``report.html``."""
    from .hub import NO_WEIGHTS_HINT, WeightsNotFoundError, architecture, load_backbone

    s = settings or DemoSettings()
    try:  # before anything is written (or an old run removed): a missing download stops the demo at once
        pretrained = load_backbone(model, weights=weights)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, DEMO_WEIGHTS_HINT)) from None
    work = _work_dir(Path(work_dir), overwrite)
    label = label or model or str(weights)
    from .checkpoints import fingerprint, forward_settings

    # through JSON, as demo.json stores them (tuples come back as lists), so that a rerun compares equal; the
    # weights' fingerprint, so that other weights under the same --model are other settings, not the old results,
    # and the settings that change the features but no tensor (an export's backbone.json edited, say)
    recorded = {**asdict(s), "model": label, "weights": fingerprint(pretrained),
                "forward": forward_settings(pretrained)}
    state = _State(work, json.loads(json.dumps(recorded)), overwrite)
    total = 4 + 2 * len(HEADS)
    step_no = 0

    def announce(text: str, step: str | None = None) -> None:
        nonlocal step_no
        step_no += 1
        earlier = " (done earlier: from demo.json)" if step is not None and state.done(step) else ""
        _log(f"[{step_no}/{total}] {text}{earlier}")

    announce(f"synthetic scenes: {s.train} train + {s.val} val, {s.size}x{s.size}", "scenes")
    if not state.done("scenes"):
        _scenes(work / "scenes", s, progress)
        state.record("scenes", {"train": s.train, "val": s.val})
    _name_older_predictions(work)
    announce(f"backbones: {label} and its architecture at random init")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s.seed)
        random = architecture(model, weights).eval()
    if len(pretrained.blocks) < 4:
        _log(f"    {len(pretrained.blocks)} block(s): the depth heads' 4 inputs are blocks "
             f"{depth_layers(len(pretrained.blocks))}")
    backbones = {"pretrained": pretrained, "random": random}
    for head, (task, what) in HEADS.items():
        for name, backbone in backbones.items():
            step = f"{name}_{head}"
            announce(f"{task}, {what}, on the {name} backbone", step)
            if not state.done(step):
                state.record(step, _heads_step(work, name, backbone, head, s, progress))
            m = state.done(step)["metrics"]
            _log("    " + ", ".join(f"{k} {_number(v, DECIMALS[task])}" for k, v in m.items()
                                    if not isinstance(v, list)))
    announce("PCA maps", "pca")
    if not state.done("pca"):
        state.record("pca", _pca_step(work, backbones, s))
    announce("report")
    return _report(work, state.data, label)
