"""A basis applied to features made otherwise than it was fitted, and what the video path says of its input
(a still image, a frame step that leaves one frame, a file shorter than its header): the review of the PCA
command's reuse and video paths."""

import warnings

import cv2
import numpy as np
import pytest

from dinov2_dense.cli import main
from dinov2_dense.features import DenseFeatures, extract_features
from dinov2_dense.viz.pca import OtherFitWarning, PCABasis, pca_maps, pca_video

from .conftest import tiny_vit
from .test_pca import TINY, count_frames, read_rgb, write_scene_image, write_video


def other_fit_warnings(fn):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in record if issubclass(w.category, OtherFitWarning)]


def test_transform_warns_of_features_made_otherwise_than_the_basis_was_fitted(tmp_path):
    """PCABasis.transform took features of another fit, size, block or tiling without a word, where pca_maps and
    the command warn (a reviewer: a mask 8.8% off). The features carry the options they were made with; features
    without them (a tensor, DenseFeatures built by hand) are not checked; pca_maps warns once, not per image."""
    model = tiny_vit()
    image = write_scene_image(tmp_path / "a.png", 60, 80, 0)
    basis = pca_maps(model, [image], size=45)[0].basis
    assert (basis.info["fit"], basis.info["size"], basis.info["tile"], basis.info["layer"]) == ("resize", 45, None, 2)
    basis.save(tmp_path / "b.npz")
    basis = PCABasis.load(tmp_path / "b.npz")

    same = extract_features(model, str(image), size=45, fit="resize")
    assert same.options is not None and same.options.size == 45
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        basis.transform(same)
        basis.project(same)
        basis.transform(same.maps[2][0])  # a plain map: nothing to check
        by_hand = DenseFeatures(maps=same.maps, cls_tokens={}, registers={}, image_size=same.image_size,
                                input_size=same.input_size)
        basis.transform(by_hand)
    cases = {
        "fit='pad'": dict(size=45),  # extract_features' default fit
        "size=28": dict(size=28, fit="resize"),
        "size=None": dict(fit="resize"),
        "layer=1": dict(size=45, fit="resize", layers=[1]),
        "tile=28": dict(size=45, fit="resize", tile=28),
    }
    for said, settings in cases.items():
        feats = extract_features(model, str(image), **settings)
        _, told = other_fit_warnings(lambda: basis.transform(feats))
        assert len(told) == 1 and told[0].startswith(f"{said}, but the basis was fitted with "), (said, told)
        _, told = other_fit_warnings(lambda: basis.project(feats))
        assert len(told) == 1 and said in told[0], (said, told)
    # a batch tensor's features carry their options too
    _, told = other_fit_warnings(lambda: basis.transform(extract_features(model, same.upsample()[:, :3] * 0)))
    assert told and "fit='pad'" in told[0]
    # equality and repr are the maps', not the options'
    assert "options" not in repr(DenseFeatures(maps={}, cls_tokens={}, registers={}, image_size=(1, 1),
                                               input_size=(14, 14)))

    # pca_maps warns once for all its images (its own warning, not one more per image from the basis)
    other = write_scene_image(tmp_path / "b.png", 50, 70, 1)
    _, told = other_fit_warnings(lambda: pca_maps(model, [image, other], basis=basis, size=28))
    assert len(told) == 1 and told[0].startswith("size=28, but the basis was fitted with size=45"), told
    _, told = other_fit_warnings(lambda: pca_maps(model, [image, other], basis=basis, size=45))
    assert told == []
    # and of a block other than the basis's (layer left out: the last block)
    early = pca_maps(model, [image], size=45, layer=1)[0].basis
    _, told = other_fit_warnings(lambda: pca_maps(model, [image], basis=early, size=45))
    assert len(told) == 1 and told[0].startswith("layer=2, but the basis was fitted with layer=1"), told


