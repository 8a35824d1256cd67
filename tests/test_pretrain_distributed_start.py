"""Pretraining and distillation on two processes: processes given other settings, a config that one
process refuses, a work dir that the main process refuses, all stop together with one line before anything
is built or written; DDP keeps the teachers equal and distils; FSDP trains, monitors, exports and resumes,
and its checkpoints and one process's resume each other; FSDP's backbone outputs are not views.

The two-process cases run in one launch of two processes (``tests.twoproc``); the work dir that the main
process refuses is launched by torchrun itself, whose stopping of the other process it checks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dinov2_dense import load_backbone
from pretrain.export import export_backbone
from pretrain.train import checkpoint_files, pretrain
from tests.conftest import free_port, randomize_, tiny_vit
from tests.test_pretrain_train import ENV, ROOT, _model_and_stepped_optimizer, _py_config, tiny
from tests.twoproc import TORCHRUN, cases, launch, shared_once

#: the FSDP and one-process runs that resume each other: what makes their batches' sums differ only in order
SAME = dict(student=dict(drop_path_rate=0.0), dino=dict(koleo_loss_weight=0.0), ibot=dict(mask_sample_probability=0.0))


def _mixed_config(batch: int) -> dict:
    cfg = tiny(6, train=dict(batch_size_per_gpu=batch), compute=dict(distributed="fsdp", device="cpu"))
    for section, values in SAME.items():
        cfg[section] = {**cfg[section], **values}
    return cfg


def _launch(root: Path):
    """Every case's inputs, then the launch: {case: [(exit code, output) of process 0, of process 1]}."""
    cfg = str(_py_config(root / "tiny.py", tiny(2)))
    # distillation with --teacher, a teacher for each process
    teachers = [export_backbone(randomize_(tiny_vit(dim=32, depth=1, img=28), seed=i), root / f"t{i}")["safetensors"]
                for i in range(2)]
    # a distillation config run by `pretrain` (the reviewer's `torchrun tools/pretrain.py DISTILL_CONFIG`) on 2
    # processes of batch 4, stopped at iteration 1 of 2
    distill_cfg = str(_py_config(root / "distill.py", tiny(2, distill=dict(
        teacher=str(teachers[0]), students=[dict(embed_dim=16, num_heads=1)]))))
    # DDP: pretraining, then distillation from its export and its heads
    ddp = root / "ddp"
    ddp_cfg = str(_py_config(root / "ddp.py", tiny(4)))
    distill_ddp_cfg = str(_py_config(root / "distill_ddp.py", tiny(2, distill=dict(
        teacher=str(ddp / "export" / "backbone.safetensors"), teacher_head=str(ddp),
        students=[dict(embed_dim=16, depth=1)]))))
    # FSDP: 2 iterations with the monitor, then --resume to 4
    fsdp_cfg = str(_py_config(root / "fsdp.py", tiny(4, compute=dict(distributed="fsdp", device="cpu"), monitor=dict(
        period=2, images=("skimage:coffee",), pca_size=28, probe_size=28, probe_scenes=(4, 2), knn_scenes=(6, 4)))))
    # one process (batch 8) for 6 iterations; FSDP on two (batch 4 each) resumes its checkpoint of iteration 2
    pretrain(_mixed_config(8), root / "straight", progress=False)
    (root / "mixed").mkdir()
    shutil.copy(root / "straight" / "checkpoint_0000002.pth", root / "mixed")
    mixed_cfg = str(_py_config(root / "mixed.py", _mixed_config(4)))

    def same(*args: str) -> list[list[str]]:
        return [[*args, "--no-progress"]] * 2

    table = {
        # (each process scaled the learning rate from its own batch: the models drifted apart until the end;
        # num_workers is each process's own: not compared)
        "settings": ([["pretrain", cfg, "--work-dir", str(root / "work"), "--no-progress"],
                      ["pretrain", cfg, "--work-dir", str(root / "work"), "--cfg-options", "train.batch_size_per_gpu=2",
                       "train.num_workers=1", "--no-progress"]], TORCHRUN, []),
        # the teacher given by --teacher; and the work dir (process 1 used to train on, writing nothing to its own
        # work dir while process 0 wrote the run to its)
        "distill_settings": ([["distill", cfg, "--work-dir", str(root / "work"), "--teacher", str(teachers[0]),
                               "--no-progress"],
                              ["distill", cfg, "--work-dir", str(root / "work_b"), "--teacher", str(teachers[1]),
                               "--no-progress"]], TORCHRUN, []),
        "typo_on_1": ([["pretrain", cfg, "--work-dir", str(root / "typo"), "--no-progress"],
                       ["pretrain", cfg, "--work-dir", str(root / "typo"), "--cfg-options", "train.batch_size_per_gp=2",
                        "--no-progress"]], TORCHRUN, []),
        "distill_by_pretrain": (same("pretrain", distill_cfg, "--work-dir", str(root / "distilled"), "--max-iters", "1"),
                                TORCHRUN, []),
        "ddp": (same("pretrain", ddp_cfg, "--work-dir", str(ddp)), TORCHRUN, []),
        "distill_ddp": (same("pretrain", distill_ddp_cfg, "--work-dir", str(root / "distill_ddp")), TORCHRUN, []),
        "fsdp": (same("pretrain", fsdp_cfg, "--work-dir", str(root / "fsdp"), "--max-iters", "2"), TORCHRUN, []),
        "fsdp_resume": (same("pretrain", fsdp_cfg, "--work-dir", str(root / "fsdp"), "--resume"), TORCHRUN, []),
        "mixed": (same("pretrain", mixed_cfg, "--work-dir", str(root / "mixed"), "--resume", "--max-iters", "4"),
                  TORCHRUN, []),
    }
    return launch(root, cases(table, limits={"fsdp": 120, "fsdp_resume": 120},
                              no_figures={name: True for name in ("ddp", "distill_ddp", "mixed")}))


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict]:
    results = shared_once(tmp_path_factory, "pretrain_two_processes", lambda root: [str(root), _launch(root)])
    return Path(results[0]), results[1]


