"""What the architecture JSONs of our exports record, and the torch.hub entries that read weight files.

- ``backbone.json`` / ``studentN.json`` record the LayerScale init the run built its model with
  (``student.layerscale``), not always 1.0: a random init rebuilt from the JSON starts where the run did.
- The safetensors metadata of an export names the JSON written beside it (``see student0.json``).
- ``torch.hub.load(..., "dinov2_vits14", weights=FILE, num_register_tokens=4)`` takes the register models'
  position-embedding interpolation, as ``load_backbone`` of the same file (its JSON) does; a file of
  another position grid is refused with what to pass instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dinov2_dense import load_backbone
from dinov2_dense.checkpoints import CheckpointError
from dinov2_dense.models import DinoVisionTransformer
from pretrain.export import export_backbone
from pretrain.train import pretrain
from tests.conftest import randomize_
from tests.test_pretrain_train import tiny

ROOT = Path(__file__).resolve().parents[1]


def _tiny(iters: int = 2, **sections) -> dict:
    """test_pretrain_train's tiny run with 1 block on 16 scenes, LayerScale starting at 0.1 (not the
    default 1e-5, nor the 1.0 the JSON used to say)."""
    own = dict(student=dict(depth=1, drop_path_rate=0.0, layerscale=0.1), crops=dict(local_crops_number=1),
               train=dict(checkpoint_period=iters, dataset=dict(type="synthetic", num_scenes=16,
                                                                config=dict(size=(42, 42)))))
    for name, values in sections.items():
        own[name] = {**own.get(name, {}), **values}
    return tiny(iters, **own)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-iteration pretraining run (layerscale 0.1) and a 2-iteration distillation from its export
    (students at layerscale 0.1 and 0.25)."""
    base = tmp_path_factory.mktemp("export_arch")
    ssl = pretrain(_tiny(), base / "ssl", progress=False)
    students = [dict(embed_dim=16, num_heads=1), dict(embed_dim=16, num_heads=1, layerscale=0.25)]
    distill = pretrain(_tiny(distill=dict(teacher=ssl["export"]["safetensors"], students=students)),
                       base / "distill", progress=False)
    return base, ssl, distill


def _gammas(model: torch.nn.Module) -> list[torch.Tensor]:
    return [v for k, v in model.state_dict().items() if k.endswith(".gamma")]


def test_arch_kwargs_records_the_layerscale_init_the_model_was_built_with():
    for init in (0.1, 1e-5, 1.0):
        model = DinoVisionTransformer(img_size=28, embed_dim=32, depth=1, num_heads=2, init_values=init)
        randomize_(model)  # trained: the gammas moved away from the init
        arch = model.arch_kwargs()
        assert arch["init_values"] == pytest.approx(init)
        rebuilt = DinoVisionTransformer(**arch)
        assert all(torch.equal(g, torch.full_like(g, init)) for g in _gammas(rebuilt))
    for none in (None, 0):
        assert DinoVisionTransformer(img_size=28, embed_dim=32, depth=1, num_heads=2,
                                     init_values=none).arch_kwargs()["init_values"] is None


def test_a_pretraining_export_records_the_runs_layerscale(runs):
    base, ssl, _ = runs
    recorded = json.loads((base / "ssl" / "config.json").read_text())["student"]["layerscale"]
    assert recorded == 0.1
    for arch_file in (Path(ssl["export"]["json"]), base / "ssl" / "backbone.json"):
        assert json.loads(arch_file.read_text())["init_values"] == pytest.approx(recorded), arch_file
    # a random init from the JSON (--weights random, load_backbone(json, None)) starts where the run did
    random = load_backbone(ssl["export"]["json"], weights=None)
    assert _gammas(random) and all(torch.allclose(g, torch.full_like(g, 0.1)) for g in _gammas(random))
    # the export still loads and names its JSON
    load_backbone(None, weights=ssl["export"]["safetensors"])
    with safe_open(ssl["export"]["safetensors"], "pt") as f:
        assert f.metadata()["arch"] == "see backbone.json"


