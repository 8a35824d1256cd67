"""Full models of the official release: a backbone and one of its trained heads.

``load_model("dinov2_vits14_ade20k_linear")`` builds the backbone (weights found like
``load_backbone``'s) and the head, and loads the official head file
(``dinov2_vits14_ade20k_linear_head.pth``, with or without its ``state_dict`` wrapper) strictly
into ``decode_head.*``. Names: ``dinov2_vit{s,b,l,g}14_{ade20k,voc2012}_{linear,ms}`` and
``dinov2_vit{s,b,l,g}14_{nyu,kitti}_{linear,linear4,dpt}``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from heads.dpt import DPTHead
from heads.linear import LinearDepthHead, LinearHead
from heads.predictor import DensePredictor

from .checkpoints import (CheckpointError, head_output, head_output_difference, key_mismatches, load_backbone_weights,
                          read_checkpoint, refuse_nonfinite)
from .hub import (NO_WEIGHTS_HINT, WeightsNotFoundError, _file_url_path, build_backbone, find_weights, load_backbone,
                  official_url, resolve_file)
from .settings import BACKBONE_SETTINGS, DATASET_SETTINGS, test_protocol


@dataclass(frozen=True)
class ModelSpec:
    """A zoo model: backbone size, data set and head kind ("linear", "ms", "linear4", "dpt")."""

    name: str
    size: str
    dataset: str
    head: str

    @property
    def backbone(self) -> str:
        return f"dinov2_vit{self.size}14"

    @property
    def filename(self) -> str:
        return f"{self.backbone}_{self.dataset}_{self.head}_head.pth"

    @property
    def url(self) -> str:
        return official_url(self.backbone, self.filename)

    @property
    def task(self) -> str:
        return DATASET_SETTINGS[self.dataset].task

    def test_cfg(self) -> dict:
        """The official test protocol, as keyword arguments of ``DensePredictor.predict``."""
        return test_protocol(self.dataset, self.head)


def _zoo() -> dict[str, ModelSpec]:
    zoo = {}
    for size in BACKBONE_SETTINGS:
        for dataset in ("ade20k", "voc2012"):
            for head in ("linear", "ms"):
                spec = ModelSpec(f"dinov2_vit{size}14_{dataset}_{head}", size, dataset, head)
                zoo[spec.name] = spec
        for dataset in ("nyu", "kitti"):
            for head in ("linear", "linear4", "dpt"):
                spec = ModelSpec(f"dinov2_vit{size}14_{dataset}_{head}", size, dataset, head)
                zoo[spec.name] = spec
    return zoo


MODELS: dict[str, ModelSpec] = _zoo()


def get_model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; the zoo has {len(MODELS)} models, e.g. {', '.join(list(MODELS)[:4])}")
    return MODELS[name]


def build_model(name: str, backbone: torch.nn.Module | None = None) -> DensePredictor:
    """The architecture of a zoo model (random head; random backbone unless one is given)."""
    spec = get_model_spec(name)
    size = BACKBONE_SETTINGS[spec.size]
    data = DATASET_SETTINGS[spec.dataset]
    backbone = backbone if backbone is not None else build_backbone(spec.backbone)
    if spec.task == "segmentation":
        head = LinearHead.preset("lin." if spec.head == "linear" else "+ms", size.embed_dim, data.num_classes)
        model = DensePredictor(backbone, head, task="segmentation", layers=size.seg_layers, norm=True,
                               test_cfg=spec.test_cfg())
    else:
        depth_range = dict(min_depth=data.min_depth, max_depth=data.max_depth)
        if spec.head == "dpt":
            head, layers = DPTHead.preset(spec.size, **depth_range), size.depth_layers
        elif spec.head == "linear4":
            head, layers = LinearDepthHead.preset("linear4", size.embed_dim, **depth_range), size.depth_layers
        else:
            head, layers = LinearDepthHead.preset("linear", size.embed_dim, **depth_range), [size.depth - 1]
        model = DensePredictor(backbone, head, task="depth", layers=layers, norm=False, class_token=True,
                               test_cfg=spec.test_cfg())
    model.name = name
    return model


def load_model(
    name: str,
    weights: str | os.PathLike | None = "official",
    *,
    backbone_weights: str | os.PathLike | None = "official",
    device: str | torch.device | None = None,
) -> DensePredictor:
    """Build a zoo model and load its weights; returns it in eval mode.

    ``weights``: "official" (the released head file, found or downloaded), a file holding
    ``decode_head.*`` keys (and optionally ``backbone.*``: then those are used for the backbone),
    or None (random head). ``backbone_weights`` as in ``load_backbone`` (used when the weights file
    holds no backbone).
    """
    spec = get_model_spec(name)
    if weights is None:
        head_sd: dict[str, Tensor] = {}
        label = "random head"
    else:
        try:
            path = (resolve_file(spec.filename, spec.url, label=name) if weights == "official"
                    else Path(_file_url_path(weights)).expanduser())
        except WeightsNotFoundError as exc:
            raise _with_zoo_hint(exc, spec, "head", weights, backbone_weights) from exc.__cause__
        if weights != "official" and not path.exists():
            raise WeightsNotFoundError(f"weights file {path} does not exist")
        head_sd = read_checkpoint(path)
        label = str(path)
    full_backbone = {k[len("backbone.") :]: v for k, v in head_sd.items() if k.startswith("backbone.")}
    if full_backbone:
        backbone = build_backbone(spec.backbone)
        load_backbone_weights(backbone, full_backbone)
    else:
        try:
            backbone = load_backbone(spec.backbone, weights=backbone_weights)
        except WeightsNotFoundError as exc:
            raise _with_zoo_hint(exc, spec, "backbone", weights, backbone_weights) from exc.__cause__
    model = build_model(name, backbone=backbone)
    if head_sd:
        _load_head_file(model, head_sd, label, path)
    if device is not None:
        model = model.to(device)
    return model.eval()


def _load_head_file(model: DensePredictor, head_sd: dict[str, Tensor], label: str, path: Path) -> None:
    """:func:`load_head_weights`, where a head that ``dinov2-dense train`` wrote (its ``meta``, read only for
    a depth model or a head that does not fit) is refused for another backbone's widths or another depth
    output (range, or the linear head's bins and normalisation: the bins span the range, so another one
    rescales every prediction), as ``test`` refuses it, naming ``load_trained``."""
    meta = _train_meta(path) if model.task == "depth" else None
    way = (f"load it with dinov2_dense.engine.load_trained({str(path)!r}), which builds its run's model from the "
           "config copy in its work dir")
    try:
        load_head_weights(model, head_sd, label)
    except CheckpointError as exc:
        backbone = (meta if meta is not None else _train_meta(path)).get("backbone")
        if not (isinstance(backbone, dict) and isinstance(backbone.get("weights"), str)):
            raise
        raise CheckpointError(f"{exc}. It is a head of `dinov2-dense train` on {backbone['weights']}: {way}") from None
    name = getattr(model, "name", "this model")
    differ = [f"{k} {theirs!r} in its run, {mine!r} in {name}"
              for k, theirs, mine in head_output_difference((meta or {}).get("head_output"), head_output(model))]
    if differ:  # as test refuses it (the depth range, and the linear head's bins and normalisation)
        raise CheckpointError(f"{path} holds a depth head trained for another output than {name} builds "
                              f"({'; '.join(differ)}): its predictions would be rescaled; {way}")


def _train_meta(path: Path) -> dict:
    """The ``meta`` of a checkpoint of ``dinov2-dense train`` (the backbone it was trained on, a depth head's
    range), or {} (an official head file, a .safetensors, a folder)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch file of ours: no record
        return {}
    meta = obj.get("meta") if isinstance(obj, dict) else None
    return meta if isinstance(meta, dict) else {}


