"""Safe output for the whole toolkit.

* Atomic file writes: a temporary file beside the target, then a rename, so a failed or
  interrupted write never leaves a half-written file and never corrupts one that was there
  before. Temporary names are fresh (not ``mkstemp``, whose 0600 mode would survive the rename),
  so written files get the mode the umask allows; errors name the target, never the temporary.
  :class:`AtomicFiles` writes several files beside each other that way and renames them together
  once all are written: a full disk while writing leaves the old files, never some of each set.
* Multi-file outputs (:func:`staged_dir`): written into a hidden folder beside the target and
  swapped in whole, so a failure (a full disk, Ctrl-C) leaves the old set or the new one, never
  part of each. A non-empty output folder is refused unless the caller says ``overwrite``, and even
  then it is replaced only when it holds nothing but what an earlier output wrote (its marker lists
  those entries): a file the user added beside them is named in the error, never deleted (inside the
  output's own subfolders, everything is the output's).
* Output checks before any computing (:func:`check_output_file`, :func:`check_output_dir`). An existing
  output file is replaced only with ``--overwrite`` and only when it is recognisably an earlier output of
  the same kind (:func:`check_replaceable_file`); a weight file, or any file in a weights folder, never.
* :class:`DirLock`: one run per work dir; a second refuses, naming the holder's pid.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager, suppress
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np


class OutputError(ValueError):
    """An output path that cannot be used: the message names the path the user gave."""


#: Errors of writing that name no file (a full disk found when a buffered file is flushed at its close).
_WRITE_ERRNOS = frozenset(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS")
                          if hasattr(errno, name))


#: What to do about a full disk, added to its error once.
_FULL_DISK_HINT = " (free some space or write elsewhere)"

#: A writer that is not Python's reports a failed write in its own exception, not an OSError: safetensors'
#: SafetensorError ("No space left on device (os error 28)"), torch.save's zip writer's RuntimeError ("[enforce fail
#: at inline_container.cc:672] . unexpected pos 1005888 vs 1005776": a short write with no errno, most likely a
#: full disk or a file size limit). Only these writers' exceptions are read so: the blocks that write may also
#: compute (a model), and a bug's message that happens to say "os error" stays a bug.
_TORCH_WRITER = re.compile(r"inline_container|PytorchStreamWriter|file write failed")
_SHORT_WRITE = re.compile(r"unexpected pos \d+ vs \d+|PytorchStreamWriter failed writing|file write failed")


def _foreign_write_error(exc: BaseException) -> OSError | None:
    """The OSError that a writer library's own exception for a failed write stands for (None: not such an
    error): safetensors' SafetensorError, or torch's zip writer's RuntimeError."""
    text = str(exc)
    if "DataLoader worker" in text or "</torch_" in text or "shared memory" in text.lower():
        return None  # a decoding worker's full /dev/shm, while the output was being written: not the output's
    safetensors = type(exc).__name__ == "SafetensorError"
    if not safetensors and not (isinstance(exc, RuntimeError) and _TORCH_WRITER.search(text)):
        return None
    if code := re.search(r"\(os error (\d+)\)", text):  # (Rust's io::Error, as safetensors gives it)
        return OSError(int(code.group(1)), os.strerror(int(code.group(1))))
    if "No space left on device" in text:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if "File too large" in text:
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    if _SHORT_WRITE.search(text):
        return OSError(errno.ENOSPC, "the write fell short (a full disk, or a file size limit?)")
    return None


def _renamed_error(exc: OSError, path: Path) -> OSError:
    """The same OSError, naming ``path`` instead of a temporary file. An error already renamed (by a
    write inside a staged folder) names ``path`` in place of the file it named, with its reason and
    hint once."""
    reason = exc.strerror or str(exc)
    named = getattr(exc, "named", None)
    if named is not None:
        reason = reason.removeprefix(f"cannot write {named}: ")
    if exc.errno == errno.ENOSPC and not reason.endswith(_FULL_DISK_HINT):
        reason += _FULL_DISK_HINT
    message = f"cannot write {path}: {reason}"
    new = type(exc)(exc.errno, message) if exc.errno else OSError(message)
    new.named = str(path)  # an enclosing write leaves it as it is
    return new