def test_distilled_students_record_their_layerscale_and_name_their_json(runs):
    base, _, distill = runs
    export = base / "distill" / "export"
    assert set(distill["export"]) == {"student0", "student1"} and not (export / "backbone.json").exists()
    for i, init in enumerate((0.1, 0.25)):
        files = distill["export"][f"student{i}"]
        assert Path(files["json"]) == export / f"student{i}.json"
        assert json.loads(Path(files["json"]).read_text())["init_values"] == pytest.approx(init)
        with safe_open(files["safetensors"], "pt") as f:
            arch = f.metadata()["arch"]
        assert arch == f"see student{i}.json" and (export / arch.removeprefix("see ")).is_file()
        random = load_backbone(files["json"], weights=None)
        assert all(torch.allclose(g, torch.full_like(g, init)) for g in _gammas(random))


def test_export_metadata_names_the_json_written_beside_it(tmp_path):
    model = DinoVisionTransformer(img_size=28, embed_dim=32, depth=1, num_heads=2, init_values=0.5)
    paths = export_backbone(model, tmp_path, "student3")
    with safe_open(str(paths["safetensors"]), "pt") as f:
        assert f.metadata()["arch"] == "see student3.json"
    assert json.loads(paths["json"].read_text())["init_values"] == 0.5


# -- torch.hub entries ------------------------------------------------------------------------------
def _hub(entry: str, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", **kwargs)


def _register_export(tmp_path: Path) -> Path:
    """A one-block ViT-S/14 with 4 registers (the register models' interpolation), exported with its JSON."""
    model = randomize_(DinoVisionTransformer(embed_dim=384, depth=1, num_heads=6, num_register_tokens=4,
                                             interpolate_antialias=True, interpolate_offset=0.0)).eval()
    return export_backbone(model, tmp_path / "reg")["safetensors"]


def test_hub_entry_with_registers_takes_the_register_interpolation(tmp_path):
    weights = _register_export(tmp_path)
    reference = load_backbone(None, weights=weights)  # reads backbone.json beside the file
    hub_model = _hub("dinov2_vits14", weights=str(weights), num_register_tokens=4, depth=1)
    assert (hub_model.interpolate_antialias, hub_model.interpolate_offset) == (True, 0.0)
    x = torch.randn(1, 3, 224, 308)
    with torch.no_grad():
        a = reference.forward_features(x)["x_norm_patchtokens"]
        b = hub_model.forward_features(x)["x_norm_patchtokens"]
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    # the other way round, and what the caller sets stays as set
    plain = _hub("dinov2_vits14_reg", pretrained=False, num_register_tokens=0, depth=1)
    assert (plain.interpolate_antialias, plain.interpolate_offset) == (False, 0.1)
    chosen = _hub("dinov2_vits14", pretrained=False, num_register_tokens=4, depth=1, interpolate_offset=0.1)
    assert (chosen.interpolate_antialias, chosen.interpolate_offset) == (True, 0.1)
    official = _hub("dinov2_vits14_reg", pretrained=False, depth=1)
    assert (official.interpolate_antialias, official.interpolate_offset) == (True, 0.0)


def test_hub_entry_given_a_file_of_another_grid_says_what_to_pass(tmp_path):
    model = randomize_(DinoVisionTransformer(img_size=56, embed_dim=384, depth=1, num_heads=6)).eval()
    weights = export_backbone(model, tmp_path / "small")["safetensors"]
    with pytest.raises(CheckpointError) as info:
        _hub("dinov2_vits14", weights=str(weights), depth=1)
    message = str(info.value)
    assert str(weights) in message and "img_size=56" in message
    assert f"load_backbone(None, weights={str(weights)!r})" in message and "backbone.json" in message
    loaded = _hub("dinov2_vits14", weights=str(weights), depth=1, img_size=56)  # what the hint says works
    assert torch.equal(loaded.pos_embed, model.pos_embed)


def test_an_export_written_twice_is_the_same_bytes(tmp_path):
    """torch.save given a path names the archive's records after the file: written through a temporary
    file of another name each time, two exports of the same weights differed in bytes (backbone.pth)."""
    model = randomize_(DinoVisionTransformer(img_size=28, patch_size=14, embed_dim=32, depth=1, num_heads=2))
    first = export_backbone(model, tmp_path / "a")
    second = export_backbone(model, tmp_path / "b")
    for kind in ("pth", "safetensors", "json"):
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind
    assert torch.equal(torch.load(first["pth"], weights_only=True)["pos_embed"], model.pos_embed.detach())
