"""``--overwrite`` replaces only what an earlier output wrote (dinov2_dense.fileio).

The marker of an output folder lists the entries the output wrote; a file the user put into the
folder afterwards (notes, a metrics.json computed from the predictions) is named in a refusal
before anything is computed or written, and is never deleted. Markers of older versions, which
list nothing, are told by modification times.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dinov2_dense.cli import main
from dinov2_dense.fileio import MARKER, OutputError, check_output_dir, foreign_entries, staged_dir

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"


def _run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _nothing_beside(folder: Path) -> None:
    left = [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]
    assert not left, left  # no staging folder, no old set moved aside


def _write_set(out: Path, names: dict[str, str], overwrite: bool = False) -> None:
    with staged_dir(out, overwrite=overwrite) as stage:
        for name, text in names.items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            (stage / name).write_text(text)


def test_synth_overwrite_keeps_a_users_file_and_names_it(tmp_path, capsys):
    """The reviewer's case: a file added to a synth output is not deleted by --overwrite."""
    out = tmp_path / "syn2"
    args = ("synth", out, "--layout", "folder", "--train", "4", "--size", "56")
    assert _run(capsys, *args)[0] == 0
    written = sorted(p.name for p in out.iterdir() if p.name != MARKER)
    (out / "mine.txt").write_text("keep")
    before = _tree(out)
    for extra in (("--overwrite",), ()):
        rc, err = _run(capsys, *args, *extra)
        assert rc == 2 and "Traceback" not in err, err
        assert str(out) in err and "mine.txt" in err and "did not write" in err, err
        assert _tree(out) == before
    _nothing_beside(out)
    (out / "mine.txt").unlink()  # moved out, as the message says: the rerun replaces the set
    rc, err = _run(capsys, *args, "--overwrite", "--seed", "3")
    assert rc == 0, err
    assert _tree(out) != before and json.loads((out / MARKER).read_text())["entries"] == written
    _nothing_beside(out)


def test_overwrite_replaces_the_outputs_own_entries_and_refuses_any_other(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"a.txt": "1", "sub/b.txt": "2"})
    assert json.loads((out / MARKER).read_text())["entries"] == ["a.txt", "sub"]
    (out / "sub" / "stale.txt").write_text("inside an entry of the output: part of the old set")
    (out / ".DS_Store").write_bytes(b"finder")  # a file browser's clutter does not block a rerun
    _write_set(out, {"a.txt": "new", "c.txt": "3"}, overwrite=True)
    assert _tree(out).keys() == {"a.txt", "c.txt", MARKER}
    assert (out / "a.txt").read_text() == "new"

    for name in ("metrics.json", ".git", "notes"):  # hidden entries and folders are a user's too
        (out / name).mkdir() if name != "metrics.json" else (out / name).write_text("{}")
    before = _tree(out)
    entered = []
    with pytest.raises(OutputError) as err:
        with staged_dir(out, overwrite=True) as stage:
            entered.append(stage)
    assert not entered  # refused before anything is computed or written
    message = str(err.value)
    assert str(out) in message and ".git, metrics.json, notes" in message and "move these" in message
    assert _tree(out) == before and {".git", "notes"} <= {p.name for p in out.iterdir()}
    assert foreign_entries(out) == ([".git", "metrics.json", "notes"], True)
    # without --overwrite the message names them too, not an invitation to pass --overwrite
    with pytest.raises(OutputError, match="metrics.json"):
        check_output_dir(out)
    _nothing_beside(out)


def test_a_file_added_while_the_run_computes_stops_the_swap(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"a.txt": "old"})
    with pytest.raises(OutputError, match="metrics.json.*nothing was replaced"):
        with staged_dir(out, overwrite=True) as stage:
            (stage / "a.txt").write_text("new")
            (out / "metrics.json").write_text("{}")  # e.g. eval-depth --out PRED/metrics.json meanwhile
    assert _tree(out) == {"a.txt": b"old", "metrics.json": b"{}", MARKER: (out / MARKER).read_bytes()}
    _nothing_beside(out)