def test_a_still_image_given_as_video_is_refused(tmp_path, torch_home, capsys):
    """A PNG given to --video (or a PNG renamed .mp4) became a one-frame video at an invented 25 fps; an
    animated GIF of several frames is still a video."""
    from PIL import Image

    still = write_scene_image(tmp_path / "still.png", 42, 56, 0)
    renamed = tmp_path / "x.mp4"
    renamed.write_bytes(still.read_bytes())
    for path in (still, renamed):
        out = tmp_path / f"o_{path.stem}"
        assert main(["pca", "--video", str(path), *TINY, "--size", "28", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines == [f"dinov2-dense pca: error: {path}: an image, not a video (one still frame): give it "
                         "without --video"], err
        assert not out.exists()
    with pytest.raises(ValueError, match="an image, not a video .*: colour it with pca_maps"):
        pca_video(tiny_vit(), renamed, tmp_path / "never.mp4", size=28, progress=False)
    assert not (tmp_path / "never.mp4").exists()
    from dinov2_dense.viz.pca import is_still_image

    assert not is_still_image(write_video(tmp_path / "one.mp4", frames=1, h=28, w=42))  # a video of one frame
    frames = [Image.open(write_scene_image(tmp_path / f"f{i}.png", 42, 56, i)).convert("RGB") for i in range(3)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert main(["pca", "--video", str(gif), *TINY, "--size", "28", "--out", str(tmp_path / "g")]) == 0
    assert count_frames(tmp_path / "g" / "anim_pca.mp4")[0] == 3
    # a raw MJPEG stream (JPEGs one after the other; Pillow reads the first, the header counts no frames) is a
    # video: a diff review's file was refused as "an image"
    import io

    mjpeg = tmp_path / "raw.mjpeg"
    for frame in frames:
        buffer = io.BytesIO()
        frame.save(buffer, format="JPEG")
        with open(mjpeg, "ab") as f:
            f.write(buffer.getvalue())
    assert not is_still_image(mjpeg)


def said(recwarn) -> list[str]:
    """The warnings a command gave (pytest records them; the command prints each as "warning: MESSAGE")."""
    return [str(w.message) for w in recwarn]


def test_a_frame_step_that_leaves_one_frame_is_said(tmp_path, torch_home, recwarn):
    """--frame-step larger than the video gave a one-frame video at 0.1 fps with no note."""
    video = write_video(tmp_path / "clip.mp4", frames=4, h=28, w=42)
    assert main(["pca", "--video", str(video), *TINY, "--size", "28", "--frame-step", "100",
                 "--out", str(tmp_path / "o")]) == 0
    assert [m for m in said(recwarn) if "leaves" in m] == [
        f"{video}: frame step 100 leaves 1 frame of its 4: the video written is that frame alone, at 0.1 fps (a "
        "smaller step keeps more)"], said(recwarn)
    assert count_frames(tmp_path / "o" / "clip_pca.mp4")[0] == 1
    recwarn.clear()
    model = tiny_vit()
    pca_video(model, video, tmp_path / "v2.mp4", size=28, step=2, progress=False)
    pca_video(model, video, tmp_path / "v1.mp4", size=28, step=100, max_frames=1, progress=False)  # one asked for
    assert not [m for m in said(recwarn) if "leaves" in m]


def test_a_multi_page_image_given_as_video_says_what_is_left_out(tmp_path, torch_home, recwarn):
    """A multi-page TIFF became a one-frame video, its other pages left out without a word (a diff review)."""
    from PIL import Image

    pages = [Image.open(write_scene_image(tmp_path / f"p{i}.png", 42, 56, i)).convert("RGB") for i in range(3)]
    tif = tmp_path / "pages.tif"
    pages[0].save(tif, save_all=True, append_images=pages[1:])
    assert main(["pca", "--video", str(tif), *TINY, "--size", "28", "--out", str(tmp_path / "o")]) == 0
    assert [m for m in said(recwarn) if "OpenCV decodes" in m] == [
        f"{tif}: an image of 3 frames, of which OpenCV decodes 1: the others are left out (write them as a video, or "
        "give them as images)"], said(recwarn)
    recwarn.clear()
    video = write_video(tmp_path / "clip.mp4", frames=4, h=28, w=42)  # a video's frames: nothing said
    pca_video(tiny_vit(), video, tmp_path / "v.mp4", size=28, progress=False)
    assert not [m for m in said(recwarn) if "OpenCV decodes" in m]


def test_the_truncation_warning_counts_the_header_frames_at_the_frame_step(tmp_path, torch_home, recwarn):
    """A file that holds fewer frames than its header: the warning named the header's count after --frame-step
    as the header's own ("read 6 of the 8 frames its header announces", where it announces 16)."""
    rng = np.random.default_rng(0)
    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (42, 28))
    for _ in range(16):
        writer.write(rng.integers(0, 255, (28, 42, 3), dtype=np.uint8))
    writer.release()
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])  # the header says 16 frames; fewer are there
    there = count_frames(cut)[0]
    assert 2 < there < 16
    assert main(["pca", "--video", str(cut), *TINY, "--size", "28", "--frame-step", "2",
                 "--out", str(tmp_path / "o")]) == 0
    truncated = [m for m in said(recwarn) if "truncated" in m]
    assert truncated == [f"{cut}: read {(there + 1) // 2} of the 8 frames that its header's 16 give with frame step "
                         "2; the file may be truncated, or a format OpenCV reads only in part (e.g. GIF)"], truncated
    recwarn.clear()
    model = tiny_vit()
    pca_video(model, cut, tmp_path / "v.mp4", size=28, progress=False)
    assert [m for m in said(recwarn) if "truncated" in m][0].startswith(
        f"{cut}: read {there} of the 16 frames its header announces;")
    recwarn.clear()
    assert (there + 1) // 2 < 6
    pca_video(model, cut, tmp_path / "v6.mp4", size=28, step=2, max_frames=6, progress=False)
    truncated = [m for m in said(recwarn) if "truncated" in m]
    assert truncated[0].startswith(f"{cut}: read {(there + 1) // 2} of the 6 frames that its header's 16 give with "
                                   "frame step 2 and at most 6 frames;"), truncated


