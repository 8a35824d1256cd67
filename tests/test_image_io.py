"""Image files under bad input (dinov2_dense.images and its users): EXIF orientation as Pillow's
exif_transpose applies it, the pixel limit against decompression bombs, decoding one batch at a
time, and the speed warnings of extract_features."""

import io
import re
import struct
import tracemalloc
import warnings
import weakref
import zlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

import dinov2_dense.features as features
from dinov2_dense import images
from dinov2_dense.cli import main
from dinov2_dense.data import DataError, FolderDepthDataset, FolderSegmentationDataset, read_image, read_label
from dinov2_dense.data.synthetic import SceneConfig, write_folder_layout
from dinov2_dense.features import (PerformanceWarning, check_input, extract_features, load_image, to_input_tensor)
from dinov2_dense.viz.pca import pca_maps

from .conftest import tiny_vit

T = Image.Transpose
# the transpose that turns upright pixels into what a camera stores with orientation o
TO_STORED = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
             7: T.TRANSVERSE, 8: T.ROTATE_270}


@pytest.fixture(scope="module")
def model():
    return tiny_vit()


def upright_image(h=30, w=44, seed=0, channels=3, dtype=np.uint8):
    """A smooth picture with a bright corner block: no symmetry, survives JPEG, shows any turn."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = 40 + 120 * (yy / h) + 60 * (xx / w)
    img = np.stack([base + 20 * c for c in range(channels)], -1) + rng.normal(0, 3, (h, w, channels))
    img[: h // 3, : w // 4] = 240
    img = np.clip(img, 0, 255)
    if dtype == np.uint16:
        return (img * 257).astype(np.uint16)
    return img.astype(np.uint8)


def stored(upright: np.ndarray, o: int) -> np.ndarray:
    """The pixels a camera stores so that EXIF orientation ``o`` shows ``upright``."""
    im = Image.fromarray(upright)
    return np.asarray(im if o == 1 else im.transpose(TO_STORED[o]))


def exif(o: int) -> bytes:
    tags = Image.Exif()
    tags[images.ORIENTATION_TAG] = o
    return tags.tobytes()


def pil_upright(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im))


def save_tagged(path, upright, o, fmt="PNG", **kw):
    """Save the stored-sideways pixels of ``upright`` with orientation tag ``o``; check with Pillow."""
    Image.fromarray(stored(upright, o)).save(path, fmt, exif=exif(o), **kw)
    if fmt == "PNG":
        np.testing.assert_array_equal(pil_upright(path), upright)  # the fixture itself is right
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def insert_chunk(png: bytes, chunk: bytes, before: bytes) -> bytes:
    """Insert a chunk before the first chunk of type ``before`` (walking the chunks)."""
    pos = 8
    while True:
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == before:
            return png[:pos] + chunk + png[pos:]
        pos += 12 + length


def forged_png(path, width, height):
    """A 1x1 PNG whose IHDR declares width x height (CRC fixed): a decompression bomb's header."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (10, 20, 30)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# -- orientation ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("TIFF", {"compression": "tiff_lzw"})])
def test_all_eight_orientations_agree_with_exif_transpose(tmp_path, fmt, kw):
    up = upright_image()
    for o in range(1, 9):
        path = tmp_path / f"o{o}.{fmt.lower()}"
        if fmt == "TIFF":  # the orientation is a TIFF tag; its decoders apply it themselves
            Image.fromarray(stored(up, o)).save(path, fmt, tiffinfo={images.ORIENTATION_TAG: o}, **kw)
        else:
            save_tagged(path, up, o, fmt, **kw)
        ref = pil_upright(path)
        np.testing.assert_array_equal(ref, up)
        np.testing.assert_array_equal(images.decode_image(path), ref, err_msg=f"{fmt} orientation {o}")
        np.testing.assert_array_equal(images.decode_image(path, "rgb"), ref)
        assert images.read_header(path).size == up.shape[:2]
        assert images.image_size(path) == up.shape[:2]