def _case(launched, name: str):
    root, results = launched
    if name not in results:
        pytest.skip(f"DIST_START_ONLY leaves out {name}")
    return root, results[name]


def test_processes_given_other_settings_refuse_together_before_writing(launched):
    root, ran = _case(launched, "settings")
    for code, log in ran:
        assert code == 2, log[-2000:]
        assert "the 2 processes of this run were given different settings: train.batch_size_per_gpu: 4 in process " \
               "0, 2 in process 1" in log and "num_workers" not in log and "Traceback" not in log
    assert not (root / "work").exists()  # refused before the work dir was made

    root, ran = _case(launched, "distill_settings")
    work, other = root / "work", root / "work_b"
    for code, log in ran:
        assert code == 2, log[-2000:]
        assert f"given different settings: --work-dir: '{work}' in process 0, '{other}' in process 1; " \
               "distill.teacher: " in log and str(root / "t1") in log
    assert not work.exists() and not other.exists()


def test_a_config_that_one_process_refuses_stops_the_others(launched):
    """A typo in one machine's options: that process refused its config before the process group was up, and
    the others waited in its start (ignoring SIGTERM there) until the launch timed out."""
    _, ((code0, log0), (code1, log1)) = _case(launched, "typo_on_1")
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


def _summaries(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("pretraining:", "distillation:"))]


def test_a_distillation_config_run_by_pretrain_says_distillation(launched):
    """Its summary said `pretraining: {...}` (through `distill` it said `distillation:`): it follows the config."""
    _, ((code0, log0), (code1, log1)) = _case(launched, "distill_by_pretrain")
    assert code0 == code1 == 0, (log0[-2000:], log1[-2000:])
    said = _summaries(log0)
    assert len(said) == 1 and said[0].startswith("distillation: {'iteration': 1"), said
    assert not _summaries(log1)  # process 0's line


def test_a_resume_on_other_processes_at_the_same_batch_names_the_processes(launched, tmp_path, capsys):
    """2 processes x batch 4, resumed on 1 x 8: the warning named `train.batch_size_per_gpu 4 -> 8` alone and said
    that optim.lr scales, although the batch of all processes, and so the lr, had not changed. It names the
    processes and that batch, and the lr only where it changes (its own test: test_pretrain_resume_settings)."""
    from dinov2_dense.cli import main

    root, ((code0, log0), _) = _case(launched, "distill_by_pretrain")
    assert code0 == 0, log0[-2000:]
    cfg, work = root / "distill.py", tmp_path / "distilled"  # this test's own copy: the resume writes into it
    shutil.copytree(root / "distilled", work)
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


def test_torchrun_itself_runs_two_processes_to_exit_code_0(tmp_path):
    """A launch by torchrun itself ends with exit code 0 (the cases above run in the driver's processes, without
    torchrun's variables, so its children's way out, dinov2_dense.cli.main's, is taken here alone). That way out
    skips the interpreter's finalisation, where gloo's threads aborted finished runs ("terminate called without
    an active exception"); the abort came under load only, so this test catches a way out that fails, not
    always the abort itself (a diff review: 3 of 3 runs passed with the way out taken away, on an idle machine)."""
    cfg = _py_config(tmp_path / "tiny.py", tiny(2))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(ROOT / "tools" / "pretrain.py"), str(cfg), "--work-dir", str(work),
           "--no-progress"]
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    prints = json.loads((work / "teacher_fingerprints.json").read_text())
    assert len(prints) == 2 and prints[0] == prints[1]
    assert torch.load(checkpoint_files(work)[0], weights_only=True)["iteration"] == 2


def test_two_processes_on_gloo_keep_the_same_teacher(launched):
    root, ((code0, log0), (code1, log1)) = _case(launched, "ddp")
    assert code0 == code1 == 0, (log0[-2000:], log1[-2000:])
    prints = json.loads((root / "ddp" / "teacher_fingerprints.json").read_text())
    assert len(prints) == 2 and prints[0] == prints[1]
    assert torch.load(checkpoint_files(root / "ddp")[0], weights_only=True)["iteration"] == 4


