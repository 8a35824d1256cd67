"""Fetching weights: ``hub.download`` against a local HTTP server (good, truncated and corrupt
files, a captive portal's HTML page, a reply cut short without a length, a download killed with
kill -9) and the order in which ``load_backbone(name, weights="official")`` looks for weights.
Only 127.0.0.1 is contacted; the zoo entry is swapped for a tiny architecture."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch

from dinov2_dense import hub
from dinov2_dense.checkpoints import save_safetensors
from dinov2_dense.hub import WeightsNotFoundError, download, load_backbone

from .conftest import randomize_, tiny_vit

NAME = "dinov2_vits14"
FILENAME = "dinov2_vits14_pretrain.pth"
ZOO_PATH = f"/dl/{NAME}/{FILENAME}"  # where $DINOV2_DENSE_BASE_URL=<server>/dl puts the file


class FileServer:
    """Serves ``files`` by URL path (query ignored); paths in ``truncated`` announce the full
    length but send half the body and close; paths in ``no_length`` send half the body with no
    Content-Length and close (the client cannot tell it is short); paths in ``stalled`` send the
    first ``STALL_AFTER`` bytes and then wait (until ``release`` is set). ``hits`` counts requests per path."""

    STALL_AFTER = 1 << 20

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.no_length: set[str] = set()
        self.stalled: set[str] = set()
        self.release = threading.Event()
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = urlsplit(self.path).path
                server.hits[path] += 1
                body = server.files.get(path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if path not in server.no_length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if path in server.stalled:
                    self.wfile.write(body[: server.STALL_AFTER])
                    self.wfile.flush()
                    server.release.wait(30)
                else:
                    self.wfile.write(body[: len(body) // 2] if path in server.truncated | server.no_length else body)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    srv = FileServer()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.httpd.shutdown()
    srv.httpd.server_close()
    thread.join(timeout=5)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _pth_bytes(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".part" in p.name)]


# -- hub.download ------------------------------------------------------------------------------
def test_download_good_file(server: FileServer, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # > 1 MiB: several reads
    server.files["/good.bin"] = data
    target = tmp_path / "out" / "good.bin"  # the directory is created
    dest = download(server.url("/good.bin"), target, sha256=_sha256(data).upper(), progress=False)
    assert dest == target
    assert dest.read_bytes() == data
    assert _leftovers(dest.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask, "mode as umask allows, not mkstemp's 0600"


def test_download_truncated(server: FileServer, tmp_path: Path) -> None:
    server.files["/short.bin"] = b"x" * 10_000
    server.truncated.add("/short.bin")
    dest = tmp_path / "short.bin"
    with pytest.raises(OSError, match=r"stopped after 5000 of 10000 bytes \(truncated\)"):
        download(server.url("/short.bin"), dest, progress=False)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_download_bad_checksum(server: FileServer, tmp_path: Path) -> None:
    server.files["/corrupt.bin"] = b"corrupt bytes"
    dest = tmp_path / "corrupt.bin"
    with pytest.raises(OSError, match="SHA-256") as info:
        download(server.url("/corrupt.bin"), dest, sha256=_sha256(b"the real file"), progress=False)
    assert _sha256(b"corrupt bytes") in str(info.value)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_download_keeps_existing_file(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "weights.pth"
    dest.write_bytes(b"good old file")
    server.files["/short.bin"] = b"y" * 1000
    server.truncated.add("/short.bin")
    server.files["/corrupt.bin"] = b"corrupt"
    with pytest.raises(OSError, match="truncated"):
        download(server.url("/short.bin"), dest, progress=False)
    with pytest.raises(OSError, match="SHA-256"):
        download(server.url("/corrupt.bin"), dest, sha256=_sha256(b"other"), progress=False)
    with pytest.raises(OSError, match="404"):
        download(server.url("/absent.bin"), dest, progress=False)
    assert dest.read_bytes() == b"good old file"
    assert _leftovers(tmp_path) == []


# -- load_backbone(name, weights="official") ----------------------------------------------------
@pytest.fixture
def tiny_zoo(monkeypatch: pytest.MonkeyPatch, torch_home: Path) -> torch.nn.Module:
    """Make the zoo entry NAME the architecture of ``tiny_vit()``; returns a model with its weights."""
    tiny = dict(img_size=98, patch_size=14, embed_dim=48, depth=3, num_heads=2, ffn_layer="mlp")
    spec = replace(hub.BACKBONES[NAME], arch="DinoVisionTransformer", kwargs=tiny)
    monkeypatch.setitem(hub.BACKBONES, NAME, spec)
    return tiny_vit()


def _looked_in(msg: str, *places: Path) -> None:
    assert FILENAME in msg
    for place in places:
        assert str(place / FILENAME) in msg


def test_official_downloads_into_hub_cache_then_uses_it(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[ZOO_PATH] = _pth_bytes(tiny_zoo)
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl/"))
    cached = torch_home / "hub" / "checkpoints" / FILENAME

    model = load_backbone(NAME)
    assert _same_weights(model, tiny_zoo)
    assert not model.training
    assert cached.read_bytes() == server.files[ZOO_PATH]
    assert _leftovers(cached.parent) == []
    assert server.hits[ZOO_PATH] == 1

    assert _same_weights(load_backbone(NAME), tiny_zoo)
    assert server.hits[ZOO_PATH] == 1, "the second call must use the cache"


def test_weights_dir_wins_over_hub_cache(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[ZOO_PATH] = _pth_bytes(randomize_(tiny_vit(), seed=7))
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / FILENAME).write_bytes(_pth_bytes(randomize_(tiny_vit(), seed=8)))
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / FILENAME).write_bytes(_pth_bytes(tiny_zoo))

    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(weights_dir))
    assert _same_weights(load_backbone(NAME), tiny_zoo)
    monkeypatch.delenv("DINOV2_DENSE_WEIGHTS")
    assert _same_weights(load_backbone(NAME), randomize_(tiny_vit(), seed=8))  # then the hub cache
    assert server.hits[ZOO_PATH] == 0


def test_offline_without_file_names_file_places_and_url(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[ZOO_PATH] = _pth_bytes(tiny_zoo)
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    monkeypatch.setenv("DINOV2_DENSE_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="DINOV2_DENSE_OFFLINE is set") as info:
        load_backbone(NAME)
    _looked_in(str(info.value), tmp_path / "weights", torch_home / "hub" / "checkpoints")
    assert server.url(ZOO_PATH) in str(info.value)
    assert server.hits[ZOO_PATH] == 0


def test_unreachable_server_names_file_places_and_url(
    tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _closed_port_url()
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", base)
    with pytest.raises(WeightsNotFoundError, match="download failed") as info:
        load_backbone(NAME)
    _looked_in(str(info.value), torch_home / "hub" / "checkpoints")
    assert f"{base}/{NAME}/{FILENAME}" in str(info.value)
    assert not (torch_home / "hub" / "checkpoints" / FILENAME).exists()
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", "mirror.local/dinov2")  # no scheme: urllib's ValueError
    with pytest.raises(WeightsNotFoundError, match="mirror.local/dinov2"):
        load_backbone(NAME)


@pytest.mark.parametrize("problem", ["checksum", "truncated"])
def test_bad_download_through_load_backbone(
    problem: str, server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pth_bytes(tiny_zoo)
    server.files[ZOO_PATH] = data
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    if problem == "truncated":
        server.truncated.add(ZOO_PATH)
    else:
        monkeypatch.setitem(hub.BACKBONES, NAME, replace(hub.BACKBONES[NAME], sha256=_sha256(b"the official file")))
    with pytest.raises(WeightsNotFoundError, match="SHA-256" if problem == "checksum" else "truncated") as info:
        load_backbone(NAME)
    assert server.url(ZOO_PATH) in str(info.value)
    cache = torch_home / "hub" / "checkpoints"
    assert not (cache / FILENAME).exists()
    assert _leftovers(cache) == []


def test_matching_checksum_loads(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pth_bytes(tiny_zoo)
    server.files[ZOO_PATH] = data
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    monkeypatch.setitem(hub.BACKBONES, NAME, replace(hub.BACKBONES[NAME], sha256=_sha256(data)))
    assert _same_weights(load_backbone(NAME), tiny_zoo)


# -- weights given as a URL -------------------------------------------------------------------
def test_weights_url_loads_and_is_cached(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_safetensors(tiny_zoo, tmp_path / "tiny.safetensors")
    server.files["/files/tiny.safetensors"] = (tmp_path / "tiny.safetensors").read_bytes()
    url = server.url("/files/tiny.safetensors?download=true")  # the query is not part of the file name

    assert _same_weights(load_backbone(NAME, weights=url), tiny_zoo)
    cached = list((torch_home / "hub" / "checkpoints").glob("url-*-tiny.safetensors"))
    assert len(cached) == 1
    # another URL with the same file name gets its own cache entry, not the first file
    other = randomize_(tiny_vit(), seed=11)
    save_safetensors(other, tmp_path / "other.safetensors")
    server.files["/mirror/tiny.safetensors"] = (tmp_path / "other.safetensors").read_bytes()
    assert _same_weights(load_backbone(NAME, weights=server.url("/mirror/tiny.safetensors")), other)
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")  # the cached copy needs no network
    assert _same_weights(load_backbone(NAME, weights=url), tiny_zoo)
    assert server.hits["/files/tiny.safetensors"] == 1


def test_weights_url_offline_or_missing(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(WeightsNotFoundError, match=r"cannot fetch weights from .*/files/absent\.pth.*404"):
        load_backbone(NAME, weights=server.url("/files/absent.pth"))
    server.files["/files/w.pth"] = _pth_bytes(tiny_zoo)
    monkeypatch.setenv("DINOV2_DENSE_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="DINOV2_DENSE_OFFLINE is set"):
        load_backbone(NAME, weights=server.url("/files/w.pth"))
    assert server.hits["/files/w.pth"] == 0


# -- what arrives must be a whole weight file before it enters the cache ------------------------
PORTAL = b"<html>captive portal</html>"  # what a proxy or hotel network answers in place of the file


@pytest.mark.parametrize("answer", ["html", "no_length"])
def test_bad_answer_is_not_cached(
    answer: str, server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A captive portal's page (with a correct Content-Length) or half the file sent without a
    length passes the length check; the zoo has no checksums. Neither may be saved under the
    official name: the error names the URL and what arrived, and the next run fetches again."""
    good = _pth_bytes(tiny_zoo)
    server.files[ZOO_PATH] = PORTAL if answer == "html" else good
    if answer == "no_length":
        server.no_length.add(ZOO_PATH)
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone(NAME)
    msg = str(info.value)
    assert server.url(ZOO_PATH) in msg
    assert ("an HTML page of 27 bytes" if answer == "html" else "cut short") in msg, msg
    cache = torch_home / "hub" / "checkpoints"
    assert not (cache / FILENAME).exists()
    assert _leftovers(cache) == []
    assert hub.find_weights(NAME) is None  # `dinov2-dense info`: not found

    server.files[ZOO_PATH] = good  # the network is back: the next run fetches the file
    server.no_length.discard(ZOO_PATH)
    assert _same_weights(load_backbone(NAME), tiny_zoo)
    assert server.hits[ZOO_PATH] == 2


