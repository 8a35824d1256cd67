"""Reading image files upright and within a pixel limit: the one image reader of the toolkit.

Every image file the toolkit reads (features and PCA maps, data set images, label and depth maps)
goes through here, for two guarantees:

* **EXIF orientation.** Cameras store a portrait photo as landscape pixels plus an Orientation tag
  (1-8). We apply it as ``PIL.ImageOps.exif_transpose`` does (the same tag lookup: EXIF, the PNG
  "Raw profile type exif" text, XMP; the same eight transposes), so a photo gives upright
  features, masks and overlays, and a label map saved with the same tag stays on its image's grid.
  TIFF is the exception: its decoders (libtiff in OpenCV, Pillow's loader) apply the tag
  themselves and Pillow reports the upright size, so nothing is left to do.
* **A pixel limit** against decompression bombs (a few kB of PNG or JPEG that decode to
  gigabytes). The size is read from the header (Pillow opens lazily) and an image over the limit
  is refused before any pixel memory is allocated. Default: Pillow's own error threshold,
  ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (about 179 M pixels); the environment variable
  ``DINOV2_DENSE_MAX_PIXELS`` or :data:`MAX_PIXELS` (which wins) change it, 0 = no limit.

Pixels are decoded by OpenCV, which keeps 16-bit data and alpha (Pillow has no 16-bit RGB mode);
Pillow reads only headers and tags. A file Pillow cannot identify but OpenCV decodes (OpenEXR,
PFM, ...) is decoded first and checked against the limit afterwards; OpenCV's own limit
(``OPENCV_IO_MAX_IMAGE_PIXELS``, about 1 G pixels) guards that decode. Arrays and PIL images in
memory are not files: they are taken as they are (call ``ImageOps.exif_transpose`` yourself).

A path ``skimage:NAME`` names a scikit-image sample image (``skimage:astronaut``); it is read
from scikit-image, which ships it, and needs neither guarantee.
"""

from __future__ import annotations

import os
from pathlib import Path
import struct
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image as PILImage

MAX_PIXELS_ENV = "DINOV2_DENSE_MAX_PIXELS"
MAX_PIXELS: int | None = None
"""Pixel limit for this process (wins over the environment); None: ``DINOV2_DENSE_MAX_PIXELS`` if
set, else Pillow's error threshold. 0 = no limit."""

SAMPLE_PREFIX = "skimage:"
ORIENTATION_TAG = 0x0112  # EXIF / TIFF tag 274
DECODER_ORIENTED = frozenset({"TIFF"})  # formats whose decoders apply the orientation tag themselves


class ImageError(ValueError):
    """An image file that cannot be read; the message names the file."""


class ImageTooLargeError(ImageError):
    """An image over the pixel limit (see :func:`max_pixels`); the message says how to raise it."""


# -- the pixel limit ------------------------------------------------------------------------
def max_pixels() -> int:
    """The pixel limit in force (0 = none): :data:`MAX_PIXELS`, else ``$DINOV2_DENSE_MAX_PIXELS``,
    else ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (Pillow's decompression-bomb error threshold; no limit
    when that is None)."""
    if MAX_PIXELS is not None:
        value, where = MAX_PIXELS, "dinov2_dense.images.MAX_PIXELS"
    elif os.environ.get(MAX_PIXELS_ENV, "").strip():
        text = os.environ[MAX_PIXELS_ENV].strip()
        value, where = _parse_pixels(text), f"{MAX_PIXELS_ENV}={text!r}"
    else:
        return default_max_pixels()
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{where}: expected a whole number of pixels >= 0 (0 = no limit)")
    return int(value)


def default_max_pixels() -> int:
    """The pixel limit where none is set: ``2 * PIL.Image.MAX_IMAGE_PIXELS`` (0, none, where that is None)."""
    from PIL import Image

    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else 0


