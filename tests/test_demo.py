"""``dinov2-dense demo`` end to end: scenes, heads on a frozen backbone and on its random init, saved
predictions, PCA maps and the report; the report's numbers are recomputed from the saved files with
the metric functions; a rerun continues instead of starting again; other settings are refused."""

import json

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


TINY = DemoSettings(size=56, train=8, val=4, seg_epochs=2, depth_epochs=2)


def test_demo_report_numbers_come_from_the_saved_predictions(tmp_path, backbone_file, capsys):
    work = tmp_path / "demo"
    report = run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    summary = json.loads((work / "report.json").read_text())
    for label in ("pretrained", "random"):
        seg = score_predictions(work / "predictions" / f"{label}_segmentation", work / "scenes", "segmentation")
        assert summary["segmentation"][label] == seg
        depth = score_predictions(work / "predictions" / f"{label}_depth", work / "scenes", "depth")
        assert summary["depth"][label] == depth
        pca = summary["pca"][label]
        for key in ("largest_object_iou", "objects_iou"):
            assert len(pca[key]) == 4 and all(0 <= v <= 1 for v in pca[key])
            assert pca[f"mean_{key}"] == pytest.approx(np.mean(pca[key]))
    # the metric function itself, on the saved files, independently of score_predictions
    import cv2

    from dinov2_dense.data import ADE20KDataset

    val = ADE20KDataset(work / "scenes" / "ade", "validation")
    preds = [cv2.imread(str(work / "predictions" / "pretrained_segmentation" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED)
             for i in range(len(val))]
    ref = segmentation_metrics([p.astype(np.int64) for p in preds], [val[i]["seg"].numpy() for i in range(len(val))], 5)
    assert summary["segmentation"]["pretrained"]["mIoU"] == pytest.approx(ref["mIoU"])
    html, md = report.read_text(), (work / "report.md").read_text()
    assert f"{summary['segmentation']['pretrained']['mIoU']:.2f}" in md
    assert f"{summary['depth']['random']['rmse']:.3f}" in html
    assert html.count("data:image/png;base64,") == 4 and "<img" in html  # self-contained: figures inlined
    assert (work / "predictions" / "random_depth" / "head.pth").is_file()

    # a rerun finds every step done and writes the same report
    state = json.loads((work / "demo.json").read_text())
    assert set(state["steps"]) == {"scenes", "pretrained_segmentation", "random_segmentation", "pretrained_depth",
                                   "random_depth", "pca"}
    run_demo(work, None, str(backbone_file), settings=TINY, progress=False)
    assert json.loads((work / "report.json").read_text()) == summary
    with pytest.raises(ValueError, match="other settings"):
        run_demo(work, None, str(backbone_file), settings=DemoSettings(size=56, train=8, val=4, seg_epochs=3, depth_epochs=2),
                 progress=False)


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
    assert "dinov2_vits14_pretrain.pth" in err and "needs real weights: --weights FILE" in err
    assert "--weights random" not in err and not (tmp_path / "e").exists()
