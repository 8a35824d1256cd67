"""One image file, seen by every reader: names that are not UTF-8, TIFF samples that OpenCV's colour
conversion does not take, depth ground truth in TIFF and behind linked folders (a review that ran each file
through features, pca, knn, curate, the data sets and eval-depth)."""

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from dinov2_dense import images
from dinov2_dense.cli import main
from dinov2_dense.data import DataError, FolderSegmentationDataset, read_image
from dinov2_dense.features import load_image, to_rgb_float
from dinov2_dense.fileio import read_names_text, write_text
from dinov2_dense.viz.figures import save_grid

LATIN1 = b"caf\xe9"  # "café" as Latin-1: not UTF-8, as names from a Windows archive unpacked here are


def _photo(h: int = 42, w: int = 56, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 256, (h // 7, w // 7, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return base


def _latin1_file(folder: Path, suffix: str, data: bytes) -> str:
    name = os.fsdecode(os.fsencode(str(folder)) + b"/" + LATIN1 + suffix.encode())
    with open(name, "wb") as f:
        f.write(data)
    return name


def test_a_name_that_is_not_utf8_is_read_by_features_and_pca(tmp_path, capsys):
    """OpenCV's binding crashed the process (segmentation fault) on such a name, in the header check every
    command makes; the pixels were always read through Python. Figures drew no such label (matplotlib)."""
    photo = _photo()
    ok, jpeg = cv2.imencode(".png", photo[..., ::-1])
    name = _latin1_file(tmp_path, ".png", jpeg.tobytes())
    plain = tmp_path / "plain.png"
    plain.write_bytes(jpeg.tobytes())
    assert images.read_header(name).size == (42, 56)
    np.testing.assert_array_equal(images.decode_image(name, "rgb"), photo)
    out = tmp_path / "f.npy"
    assert main(["features", name, str(plain), "--model", "dinov2_dense_tiny", "--out", str(out)]) == 0
    feats = np.load(out)
    np.testing.assert_array_equal(feats[0], feats[1])
    assert main(["pca", name, "--model", "dinov2_dense_tiny", "--size", "56", "--out", str(tmp_path / "pca")]) == 0
    assert (tmp_path / "pca" / "figure.png").is_file()
    capsys.readouterr()


def test_figures_draw_such_a_name_with_a_replacement_character(tmp_path):
    path = save_grid([[np.zeros((8, 8, 3))]], tmp_path / "g.png", titles=[os.fsdecode(LATIN1)],
                     row_labels=[os.fsdecode(LATIN1 + b".jpg")], suptitle=os.fsdecode(LATIN1))
    assert path.is_file()


def test_video_by_such_a_name_is_refused_in_one_line(tmp_path, capfd):
    """OpenCV opens videos by their name alone: refused, naming the file, where the process crashed.
    (capfd: the line holds the name's byte, which capsys's reading back cannot decode.)"""
    name = _latin1_file(tmp_path, ".avi", b"\0" * 64)
    with pytest.raises(images.ImageError, match="not valid UTF-8, which OpenCV cannot take for a video; rename it"):
        images.opencv_path(name, "video")
    assert images.opencv_path(str(tmp_path / "café.avi")) == str(tmp_path / "café.avi")
    assert main(["pca", "--video", name, "--model", "dinov2_dense_tiny", "--out", str(tmp_path / "v")]) == 2
    assert "not valid UTF-8" in capfd.readouterr().err
    out = os.fsdecode(os.fsencode(str(tmp_path)) + b"/out_" + LATIN1)  # a video is written by its name too
    assert main(["pca", "--video", str(tmp_path / "x.avi"), "--model", "dinov2_dense_tiny", "--out", out]) == 2
    assert "cannot take for a video's output folder" in capfd.readouterr().err


def test_lists_of_names_that_are_not_utf8_name_the_same_files(tmp_path):
    """curate writes its inputs and selection as text; such a name stopped it ('surrogates not allowed')."""
    name = os.fsdecode(LATIN1 + b".jpg")
    write_text(tmp_path / "list.txt", f"{name}\nplain.jpg\n")
    assert (tmp_path / "list.txt").read_bytes() == LATIN1 + b".jpg\nplain.jpg\n"
    assert read_names_text(tmp_path / "list.txt").split("\n")[:2] == [name, "plain.jpg"]
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa.jpg\n")
    assert read_names_text(tmp_path / "bom.txt") == "a.jpg\n"
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    with pytest.raises(UnicodeDecodeError):
        read_names_text(tmp_path / "binary.txt")


def test_curate_selects_and_pretraining_reads_back_such_a_name(tmp_path, capsys):
    from pretrain.data.datasets import ImageFiles

    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(3):
        ok, png = cv2.imencode(".png", _photo(seed=i))
        (pool / f"p{i}.png").write_bytes(png.tobytes())
    ok, png = cv2.imencode(".png", _photo(seed=9))
    odd = _latin1_file(pool, ".png", png.tobytes())
    out = tmp_path / "cur"
    assert main(["curate", str(pool), "--target", "4", "--out", str(out), "--model", "dinov2_dense_tiny",
                 "--size", "28", "--no-dedup", "--clusters", "2", "--levels", "1", "--no-progress"]) == 0, \
        capsys.readouterr().err
    selected = ImageFiles.from_list_file(out / "selected.txt")
    assert sorted(str(p) for p in selected.paths) == sorted([odd, *(str(pool / f"p{i}.png") for i in range(3))])


@pytest.mark.parametrize("dtype, scale", [(np.int16, 100), (np.int32, 200), (np.float64, 1 / 255)])
def test_tiff_samples_cvtcolor_does_not_take_are_read_in_rgb_order(tmp_path, dtype, scale):
    """int16, 32-bit and float64 TIFFs stopped every reader of files with OpenCV's cvtColor error (exit 1)."""
    photo = _photo()
    stored = (photo.astype(np.float64) * scale).astype(dtype)
    ok, tif = cv2.imencode(".tif", np.ascontiguousarray(stored[..., ::-1]))
    path = tmp_path / "x.tif"
    path.write_bytes(tif.tobytes())
    decoded = images.decode_image(path)
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, stored)
    np.testing.assert_allclose(load_image(path), to_rgb_float(stored), atol=0)


def test_signed_8_bit_tiffs_which_pillow_calls_l_are_refused_as_by_features(tmp_path):
    values = np.array([[-128, -100, -1, 0], [1, 50, 100, 127]], np.int8)
    ok, tif = cv2.imencode(".tif", values)
    (tmp_path / "s8.tif").write_bytes(tif.tobytes())
    with pytest.raises(DataError, match=r"s8\.tif: integer image values span \[-128, 127\]"):
        read_image(tmp_path / "s8.tif")  # (was 128, 156, 255, 0, ...: -1 as bright as can be)
    ok, tif = cv2.imencode(".tif", np.abs(values).astype(np.int8).clip(0, 127))
    (tmp_path / "p8.tif").write_bytes(tif.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "p8.tif")[..., 0], np.abs(values).clip(0, 127))