def test_apply_orientation_is_pils_transposes():
    a = np.arange(5 * 7 * 2).reshape(5, 7, 2).astype(np.uint8)
    methods = {1: None, 2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
               6: T.ROTATE_270, 7: T.TRANSVERSE, 8: T.ROTATE_90}  # exif_transpose's table
    for o, method in methods.items():
        ref = np.stack([np.asarray(Image.fromarray(a[..., c]) if method is None else
                                   Image.fromarray(a[..., c]).transpose(method)) for c in range(2)], -1)
        np.testing.assert_array_equal(images.apply_orientation(a, o), ref)
    for odd in (0, 9, 255):
        assert images.apply_orientation(a, odd) is a


def test_jpeg_orientation(tmp_path):
    """A tagged JPEG decodes to the rotation of the same JPEG without the tag (same codec, exact)."""
    up = upright_image(48, 64)
    for o in (3, 6, 8):
        plain = tmp_path / f"plain{o}.jpg"
        tagged = tmp_path / f"tagged{o}.jpg"
        Image.fromarray(stored(up, o)).save(plain, quality=95)
        Image.fromarray(stored(up, o)).save(tagged, quality=95, exif=exif(o))
        got = images.decode_image(tagged)
        np.testing.assert_array_equal(got, images.apply_orientation(images.decode_image(plain), o))
        assert got.shape == up.shape
        assert np.abs(got.astype(int) - pil_upright(tagged)).mean() < 2  # Pillow's decoder agrees
        assert np.abs(got.astype(int) - up).mean() < 4  # and it is upright


def test_png_tags_after_the_pixels_and_in_xmp(tmp_path):
    up = upright_image()
    raw = io.BytesIO()
    Image.fromarray(stored(up, 6)).save(raw, "PNG")
    late = tmp_path / "late_exif.png"  # eXIf after IDAT: Pillow finds it only when decoding
    late.write_bytes(insert_chunk(raw.getvalue(), png_chunk(b"eXIf", exif(6)[6:]), b"IEND"))
    np.testing.assert_array_equal(pil_upright(late), up)
    np.testing.assert_array_equal(images.decode_image(late), up)
    assert images.image_size(late) == up.shape[:2]

    xmp = tmp_path / "xmp.png"
    info = __import__("PIL.PngImagePlugin", fromlist=["PngInfo"]).PngInfo()
    info.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>')
    Image.fromarray(stored(up, 6)).save(xmp, "PNG", pnginfo=info)
    np.testing.assert_array_equal(pil_upright(xmp), up)
    np.testing.assert_array_equal(images.decode_image(xmp), up)


def test_header_is_read_without_decoding_pixels(tmp_path, monkeypatch):
    up = upright_image()
    path = save_tagged(tmp_path / "t.png", up, 8)
    plain = tmp_path / "plain.png"
    Image.fromarray(up).save(plain)

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(cv2, "imdecode", refuse)
    assert images.read_header(path).size == up.shape[:2] and images.read_header(path).orientation == 8
    assert images.read_header(plain).orientation == 1
    assert check_input(path) == up.shape[:2]


def test_16bit_and_alpha_survive_orientation(tmp_path):
    up16 = upright_image(dtype=np.uint16)
    path = tmp_path / "c16.png"
    ok, png = cv2.imencode(".png", np.ascontiguousarray(stored(up16[..., 0], 6)))  # grey 16-bit
    path.write_bytes(insert_chunk(png.tobytes(), png_chunk(b"eXIf", exif(6)[6:]), b"IDAT"))
    out = images.decode_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, up16[..., 0])

    rgba = np.concatenate([upright_image(), upright_image(seed=1)[..., :1]], axis=2)
    path = save_tagged(tmp_path / "rgba.png", rgba, 5)
    np.testing.assert_array_equal(images.decode_image(path), rgba)
    np.testing.assert_allclose(load_image(path), rgba[..., :3] / 255.0, atol=1e-7)


