"""``dinov2-dense demo`` end to end: scenes, heads on a frozen backbone and on its random init, saved
predictions, PCA maps and the report; the report's numbers are recomputed from the saved files with
the metric functions; a rerun continues instead of starting again; other settings are refused."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_dense.cli import main
from dinov2_dense.demo import DemoSettings, run_demo, score_predictions
from dinov2_dense.evaluation import segmentation_metrics

from .conftest import tiny_vit


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """A small trained-looking backbone: weights that are not an init (perturbed), with its JSON."""
    folder = tmp_path_factory.mktemp("backbone")
    model = tiny_vit(depth=4, dim=48, img=56)
    torch.save(model.state_dict(), folder / "backbone.pth")
    (folder / "backbone.json").write_text(json.dumps(model.arch_kwargs()))
    return folder / "backbone.pth"


TINY = DemoSettings(size=56, train=8, val=4, seg_epochs=2, depth_epochs=2, linear_depth_epochs=2, pca_scenes=3)


def test_demo_report_numbers_come_from_the_saved_predictions(tmp_path, backbone_file, capsys):
    work = tmp_path / "demo"
    report = run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    summary = json.loads((work / "report.json").read_text())
    for label in ("pretrained", "random"):
        seg = score_predictions(work / "predictions" / f"{label}_segmentation", work / "scenes", "segmentation")
        assert summary["segmentation"][label] == seg
        for head in ("depth", "depth_linear"):  # the DPT and the linear (lin.4) depth heads
            depth = score_predictions(work / "predictions" / f"{label}_{head}", work / "scenes", "depth")
            assert summary[head][label] == depth
        pca = summary["pca"][label]
        for key, n in (("largest_object_iou", 3), ("objects_iou", 4)):  # one-object scenes; validation scenes
            assert len(pca[key]) == n and all(0 <= v <= 1 for v in pca[key])
            assert pca[f"mean_{key}"] == pytest.approx(np.mean(pca[key]))
    # the metric function itself, on the saved files, independently of score_predictions
    import cv2

    from dinov2_dense.data import ADE20KDataset

    val = ADE20KDataset(work / "scenes" / "ade", "validation")
    root = Path(val[0]["meta"]["target_path"]).parent  # named as the ground truth: the annotations' own names
    preds = [cv2.imread(str(work / "predictions" / "pretrained_segmentation" /
                            Path(val[i]["meta"]["target_path"]).relative_to(root).with_suffix(".png")),
                        cv2.IMREAD_UNCHANGED) for i in range(len(val))]
    assert all(p is not None for p in preds)
    ref = segmentation_metrics([p.astype(np.int64) for p in preds], [val[i]["seg"].numpy() for i in range(len(val))], 5)
    assert summary["segmentation"]["pretrained"]["mIoU"] == pytest.approx(ref["mIoU"])
    html, md = report.read_text(), (work / "report.md").read_text()
    # the eval-depth command the report gives scores the saved maps to the report's numbers
    import shlex

    command = next(line for line in md.splitlines() if "dinov2-dense eval-depth" in line)
    command = command[command.index("dinov2-dense eval-depth"):]
    capsys.readouterr()
    assert main(shlex.split(command)[1:] + ["--out", str(tmp_path / "m.json"), "--no-progress"]) == 0
    assert "warning" not in capsys.readouterr().err  # every prediction paired with its ground truth
    scored = json.loads((tmp_path / "m.json").read_text())
    assert scored["images"] == TINY.val
    for k in ("abs_rel", "rmse", "d1"):
        assert scored[k] == pytest.approx(summary["depth"]["pretrained"][k], rel=1e-12, abs=1e-12), k
    assert f"{summary['segmentation']['pretrained']['mIoU']:.2f}" in md
    assert f"{summary['depth']['random']['rmse']:.3f}" in html
    assert f"{summary['depth_linear']['pretrained']['rmse']:.3f}" in md and "lin.4" in md
    assert summary["depth_linear"]["pretrained"] != summary["depth"]["pretrained"]  # two heads, two results
    assert html.count("data:image/png;base64,") == 8 and "<img" in html  # self-contained: figures inlined
    for task in ("segmentation", "depth"):  # predictions next to the ground truth, linked from the Markdown copy
        assert (work / "figures" / f"{task}_predictions.png").is_file() and f"(figures/{task}_predictions.png)" in md
    assert summary["settings"]["appearance"] == "texture"  # the default: classes random features hardly see
    for layout in ("ade", "nyu"):  # the familiar-size cue of depth, in both layouts of the same scenes
        config = json.loads((work / "scenes" / layout / "synthetic.json").read_text())["config"]
        assert config["class_sizes"] == summary["settings"]["class_sizes"] == list(DemoSettings().class_sizes)
    assert "familiar-size cue" in md
    assert (work / "predictions" / "random_depth" / "head.pth").is_file()
    lin_head = torch.load(work / "predictions" / "pretrained_depth_linear" / "head.pth", weights_only=True)
    # in the official head files' layout (it held bare keys, which `test` refused)
    assert lin_head["decode_head.conv_depth.weight"].shape[1] == 4 * 2 * 48  # 4 blocks, each map and class token
    # the two depth heads share one feature cache per backbone
    assert sorted(p.name for p in (work / "cache").iterdir()) == ["pretrained_depth", "pretrained_segmentation",
                                                                    "random_depth", "random_segmentation"]

    # a rerun finds every step done and writes the same report
    state = json.loads((work / "demo.json").read_text())
    assert set(state["steps"]) == {"scenes", "pretrained_segmentation", "random_segmentation", "pretrained_depth",
                                   "random_depth", "pretrained_depth_linear", "random_depth_linear", "pca"}
    capsys.readouterr()
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    assert json.loads((work / "report.json").read_text()) == summary
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]
    # each step that was done says so (the rerun read as if it had computed them again)
    assert sum(line.endswith("(done earlier: from demo.json)") for line in steps) == 8, steps
    lost = sorted((work / "predictions" / "random_depth").rglob("*.png"))[1]
    lost.unlink()  # a lost prediction file is named
    with pytest.raises(FileNotFoundError, match=f"random_depth/.*{lost.name}: no prediction for"):
        score_predictions(work / "predictions" / "random_depth", work / "scenes", "depth")
    with pytest.raises(ValueError, match="other settings"):
        run_demo(work, None, str(backbone_file), settings=DemoSettings(size=56, train=8, val=4, seg_epochs=3, depth_epochs=2),
                 progress=False)


def test_the_pca_iou_is_computed_against_each_one_object_scene(tmp_path, backbone_file, monkeypatch):
    """The one-object scenes hold one shape each, and the reported IoU is that of the saved mask
    figures' foreground against it: recomputed here from pca_maps on the scene files."""
    import dinov2_dense.demo as demo
    from dinov2_dense.hub import load_backbone
    from dinov2_dense.images import decode_image
    from dinov2_dense.viz import pca_maps

    work = tmp_path / "demo"
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    summary = json.loads((work / "report.json").read_text())
    files = sorted((work / "scenes" / "objects" / "images").glob("*.png"))
    assert len(files) == 3
    masks = [decode_image(work / "scenes" / "objects" / "masks" / f.name) for f in files]
    for m in masks:  # one object (one class besides the background) per scene
        assert len(set(np.unique(m)) - {0}) == 1
    maps = pca_maps(load_backbone(None, weights=str(backbone_file)), [str(f) for f in files], size=56, progress=False)
    ious = [float((p.mask & (m > 0)).sum() / max(1, (p.mask | (m > 0)).sum())) for p, m in zip(maps, masks)]
    assert summary["pca"]["pretrained"]["largest_object_iou"] == pytest.approx(ious)
    assert demo.OBJECT_SCENES["max_shapes"] == 1