def _with_zoo_hint(exc: WeightsNotFoundError, spec: ModelSpec, missing: str, weights,
                   backbone_weights) -> WeightsNotFoundError:
    """A file of ``load_model`` not found (``missing``: "head" or "backbone"): the hint gives the exact
    ``load_model`` call that goes on without it, instead of the backbone's hint (whose ``weights=None``
    is the backbone's argument; here ``weights`` is the head's, and the backbone's file is still read
    unless ``backbone_weights=None`` too)."""
    if NO_WEIGHTS_HINT not in str(exc):
        return exc
    name = spec.name
    if missing == "head":
        found = find_weights(spec.backbone) if backbone_weights == "official" else None
        if found is not None:
            call, what = f'load_model("{name}", weights=None)', f"a random head on the official backbone ({found})"
        else:
            kept = "None" if backbone_weights in (None, "official") else repr(str(backbone_weights))
            call = f'load_model("{name}", weights=None, backbone_weights={kept})'
            what = "a random head and a random backbone" if kept == "None" else f"a random head on {kept}"
    else:  # the backbone's file (backbone_weights="official") was not found
        head = "" if weights == "official" else f", weights={'None' if weights is None else repr(str(weights))}"
        call = f'load_model("{name}"{head}, backbone_weights=None)'
        what = "a random head and a random backbone" if weights is None else "a random backbone under the head"
    hint = (f"To go on without a download: {call} in Python ({what}: the outputs have the right shapes and mean "
            "nothing; weights= is the head's file, backbone_weights= the backbone's).")
    return WeightsNotFoundError(str(exc).replace(NO_WEIGHTS_HINT, hint))


def load_head_weights(model: DensePredictor, state_dict: Mapping[str, Tensor], label: str = "state dict") -> None:
    """Load ``decode_head.*`` keys (an official head file) strictly into ``model.decode_head``."""
    head = {k[len("decode_head.") :]: v for k, v in state_dict.items() if k.startswith("decode_head.")}
    other = sorted(k for k in state_dict if not k.startswith(("decode_head.", "backbone.")))
    parts = key_mismatches(model.decode_head.state_dict(), head) if head else ["no decode_head.* keys"]
    if other:
        parts.append(f"keys outside decode_head./backbone.: {', '.join(other[:6])}")
    if parts:
        raise CheckpointError(
            f"{label} does not fit the head of {getattr(model, 'name', 'this model')} "
            f"({type(model.decode_head).__name__}): " + "; ".join(parts)
        )
    refuse_nonfinite(head, label)
    model.decode_head.load_state_dict(head, strict=True)


def model_weights_status() -> list[dict]:
    """For ``dinov2-dense info``: each zoo model, its head file, and where it was (or was not) found."""
    from .hub import candidate_paths

    rows = []
    for name, spec in MODELS.items():
        places = candidate_paths(spec.filename)
        found = next((p for p in places if p.is_file()), None)
        rows.append({"name": name, "kind": "model", "task": spec.task, "backbone": spec.backbone,
                     "file": spec.filename, "found": str(found) if found else None,
                     "looked": [str(p) for p in places], "url": spec.url})
    return rows