# -- orientation in features and data sets ------------------------------------------------
def test_features_of_a_tagged_photo_equal_the_upright_ones(model, tmp_path):
    up = upright_image(42, 70)
    upright_file = tmp_path / "upright.png"
    Image.fromarray(up).save(upright_file)
    ref = extract_features(model, up)
    assert ref.maps[2].shape[-2:] == (3, 5)
    for o in range(2, 9):
        path = save_tagged(tmp_path / f"o{o}.png", up, o)
        got = extract_features(model, path)
        assert got.image_size == (42, 70)
        torch.testing.assert_close(got.maps[2], ref.maps[2], rtol=0, atol=0)
    torch.testing.assert_close(extract_features(model, upright_file).maps[2], ref.maps[2], rtol=0, atol=0)
    # a JPEG: the tagged file gives the features of its untagged twin's pixels, turned upright
    Image.fromarray(stored(up, 6)).save(tmp_path / "plain.jpg", quality=95)
    Image.fromarray(stored(up, 6)).save(tmp_path / "tagged.jpg", quality=95, exif=exif(6))
    turned = images.apply_orientation(images.decode_image(tmp_path / "plain.jpg"), 6)
    torch.testing.assert_close(extract_features(model, tmp_path / "tagged.jpg").maps[2],
                               extract_features(model, turned).maps[2], rtol=0, atol=0)


def test_pca_maps_of_a_tagged_photo_are_upright(model, tmp_path):
    up = upright_image(42, 70)
    maps = pca_maps(model, [save_tagged(tmp_path / "t.png", up, 6), up], threshold=None)
    assert maps[0].image.dtype == np.uint8 and maps[0].image.shape == (42, 70, 3)
    np.testing.assert_array_equal(maps[0].image, up)
    np.testing.assert_array_equal(maps[0].rgb, maps[1].rgb)


@pytest.fixture
def folder(tmp_path):
    return write_folder_layout(tmp_path / "data", 2, SceneConfig(size=(24, 32), num_classes=5), image_ext=".png",
                               progress=False)


def test_dataset_sample_of_a_tagged_image_is_upright(folder):
    ref_seg = FolderSegmentationDataset(folder).load_item(0)
    ref_depth = FolderDepthDataset(folder).load_item(0)
    img, mask, depth = (folder / "images" / "00000.png", folder / "masks" / "00000.png",
                        folder / "depth" / "00000.png")
    up_depth = np.asarray(Image.open(depth))
    assert up_depth.dtype == np.uint16
    save_tagged(img, ref_seg["image"], 6)
    save_tagged(mask, ref_seg["seg"], 6)
    save_tagged(depth, up_depth, 6)
    assert Image.open(img).size == (24, 32)  # stored sideways
    seg = FolderSegmentationDataset(folder).load_item(0)
    np.testing.assert_array_equal(seg["image"], ref_seg["image"])
    np.testing.assert_array_equal(seg["seg"], ref_seg["seg"])
    np.testing.assert_array_equal(FolderDepthDataset(folder).load_item(0)["depth"], ref_depth["depth"])
    np.testing.assert_array_equal(read_image(img), ref_seg["image"])
    np.testing.assert_array_equal(read_label(mask), ref_seg["seg"])

    # the label without the tag no longer fits its upright image: the size check names it
    Image.fromarray(stored(ref_seg["seg"], 6)).save(mask)
    with pytest.raises(DataError, match=re.escape(str(mask)) + r": label map of size 24x32 .* is 32x24 \(turned by 90 degrees"):
        FolderSegmentationDataset(folder)[0]


