"""Checkpoints between mmseg and dinov2-dense.

An mmseg checkpoint of the plugin's models (``{"state_dict": {"backbone.*", "decode_head.*", ...},
"meta": ...}``) has our key layout, so conversion is selection and wrapping:

- :func:`from_mmseg`: the ``backbone.*`` and ``decode_head.*`` tensors (loss modules and anything
  else dropped) as a file that ``dinov2_dense.zoo.load_model(NAME, weights=FILE)`` loads strictly
  (``.safetensors``, or a torch ``.pth`` / ``.pt``; another suffix is refused before anything is
  read); with ``model`` the head is checked against that zoo model first.
- :func:`to_mmseg`: a ``load_model`` weights file (or an official head file, with a backbone from
  ``backbone_weights``) as an mmseg checkpoint for ``load_from`` / ``tools/test.py``: a torch file
  (``.pth``; mmseg cannot read safetensors, so a ``.safetensors`` output is refused). A head whose
  input width does not fit the backbone of ``backbone_weights`` is refused, naming both widths.

The backbone a head was trained on travels with it: a checkpoint of ``dinov2-dense train`` records it
(``meta.backbone``: its weights' name, ``sha256`` and ``features_sha256``). :func:`to_mmseg` refuses to
pair such a head with another backbone (``backbone_weights``, or the ``backbone.*`` tensors the file
holds), naming both files and fingerprints, unless ``other_backbone`` says it is meant, and records the
backbone it writes in the output's ``meta.backbone`` (with ``other_backbone``, the head's own record
stays beside it as ``meta.head_trained_on``); :func:`from_mmseg` carries the record back (a torch
output becomes ``{"state_dict": ..., "meta": {"backbone": ...}}``, a safetensors output keeps it as
JSON in its metadata). Files without the record (official head files, older files) convert as before.

    python -m dinov2_dense.mmseg.convert from-mmseg work_dirs/iter_40000.pth ours.safetensors --model dinov2_vits14_ade20k_linear

The output is never the input (the checkpoint's meta and optimizer state would be lost), and an
existing output file is replaced only with ``--overwrite`` (``overwrite=True``): it may be another
checkpoint. Errors in what was given end the command with exit code 2 and one line naming the file or
option (``--debug`` shows the traceback).
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch
from torch import Tensor

from dinov2_dense.checkpoints import (REFETCH, CheckpointError, CheckpointReadError, backbone_difference,
                                      difference_reason, fingerprints, forward_difference, forward_settings,
                                      key_mismatches, read_checkpoint,
                                      save_safetensors, weight_file_problem)
from dinov2_dense.fileio import OutputError, atomic_path, check_output_file, check_replaceable_file

__all__ = ["from_mmseg", "to_mmseg"]


def _ours(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v for k, v in state.items() if k.startswith(("backbone.", "decode_head."))
            and not k.startswith("decode_head.loss_decode.")}


#: What each direction reads, for the message about a file that is not one.
_MMSEG_CHECKPOINT = "an mmseg checkpoint (the .pth files mmseg's Runner saves in its work_dir)"
_OUR_WEIGHTS = "a dinov2-dense weights file (.safetensors or .pth with decode_head.* tensors) or an official head file"


#: The suffixes of the torch files mmseg's Runner and tools load (``torch.load``; it cannot read safetensors).
MMSEG_SUFFIXES = (".pth", ".pt", ".ckpt")
#: The suffixes of the weights files :func:`from_mmseg` writes (safetensors, else torch).
OUR_SUFFIXES = (".safetensors", ".pth", ".pt")


def _check_output(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], overwrite: bool,
                  suffixes: tuple[str, ...], what: str) -> Path:
    """Refuse, before anything is read, an output that is one of the ``inputs`` (label -> path; the
    same file by any spelling, symlink or hard link), whose suffix is not one of ``suffixes`` (``what``
    the output is, for the message), or an existing file without ``overwrite``."""
    out = Path(out)
    for label, path in inputs.items():
        if path is not None and _same_file(path, out):
            raise OutputError(f"output {out} is the {label} {path}: converting in place would replace it with "
                              "the converted tensors (and lose all else it holds); give another output file")
    if out.suffix.lower() not in suffixes:
        why = ("mmseg loads torch checkpoints, it cannot read safetensors"
               if out.suffix.lower() == ".safetensors" and ".safetensors" not in suffixes
               else f"{what} is a file named {' / '.join(suffixes)}, not {out.suffix or 'one without a suffix'}")
        raise OutputError(f"output {out}: {why}; name the output {out.with_suffix(suffixes[0])}")
    check_replaceable_file(out, "a file this converter wrote", _converted, overwrite, option="output")
    return check_output_file(out, what="output")


#: What ``meta`` holds in a file of :func:`from_mmseg` (torch format), and the mark of one of :func:`to_mmseg`.
_FROM_MMSEG_META = {"backbone", "head_inputs"}
_CONVERTED_BY = "dinov2_dense.mmseg"


def _converted(path: Path) -> bool:
    """Whether ``path`` is an earlier output of this converter, which ``--overwrite`` may replace (any other
    file, a pretraining export or a user's checkpoint, is never replaced): a safetensors file of
    :func:`from_mmseg` (its metadata), a torch file of :func:`to_mmseg` (``meta.converted_by``) or of
    :func:`from_mmseg` (``backbone.*`` / ``decode_head.*`` tensors alone, flat or with its ``meta``)."""
    try:
        return _converted_file(path)
    except Exception:  # noqa: BLE001 - unreadable as a checkpoint (text, empty, an old or pickled format): not ours
        return False


def _converted_file(path: Path) -> bool:
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        return metadata.get("format") == "dinov2-dense" and metadata.get("source") == "mmseg"
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(obj, dict):
        return False
    meta = obj.get("meta")
    if set(obj) == {"state_dict", "meta"} and isinstance(meta, dict) and meta.get("converted_by") == _CONVERTED_BY:
        return True
    if set(obj) == {"state_dict", "meta"} and isinstance(meta, dict) and set(meta) <= _FROM_MMSEG_META:
        obj = obj["state_dict"]
    return bool(obj) and all(isinstance(k, str) and k.startswith(("backbone.", "decode_head.")) and
                             isinstance(v, Tensor) for k, v in obj.items())


def _same_file(a: str | os.PathLike, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def _read(path: str | os.PathLike, expected: str) -> dict[str, Tensor]:
    """:func:`read_checkpoint`, with advice for a user's own file: what was expected. (Its own advice,
    to fetch the file again, is for a damaged or cut-short weight file, not for a text file given by
    mistake, which no download made.)"""
    try:
        return read_checkpoint(path)
    except CheckpointReadError as exc:
        problem = _text_file(exc.path) if exc.advice == REFETCH else None
        if exc.advice == REFETCH and problem is None:  # damaged or cut short: the right kind, to write or fetch again
            raise
        reason = exc.reason if problem is None else f"not a weight file: it is {problem}"
        raise CheckpointReadError(exc.path, reason, f"expected {expected}") from exc


def _text_file(path: Path) -> str | None:
    """``weight_file_problem``'s phrase for a text file ("a text file of 5 bytes ('hello'), not a
    PyTorch checkpoint"), or None for any other file."""
    try:
        problem = weight_file_problem(path)
    except OSError:
        return None
    return problem if problem is not None and problem.startswith("a text file") else None


