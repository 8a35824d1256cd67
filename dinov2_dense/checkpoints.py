"""Read DINOv2 weights in every common format into the official state-dict layout; write safetensors.

One converter per foreign format, applied at load time (in the manner of timm's
``checkpoint_filter_fn``):

* official ``.pth`` files, including training checkpoints (``teacher.backbone.`` /
  ``student.backbone.`` / ``backbone.`` prefixes, ``block_chunks`` keys ``blocks.C.N``; of a
  pretraining checkpoint the teacher is taken, while a distillation checkpoint, whose
  ``teacher.backbone.*`` is the frozen input and whose students are ``teacher.ema<i>_backbone.*``,
  is refused, naming the student exports to give instead);
* Hugging Face transformers ``Dinov2Model`` / ``Dinov2WithRegistersModel`` (safetensors or bin,
  a file or a ``save_pretrained`` directory, whole or sharded with a ``*.index.json``);
* timm ``vit_*_patch14_dinov2`` and ``vit_*_patch14_reg4_dinov2``.

Files we did not write are read with ``torch.load(weights_only=True)``. :func:`weight_file_problem`
tells from a file's header and end alone (no tensor loaded) whether it is a complete weight file of
its format: a download is checked with it before it enters the weights cache.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .settings import size_of_width

__all__ = [
    "CheckpointError",
    "CheckpointReadError",
    "read_checkpoint",
    "weight_file_problem",
    "detect_format",
    "to_official",
    "describe_architecture",
    "load_backbone_weights",
    "save_safetensors",
    "fingerprint",
    "features_fingerprint",
    "distilled_students",
]



class CheckpointError(ValueError):
    """A weight file that cannot be read or does not fit the model; the message says why."""


# -- reading ------------------------------------------------------------------------------
class CheckpointReadError(CheckpointError):
    """A file that cannot be read as weights at all (cut short, damaged, not a weight file): unlike a
    checkpoint that does not fit the model, fetching it again may help. ``reason`` says what is wrong,
    ``advice`` what to do (a caller that knows where the file came from may give other advice)."""

    def __init__(self, path: str | os.PathLike, reason: str, advice: str | None = None):
        super().__init__(f"{path}: {reason}" + (f"; {advice}" if advice else ""))
        self.path, self.reason, self.advice = Path(path), reason, advice

    def __reduce__(self):  # picklable (from a worker process) though its arguments are not the message
        return type(self), (self.path, self.reason, self.advice)


#: Files of a Hugging Face ``save_pretrained`` folder, in the order transformers prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a weight file (.pth/.pt/.bin/.safetensors), a shard index (``*.index.json``) or a Hugging
    Face ``save_pretrained`` directory (whole or sharded).

    Returns the raw dict (not yet converted). Wrappers ``{"model": ...}``, ``{"state_dict": ...}``
    and ``{"teacher": ...}`` are unwrapped.
    """
    path = Path(path)
    if path.is_dir():
        for name in HF_WEIGHT_FILES:
            if (path / name).is_file():
                return read_checkpoint(path / name)
        raise CheckpointReadError(path, f"directory holds none of {', '.join(HF_WEIGHT_FILES)} (the weights of a "
                                        "Hugging Face save_pretrained folder); give the weight file itself")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weight file")
    if path.name.endswith(".index.json"):
        return _read_sharded(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text would advise weights_only=False: not for files we did not write
        problem = _problem_or_none(path)
        if problem is not None:
            raise CheckpointReadError(path, f"not a weight file: it is {problem}", NOT_WEIGHTS) from None
        raise CheckpointReadError(path, "not a weight file of tensors (it holds Python objects that are not loaded, "
                                        "for safety)") from None
    except Exception as exc:  # torch and safetensors raise many types for broken files
        problem = _problem_or_none(path)
        reason = (f"not a complete weight file: it is {problem}" if problem is not None else
                  f"cannot be read as a weight file ({type(exc).__name__}: {first_sentence(str(exc))}); it may be "
                  "truncated or not a checkpoint")
        raise CheckpointReadError(path, reason, REFETCH) from exc
    return _unwrap(obj, path)


#: Advice for a file that is damaged or cut short (the weights cache's own files get their own, in hub).
REFETCH = "if it was downloaded, fetch it again"
#: Advice for a file that is no weight file at all (a user's file given by mistake: not to be deleted).
NOT_WEIGHTS = "give a weight file (.pth, .pt, .bin or .safetensors) or a Hugging Face save_pretrained folder"


def _problem_or_none(path: Path) -> str | None:
    try:
        return weight_file_problem(path)
    except OSError:
        return None


def first_sentence(text: str, limit: int = 200) -> str:
    """The first line of an error's text, ended at its first sentence when long (torch appends
    paragraphs of advice), and never cut inside a word."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if len(line) > limit // 2 and (m := re.search(r"[.!?](?=\s)", line)):
        line = line[: m.end()]
    if len(line) > limit:
        line = line[:limit].rsplit(" ", 1)[0] + " ..."
    return line


def _read_sharded(index: Path) -> dict[str, Tensor]:
    """The tensors of a sharded save (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``:
    a ``weight_map`` of tensor name -> shard file beside the index), each from the shard the index names."""
    try:
        spec = json.loads(index.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointReadError(index, f"not a readable shard index ({first_sentence(str(exc))})") from None
    weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
        isinstance(v, str) and v and Path(v).name == v for v in weight_map.values()
    ):
        raise CheckpointReadError(index, 'a shard index needs a "weight_map" of tensor name -> shard file name '
                                         "(a file beside the index)")
    shards = list(dict.fromkeys(weight_map.values()))
    missing = [s for s in shards if not (index.parent / s).is_file()]
    if missing:
        raise CheckpointReadError(index, f"{len(missing)} of its {len(shards)} shards are missing from {index.parent} "
                                         f"({_list(missing)}); fetch them beside the index")
    out: dict[str, Tensor] = {}
    for shard in shards:
        part = read_checkpoint(index.parent / shard)
        wanted = [k for k, s in weight_map.items() if s == shard]
        absent = [k for k in wanted if k not in part]
        if absent:
            raise CheckpointReadError(index.parent / shard, f"lacks {len(absent)} tensors that {index.name} places "
                                                            f"there ({_list(absent)}): a shard of another save?")
        out.update((k, part[k]) for k in wanted)
    return out


# -- is a file a complete weight file? (header and end only) ---------------------------------
#: Legacy (non-zip) torch.save files begin with a pickle protocol opcode: 0x80, then protocol 2-5.
_PICKLE_PROTOCOLS = (2, 3, 4, 5)


def weight_file_problem(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being a complete weight file of its format (by suffix, as
    :func:`read_checkpoint` reads it), as a phrase ("an HTML page of 27 bytes"); None when it looks
    whole. Only the header and the end are read, no tensor: a torch zip checkpoint must have its zip
    directory (at the end of the file) listing a ``data.pkl`` whose bytes check out; a safetensors
    file a JSON header whose tensors end exactly at the file's end; a legacy (non-zip) torch file is
    only checked to begin as a pickle (its end is not known without reading it all)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(512)
    if size == 0:
        return "an empty file"
    if path.suffix == ".safetensors":
        return _safetensors_problem(path, head, size)
    if head.startswith(b"PK"):
        return _torch_zip_problem(path, size)
    if len(head) >= 2 and head[0] == 0x80 and head[1] in _PICKLE_PROTOCOLS:
        return None
    return f"{_content(head, size)}, not a PyTorch checkpoint"


def _torch_zip_problem(path: Path, size: int) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            pickles = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
            if not pickles:
                return f"a zip archive of {size} bytes without data.pkl, not a PyTorch checkpoint"
            archive.read(pickles[0])  # small; its CRC is checked
            directory = getattr(archive, "start_dir", size)
            if any(i.header_offset + i.compress_size > directory for i in infos):
                return f"a damaged PyTorch checkpoint of {size} bytes (its entries overlap its zip directory)"
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError,
            ValueError) as exc:
        why = first_sentence(str(exc))
        why = "no zip directory at its end" if why == "File is not a zip file" else why
        return f"a PyTorch checkpoint cut short or damaged ({size} bytes: {why})"
    return None


def _safetensors_problem(path: Path, head: bytes, size: int) -> str | None:
    length = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if length <= 0 or len(head) < 9 or head[8:9] != b"{":
        return f"{_content(head, size)}, not a safetensors file"
    if 8 + length > size:
        return f"a safetensors file cut short ({size} bytes, less than its {8 + length}-byte header)"
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(length)
    try:
        header = json.loads(raw)
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return f"a damaged safetensors file of {size} bytes (its JSON header cannot be read)"
    expected = 8 + length + max(ends, default=0)
    if expected > size:
        return f"a safetensors file cut short ({size} of its {expected} bytes)"
    if expected < size:
        return f"a damaged safetensors file of {size} bytes (its last tensor ends at byte {expected})"
    return None


def _content(head: bytes, size: int) -> str:
    """What the first bytes of a file look like: an HTML page (a proxy's or captive portal's answer),
    text, or other bytes."""
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in low:
        return f"an HTML page of {size} bytes"
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") <= 1 and all(c.isprintable() or c in "\r\n\t\ufffd" for c in text):
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        return f"a text file of {size} bytes ({first[:60]!r})"
    return f"{size} bytes of another kind (beginning {head[:8].hex(' ')})"


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, Tensor) for v in obj.values()):
            for key in ("model", "state_dict", "teacher", "student"):
                if key in obj and isinstance(obj[key], Mapping):
                    obj = obj[key]
                    break
            else:
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    if not any(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no tensors (keys: {_preview(obj)})")
    return {k: v for k, v in obj.items() if isinstance(v, Tensor)}


def _preview(obj: Mapping, limit: int = 8) -> str:
    keys = list(obj)
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(map(str, keys[:limit])) + more


# -- format detection and conversion ------------------------------------------------------
def detect_format(sd: Mapping[str, Tensor]) -> str:
    """'official', 'training' (prefixed / chunked official), 'hf', 'timm' or 'unknown'."""
    keys = list(sd)
    if any(k.startswith(("embeddings.", "dinov2.embeddings.")) for k in keys):
        return "hf"
    if any(k.startswith(("teacher.backbone.", "student.backbone.", "backbone.", "module.")) for k in keys) or any(
        re.match(r"blocks\.\d+\.\d+\.", k) for k in keys
    ):
        return "training"
    if "reg_token" in sd or any(re.match(r"blocks\.\d+\.mlp\.fc1\.", k) for k in keys) and _timm_swiglu(sd):
        return "timm"
    if "cls_token" in sd and "pos_embed" in sd:
        return "official" if "mask_token" in sd else "timm"
    return "unknown"


def _timm_swiglu(sd: Mapping[str, Tensor]) -> bool:
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    return fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]


#: The backbones of a distillation checkpoint (pretrain.distill): each student's and its EMA's.
_DISTILLED = re.compile(r"^(?:module\.)?(?:teacher\.ema|student\.student)(\d+)_backbone\.")


def distilled_students(sd: Mapping[str, Tensor]) -> list[int]:
    """The students of a distillation checkpoint (``teacher.ema<i>_backbone.*`` /
    ``student.student<i>_backbone.*`` keys); empty for any other file."""
    return sorted({int(m.group(1)) for k in sd if (m := _DISTILLED.match(k))})


def distillation_refusal(students: list[int], source: str | os.PathLike | None = None) -> str:
    """Why a distillation checkpoint is not read as one backbone, and which files to give instead."""
    export = "export"
    if source is not None and Path(source).suffix in (".pth", ".pt"):
        export = str(Path(source).parent / "export")
    names = ", ".join(f"student{i}" for i in students)
    return (f"a distillation checkpoint (its students: {names}): its teacher.backbone.* is the frozen teacher the "
            f"students learnt from, not a distilled student, so no backbone is taken from it; give a student's "
            f"export instead ({export}/student{students[0]}.safetensors, with student{students[0]}.json beside "
            "it), or the teacher's own weights file")


def _from_training(sd: Mapping[str, Tensor], source: str | os.PathLike | None = None) -> dict[str, Tensor]:
    keys = list(sd)
    students = distilled_students(sd)
    if students:  # "the teacher is taken" would silently give the frozen input, not what was trained
        raise CheckpointError((f"{source}: " if source is not None else "") + distillation_refusal(students, source))
    for prefix in ("teacher.backbone.", "student.backbone.", "module.backbone.", "backbone.", "module."):
        if any(k.startswith(prefix) for k in keys):
            sd = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    # block_chunks: blocks.<chunk>.<global index>.* -> blocks.<global index>.*
    return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in sd.items()}


def _from_hf(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    out: dict[str, Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.register_tokens": "register_tokens",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    block = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "attention.o_proj": "attn.proj",
        "layer_scale1.lambda1": "ls1.gamma",
        "layer_scale2.lambda1": "ls2.gamma",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "mlp.weights_in": "mlp.w12",
        "mlp.weights_out": "mlp.w3",
        "mlp.down_proj": "mlp.w3",
    }
    # transformers 5 names modules q_proj/k_proj/v_proj and gate_proj/up_proj in memory;
    # its files keep query/key/value and weights_in. Both are packed into qkv and w12.
    packed = {"query": ("qkv", 0), "q_proj": ("qkv", 0), "key": ("qkv", 1), "k_proj": ("qkv", 1),
              "value": ("qkv", 2), "v_proj": ("qkv", 2), "gate_proj": ("w12", 0), "up_proj": ("w12", 1)}
    groups: dict[tuple[int, str, str], dict[int, Tensor]] = {}
    for key, value in sd.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value  # unknown keys are reported by the loader
            continue
        idx, rest = int(m.group(1)), m.group(2)
        qm = re.match(r"(?:attention\.attention\.|attention\.|mlp\.)(\w+)\.(weight|bias)$", rest)
        if qm and qm.group(1) in packed:
            target, slot = packed[qm.group(1)]
            groups.setdefault((idx, target, qm.group(2)), {})[slot] = value
            continue
        for src, dst in block.items():
            if rest.startswith(src + ".") or rest == src:
                out[f"blocks.{idx}.{dst}{rest[len(src):]}"] = value
                break
        else:
            out[key] = value
    for (idx, target, kind), parts in groups.items():
        n = 3 if target == "qkv" else 2
        if sorted(parts) != list(range(n)):
            raise CheckpointError(f"Hugging Face checkpoint: layer {idx} has only parts {sorted(parts)} of {target}.{kind}")
        module = "attn.qkv" if target == "qkv" else "mlp.w12"
        out[f"blocks.{idx}.{module}.{kind}"] = torch.cat([parts[i] for i in range(n)], dim=0)
    return out


def _from_timm(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = dict(sd)
    swiglu = _timm_swiglu(sd)
    if "reg_token" in out:
        # timm folds the class position into cls_token and keeps patch positions only
        out["register_tokens"] = out.pop("reg_token")
        pos = out.pop("pos_embed")
        out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    if swiglu:
        out = {re.sub(r"\.mlp\.fc1\.", ".mlp.w12.", re.sub(r"\.mlp\.fc2\.", ".mlp.w3.", k)): v for k, v in out.items()}
    for key in ("head.weight", "head.bias"):
        if key in out and out[key].numel() == 0:
            out.pop(key)
    if "mask_token" not in out and "cls_token" in out:
        # timm drops the (inference-unused) mask token; restore it so the model loads strictly
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out


def to_official(sd: Mapping[str, Tensor], source: str | os.PathLike | None = None) -> tuple[dict[str, Tensor], str]:
    """Convert any supported layout to the official one; returns (state dict, detected format).
    A distillation checkpoint (several backbones: the frozen teacher and the students) raises
    :class:`CheckpointError` naming ``source`` and the files to give instead."""
    fmt = detect_format(sd)
    if fmt == "training":
        sd = _from_training(sd, source)
        inner = detect_format(sd)
        if inner in ("hf", "timm"):
            return to_official(sd)[0], f"training/{inner}"
        return dict(sd), fmt
    if fmt == "hf":
        return _from_hf(sd), fmt
    if fmt == "timm":
        return _from_timm(sd), fmt
    return dict(sd), fmt


def describe_architecture(sd: Mapping[str, Tensor]) -> str:
    """Human description of the backbone an official-layout state dict belongs to."""
    if "cls_token" not in sd or "patch_embed.proj.weight" not in sd:
        return "not a DINOv2 backbone (no cls_token / patch_embed.proj.weight)"
    dim = sd["cls_token"].shape[-1]
    depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
    patch = sd["patch_embed.proj.weight"].shape[-1]
    regs = sd["register_tokens"].shape[1] if "register_tokens" in sd else 0
    ffn = "swiglu" if any(".mlp.w12." in k for k in sd) else "mlp"
    grid = int((sd["pos_embed"].shape[1] - 1) ** 0.5) if "pos_embed" in sd else 0
    size = size_of_width(dim)
    zoo = f"dinov2_vit{size}{patch}{'_reg' if regs else ''}" if size else "a ViT of no released size"
    return (
        f"{zoo}: width {dim}, {depth} blocks, patch {patch}, {ffn} FFN, {regs} register tokens, "
        f"position grid {grid}x{grid} (img_size {grid * patch})"
    )


def load_backbone_weights(model: nn.Module, source: str | os.PathLike | Mapping[str, Tensor]) -> str:
    """Load a file or state dict of any supported format into ``model`` strictly.

    Returns the detected format. Raises CheckpointError naming missing, unexpected and
    mis-shaped keys and the architecture the checkpoint looks like.
    """
    label = str(source) if not isinstance(source, Mapping) else "state dict"
    raw = read_checkpoint(source) if not isinstance(source, Mapping) else dict(source)
    sd, fmt = to_official(raw, label)
    own = model.state_dict()
    parts = key_mismatches(own, sd)
    if parts:
        # one sentence a line, each ended, so that the message joined onto one line still reads
        raise CheckpointError(
            f"{label} ({fmt} format) does not fit this model ({describe_architecture(own)}).\n  "
            + "\n  ".join(f"{part}." for part in parts)
            + f"\n  The checkpoint looks like {describe_architecture(sd)}."
        )
    refuse_nonfinite(sd, label)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    model.is_init = True  # loaded weights: frameworks that honour ``is_init`` (mmengine) leave them alone
    return fmt


def nonfinite_keys(sd: Mapping[str, Tensor]) -> list[str]:
    """Keys of floating-point tensors holding NaN or infinite values (a diverged or damaged file)."""
    return [k for k, v in sd.items() if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def refuse_nonfinite(sd: Mapping[str, Tensor], label: str) -> None:
    """Raise CheckpointError naming the tensors of ``sd`` that hold NaN or infinite values."""
    bad = nonfinite_keys(sd)
    if bad:
        raise CheckpointError(f"{label}: {len(bad)} tensor(s) hold NaN or infinite values ({_list(bad)}): the file "
                              "is damaged or comes from a run that diverged")


def key_mismatches(own: Mapping[str, Tensor], sd: Mapping[str, Tensor]) -> list[str]:
    """What keeps ``sd`` from loading strictly into a module whose state dict is ``own``: lines
    naming the missing, unexpected and mis-shaped keys (empty when it fits). A missing BatchNorm
    ``num_batches_tracked`` (files of older PyTorch and mmcv lack it) is no mismatch: torch's strict
    load fills it in, and it plays no part in inference."""
    missing = sorted((k for k in set(own) - set(sd) if not k.endswith(".num_batches_tracked")), key=_key_order)
    unexpected = sorted(set(sd) - set(own), key=_key_order)
    shapes = sorted((k for k in set(own) & set(sd) if own[k].shape != sd[k].shape), key=_key_order)
    parts = [f"{len(keys)} {title}{'s' if len(keys) > 1 else ''}: {_list(keys)}"
             for title, keys in (("missing key", missing), ("unexpected key", unexpected)) if keys]
    if shapes:
        desc = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in shapes[:6]]
        parts.append(f"{len(shapes)} {'keys' if len(shapes) > 1 else 'key'} of other shapes (checkpoint vs model): "
                     f"{'; '.join(desc)}")
    return parts


_TELLING_KEYS = ("cls_token", "pos_embed", "register_tokens", "patch_embed.proj.weight")


def _key_order(key: str) -> tuple[int, int, str]:
    """Keys that tell the architecture first, then other model-level keys, then blocks in numeric order."""
    if key in _TELLING_KEYS:
        return (0, _TELLING_KEYS.index(key), key)
    m = re.match(r"blocks\.(\d+)\.", key)
    return (2, int(m.group(1)), key) if m else (1, 0, key)


def _list(keys: list[str], limit: int = 6) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# -- writing ------------------------------------------------------------------------------
def save_safetensors(
    weights: nn.Module | Mapping[str, Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a state dict (or a module's) as safetensors, atomically (temp file, then rename); the same
    tensors and metadata give the same bytes (:func:`_sort_metadata`)."""
    from .fileio import atomic_path

    with atomic_path(path) as tmp:
        write_safetensors(weights, tmp, metadata)
    return Path(path)


def write_safetensors(weights: nn.Module | Mapping[str, Tensor], tmp: Path,
                      metadata: Mapping[str, str] | None = None) -> None:
    """:func:`save_safetensors`' writing, into the new file ``tmp`` (a temporary of an atomic write)."""
    from safetensors.torch import save_file

    sd = weights.state_dict() if isinstance(weights, nn.Module) else weights
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    # safetensors (like mkstemp) leaves mode 0600; give the file the mode the umask allows
    tmp.touch(exist_ok=False)
    mode = tmp.stat().st_mode & 0o777
    save_file(tensors, str(tmp), metadata=dict(metadata or {"format": "dinov2-dense"}))
    _sort_metadata(tmp)
    os.chmod(tmp, mode)


def _sort_metadata(path: Path) -> None:
    """Put the metadata of the safetensors file ``path`` in key order, in place: safetensors writes it in
    the order of a hash map seeded per process, so two writes of one file differed in bytes (a checksum or
    ``cmp`` could not tell that they agree). The header keeps its length (the same JSON, reordered), so
    only its bytes are rewritten; a header that would not (escapes written otherwise) is left as it is."""
    import json
    import struct

    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        raw = f.read(length)
        text = raw.rstrip(b" ")
        header = json.loads(text)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(ordered) == len(text) and ordered != text:
            f.seek(8)
            f.write(ordered)


def weights_form(model: nn.Module) -> str:
    """The form a model's weights are in: their dtype (``float32``, ``bfloat16``, ...), ``+float8`` with
    FP8 linear layers. It changes their bytes (and hash), not what the weights are."""
    from .models.float8 import Float8Linear

    form = str(next(model.parameters()).dtype).removeprefix("torch.")
    return form + ("+float8" if any(isinstance(m, Float8Linear) for m in model.modules()) else "")


def weights_identity(model: nn.Module, features: bool = False) -> dict[str, str]:
    """What a fitted result (a PCA basis) records of the backbone it came from: the SHA-256 of its
    weights (:func:`fingerprint`, as the kNN cache, the curation store and the demo tell backbones
    apart) and the form they were loaded in (their dtype, ``+float8`` with FP8 linears), which
    changes those bytes but not what the weights are. ``features``: also ``features_sha256``
    (:func:`features_fingerprint`, the same for the same weights read from any file format), hashed
    in the same pass."""
    form = weights_form(model)
    if not features:
        return {"weights_sha256": fingerprint(model), "weights_form": form, "forward": forward_settings(model)}
    prints = fingerprints(model)
    return {"weights_sha256": prints["sha256"], "weights_form": form, FEATURES_KEY: prints[FEATURES_KEY],
            "forward": forward_settings(model)}


#: The key under which records (a checkpoint's ``meta.backbone``, a PCA basis's info) keep
#: :func:`features_fingerprint`; records of older versions have only the weights' SHA-256.
FEATURES_KEY = "features_sha256"
#: Hashed first in :func:`features_fingerprint`: its digests are never those of :func:`fingerprint`.
_FEATURES_DOMAIN = b"dinov2-dense features v1;"


#: Settings of a backbone that change what it computes without changing any tensor of its state (so no
#: fingerprint sees them): the heads its attention splits the width into, its position embedding's resampling.
FORWARD_SETTINGS = ("num_heads", "interpolate_antialias", "interpolate_offset")


def forward_settings(module: nn.Module) -> dict:
    """:data:`FORWARD_SETTINGS` of a backbone, as JSON values (records keep them beside its fingerprints: the
    same weights read with another architecture file compute other features); ``{}`` for other modules."""
    kinds = {"num_heads": int, "interpolate_antialias": bool, "interpolate_offset": float}  # one JSON form each
    out = {}
    for key in FORWARD_SETTINGS:
        value = getattr(module, key, None)
        if value is None or isinstance(value, (str, bytes)):
            continue
        try:  # numpy's numbers too (an architecture read through numpy), 0 and 0.0 alike
            out[key] = kinds[key](value)
        except (TypeError, ValueError):
            continue
    return out


def head_output(predictor) -> dict:
    """What a depth head's numbers mean that no tensor of it records (checkpoints' ``meta.head_output``): the
    depth range of a DensePredictor (a linear head's bins span it, so another range rescales every
    prediction) and the linear head's bin and normalisation strategies; ``{}`` for segmentation."""
    if predictor.task != "depth":
        return {}
    head = predictor.decode_head
    record = {"min_depth": float(predictor.min_depth), "max_depth": float(predictor.max_depth)}
    record.update({k: getattr(head, k) for k in ("bins_strategy", "norm_strategy")
                   if isinstance(getattr(head, k, None), str)})
    return record


def head_output_difference(recorded, ours: Mapping) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, ours)`` where a ``meta.head_output`` record differs from :func:`head_output`;
    ``[]`` without a record (a checkpoint of an older version, an official head file)."""
    if not isinstance(recorded, Mapping):
        return []
    return [(k, recorded[k], v) for k, v in ours.items() if k in recorded and recorded[k] != v]


def forward_difference(recorded: Mapping, ours: Mapping) -> str | None:
    """Where two records' ``forward`` settings differ ("num_heads 3 -> 6"), or None (also where either
    lacks the record: one of an older version)."""
    theirs, mine = recorded.get("forward"), ours.get("forward")
    if not isinstance(theirs, Mapping) or not isinstance(mine, Mapping):
        return None
    differ = [f"{k} {theirs[k]} -> {mine[k]}" for k in FORWARD_SETTINGS
              if k in theirs and k in mine and theirs[k] != mine[k]]
    return ", ".join(differ) or None


def fingerprint(module: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and bytes), to tell backbones apart;
    or of such a dict itself (e.g. a copy on the host, hashed in another thread). The same weights
    read from another file format may differ here (see :func:`features_fingerprint`); caches keyed
    by it (kNN, curation store, feature cache, demo) keep it as it is."""
    return fingerprints(module, features=False)["sha256"]


