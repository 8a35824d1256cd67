"""The pretraining loop end to end on tiny models: export and reload, kill -9 and resume, continued
pretraining with the monitor, distillation, and bad input. (Two processes: test_pretrain_distributed_start.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dinov2_dense import load_backbone
from pretrain.train import TrainingDiverged, checkpoint_files, pretrain

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
HEAD = dict(head_n_prototypes=64, head_bottleneck_dim=16, head_hidden_dim=32)


def tiny(iters: int = 4, **sections) -> dict:
    """A 32-wide, 2-block ViT/14 on 28-pixel crops of synthetic scenes, ``iters`` iterations."""
    cfg = dict(
        student=dict(arch="custom", embed_dim=32, depth=2, num_heads=2, drop_path_rate=0.1, layerscale=1.0),
        dino=dict(HEAD), ibot=dict(HEAD),
        crops=dict(global_crops_size=28, local_crops_size=14, local_crops_number=2),
        train=dict(batch_size_per_gpu=4, num_workers=0, OFFICIAL_EPOCH_LENGTH=iters, checkpoint_period=2, log_freq=1,
                   dataset=dict(type="synthetic", num_scenes=48, config=dict(size=(56, 56)))),
        optim=dict(epochs=1, warmup_epochs=0, freeze_last_layer_epochs=0),
        teacher=dict(warmup_teacher_temp_epochs=0),
        compute=dict(precision="fp32"),
        monitor=dict(period=0),
    )
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def _py_config(path: Path, cfg: dict) -> Path:
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in cfg.items()))
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny run of 6 iterations: its work dir and result."""
    work = tmp_path_factory.mktemp("pretrain") / "run"
    result = pretrain(tiny(6), work, progress=False)
    return work, result


