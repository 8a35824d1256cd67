"""The start of a pretraining or distillation run on several processes: processes given other settings,
a config that one process refuses, a work dir that the main process refuses, all stop together with one
line before anything is built or written; FSDP's backbone outputs are not views."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pretrain.export import export_backbone
from tests.conftest import free_port, randomize_, tiny_vit
from tests.test_pretrain_train import ENV, ROOT, _py_config, tiny


def _by_hand(tmp_path: Path, commands: list[list[str]], timeout: float = 150) -> list[tuple[int, str]]:
    """(exit code, stderr) of each process of a 2-process run started by hand, as one machine each of a
    multi-node launch would start it, each with its own command line."""
    port, procs = free_port(), []
    for rank, args in enumerate(commands):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "dinov2_dense.cli", *args, "--no-progress"], env=env,
                                       stdout=log, stderr=subprocess.STDOUT), log))
    try:
        codes = [proc.wait(timeout=timeout) for proc, _ in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    logs = [(tmp_path / f"rank{rank}.log").read_text() for rank in range(len(commands))]
    assert codes is not None, f"still running after {timeout} s: {[log[-800:] for log in logs]}"
    return list(zip(codes, logs))


def test_processes_given_other_settings_refuse_together_before_writing(tmp_path):
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "work"
    common = ["pretrain", str(cfg), "--work-dir", str(work)]
    # (each process scaled the learning rate from its own batch: the models drifted apart until the end)
    per_process = ["train.num_workers=1"]  # its own on each process: not compared
    ran = _by_hand(tmp_path, [common, common + ["--cfg-options", "train.batch_size_per_gpu=2", *per_process]])
    for code, log in ran:
        assert code == 2, log[-2000:]
        assert "the 2 processes of this run were given different settings: train.batch_size_per_gpu: 4 in process " \
               "0, 2 in process 1" in log and "num_workers" not in log and "Traceback" not in log
    assert not work.exists()  # refused before the work dir was made

    # distillation: the teacher given by --teacher; and the work dir (process 1 used to train on, writing nothing
    # to its own work dir while process 0 wrote the run to its)
    teachers = [export_backbone(randomize_(tiny_vit(dim=32, depth=1, img=28), seed=i), tmp_path / f"t{i}")["safetensors"]
                for i in range(2)]
    other = tmp_path / "work_b"
    ran = _by_hand(tmp_path, [["distill", str(cfg), "--work-dir", str(work), "--teacher", str(teachers[0])],
                              ["distill", str(cfg), "--work-dir", str(other), "--teacher", str(teachers[1])]])
    for code, log in ran:
        assert code == 2, log[-2000:]
        assert f"given different settings: --work-dir: '{work}' in process 0, '{other}' in process 1; " \
               "distill.teacher: " in log and str(teachers[1]) in log
    assert not work.exists() and not other.exists()


def test_a_config_that_one_process_refuses_stops_the_others(tmp_path):
    """A typo in one machine's options: that process refused its config before the process group was up, and
    the others waited in its start (ignoring SIGTERM there) until the launch timed out."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    common = ["pretrain", str(cfg), "--work-dir", str(tmp_path / "work")]
    (code0, log0), (code1, log1) = _by_hand(tmp_path, [common, common + ["--cfg-options", "train.batch_size_per_gp=2"]],
                                            timeout=90)
    assert code1 == 2 and "unknown key train.batch_size_per_gp (did you mean batch_size_per_gpu?)" in log1, log1
    assert "--cfg-options train.batch_size_per_gp: unknown key" in log1, log1  # the option, not the config file
    assert code0 == 2 and "stopped: process 1 refused the start (" in log0 and "batch_size_per_gp" in log0, log0


