"""Video in and out with OpenCV: frames as RGB uint8 arrays, and an atomic video writer.

Codecs by suffix: ``.mp4`` -> ``mp4v`` (MPEG-4 Part 2, which OpenCV's FFmpeg backend writes
without extra libraries), ``.avi`` -> ``MJPG``; tests/test_pca.py writes both and reads them back.
Both store frames of even sides only (4:2:0 chroma): OpenCV drops an odd side's last row or
column without a word, so the writer repeats that edge once instead and every pixel is kept.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ..fileio import atomic_path
from ..images import opencv_path
from .figures import to_uint8

CODECS = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as the container reports it (may be approximate; reading counts exactly)
    fps: float
    size: tuple[int, int] = (0, 0)  # (H, W) of a frame as the container reports it; (0, 0) unknown


def _open(path: str | os.PathLike):
    import cv2

    path = str(path)
    if Path(path).is_dir():
        raise IsADirectoryError(f"{path}: a folder, not a video file (for the images in a folder, give them as "
                                "images: pca FOLDER/*.png)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    cap = cv2.VideoCapture(opencv_path(path, "video"))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"{path}: not a readable video (corrupt, empty or an unknown format)")
    return cap


def video_info(path: str | os.PathLike) -> VideoInfo:
    import cv2

    cap = _open(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS)
        info = VideoInfo(
            frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            fps=float(fps) if fps and fps > 0 else 25.0,
            size=(max(0, int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))), max(0, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))),
        )
    finally:
        cap.release()
    return info


def read_frames(path: str | os.PathLike, step: int = 1, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield every ``step``-th frame as RGB uint8 (H, W, 3), at most ``max_frames`` of them.

    A file that opens but yields no frame raises ValueError naming it.
    """
    if step < 1:
        raise ValueError(f"frame step {step}: must be at least 1")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames={max_frames}: must be at least 1")
    cap = _open(path)
    try:
        index = kept = 0
        while max_frames is None or kept < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            if index % step == 0:
                kept += 1
                yield np.ascontiguousarray(frame[..., ::-1])  # BGR -> RGB
            index += 1
    finally:
        cap.release()
    if kept == 0:
        raise ValueError(f"{path}: no frame could be decoded (empty or unsupported video)")


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """The (H, W) a frame of ``size`` is stored at: each odd side one larger (its edge repeated)."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


class VideoWriter:
    """Write RGB frames of ``size`` (H, W) to ``path``; the file appears only when the writer
    closes cleanly. An odd side is stored one larger, its last row or column repeated (the codecs
    keep even sides only), so no pixel is lost.

    >>> with VideoWriter("out.mp4", fps=25, size=(H, W)) as w:
    ...     w.write(frame)
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        if self.path.suffix.lower() not in CODECS:
            raise ValueError(f"{self.path}: unknown video suffix; use one of {', '.join(CODECS)}")
        self.fps, self.size, self.frames = float(fps), (int(size[0]), int(size[1])), 0
        self._ctx = None
        self._writer = None

    def __enter__(self) -> "VideoWriter":
        import cv2

        opencv_path(self.path, "video")  # (the temporary file beside it differs in its own name alone)
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        fourcc = cv2.VideoWriter_fourcc(*CODECS[self.path.suffix.lower()])
        h, w = even_size(self.size)
        self._writer = cv2.VideoWriter(str(tmp), fourcc, self.fps, (w, h))
        if not self._writer.isOpened():
            self._ctx.__exit__(ValueError, None, None)
            raise ValueError(
                f"{self.path}: this OpenCV build cannot write {CODECS[self.path.suffix.lower()]} video; "
                "try a .avi name (MJPG)"
            )
        return self

    def write(self, frame: np.ndarray) -> None:
        frame = to_uint8(frame)
        if frame.shape[:2] != self.size:
            raise ValueError(f"{self.path}: frame of size {frame.shape[:2]}, the video is {self.size}")
        h, w = self.size
        if (h, w) != even_size(self.size):
            frame = np.pad(frame, ((0, h % 2), (0, w % 2)) + ((0, 0),) * (frame.ndim - 2), mode="edge")
        self._writer.write(np.ascontiguousarray(frame[..., ::-1]))
        self.frames += 1

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._writer.release()
        if exc_type is None and self.frames == 0:
            exc_type, exc = ValueError, ValueError(f"{self.path}: no frame was written")
            self._ctx.__exit__(exc_type, exc, None)
            raise exc
        return bool(self._ctx.__exit__(exc_type, exc, tb))