#: The metadata key of a safetensors file of :func:`from_mmseg` that keeps ``meta.backbone`` (as JSON).
_BACKBONE_METADATA = "backbone"


#: ... and ``meta.head_inputs``: what the head read of the backbone (blocks, norm, class tokens).
_HEAD_INPUTS_METADATA = "head_inputs"


def _recorded(path: str | os.PathLike, key: str):
    """``meta[key]`` of a torch checkpoint (as ``dinov2-dense train`` writes it), or the JSON of metadata ``key``
    of a safetensors file of :func:`from_mmseg`; None without one (official head files, older files). Read
    after the tensors were: the file is known to read, and a torch file is mapped, not read again."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                text = (f.metadata() or {}).get(key)
            return json.loads(text) if text else None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a file of torch's legacy format cannot be mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
        meta = obj.get("meta") if isinstance(obj, dict) else None
        return meta.get(key) if isinstance(meta, dict) else None
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError):  # a folder, a shard index: none
        return None


def _recorded_head_inputs(path: str | os.PathLike) -> dict | None:
    inputs = _recorded(path, _HEAD_INPUTS_METADATA)
    return inputs if isinstance(inputs, dict) else None


def _recorded_backbone(path: str | os.PathLike) -> dict[str, str] | None:
    """The backbone a weights file records (``meta.backbone`` of a torch checkpoint, as ``dinov2-dense
    train`` writes it, or the ``backbone`` metadata of a safetensors file of :func:`from_mmseg`), or None
    (official head files, older files)."""
    record = _recorded(path, _BACKBONE_METADATA)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None
    kept = {str(k): str(v) for k, v in record.items() if isinstance(v, str)}
    if isinstance(record.get("forward"), dict):  # the settings its features were computed with (train records them)
        kept["forward"] = dict(record["forward"])
    return kept


def _backbone_of(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}


def _written(weights: str, backbone: dict[str, Tensor]) -> dict[str, str]:
    """The record of a backbone written: its weights' name and fingerprints (as ``train`` records them)."""
    return {"weights": weights, **fingerprints(backbone)}