def test_an_interrupted_demo_continues_where_it_stopped(tmp_path, backbone_file, monkeypatch):
    import dinov2_dense.demo as demo

    work = tmp_path / "demo"
    real = demo._pca_step

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "_pca_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    assert not (work / "pca").exists() and not (work / "report.html").exists()
    done = json.loads((work / "demo.json").read_text())["steps"]
    assert "random_depth" in done and "pca" not in done
    calls = []
    monkeypatch.setattr(demo, "_pca_step", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(demo, "_heads_step", lambda *a, **k: pytest.fail("a finished step ran again"))
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    assert calls == [1] and (work / "report.html").is_file()
    # other weights under the same name (`--model X --weights other.pth`) are other settings, not the old results
    other = tmp_path / "other"
    other.mkdir()
    state = torch.load(backbone_file, weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, other / "backbone.pth")
    (other / "backbone.json").write_text((backbone_file.parent / "backbone.json").read_text())
    with pytest.raises(ValueError, match=r"a demo with other settings is there \(.*demo.json: other weights \(their "
                                         r"fingerprint differs\)\)"):  # (it named no setting)
        run_demo(work, None, str(other / "backbone.pth"), settings=TINY, label=str(backbone_file), progress=False)


def test_a_demo_of_an_older_version_continues_with_the_new_steps(tmp_path, backbone_file, monkeypatch):
    """A demo.json written before a setting existed (here linear_depth_epochs, with the linear depth
    heads) continues: only the new steps run. A setting it has with another value is still refused."""
    import dinov2_dense.demo as demo

    work = tmp_path / "demo"
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    state = json.loads((work / "demo.json").read_text())
    del state["settings"]["linear_depth_epochs"]
    for step in ("pretrained_depth_linear", "random_depth_linear"):
        del state["steps"][step]
    (work / "demo.json").write_text(json.dumps(state))
    ran = []
    real = demo._heads_step
    monkeypatch.setattr(demo, "_heads_step", lambda work, label, bb, head, *a: ran.append(f"{label}_{head}")
                        or real(work, label, bb, head, *a))
    # a scene file touched since: the kept depth feature cache no longer fits it and is built again
    import os

    scene = Path(next(iter(json.loads((work / "cache" / "pretrained_depth" / "meta.json").read_text())["files"])))
    os.utime(scene, ns=(scene.stat().st_atime_ns, scene.stat().st_mtime_ns + 10**9))
    built = (work / "cache" / "pretrained_depth" / "meta.json").stat().st_mtime_ns
    # predictions named by index, as older demos named them: given their ground truth's names again
    from dinov2_dense.demo import _datasets, _prediction_name, ground_truth_root

    _, val = _datasets(work / "scenes", "depth")
    named = [work / "predictions" / "random_depth" / _prediction_name(val[i], ground_truth_root(val))
             for i in range(len(val))]
    for i, path in enumerate(named):
        path.rename(work / "predictions" / "random_depth" / f"{i:05d}.png")
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    assert all(path.is_file() for path in named) and not (work / "predictions" / "random_depth" / "00000.png").exists()
    assert ran == ["pretrained_depth_linear", "random_depth_linear"]
    assert (work / "cache" / "pretrained_depth" / "meta.json").stat().st_mtime_ns != built
    assert json.loads((work / "demo.json").read_text())["settings"]["linear_depth_epochs"] == TINY.linear_depth_epochs
    state = json.loads((work / "demo.json").read_text())
    state["settings"]["no_such_setting"] = 1  # a setting this version does not know: not a match
    (work / "demo.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"other settings is there \(.*: no_such_setting 1 -> \(not set\)\)"):
        run_demo(work, None, str(backbone_file), settings=TINY, progress=False)


def test_demo_command(tmp_path, backbone_file, capsys, monkeypatch):
    monkeypatch.setattr("dinov2_dense.demo.DemoSettings.quick", classmethod(lambda cls, **kw: TINY))
    out = tmp_path / "d"
    assert main(["demo", "--work-dir", str(out), "--quick", "--weights", str(backbone_file), "--no-progress"]) == 0
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    assert main(["demo", "--work-dir", str(out), "--weights", "random"]) == 2
    assert "give real weights" in capsys.readouterr().err
    # official weights that cannot be found: stopped before anything is written, with the demo's own hint
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(tmp_path / "no_weights_here"))
    monkeypatch.setattr("dinov2_dense.hub.download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert main(["demo", "--work-dir", str(tmp_path / "e"), "--model", "dinov2_vits14", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "dinov2_vits14_pretrain.pth" in err and "needs real weights: leave out --model" in err
    assert "--weights random" not in err and not (tmp_path / "e").exists()


def test_the_demo_with_no_backbone_named_runs_the_embedded_one(tmp_path, torch_home, capsys, monkeypatch):
    monkeypatch.setattr("dinov2_dense.demo.DemoSettings.quick", classmethod(lambda cls, **kw: TINY))
    monkeypatch.setattr("dinov2_dense.hub.download", lambda *a, **k: pytest.fail("the demo must not download"))
    out = tmp_path / "d"
    assert main(["demo", "--work-dir", str(out), "--quick", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "dinov2_dense_tiny, embedded in the package" in captured.err
    summary = json.loads((out / "report.json").read_text())
    assert summary["model"] == "dinov2_dense_tiny"
    assert "dinov2_dense_tiny" in (out / "report.md").read_text()


def test_the_work_dir_of_a_user_is_never_emptied(tmp_path, backbone_file, monkeypatch):
    """--work-dir into a folder of someone else's files is refused before anything is written; --overwrite
    removes the demo's own entries only (a note the user put beside them stays), and never in the current
    directory; a file as --work-dir is named as such."""
    from dinov2_dense.fileio import MARKER, OutputError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "demo.json").write_text("{}")  # a demo.json alone does not make the folder the demo's
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holds files that the demo did not write \\(notes.txt\\)"):
            run_demo(mine, None, str(backbone_file), settings=TINY, overwrite=overwrite, progress=False)
    assert sorted(p.name for p in mine.iterdir()) == ["demo.json", "notes.txt"]
    from dinov2_dense.demo import DEMO_ENTRIES, _work_dir

    work = tmp_path / "demo"
    _work_dir(work, False)
    for name in ("scenes", "cache"):
        (work / name).mkdir()
        (work / name / "x.png").write_bytes(b"x")
    (work / "demo.json").write_text("{}")
    (work / "my_notes.txt").write_text("keep me")
    assert _work_dir(work, False) == work  # a rerun continues: nothing removed
    assert (work / "scenes" / "x.png").is_file()
    monkeypatch.chdir(work)
    with pytest.raises(OutputError, match="current directory"):
        _work_dir(work, True)
    monkeypatch.chdir(tmp_path)
    _work_dir(work, True)
    assert sorted(p.name for p in work.iterdir()) == sorted([MARKER, "my_notes.txt"])
    assert not set(DEMO_ENTRIES) & {p.name for p in work.iterdir()}
    paper = tmp_path / "paper"  # a user's folder whose entries happen to have demo names, no demo.json
    (paper / "figures").mkdir(parents=True)
    (paper / "figures" / "fig1.pdf").write_bytes(b"%PDF")
    (paper / "report.md").write_text("draft")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="holds files that the demo did not write"):
            _work_dir(paper, overwrite)
    assert (paper / "figures" / "fig1.pdf").is_file() and (paper / "report.md").is_file()
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="file.png is a file; give a folder"):
        _work_dir(tmp_path / "file.png", False)


def test_a_users_file_in_the_figures_folder_stops_a_rerun_before_any_step(tmp_path):
    """The report rewrites figures/ at the end: a file the user put there is named at the start, before
    any step is computed, not after all of them."""
    from dinov2_dense.demo import _work_dir
    from dinov2_dense.fileio import OutputError, staged_dir

    work = _work_dir(tmp_path / "demo", overwrite=False)
    with staged_dir(work / "figures", overwrite=True) as stage:
        (stage / "seg.png").write_bytes(b"png")
    assert _work_dir(work, overwrite=False) == work  # a rerun over the demo's own figures
    (work / "figures" / "mine.txt").write_text("notes")
    with pytest.raises(OutputError, match="mine.txt"):
        _work_dir(work, overwrite=False)
    assert (work / "figures" / "mine.txt").read_text() == "notes"


@pytest.mark.parametrize("depth", [1, 2])
def test_the_demo_runs_on_an_export_of_fewer_than_4_blocks(tmp_path, depth, capsys, monkeypatch):
    """The depth heads take 4 blocks: a shallower export (the README's pretraining example has 2)
    repeats some, instead of failing at the DPT step after the segmentation heads trained."""
    from heads import DPTHead, LinearDepthHead
    from pretrain.export import export_backbone

    paths = export_backbone(tiny_vit(depth=depth, dim=48, img=56), tmp_path / "export")
    settings = DemoSettings(size=28, train=4, val=2, seg_epochs=1, depth_epochs=1, linear_depth_epochs=1,
                            pca_scenes=2)
    monkeypatch.setattr("dinov2_dense.demo.DemoSettings.quick", classmethod(lambda cls, **kw: settings))
    monkeypatch.setattr("dinov2_dense.demo.SKIMAGE_SAMPLES", ("coffee",))  # a quicker PCA step
    work = tmp_path / "demo"
    assert main(["demo", "--work-dir", str(work), "--quick", "--weights", str(paths["safetensors"]),
                 "--no-progress"]) == 0
    assert f"blocks {[[0, 0, 0, 0], [0, 0, 1, 1]][depth - 1]}" in capsys.readouterr().err
    summary = json.loads((work / "report.json").read_text())
    for head in ("depth", "depth_linear"):
        assert np.isfinite(list(summary[head]["pretrained"].values())).all()
    # the saved heads keep the layout of 4-input heads
    d = 48
    dpt = DPTHead(d, channels=32, max_depth=10.0, post_process_channels=[d // 8, d // 4, d // 2, d])
    def head_of(folder: str) -> dict:
        state = torch.load(work / "predictions" / folder / "head.pth", weights_only=True)
        return {k.removeprefix("decode_head."): v for k, v in state.items()}

    dpt.load_state_dict(head_of("pretrained_depth"))
    LinearDepthHead([d] * 4, max_depth=10.0).load_state_dict(head_of("pretrained_depth_linear"))
    from dinov2_dense.demo import depth_layers

    assert [depth_layers(n) for n in (3, 4, 5, 12)] == [[0, 1, 1, 2], [0, 1, 2, 3], [0, 1, 3, 4], [2, 5, 8, 11]]
    # a released depth reads the official blocks: ViT-L's are not its quarters ([5, 11, 17, 23]; a reviewer)
    from dinov2_dense.settings import BACKBONE_SETTINGS

    assert [depth_layers(s.depth) for s in BACKBONE_SETTINGS.values()] == [list(s.depth_layers)
                                                                         for s in BACKBONE_SETTINGS.values()]
    assert depth_layers(24) == [4, 11, 17, 23] and depth_layers(16) == [3, 7, 11, 15]


def test_the_report_writes_each_kind_of_number_one_way(tmp_path, monkeypatch):
    """The segmentation table mixed formats: per-class IoUs under 10 (percent, as mIoU) came with 3 decimals
    ("0.000", "0.528") next to "42.10". Every number of a section now has one format: percent with 2
    decimals, metres and the PCA IoUs with 3, in report.md and report.html alike; report.json keeps them whole."""
    import dinov2_dense.demo as demo
    from dinov2_dense.data.synthetic import class_names

    monkeypatch.setattr(demo, "_prediction_figures", lambda work: [])
    monkeypatch.setattr(demo, "eval_depth_command", lambda work, predictions: "dinov2-dense eval-depth ...")
    seg = {"pretrained": {"mIoU": 42.104, "aAcc": 80.0, "IoU": [85.12345, 0.528, 0.0, 12.5, float("nan")]},
           "random": {"mIoU": 9.87654, "aAcc": 50.0, "IoU": [70.0, 0.0, 3.14159, 0.00049, float("nan")]}}
    depth = {"pretrained": {"abs_rel": 0.1234567, "rmse": 0.7766, "d1": 0.9}, "random": {"abs_rel": 0.5, "rmse": 12.3456,
                                                                                          "d1": 0.4}}
    pca = {b: {"largest_object_iou": [v], "mean_largest_object_iou": v, "objects_iou": [v], "mean_objects_iou": v}
           for b, v in (("pretrained", 0.79812), ("random", 0.4))}
    steps = {f"{b}_{head}": {"metrics": {"segmentation": seg, "depth": depth, "depth_linear": depth}[head][b]}
             for b in ("pretrained", "random") for head in ("segmentation", "depth", "depth_linear")}
    settings = {**{k: v for k, v in vars(TINY).items()}, "class_sizes": None}
    work = tmp_path / "demo"
    work.mkdir()
    html = demo._report(work, {"settings": settings, "steps": {**steps, "pca": pca}}, "tiny").read_text()
    md = (work / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in md.splitlines()
            if line.startswith("| ")}
    assert rows["mIoU"] == ["42.10", "9.88", "32.23"]
    assert rows["IoU background"] == ["85.12", "70.00", "15.12"]
    assert [rows[f"IoU {n}"] for n in class_names(5)[1:]] == [["0.53", "0.00", "0.53"], ["0.00", "3.14", "-3.14"],
                                                                   ["12.50", "0.00", "12.50"], ["nan", "nan", "nan"]]
    assert rows["rmse"] == ["0.777", "12.346", "-11.569"] and rows["abs_rel"] == ["0.123", "0.500", "-0.377"]
    assert rows["first-component foreground vs the object (one-object scenes), IoU"] == ["0.798", "0.400", "0.398"]
    for cell in ("<td>0.53</td><td>0.00</td><td>0.53</td>", "<td>42.10</td>", "<td>12.346</td>", "<td>0.798</td>"):
        assert cell in html, cell
    assert "0.528" not in md + html and "0.000" not in md + html
    summary = json.loads((work / "report.json").read_text())
    assert summary["segmentation"]["pretrained"]["IoU"][1] == 0.528 and summary["depth"]["random"]["rmse"] == 12.3456


def test_a_demo_of_the_same_weights_built_with_other_settings_is_not_continued(tmp_path):
    """demo.json records the backbone's forward settings beside its weights' fingerprint: the same weights
    read with another architecture (other num_heads) compute other features, so the old results are not
    continued; a demo.json from before the record is continued (a setting it lacks counts as matching)."""
    import dinov2_dense.demo as demo
    from dinov2_dense.demo import _State

    recorded = []

    def stop(work, settings, overwrite):  # what run_demo records, before any step
        recorded.append(settings)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "_State", stop)
        with pytest.raises(KeyboardInterrupt):
            demo.run_demo(tmp_path / "run", "dinov2_dense_tiny", progress=False)
    assert recorded[0]["forward"] == {"num_heads": 3, "interpolate_antialias": False, "interpolate_offset": 0.1}

    settings = {"size": 112, "weights": "abc", "forward": {"num_heads": 3, "interpolate_antialias": False,
                                                           "interpolate_offset": 0.1}}
    older = {k: v for k, v in settings.items() if k != "forward"}
    (tmp_path / "demo.json").write_text(json.dumps({"settings": older, "steps": {"scenes": {"done": True}}}))
    assert _State(tmp_path, settings, overwrite=False).data["steps"] == {"scenes": {"done": True}}
    (tmp_path / "demo.json").write_text(json.dumps({"settings": settings, "steps": {}}))
    other = {**settings, "forward": {**settings["forward"], "num_heads": 6}}
    with pytest.raises(ValueError, match=r"a demo with other settings is there .*forward .*'num_heads': 3.* -> "
                                         r".*'num_heads': 6"):
        _State(tmp_path, other, overwrite=False)
