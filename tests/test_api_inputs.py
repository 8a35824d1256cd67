"""What the Python API takes as the README shows it, against the command line: inputs that were crashes or
silently wrong (a reviewer of the API found each), with the embedded trained backbone."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from dinov2_dense import extract_features, load_backbone
from dinov2_dense.cli import main
from dinov2_dense.features import load_image, to_input_tensor
from dinov2_dense.viz.pca import PCAMap, pca_map_stream, pca_maps


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("dinov2_dense_tiny")


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.resize(data.chelsea(), (84, 56), interpolation=cv2.INTER_AREA)[..., ::-1])
    return path


def test_a_tensor_is_refused_where_pixels_are_read_not_crashed_on(tiny, photo):
    """A tensor has a .mode and a .size, so it was taken for a PIL image: AttributeError from deep inside."""
    x = to_input_tensor(str(photo))
    for call in (lambda: load_image(torch.rand(64, 64, 3)), lambda: pca_maps(tiny, [x]),
                 lambda: pca_maps(tiny, x[None]), lambda: pca_maps(tiny, [str(photo), x])):
        with pytest.raises(TypeError, match="a torch tensor is no image file, array or PIL image.*extract_features"):
            call()
    assert extract_features(tiny, x[None]).maps[3].shape[0] == 1  # where tensors belong


def test_pca_maps_takes_one_image_as_extract_features_does(tiny, photo):
    """One array gave one map per row (60 grey images of one row each); one path one per character."""
    array = np.asarray(Image.open(photo).convert("RGB"))
    listed = pca_maps(tiny, [str(photo)], size=56)[0]
    for one in (str(photo), photo, array, Image.open(photo)):
        got = pca_maps(tiny, one, size=56)
        assert isinstance(got, PCAMap) and got.rgb.shape == (56, 84, 3)
        np.testing.assert_array_equal(got.mask, listed.mask)
        np.testing.assert_allclose(got.rgb, listed.rgb, atol=1e-6)
    with pytest.raises(TypeError, match="pca_map_stream takes several images .*not one str"):
        pca_map_stream(tiny, str(photo))
    # several, in any iterable or as a stack of arrays (as before one image was taken alone)
    for several in ((p for p in [str(photo), str(photo)]), map(str, [photo, photo]), np.stack([array, array]),
                    (str(photo), array)):
        got = pca_maps(tiny, several, size=56)
        assert isinstance(got, list) and len(got) == 2
        np.testing.assert_array_equal(got[1].mask, listed.mask)
    assert len(pca_map_stream(tiny, (p for p in [str(photo)]), size=56)) == 1


def test_a_basis_saved_in_python_names_its_model_for_the_command(tiny, photo, tmp_path, capsys):
    """A basis fitted on load_backbone("dinov2_dense_tiny") recorded no model: pca --basis took the default
    dinov2_vits14 (a download, or a 96-against-384-channel error)."""
    maps = pca_maps(tiny, [str(photo)], size=56)
    assert maps[0].basis.info["model"] == "dinov2_dense_tiny"
    maps[0].basis.save(tmp_path / "basis.npz")
    capsys.readouterr()
    assert main(["pca", str(photo), "--basis", str(tmp_path / "basis.npz"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "--model dinov2_dense_tiny, the model" in err
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "cat_mask.png"))[..., 0] > 0, maps[0].mask)


def test_devices_this_machine_lacks_are_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="device cuda: no CUDA device is available here.*use device=cpu"):
        load_backbone("dinov2_dense_tiny", device="cuda")
    with pytest.raises(ValueError, match="device 'gpu': not a device name"):
        load_backbone("dinov2_dense_tiny", device="gpu")
    with pytest.raises(ValueError, match="device cuda:0: no CUDA device"):  # an ordinal, as torch reads it
        load_backbone("dinov2_dense_tiny", device=0)
    assert next(load_backbone("dinov2_dense_tiny", device="meta").parameters()).is_meta  # sizes, no memory
    from dinov2_dense.engine import load_trained

    with pytest.raises(ValueError, match="device cuda: no CUDA device"):  # before the checkpoint is read
        load_trained(tmp_path / "no_such.pth", device="cuda")


def test_negative_blocks_in_upsample_as_in_layers(tiny, photo):
    feats = extract_features(tiny, str(photo), layers=[-1])
    assert feats.layers == [3] and feats.blocks == 4
    torch.testing.assert_close(feats.upsample(-1), feats.upsample(3), rtol=0, atol=0)
    with pytest.raises(KeyError, match=r"block -3 of this 4-block model: these features hold blocks \[3\]"):
        feats.upsample(-3)
    assert feats.rows(0, 1).blocks == 4


def test_predict_takes_float64_images_as_their_float32(tiny, photo):
    """float64 images skipped the 8-bit resize of views (only float32 was looked at): 582-1783 pixels of other
    labels than test --out's per image (reviewer); float32's are test's."""
    from heads import DensePredictor, LinearHead

    torch.manual_seed(0)
    model = DensePredictor(tiny, LinearHead([96], 5), task="segmentation", layers=[3]).eval()
    x = to_input_tensor(str(photo))[None]
    kw = dict(mode="slide", crop_size=42, stride=28, scale=(160, 40), scales=[1.0, 1.5], flip=True)
    single = model.predict(x, **kw)
    double = model.predict(x.double(), **kw)
    torch.testing.assert_close(double, single, rtol=0, atol=1e-6)
    assert double.dtype == torch.float32


def test_pil_images_read_without_a_warning(tiny, photo):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extract_features(tiny, Image.open(photo), size=42)