def _about(exc: OSError, tmp: Path) -> bool:
    """Whether ``exc`` names the temporary ``tmp`` (or a file inside it)."""
    return tmp.name in f"{exc.filename or ''} {exc.filename2 or ''} {exc}"


def _of_writing(exc: OSError, tmp: Path) -> bool:
    """Whether ``exc``, raised while ``tmp`` was written, is about writing it: it names ``tmp``, or it
    names no file and is an error of writing (ENOSPC at the close of a buffered file names none). An
    error about another file, or of a download (no file, no such errno), is left as it is."""
    if getattr(exc, "named", None) is not None:
        return False
    if _about(exc, tmp):
        return True
    return exc.filename is None and exc.filename2 is None and exc.errno in _WRITE_ERRNOS


#: The name :func:`atomic_path` gives a temporary file: ``.<stem>.<pid>-<8 hex>.tmp<suffix>``.
_TEMPORARY = re.compile(r"\.(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp(?P<suffix>.*)")


def _stale(tmp: Path, idle_s: float) -> bool:
    """Whether ``tmp`` (a name of :func:`atomic_path`) was left by a process that no longer runs on
    this host and nobody has written it for ``idle_s`` seconds."""
    m = _TEMPORARY.fullmatch(tmp.name)
    if m is None or _alive(int(m["pid"])):
        return False
    try:
        return time.time() - tmp.stat().st_mtime >= idle_s
    except OSError:
        return False


def discard_stale_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporary files of ``path`` (``.<stem>.<pid>-<random>.tmp<suffix>``, from
    :func:`atomic_path`) whose process no longer runs: a writer of a large file killed with
    ``kill -9`` (a .npy of features is allocated whole from its first batch). It lists the folder, so
    writers of large files call it, not every write. Only ``path``'s own temporaries are touched (the
    name is parsed whole: ``.a.2024.<pid>-...`` belongs to ``a.2024.pth``, not to ``a.pth``)."""
    path = Path(path)
    try:
        found = list(path.parent.glob(f".{glob_escape(path.stem)}.*-*.tmp{glob_escape(path.suffix)}"))
    except OSError:
        return
    for tmp in found:
        m = _TEMPORARY.fullmatch(tmp.name)
        if m and m["stem"] == path.stem and m["suffix"] == path.suffix and _stale(tmp, 0.0):
            with suppress(OSError):
                tmp.unlink()


def discard_stale_temporaries_in(folder: str | os.PathLike, idle_s: float = 600.0) -> list[Path]:
    """Remove every temporary file of :func:`atomic_path` in ``folder`` (whatever its target) whose
    process no longer runs and that nobody has written for ``idle_s`` seconds: for a shared folder
    such as the weights cache, where a download killed with ``kill -9`` leaves a hidden partial
    file that no later run of the same target may come to remove. The idle time spares a file that a
    process on another machine is writing into a folder shared over the network (its pid means
    nothing here). Returns the files removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for tmp in entries:
        if tmp.name.startswith(".") and ".tmp" in tmp.name and tmp.is_file() and _stale(tmp, idle_s):
            with suppress(OSError):
                tmp.unlink()
                removed.append(tmp)
    return removed