def test_export_loads_strictly_and_reproduces_the_teacher(pretrained):
    work, result = pretrained
    assert result["iterations"] == 6 and set(result["export"]) == {"pth", "safetensors", "json"}
    ckpt = torch.load(checkpoint_files(work)[0], map_location="cpu", weights_only=True)
    assert ckpt["iteration"] == 6
    teacher = {k[len("teacher.backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("teacher.backbone.")}
    x = torch.randn(2, 3, 42, 56)
    outputs = []
    for arch, weights in ((None, result["export"]["safetensors"]), (result["export"]["json"], result["export"]["pth"]),
                          (None, checkpoint_files(work)[0])):  # the training checkpoint reads like an official one
        model = load_backbone(arch, weights=weights)
        assert set(model.state_dict()) == set(teacher)
        assert all(torch.equal(model.state_dict()[k], v) for k, v in teacher.items())
        outputs.append(model.forward_features(x)["x_norm_patchtokens"])
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    lines = [json.loads(l) for l in (work / "training_metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == list(range(1, 7))
    assert {"dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss", "images_per_s", "eta_s"} <= \
        set(lines[-1])
    assert len(checkpoint_files(work)) == 3  # checkpoints at 2, 4, 6 (max_to_keep 3)
    assert (work / "training_curves.png").stat().st_size > 10_000  # the loss curves, redrawn at each checkpoint


def test_kill_minus_nine_then_resume_ends_at_the_planned_iteration(tmp_path):
    cfg = _py_config(tmp_path / "tiny.py", tiny(60, train=dict(checkpoint_period=10, log_freq=10)))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "dinov2_dense.cli", "pretrain", str(cfg), "--work-dir", str(work)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not checkpoint_files(work):
        time.sleep(0.05)
    time.sleep(0.2)  # somewhere in the run, maybe in the middle of a save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = checkpoint_files(work)
    assert saved, "killed before the first checkpoint"
    killed_at = torch.load(saved[0], weights_only=True)["iteration"]
    assert killed_at < 60
    out = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"(iteration {killed_at})" in out.stderr
    assert torch.load(checkpoint_files(work)[0], weights_only=True)["iteration"] == 60
    assert (work / "export" / "backbone.safetensors").is_file()
    lines = [json.loads(l) for l in (work / "training_metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == list(range(10, 61, 10))  # logged after the checkpoint: not twice


def test_continued_pretraining_warms_the_heads_up_and_monitors(pretrained, tmp_path):
    work, result = pretrained
    start = load_backbone(None, weights=result["export"]["safetensors"])
    cfg = tiny(6, student=dict(pretrained_weights=result["export"]["safetensors"]),
               optim=dict(freeze_backbone_iters=4, backbone_lr_mult=0.1),
               monitor=dict(period=2, images=("skimage:coffee",), pca_size=56, probe_size=56, probe_scenes=(8, 4),
                            knn_scenes=(30, 20)))
    out = tmp_path / "continued"
    # sizes the weights do not have would be recorded in config.json but not trained: refused, nothing written
    wider = tiny(6, student=dict(pretrained_weights=result["export"]["safetensors"], embed_dim=64))
    with pytest.raises(ValueError, match=r"student.embed_dim = 64, but student.pretrained_weights=.* has embed_dim 32"):
        pretrain(wider, out, progress=False)
    for student, said in ((dict(num_register_tokens=4), r"student.num_register_tokens = 4, .* has num_register_tokens 0"),
                          (dict(qkv_bias=False), r"student.qkv_bias = False, .* has qkv_bias True"),
                          (dict(arch="vit_small"), r"student.arch = 'vit_small' has embed_dim 384, .* has embed_dim 32")):
        with pytest.raises(ValueError, match=said):
            pretrain(tiny(6, student=dict(pretrained_weights=result["export"]["safetensors"], **student)), out,
                     progress=False)
    assert not (out / "config.json").exists()
    pretrain(cfg, out, progress=False)
    records = [json.loads(l) for l in (out / "monitor" / "monitor.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2, 4, 6]
    assert (out / "monitor" / "pca_0000002.png").is_file() and (out / "monitor" / "pca_0000006.png").is_file()
    from pretrain.monitor import dense_quality, scene_set

    probe = (scene_set(8, 56, "train", 1), scene_set(4, 56, "val", 1))
    knn = (scene_set(30, 56, "train", 2), scene_set(20, 56, "val", 2))
    before = dense_quality(start, probe, knn, 5)["knn_top1"]
    assert abs(records[0]["knn_top1"] - before) <= 2 and abs(records[1]["knn_top1"] - before) <= 2  # frozen: no collapse
    ckpt = torch.load(checkpoint_files(out)[-1], weights_only=True)  # the oldest kept: iteration 2, still frozen
    assert ckpt["iteration"] == 2
    frozen = {k[len("student.backbone."):]: v for k, v in ckpt["model"].items() if k.startswith("student.backbone.")}
    assert all(torch.equal(frozen[k], v) for k, v in start.state_dict().items())
    logged = [json.loads(l) for l in (out / "training_metrics.jsonl").read_text().splitlines()]
    assert [r["backbone_lr"] for r in logged[:4]] == [0.0] * 4  # iterations 1-4: frozen
    assert [r["backbone_lr"] for r in logged[4:]] == pytest.approx([0.1 * r["lr"] for r in logged[4:]])


def test_distillation_students_move_towards_the_teacher(pretrained, tmp_path):
    work, result = pretrained
    from pretrain.distill import feature_distance
    from pretrain.monitor import scene_set

    cfg = tiny(12, distill=dict(teacher=result["export"]["safetensors"], teacher_head=str(work),
                                students=[dict(embed_dim=16, depth=1, num_heads=1), dict(embed_dim=24, depth=2)]),
               optim=dict(base_lr=0.02))
    out = tmp_path / "distill"
    res = pretrain(cfg, out, progress=False)
    assert set(res["export"]) == {"student0", "student1"}
    # the run folder as teacher_head: its newest checkpoint's trained head is the frozen target head
    head = lambda path: {k: v for k, v in torch.load(path, weights_only=True)["model"].items()  # noqa: E731
                         if k.startswith("teacher.dino_head.")}
    source, used = head(checkpoint_files(work)[0]), head(checkpoint_files(out)[0])
    assert source and source.keys() == used.keys() and all(torch.equal(source[k], used[k]) for k in source)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="without checkpoint"):
        pretrain({**cfg, "distill": {**cfg["distill"], "teacher_head": str(tmp_path / "empty")}}, tmp_path / "e",
                 progress=False)
    teacher = load_backbone(None, weights=result["export"]["safetensors"])
    images = scene_set(64, 28, "val", 5)[0]
    torch.manual_seed(0)
    from pretrain.meta_arch import build_backbone

    for i, section in enumerate(cfg["distill"]["students"]):
        student = load_backbone(None, weights=res["export"][f"student{i}"]["safetensors"])
        init = build_backbone({**tiny()["student"], **section, "drop_path_rate": 0.0, "patch_size": 14,
                               "layerscale": 1e-5, "ffn_layer": "mlp", "drop_path_uniform": True}, 28, False).eval()
        assert feature_distance(student, teacher, images) < feature_distance(init, teacher, images), i


def test_distill_command_exports_each_student_and_needs_a_teacher(pretrained, tmp_path, capsys):
    from dinov2_dense.cli import main

    work, result = pretrained
    cfg = _py_config(tmp_path / "d.py", tiny(2, distill=dict(students=[dict(embed_dim=16, num_heads=1)])))
    assert main(["distill", str(cfg), "--work-dir", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "distill.teacher is not set" in capsys.readouterr().err and not (tmp_path / "none").exists()

    out = tmp_path / "d"
    assert main(["distill", str(cfg), "--work-dir", str(out), "--no-progress", "--teacher",
                 result["export"]["safetensors"], "--teacher-head", str(work)]) == 0
    printed = capsys.readouterr().out
    assert f"exported student0: {out / 'export' / 'student0.safetensors'}" in printed
    # the summary names the command, and the rate is the command's mean (it was the last log interval's)
    assert "distillation: {'iteration'" in printed and "pretraining:" not in printed, printed
    assert re.search(r"^[0-9.]+ images/s over this command's iterations", printed, re.M), printed
    student = load_backbone(None, weights=out / "export" / "student0.safetensors")
    assert student.embed_dim == 16

    # a teacher head that is not a checkpoint, or one of other sizes than the config's: one line, exit 2
    common = ["--no-progress", "--teacher", result["export"]["safetensors"]]
    assert main(["distill", str(cfg), "--work-dir", str(tmp_path / "h1"), *common, "--teacher-head",
                 str(work / "config.json")]) == 2
    err = capsys.readouterr().err
    assert "distill.teacher_head=" in err and "not a readable pretraining checkpoint" in err and "Traceback" not in err
    other = _py_config(tmp_path / "o.py", tiny(2, distill=dict(students=[dict(embed_dim=16, num_heads=1)]),
                                              dino=dict(HEAD, head_n_prototypes=HEAD["head_n_prototypes"] * 2)))
    assert main(["distill", str(other), "--work-dir", str(tmp_path / "h2"), *common, "--teacher-head", str(work)]) == 2
    err = capsys.readouterr().err
    assert "its DINO head does not fit" in err and "keys of other shapes" in err and "Traceback" not in err


def test_resuming_with_another_architecture_names_the_checkpoint(tmp_path, capsys):
    from dinov2_dense.cli import main

    work = tmp_path / "w"
    assert main(["pretrain", str(_py_config(tmp_path / "a.py", tiny(4))), "--work-dir", str(work), "--no-progress",
                 "--max-iters", "2"]) == 0
    files = {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"}
    wider = _py_config(tmp_path / "b.py", tiny(4, student=dict(embed_dim=64)))
    assert main(["pretrain", str(wider), "--work-dir", str(work), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_0000002.pth: the checkpoint does not fit this config's model" in err and "config.json" in err
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"} == files


def test_bad_input_fails_at_start_or_is_skipped(tmp_path, capsys, monkeypatch):
    from dinov2_dense.cli import main

    bad = _py_config(tmp_path / "bad.py", tiny(2, optim=dict(warmup_epoch=1)))
    assert main(["pretrain", str(bad), "--work-dir", str(tmp_path / "w")]) == 2
    assert "optim.warmup_epoch" in capsys.readouterr().err and not (tmp_path / "w").exists()
    arch = _py_config(tmp_path / "arch.py", tiny(2, student=dict(arch="vit_gigantic")))
    assert main(["pretrain", str(arch), "--work-dir", str(tmp_path / "w")]) == 2
    assert "student.arch='vit_gigantic'" in capsys.readouterr().err
    # the monitor's scenes are drawn at its first check, but its settings are checked at the start
    look = _py_config(tmp_path / "look.py", tiny(2, monitor=dict(period=100, appearance="stripes")))
    assert main(["pretrain", str(look), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "appearance = 'stripes'" in err and "Traceback" not in err and not checkpoint_files(tmp_path / "w")
    # a monitor image that is not there, or a device this machine lacks: refused before anything is written
    missing = _py_config(tmp_path / "m.py", tiny(2, monitor=dict(period=100, images=[str(tmp_path / "no.png")])))
    assert main(["pretrain", str(missing), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "monitor.images: " in err and "no.png" in err and not (tmp_path / "w" / "config.json").exists()
    if not torch.cuda.is_available():
        gpu = _py_config(tmp_path / "g.py", tiny(2, compute=dict(device="cuda")))
        assert main(["pretrain", str(gpu), "--work-dir", str(tmp_path / "w")]) == 2
        err = capsys.readouterr().err
        assert "compute.device cuda: no CUDA device" in err and "compute.device=cpu" in err

    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    res = pretrain(tiny(2, train=dict(dataset=dict(type="folder", root=str(folder)))), tmp_path / "f", progress=False)
    assert [Path(p).name for p in res["skipped_images"]] == ["broken.png"]
    assert "unreadable image" in capsys.readouterr().err

    # a diverging run stops before writing: the last good checkpoint stays as it was
    work = tmp_path / "nan"
    pretrain(tiny(2), work, progress=False)
    good = checkpoint_files(work)[0].read_bytes()
    import pretrain.meta_arch as meta

    real = meta.SSLMetaArch.forward_backward

    def nan_after_first(self, *a, **k):
        out = real(self, *a, **k)
        return {key: v * float("nan") for key, v in out.items()}

    monkeypatch.setattr(meta.SSLMetaArch, "forward_backward", nan_after_first)
    with pytest.raises(TrainingDiverged, match="at iteration 3 "):  # counted as the log and checkpoints count
        pretrain(tiny(4), work, resume=True, progress=False)
    assert checkpoint_files(work)[0].read_bytes() == good and len(checkpoint_files(work)) == 1
    logged = [json.loads(line)["iteration"] for line in (work / "training_metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2]  # the iterations before the one named


def test_a_uniform_teacher_is_logged_and_named_once(tmp_path, monkeypatch, capsys):
    """A teacher temperature far above the spread of the head's outputs makes the targets uniform
    (the silent failure of small runs): the entropies are logged near 1 and the run says so once;
    a low temperature gives peaked targets and no warning. The total counts the losses only."""
    import pretrain.train as train_mod

    monkeypatch.setattr(train_mod, "UNIFORM_TEACHER_WINDOW", 3)
    hot = dict(warmup_teacher_temp=50.0, teacher_temp=50.0)
    pretrain(tiny(8, teacher=hot), tmp_path / "hot", progress=False)
    err = capsys.readouterr().err
    assert err.count("targets have been uniform") == 1 and "teacher.teacher_temp" in err and "(50)" in err
    lines = [json.loads(l) for l in (tmp_path / "hot" / "training_metrics.jsonl").read_text().splitlines()]
    assert all(l["dino_teacher_entropy"] > 0.999 for l in lines)
    ibot = [l["ibot_teacher_entropy"] for l in lines if "ibot_teacher_entropy" in l]  # 2x2 grids: a batch may mask none
    assert ibot and min(ibot) > 0.999
    for l in lines:
        assert l["total_loss"] == pytest.approx(sum(v for k, v in l.items() if k.endswith("_loss") and k != "total_loss"))

    cold = dict(warmup_teacher_temp=0.001, teacher_temp=0.001)
    pretrain(tiny(8, teacher=cold), tmp_path / "cold", progress=False)
    assert "targets have been uniform" not in capsys.readouterr().err
    lines = [json.loads(l) for l in (tmp_path / "cold" / "training_metrics.jsonl").read_text().splitlines()]
    assert max(l["dino_teacher_entropy"] for l in lines) < 0.9


def test_the_uniform_teacher_watch_counts_iterations_in_a_row_after_the_warm_up():
    from pretrain.train import UniformTeacher

    watch = UniformTeacher(after=5, window=3)
    fired = [watch.update(it, e, 0.04) for it, e in [(3, 1.0), (4, 1.0), (5, 1.0), (6, 1.0), (7, 0.5), (8, 1.0),
                                                      (9, 0.995), (10, 1.0), (11, 1.0), (12, 1.0), (13, None)]]
    assert fired == [False] * 7 + [True, False, False, False]  # iterations 8-10 in a row; once only
    assert "iteration 10" in watch.message and "0.04" in watch.message


CONFIGS = sorted((ROOT / "configs" / "pretrain").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_pretrain_configs_resolve(path):
    from mmengine.config import Config

    from pretrain.config import resolve

    cfg = resolve(Config.fromfile(str(path)).to_dict(), str(path))
    assert cfg["student"]["patch_size"] == 14
    assert cfg["crops"]["global_crops_size"] % 14 == 0 and cfg["crops"]["local_crops_size"] % 14 == 0
    if path.stem == "vitl14_imagenet":  # the released vitl14.yaml over ssl_default_config.yaml
        assert (cfg["optim"]["base_lr"], cfg["optim"]["epochs"], cfg["optim"]["warmup_epochs"]) == (2e-4, 500, 80)
        assert (cfg["dino"]["head_n_prototypes"], cfg["teacher"]["momentum_teacher"]) == (131072, 0.994)
        assert cfg["train"]["centering"] == "sinkhorn_knopp" and cfg["ibot"]["separate_head"]
    if path.stem == "vits14_imagenet":
        assert (cfg["optim"]["base_lr"], cfg["optim"]["weight_decay"], cfg["optim"]["weight_decay_end"]) == (0.004, 0.04, 0.4)
        assert cfg["crops"]["local_crops_number"] == 8 and cfg["dino"]["koleo_loss_weight"] == 0.1


def test_tiny_cpu_runs_a_few_iterations(tmp_path):
    from dinov2_dense.cli import main

    rc = main(["pretrain", str(ROOT / "configs/pretrain/tiny_cpu.py"), "--work-dir", str(tmp_path / "tiny"),
               "--max-iters", "2", "--cfg-options", "train.num_workers=0", "train.dataset.0.num_scenes=64"])
    assert rc == 0
    assert torch.load(checkpoint_files(tmp_path / "tiny")[0], weights_only=True)["iteration"] == 2


def test_training_curves_survive_a_log_line_cut_short(tmp_path):
    from pretrain.train import plot_training

    assert plot_training(tmp_path) is None  # no log yet: nothing drawn, no error
    lines = [json.dumps({"iteration": i, "total_loss": 10.0 - i, "dino_local_crops_loss": 5.0, "lr": 1e-3 * i})
             for i in range(1, 4)]
    (tmp_path / "training_metrics.jsonl").write_text("\n".join(lines) + '\n{"iteration": 4, "total_lo')
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "monitor.jsonl").write_text(json.dumps({"iteration": 2, "knn_top1": 55.0}) + "\n")
    path = plot_training(tmp_path)
    assert path == tmp_path / "training_curves.png" and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_knn_command_and_monitor_agree_on_the_same_scenes(pretrained, tmp_path, capsys):
    """`dinov2-dense knn` on image files of the monitor's kNN scenes reports the monitor's kNN top-1,
    for an exported (trained, not init) backbone, and reads its features back from --cache."""
    from PIL import Image

    from dinov2_dense.cli import main
    from dinov2_dense.data.synthetic import SceneConfig, generate_scene, scene_seed
    from pretrain.monitor import dense_quality, scene_set

    work, result = pretrained
    sets = {"train": (40, 2), "val": (20, 2)}
    for split, (n, seed) in sets.items():
        for i in range(n):
            scene = generate_scene(scene_seed(seed, split, i), SceneConfig(size=(56, 56)))
            counts = np.bincount(scene.seg.ravel(), minlength=5)
            counts[0] = 0
            label = int(counts.argmax()) if counts.any() else 0
            (tmp_path / "scenes" / split / f"c{label}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(scene.image).save(tmp_path / "scenes" / split / f"c{label}" / f"{i:03d}.png")
    knn = tuple(scene_set(n, 56, split, seed) for split, (n, seed) in sets.items())
    assert set(knn[1][2]) <= set(knn[0][2])  # every val class has train images
    backbone = load_backbone(None, weights=result["export"]["safetensors"])
    monitor = dense_quality(backbone, (scene_set(4, 56, "train", 1), scene_set(2, 56, "val", 1)), knn, 5)
    cmd = ["knn", str(tmp_path / "scenes"), "--weights", result["export"]["safetensors"], "--size", "56",
           "--no-linear", "--cache", str(tmp_path / "cache")]
    for run in ("first", "cached"):
        assert main(cmd + ["--out", str(tmp_path / f"{run}.json")]) == 0
        top1 = json.loads((tmp_path / f"{run}.json").read_text())["knn"]["top1"]
        assert top1 == pytest.approx(monitor["knn_top1"], abs=1e-6), (run, top1)
    assert 0 < top1 < 100
    assert "read from the cache" in capsys.readouterr().err


def test_overwrite_starts_the_logs_afresh(tmp_path):
    from dinov2_dense.cli import main

    cfg = _py_config(tmp_path / "tiny.py", tiny(4, monitor=dict(period=2, images=("skimage:coffee",), pca_size=28,
                                                                 probe_size=28, probe_scenes=(4, 2),
                                                                 knn_scenes=(6, 4))))
    work = tmp_path / "work"
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress"]) == 0
    before = {p.name: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"}
    assert "backbone.safetensors" in before
    # a start refused for its config, in the CLI or the Python API, deletes nothing of the run it would replace
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--overwrite", "--cfg-options", "optim.warmup_epoch=1"]) == 2
    with pytest.raises(FileExistsError, match="holds the checkpoints of another run"):
        pretrain(tiny(2), work, progress=False)
    assert {p.name: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"} == before
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--overwrite", "--max-iters", "2"]) == 0
    assert not (work / "export").exists()  # the replaced run's export went with its checkpoints
    assert [p.name for p in checkpoint_files(work)] == ["checkpoint_0000002.pth"]
    lines = [json.loads(l) for l in (work / "training_metrics.jsonl").read_text().splitlines()]
    assert [l["iteration"] for l in lines] == [1, 2]  # not the first run's 1..4 before them
    monitor = [json.loads(l) for l in (work / "monitor" / "monitor.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in monitor] == [2]
    assert sorted(p.name for p in (work / "monitor").glob("pca_*.png")) == ["pca_0000002.png"]


def test_blur_and_colour_settings_reach_the_augmentation_and_are_checked(tmp_path, monkeypatch):
    from pretrain.config import ConfigError, resolve
    import pretrain.data as data

    assert tuple(resolve(tiny(2))["crops"]["blur_probabilities"]) == data.PAPER_BLUR_PROBABILITIES
    seen = []
    real = data.DataAugmentationDINO.__init__

    def spy(self, *a, **k):
        seen.append({key: k.get(key) for key in ("blur_probabilities", "color_jitter", "color_jitter_probability",
                                                  "grayscale_probability")})
        real(self, *a, **k)

    monkeypatch.setattr(data.DataAugmentationDINO, "__init__", spy)
    pretrain(tiny(1, crops=dict(blur_probabilities=[0.0, 0.0, 0.25], color_jitter=[0.4, 0.4, 0.7, 0.5],
                                grayscale_probability=0.5)), tmp_path / "w", progress=False)
    assert seen == [dict(blur_probabilities=(0.0, 0.0, 0.25), color_jitter=(0.4, 0.4, 0.7, 0.5),
                         color_jitter_probability=0.8, grayscale_probability=0.5)]
    for bad in ([0.5, 0.5], [0.0, 1.5, 0.5], "none"):
        with pytest.raises(ConfigError, match=r"crops.blur_probabilities = .*three probabilities"):
            resolve(tiny(1, crops=dict(blur_probabilities=bad)))
    for bad in ([0.4, 0.4, 0.2], [0.4, 0.4, 0.2, 0.7], [1.5, 0.4, 0.2, 0.1]):
        with pytest.raises(ConfigError, match=r"crops.color_jitter = .*hue in \[0, 0.5\]"):
            resolve(tiny(1, crops=dict(color_jitter=bad)))
    with pytest.raises(ConfigError, match=r"crops.grayscale_probability = 1.5: a probability"):
        resolve(tiny(1, crops=dict(grayscale_probability=1.5)))


def _cell_batch(cfg: dict, batch: int = 3, seed: int = 0) -> dict:
    """A collated batch of random crops with iBOT masks, for a direct look at one training step."""
    import random

    from pretrain.data.collate import collate_data_and_cast
    from pretrain.data.masking import MaskingGenerator

    g, loc, n_local = cfg["crops"]["global_crops_size"], cfg["crops"]["local_crops_size"], cfg["crops"]["local_crops_number"]
    gen = torch.Generator().manual_seed(seed)
    samples = [({"global_crops": [torch.randn(3, g, g, generator=gen) for _ in range(2)],
                 "local_crops": [torch.randn(3, loc, loc, generator=gen) for _ in range(n_local)]}, None)
               for _ in range(batch)]
    side = g // 14
    random.seed(seed)
    return collate_data_and_cast(samples, (0.1, 0.5), 0.5, torch.float32, n_tokens=side * side,
                                 mask_generator=MaskingGenerator(side, max_num_patches=0.5 * side * side))


def test_cell_loss_trains_each_patch_token_towards_its_own_cell_fed_alone():
    """cell.loss_weight: the teacher's class-token targets of each 14-px cell fed alone, against the
    student's patch token at that cell, by a direct computation (cells cut by loops, one at a time)."""
    import torch.nn.functional as F

    from pretrain.config import ConfigError, resolve
    from pretrain.loss.centering import sinkhorn_knopp
    from pretrain.meta_arch import SSLMetaArch

    cfg = resolve(tiny(cell=dict(loss_weight=0.5), crops=dict(global_crops_size=42),
                       student=dict(drop_path_rate=0.0)))
    torch.manual_seed(0)
    arch = SSLMetaArch(cfg)
    with torch.no_grad():  # a teacher unlike the student, so that the two roles cannot be swapped unseen
        for p in arch.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = _cell_batch(cfg)
    arch.train()
    losses = arch.forward_backward(data, teacher_temp=0.07)
    crops, masks = data["collated_global_crops"], data["collated_masks"]
    side, p = 3, 14
    with torch.no_grad():
        cells = torch.stack([crops[i, :, r * p:(r + 1) * p, c * p:(c + 1) * p]
                             for i in range(len(crops)) for r in range(side) for c in range(side)])
        scores = torch.cat([arch.teacher.dino_head(arch.teacher.backbone.forward_features(x[None])["x_norm_clstoken"])
                            for x in cells])
        targets = sinkhorn_knopp(scores, 0.07, len(scores), 3)
        tokens = arch.student.backbone(crops, masks=masks, is_training=True)["x_norm_patchtokens"].flatten(0, 1)
        log_p = F.log_softmax(arch.student.dino_head(tokens) / 0.1, dim=-1)
    want = -(targets * log_p).sum(-1).mean()
    torch.testing.assert_close(losses["cell_loss"], want, rtol=1e-5, atol=1e-5)
    assert 0 < float(losses["cell_teacher_entropy"]) < 1
    off = SSLMetaArch(resolve(tiny(crops=dict(global_crops_size=42)))).forward_backward(data, teacher_temp=0.07)
    assert "cell_loss" not in off and "cell_teacher_entropy" not in off
    with pytest.raises(ConfigError, match="cell.loss_weight = 1.0: distillation has no cell loss"):
        resolve(tiny(cell=dict(loss_weight=1.0), distill=dict(teacher="dinov2_vits14")))
    with pytest.raises(ConfigError, match="cell.loss_weight = -1"):
        resolve(tiny(cell=dict(loss_weight=-1)))


def test_a_run_with_the_cell_loss_logs_and_draws_it(tmp_path):
    work = tmp_path / "cell"
    pretrain(tiny(2, cell=dict(loss_weight=0.5), crops=dict(global_crops_size=42)), work, progress=False)
    rows = [json.loads(line) for line in (work / "training_metrics.jsonl").read_text().splitlines()]
    assert rows and all("cell_loss" in r and 0 < r["cell_teacher_entropy"] < 1 for r in rows)
    for r in rows:  # the logged total is the sum of the losses, the cell loss among them
        terms = [v for k, v in r.items() if k.endswith("_loss") and k != "total_loss"]
        assert r["total_loss"] == pytest.approx(sum(terms))
    assert (work / "training_curves.png").stat().st_size > 0 and (work / "export" / "backbone.safetensors").is_file()


def test_the_weights_settle_what_the_student_section_leaves_at_its_defaults():
    """Continued pretraining from weights with registers and a SwiGLU FFN, the config naming only the
    weights (the README's form): accepted, and the section (so config.json) then says what is trained;
    a setting the config gives otherwise is refused, naming the value the weights need."""
    from pretrain.config import resolve
    from pretrain.train import _check_loaded_arch
    from tests.conftest import tiny_vit

    weights = tiny_vit(registers=4, ffn="swiglufused", depth=2, dim=48, heads=2)
    section = resolve({"student": {"pretrained_weights": "w.safetensors"}})["student"]
    assert section["arch"] == "vit_large" and section["num_register_tokens"] == 0  # the defaults
    _check_loaded_arch(section, weights)
    assert (section["arch"], section["embed_dim"], section["depth"], section["num_heads"]) == ("custom", 48, 2, 2)
    assert section["num_register_tokens"] == 4 and section["ffn_layer"] == "swiglufused"
    small = resolve({"student": {"pretrained_weights": "w.safetensors", "num_register_tokens": 2}})["student"]
    with pytest.raises(ValueError, match=r"student.num_register_tokens = 2, .* has num_register_tokens 4: .* set "
                                         r"student.num_register_tokens=4 or leave it out"):
        _check_loaded_arch(small, weights)


def _no_figures(monkeypatch) -> None:
    """Checkpoints without the redrawn training_curves.png (about a second each on these CPUs)."""
    import pretrain.train as train_mod

    monkeypatch.setattr(train_mod, "plot_training", lambda work_dir: None)


def test_a_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """8 iterations in one go and 4 + --resume 4, same seed: the same losses and weights. The checkpoint
    once missed its last step's centre update (pending until the next step), and a resume drew other
    crops, masks and drop paths (seeded by the start iteration); now every draw is a function of the
    seed and of the sample's place in the data stream or of the iteration, DataLoader workers or not."""
    _no_figures(monkeypatch)
    cfg = tiny(8, train=dict(batch_size_per_gpu=2, checkpoint_period=4))
    pretrain(cfg, tmp_path / "straight", progress=False)
    pretrain(cfg, tmp_path / "resumed", progress=False, max_iters=4)
    workers = tiny(8, train=dict(batch_size_per_gpu=2, checkpoint_period=4, num_workers=2))
    pretrain(workers, tmp_path / "resumed", progress=False, resume=True)

    def logged(run):
        return [json.loads(l) for l in (tmp_path / run / "training_metrics.jsonl").read_text().splitlines()]

    straight, resumed = logged("straight"), logged("resumed")
    assert [r["iteration"] for r in resumed] == list(range(1, 9))
    assert any("ibot_loss" in r for r in straight[4:])  # masks drawn after the resume
    for a, b in zip(straight, resumed):
        for key in ("total_loss", "dino_local_crops_loss", "dino_global_crops_loss", "koleo_loss", "ibot_loss"):
            assert (key in a) == (key in b) and b.get(key) == pytest.approx(a.get(key), rel=1e-6, abs=1e-7), (a, b)
    for it in (4, 8):
        a, b = (torch.load(tmp_path / run / f"checkpoint_{it:07d}.pth", weights_only=True)["model"]
                for run in ("straight", "resumed"))
        assert a.keys() == b.keys() and "dino_loss.center" in a
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=f"iteration {it}: {k}")


def test_a_resume_without_a_readable_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    """Every checkpoint unreadable: refused with exit 2, naming them, nothing changed (the run once
    started again from iteration 0, trimmed the log and deleted its own new checkpoint). Some unreadable:
    the newest readable one is resumed, and pruning never deletes the checkpoint just written."""
    from dinov2_dense.cli import main

    _no_figures(monkeypatch)
    small = dict(batch_size_per_gpu=2)
    cfg = _py_config(tmp_path / "t.py", tiny(8, train=small))
    work = tmp_path / "w"
    pretrain(tiny(8, train=small), work, progress=False, max_iters=6)
    assert [p.name for p in checkpoint_files(work)] == [f"checkpoint_000000{i}.pth" for i in (6, 4, 2)]
    good = (work / "checkpoint_0000002.pth").read_bytes()
    for path in checkpoint_files(work):
        path.write_bytes(path.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"}
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "none of its 3 checkpoints is readable" in errors[0] and "--overwrite" in errors[0]
    assert all(f"checkpoint_000000{i}.pth" in errors[0] for i in (2, 4, 6))
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"} == before

    (work / "checkpoint_0000002.pth").write_bytes(good)
    pretrain(tiny(8, train=dict(small, max_to_keep=1)), work, progress=False, resume=True, max_iters=4)
    assert "checkpoint_0000006.pth is unreadable; resuming from an older checkpoint" in capsys.readouterr().err
    assert [p.name for p in checkpoint_files(work)] == ["checkpoint_0000006.pth", "checkpoint_0000004.pth"]
    assert torch.load(work / "checkpoint_0000004.pth", weights_only=True)["iteration"] == 4  # the one just written


def test_a_full_disk_while_saving_exits_2_naming_the_file(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as a RuntimeError of its zip writer (an 'internal error', exit 1):
    now one line naming the checkpoint or export file, exit 2, no partial file; --resume then goes on."""
    from dinov2_dense.cli import main

    _no_figures(monkeypatch)
    real = torch.save

    def full_disk(obj, f, *a, **k):  # ``f``: a path, or the open temporary file (exports)
        if fails(Path(getattr(f, "name", f))):
            if hasattr(f, "write"):
                f.write(b"PK\x03\x04 half a zip")
            else:
                Path(f).write_bytes(b"PK\x03\x04 half a zip")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = _py_config(tmp_path / "t.py", tiny(2))
    for run, name, fails in (("a", "checkpoint_0000002.pth", lambda p: p.name.startswith(".checkpoint")),
                             ("b", "export/backbone.pth", lambda p: p.name.startswith(".backbone"))):
        work = tmp_path / run
        assert main(["pretrain", str(cfg), "--work-dir", str(work), "--no-progress"]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "Traceback" not in err and "internal error" not in err, err
        assert f"cannot write {work / name}" in errors[0] and "free some space" in errors[0] and "--resume" in errors[0]
        assert not (work / name).exists() and not [p for p in work.rglob("*") if ".tmp" in p.name]
    assert checkpoint_files(work)  # the export failed after the last checkpoint
    monkeypatch.setattr(torch, "save", real)
    assert main(["pretrain", str(cfg), "--work-dir", str(work), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert (work / "export" / "backbone.pth").is_file() and "pretraining: {'iteration': 2, 'total_loss'" in out.out
    assert "had already ended (iteration 2 of 2)" in out.err  # a resume of an ended run says so, and exports
    # safetensors says it with its own SafetensorError, from its writer (inside the atomic write)
    import safetensors.torch

    import pretrain.export as export_mod

    def safetensors_full(*a, **k):
        raise type("SafetensorError", (Exception,), {})("Error while serializing: I/O error: No space left on device "
                                                        "(os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", safetensors_full)
    backbone = load_backbone(None, weights=work / "export" / "backbone.pth")
    with pytest.raises(OSError, match=r"cannot write .*other/backbone.safetensors: .*free some space.*--resume"):
        export_mod.export_backbone(backbone, tmp_path / "other")


def test_distillation_students_start_from_their_weights_and_keep_their_teacher(pretrained, tmp_path, capsys,
                                                                                monkeypatch):
    """student.pretrained_weights (the distill command's hint) is loaded into each student, settling its
    section as in continued pretraining; a resume naming another teacher is refused (exit 2), naming
    both, instead of config.json naming the new one while the run keeps the checkpoint's."""
    from dinov2_dense.cli import main
    from pretrain.export import export_backbone

    _no_figures(monkeypatch)
    work, result = pretrained
    weights, teacher = result["export"]["safetensors"], result["export"]["safetensors"]
    start = load_backbone(None, weights=weights).state_dict()
    with pytest.raises(ValueError, match=r"student.embed_dim = 16, but student.pretrained_weights=.* has embed_dim 32"):
        pretrain(tiny(2, student=dict(pretrained_weights=weights), distill=dict(teacher=teacher, students=[
            dict(embed_dim=16, num_heads=1)])), tmp_path / "refused", progress=False)
    # the rate is 0 at iteration 1 (warm-up): the students' weights there are those they started from
    fresh = dict(pretrained_weights=None, embed_dim=16, depth=1, num_heads=1)
    cfg = _py_config(tmp_path / "d.py", tiny(2, student=dict(pretrained_weights=weights), optim=dict(warmup_epochs=1),
                                           distill=dict(students=[dict(), fresh])))
    out = tmp_path / "distill"
    assert main(["distill", str(cfg), "--work-dir", str(out), "--no-progress", "--teacher", teacher,
                 "--max-iters", "1"]) == 0
    ckpt = torch.load(checkpoint_files(out)[0], weights_only=True)["model"]
    for part in ("student.student0_backbone.", "teacher.ema0_backbone."):
        assert all(torch.equal(ckpt[part + k], v) for k, v in start.items()), part
    assert ckpt["student.student1_backbone.cls_token"].shape[-1] == 16  # no weights: built fresh
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["student"]["pretrained_weights"] == weights
    assert recorded["distill"]["students"] == [{}, fresh]

    other = load_backbone(None, weights=teacher)
    with torch.no_grad():
        other.blocks[1].mlp.fc2.bias.add_(0.01)  # a teacher of the same size, other weights
    other_teacher = str(export_backbone(other, tmp_path / "other")["safetensors"])
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"}
    capsys.readouterr()
    assert main(["distill", str(cfg), "--work-dir", str(out), "--no-progress", "--resume", "--teacher",
                 other_teacher]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "another frozen teacher" in errors[0], errors
    assert f"distill.teacher {teacher!r} -> {other_teacher!r}" in errors[0] and "--overwrite" in errors[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".dinov2_dense.lock"} == before


def test_a_work_dir_that_cannot_be_written_is_refused_before_any_computing(tmp_path, capsys, monkeypatch):
    from dinov2_dense.cli import main
    import pretrain.train as train_mod

    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (Linux)")

    def no_build(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(train_mod, "_build", no_build)
    cfg = _py_config(tmp_path / "t.py", tiny(2))
    assert main(["pretrain", str(cfg), "--work-dir", "/proc/x/run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "work dir /proc/x/run cannot be written: making a folder in /proc failed" in err and "Traceback" not in err


def _model_and_stepped_optimizer(steps: int = 2, **sections):
    """A tiny SSLMetaArch and its AdamW after ``steps`` steps of seeded random gradients on every student
    parameter but ``student.backbone.mask_token`` (never updated: no state, as a distilled student's)."""
    from pretrain.config import resolve
    from pretrain.meta_arch import SSLMetaArch

    torch.manual_seed(0)
    model = SSLMetaArch(resolve(tiny(**sections)))
    optimizer = torch.optim.AdamW(model.get_params_groups())
    for _ in range(steps):
        for name, p in model.student.named_parameters():
            p.grad = None if name == "backbone.mask_token" else torch.randn_like(p)
        optimizer.step()
    return model, optimizer


def _states_by_name(model, optimizer) -> dict[str, dict]:
    """Each parameter's optimizer state, by its name in the model (DDP's ``module.`` left out)."""
    names = {id(p): n.replace(".module.", ".") for n, p in model.named_parameters()}
    return {names[id(p)]: optimizer.state[p] for g in optimizer.param_groups for p in g["params"]
            if p in optimizer.state}


def _assert_same_states(got: dict, expected: dict, where: str = "") -> None:
    assert got.keys() == expected.keys(), (where, set(got) ^ set(expected))
    for name, values in expected.items():
        assert got[name].keys() == values.keys(), (where, name)
        assert all(torch.equal(got[name][k], v) for k, v in values.items()), (where, name)


def test_optimizer_states_convert_between_torchs_layout_and_fsdps_by_names():
    """A checkpoint's optimizer state is torch's layout (ids in the groups' order: one process, DDP) or,
    under FSDP, the full state keyed by parameter names: each loads into either kind of run, exactly.
    Both were refused ("written with FSDP; resume it with the compute.distributed and process count it
    was written with"), so an FSDP run could not be resumed on one process, nor a DDP run under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from pretrain.train import _load_optimizer

    model, optimizer = _model_and_stepped_optimizer()
    plain = optimizer.state_dict()
    # what FSDP writes (there with the full tensors gathered)
    reference = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert "student.backbone.blocks.0.attn.qkv.weight" in reference["state"]
    expected = _states_by_name(model, optimizer)
    n_params = sum(len(g["params"]) for g in optimizer.param_groups)
    assert "student.backbone.mask_token" not in expected and len(expected) == n_params - 1  # never updated: no state
    assert all(float(s["step"]) == 2 for s in expected.values())
    # FSDP's state into a run of one process (sharded=False), torch's into an FSDP run (torch's
    # set_optimizer_state_dict path; on one process here), FSDP's into FSDP: the same moments and steps
    by_names = {"sharded_by_names": reference}
    for saved, sharded in ((by_names, False), (plain, True), (by_names, True)):
        model2, optimizer2 = _model_and_stepped_optimizer(steps=0)
        before = [{k: v for k, v in g.items() if k != "params"} for g in optimizer2.param_groups]
        _load_optimizer(model2, optimizer2, {"optimizer": saved}, sharded, "ckpt_7.pth")
        _assert_same_states(_states_by_name(model2, optimizer2), expected, f"sharded={sharded}")  # mask_token: none
        # the group settings stay the run's own
        assert [{k: v for k, v in g.items() if k != "params"} for g in optimizer2.param_groups] == before
    # other parameter groups (no layer-wise decay: fewer fused groups) are refused either way, naming the file
    for saved, sharded in ((by_names, False), (plain, True)):
        model3, optimizer3 = _model_and_stepped_optimizer(steps=0, optim=dict(layerwise_decay=1.0))
        with pytest.raises(ValueError, match=r"ckpt_7\.pth: its optimizer state has \d+ parameter groups"):
            _load_optimizer(model3, optimizer3, {"optimizer": saved}, sharded, "ckpt_7.pth")
    # the same number of groups and parameters, but a parameter in another group: refused too
    swapped = {"state": reference["state"], "param_groups": [dict(g) for g in reference["param_groups"]]}
    a, b = swapped["param_groups"][0], swapped["param_groups"][1]
    a["params"], b["params"] = [b["params"][0], *a["params"][1:]], [a["params"][0], *b["params"][1:]]
    for sharded in (False, True):
        model4, optimizer4 = _model_and_stepped_optimizer(steps=0)
        with pytest.raises(ValueError, match=r"ckpt_7\.pth: its optimizer state does not fit this run"):
            _load_optimizer(model4, optimizer4, {"optimizer": {"sharded_by_names": swapped}}, sharded, "ckpt_7.pth")
    # the conversion itself gives torch's own by-names form, and back
    from pretrain.train import _by_ids, _by_names, _group_names

    names = _group_names(model, optimizer)
    converted = _by_names(plain, names)
    assert [g["params"] for g in converted["param_groups"]] == [g["params"] for g in reference["param_groups"]]
    _assert_same_states(converted["state"], reference["state"])
    back = _by_ids(reference, names)
    assert [g["params"] for g in back["param_groups"]] == [g["params"] for g in plain["param_groups"]]
    _assert_same_states(back["state"], plain["state"])


def test_an_fsdp_optimizer_state_resumes_under_ddp(tmp_path):
    """Under DDP each student part is wrapped (``student.backbone.module.blocks...``); the optimizer state
    FSDP wrote (names without that ``module.``) loads into it, exactly."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    from pretrain.train import _load_optimizer

    model, optimizer = _model_and_stepped_optimizer()
    reference = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model2, _ = _model_and_stepped_optimizer(steps=0)
        for key in list(model2.student.keys()):
            model2.student[key] = DDP(model2.student[key])
        optimizer2 = torch.optim.AdamW(model2.get_params_groups())
        assert any(".module." in n for n, _ in model2.named_parameters())
        _load_optimizer(model2, optimizer2, {"optimizer": {"sharded_by_names": reference}}, False, "ckpt_7.pth")
        _assert_same_states(_states_by_name(model2, optimizer2), _states_by_name(model, optimizer))
    finally:
        dist.destroy_process_group()


def test_continued_pretraining_resumes_without_its_starting_weights(pretrained, tmp_path):
    """A resumed continued-pretraining run loaded student.pretrained_weights again only to settle its sizes: once
    that file was gone it could not resume. The run's backbone.json gives the architecture; the checkpoint the
    weights. Stopped, its weights file deleted and resumed, it ends as the uninterrupted run."""
    import shutil

    _, result = pretrained
    weights = tmp_path / "start" / "backbone.safetensors"
    shutil.copytree(Path(result["export"]["safetensors"]).parent, weights.parent)
    cfg = tiny(4, student=dict(pretrained_weights=str(weights)))
    whole = pretrain(cfg, tmp_path / "whole", progress=False)
    pretrain(cfg, tmp_path / "parts", progress=False, max_iters=2)
    shutil.rmtree(weights.parent)
    parts = pretrain(cfg, tmp_path / "parts", resume=True, progress=False)
    assert parts["iterations"] == 4
    assert Path(parts["export"]["safetensors"]).read_bytes() == Path(whole["export"]["safetensors"]).read_bytes()


def test_auto_precision_on_a_gpu_without_native_bf16_takes_fp16(monkeypatch):
    """compute.precision="auto" asked torch.cuda.is_bf16_supported(), which counts emulation by default: a T4 or
    V100 (compute capability 7.x) got slow emulated bf16 instead of fp16 with a gradient scaler."""
    import warnings

    import torch

    from pretrain.train import _autocast

    for native, want in ((False, torch.float16), (True, torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True, n=native:
                            True if including_emulation else n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (a GradScaler made where no CUDA is says it is disabled)
            factory, scaler = _autocast("auto", torch.device("cuda"))
        assert factory.keywords["dtype"] == want and (scaler is not None) == (want == torch.float16)