def test_a_work_dir_that_the_main_process_refuses_stops_every_process_with_its_reason(tmp_path):
    """The main process alone holds the work dir: a run already in it (its lock) is refused there, and the
    other process stops at once, saying why, instead of being killed by torchrun."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "work"
    work.mkdir()
    (work / ".dinov2_dense.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                         "started": "now"}))
    # a monitor interval of 2 s: the refused process has time to say so before torchrun stops it
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--monitor-interval", "2", str(ROOT / "tools" / "pretrain.py"),
           str(cfg), "--work-dir", str(work), "--no-progress"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=150)
    assert out.returncode != 0
    busy = f"{work} is in use by another run (pid {os.getpid()}"
    assert f"dinov2-dense pretrain: error: {busy}" in out.stderr, out.stderr[-3000:]
    assert f"dinov2-dense pretrain: stopped: process 0 refused the start ({busy}" in out.stderr, out.stderr[-3000:]
    assert "terminated" not in out.stderr and "internal error" not in out.stderr
    assert sorted(p.name for p in work.iterdir()) == [".dinov2_dense.lock"]


@pytest.fixture(scope="module")
def distilled_by_pretrain(tmp_path_factory):
    """A distillation config run by `pretrain` (the reviewer's `torchrun tools/pretrain.py DISTILL_CONFIG`) on 2
    processes of batch 4, stopped at iteration 1 of 2: (config, work dir, [(exit code, output) of each process])."""
    tmp = tmp_path_factory.mktemp("distill2")
    teacher = export_backbone(randomize_(tiny_vit(dim=32, depth=1, img=28)), tmp / "teacher")["safetensors"]
    cfg = _py_config(tmp / "distill.py", tiny(2, distill=dict(teacher=str(teacher),
                                                              students=[dict(embed_dim=16, num_heads=1)])))
    work = tmp / "work"
    ran = _by_hand(tmp, [["pretrain", str(cfg), "--work-dir", str(work), "--max-iters", "1"]] * 2)
    return cfg, work, ran


def _summaries(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("pretraining:", "distillation:"))]


def test_a_distillation_config_run_by_pretrain_says_distillation(distilled_by_pretrain):
    """Its summary said `pretraining: {...}` (through `distill` it said `distillation:`): it follows the config."""
    _, _, ((code0, log0), (code1, log1)) = distilled_by_pretrain
    assert code0 == code1 == 0, (log0[-2000:], log1[-2000:])
    said = _summaries(log0)
    assert len(said) == 1 and said[0].startswith("distillation: {'iteration': 1"), said
    assert not _summaries(log1)  # process 0's line


def test_a_resume_on_other_processes_at_the_same_batch_names_the_processes(distilled_by_pretrain, capsys):
    """2 processes x batch 4, resumed on 1 x 8: the warning named `train.batch_size_per_gpu 4 -> 8` alone and said
    that optim.lr scales, although the batch of all processes, and so the lr, had not changed. It names the
    processes and that batch, and the lr only where it changes (its own test: test_pretrain_resume_settings)."""
    from dinov2_dense.cli import main

    cfg, work, ((code0, log0), _) = distilled_by_pretrain
    assert code0 == 0, log0[-2000:]
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--resume", "--no-progress", "--cfg-options",
                 "train.batch_size_per_gpu=8"]) == 0
    out, err = capsys.readouterr()
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1, err
    assert (f"warning: --resume: this command's schedule settings differ from those {work / 'checkpoint_0000001.pth'} "
            "was written with: processes 2 -> 1, train.batch_size_per_gpu 4 -> 8 (the batch of all processes stays "
            "8); the run continues on this command's schedules. To continue it as it was, give its settings again "
            "(its checkpoints hold them under 'config') on 2 processes") == warned[0]
    assert "optim.lr" not in err
    said = _summaries(out)
    assert len(said) == 1 and said[0].startswith("distillation: {'iteration': 2"), out  # `pretrain`, one process
    assert "exported student0: " in out, out


def test_the_fsdp_output_hook_copies_views_exactly():
    """The hook that gives FSDP's backbone outputs storage of their own: the same values and gradients."""
    from pretrain.train import _outputs_of_their_own

    model = tiny_vit(dim=32, depth=1, img=28).train()
    x = torch.randn(2, 3, 28, 28)
    plain = model.forward_features(x)
    assert plain["x_norm_patchtokens"]._base is not None  # what FSDP warned of
    handle = model.register_forward_hook(_outputs_of_their_own)
    try:
        hooked = model([x, x[:, :, :14, :14]], is_training=True)
        with torch.no_grad():
            assert model.forward_features(x)["x_norm_patchtokens"]._base is not None  # no copy without gradients
    finally:
        handle.remove()
    grads = []
    for out in (plain, hooked[0]):
        for key in ("x_norm_clstoken", "x_norm_patchtokens"):
            assert out[key]._base is None or out is plain
        model.zero_grad()
        (out["x_norm_clstoken"].square().sum() + out["x_norm_patchtokens"].sin().sum()).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None})
    assert torch.equal(plain["x_norm_patchtokens"], hooked[0]["x_norm_patchtokens"])
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])
    assert hooked[1]["x_norm_patchtokens"]._base is None  # a list of crops: each dict


def test_teachers_that_differ_at_the_end_are_not_called_a_settings_mismatch(tmp_path, monkeypatch):
    import torch.distributed as dist

    from pretrain.train import _check_in_sync

    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: 2)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj, *a, **k: out.__setitem__(slice(None),
                                                                                           [obj, "f" * 64]))
    model = torch.nn.Module()
    model.teacher = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError) as caught:
        _check_in_sync(model, tmp_path, main=True)
    text = str(caught.value)
    assert "went out of step" in text and "same settings" in text and "ffffffffffff" in text
    assert json.loads((tmp_path / "teacher_fingerprints.json").read_text())[1] == "f" * 64