def test_a_tagged_image_whose_map_has_no_tag_is_said_once(folder):
    """A half turn keeps the size: an image tagged 3 with its label drawn on the stored pixels trained silently
    on labels turned against it (a reviewer: mIoU 15.6 against 43.9). The pairing stays mmseg's (the map as
    drawn on the upright image), and a warning names the pair, once for the data set."""
    ref = FolderSegmentationDataset(folder).load_item(1)
    img = folder / "images" / "00001.png"
    save_tagged(img, ref["image"], 3)
    for dataset in (FolderSegmentationDataset(folder), FolderDepthDataset(folder)):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            for _ in range(2):
                samples = [dataset.load_item(i) for i in range(len(dataset))]
        (warning,) = said
        what = "label" if isinstance(dataset, FolderSegmentationDataset) else "depth"
        assert str(warning.message).startswith(f"{img} has EXIF orientation 3 and is read turned upright; its "
                                               f"{what} map {folder / (what if what == 'depth' else 'masks')}")
        np.testing.assert_array_equal(samples[1]["image"], ref["image"])
    save_tagged(folder / "masks" / "00001.png", ref["seg"], 3)  # the map carries the tag too: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        seg = FolderSegmentationDataset(folder).load_item(1)["seg"]
    np.testing.assert_array_equal(seg, ref["seg"])
    # a TIFF's tag counts as such (its decoder applies it): a tagged TIFF map says nothing, a tagged TIFF image with
    # an untagged map is said (both were the other way round: the diff review)
    (folder / "masks" / "00001.png").unlink()
    save_tagged(folder / "masks" / "00001.tif", ref["seg"], 3, fmt="TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(FolderSegmentationDataset(folder).load_item(1)["seg"], ref["seg"])
    img.unlink()
    save_tagged(folder / "images" / "00001.tif", ref["image"], 3, fmt="TIFF")
    (folder / "masks" / "00001.tif").unlink()
    Image.fromarray(ref["seg"]).save(folder / "masks" / "00001.png")
    with pytest.warns(UserWarning, match=r"00001\.tif has EXIF orientation 3 and is read turned upright"):
        FolderSegmentationDataset(folder).load_item(1)


def test_a_16_bit_image_as_the_data_sets_read_it_is_their_input(folder):
    """The data sets read 16-bit images in 8 bits (as mmseg: OpenCV's conversion) where to_input_tensor(path)
    keeps 16; to_input_tensor(read_image(path)), as the README says, is the data set's input exactly."""
    from dinov2_dense.features import to_input_tensor

    img = folder / "images" / "00001.png"
    picture = upright_image(24, 32, dtype=np.uint16)
    cv2.imwrite(str(img), picture[..., ::-1])
    sample = FolderSegmentationDataset(folder)[1]["image"]
    assert torch.equal(to_input_tensor(read_image(img)), sample)
    assert not torch.equal(to_input_tensor(img), sample)  # (16 bits: what the README warns of)


def test_palette_label_keeps_indices_when_turned(tmp_path):
    ids = (np.arange(6 * 9).reshape(6, 9) % 7).astype(np.uint8)
    im = Image.fromarray(stored(ids, 8), mode="L").convert("P")
    im.putpalette([v for k in range(256) for v in (k * 3 % 256, k * 5 % 256, k * 7 % 256)])
    path = tmp_path / "pal.png"
    im.save(path, exif=exif(8))
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(read_label(path), ids)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiff_label_upright_in_every_orientation_as_its_image(tmp_path, dtype):
    """A TIFF's decoder turns it by its tag; Pillow's did so wrongly for grey maps tagged 5-8 (the
    transposed pixels in the stored shape), so a label read by Pillow no longer matched its image."""
    ids = (np.arange(10 * 14).reshape(10, 14) % 9).astype(dtype)
    picture = upright_image(10, 14)
    for o in range(1, 9):
        label, image = tmp_path / f"label{o}.tif", tmp_path / f"image{o}.tif"
        Image.fromarray(stored(ids, o)).save(label, exif=exif(o))
        Image.fromarray(stored(picture, o)).save(image, exif=exif(o))
        np.testing.assert_array_equal(read_label(label), ids, err_msg=f"orientation {o}")
        np.testing.assert_array_equal(read_image(image), picture, err_msg=f"orientation {o}")
        if dtype == np.uint8:  # 1-bit maps keep their ids 0/1 (OpenCV gives 0/255: 255 is the ignore index)
            bits = tmp_path / f"bits{o}.tif"
            Image.fromarray(stored(ids % 2 > 0, o)).save(bits, exif=exif(o))
            assert Image.open(bits).mode == "1"
            np.testing.assert_array_equal(read_label(bits), ids % 2, err_msg=f"1-bit, orientation {o}")
            palette = tmp_path / f"palette{o}.tif"
            im = Image.fromarray(stored(ids, o)).convert("P")
            im.putpalette([v for k in range(256) for v in (k * 3 % 256, k * 5 % 256, k * 7 % 256)])
            im.save(palette, exif=exif(o))
            # (Pillow scrambles uncompressed ones tagged 5-8 that are not square: read through OpenCV's colours)
            np.testing.assert_array_equal(read_label(palette), ids, err_msg=f"palette, orientation {o}")


def test_grey_and_alpha_label_reads_its_grey_channel(tmp_path):
    ids = (np.arange(6 * 9).reshape(6, 9) % 7).astype(np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([ids, np.full_like(ids, 255)], -1), mode="LA").save(path)
    np.testing.assert_array_equal(read_label(path), ids)


# -- the pixel limit ------------------------------------------------------------------------
def test_forged_header_is_refused_at_once_without_decoding(tmp_path, monkeypatch, model):
    bomb = forged_png(tmp_path / "bomb.png", 20000, 20000)

    def refuse(*args, **kwargs):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    tracemalloc.start()
    try:
        with pytest.raises(images.ImageTooLargeError) as err:
            images.decode_image(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, peak  # a decode would need 1.2 GB
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(bomb))
    assert "20000x20000" in message and "DINOV2_DENSE_MAX_PIXELS" in message and "178,956,970" in message
    assert isinstance(err.value, ValueError)

    ok = tmp_path / "ok.png"
    Image.fromarray(upright_image()).save(ok)
    forwards = []
    hook = model.patch_embed.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        for call in (lambda: load_image(bomb), lambda: check_input(bomb), lambda: images.read_header(bomb),
                     lambda: extract_features(model, [ok, bomb]), lambda: pca_maps(model, [ok, bomb])):
            with pytest.raises(images.ImageTooLargeError, match=re.escape(str(bomb))):
                call()
    finally:
        hook.remove()
    assert not forwards  # refused before any model work
    for call in (read_image, read_label):
        with pytest.raises(DataError, match=re.escape(str(bomb)) + ".*20000x20000.*DINOV2_DENSE_MAX_PIXELS"):
            call(bomb)


def test_command_refuses_the_bomb_in_one_line(tmp_path, torch_home, capsys):
    bomb = forged_png(tmp_path / "bomb.png", 20000, 20000)
    out = tmp_path / "out"
    assert main(["pca", str(bomb), "--weights", "random", "--size", "28", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bomb) in err and "DINOV2_DENSE_MAX_PIXELS" in err
    assert not out.exists()


def test_limit_from_environment_and_module_setting(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.fromarray(upright_image(20, 30)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", None)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "500")
    with pytest.raises(images.ImageTooLargeError, match=re.escape(str(path)) + r": 30x20 = 600 pixels .* 500 pixels"):
        load_image(path)
    with pytest.raises(DataError, match="600 pixels"):
        read_image(path)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "600")
    assert load_image(path).shape == (20, 30, 3)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "0")  # no limit
    assert images.max_pixels() == 0 and images.decode_image(path).shape == (20, 30, 3)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "500")
    monkeypatch.setattr(images, "MAX_PIXELS", 10_000)  # the module setting wins
    assert images.max_pixels() == 10_000 and images.decode_image(path).shape == (20, 30, 3)
    monkeypatch.setattr(images, "MAX_PIXELS", None)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ValueError, match="DINOV2_DENSE_MAX_PIXELS='lots'"):
        load_image(path)
    monkeypatch.delenv(images.MAX_PIXELS_ENV)
    assert images.max_pixels() == 2 * Image.MAX_IMAGE_PIXELS


