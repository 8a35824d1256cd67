"""Reading and writing the files of dense data sets, with errors that name the file.

* :func:`read_image`: any image OpenCV decodes -> uint8 RGB ``(H, W, 3)``.
* :func:`read_label`: a label PNG -> class ids ``(H, W)``. Palette PNGs (Pascal VOC) are read as
  their palette indices, not colours, which is why this goes through Pillow: OpenCV expands
  palettes to BGR.
* :func:`read_depth`: 16-bit PNG divided by a declared scale (NYU 1000, KITTI 256), or ``.npy``
  in metres -> float32 ``(H, W)``, 0 = invalid.
* :func:`write_image`, :func:`write_text`: atomic writes (temp file in the same folder, then
  rename), so an interrupted writer never leaves a half-written file under the final name.

Image files (images, label and depth maps alike) are read by :mod:`dinov2_dense.images`: upright,
with their EXIF orientation applied, and refused over its pixel limit before they are decoded.
A label or depth map saved with the same orientation tag as its image therefore stays on the
image's grid; one whose tag disagrees by a quarter turn gets a different size, which the data sets
report (a disagreement by a flip or half turn keeps the size and cannot be seen).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..fileio import files_below
from ..images import DECODER_ORIENTED, apply_orientation, decode_image, exif_orientation, open_image
from ..images import orientation_tag as image_orientation_tag

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class DataError(ValueError):
    """A data set file is missing, unreadable or inconsistent; the message names the file."""


def image_files_below(root: str | os.PathLike) -> list[Path]:
    """The image files below folder ``root`` (by extension, any case), sorted, relative to ``root``: as every
    command reads a folder of images (pretraining, ``curate``, ``knn``'s class folders), so that they all read
    the same ones (:func:`dinov2_dense.fileio.files_below`: hidden files and folders passed over, linked
    folders followed)."""
    return files_below(root, IMAGE_EXTENSIONS)


def list_file_entries(text: str) -> list[str]:
    """The entries of a text file of image paths, as every command reads one (pretraining's list files,
    ``curate``'s and the ``selected.txt`` it writes): one a line, lines split at "\n" only (a "\r\n" file's
    "\r" dropped), so that a name may hold the characters ``str.splitlines`` also breaks at (U+2028, U+0085,
    form feed ...); spaces and tabs around an entry dropped; empty lines and lines starting with # passed over."""
    entries = []
    for line in text.split("\n"):
        entry = line.removesuffix("\r").strip(" \t")
        if entry and not entry.startswith("#"):
            entries.append(entry)
    return entries


def check_list_encoding(list_file: str | os.PathLike, entries: list[str], paths: list[str]) -> None:
    """Refuse a list of image paths in another encoding than UTF-8 (Latin-1, say): its non-ASCII names come out
    with bytes that are not UTF-8, which name no file, and every such image would be skipped as missing.
    ``entries``: the list's lines; ``paths``: the files they name. A line of such bytes that names a file
    (``curate``'s list of a pool whose names are not UTF-8) is fine, and so is a UTF-8 line in a folder whose
    own name is not."""
    for entry, name in zip(entries, paths):
        try:
            entry.encode("utf-8")
        except UnicodeEncodeError:
            if not os.path.lexists(name):
                raise DataError(f"{list_file}: {entry!r} is not UTF-8 and names no file: save the list as UTF-8 "
                                "(e.g. iconv -f latin1 -t utf-8)") from None


def _decode(path: Path, mode: str) -> np.ndarray:
    try:
        return decode_image(path, mode)
    except (OSError, ValueError) as exc:  # missing, unreadable or over the pixel limit: the message names the file
        raise DataError(str(exc)) from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Image file -> uint8 RGB (H, W, 3); grey images are repeated to 3 channels, alpha dropped.

    Upright: the EXIF orientation is applied (as ``PIL.ImageOps.exif_transpose`` does), so a
    photo stored sideways with an orientation tag comes out the way it is viewed; its label and
    depth maps are read the same way.
    """
    return _decode(Path(path), "rgb")


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Label map (class ids) of shape (H, W): grey or palette PNG, 8 or 16 bit, upright (EXIF
    orientation applied, as for its image).

    RGB files are accepted only when their three channels are equal (a grey map saved as RGB);
    a colour-coded mask raises, since its colours are not class ids. An alpha channel (grey + alpha,
    RGBA) is not read.
    """
    path = Path(path)
    try:
        with open_image(path) as im:  # refused over the pixel limit before decoding
            mode = im.mode
            turned = im.format in DECODER_ORIENTED and image_orientation_tag(im) >= 5
            if turned and mode == "P":
                # Pillow's decoder scrambles some of these (uncompressed, not square) and OpenCV's gives the
                # palette's colours, upright: those, read back as the palette's indices
                array = _palette_ids(path, decode_image(path, "rgb"), im.getpalette() or [])
            elif turned and mode != "1":
                # the decoder turns a TIFF itself: Pillow's scrambles grey ones tagged 5-8 (transposed pixels in
                # the stored shape), OpenCV's through decode_image does not (but gives 1-bit maps as 0/255:
                # Pillow reads those, turned right, as 0/1)
                array = decode_image(path, "unchanged")
            else:
                im.load()
                array = np.ascontiguousarray(apply_orientation(np.asarray(im), exif_orientation(im)))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc) if str(exc).startswith(str(path)) else f"{path}: not a readable label image ({exc})"
        raise DataError(message) from None
    if array.ndim == 3:
        grey = array.shape[2] == 2 or (  # grey + alpha (as GIMP exports), or RGB(A) of three equal channels
            array.shape[2] in (3, 4) and (array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all())
        if grey:  # the alpha channel is not read, as for RGBA
            array = array[..., 0]
        else:
            raise DataError(
                f"{path}: label map in colour (mode {mode}); expected class ids in a grey or palette PNG "
                "(convert colour-coded masks to ids first)"
            )
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{path}: label map of dtype {array.dtype}; expected integer class ids")
    return np.ascontiguousarray(array)


def _palette_ids(path: Path, rgb: np.ndarray, palette: list[int]) -> np.ndarray:
    """The palette indices of a palette image decoded to its colours (uint8, (H, W)); refused where a colour
    used is not in the palette, or stands for two indices."""
    colours = np.asarray(palette, dtype=np.int64)[: len(palette) // 3 * 3].reshape(-1, 3)
    codes = (colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2]
    pixels = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    used, inverse = np.unique(pixels, return_inverse=True)
    ids = np.empty(len(used), np.int64)
    for k, code in enumerate(used):
        where = np.flatnonzero(codes == code)
        if len(where) != 1:
            what = "is not in its palette" if not len(where) else f"stands for ids {where.tolist()} of its palette"
            raise DataError(f"{path}: a palette label map turned by its TIFF orientation tag, read through its "
                            f"colours, whose colour {tuple(int(v) for v in colours[where[0]]) if len(where) else code} "
                            f"{what}: save it as a grey PNG of class ids")
        ids[k] = where[0]
    return ids[inverse].reshape(pixels.shape).astype(np.uint8 if ids.max(initial=0) < 256 else np.int64)


def orientation_tag(path: str | os.PathLike) -> int:
    """A file's orientation tag (1-8; 1 where it has none), whichever decoder applies it (ours for EXIF, the
    TIFF decoder for TIFF): how it is read turned."""
    with open_image(path) as im:
        return image_orientation_tag(im)


def read_depth(path: str | os.PathLike, scale: float | None) -> np.ndarray:
    """Ground-truth depth in metres, float32 (H, W), 0 = invalid.

    Read by :func:`dinov2_dense.images.read_depth` (16-bit PNG divided by ``scale``, or ``.npy``
    metres); NaN and infinite values become 0 (invalid); negative values are refused.
    """
    from ..images import ImageError
    from ..images import read_depth as read_stored_depth

    try:
        depth = read_stored_depth(path, scale)
    except (ImageError, FileNotFoundError) as exc:
        raise DataError(str(exc)) from None
    depth[~np.isfinite(depth)] = 0.0
    if (depth < 0).any():
        raise DataError(f"{path}: negative depth values (min {float(depth.min()):g}); expected metres >= 0, 0 invalid")
    return depth.astype(np.float32)


# -- atomic writes: one implementation for the toolkit (dinov2_dense.fileio) ---------------------
from ..fileio import write_bytes, write_image, write_npy, write_text  # noqa: E402,F401