def features_fingerprint(module: nn.Module | Mapping[str, Tensor]) -> str:
    """SHA-256 of what a DINOv2 backbone computes rather than of how its file stored it: of its
    :func:`canonical_backbone_state`. The same weights read from the official, timm or Hugging Face
    files give the same digest (timm drops the inference-unused ``mask_token`` and, for register
    models, folds the class position into ``cls_token``); other weights, or the same in another
    dtype, give another."""
    return fingerprints(module)[FEATURES_KEY]


def canonical_backbone_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official-layout state dict as the forward uses it: without ``mask_token`` (used only by
    masked pretraining inputs), with the class position folded into the class token
    (``cls_token + pos_embed[:, :1]``, the sum the forward adds, with -0.0 made 0.0) and
    ``pos_embed[:, 0]`` zeroed. Official and timm-converted files of the same weights give equal
    tensors; a state without ``cls_token`` / ``pos_embed`` only loses ``mask_token``."""
    out = {k: v for k, v in state.items() if k != "mask_token"}
    cls, pos = out.get("cls_token"), out.get("pos_embed")
    if (isinstance(cls, Tensor) and isinstance(pos, Tensor) and cls.dim() == 3 and pos.dim() == 3
            and cls.shape[:2] == (1, 1) and pos.shape[0] == 1 and pos.shape[1] >= 1 and cls.shape[2] == pos.shape[2]):
        cls, pos = cls.detach(), pos.detach()
        out["cls_token"] = (cls + pos[:, :1].to(device=cls.device, dtype=cls.dtype)) + 0.0
        folded = pos.clone()
        folded[:, 0] = 0
        out["pos_embed"] = folded
    return out


def fingerprints(module: nn.Module | Mapping[str, Tensor], features: bool = True) -> dict[str, str]:
    """``{"sha256": fingerprint, "features_sha256": features_fingerprint}`` of a module or state
    dict, in one pass over its tensors (each copied to the host once); ``features`` False: the first only."""
    import hashlib

    state = module.state_dict() if isinstance(module, nn.Module) else module
    canonical = canonical_backbone_state(state) if features else {}
    weights, feats = hashlib.sha256(), hashlib.sha256(_FEATURES_DOMAIN)

    def update(digest, name: str, t: Tensor) -> None:
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.view(torch.uint8).numpy() if t.numel() else b"")

    for name, tensor in sorted(state.items()):
        t = tensor.detach().cpu().contiguous()
        update(weights, name, t)
        if not features or name not in canonical:
            continue
        if canonical[name] is not tensor:  # folded (cls_token, pos_embed)
            t = canonical[name].detach().cpu().contiguous()
        update(feats, name, t)
    out = {"sha256": weights.hexdigest()}
    if features:
        out[FEATURES_KEY] = feats.hexdigest()
    return out


def backbone_difference(recorded: Mapping, ours: Mapping[str, str],
                        weights_key: str = "sha256") -> tuple[str, str, str] | None:
    """Whether two records of a backbone (a checkpoint's ``meta.backbone``, a PCA basis's info)
    name other backbones: None when they name the same one. Compared by :data:`FEATURES_KEY` where
    both have it (the same weights from another file format are the same), else by the weights'
    SHA-256 under ``weights_key`` (records of older versions: the same weights in another format
    differ there too). Else ``(label, recorded's, ours)``: the label, ``"features sha256"`` or
    ``"sha256"``, tells the message which digest differs (and whether the features are known to)."""
    theirs, mine = recorded.get(FEATURES_KEY), ours.get(FEATURES_KEY)
    if isinstance(theirs, str) and isinstance(mine, str):
        return None if theirs == mine else ("features sha256", theirs, mine)
    theirs, mine = recorded.get(weights_key), ours.get(weights_key)
    return None if theirs == mine else ("sha256", str(theirs), str(mine))


def difference_reason(label: str, whose: str = "its") -> str:
    """What a :func:`backbone_difference` of ``label`` says: the features differ, or (a record of an older
    version, with only the weights' SHA-256) the weights do, which the same weights in another format do too."""
    if label.startswith("features"):
        return f"{whose} features differ"
    return (f"{whose} weights differ (a record of an older version has only the SHA-256 of the weights' bytes, which "
            "differs for the same weights read from another file format too, such as timm's)")