def _check_pairing(head_file: str | os.PathLike, recorded: dict[str, str], written: dict[str, str], what: str,
                   other_backbone: bool) -> bool:
    """Refuse a head recorded as trained on another backbone than the one written with it (``what``
    names where that one comes from), unless ``other_backbone``; True when they differ (and that is meant)."""
    difference = backbone_difference(recorded, written)
    if difference is None:
        settings = forward_difference(recorded, written)  # the same weights, built with other settings
        if settings is None or other_backbone:
            return settings is not None
        raise CheckpointError(f"{head_file} holds a head trained on the same backbone weights as {what} built with "
                              f"other settings ({settings}: another --backbone architecture file), whose features "
                              "differ; give the architecture its run had, or pass --other-backbone "
                              "(other_backbone=True) to pair them anyway")
    if other_backbone:
        return True
    label, theirs, mine = difference
    differ = difference_reason(label, "their")
    raise CheckpointError(
        f"{head_file} holds a head trained on another backbone ({recorded.get('weights')}, {label} {theirs[:12]}) "
        f"than {what} ({label} {mine[:12]}): {differ}; give the backbone the head was trained on, or pass "
        "--other-backbone (other_backbone=True) to pair them anyway")


def from_mmseg(checkpoint: str | os.PathLike, out: str | os.PathLike, model: str | None = None,
               overwrite: bool = False) -> Path:
    """An mmseg checkpoint -> a dinov2-dense weights file (see the module's docstring)."""
    if model is not None:
        from dinov2_dense.zoo import get_model_spec

        get_model_spec(model)  # an unknown name stops us before the checkpoint is read
    out = _check_output(out, {"input checkpoint": checkpoint}, overwrite, OUR_SUFFIXES,
                        "a dinov2-dense weights file")
    state = _ours(_read(checkpoint, _MMSEG_CHECKPOINT))
    if not any(k.startswith("decode_head.") for k in state):
        raise CheckpointError(f"{checkpoint}: no decode_head.* tensors (not a checkpoint of a plugin model?)")
    if model is not None:
        from dinov2_dense.zoo import build_model, load_head_weights

        built = build_model(model)  # a random backbone: only the head's keys and shapes are checked
        load_head_weights(built, state, str(checkpoint))
        backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        if backbone:
            parts = key_mismatches(built.backbone.state_dict(), backbone)
            if parts:
                raise CheckpointError(f"{checkpoint}: its backbone.* tensors do not fit the backbone of {model}: "
                                      + "; ".join(parts))
            built.backbone.load_state_dict(backbone, strict=True)
    record = _carried_back(checkpoint, state)
    inputs = _recorded_head_inputs(checkpoint)
    if out.suffix.lower() == ".safetensors":
        metadata = {"format": "dinov2-dense", "source": "mmseg"}
        if record is not None:
            metadata[_BACKBONE_METADATA] = json.dumps(record)
        if inputs is not None:
            metadata[_HEAD_INPUTS_METADATA] = json.dumps(inputs)
        return save_safetensors(state, out, metadata=metadata)
    meta = {**({"backbone": record} if record is not None else {}),
            **({"head_inputs": inputs} if inputs is not None else {})}
    with atomic_path(out) as tmp:  # (a flat state dict, as before, where there is no record to keep)
        torch.save({"state_dict": state, "meta": meta} if meta else state, tmp)
    return out


def _carried_back(checkpoint: str | os.PathLike, state: dict[str, Tensor]) -> dict[str, str] | None:
    """The ``meta.backbone`` of an mmseg checkpoint (one of :func:`to_mmseg`) that its weights file keeps:
    as it is for a head alone (the backbone it was trained on); for a checkpoint with ``backbone.*``
    tensors, the record of those, where it names them (it is not carried for tensors it does not name)."""
    record = _recorded_backbone(checkpoint)
    backbone = _backbone_of(state)
    if record is None or not backbone:
        return record
    written = _written(record.get("weights", f"the backbone.* tensors of {checkpoint}"), backbone)
    if backbone_difference(record, written) is not None:
        return None
    if "forward" in record:  # the same tensors: the settings they were recorded with (no tensor shows them)
        written["forward"] = record["forward"]
    return written