def test_marker_of_an_older_version_is_told_by_modification_times(tmp_path):
    """Older markers list nothing: entries modified after the marker was written were added since."""
    out = tmp_path / "old"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "0.png").write_bytes(b"png")
    (out / "figure.png").write_bytes(b"png")
    (out / MARKER).write_text(json.dumps({"pid": 1, "written": "2024-01-01 00:00:00"}))
    t = (out / MARKER).stat().st_mtime_ns
    for name in ("masks", "figure.png"):
        os.utime(out / name, ns=(t - 10**9, t - 10**9))
    assert foreign_entries(out) == ([], False)
    check_output_dir(out, overwrite=True)  # as before: the older output is replaced

    (out / "metrics.json").write_text("{}")
    os.utime(out / "metrics.json", ns=(t + 10**9, t + 10**9))
    with pytest.raises(OutputError, match="older dinov2-dense.*: metrics.json"):
        check_output_dir(out, overwrite=True, what="--out")
    (out / "metrics.json").unlink()
    _write_set(out, {"depth": ""}, overwrite=True)
    assert json.loads((out / MARKER).read_text())["entries"] == ["depth"]

    (out / MARKER).write_text("")  # an empty marker (``touch``): told the same way
    os.utime(out / MARKER, ns=(t, t))
    (out / "notes.txt").write_text("mine")
    os.utime(out / "depth", ns=(t - 10**9, t - 10**9))
    with pytest.raises(OutputError, match="notes.txt"):
        check_output_dir(out, overwrite=True)


def test_a_folder_without_marker_is_still_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="did not write \\(holiday.jpg\\)"):
            check_output_dir(out, overwrite=overwrite)
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_test_out_overwrite_keeps_metrics_written_into_it(tmp_path, capsys, fresh_mmengine_loggers):
    """``test --out PRED`` then a result file in PRED, then ``test --out PRED --overwrite``: refused,
    naming the file; once it is moved out the predictions are replaced."""
    from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout

    scenes = tmp_path / "ade"
    write_ade20k_layout(scenes, 4, 2, config=SceneConfig(size=(56, 56)), seed=0, progress=False)
    opts = [f"{s}_dataloader.dataset.root={scenes}" for s in ("train", "val", "test")]
    opts += ["train_cfg.max_iters=2", "train_cfg.val_interval=2", "param_scheduler.0.end=1",
             "param_scheduler.1.end=2", "default_hooks.checkpoint.interval=2", "train_dataloader.batch_size=2",
             "model.backbone.img_size=56", "train_dataloader.dataset.pipeline.crop_size=56",
             "train_dataloader.dataset.pipeline.scale=(112,56)"]
    work = tmp_path / "work"
    rc, err = _run(capsys, "train", SEG_CFG, "--work-dir", work, "--cfg-options", *opts)
    assert rc == 0, err
    pred = tmp_path / "pred"
    test = ("test", SEG_CFG, work / "iter_2.pth", "--work-dir", tmp_path / "w", "--out", pred, "--cfg-options", *opts)
    rc, err = _run(capsys, *test)
    assert rc == 0, err
    (pred / "metrics.json").write_text('{"miou": 1}')
    before = _tree(pred)
    rc, err = _run(capsys, *test, "--overwrite")
    assert rc == 2 and "Traceback" not in err and "--out" in err and "metrics.json" in err, err
    assert _tree(pred) == before
    (pred / "metrics.json").unlink()
    rc, err = _run(capsys, *test, "--overwrite")
    assert rc == 0, err
    assert sorted(p.name for p in pred.iterdir()) == sorted([MARKER, "colour", "masks"])
    assert json.loads((pred / MARKER).read_text())["entries"] == ["colour", "masks"]
    _nothing_beside(pred)