def test_limit_between_pillows_warning_and_error(tmp_path, monkeypatch):
    """10000x10000 passes Pillow's warning threshold: our lower limit refuses it, and quietly."""
    bomb = forged_png(tmp_path / "big.png", 10000, 10000)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "50000000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(images.ImageTooLargeError, match="10000x10000"):
            images.read_header(bomb)


# -- one batch at a time --------------------------------------------------------------------
class DecodeLog:
    """Wraps the decoder: logs decodes, counts the decoded arrays still alive."""

    def __init__(self, monkeypatch, events):
        self.events, self.live, self.most = events, 0, 0
        self.real = features.decode_image
        monkeypatch.setattr(features, "decode_image", self)

    def __call__(self, path, mode="unchanged"):
        array = self.real(path, mode)
        self.events.append("decode")
        self.live += 1
        self.most = max(self.most, self.live)
        weakref.finalize(array, self._freed)
        return array

    def _freed(self):
        self.live -= 1


def write_images(folder, sizes):
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(folder / f"{i}.png")
        Image.fromarray(upright_image(h, w, seed=i)).save(paths[-1])
    return paths


def test_extract_features_decodes_one_batch_at_a_time(model, tmp_path, monkeypatch):
    paths = write_images(tmp_path, [(30, 44)] * 5)
    events = []
    log = DecodeLog(monkeypatch, events)
    hook = model.patch_embed.register_forward_pre_hook(lambda m, a: events.append(f"forward{a[0].shape[0]}"))
    try:
        extract_features(model, paths, batch_size=2)
    finally:
        hook.remove()
    assert events == ["decode", "decode", "forward2", "decode", "decode", "forward2", "decode", "forward1"]
    assert log.most == 1 and log.live == 0  # each decoded array is freed once it is in the batch