def to_mmseg(weights: str | os.PathLike, out: str | os.PathLike, backbone_weights: str | None = None,
             backbone: str | None = None, overwrite: bool = False, other_backbone: bool = False) -> Path:
    """A dinov2-dense weights file (or an official head file plus ``backbone_weights`` for
    ``backbone``) -> an mmseg checkpoint. ``backbone`` None: the architecture file beside
    ``backbone_weights`` (a pretraining export's backbone.json), else dinov2_vits14; ``backbone``
    without ``backbone_weights`` is refused (it names their architecture, it brings no weights).
    ``out``: a torch file mmseg loads (:data:`MMSEG_SUFFIXES`), checked before anything is read.
    A head whose file records the backbone it was trained on (``meta.backbone``) is refused with
    another one unless ``other_backbone``; the output records the backbone it holds (see the module's
    docstring)."""
    out = _check_output(out, {"input weights file": weights, "backbone weights file": backbone_weights}, overwrite,
                        MMSEG_SUFFIXES, "an mmseg checkpoint (a torch file)")
    if backbone is not None:
        check_backbone(backbone)
    state = _ours(_read(weights, _OUR_WEIGHTS))
    if not any(k.startswith("decode_head.") for k in state):
        raise CheckpointError(f"{weights}: no decode_head.* tensors")
    given = (f"--backbone-weights {backbone_weights}" if backbone_weights is not None
             else f"--backbone {backbone}" if backbone is not None else None)
    if given and any(k.startswith("backbone.") for k in state):  # which backbone would the user get? say so
        raise CheckpointError(f"{weights} holds a backbone already (backbone.* tensors); {given} would be ignored: "
                              "drop it, or give a head-only file")
    if backbone is not None and backbone_weights is None:  # it was silently dropped: say what is missing
        raise ValueError(f"--backbone {backbone} names the architecture of --backbone-weights, which was not given, "
                         f"and {weights} holds no backbone (no backbone.* tensors): add --backbone-weights FILE "
                         "(the backbone's weights), or drop --backbone for a head-only checkpoint")
    recorded = _recorded_backbone(weights)  # the backbone the head was trained on, where its file says
    written, paired = recorded, False  # the record of the backbone written: the head's, for a head alone
    if backbone_weights is not None:
        from dinov2_dense.hub import _file_url_path, architecture_beside, load_backbone

        if backbone is None and not architecture_beside(_file_url_path(backbone_weights)):
            backbone = "dinov2_vits14"

        loaded = load_backbone(backbone, weights=backbone_weights)
        problem = head_width_problem(state, loaded.embed_dim)
        if problem:
            raise CheckpointError(f"{weights}: its head does not fit the backbone of --backbone-weights "
                                  f"{backbone_weights}: {problem}; give the backbone the head was trained on")
        backbone_state = loaded.state_dict()
        written = {**_written(str(backbone_weights), backbone_state), "forward": forward_settings(loaded)}
        if recorded is not None:
            paired = _check_pairing(weights, recorded, written, f"--backbone-weights {backbone_weights}",
                                    other_backbone)
        state.update({f"backbone.{k}": v for k, v in backbone_state.items()})
    elif recorded is not None and (own := _backbone_of(state)):
        written = _written(recorded.get("weights", f"the backbone.* tensors of {weights}"), own)
        paired = _check_pairing(weights, recorded, written, "the backbone.* tensors it holds", other_backbone)
        if paired:
            written["weights"] = f"the backbone.* tensors of {weights}"
    meta = {"source": str(weights), "converted_by": _CONVERTED_BY}
    if written is not None:
        meta["backbone"] = written
    inputs = _recorded_head_inputs(weights)
    if inputs is not None:  # what the head read of its backbone: test of the output checks it
        meta["head_inputs"] = inputs
    if paired:  # --other-backbone: what the head was trained on, beside what it is paired with
        meta["head_trained_on"] = recorded
    with atomic_path(out) as tmp:
        torch.save({"state_dict": state, "meta": meta}, tmp)
    return out


#: Head tensors whose input width follows from the backbone's width D: (key, axis of the input channels,
#: head kind, f). A DPT head reads exactly D; the others f x D x n channels for n >= 1 layers.
_HEAD_WIDTHS = (
    ("decode_head.reassemble_blocks.projects.0.conv.weight", 1, "DPT", 1),  # (c0, D, 1, 1): exactly D
    ("decode_head.bn.weight", 0, "BN", 1),  # (C,): D per map (lin. D, +ms 4 D; with class tokens 2 D each)
    ("decode_head.conv_depth.weight", 1, "linear depth", 2),  # (bins, C, 1, 1): 2 D per (map, class token) pair
)


