"""Atomic file writes shared by the whole toolkit: a temporary file beside the target, then a
rename, so a failed or interrupted write never leaves a half-written file and never corrupts one
that was there before. Temporary names are fresh (not ``mkstemp``, whose 0600 mode would survive
the rename), so written files get the mode the umask allows.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format);
    rename it onto ``path`` when the block succeeds, remove it when the block fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    try:
        yield tmp
        if not tmp.is_file():
            raise OSError(f"{path}: nothing was written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return write_bytes(path, buf.getvalue())


def write_image(path: str | os.PathLike, array: np.ndarray, jpeg_quality: int = 95) -> Path:
    """Encode by the file's suffix: RGB (H, W, 3) uint8, or (H, W) uint8 / uint16 (labels, depth)."""
    import cv2

    path = Path(path)
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(array), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV cannot encode a {array.dtype} array of shape {array.shape} "
                         f"as {path.suffix!r}; use .png or .jpg")
    return write_bytes(path, buf.tobytes())