def test_the_note_of_a_padded_basis_tells_an_earlier_versions_basis_from_one_fitted_with_fit_pad(tmp_path, torch_home,
                                                                                                 capsys):
    """A basis that records fit pad was said to have been padded "as pca did before --fit"."""
    image = write_scene_image(tmp_path / "a.png", 42, 56, 0)
    padded = tmp_path / "pad.npz"
    assert main(["pca", str(image), *TINY, "--size", "28", "--fit", "pad", "--save-basis", str(padded),
                 "--out", str(tmp_path / "p")]) == 0
    capsys.readouterr()
    assert main(["pca", str(image), *TINY, "--basis", str(padded), "--out", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert f"note: --fit pad, as {padded} was fitted" in err and "before --fit" not in err, err
    older = PCABasis.load(padded)
    del older.info["fit"]  # an earlier version's basis
    older.save(tmp_path / "older.npz")
    assert main(["pca", str(image), *TINY, "--basis", str(tmp_path / "older.npz"), "--out", str(tmp_path / "o")]) == 0
    assert "(padded to the patch grid, as pca did before --fit)" in capsys.readouterr().err


def test_odd_sized_frames_are_stored_as_the_readme_says(tmp_path, torch_home):
    """The README said an odd width is stored one pixel larger too: the frame | colours video is twice the
    input's width, always even, so only an odd height is padded (121x161 -> 122x322); the --frames PNGs keep the
    frame's own size. The video and the README's sentence both checked."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 255, (21, 29, 3), dtype=np.uint8)) for _ in range(2)]
    gif = tmp_path / "odd.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    pca_video(tiny_vit(), gif, tmp_path / "odd_pca.mp4", size=28, frames_dir=tmp_path / "f", progress=False)
    assert count_frames(tmp_path / "odd_pca.mp4") == (2, (22, 58, 3))
    assert read_rgb(tmp_path / "f" / "frame_000000.png").shape == (21, 29, 3)
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    assert "An odd height or width is stored one pixel larger" not in readme
    assert ("the side-by-side frame is twice the input's width, so only an odd height is stored one pixel larger, "
            "its last row repeated, and no pixel is lost (a 121x161 video gives 122x322 frames); the `--frames` PNGs "
            "keep the frame's own size (121x161)") in readme