@pytest.mark.parametrize("channels", [3, 1])
def test_signed_tiffs_reach_the_data_sets_as_features_sees_them(tmp_path, channels):
    """OpenCV's colour decode made -1 brighter than 32767 (128, 244, 255, 0, ... for -32768, -3000, -1, 0):
    negative samples are refused by every reader now, non-negative ones read alike."""
    values = np.array([-32768, -3000, -1, 0, 255, 256, 3000, 25500, 32767], np.int16)
    ok, tif = cv2.imencode(".tif", np.repeat(values.reshape(3, 3, 1), channels, axis=2).squeeze())
    (tmp_path / "signed.tif").write_bytes(tif.tobytes())
    with pytest.raises(DataError, match=r"signed\.tif: integer image values span \[-32768, 32767\]"):
        read_image(tmp_path / "signed.tif")
    with pytest.raises(ValueError, match=r"signed\.tif: integer image values span \[-32768, 32767\]"):
        load_image(tmp_path / "signed.tif")
    stored = (_photo().astype(np.int16) * 100)[..., :channels]
    ok, tif = cv2.imencode(".tif", np.ascontiguousarray(stored[..., ::-1]))
    (tmp_path / "positive.tif").write_bytes(tif.tobytes())
    np.testing.assert_array_equal(read_image(tmp_path / "positive.tif"),
                                  (load_image(tmp_path / "positive.tif") * 255 + 0.5).astype(np.uint8))


def test_a_list_in_another_encoding_is_refused_naming_it(tmp_path):
    """Its non-ASCII names name no file: every such image was skipped as missing, and the run went on."""
    from pretrain.curation.store import CurationError, _list_images
    from pretrain.data.datasets import ImageFiles

    ok, png = cv2.imencode(".png", _photo())
    (tmp_path / "café.png").write_bytes(png.tobytes())
    (tmp_path / "plain.png").write_bytes(png.tobytes())
    (tmp_path / "latin1.txt").write_bytes("plain.png\ncafé.png\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt: .*caf\\udce9\.png' is not UTF-8 and names no file"):
        ImageFiles.from_list_file(tmp_path / "latin1.txt")
    with pytest.raises(CurationError, match=r"latin1\.txt: .* is not UTF-8 and names no file"):
        _list_images(tmp_path / "latin1.txt")
    (tmp_path / "utf8.txt").write_text("plain.png\ncafé.png\n", encoding="utf-8")
    assert len(ImageFiles.from_list_file(tmp_path / "utf8.txt").paths) == 2
    # a UTF-8 list in a folder whose own name is not: judged by its lines, a missing image stays a skip
    odd = Path(_latin1_file(tmp_path, "", b"") + "_dir")
    odd.mkdir()
    (odd / "plain.png").write_bytes(png.tobytes())
    (odd / "list.txt").write_text("plain.png\nmissing.png\n", encoding="utf-8")
    assert len(ImageFiles.from_list_file(odd / "list.txt").paths) == 2