def test_distillation_under_two_processes_on_gloo(launched):
    """Distillation in DDP: its students never mask, so a backbone's mask_token has no gradient, and DDP's
    second step raised "Expected to have finished reduction in the prior iteration" on every rank."""
    root, ((code0, log0), (code1, log1)) = _case(launched, "distill_ddp")
    assert code0 == code1 == 0, (log0[-2000:], log1[-2000:])
    out = root / "distill_ddp"
    assert (out / "export" / "student0.safetensors").is_file()
    prints = json.loads((out / "teacher_fingerprints.json").read_text())
    assert len(prints) == 2 and prints[0] == prints[1]


def test_two_processes_fsdp_on_gloo_train_monitor_and_export(launched):
    """torch's fully_shard on two CPU processes (gloo): the same loop, the monitor and the export."""
    root, ran = _case(launched, "fsdp")
    for code, log in ran:
        assert code == 0, log[-3000:]
        # FSDP2 warned, 3 times a run, of the backbone's outputs that are views (pretrain.train._outputs_of_their_own)
        assert "view tensor" not in log, log[-3000:]
    _, ran = _case(launched, "fsdp_resume")  # the optimizer too
    assert [code for code, _ in ran] == [0, 0], [log[-3000:] for _, log in ran]
    assert "(iteration 2)" in ran[0][1]
    work = root / "fsdp"
    prints = json.loads((work / "teacher_fingerprints.json").read_text())
    assert len(prints) == 2 and prints[0] == prints[1]
    ckpt = torch.load(checkpoint_files(work)[0], weights_only=True)
    assert ckpt["iteration"] == 4 and not any("_fsdp" in k or k.startswith("module.") for k in ckpt["model"])
    model = load_backbone(None, weights=work / "export" / "backbone.safetensors")  # strict: every key, full shapes
    teacher = {k[len("teacher.backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("teacher.backbone.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in teacher.items())
    monitor = [json.loads(l) for l in (work / "monitor" / "monitor.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in monitor] == [2, 4]


def test_fsdp_and_one_process_resume_each_others_checkpoints(launched, tmp_path, monkeypatch):
    """One process (batch 8) for 2 iterations, then FSDP on two processes (batch 4 each) --resume to 4, then
    one process again to 6: the same as 6 iterations on one process, teacher and optimizer state (AdamW's
    moments and steps). The processes' batches hold the same samples with the same crops; drop path,
    masks and KoLeo (drawn, or computed, per process batch) are off, so only the float sums' order differs.
    Each change of the number of processes was refused: the FSDP optimizer state (by names) was readable
    by FSDP on the same process count alone, and torch's (ids) by one process or DDP alone."""
    from pretrain.train import _by_names, _group_names
    from tests.test_pretrain_train import _no_figures

    root, ran = _case(launched, "mixed")
    assert [code for code, _ in ran] == [0, 0], [log[-3000:] for _, log in ran]
    assert "(iteration 2)" in ran[0][1] and "train.batch_size_per_gpu 8 -> 4" in ran[0][1]
    mixed = tmp_path / "mixed"  # this test's own copy: the one-process resume writes into it
    shutil.copytree(root / "mixed", mixed)
    assert len(json.loads((mixed / "teacher_fingerprints.json").read_text())) == 2  # the two processes' teachers
    _no_figures(monkeypatch)
    pretrain(_mixed_config(8), mixed, progress=False, resume=True)
    assert not (mixed / "teacher_fingerprints.json").exists()  # it stayed, naming teachers this run no longer has

    def load(run, it):
        return torch.load(run / f"checkpoint_{it:07d}.pth", weights_only=True)

    model, optimizer = _model_and_stepped_optimizer(steps=0, **SAME)
    names = _group_names(model, optimizer)
    for it in (4, 6):
        a, b = load(root / "straight", it), load(mixed, it)
        assert a["model"].keys() == b["model"].keys()
        diff = max((b["model"][k].float() - v.float()).abs().max().item() for k, v in a["model"].items())
        assert diff < 2e-6, (it, diff)  # measured: 1.8e-7 (the teacher's 1.9e-9)
        got = b["optimizer"]["sharded_by_names"] if it == 4 else _by_names(b["optimizer"], names)  # FSDP wrote 4
        want = _by_names(a["optimizer"], names)
        assert got["state"].keys() == want["state"].keys()
        for name, values in want["state"].items():
            assert float(got["state"][name]["step"]) == float(values["step"]) == it  # continued, not restarted
            for k in ("exp_avg", "exp_avg_sq"):  # measured: within 6.2e-7 of each tensor's largest value
                error = (got["state"][name][k] - values[k]).abs().max().item()
                assert error <= 1e-5 * values[k].abs().max().item(), (it, name, k, error)
    assert (mixed / "export" / "backbone.safetensors").is_file()