def test_weights_url_cut_short_is_not_cached(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, tmp_path: Path
) -> None:
    save_safetensors(tiny_zoo, tmp_path / "tiny.safetensors")
    server.files["/files/tiny.safetensors"] = (tmp_path / "tiny.safetensors").read_bytes()
    server.no_length.add("/files/tiny.safetensors")
    url = server.url("/files/tiny.safetensors")
    with pytest.raises(WeightsNotFoundError, match=r"safetensors file cut short") as info:
        load_backbone(NAME, weights=url)
    assert url in str(info.value)
    cache = torch_home / "hub" / "checkpoints"
    assert list(cache.glob("url-*")) == [] and _leftovers(cache) == []
    server.no_length.clear()
    assert _same_weights(load_backbone(NAME, weights=url), tiny_zoo)


@pytest.mark.parametrize("where", ["zoo", "url"])
def test_unreadable_file_in_cache_says_delete_it(
    where: str, server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad file already in the cache (an older version saved it) is named as such, with the way
    out: delete it, and it is fetched again."""
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    server.files[ZOO_PATH] = server.files["/files/w.pth"] = _pth_bytes(tiny_zoo)
    if where == "zoo":
        bad, load = cache / FILENAME, lambda: load_backbone(NAME)
    else:
        url = server.url("/files/w.pth")
        load_backbone(NAME, weights=url)
        (bad,) = cache.glob("url-*-w.pth")
        load = lambda: load_backbone(NAME, weights=url)  # noqa: E731
    bad.write_bytes(PORTAL)
    with pytest.raises(ValueError) as info:
        load()
    msg = str(info.value)
    assert "weights cache" in msg and "an HTML page of 27 bytes" in msg and f"delete it (rm '{bad}')" in msg, msg
    if where == "zoo":
        row = next(r for r in hub.weights_status() if r["name"] == NAME)
        assert row["found"] == str(bad) and "HTML page" in row["problem"]
    bad.unlink()  # as the message says
    assert _same_weights(load(), tiny_zoo)


def test_file_url_is_read_in_place(tiny_zoo: torch.nn.Module, torch_home: Path, tmp_path: Path) -> None:
    """A file:// URL is the file itself: never copied into the cache, so a changed file is seen."""
    folder = tmp_path / "my weights"  # a space: %20 in the URL
    folder.mkdir()
    path = save_safetensors(tiny_zoo, folder / "tiny.safetensors")
    url = path.as_uri()
    assert "%20" in url
    assert _same_weights(load_backbone(NAME, weights=url), tiny_zoo)
    other = randomize_(tiny_vit(), seed=12)
    save_safetensors(other, path)
    assert _same_weights(load_backbone(NAME, weights=url), other)
    cache = torch_home / "hub" / "checkpoints"
    assert not cache.exists() or list(cache.iterdir()) == []
    # the architecture JSON beside the file is found through the URL too
    (folder / "tiny.json").write_text('{"img_size": 98, "embed_dim": 48, "depth": 3, "num_heads": 2}')
    assert _same_weights(load_backbone(None, weights=url), other)
    with pytest.raises(WeightsNotFoundError, match="absent.pth"):
        load_backbone(NAME, weights=(folder / "absent.pth").as_uri())


# -- partial files of downloads killed with kill -9 ---------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partial_download_of_a_killed_process_is_removed(
    server: FileServer, tiny_zoo: torch.nn.Module, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 in the middle of a download leaves a hidden partial file in the cache; the next
    download removes it once idle (a younger one may be another machine's download in progress),
    and never a running process's."""
    cache = torch_home / "hub" / "checkpoints"
    big = os.urandom(3 * server.STALL_AFTER)
    server.files["/big.pth"] = big
    server.stalled.add("/big.pth")
    code = ("import sys; from dinov2_dense.hub import download; "
            "download(sys.argv[1], sys.argv[2], progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, server.url("/big.pth"), str(cache / "big.pth")], env=env)
    try:
        deadline = time.monotonic() + 120
        while not [p for p in _leftovers_paths(cache) if p.stat().st_size >= server.STALL_AFTER]:
            assert proc.poll() is None and time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    (partial,) = _leftovers_paths(cache)
    assert str(proc.pid) in partial.name
    old = time.time() - hub.STALE_DOWNLOAD_S - 60
    os.utime(partial, (old, old))
    young = cache / f".other.{_dead_pid()}-0123abcd.tmp.pth"  # being written from another machine
    running = cache / f".mine.{os.getpid()}-0123abcd.tmp.pth"  # this process is alive
    for path in (young, running):
        path.write_bytes(b"part")
    os.utime(running, (old, old))

    server.files[ZOO_PATH] = _pth_bytes(tiny_zoo)
    monkeypatch.setenv("DINOV2_DENSE_BASE_URL", server.url("/dl"))
    assert _same_weights(load_backbone(NAME), tiny_zoo)
    assert not partial.exists()
    assert young.exists() and running.exists()


def test_stale_temporaries_of_one_file_spare_other_files(tmp_path: Path) -> None:
    """The temporaries of ``f.npy`` are ``.f.<pid>-<random>.tmp.npy``: ``.f.<digits>.<pid>-...``
    belongs to another file (``f.<digits>.npy``), whose writer may be running."""
    from dinov2_dense.fileio import discard_stale_temporaries

    dead = _dead_pid()
    mine = tmp_path / f".f.{dead}-0123abcd.tmp.npy"
    others = tmp_path / f".f.{dead}.{os.getpid()}-0123abcd.tmp.npy"  # f.<dead>.npy, written by this process
    for path in (mine, others):
        path.write_bytes(b"part")
    discard_stale_temporaries(tmp_path / "f.npy")
    assert not mine.exists() and others.exists()


def _leftovers_paths(directory: Path) -> list[Path]:
    return [directory / name for name in _leftovers(directory)] if directory.is_dir() else []


def test_weights_are_described_for_records(tmp_path, monkeypatch) -> None:
    """What an output file's metadata should say about the weights (not "official" for ours; a file
    given by a relative path, by its absolute one: the record is read from other folders)."""
    assert "embedded in the package" in hub.describe_weights("dinov2_dense_tiny")
    assert "official" not in hub.describe_weights("dinov2_dense_tiny")
    assert hub.describe_weights(NAME) == f"official ({FILENAME})"
    assert hub.describe_weights(NAME, None) == "random"
    assert hub.describe_weights(NAME, "w.pth") == "w.pth"  # (no such file here: as given)
    (tmp_path / "w.pth").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert hub.describe_weights(NAME, "w.pth") == str(tmp_path.resolve() / "w.pth")
    assert hub.describe_weights(NAME, "https://example.org/w.pth") == "https://example.org/w.pth"