def test_values_no_reader_takes_are_refused_naming_the_file(tmp_path):
    stored = np.full((14, 14, 3), 2 ** 20, np.int32)
    ok, tif = cv2.imencode(".tif", stored)
    path = tmp_path / "big.tif"
    path.write_bytes(tif.tobytes())
    with pytest.raises(ValueError, match=r"big\.tif: integer image values span \[1048576, 1048576\]"):
        load_image(path)
    with pytest.raises(DataError, match=r"big\.tif: integer image values span"):
        read_image(path)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_float_tiff_is_read_by_the_data_sets_as_by_features(tmp_path, channels):
    """OpenCV makes 8-bit colour of 8- and 16-bit samples alone: a float TIFF was 'not a readable image
    (corrupt, ...)' to train, test and pretraining, and read by features, pca, knn and curate."""
    photo = _photo() if channels == 3 else _photo()[..., :1]
    ok, tif = cv2.imencode(".tif", np.ascontiguousarray((photo.astype(np.float32) / 255)[..., ::-1]))
    path = tmp_path / "f.tif"
    path.write_bytes(tif.tobytes())
    expected = np.repeat(photo, 3 // channels, axis=2)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal((load_image(path) * 255 + 0.5).astype(np.uint8), expected)


def _depth_png(path: Path, metres: np.ndarray, suffix: str = ".png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(suffix, np.round(metres * 1000).astype(np.uint16))
    path.with_suffix(suffix).write_bytes(data.tobytes())


def _evaluated(tmp_path: Path, pred: Path, gt: Path, capsys) -> dict:
    out = tmp_path / f"m{len(list(tmp_path.glob('m*.json')))}.json"
    assert main(["eval-depth", str(pred), str(gt), "--dataset", "folder", "--gt-scale", "1000", "--out", str(out),
                 "--no-progress"]) == 0
    return {"report": json.loads(out.read_text()), "err": capsys.readouterr().err}


def test_eval_depth_reads_tiff_ground_truth_as_the_data_sets_do(tmp_path, capsys):
    """FolderDepthDataset (hence test) reads .tif/.tiff depth; eval-depth, the command test prints to score
    its saved maps, called them predictions without ground truth."""
    rng = np.random.default_rng(0)
    for i, suffix in enumerate([".png", ".tif", ".tiff"]):
        gt = rng.uniform(1, 5, (14, 14))
        _depth_png(tmp_path / "gt" / f"{i}", gt, suffix)
        _depth_png(tmp_path / "pred" / f"{i}", gt * 1.1)
    run = _evaluated(tmp_path, tmp_path / "pred", tmp_path / "gt", capsys)
    assert run["report"]["images"] == 3 and "without ground truth" not in run["err"]


def test_eval_depth_follows_linked_folders_as_every_folder_reader(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for i, where in enumerate(["", "real/", "real/"]):
        gt = rng.uniform(1, 5, (14, 14))
        _depth_png(tmp_path / "gt_real" / where.replace("real/", "sub/") / f"{i}", gt)
        _depth_png(tmp_path / "pred" / where.replace("real/", "sub/") / f"{i}", gt * 0.9)
    (tmp_path / "gt").mkdir()
    os.symlink(tmp_path / "gt_real" / "0.png", tmp_path / "gt" / "0.png")
    os.symlink(tmp_path / "gt_real" / "sub", tmp_path / "gt" / "sub")
    os.symlink(tmp_path / "gt", tmp_path / "gt" / "sub" / "loop")  # a link back up the tree: read once
    run = _evaluated(tmp_path, tmp_path / "pred", tmp_path / "gt", capsys)
    assert run["report"]["images"] == 3 and "without ground truth" not in run["err"]


def test_a_broken_link_among_the_images_is_named_as_such(tmp_path):
    ok, png = cv2.imencode(".png", _photo())
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png.tobytes())
    cv2.imwrite(str(tmp_path / "masks" / "a.png"), np.zeros((42, 56), np.uint8))
    os.symlink(tmp_path / "gone.jpg", tmp_path / "images" / "b.jpg")
    with pytest.raises(DataError, match=r"b\.jpg: a broken link \(to .*gone\.jpg\), no such image file"):
        FolderSegmentationDataset(tmp_path, num_classes=2)
    os.unlink(tmp_path / "images" / "b.jpg")
    (tmp_path / "images" / "b.png").write_bytes(png.tobytes())
    os.symlink(tmp_path / "gone.png", tmp_path / "masks" / "b.png")  # and among the masks
    with pytest.raises(DataError, match=r"masks/b\.png: the mask of .*images/b\.png is a broken link \(to .*gone"):
        FolderSegmentationDataset(tmp_path, num_classes=2)