def _parse_pixels(text: str) -> int | None:
    try:
        return int(text.replace("_", ""))
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def check_pixels(path: str | os.PathLike, height: int, width: int) -> None:
    """Raise :class:`ImageTooLargeError` when ``height * width`` is over :func:`max_pixels`."""
    limit = max_pixels()
    pixels = int(height) * int(width)
    if limit and pixels > limit:
        raise ImageTooLargeError(
            f"{path}: {width}x{height} = {pixels:,} pixels is over the limit of {limit:,} pixels (a guard "
            f"against decompression bombs); if you trust this file, raise the limit: {MAX_PIXELS_ENV}={pixels} "
            f"or dinov2_dense.images.MAX_PIXELS = {pixels} (0 = no limit)"
        )


# -- headers and orientation ----------------------------------------------------------------
_PIL_LIMIT_LOCK = threading.Lock()


def _pil_open(path: str) -> PILImage.Image | None:
    """Pillow's lazy open (header and tags, no pixels); None when Pillow does not know the format.

    Pillow's own bomb check is kept out of the way (ours has its own limit and names the size).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                return Image.open(path)
            except Image.DecompressionBombError:
                # over Pillow's threshold: open again without it, only to read the size for our check
                with _PIL_LIMIT_LOCK:
                    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                    try:
                        return Image.open(path)
                    finally:
                        Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        return None
    except Exception as exc:  # Pillow's plugins raise many kinds on malformed headers
        raise ImageError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None


def open_image(path: str | os.PathLike) -> PILImage.Image:
    """Open an image file lazily with Pillow (header only), refusing it over the pixel limit.

    For callers that decode with Pillow (palette label maps); use it as a context manager.
    Raises FileNotFoundError, :class:`ImageError` or :class:`ImageTooLargeError`, naming the file.
    """
    path = _existing(path)
    image = _pil_open(path)
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt, empty or an unknown format)")
    try:
        check_pixels(path, image.size[1], image.size[0])
    except ImageTooLargeError:
        image.close()
        raise
    return image


def exif_orientation(image: PILImage.Image) -> int:
    """The EXIF orientation (1-8, 1 = upright) still to apply to this image's pixels, read as
    ``ImageOps.exif_transpose`` reads it; 1 for TIFF (decoders apply it) and for unusable values.

    Unlike Pillow it does not decode a lazily opened PNG to look for tags after the pixel data:
    the file's chunk headers are scanned, and the image is loaded only if such a tag is there.
    An unreadable EXIF block counts as no orientation (the pixels may still be fine).
    """
    return 1 if image.format in DECODER_ORIENTED else orientation_tag(image)


def orientation_tag(image: PILImage.Image) -> int:
    """The orientation tag of an image (1-8; 1 where it has none or an unusable one), whichever decoder applies
    it: :func:`exif_orientation`'s reading, and for TIFF the tag its decoder turns it by."""
    from PIL import Image

    try:
        if image.format == "PNG":
            if image.tile and "exif" not in image.info and _png_tags_after_pixels(image.filename):
                image.load()  # Pillow reads chunks after the pixel data only when decoding them
            exif = Image.Image.getexif(image)  # exif_transpose's lookup, without the PNG plugin's load
        else:
            exif = image.getexif()
        value = exif.get(ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _png_tags_after_pixels(path: str | os.PathLike | None) -> bool:
    """Whether a PNG has, after its first IDAT, a chunk where Pillow looks for an orientation:
    eXIf, or a text chunk whose keyword names EXIF or XMP. Reads chunk headers only."""
    if not path:
        return True  # no file to scan: let Pillow look
    try:
        with open(path, "rb") as f:
            f.seek(8)  # signature
            seen_pixels = False
            while len(head := f.read(8)) == 8:
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    break
                seen_pixels = seen_pixels or kind == b"IDAT"
                skip = length + 4  # data and CRC
                if seen_pixels and kind == b"eXIf":
                    return True
                if seen_pixels and kind in (b"tEXt", b"zTXt", b"iTXt"):
                    key = f.read(min(length, 80))
                    name = key.split(b"\0", 1)[0].lower()
                    if b"exif" in name or b"xmp" in name:
                        return True
                    skip -= len(key)
                f.seek(skip, os.SEEK_CUR)
    except OSError:
        return True
    return False


def apply_orientation(array: np.ndarray, orientation: int) -> np.ndarray:
    """Stored pixels (H, W, ...) -> upright, for an EXIF orientation 1-8: the transposes of
    ``ImageOps.exif_transpose`` (2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
    clockwise, 7 transverse, 8 rotate 90 anticlockwise). Returns a view (no copy)."""
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.swapaxes(0, 1)
    if orientation == 6:
        return array[::-1].swapaxes(0, 1)
    if orientation == 7:
        return array[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:
        return array[:, ::-1].swapaxes(0, 1)
    return array


@dataclass(frozen=True)
class ImageHeader:
    """What an image file's header says. size: (H, W) upright, what :func:`decode_image` returns;
    orientation: the EXIF orientation decode_image applies to the decoder's pixels (1 = none);
    format: Pillow's format name, or "OpenCV" for a file only OpenCV reads."""

    path: str
    format: str
    size: tuple[int, int]
    orientation: int = 1

    @property
    def stored_size(self) -> tuple[int, int]:
        """(H, W) of the pixels as the decoder returns them, before orientation."""
        return self.size[::-1] if self.orientation >= 5 else self.size


def _existing(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a folder, not an image file (give its images, e.g. {os.path.join(path, '*.jpg')})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such image file")
    return path


def _header(path: str, image: PILImage.Image) -> ImageHeader:
    w, h = image.size
    check_pixels(path, h, w)
    orientation = exif_orientation(image)
    size = (w, h) if orientation >= 5 else (h, w)
    return ImageHeader(path, image.format or "unknown", size, orientation)


def read_header(path: str | os.PathLike) -> ImageHeader:
    """Size and orientation of an image file without decoding its pixels: a cheap check that the
    file exists, its header parses, OpenCV has a decoder for it and it is within the pixel limit.

    A file Pillow does not know is decoded by OpenCV to learn its size (see the module docstring).
    Raises FileNotFoundError, :class:`ImageError` or :class:`ImageTooLargeError`, naming the file.
    """
    import cv2

    if os.fspath(path).startswith(SAMPLE_PREFIX):
        return ImageHeader(os.fspath(path), "scikit-image", tuple(read_sample(path).shape[:2]))
    path = _existing(path)
    image = _pil_open(path)
    if image is None:
        array = _cv2_decode(path, cv2.IMREAD_UNCHANGED)
        check_pixels(path, *array.shape[:2])
        return ImageHeader(path, "OpenCV", tuple(array.shape[:2]))
    with image:
        header = _header(path, image)
    if not _utf8_name(path):  # OpenCV takes no such name: decode the bytes to learn that it can
        _cv2_decode(path, cv2.IMREAD_UNCHANGED)
    elif not cv2.haveImageReader(path):
        raise ImageError(f"{path}: a {header.format} image, which OpenCV cannot decode; convert it (e.g. to PNG)")
    return header


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of an image file as :func:`decode_image` will return it (upright), from its header;
    checked as :func:`read_header` checks."""
    return read_header(path).size


def check_image(path: str | os.PathLike) -> None:
    """Raise, naming the file, if it is missing, unreadable or over the pixel limit; reads only
    its header, so a list of inputs can be checked before any work."""
    read_header(path)


def _utf8_name(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by os.fsdecode as lone surrogates
        return False
    return True


def opencv_path(path: str | os.PathLike, what: str = "file") -> str:
    """``path`` as a str for OpenCV functions that open a file by its name (video capture and writing).

    OpenCV's Python binding crashes the process (a segmentation fault) on a name that is not valid UTF-8
    (a Windows archive unpacked here, say), so such a name is refused with an :class:`ImageError` naming
    it. Images are decoded from their bytes and need no such name."""
    path = os.fspath(path)
    if not _utf8_name(path):
        raise ImageError(f"{path}: the name is not valid UTF-8, which OpenCV cannot take for a {what}; rename it "
                         "(e.g. convmv -f latin1 -t utf-8)")
    return path


# -- decoding -------------------------------------------------------------------------------
#: Pillow's modes of the images whose samples OpenCV's colour decode (IMREAD_COLOR) converts itself: unsigned
#: 8 and 16 bits.
_OPENCV_COLOUR_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                                  "LAB", "HSV", "I;16", "I;16L", "I;16B", "I;16N"})


def _unsigned_samples(image: PILImage.Image) -> bool:
    """Whether the image's samples are unsigned integers, as its TIFF SampleFormat tag (339) says (other formats:
    yes)."""
    formats = getattr(image, "tag_v2", {}).get(339, 1) if image.format == "TIFF" else 1
    return all(int(f) == 1 for f in (formats if isinstance(formats, (tuple, list)) else (formats,)))


def _cv2_decode(path: str, flags: int) -> np.ndarray:
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    try:
        array = cv2.imdecode(data, flags) if data.size else None
    except cv2.error:
        array = None
    if array is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated, empty or an unknown format)")
    return array


def decode_image(path: str | os.PathLike, mode: str = "unchanged") -> np.ndarray:
    """Decode an image file upright (EXIF orientation applied), refusing it over the pixel limit
    before decoding.

    mode "unchanged": the stored dtype (uint8, uint16, float32) and channels, in RGB order: (H, W)
    grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA. mode "rgb": uint8 RGB (H, W, 3)
    (OpenCV's conversion: grey repeated, alpha dropped, 16 bits scaled to 8).
    Raises FileNotFoundError, :class:`ImageError` or :class:`ImageTooLargeError`, naming the file.
    """
    import cv2

    if mode not in ("unchanged", "rgb"):
        raise ValueError(f"mode={mode!r}: use 'unchanged' or 'rgb'")
    if os.fspath(path).startswith(SAMPLE_PREFIX):
        sample = read_sample(path)
        if mode == "rgb":  # (boolean or float samples too: horse, shepp_logan_phantom)
            sample = _stored_to_rgb8(path, sample)
        return np.ascontiguousarray(sample)
    path = _existing(path)
    image = _pil_open(path)
    header, pil_mode = None, None
    if image is not None:
        with image:
            header = _header(path, image)  # the limit is checked here, before any pixel is decoded
            pil_mode = image.mode if _unsigned_samples(image) else None  # (Pillow calls signed 8 bits "L")
    color = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    array = None
    if mode == "rgb" and pil_mode not in _OPENCV_COLOUR_MODES:
        # OpenCV makes 8-bit colour of unsigned 8- and 16-bit samples alone: it refused float TIFFs and turned
        # signed ones' -1 brighter than 32767. Samples of another kind (Pillow does not know them, or knows them
        # as signed, 32-bit or float) are decoded as stored and converted below as every other reader converts
        # them (features refuses negative values); unsigned ones go to OpenCV's conversion, as all others do
        stored = _cv2_decode(path, cv2.IMREAD_UNCHANGED)
        if stored.dtype not in (np.uint8, np.uint16):
            array = stored
    if array is None:
        array = _cv2_decode(path, cv2.IMREAD_UNCHANGED if mode == "unchanged" else color)
    if header is None:
        check_pixels(path, *array.shape[:2])
    elif tuple(array.shape[:2]) != header.stored_size:
        h, w = header.stored_size
        raise ImageError(f"{path}: decodes to {array.shape[1]}x{array.shape[0]} pixels but its header says {w}x{h}; "
                         "the file is corrupt or an unusual variant: convert it (e.g. to PNG)")
    if array.ndim == 3 and array.shape[2] in (3, 4):  # OpenCV decodes BGR(A)
        if array.dtype in (np.uint8, np.uint16, np.float32):  # cvtColor swaps fastest, and takes only these
            array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB if array.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
        else:  # signed, 32-bit integer or float64 samples (TIFF)
            array = array[..., [2, 1, 0, 3][: array.shape[2]]]
    if mode == "rgb" and (array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3):
        array = _stored_to_rgb8(path, array)
    return np.ascontiguousarray(apply_orientation(array, header.orientation if header else 1))


def _stored_to_rgb8(path: str, array: np.ndarray) -> np.ndarray:
    """uint8 RGB of samples that OpenCV does not make 8-bit colour itself (float, 32-bit; scikit-image's samples
    too), by the rule that reads every image input (:func:`dinov2_dense.features.to_rgb_float`: floats in [0, 1], integers as 8 or 16
    bits), so the data sets see what ``features`` sees; refused, naming the file, where that rule refuses."""
    from .features import to_rgb_float  # (same layer; features reads its files through this module)

    try:
        rgb = to_rgb_float(array)
    except ValueError as exc:
        raise ImageError(f"{path}: {exc}") from None
    return (rgb * 255.0 + 0.5).astype(np.uint8)


_SKIMAGE_NOT_IMAGES = {"data_dir", "download_all", "file_hash", "lbp_frontal_face_cascade_filename"}


def read_sample(name: str | os.PathLike) -> np.ndarray:
    """The scikit-image sample image ``skimage:NAME`` as scikit-image returns it (uint8, (H, W) or
    (H, W, 3|4)); raises FileNotFoundError for a name that is not a sample image."""
    name = os.fspath(name)
    import skimage.data

    sample = name.split(":", 1)[1]
    loader = getattr(skimage.data, sample, None)
    if sample not in skimage.data.__all__ or sample in _SKIMAGE_NOT_IMAGES or not callable(loader):
        raise FileNotFoundError(f"{name}: scikit-image has no sample image named {sample!r}")
    image = loader()
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ImageError(f"{name}: this scikit-image sample is not a single image")
    return image


# -- depth maps -----------------------------------------------------------------------------
#: The files that hold depth maps, for the data sets and ``eval-depth`` alike: 16-bit PNG or TIFF, ``.npy``.
DEPTH_EXTENSIONS = (".png", ".npy", ".tif", ".tiff")


def read_depth(path: str | os.PathLike, scale: float | None = None) -> np.ndarray:
    """A depth map in metres, float64 ``(H, W)``, as stored: the one depth reader of the toolkit
    (data sets, ``eval-depth``).

    A ``.npy`` of floats holds metres: ``(H, W)`` or with leading singleton dimensions. Images must be
    single-channel 16-bit (PNG, as NYU-Depth v2 and KITTI store depth) and are divided by ``scale``
    (units per metre: NYU 1000, KITTI 256), which must then be given, as must a ``.npy`` of integers
    (millimetres saved with ``np.save`` are not read as metres); an 8-bit or colour image is
    refused (a coloured depth figure is not a depth map, and 8 bits cannot hold a depth range).
    Non-finite and negative values are returned as they are: ground truth and predictions treat
    them differently (:func:`dinov2_dense.data.files.read_depth`, the depth metrics).
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such depth file")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImageError(f"{path}: not a readable .npy depth map ({exc})") from None
        while arr.ndim > 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ImageError(f"{path}: depth array of shape {arr.shape} and dtype {arr.dtype}; expected (H, W) metres")
        if np.issubdtype(arr.dtype, np.floating):
            return arr.astype(np.float64)
        raw, what = arr, f"a .npy of integers ({arr.dtype}; metres are floats)"  # units, as in a 16-bit PNG
    else:
        raw, what = decode_image(path, "unchanged"), "a 16-bit depth image"
    if what == "a 16-bit depth image" and (raw.ndim != 2 or raw.dtype != np.uint16):
        raise ImageError(f"{path}: depth image of shape {raw.shape} and dtype {raw.dtype}; expected a single-channel "
                         "16-bit PNG (millimetres for NYU, 1/256 m for KITTI) or .npy metres")
    if scale is None:
        raise ImageError(f"{path}: {what}, but its scale was not given (units per metre, e.g. 1000 "
                         "for millimetres: depth_scale in data sets and configs, --gt-scale / --pred-scale for "
                         "eval-depth)")
    if not scale > 0:
        raise ImageError(f"{path}: depth scale {scale}: expected a positive number of units per metre")
    return raw.astype(np.float64) / float(scale)