def test_pca_maps_decodes_one_chunk_at_a_time(model, tmp_path, monkeypatch):
    paths = write_images(tmp_path, [(30, 44)] * 5)
    events = []
    log = DecodeLog(monkeypatch, events)
    hook = model.patch_embed.register_forward_pre_hook(lambda m, a: events.append(f"forward{a[0].shape[0]}"))
    try:
        maps = pca_maps(model, paths, batch_size=2)
    finally:
        hook.remove()
    assert events == ["decode", "decode", "forward2", "decode", "decode", "forward2", "decode", "forward1"]
    assert log.most == 2 and log.live == 0  # one chunk of decoded images, then only uint8 copies
    for m, p in zip(maps, paths):
        assert m.image.dtype == np.uint8
        np.testing.assert_array_equal(m.image, np.asarray(Image.open(p)))


@pytest.mark.parametrize("size", [None, 56, (40, 60)])
def test_lazy_batches_give_exactly_the_eager_results(model, tmp_path, size):
    """Against the former eager path: every input decoded first, stacked per size, run as one batch.
    Exactly equal at the images' own size; resized (``size``), 8-bit images are resized before they
    are normalised (``load_resized``), which changes only float rounding."""
    paths = write_images(tmp_path, [(30, 44), (28, 28), (30, 44), (30, 44)])
    arr = upright_image(30, 44, seed=9)
    tensor = to_input_tensor(upright_image(28, 28, seed=8))
    items = [paths[0], paths[1], arr, paths[2], tensor, paths[3]]
    got = extract_features(model, items, layers=[1, 2], size=size, batch_size=2)
    groups = {}
    for i, x in enumerate(items):
        groups.setdefault(tuple(to_input_tensor(x).shape[-2:]), []).append(i)
    for idx in groups.values():
        for j in range(0, len(idx), 2):
            chunk = idx[j : j + 2]
            ref = extract_features(model, torch.stack([to_input_tensor(items[i]) for i in chunk]), layers=[1, 2],
                                   size=size)
            for k, i in enumerate(chunk):
                assert got[i].image_size == ref.image_size and got[i].input_size == ref.input_size
                exact = size is None or isinstance(items[i], torch.Tensor)
                for layer in (1, 2):
                    for a, b in ((got[i].maps[layer], ref.maps[layer][k : k + 1]),
                                 (got[i].cls_tokens[layer], ref.cls_tokens[layer][k : k + 1])):
                        assert torch.equal(a, b) if exact else torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_reported_before_model_work(model, tmp_path):
    paths = write_images(tmp_path, [(30, 44)] * 3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    forwards = []
    hook = model.patch_embed.register_forward_pre_hook(lambda m, a: forwards.append(1))
    try:
        for bad, error in ((tmp_path / "missing.png", FileNotFoundError), (broken, ValueError),
                           (np.full((30, 44), np.nan), ValueError)):
            with pytest.raises(error):
                extract_features(model, [*paths, bad], batch_size=1)
    finally:
        hook.remove()
    assert not forwards


# -- speed warnings -------------------------------------------------------------------------
def test_cpuinfo_parsing():
    x86 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
    assert features._bf16_in_cpuinfo(x86)
    assert not features._bf16_in_cpuinfo(x86.replace(" avx512_bf16", ""))
    assert features._bf16_in_cpuinfo("Features\t: fp asimd bf16 i8mm\n")
    assert not features._bf16_in_cpuinfo("Features\t: fp asimd\nmodel name\t: bf16 lookalike\n")
    assert isinstance(features.cpu_has_native_bf16(), bool)


def test_bf16_autocast_warns_once_without_native_bf16(model, monkeypatch):
    img = upright_image(28, 28)
    monkeypatch.setattr(features, "_warned_bf16", False)
    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        extract_features(model, img, autocast=True)
    monkeypatch.setattr(features, "cpu_has_native_bf16", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        extract_features(model, img)  # no autocast, no warning
    with pytest.warns(PerformanceWarning, match="bfloat16.*3-4x slower") as record:
        extract_features(model, img, autocast=True)
    assert record[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        extract_features(model, [img, img], autocast=True)  # once per process


def test_large_untiled_forward_is_announced(model, monkeypatch):
    monkeypatch.setattr(features, "LARGE_FORWARD_TOKENS", 30)
    with pytest.warns(PerformanceWarning, match=r"image 0: one forward pass of 35 patch tokens \(5x7\).*tile=") as record:
        extract_features(model, upright_image(70, 98))
    with pytest.warns(PerformanceWarning, match="one forward pass of 35 patch tokens") as batched:
        next(features.feature_batches(model, [upright_image(70, 98)]))
    assert record[0].filename == batched[0].filename == __file__  # points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerformanceWarning)
        extract_features(model, upright_image(70, 98), tile=42)  # tiled: fine
        extract_features(model, upright_image(70, 98), size=42)  # 3x4 patches after resizing
        extract_features(model, upright_image(28, 28))
    assert features.LARGE_FORWARD_TOKENS < 30_000


class BarLog:
    """Stands in for tqdm: records the bars made and their updates."""

    bars: list = []

    def __init__(self, iterable=None, total=None, desc=None, disable=False, **kw):
        self.iterable, self.total, self.desc, self.disable, self.n = iterable, total, desc, disable, 0
        BarLog.bars.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        self.n += n


def test_tiles_show_a_progress_bar(model, monkeypatch):
    import tqdm.auto

    monkeypatch.setattr(tqdm.auto, "tqdm", BarLog)
    x = torch.randn(1, 3, 70, 98, generator=torch.Generator().manual_seed(2))  # 5x7 patches: 2x3 tiles
    for progress, shown in ((None, True), (True, True), (False, False)):
        BarLog.bars = []
        extract_features(model, x, tile=42, tile_overlap=14, progress=progress)
        (bar,) = [b for b in BarLog.bars if b.desc == "tiles"]
        assert bar.total == 6 and bar.n == 6 and bar.disable is not shown
    BarLog.bars = []
    extract_features(model, x, tile=98, progress=True)  # one tile: no bar
    assert all(b.disable for b in BarLog.bars if b.desc == "tiles")