def test_a_full_disk_at_the_close_of_a_file_is_named_and_a_set_of_files_is_replaced_whole(tmp_path):
    """ENOSPC raised when a buffered file is flushed at its close names no file: atomic_path names its target
    (never the temporary), and leaves the old file. AtomicFiles renames its files only once all are written:
    a failure at the second leaves the first as it was. Errors about other files, or of no writing, pass as
    they are."""
    import errno

    from dinov2_dense.fileio import atomic_path

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(OSError) as caught:
        with atomic_path(a) as tmp:
            tmp.write_text("new a")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC and f"cannot write {a}: No space left on device" in str(caught.value)
    assert a.read_text() == "old a"
    from dinov2_dense.fileio import AtomicFiles

    with pytest.raises(OSError) as caught:
        with AtomicFiles() as files:
            files.write_text(a, "new a")
            with files.path(b) as tmp:
                tmp.write_text("new b")
                raise OSError(errno.ENOSPC, "No space left on device")
    assert f"cannot write {b}: No space left" in str(caught.value)
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temporary left
    for other in (FileNotFoundError(errno.ENOENT, "No such file or directory", str(tmp_path / "input.png")),
                  OSError("download of http://x failed; try again")):
        with pytest.raises(OSError) as caught:
            with atomic_path(a) as tmp:
                raise other
        assert caught.value is other
    with AtomicFiles() as files:
        files.write_text(a, "new a")
        files.write_npy(b.with_suffix(".npy"), [1, 2])
        assert a.read_text() == "old a"  # not before the end
    assert a.read_text() == "new a" and (tmp_path / "b.npy").is_file()


def test_a_full_disk_in_a_staged_folder_names_the_final_file_with_one_hint(tmp_path):
    """A write into a staged folder that finds the disk full (at the close of a buffered file: the error
    names no file) is renamed twice, by the file's write and by the folder: the message names the file in
    the folder the user gave, with the hint once (it came twice, after the name of the stage)."""
    import errno

    from dinov2_dense.fileio import atomic_path

    out = tmp_path / "out"
    with pytest.raises(OSError) as caught:
        with staged_dir(out) as stage, atomic_path(stage / "a_pca.png"):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(caught.value)
    assert f"cannot write {out / 'a_pca.png'}: No space left on device (free some space" in message, message
    assert message.count("free some space") == 1 and ".partial" not in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_too_little_space_is_said_in_units_that_show_it(tmp_path, monkeypatch):
    """A shortfall under a megabyte is said in KB or bytes, what is needed rounded up and what is free
    rounded down (it read "needs about 0 MB, but only 0 MB are free")."""
    import dinov2_dense.fileio as fileio

    for free, need, said in ((500, 900, "needs about 900 bytes, but only 500 bytes are free"),
                             (10_000, 10_300, "needs about 11 KB, but only 9 KB are free"),
                             (1, 3 * 2**20 + 1, "needs about 4 MB, but only 1 byte is free")):
        monkeypatch.setattr(fileio, "free_bytes", lambda path: free)  # noqa: B023
        with pytest.raises(OutputError, match=said):
            fileio.check_output_file(tmp_path / "f.npy", expected_bytes=need, what="--out")


