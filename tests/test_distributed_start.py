"""How the processes of a distributed run start, as users launch them: torchrun without --launcher runs
distributed (not N whole copies); processes given different options all refuse, naming the keys; a start
that process 0 refuses stops every process at once; --launcher slurm reads Slurm's variables, and names
them when they are missing; the commands without a distributed mode refuse to run under torchrun. And a
head trained and tested on two processes: `test` of the checkpoint says what validation said, and `test
--out` of an odd number of images writes each once.

The two-process cases run in one launch of two processes (``tests.twoproc``: the variables torchrun sets,
given by hand, as a launch on two machines gives them). ``DIST_START_ONLY=a,b`` runs only those cases."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_dense.cli import main
from dinov2_dense.data.synthetic import SceneConfig, write_ade20k_layout
from dinov2_dense.distributed import SAID_LENGTH
from tests.conftest import free_port
from tests.twoproc import TORCHRUN, cases, launch, shared_once

ROOT = Path(__file__).resolve().parents[1]
SEG_CFG = ROOT / "configs/segmentation/tiny_synthetic_linear.py"
VITS14_CFG = ROOT / "configs/segmentation/dinov2_vits14_synthetic_linear.py"


def _write_data(root: Path) -> str:
    write_ade20k_layout(root / "ade", 4, 2, config=SceneConfig(size=(112, 112)), seed=0, progress=False)
    rng = np.random.default_rng(0)
    np.save(root / "pool.npy", rng.normal(size=(64, 8)).astype(np.float32))
    (root / "pool.txt").write_text("".join(f"img_{i:03d}.jpg\n" for i in range(64)))
    from pretrain.train import pretrain
    from tests.test_pretrain_train import _py_config, tiny

    pretrain(tiny(4), root / "pretrained", progress=False, max_iters=2)  # its checkpoint of iteration 2
    _py_config(root / "pretrain_tiny.py", tiny(4))
    (root / "gone.txt").write_text("gone_0.png\ngone_1.png\n")  # images deleted since they were listed
    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(2, 384, 1, 1)}}, root / "head.pth")
    # a head trained on two processes: 16 validation images; then `test --out` of 5 (the sampler repeats one)
    write_ade20k_layout(root / "ade16", 40, 16, config=SceneConfig(size=(112, 112)), seed=0, progress=False)
    write_ade20k_layout(root / "ade5", 4, 5, config=SceneConfig(size=(56, 56)), seed=1, progress=False)
    # curation on two processes: k-means of an odd count of rows (unequal shares), and the command
    from tests.test_curation import skewed_pool, write_pool

    np.save(root / "kmeans.npy", skewed_pool(1500, seed=9)[0][:1499])
    write_pool(root / "curate_in", skewed_pool(1200, seed=4)[0])
    return str(root)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Path(shared_once(tmp_path_factory, "dist_start_data", _write_data))


def _train_options(root: Path, iters: int) -> list[str]:
    opts = {f"{split}_dataloader.dataset.root": str(root / "ade") for split in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": iters, "train_cfg.val_interval": 1000, "train_dataloader.batch_size": 2,
                 "param_scheduler.0.end": 1, "param_scheduler.1.end": 2, "default_hooks.logger.interval": 1,
                 "default_hooks.checkpoint.interval": 2})
    return [f"{k}={v}" for k, v in opts.items()]


CURATE_TWO = ["--target", "150", "--clusters", "60,20,6", "--no-progress"]  # and one process: test_curation


def _ddp_options(root: Path) -> list[str]:
    """20 iterations of batch 4 on each process, validated at the end."""
    opts = {f"{split}_dataloader.dataset.root": str(root) for split in ("train", "val", "test")}
    opts.update({"train_cfg.max_iters": 20, "train_cfg.val_interval": 20, "param_scheduler.1.end": 20,
                 "default_hooks.logger.interval": 50, "train_dataloader.batch_size": 4})
    return [f"{k}={v}" for k, v in opts.items()]


def _cases(root: Path) -> list[dict]:
    """Each case: the command of process 0 and of process 1, their variables."""
    torchrun = TORCHRUN
    slurm = [{"SLURM_PROCID": str(r), "SLURM_LOCALID": str(r), "SLURM_NTASKS": "2", "SLURM_NODELIST": "localhost",
              "MASTER_ADDR": "127.0.0.1"} for r in (0, 1)]
    unset_torchrun = ["RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"]
    for work in ("taken", "taken_slurm"):  # another run's checkpoint: refused without --resume / --overwrite
        (root / work).mkdir(exist_ok=True)
        (root / work / "iter_4.pth").write_bytes(b"another run")
    train = ["train", str(SEG_CFG), "--cfg-options"]
    # the official ViT-S/14 weights, not in an empty hub cache and not to be downloaded
    offline = {"TORCH_HOME": str(root / "empty_torch_home"), "DINOV2_DENSE_OFFLINE": "1"}
    curate = ["curate", str(root / "pool.npy"), "--target", "20", "--no-progress", "--out", str(root / "curated")]
    table = {
        "api": ([[], []], torchrun, []),
        "test_implied": ([["test", str(SEG_CFG), str(root / "missing.pth"), "--work-dir", str(root / "t"),
                           "--out", str(root / "pred"), "--cfg-options", *_train_options(root, 2)]] * 2, torchrun, []),
        "train_refused": ([["train", str(SEG_CFG), "--work-dir", str(root / "taken"), "--launcher", "pytorch",
                            "--cfg-options", *_train_options(root, 2)]] * 2, torchrun, []),
        "slurm_refused": ([["train", str(SEG_CFG), "--work-dir", str(root / "taken_slurm"), "--launcher", "slurm",
                            "--cfg-options", *_train_options(root, 2)]] * 2, slurm, unset_torchrun),
        "curate_mismatch": ([curate + ["--seed", "0"], curate + ["--seed", "1"]], torchrun, []),
        "curate_unreadable": ([["curate", str(root / "gone.txt"), "--target", "2", "--model", "dinov2_dense_tiny",
                                "--num-workers", "0", "--no-progress", "--out", str(root / "curated_gone")]] * 2,
                              torchrun, []),
        "train_mismatch": ([train[:2] + ["--work-dir", str(root / "m"), "--launcher", "pytorch", "--cfg-options",
                                         *_train_options(root, 2)],
                            train[:2] + ["--work-dir", str(root / "m"), "--launcher", "pytorch", "--cfg-options",
                                         *_train_options(root, 2), "train_cfg.max_iters=3"]], torchrun, []),
        "test_mismatch": ([["test", str(SEG_CFG), str(root / f"{x}.pth"), "--work-dir", str(root / "t"), "--out",
                            str(root / f"pred_{x}"), "--cfg-options", *_train_options(root, 2)] for x in "ab"],
                          torchrun, []),
        "train_implied": ([["train", str(SEG_CFG), "--work-dir", str(root / "w"), "--cfg-options",
                            *_train_options(root, 2)]] * 2, torchrun, []),
        "train_resume_elsewhere": ([["train", str(SEG_CFG), "--work-dir", str(root / "w"), "--resume", "--cfg-options",
                                     *_train_options(root, 4)]] * 2, torchrun, []),
        "pretrain_resume_elsewhere": ([["pretrain", str(root / "pretrain_tiny.py"), "--work-dir", str(root / "pretrained"),
                                        "--resume", "--no-progress"]] * 2, torchrun, []),
        # starts that every process refused alike (each printed the same error) or one alone (the others waited)
        "train_bad_option": ([train[:2] + ["--work-dir", str(root / "bad_option"), "--launcher", "pytorch",
                                           "--cfg-options", *_train_options(root, 2), "trian_cfg.max_iters=5"]] * 2,
                             torchrun, []),
        "train_bad_root": ([train[:2] + ["--work-dir", str(root / "bad_root"), "--launcher", "pytorch",
                                         "--cfg-options", *_train_options(root, 2),
                                         f"train_dataloader.dataset.root={root / 'nope'}"]] * 2, torchrun, []),
        "train_missing_weights": ([train[:2] + ["--work-dir", str(root / "missing_weights"), "--launcher", "pytorch",
                                                "--cfg-options", *_train_options(root, 2),
                                                f"model.backbone_weights={root / 'nope.safetensors'}"]] * 2,
                                  torchrun, []),
        "train_official_offline": ([["train", str(VITS14_CFG), "--work-dir", str(root / "offline"), "--launcher",
                                     "pytorch", "--cfg-options", *_train_options(root, 2)]] * 2,
                                   [{**env, **offline} for env in torchrun], ["DINOV2_DENSE_WEIGHTS"]),
        "test_official_offline": ([["test", str(VITS14_CFG), str(root / "head.pth"), "--work-dir", str(root / "t"),
                                    "--cfg-options", *_train_options(root, 2)]] * 2,
                                  [{**env, **offline} for env in torchrun], ["DINOV2_DENSE_WEIGHTS"]),
        "test_bad_option": ([["test", str(SEG_CFG), str(root / "missing.pth"), "--work-dir", str(root / "t"),
                              "--cfg-options", *_train_options(root, 2), "tset_cfg.mode=whole"]] * 2, torchrun, []),
        "curate_missing_pool": ([["curate", str(root / "missing_pool.npy")] + curate[2:]] * 2, torchrun, []),
        "curate_missing_names": ([curate + ["--names", str(root / "nonexist.txt")]] * 2, torchrun, []),
        "curate_levels": ([curate + ["--levels", "2", "--clusters", "3"]] * 2, torchrun, []),
        "pretrain_missing_config": ([["pretrain", str(root / "missing.py"), "--work-dir", str(root / "pm"),
                                      "--no-progress"]] * 2, torchrun, []),
        "distill_without_teacher": ([["distill", str(root / "pretrain_tiny.py"), "--work-dir", str(root / "dn"),
                                      "--no-progress"]] * 2, torchrun, []),
        "train_bad_option_on_1": ([train[:2] + ["--work-dir", str(root / "bad_on_1"), "--launcher", "pytorch",
                                                "--cfg-options", *_train_options(root, 2)],
                                   train[:2] + ["--work-dir", str(root / "bad_on_1"), "--launcher", "pytorch",
                                                "--cfg-options", *_train_options(root, 2), "trian_cfg.max_iters=5"]],
                                  torchrun, []),  # before, process 0 waited for process 1 until killed
        "train_ddp": ([train[:2] + ["--work-dir", str(root / "ddp"), "--launcher", "pytorch", "--cfg-options",
                                    *_ddp_options(root / "ade16")]] * 2, torchrun, []),
        "test_out_five": ([["test", str(SEG_CFG), str(root / "ddp" / "iter_20.pth"), "--work-dir", str(root / "t5"),
                            "--out", str(root / "pred5"), "--launcher", "pytorch", "--cfg-options",
                            *_ddp_options(root / "ade5")]] * 2, torchrun, []),
        **{f"kmeans_{init}": ([[str(root / "kmeans.npy"), str(root / f"kmeans_{init}"), init]] * 2, torchrun, [])
           for init in ("kmeans++", "random")},
        "losses": ([[str(root / "losses")]] * 2, torchrun, []),
        "curate_two": ([["curate", str(root / "curate_in" / "pool.npy"), *CURATE_TWO, "--out", str(root / "curate_two"),
                         "--launcher", "pytorch"]] * 2, torchrun, []),
    }
    return cases(table, call={"losses": "tests.test_distributed_start:two_process_losses",
                              **{f"kmeans_{init}": "tests.test_curation:two_process_kmeans"
                                 for init in ("kmeans++", "random")}}, no_checkpoints_on={name: [1] for name in table if name.endswith("_resume_elsewhere")})


@pytest.fixture(scope="module")
def launched(data, tmp_path_factory):
    """Two processes run every case; {case: [(exit code, output) of process 0, of process 1]}."""
    return shared_once(tmp_path_factory, "dist_start_launch", lambda folder: launch(folder, _cases(data)))


def _case(launched, name: str):
    if name not in launched:
        pytest.skip(f"DIST_START_ONLY leaves out {name}")
    return launched[name]


def _lines(output: str, prog: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(prog)]


def test_the_start_helpers_between_two_processes(launched):
    (rc0, out0), (rc1, out1) = _case(launched, "api")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    for out in (out0, out1):
        assert "same: passed" in out
        assert ("differ: api: the 2 processes of this run were given different settings: n.0.k: 0 in process 0, "
                "1 in process 1; start every process") in out  # "own" is ignored
        assert "shared: [PosixPath('p0')]" in out
    assert "own error: data/x: no such folder" in out1  # the process that failed says why
    assert "refused: stopped: process 1 refused the start (data/x: no such folder)" in out0


def test_test_under_torchrun_without_launcher_is_distributed_and_process_0_refuses_for_all(launched):
    (rc0, out0), (rc1, out1) = _case(launched, "test_implied")
    assert rc0 == rc1 == 2, (out0[-2000:], out1[-2000:])
    assert out0.count("note: torchrun started 2 processes: the test is distributed over them, as with "
                      "--launcher pytorch") == 1
    assert "note: torchrun" not in out1
    said = _lines(out0, "dinov2-dense test:")
    assert len(said) == 1 and said[0].startswith("dinov2-dense test: error: "), said
    assert "missing.pth: no such checkpoint file" in said[0]
    said = _lines(out1, "dinov2-dense test:")
    assert len(said) == 1 and said[0].startswith("dinov2-dense test: stopped: process 0 refused the start (")
    assert "missing.pth: no such checkpoint file" in said[0]


@pytest.mark.parametrize("name", ["train_refused", "slurm_refused"])
def test_a_train_start_refused_by_process_0_stops_the_other_at_once(launched, name):
    """Process 0 refuses the work dir (another run's checkpoints): process 1, which went on to build the
    runner and waited in the process group's start (deaf to torchrun's SIGTERM, killed 30 s later), stops
    with it. With --launcher slurm, Slurm's variables make the group (RANK was not set: each process
    thought it was process 0)."""
    (rc0, out0), (rc1, out1) = _case(launched, name)
    assert rc0 == 2 and rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    said0 = _lines(out0, "dinov2-dense train:")
    assert len(said0) == 1 and "holds the checkpoints of another run (iter_4.pth)" in said0[0], said0
    said1 = _lines(out1, "dinov2-dense train:")
    assert len(said1) == 1 and said1[0].startswith("dinov2-dense train: stopped: process 0 refused the start ("), said1
    assert "holds the checkpoints of another run" in said1[0]


def test_train_processes_given_other_options_all_refuse_naming_the_key(launched, data):
    (rc0, out0), (rc1, out1) = _case(launched, "train_mismatch")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    for out in (out0, out1):
        said = _lines(out, "dinov2-dense train:")
        assert len(said) == 1, out[-1500:]
        assert "the 2 processes of this run were given different settings" in said[0]
        assert "train_cfg.max_iters: 2 in process 0, 3 in process 1" in said[0]
    assert not list((data / "m").glob("*.pth"))


def test_test_processes_given_other_files_refuse_naming_the_options(launched, data):
    """They named the config keys that the options set (load_from, custom_hooks.2.out_dir), which the user never
    typed, and the list of inputs --out may not hold, derived from those."""
    (rc0, out0), (rc1, out1) = _case(launched, "test_mismatch")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    a, b = data / "a.pth", data / "b.pth"
    for out in (out0, out1):
        said = _lines(out, "dinov2-dense test:")
        assert said == [f"dinov2-dense test: error: {SEG_CFG}: the 2 processes of this run were given different "
                        f"settings: --out: '{data / 'pred_a'}' in process 0, '{data / 'pred_b'}' in process 1; the "
                        f"checkpoint: '{a}' in process 0, '{b}' in process 1; start every process with the same "
                        "command and config"], out[-1500:]
    assert not (data / "pred_a").exists() and not (data / "pred_b").exists()


def test_curate_processes_given_another_seed_all_refuse_naming_it(launched, data):
    """(They ran, and the result mixed the two runs' clusters.)"""
    (rc0, out0), (rc1, out1) = _case(launched, "curate_mismatch")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    for out in (out0, out1):
        said = _lines(out, "dinov2-dense curate:")
        assert said == ["dinov2-dense curate: error: the 2 processes of this run were given different settings: "
                        "--seed: 0 in process 0, 1 in process 1; start every process with the same command and "
                        "options"], out[-1500:]
    assert not (data / "curated" / "selected.txt").exists()
    assert "note: torchrun started 2 processes: the curation is distributed" in out0  # without --launcher


def test_train_under_torchrun_without_launcher_runs_one_distributed_run(launched, data):
    (rc0, out0), (rc1, out1) = _case(launched, "train_implied")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    assert "Distributed training: True" in out0 and "GPU number: 2" in out0
    assert out0.count("note: torchrun started 2 processes: the training run is distributed over them") == 1
    assert out0.count("Iter(train) [2/2]") == 1 and "Iter(train)" not in out1  # one log, process 0's
    assert sorted(p.name for p in (data / "w").glob("*.pth")) == ["iter_2.pth"]
    # torch's deprecation warning of DDP's broadcast_buffers (printed by every process) is not caused
    assert "broadcast_buffers" not in out0 + out1


def test_the_ddp_wrapper_keeps_buffers_unsynced_without_torchs_deprecation_warning():
    """broadcast_buffers=False (mmengine's choice too) made torch >= 2.13 print a deprecation warning of several
    lines in every process; the buffers stay each process's own, as before."""
    import warnings
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    from dinov2_dense.engine.runner import DenseRunner

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            wrapped = DenseRunner.wrap_model(SimpleNamespace(distributed=True), None, torch.nn.BatchNorm1d(3))
        assert [str(w.message) for w in caught if "broadcast_buffers" in str(w.message)] == []
        assert getattr(wrapped, "forward_sync_buffers", getattr(wrapped, "broadcast_buffers", None)) is False

        # beside an NCCL default group the start's objects go through a gloo group, made once
        from dinov2_dense import distributed

        assert distributed._object_group() is None  # the default group is gloo
        real = dist.get_backend
        try:
            dist.get_backend = lambda group=None: "nccl" if group is None else real(group)
            side = distributed._object_group()
            assert side is not None and real(side) == "gloo" and distributed._object_group() is side
        finally:
            dist.get_backend = real
    finally:
        dist.destroy_process_group()


def test_on_cuda_the_group_is_started_as_mmengine_would_only_earlier(monkeypatch):
    """(No GPU here: torch.cuda and mmengine's init_dist are stand-ins.) mmengine's own start, after its
    multiprocessing settings, with the config's dist_cfg; LOCAL_RANK set for a start by hand."""
    import mmengine.dist
    import mmengine.utils.dl_utils
    import torch

    from dinov2_dense.engine.runner import start_process_group

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(mmengine.utils.dl_utils, "set_multi_processing", lambda **kw: calls.append(("mp", kw)))
    monkeypatch.setattr(mmengine.dist, "init_dist", lambda launcher, **kw: calls.append((launcher, kw)))
    for key, value in dict(RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LOCAL_RANK", "")  # (so that the value set here is removed afterwards)
    monkeypatch.delenv("LOCAL_RANK")
    assert start_process_group("pytorch", dict(dist_cfg=dict(backend="nccl", timeout=60),
                                               mp_cfg=dict(mp_start_method="fork"))) is True
    assert calls == [("mp", dict(mp_start_method="fork", distributed=True)),
                     ("pytorch", dict(backend="nccl", timeout=60))]
    assert os.environ["LOCAL_RANK"] == "0"
    # mmengine's slurm start reads SLURM_NODELIST (srun sets it): its absence is named, not a KeyError
    calls.clear()
    for key, value in dict(SLURM_PROCID="0", SLURM_NTASKS="2", MASTER_ADDR="127.0.0.1").items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_NODELIST", raising=False)
    with pytest.raises(ValueError, match=r"--launcher slurm: .*\(SLURM_NODELIST is not set\)"):
        start_process_group("slurm", dict(dist_cfg=dict(backend="nccl")))
    assert calls == []


@pytest.mark.parametrize("launcher, missing", [
    ("slurm", "start the command with srun, in a Slurm allocation (SLURM_PROCID and SLURM_NTASKS are not set)"),
    ("mpi", "start the command with Open MPI's mpirun (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE and "
            "OMPI_COMM_WORLD_LOCAL_RANK are not set)"),
    ("pytorch", "start the command with torchrun (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are not set)"),
])
def test_a_launcher_without_its_variables_is_named_with_them(launcher, missing, data, tmp_path, monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert main(["train", str(SEG_CFG), "--work-dir", str(tmp_path / "w"), "--launcher", launcher,
                 "--cfg-options", *_train_options(data, 2)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"dinov2-dense train: error: --launcher {launcher}: {missing}"
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", [
    ["features", "../in/a.png", "--weights", "random", "--out", "f.npy"],
    ["knn", "../in", "--weights", "random", "--out", "knn.json"],
    ["pca", "../in/a.png", "--weights", "random", "--out", "pca"],
])
def test_commands_without_a_distributed_mode_refuse_torchrun_before_loading_a_model(command, tmp_path, monkeypatch,
                                                                                    capsys):
    """Each process would run the whole command and write the same files."""
    from PIL import Image

    import dinov2_dense.cli as cli

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("a", "b"):  # an image; for knn, a folder of two classes
        (tmp_path / "in" / name).mkdir(parents=True)
        Image.new("RGB", (28, 28), (40, 90, 200)).save(tmp_path / "in" / name / "x.png")
    Image.new("RGB", (28, 28), (40, 90, 200)).save(tmp_path / "in" / "a.png")
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(cli, "_load_model", no_model)
    monkeypatch.chdir(tmp_path / "run")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dinov2-dense {command[0]}: error: runs in one process, and torchrun started 2 (WORLD_SIZE): each "
                   f"would do the whole work and write the same files; start `dinov2-dense {command[0]}` without "
                   "torchrun")
    assert list((tmp_path / "run").iterdir()) == []


def test_settings_compare_as_text_that_is_the_same_in_every_process():
    from dinov2_dense.distributed import flatten

    class Thing:
        pass

    flat = flatten({"hooks": [dict(type="A", n=1)], "fn": flatten, "obj": Thing(), "s": {"b", "a"}, "e": {},
                    "plain": [1, 2]})
    assert flat == {"hooks.0.type": "'A'", "hooks.0.n": "1", "fn": "dinov2_dense.distributed.flatten",
                    "obj": flat["obj"], "s": "{'a', 'b'}", "e": "{}", "plain": "[1, 2]"}
    assert " at 0x" not in flat["obj"] and "Thing object" in flat["obj"]


def test_the_mmseg_converter_under_torchrun_refuses_instead_of_crashing(tmp_path, monkeypatch, capsys):
    """The converter is a tool of its own (no `command` in its arguments): under torchrun it is refused
    as the one-process commands are, naming itself, and nothing is written."""
    from dinov2_dense.mmseg.convert import main as convert

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert convert(["to-mmseg", str(tmp_path / "head.pth"), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("start `python -m dinov2_dense.mmseg.convert to-mmseg` without torchrun"), err
    assert err.count("\n") == 0 and list(tmp_path.iterdir()) == []


OFFLINE_SAID = ("weights for dinov2_vits14 (dinov2_vits14_pretrain.pth) not found, and DINOV2_DENSE_OFFLINE is set. "
                "Looked in: ")
#: case: (command, what the refusal says, the output it would have made: refused before it was; None: not checked)
REFUSED_BY_EVERY_PROCESS = {
    "train_bad_option": ("train", f"--cfg-options trian_cfg.max_iters: {SEG_CFG} has no section 'trian_cfg' (did you "
                                  "mean train_cfg.max_iters?)", "bad_option"),
    # (the runner is built, its log folder made by every process; the data set then fails, and the folder goes:
    # no process makes it before all have looked whether it was there before them)
    "train_bad_root": ("train", "nope': no such folder (give the data set's folder: --cfg-options "
                                "train_dataloader.dataset.root=DIR)", "bad_root"),
    # (each process printed the weights loader's error while the runner was built)
    "train_missing_weights": ("train", "model.backbone_weights = '", "missing_weights"),
    "train_official_offline": ("train", OFFLINE_SAID, "offline"),
    "test_official_offline": ("test", OFFLINE_SAID, None),
    "test_bad_option": ("test", f"--cfg-options tset_cfg.mode: {SEG_CFG} has no section 'tset_cfg' (did you mean "
                                "test_cfg.mode?)", None),  # (its work dir holds other cases' logs)
    "curate_missing_pool": ("curate", "missing_pool.npy: no such file", "curated"),
    "curate_missing_names": ("curate", "nonexist.txt: no such names file", "curated"),
    "curate_levels": ("curate", "--levels 2 and --clusters 3 (1 level) disagree: --clusters gives one count a level",
                      "curated"),
    "pretrain_missing_config": ("pretrain", "missing.py: no such config file", "pm"),
    "distill_without_teacher": ("distill", "pretrain_tiny.py: distill.teacher is not set; give --teacher", "dn"),
}


@pytest.mark.parametrize("name", list(REFUSED_BY_EVERY_PROCESS))
def test_a_start_that_every_process_refuses_is_said_once_and_the_others_stop(launched, data, name):
    """A mistyped --cfg-options key, a config, data root or curation input that is not there: every process
    refused it before (the config before the process group was up, the data when the runner built it, curate's
    options and inputs on their own), each printing the same error. As any refused start, it is said by the
    first process (process 0) and the others stop, naming it; nothing is written."""
    command, said, written = REFUSED_BY_EVERY_PROCESS[name]
    (rc0, out0), (rc1, out1) = _case(launched, name)
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    prog = f"dinov2-dense {command}:"
    said0, said1 = _lines(out0, prog), _lines(out1, prog)
    assert len(said0) == 1 and said0[0].startswith(f"{prog} error: ") and said in said0[0], said0
    reason = said0[0][len(f"{prog} error: "):]
    if len(reason) > SAID_LENGTH:  # the others name a long one by its start
        reason = reason[:SAID_LENGTH - 3].rstrip() + "..."
    assert said1 == [f"{prog} stopped: process 0 refused the start ({reason})"], said1
    assert "Traceback" not in out0 + out1
    assert written is None or not (data / written).exists()


def test_a_config_that_one_train_process_refuses_stops_the_others(launched, data):
    """A typo in one machine's --cfg-options: that process refused its config before the process group was up,
    and process 0 waited for it in the group's start until it was killed (torchrun's 30 s after a SIGTERM it
    ignored there; started by hand, on several machines, for the group's timeout). As for pretrain, the process
    that refused says why and the others stop with it."""
    (rc0, out0), (rc1, out1) = _case(launched, "train_bad_option_on_1")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    said0, said1 = _lines(out0, "dinov2-dense train:"), _lines(out1, "dinov2-dense train:")
    reason = (f"--cfg-options trian_cfg.max_iters: {SEG_CFG} has no section 'trian_cfg' (did you mean "
              "train_cfg.max_iters?)")
    assert said1 == [f"dinov2-dense train: error: {reason}"], said1
    assert said0 == [f"dinov2-dense train: stopped: process 1 refused the start ({reason})"], said0
    assert not (data / "bad_on_1").exists()


@pytest.mark.parametrize("command", ["pretrain", "train"])
def test_processes_that_would_resume_from_other_checkpoints_all_refuse(launched, data, command):
    """Only process 0 writes checkpoints: on machines that do not share the work dir, --resume found none on
    the others, which started again at iteration 0 beside process 0 at its checkpoint's."""
    (rc0, out0), (rc1, out1) = _case(launched, f"{command}_resume_elsewhere")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    name, run = ("checkpoint_0000002.pth", data / "pretrained") if command == "pretrain" else ("iter_2.pth", data / "w")
    for out in (out0, out1):
        said = _lines(out, f"dinov2-dense {command}:")
        assert len(said) == 1, out[-1500:]
        assert (f"given different settings: --resume.checkpoint: '{name}' in process 0, None in process 1; "
                "--resume.iteration: 2 in process 0, 0 in process 1; start every process with the same "
                "checkpoints: a work dir that every machine reads") in said[0], said
    assert sorted(p.name for p in run.glob("*.pth")) == [name]


def test_a_curation_whose_images_process_0_cannot_read_stops_every_process(launched, data):
    """Process 0 embeds while the others wait: with no image it could read, the others stopped when its exit
    broke their barrier, saying only "another process of this distributed run failed (its error is above)"
    (above on another machine's screen, for a run over several); they now say why."""
    (rc0, out0), (rc1, out1) = _case(launched, "curate_unreadable")
    assert rc0 == rc1 == 2, (rc0, rc1, out0[-1500:], out1[-1500:])
    said0, said1 = _lines(out0, "dinov2-dense curate:"), _lines(out1, "dinov2-dense curate:")
    assert len(said0) == 1 and "none of the 2 images could be read" in said0[0] and "gone_0.png" in said0[0], said0
    assert len(said1) == 1 and said1[0].startswith("dinov2-dense curate: stopped: process 0 refused the start "
                                                   "(none of the 2 images could be read"), said1
    assert not (data / "curated_gone").exists()


def test_a_process_whose_peer_ended_says_where_its_reason_is(monkeypatch, capsys):
    """A peer killed (kill -9, out of memory) prints no error: the survivor pointed at an error "above" that was
    not there. It now says where to look for each case, in one line with exit code 2 (no traceback)."""
    import argparse

    import torch.distributed as dist

    from dinov2_dense import cli

    def broken(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:1")

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        code = cli.run_command(argparse.Namespace(command="train", func=broken), "dinov2-dense", debug=False)
    finally:
        dist.destroy_process_group()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert err.strip() == ("dinov2-dense: stopped: another process of this distributed run ended (its error is above "
                           "where it printed one; torchrun's summary names a process that was killed)")


def test_a_head_trained_on_two_processes_is_tested_as_it_was_validated(launched, data, capsys):
    """Two CPU processes train one head; `test` of the checkpoint reports the run's own validation (each
    process's BatchNorm statistics were its own, and the checkpoint held process 0's: other metrics)."""
    import ast
    import re

    (rc0, out0), (rc1, out1) = _case(launched, "train_ddp")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    text = out0 + out1
    assert "Distributed launcher: pytorch" in text and "Distributed training: True" in text
    assert "GPU number: 2" in text  # mmengine's name for the world size
    # mmengine's thread-count warning, the same in each process, is said once (it was said by both)
    assert text.count("Setting MKL_NUM_THREADS environment variable for each process") == 1, text[-3000:]
    assert "Iter(val) [8/8]" in out0  # the 16 validation images split over 2 processes
    checkpoint = data / "ddp" / "iter_20.pth"
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]
    assert (meta["world_size"], meta["train_batch_size"]) == (2, 4)  # what a resume on another count compares
    validated = float(re.findall(r"Iter\(val\) \[8/8\].*?mIoU: ([0-9.]+)", out0)[-1])
    capsys.readouterr()
    assert main(["test", str(SEG_CFG), str(checkpoint), "--work-dir", str(data / "t1"),
                 "--cfg-options", *_ddp_options(data / "ade16")]) == 0
    tested = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])
    assert tested["mIoU"] == pytest.approx(validated, abs=1e-4), (tested["mIoU"], validated)


def test_test_out_under_two_processes_counts_each_file_once(launched, data):
    """5 test images over 2 processes: the sampler repeats one to give each 3; the files and the count
    are 5 (it said 6)."""
    (rc0, out0), (rc1, out1) = _case(launched, "test_out_five")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    pred = data / "pred5"
    assert len(list((pred / "masks").rglob("*.png"))) == 5
    assert f"saved 5 label masks under {pred / 'masks'}, coloured under {pred / 'colour'}" in out0 + out1
    metrics = [line for line in (out0 + out1).splitlines() if line.startswith("{") and "'mIoU':" in line]
    assert len(metrics) == 1, out0[-2000:]  # the metrics line once, not once a process


def two_process_losses(out: str) -> int:
    """One process's losses as DenseModel parses them for the log (tests.twoproc's driver runs it in each)."""
    import json

    import torch.distributed as dist

    from dinov2_dense.engine.model import DenseModel

    dist.init_process_group("gloo")
    try:
        rank = dist.get_rank()
        losses = {"loss_ce": torch.tensor([1.0, 3.0]) * (rank + 1), "acc": torch.tensor(10.0 * rank)}
        loss, logged = DenseModel.parse_losses(object.__new__(DenseModel), losses)  # (no module state used)
        Path(f"{out}_{rank}.json").write_text(json.dumps({"loss": loss.item(),
                                                          "logged": {k: v.item() for k, v in logged.items()}}))
    finally:
        dist.destroy_process_group()
    return 0


def test_a_distributed_training_logs_the_losses_of_all_processes(launched, data):
    """mmengine logged process 0's loss, that of its part of the batch (a reviewer's 2-process run: 0.3514 where
    the processes' mean, and one process on the whole batch, gave 0.3362); the log now holds their mean, as
    mmseg 0.x logged it. The loss each process optimises stays its own."""
    import json

    (rc0, out0), (rc1, out1) = _case(launched, "losses")
    assert rc0 == rc1 == 0, (out0[-2000:], out1[-2000:])
    got = [json.loads((data / f"losses_{rank}.json").read_text()) for rank in (0, 1)]
    assert [g["loss"] for g in got] == [2.0, 4.0]  # the mean of [1, 3] x (rank + 1)
    assert all(g["logged"] == {"loss": 3.0, "loss_ce": 3.0, "acc": 5.0} for g in got), got