class AtomicFiles:
    """Files written each through a temporary beside it and renamed onto their targets together, in
    the order written, when the ``with`` block ends without an error; an error (a full disk) removes
    the temporaries and leaves every target as it was: the old set of files or the new one, never
    some of each (the renames need no space; only a kill between two renames could leave a mix, and
    temporaries behind). Errors of writing name the target, never the temporary.

    ``with AtomicFiles() as files: files.write_text(a, ...); with files.path(b) as tmp: np.save(tmp, x)``
    """

    def __init__(self) -> None:
        self.written: list[tuple[Path, Path]] = []  # (temporary, target), renamed at the end

    @contextmanager
    def path(self, path: str | os.PathLike) -> Iterator[Path]:
        """A temporary path beside ``path`` (same suffix, so writers pick the same format) to write
        in the block; it is renamed onto ``path`` with the others at the end."""
        path = Path(path)
        if path.is_dir():
            raise OutputError(f"{path} is a directory; give a file name")
        tmp = path.parent / f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not _of_writing(exc, tmp):
                raise
            raise _renamed_error(exc, path) from None
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if (failed := _foreign_write_error(exc)) is not None:
                raise _renamed_error(failed, path) from exc  # (--debug shows the writer's own error)
            raise
        if not tmp.is_file():
            raise OSError(f"{path}: nothing was written")
        self.written.append((tmp, path))

    def write_bytes(self, path: str | os.PathLike, data: bytes) -> Path:
        with self.path(path) as tmp:
            tmp.write_bytes(data)
        return Path(path)

    def write_text(self, path: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(path, _encoded(text))

    def write_json(self, path: str | os.PathLike, obj: Any) -> Path:
        return self.write_text(path, json.dumps(obj, indent=2) + "\n")

    def write_npy(self, path: str | os.PathLike, array: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.write_bytes(path, buf.getvalue())

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        try:
            if kind is None:
                for tmp, path in self.written:
                    try:
                        os.replace(tmp, path)
                    except OSError as error:
                        raise _renamed_error(error, path) from None
        finally:
            for tmp, _ in self.written:
                tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format);
    rename it onto ``path`` when the block succeeds, remove it when the block fails. An OSError of
    writing it, raised in the block (at a write or at the close of the file), names ``path``."""
    with AtomicFiles() as files, files.path(path) as tmp:
        yield tmp


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with AtomicFiles() as files:
        return files.write_bytes(path, data)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, _encoded(text))


def _encoded(text: str) -> bytes:
    # UTF-8; a file name that is not UTF-8 (os.fsdecode keeps its bytes as lone surrogates) is written as its
    # bytes, so a list of names written here names the same files when read_names_text reads it back
    return text.encode("utf-8", "surrogateescape")


def files_below(root: str | os.PathLike, extensions: Iterable[str]) -> list[Path]:
    """The files below folder ``root`` whose extension (any case) is one of ``extensions`` (".png", ...),
    sorted, relative to ``root``: as every command reads a folder. Hidden files and folders
    (``.ipynb_checkpoints/``, macOS ``._`` files, our writers' temporary files) are passed over; linked
    folders are followed, each real folder read once (a link back up the tree is not)."""
    root, extensions = Path(root), {e.lower() for e in extensions}
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder, f).relative_to(root) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in extensions]
    return sorted(found)


def read_names_text(path: str | os.PathLike) -> str:
    """A text file of file names, one a line, as written by :func:`write_text` or by hand: UTF-8 (a byte-order
    mark is no part of the first name), where names that are not UTF-8 are taken as ``os.fsdecode`` takes
    them, so they name the same files. Raises OSError, or UnicodeDecodeError for a file that is not text (a
    NUL byte)."""
    data = Path(path).read_bytes()
    if b"\0" in data:
        at = data.index(b"\0")
        raise UnicodeDecodeError("utf-8", data, at, at + 1, "a NUL byte: not a text file")
    return data.decode("utf-8-sig", "surrogateescape")


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    with AtomicFiles() as files:
        return files.write_npy(path, array)


def file_stamp(path: str | os.PathLike) -> tuple[int, int] | None:
    """(size, modification time in ns) of a file, what caches and stores compare to see that it has not
    changed; None when it cannot be looked at (missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _fallocate(fd: int, size: int) -> bool:
    """Linux ``fallocate(2)`` of bytes [0, size): True when done, False where the file system or
    platform cannot (never glibc's ``posix_fallocate`` fallback, which writes every block: on NFSv3 a
    long stall for a large file); raises OSError otherwise (ENOSPC: the disk is full)."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    call.restype = ctypes.c_int
    if call(fd, 0, 0, size) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


def reserve_space(fd: int, size: int, path: str | os.PathLike) -> None:
    """Allocate ``size`` bytes of the open file ``fd`` on disk now, so that a full disk is an
    OSError naming ``path`` here rather than later: writing into a hole of a sparse file through a
    memory map on a full disk kills the process (SIGBUS). Where the file system cannot allocate
    ahead (or only by writing every block), the file is only extended."""
    try:
        done = _fallocate(fd, size)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not done and os.fstat(fd).st_size < size:
        os.ftruncate(fd, size)


def new_memmap(path: str | os.PathLike, shape: tuple[int, ...], dtype) -> np.memmap:
    """A new ``.npy`` file of ``shape`` and ``dtype``, memory-mapped for writing, with its space
    allocated on disk first (:func:`reserve_space`): a full disk is an OSError naming the file
    here, not a crash (SIGBUS) when a row is later written through the map."""
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as exc:  # (numpy's header write or size: a full disk named no file)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    with open(path, "r+b") as file:
        reserve_space(file.fileno(), os.fstat(file.fileno()).st_size, path)
    return array


class NpyRows:
    """A new ``.npy`` file of ``shape`` and ``dtype`` whose rows (along the first axis) are written
    in any order as they are computed, by positioned writes, with the whole file allocated first
    (:func:`reserve_space`): a full disk is an OSError naming the file, never a crash, and memory
    holds only what is being written. Use inside :func:`atomic_path` (rows never written stay zero)."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32):
        self.path, self.shape, self.dtype = Path(path), tuple(int(n) for n in shape), np.dtype(dtype)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                     "fortran_order": False, "shape": self.shape})
        self.offset = header.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            reserve_space(self.fd, self.offset + self.shape[0] * self.row_bytes, self.path)
            self._write(header.getvalue(), 0)
        except BaseException:
            self.close()
            raise

    def _write(self, data, at: int) -> None:
        view = memoryview(data).cast("B")
        try:
            while len(view):
                done = os.pwrite(self.fd, view, at)
                view, at = view[done:], at + done
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from None

    def write(self, rows, values: np.ndarray) -> None:
        """``values[k]`` into row ``rows[k]`` (runs of consecutive rows in one write each)."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape != (len(rows), *self.shape[1:]):
            raise ValueError(f"{self.path}: rows of shape {values.shape[1:]} for a file of {self.shape}")
        start = 0
        for k in range(1, len(rows) + 1):
            if k == len(rows) or rows[k] != rows[k - 1] + 1:
                self._write(values[start:k], self.offset + int(rows[start]) * self.row_bytes)
                start = k

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "NpyRows":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


# -- checks before computing --------------------------------------------------------------------
def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_creatable(path: Path, what: str) -> None:
    """``path`` can be created: its nearest existing ancestor is a writable directory, in which a folder
    can be made. The permission bits do not tell it all (root may write anywhere they say, yet not in
    /sys or /proc): a folder is made there and removed."""
    base = _existing_ancestor(path if path.is_dir() else path.parent)
    if not base.is_dir():
        raise OutputError(f"{what} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        with suppress(OSError, AttributeError):
            if os.statvfs(base).f_flag & os.ST_RDONLY:
                raise OutputError(f"{what} {path}: {base} is on a read-only file system")
        raise OutputError(f"{what} {path}: no permission to write in {base}")
    if base != path.absolute():  # something is made in base (an existing folder given is not probed)
        probe = base / f".dinov2-dense-probe.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError as exc:
            raise OutputError(f"{what} {path} cannot be written: making a folder in {base} failed "
                              f"({exc.strerror or exc})") from None
        with suppress(OSError):
            probe.rmdir()


def check_writable_dir(path: str | os.PathLike, what: str = "folder") -> Path:
    """Fail early, naming ``path`` (``what`` names the option), if files cannot be written into the
    folder ``path`` (made when needed): a file in the way, a parent that is a file, no permission, a
    read-only file system. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a folder")
    _check_creatable(path, what)
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Free space on the file system that ``path`` (or its nearest existing parent) is on."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def _amount(n: int, up: bool) -> str:
    """A number of bytes in words, in bytes, KB or MB: rounded up (``up``, what is needed) or down
    (what is free), so that a shortfall never reads as "needs 0 MB, only 0 MB free"."""
    for unit, size in (("MB", 2**20), ("KB", 2**10)):
        if n >= size:
            return f"{(-(-n // size) if up else n // size):,} {unit}"
    return f"{n:,} byte{'s' * (n != 1)}"


def _check_space(path: Path, expected_bytes: int | None, what: str) -> None:
    if expected_bytes:
        free = free_bytes(path)
        if free < expected_bytes:
            raise OutputError(f"{what} {path}: needs about {_amount(expected_bytes, up=True)}, "
                              f"but only {_amount(free, up=False)} {'are' if free != 1 else 'is'} free there")


def check_output_file(path: str | os.PathLike, expected_bytes: int | None = None, what: str = "output") -> Path:
    """Fail early, naming ``path``, if a file cannot be written there: a directory in the way, a
    parent that is a file or not writable, or less free space than ``expected_bytes``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{what} {path}: the file exists and is not writable")
    _check_creatable(path, what)
    _check_space(path, expected_bytes, what)
    return path


#: The suffixes of weight files (torch, Hugging Face, safetensors): named as such when one is in the way.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def _what_it_is(path: Path) -> str:
    """A few words on an existing file that is not ours, for a refusal: a weight file is called one."""
    if path.suffix.lower() in WEIGHT_SUFFIXES:
        from .checkpoints import weight_file_problem

        with suppress(OSError):
            if weight_file_problem(path) is None:
                return "it is a weight file"
    try:
        return _amount(path.stat().st_size, up=False)
    except OSError:
        return "it cannot be read"


def check_replaceable_file(path: str | os.PathLike, kind: str, is_ours, overwrite: bool = False,
                           option: str = "--out", flag: str = "--overwrite",
                           never_in: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
    """Refuse, naming ``path``, an output file that exists and may not be replaced; call it before any
    computing. Nothing is changed when refusing. An existing file is replaced only when all hold:

    * ``is_ours(path)`` tells it for an earlier output of ``kind`` (e.g. "a features file written by
      dinov2-dense features"): another file (a weight file, a user's data) is never replaced, even with ``flag``,
      and is named as lying in one of the ``never_in`` folders ((how to name it, folder): the weights folders)
      when it does;
    * ``overwrite``: the same rule as for folders of outputs (:func:`check_output_dir`).

    A path that does not exist, or is a directory (which :func:`check_output_file` refuses), passes."""
    path = Path(path)
    if not os.path.lexists(path) or path.is_dir():
        return path
    try:
        ours = path.is_file() and bool(is_ours(path))
    except (OSError, ValueError, RecursionError):  # unreadable, or not of that format
        ours = False
    if not ours:
        for what, folder in never_in:
            if folder is not None and is_inside(path, folder):
                raise OutputError(f"{option} {path} exists in {what} ({folder}) and is not {kind}: it is never "
                                  f"replaced, even with {flag}; give another {option}")
        raise OutputError(f"{option} {path} exists and is not {kind} ({_what_it_is(path)}): it is never "
                          f"replaced, even with {flag}; give another {option}, or move that file away yourself")
    if not overwrite:
        raise OutputError(f"{option} {path} exists: {kind}, by an earlier run; pass {flag} to replace it, "
                          f"or give another {option}")
    return path


def json_object_with(path: str | os.PathLike, keys: Iterable[str], max_bytes: int = 64 * 2**20) -> bool:
    """Whether ``path`` is a JSON file (of at most ``max_bytes``) holding an object with all of ``keys``."""
    path = Path(path)
    if path.stat().st_size > max_bytes:
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and set(keys) <= set(data)


#: Written into every folder of outputs: ``--overwrite`` replaces only folders that carry it. It holds
#: JSON with ``entries``, the top-level names that the output wrote (:func:`commit_dir`); anything else
#: in the folder was put there later and is never deleted (:func:`foreign_entries`).
MARKER = ".dinov2-dense-output"

#: Files an operating system's file browser drops into any folder it shows: replaced with the output.
_OS_CLUTTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def _manifest(folder: Path) -> list[str] | None:
    """The entries the marker of ``folder`` lists; None for a marker without a list (written by an
    older version, by ``touch``, or unreadable)."""
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entries = data.get("entries") if isinstance(data, dict) else None
    if isinstance(entries, list) and all(isinstance(e, str) for e in entries):
        return entries
    return None


def foreign_entries(folder: str | os.PathLike) -> tuple[list[str], bool]:
    """The top-level entries of ``folder`` that dinov2-dense did not write there (sorted), and whether
    they were told by the marker's list (False: by modification times, for an older marker).

    * No :data:`MARKER`: every entry.
    * A marker with its list of entries: those not in the list.
    * A marker without one (older versions wrote only a pid and a time, after all the output's
      files): the entries modified after the marker, i.e. added or changed since (a file added with
      its old time kept, ``mv`` or ``cp -p``, cannot be told apart and counts as the output's).
    """
    folder = Path(folder)
    names = sorted(p.name for p in folder.iterdir())
    names = [n for n in names if n != MARKER and n not in _OS_CLUTTER]
    if not (folder / MARKER).is_file():
        return names, True
    listed = _manifest(folder)
    if listed is not None:
        listed_set = set(listed)
        return [n for n in names if n not in listed_set], True
    marked = (folder / MARKER).stat().st_mtime_ns
    newer = []
    for name in names:
        try:
            if os.lstat(folder / name).st_mtime_ns > marked:
                newer.append(name)
        except OSError:
            continue  # removed meanwhile
    return newer, False


def some_names(names: list[str], shown: int = 3) -> str:
    """The first ``shown`` of ``names`` for a message, and how many there are when more: "a, b, c, ... (7 in all)"."""
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


def _foreign_message(what: str, path: Path, foreign: list[str], listed: bool, option: str) -> str:
    shown = some_names(foreign)
    if not (path / MARKER).is_file():
        return (f"{what} {path} holds files that dinov2-dense did not write ({shown}); {option} replaces only "
                "earlier outputs: choose another folder, or empty this one yourself")
    if not listed:
        return (f"{what} {path} holds entries added or changed after the earlier output was written (by an older "
                f"dinov2-dense, which did not record its files): {shown}; {option} never deletes what may be yours: "
                "move these out of the folder and run again, or choose another folder (if they are that output's "
                "own, in a copy that did not keep modification times, delete the folder yourself)")
    return (f"{what} {path} holds entries that the earlier output did not write: {shown}; {option} replaces only "
            "the earlier output's own files and never deletes others: move these out of the folder and run "
            "again, or choose another folder")


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (links resolved)."""
    try:
        path, folder = Path(path), Path(folder)
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(path: str | os.PathLike, overwrite: bool = False, expected_bytes: int | None = None,
                     what: str = "output folder", option: str = "--overwrite",
                     protect: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail early, naming ``path``, if a folder of outputs cannot be written there: a file in the
    way, no permission, too little space, or a folder that already holds files (another run's
    outputs would mix with ours) unless ``overwrite``. Even with ``overwrite``, a folder is replaced
    only if dinov2-dense wrote it (it holds :data:`MARKER`), holds nothing that the earlier output did
    not write at its top level (:func:`foreign_entries`: a file the user added, such as metrics computed from the old
    output, is named in the error, never deleted nor carried into the new output, where it would
    describe results that are gone) and holds none of the ``protect`` paths (the command's inputs)
    nor the current directory: ``--overwrite`` never deletes a user's data."""
    path = Path(path)
    if not str(path) or str(path) == ".":
        raise OutputError(f"{what} {str(path)!r}: give a folder of its own, not the current directory")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; give a folder")
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        foreign, listed = foreign_entries(path) if entries else ([], True)
        if entries and not overwrite:
            if foreign:
                raise OutputError(_foreign_message(what, path, foreign, listed, option))
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(f"{what} {path} is not empty ({len(entries)} entries: {shown}); "
                              f"pass {option} to replace its contents, or choose another folder")
        inside = list(dict.fromkeys(str(p) for p in protect if is_inside(p, path)))  # (one root of three splits)
        if Path.cwd().resolve() == path.resolve() or is_inside(Path.cwd(), path):
            inside.append("the current directory")
        if inside:
            raise OutputError(f"{what} {path} holds this command's own inputs ({', '.join(inside[:3])}); "
                              "choose another folder")
        if foreign:
            raise OutputError(_foreign_message(what, path, foreign, listed, option))
    _check_creatable(path, what)
    _check_space(path, expected_bytes, what)
    return path


# -- multi-file outputs -------------------------------------------------------------------------
def stage_path(path: str | os.PathLike, tag: str | None = None) -> Path:
    """Where the new contents of ``path`` are staged: ``.<name>.<tag>.partial/<name>`` beside it
    (the inner folder keeps the target's name, which writers may show). ``tag`` fixes the name,
    e.g. for several processes writing one set; by default it is this process's id and a random part."""
    path = Path(path)
    return path.parent / f".{path.name}.{tag or f'{os.getpid()}-{uuid.uuid4().hex[:8]}'}.partial" / path.name


def discard_stage(stage: Path) -> None:
    """Remove a staging folder (and its hidden wrapper)."""
    shutil.rmtree(stage.parent if stage.parent.name.endswith(".partial") else stage, ignore_errors=True)


def discard_stale_stages(path: str | os.PathLike) -> None:
    """Remove the staging folders of ``path`` left by processes that no longer run (``kill -9``)."""
    path = Path(path)
    for wrapper in path.parent.glob(f".{path.name}.*.partial"):
        if _left_by_a_dead_process(wrapper.name[len(path.name) + 2 :]):
            shutil.rmtree(wrapper, ignore_errors=True)


def _left_by_a_dead_process(tag: str) -> bool:
    """Whether a staging or temporary name's tag (``<pid>-<random>...``, after the target's name)
    names a process that no longer runs."""
    pid = tag.split("-", 1)[0].split(".", 1)[0]
    return pid.isdigit() and not _alive(int(pid))


def commit_dir(stage: Path, path: str | os.PathLike, replace: bool = True, what: str = "output folder",
               option: str = "--overwrite") -> Path:
    """Put the finished ``stage`` folder in place of ``path``, with a :data:`MARKER` listing the
    entries it holds. With ``replace`` an existing ``path`` (checked to be ours) is moved aside and
    removed, after a last look that it still holds only what the earlier output wrote (a file added
    while this run computed stops the swap, naming it); without, ``path`` must still be absent or
    empty: a folder that another process filled meanwhile is never replaced."""
    path = Path(path)
    entries = sorted(p.name for p in stage.iterdir() if p.name != MARKER)
    (stage / MARKER).write_text(json.dumps({"pid": os.getpid(), "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                                            "entries": entries}))
    old = None
    if replace and path.exists():
        old = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.old"
        os.replace(path, old)  # aside first: nothing more lands in it by its name while we look
        foreign, listed = foreign_entries(old)
        if foreign:
            os.replace(old, path)
            raise OutputError(_foreign_message(what, path, foreign, listed, option)
                              + " (they appeared while this run computed; nothing was replaced)")
    try:
        os.rename(stage, path)  # refuses a non-empty directory in the way
    except OSError as exc:
        if old is not None:
            os.replace(old, path)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputError(f"{what} {path} was filled by another process while this one ran; nothing was "
                              "replaced: run again with another folder") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    discard_stage(stage)
    return path


@contextmanager
def staged_dir(path: str | os.PathLike, overwrite: bool = False, option: str = "--overwrite",
               protect: Iterable[str | os.PathLike] = (), expected_bytes: int | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; when the block succeeds it replaces
    ``path`` whole, when it fails (or is interrupted) it is removed and ``path`` is untouched.

    ``path`` must be empty or absent unless ``overwrite`` (see :func:`check_output_dir`).
    """
    path = Path(path)
    check_output_dir(path, overwrite=overwrite, option=option, protect=protect, expected_bytes=expected_bytes)
    replace = path.is_dir() and any(path.iterdir())
    discard_stale_stages(path)
    stage = stage_path(path)
    try:
        stage.mkdir(parents=True)
        yield stage
        commit_dir(stage, path, replace=replace, option=option)
    except Exception as exc:
        if (failed := _foreign_write_error(exc)) is not None:  # (torch.save into the stage: "unexpected pos")
            raise _renamed_error(failed, path) from exc
        if not isinstance(exc, OSError) or not _about(exc, stage.parent):
            raise
        named = getattr(exc, "named", None)  # a file of the stage, already named: its place in ``path``
        inner = named is not None and is_inside(named, stage) and Path(named).resolve() != stage.resolve()
        raise _renamed_error(exc, path / Path(named).resolve().relative_to(stage.resolve()) if inner else path) \
            from None
    finally:
        discard_stage(stage)


# -- one run per folder -------------------------------------------------------------------------
class DirBusyError(OSError):
    """Another live process holds the folder's lock."""

    def __str__(self) -> str:  # the message alone, without "[Errno 16]"
        return self.strerror or super().__str__()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DirLock:
    """A lock file in ``directory`` that one process holds for the length of a run.

    A second run (another process) refuses with :class:`DirBusyError` naming the holder's pid and
    host. A lock left by a process that died (``kill -9``) on this host is taken over. Use as a
    context manager; the lock is removed on exit.
    """

    NAME = ".dinov2_dense.lock"

    def __init__(self, directory: str | os.PathLike, option: str = "--work-dir"):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self.option = option
        self.note: str | None = None  # set when a stale lock was taken over
        self.made: list[Path] = []  # the folders made to hold the lock (deepest first): removed on release if empty

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def acquire(self) -> "DirLock":
        folder = self.directory.absolute()
        while not folder.exists() and folder != folder.parent:  # with the parents that mkdir will make
            self.made.append(folder)
            folder = folder.parent
        self.directory.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                other = self.holder()
                if other is None:
                    time.sleep(0.2)  # being written right now
                    other = self.holder() or {}
                same_host = other.get("host") == me["host"]
                pid = int(other.get("pid", -1))
                if other and (not same_host or _alive(pid)) and pid != me["pid"]:
                    raise DirBusyError(
                        errno.EBUSY,
                        f"{self.directory} is in use by another run (pid {pid} on {other.get('host')}, since "
                        f"{other.get('started')}); wait for it to finish, or choose another {self.option}")
                self.note = f"took over the lock of a run that is gone (pid {pid}, since {other.get('started')})"
                self.path.unlink(missing_ok=True)
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            except OSError as exc:  # a full disk: no empty lock is left, which a later run took for a gone one
                self.path.unlink(missing_ok=True)
                raise OSError(exc.errno, f"cannot take the lock {self.path}: {exc.strerror or exc}") from None
            return self
        raise DirBusyError(errno.EBUSY, f"{self.directory}: could not take the lock {self.path}")

    def release(self) -> None:
        holder = self.holder()
        if holder is not None and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            # a start refused after the lock (a head that does not fit) leaves no folder of the lock's making
            for folder in self.made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: the run's (and so are the folders above it)
                    break
        self.made = []

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