def test_a_single_output_file_replaces_only_an_earlier_output_of_its_kind(tmp_path, capsys, monkeypatch, torch_home):
    """The reviewer's case: `features --out rep/my_backbone.safetensors` replaced a copy of a weights file with
    features (exit 0), in $DINOV2_DENSE_WEIGHTS too, and `pca --save-basis mydata.npz` a user's .npz. A file
    given as the output is replaced only with --overwrite, and only when it is an earlier output of the same
    kind (features: a .safetensors with their metadata and tensors, a whole float32 .npy of 4 or 5 axes with
    the model's width; a basis: its arrays; knn and eval-depth: their JSON), in a weights folder too; anything
    else (a user's float32 image batch among it) is refused even with --overwrite, in one line naming it (and
    the weights folder it lies in), before a model is built, and stays as it was."""
    import shutil

    import cv2
    import numpy as np

    import dinov2_dense.hub as hub
    from dinov2_dense.viz.pca import PCABasis

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    weights_dir, rep = tmp_path / "weights", tmp_path / "rep"
    weights_dir.mkdir()
    rep.mkdir()
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(weights_dir))
    package = hub.BACKBONES[hub.DEFAULT_EMBEDDED].package_file
    backbone, timm = rep / "my_backbone.safetensors", weights_dir / "timm.safetensors"
    shutil.copyfile(package, backbone)
    shutil.copyfile(package, timm)
    in_weights = weights_dir / "f.npy"  # a user's array in the weights folder
    np.save(in_weights, np.zeros((1, 95, 2, 2), np.float32))
    user_npy, user_npz, user_json = rep / "user.npy", rep / "mydata.npz", rep / "notes.json"
    np.save(user_npy, np.zeros((4, 96), np.float32))
    images_npy = rep / "images.npy"  # a batch of float32 images: 4 axes, but 3 channels for a 96-wide model
    np.save(images_npy, np.zeros((10, 3, 32, 32), np.float32))
    np.savez(user_npz, a=np.arange(5))
    user_json.write_text('{"mine": 1}')
    (tmp_path / "empty").mkdir()
    files = [backbone, timm, in_weights, user_npy, images_npy, user_npz, user_json]
    before = {p: p.read_bytes() for p in files}
    tiny = ["--model", hub.DEFAULT_EMBEDDED, "--num-workers", "0"]
    never = "never replaced, even with --overwrite"
    with monkeypatch.context() as patch:
        patch.setattr(hub, "load_backbone", lambda *a, **k: pytest.fail("the model was built"))
        for argv, said in (
                (["features", image, *tiny, "--out", backbone], f"--out {backbone} exists and is not a features file "
                 "of a 96-wide model written by dinov2-dense features (it is a weight file): it is " + never),
                (["features", image, *tiny, "--out", timm], f"--out {timm} exists in the weights folder "
                 f"$DINOV2_DENSE_WEIGHTS ({weights_dir}) and is not a features file"),
                (["features", image, *tiny, "--out", in_weights], f"--out {in_weights} exists in the weights folder"),
                (["features", image, *tiny, "--out", user_npy], f"--out {user_npy} exists and is not a features file"),
                (["features", image, *tiny, "--out", images_npy], f"--out {images_npy} exists and is not a features "
                 "file of a 96-wide model"),
                (["pca", image, *tiny, "--save-basis", user_npz, "--out", tmp_path / "pca"],
                 f"--save-basis {user_npz} exists and is not a PCA basis written by dinov2-dense pca"),
                (["knn", tmp_path / "empty", "--weights", "random", "--out", user_json],
                 f"--out {user_json} exists and is not results written by dinov2-dense knn"),
                (["eval-depth", tmp_path / "pred", tmp_path / "gt", "--out", user_json],
                 f"--out {user_json} exists and is not metrics written by dinov2-dense eval-depth")):
            for extra in ((), ("--overwrite",)):
                rc, err = _run(capsys, *argv, *extra)
                assert rc == 2 and len(err.strip().splitlines()) == 1, err
                assert said in err and never in err, err
    assert {p: p.read_bytes() for p in files} == before
    assert not (tmp_path / "pca").exists()

    # an earlier output of the same kind: a rerun is refused without --overwrite, and replaces it with it,
    # in a weights folder too (a features file there is no weights)
    for out in (rep / "f.npy", rep / "f.safetensors", weights_dir / "features.npy"):
        rc, err = _run(capsys, "features", image, *tiny, "--size", "28", "--out", out)
        assert rc == 0, err
        first = out.read_bytes()
        rc, err = _run(capsys, "features", image, *tiny, "--size", "28", "--last", "2", "--out", out)
        assert rc == 2 and f"--out {out} exists: a features file of a 96-wide model written by dinov2-dense " \
            "features, by an earlier run; pass --overwrite to replace it" in err, err
        assert out.read_bytes() == first
        rc, err = _run(capsys, "features", image, *tiny, "--size", "28", "--last", "2", "--out", out, "--overwrite")
        assert rc == 0 and out.read_bytes() != first, err
    basis = rep / "b.npz"
    pca = ["pca", image, *tiny, "--size", "56", "--save-basis", basis]
    assert _run(capsys, *pca, "--out", tmp_path / "p1")[0] == 0
    first = basis.read_bytes()
    rc, err = _run(capsys, *pca, "--out", tmp_path / "p2")
    assert rc == 2 and f"--save-basis {basis} exists: a PCA basis written by dinov2-dense pca" in err, err
    assert basis.read_bytes() == first and not (tmp_path / "p2").exists()
    rc, err = _run(capsys, *pca, "--out", tmp_path / "p2", "--overwrite")
    assert rc == 0 and PCABasis.load(basis).dim == 96, err
