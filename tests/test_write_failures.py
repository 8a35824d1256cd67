"""When writing fails (a review with full disks, file size limits and signals): a library's own exception for a
failed write (safetensors, torch.save's zip writer) is a one-line error naming the file, not a bug; a full disk
at a memory-mapped file names it; an interrupt that mmengine's config formatting turns into a SyntaxError is an
interrupt; a full /dev/shm says what to do; a killed pretraining run's temporary files go at its next start."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dinov2_dense import cli
from dinov2_dense.fileio import atomic_path


class SafetensorError(Exception):
    """As the safetensors library raises it (not an OSError)."""


@pytest.mark.parametrize("exc, code, reason", [
    (SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space left "
                     "on device\" })"), errno.ENOSPC, "No space left on device"),
    (SafetensorError("IoError: File too large (os error 27)"), errno.EFBIG, "File too large"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1005888 vs 1005776"), errno.ENOSPC,
     "the write fell short"),
])
def test_a_librarys_failed_write_names_the_file(tmp_path, exc, code, reason):
    out = tmp_path / "f.safetensors"
    out.write_bytes(b"earlier")
    with pytest.raises(OSError) as raised:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise exc
    assert raised.value.errno == code and str(raised.value).startswith(f"[Errno {code}] cannot write {out}: {reason}")
    assert out.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["f.safetensors"]


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), RuntimeError("tensor a (96) must match b (97) (os error 5)"),
                                 ValueError("KeyError in my lookup table (os error 2)"),
                                 RuntimeError("torch_function: No space left on device in my own message")])
def test_other_exceptions_in_the_block_are_left_as_they_are(tmp_path, exc):
    """A block that writes may also compute (features runs the model inside it): only a writer's own exception
    is read as a failed write; a bug whose message happens to say "os error" stays a bug (a diff review)."""
    with pytest.raises(type(exc)) as raised:
        with atomic_path(tmp_path / "x.pth"):
            raise exc
    assert raised.value is exc and not list(tmp_path.iterdir())


def test_a_memory_mapped_file_on_a_full_disk_names_the_file(tmp_path):
    """numpy's header write of a new .npy, under a file size limit (as on a full disk): no file was named
    (curate's store, the feature cache)."""
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        from dinov2_dense.fileio import new_memmap
        try:
            new_memmap({str(tmp_path / "e.npy")!r}, (1000, 16), "float32")
        except OSError as exc:
            print("OSError", exc)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.startswith("OSError [Errno 27] File too large:") and str(tmp_path / "e.npy") in out.stdout, \
        out.stdout + out.stderr


def _run(func, capsys) -> tuple[int, str]:
    args = argparse.Namespace(command="features", func=func)
    code = cli.run_command(args, "dinov2-dense features", debug=False)
    return code, capsys.readouterr().err


def test_an_interrupt_during_mmengines_config_formatting_is_an_interrupt(capsys):
    """mmengine's Config.pretty_text formats under a bare except (every checkpoint save): a Ctrl-C there
    became "SyntaxError: Failed to format the config file", exit 1 and "internal error"."""
    def saving(args):
        try:
            raise KeyboardInterrupt
        except:  # noqa: E722 - as mmengine does
            raise SyntaxError("Failed to format the config file, please check the syntax of: \nx = 1")

    code, err = _run(saving, capsys)
    assert code == 130 and "interrupted; no half-written file was left" in err and "internal error" not in err


def test_a_syntax_error_of_our_own_is_still_a_bug(capsys):
    def broken(args):
        raise SyntaxError("Failed to format the config file, please check the syntax of: \nx = (")

    code, err = _run(broken, capsys)
    assert code == 1 and "internal error" in err


def test_a_full_shared_memory_says_what_to_do(capsys):
    def loading(args):
        raise RuntimeError("Caught RuntimeError in DataLoader worker process 0.\nOriginal Traceback ...\n"
                           "RuntimeError: unable to resize file <filename not specified> to the right size: "
                           "Invalid argument (22) </torch_1234_567_0>")

    code, err = _run(loading, capsys)
    assert code == 2 and "shared memory (/dev/shm) ran out" in err and "--num-workers 0" in err


def test_a_pretraining_runs_killed_temporaries_go_at_its_next_start(tmp_path):
    from pretrain.train import pretrain
    from tests.test_pretrain_train import tiny

    work = tmp_path / "run"
    pretrain(tiny(2), work, progress=False)
    left = [work / ".checkpoint_0000004.999999999-0123abcd.tmp.pth", work / "export" / ".backbone.999999999-4567cdef.tmp.pth"]
    for path in left:
        path.write_bytes(b"\0" * 4096)
    result = pretrain(tiny(4), work, resume=True, progress=False)
    assert result["iterations"] == 4 and not any(p.exists() for p in left)
    state = torch.load(result["export"]["pth"], weights_only=True)  # the export is whole
    assert state and all(torch.isfinite(v).all() for v in state.values())


def test_running_out_of_memory_in_torchs_allocator_is_one_line(capsys):
    """torch's CPU allocator raises RuntimeError, not MemoryError: a --size 20000 with --tile was exit 1 and
    "internal error" (a review)."""
    def allocating(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 25600080000 bytes. Error code 12 (Cannot allocate memory)")

    code, err = _run(allocating, capsys)
    assert code == 2 and "error: out of memory (tried to allocate 25600080000 bytes" in err
    assert "--size or --tile" in err and "internal error" not in err


def test_a_workers_full_shared_memory_is_not_the_outputs_failed_write(tmp_path, capsys):
    """Its text holds "No space left on device" too: features blamed its output file, on a disk 52 GB free."""
    error = RuntimeError("Caught RuntimeError in DataLoader worker process 1.\nOriginal Traceback (most recent call "
                         "last):\nRuntimeError: unable to allocate shared memory(shm) for file </torch_2780_1_0>: No "
                         "space left on device (28)")
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        with atomic_path(tmp_path / "f.npy"):
            raise error

    def loading(args):
        with atomic_path(tmp_path / "g.npy"):
            raise error

    code, err = _run(loading, capsys)
    assert code == 2 and "shared memory (/dev/shm) ran out" in err and "g.npy" not in err


def test_a_librarys_failed_write_into_a_staged_folder_names_the_folder(tmp_path):
    from dinov2_dense.fileio import staged_dir

    with pytest.raises(OSError, match=r"cannot write .*out: the write fell short"):
        with staged_dir(tmp_path / "out") as stage:
            (stage / "head.pth").write_bytes(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_a_lock_that_cannot_be_written_names_itself_and_is_not_left(tmp_path):
    """On a full disk the lock was left empty, and the next run 'took over the lock of a run that is gone
    (pid -1, since None)'."""
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8, 8))
        from dinov2_dense.fileio import DirLock
        try:
            DirLock({str(tmp_path / "run")!r}).acquire()
        except OSError as exc:
            print("OSError", exc)
        """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.startswith("OSError [Errno 27] cannot take the lock ") and "File too large" in out.stdout, \
        out.stdout + out.stderr
    assert not list((tmp_path / "run").iterdir())


def test_a_pretraining_export_that_fails_part_way_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """The export wrote backbone.pth, then backbone.safetensors: a failed second write (a full disk) left a new
    .pth beside the old .safetensors (a reviewer, with strace fault injection), two files of one name that gave
    other features. The three files are now renamed together once all are written."""
    import errno

    import dinov2_dense.checkpoints as checkpoints
    from pretrain.export import export_backbone

    from .conftest import randomize_, tiny_vit

    first, second = tiny_vit(depth=2, dim=32, img=28), randomize_(tiny_vit(depth=2, dim=32, img=28), seed=1)
    out = tmp_path / "export"
    export_backbone(first, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = checkpoints.write_safetensors

    def full_disk(weights, tmp, metadata=None):
        real(weights, tmp, metadata)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(checkpoints, "write_safetensors", full_disk)
    with pytest.raises(OSError, match=r"backbone.safetensors.*then continue the run with --resume"):
        export_backbone(second, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the last export, whole; no temporaries
    monkeypatch.setattr(checkpoints, "write_safetensors", real)
    paths = export_backbone(second, out)
    from dinov2_dense import load_backbone

    for weights in (paths["pth"], paths["safetensors"]):
        loaded = load_backbone(None, weights=str(weights))
        assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), second.state_dict().values()))