def head_width_problem(state: dict[str, Tensor], width: int) -> str | None:
    """What keeps a head (``decode_head.*`` tensors of ``state``) from reading a backbone ``width`` wide,
    naming the head's key and both widths; None when it fits (or no key tells)."""
    for key, axis, kind, factor in _HEAD_WIDTHS:
        value = state.get(key)
        if value is None or value.dim() <= axis:
            continue
        got = int(value.shape[axis])
        if kind == "DPT" and got != width:
            return f"{key} reads {got} channels, the backbone is {width} wide"
        if kind != "DPT" and got % (factor * width):
            need = f"{width} x n" if factor == 1 else f"{factor} x {width} x n"
            return f"{key} has {got} channels, but a {kind} head on a backbone {width} wide has {need} (n layers)"
    return None


def check_backbone(backbone: str) -> None:
    """Refuse a ``backbone`` that is neither a zoo name nor an existing architecture JSON, naming it: a
    value that looks like a path (a ``.json`` name, or one with a folder in it) as a missing file."""
    from dinov2_dense.hub import BACKBONES, get_spec

    path = Path(backbone).expanduser()
    if not (backbone.endswith(".json") or "/" in backbone or os.sep in backbone):
        if backbone in BACKBONES or not path.exists():
            get_spec(backbone)  # a KeyError naming the zoo
            return
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such architecture file")
    if not path.is_file():
        raise IsADirectoryError(f"{path}: a folder, not an architecture JSON file")
    if path.suffix != ".json":
        raise ValueError(f"{path}: not an architecture JSON (the backbone is a zoo name or a .json file, such as "
                         "the backbone.json of a pretraining export)")


def main(argv: list[str] | None = None) -> int:
    """The command: 0 when converted, 2 for an error in what was given (one line; ``--debug`` or
    ``DINOV2_DENSE_DEBUG=1`` for the traceback), 1 for a bug (with its traceback), as ``dinov2-dense``."""
    import argparse

    from dinov2_dense.cli import DEBUG_ENV, run_command

    ap = argparse.ArgumentParser(prog="python -m dinov2_dense.mmseg.convert", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("from-mmseg", help="an mmseg checkpoint -> a load_model weights file")
    a.add_argument("checkpoint")
    a.add_argument("out")
    a.add_argument("--model", default=None, help="zoo model whose head the checkpoint must fit")
    a.set_defaults(func=_cmd_from_mmseg)
    b = sub.add_parser("to-mmseg", help="a load_model weights file (or an official head file) -> an mmseg checkpoint")
    b.add_argument("weights")
    b.add_argument("out", help="the mmseg checkpoint to write: a torch file (.pth), which mmseg loads")
    b.add_argument("--backbone", default=None,
                   help="the backbone of --backbone-weights: a zoo name or an architecture JSON (default: the "
                        "backbone.json beside --backbone-weights, a pretraining export's, else dinov2_vits14)")
    b.add_argument("--backbone-weights", default=None)
    b.add_argument("--other-backbone", action="store_true",
                   help="pair a head with another backbone than the one its checkpoint records it was trained on "
                        "(meta.backbone; refused without this option)")
    b.set_defaults(func=_cmd_to_mmseg)
    for command in (a, b):
        command.add_argument("--overwrite", action="store_true", help="replace an existing output file")
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
    args = ap.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    return run_command(args, f"{ap.prog} {args.direction}", debug)


def _cmd_from_mmseg(args) -> int:
    if args.model is not None:
        from dinov2_dense.zoo import get_model_spec

        try:
            get_model_spec(args.model)
        except KeyError as exc:
            raise KeyError(f"--model {args.model}: {exc.args[0]}") from None
    print(from_mmseg(args.checkpoint, args.out, args.model, overwrite=args.overwrite))
    return 0


def _cmd_to_mmseg(args) -> int:
    if args.backbone is not None:
        try:
            check_backbone(args.backbone)
        except KeyError as exc:
            raise KeyError(f"--backbone {args.backbone}: {exc.args[0]}") from None
        except (OSError, ValueError) as exc:
            raise type(exc)(f"--backbone {exc}") from None
    print(to_mmseg(args.weights, args.out, args.backbone_weights, args.backbone, overwrite=args.overwrite,
                   other_backbone=args.other_backbone))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
