"""The model zoo: names -> architecture, weight files, URLs; where weight files are looked for.

``load_backbone("dinov2_vits14_reg")`` finds ``dinov2_vits14_reg4_pretrain.pth`` in this order:

1. an explicit path (``weights="path/to/file"``);
2. the directory named by ``$DINOV2_DENSE_WEIGHTS``;
3. torch hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``), where
   ``torch.hub.load('facebookresearch/dinov2', ...)`` would have put it;
4. a download from the official URL (``$DINOV2_DENSE_BASE_URL`` replaces the host, for mirrors)
   into that cache, with a progress bar, a size check, a SHA-256 check where the checksum is
   known, a check that what arrived is a complete weight file (the zoo publishes no checksums: a
   proxy's HTML page or a cut-short transfer must not enter the cache), and an atomic rename.
   ``DINOV2_DENSE_OFFLINE=1`` forbids downloads.

Embedded backbones (``dinov2_dense_tiny``: ours, pretrained by our pretraining core on synthetic
scenes) ship inside the package (``dinov2_dense/weights/``): no search, no download.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import numbers
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import models
from .checkpoints import CheckpointError, CheckpointReadError, load_backbone_weights, weight_file_problem
from .fileio import atomic_path, discard_stale_temporaries_in
from .settings import BACKBONE_SETTINGS, PATCH_SIZE

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"
WEIGHTS_ENV = "DINOV2_DENSE_WEIGHTS"
BASE_URL_ENV = "DINOV2_DENSE_BASE_URL"
OFFLINE_ENV = "DINOV2_DENSE_OFFLINE"
#: A partial download of a process that died is removed once nobody has written it for this long
#: (a process on another machine sharing the cache may still be writing a younger one).
STALE_DOWNLOAD_S = 600.0


@dataclass(frozen=True)
class BackboneSpec:
    """One zoo entry. ``kwargs`` are the DinoVisionTransformer settings of the official hub."""

    name: str
    arch: str
    filename: str
    kwargs: dict = field(default_factory=dict)
    sha256: str | None = None  # None: not published; the download is then only size-checked
    embedded: bool = False  # the file ships in the package (EMBEDDED_DIR): never looked for, never downloaded

    @property
    def url(self) -> str:
        if self.embedded:
            return self.package_file.as_uri()
        return official_url(self.name.removesuffix("_reg"), self.filename)

    @property
    def package_file(self) -> Path:
        return EMBEDDED_DIR / self.filename


def _official_zoo() -> dict[str, BackboneSpec]:
    zoo = {}
    for size, settings in BACKBONE_SETTINGS.items():
        stem = f"dinov2_vit{size}{PATCH_SIZE}"
        base = dict(img_size=518, patch_size=PATCH_SIZE, init_values=1.0, ffn_layer=settings.ffn_layer)
        zoo[stem] = BackboneSpec(stem, settings.arch, f"{stem}_pretrain.pth", dict(base))
        reg = dict(base, num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0)
        zoo[f"{stem}_reg"] = BackboneSpec(f"{stem}_reg", settings.arch, f"{stem}_reg4_pretrain.pth", reg)
    return zoo


ARCH_KEYS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "ffn_layer",
             "num_register_tokens", "interpolate_antialias", "interpolate_offset", "init_values", "qkv_bias",
             "proj_bias", "ffn_bias")


def check_architecture(arch: object, source: str) -> dict:
    """``arch`` (an architecture JSON's content) as DinoVisionTransformer keyword arguments, after
    checking every setting's type and range: a bad value is a ValueError naming ``source``, the key
    and the value, never a crash inside the model. ``null`` means the model's default, except for
    ``init_values``, where it means no LayerScale (what ``arch_kwargs`` writes for such a model)."""
    import json

    from .models.layers import swiglu_hidden_features
    from .models.vision_transformer import FFN_LAYERS

    if not isinstance(arch, dict):
        raise ValueError(f"{source}: expected a JSON object of DinoVisionTransformer settings "
                         f"({', '.join(ARCH_KEYS)}), got {_json_kind(arch)}")
    unknown = sorted(str(k) for k in set(arch) - set(ARCH_KEYS))
    if unknown:
        raise ValueError(f"{source}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                         f"an architecture file holds DinoVisionTransformer settings: {', '.join(ARCH_KEYS)}")
    missing = [k for k in ("embed_dim", "depth", "num_heads") if arch.get(k) is None]
    if missing:
        raise ValueError(f"{source}: needs embed_dim, depth and num_heads (missing: {', '.join(missing)})")

    def bad(key: str, expected: str) -> ValueError:
        value = arch[key]
        kind = "" if is_number(value) else f" ({_json_kind(value)})"
        return ValueError(f"{source}: {key} = {json.dumps(value, default=repr)}{kind}; expected {expected}")

    def is_int(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    def is_number(v) -> bool:
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)

    for key in ("embed_dim", "depth", "num_heads", "patch_size", "img_size"):
        if arch.get(key) is not None and not (is_int(arch[key]) and arch[key] > 0):
            raise bad(key, "a positive whole number")
    if arch["embed_dim"] % arch["num_heads"]:
        raise ValueError(f"{source}: embed_dim = {arch['embed_dim']} is not a multiple of num_heads = "
                         f"{arch['num_heads']} (each head takes an equal share of the width)")
    patch = arch.get("patch_size") or 14
    if arch.get("img_size") is not None and arch["img_size"] < patch:
        raise bad("img_size", f"at least patch_size ({patch}): it sets the stored position grid")
    if arch.get("num_register_tokens") is not None and not (is_int(arch["num_register_tokens"])
                                                           and arch["num_register_tokens"] >= 0):
        raise bad("num_register_tokens", "a whole number >= 0 (4 for the register models)")
    ffn = arch.get("ffn_layer")
    if ffn is not None and (not isinstance(ffn, str) or ffn not in FFN_LAYERS):
        raise bad("ffn_layer", f"one of {', '.join(map(repr, FFN_LAYERS))}")
    if arch.get("mlp_ratio") is not None:
        if not (is_number(arch["mlp_ratio"]) and arch["mlp_ratio"] > 0):
            raise bad("mlp_ratio", "a number > 0 (4.0 in DINOv2)")
        hidden = int(arch["embed_dim"] * arch["mlp_ratio"])
        if (hidden if ffn in ("mlp", None) else swiglu_hidden_features(hidden)) < 1:
            raise bad("mlp_ratio", f"a larger number: the FFN of width {arch['embed_dim']} would have no hidden unit")
    if arch.get("init_values") is not None and not (is_number(arch["init_values"]) and arch["init_values"] >= 0):
        raise bad("init_values", "a number > 0 (the LayerScale init, 1.0 in DINOv2), or 0 or null for no LayerScale")
    if arch.get("interpolate_offset") is not None and not (is_number(arch["interpolate_offset"])
                                                          and arch["interpolate_offset"] >= 0):
        raise bad("interpolate_offset", "a number >= 0 (0.1 for the original models, 0.0 for the register ones)")
    for key in ("qkv_bias", "proj_bias", "ffn_bias", "interpolate_antialias"):
        if arch.get(key) is not None and not isinstance(arch[key], bool):
            raise bad(key, "true or false")
    return {k: v for k, v in arch.items() if v is not None or k == "init_values"}


def _json_kind(value: object) -> str:
    """How a JSON value reads to the person who wrote it."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


#: Package data: the embedded backbones' weights, architecture JSONs and model cards.
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights"
#: The embedded backbone the demo falls back to when the official weights are not at hand.
DEFAULT_EMBEDDED = "dinov2_dense_tiny"


def _embedded_zoo() -> dict[str, BackboneSpec]:
    """One entry per ``NAME.json`` + ``NAME.safetensors`` pair in the package's weights folder."""
    import json

    zoo = {}
    for arch_file in sorted(EMBEDDED_DIR.glob("*.json")):
        name = arch_file.stem
        kwargs = check_architecture(json.loads(arch_file.read_text()), str(arch_file))
        zoo[name] = BackboneSpec(name, "DinoVisionTransformer", f"{name}.safetensors", kwargs, embedded=True)
    return zoo


BACKBONES: dict[str, BackboneSpec] = {**_official_zoo(), **_embedded_zoo()}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; the zoo has: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def build_backbone(name: str, **overrides) -> models.DinoVisionTransformer:
    """The architecture of a zoo entry with random weights (official init); ``overrides`` as
    :func:`zoo_kwargs` takes them."""
    spec = get_spec(name)
    return getattr(models, spec.arch)(**zoo_kwargs(name, **overrides))


#: The position-embedding interpolation of the official models without and with register tokens.
INTERPOLATION = {False: dict(interpolate_antialias=False, interpolate_offset=0.1),
                 True: dict(interpolate_antialias=True, interpolate_offset=0.0)}


def zoo_kwargs(name: str, **overrides) -> dict:
    """The DinoVisionTransformer settings of zoo entry ``name`` with ``overrides``. Overrides that
    turn register tokens on or off (``dinov2_vits14`` with ``num_register_tokens=4``, ``..._reg``
    with 0) take the position-embedding interpolation the official models of that kind have (the
    register models: ``interpolate_antialias=True, interpolate_offset=0.0``), where they do not set
    it themselves, as the zoo, the Hugging Face configs and pretraining pair them: the interpolation
    the features of such weights were learnt with."""
    spec = get_spec(name)
    kwargs = {**spec.kwargs, **overrides}
    registers = kwargs.get("num_register_tokens") or 0
    if bool(registers) != bool(spec.kwargs.get("num_register_tokens") or 0):
        kwargs.update({k: v for k, v in INTERPOLATION[bool(registers)].items() if k not in overrides})
    return kwargs


def hub_entry(name: str, *, pretrained: bool = True, weights: str | os.PathLike = "LVD142M",
              **kwargs) -> models.DinoVisionTransformer:
    """The torch.hub entry ``name`` (``hubconf.py``): ``pretrained=False`` random weights, ``weights``
    "LVD142M" the official file, or a weight file (path or URL); ``kwargs`` as :func:`load_backbone`
    takes them (architecture overrides, with :func:`zoo_kwargs`'s interpolation, ``device``, ...).
    A weight file whose position grid differs from the entry's (a pretraining export of 56-px
    crops) is refused with what to pass instead: ``img_size=...``, or ``load_backbone(None, weights=FILE)``,
    which reads the architecture JSON beside the file."""
    if weights != "LVD142M" and pretrained and not isinstance(weights, (str, os.PathLike)):
        raise ValueError(f"unsupported weights {weights!r}")
    source = None if not pretrained else ("official" if weights == "LVD142M" else weights)
    try:
        return load_backbone(name, weights=source, **kwargs)
    except CheckpointError as exc:
        hint = _grid_hint(name, source, kwargs) if source not in (None, "official") else None
        if hint is None:
            raise
        raise CheckpointError(f"{exc}\n  {hint}") from None


def _grid_hint(name: str, weights, overrides: dict) -> str | None:
    """What to pass to the torch.hub entry ``name`` when the file ``weights`` holds another position
    grid than the entry builds; None when the grids agree (or the file cannot say)."""
    from .checkpoints import read_checkpoint, to_official

    path = _file_url_path(weights)
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        try:
            path = _fetch_url(path)  # already fetched: the load got as far as the shapes
        except (OSError, ValueError):
            return None
    path = Path(path).expanduser()
    try:
        sd, _ = to_official(read_checkpoint(path), str(path))
    except (CheckpointError, OSError, ValueError):
        return None
    pos = sd.get("pos_embed")
    arch = zoo_kwargs(name, **{k: v for k, v in overrides.items() if k in ARCH_KEYS})
    patch = int(arch.get("patch_size") or PATCH_SIZE)
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3:
        return None
    side = math.isqrt(pos.shape[1] - 1)
    own = int(arch.get("img_size") or 518) // patch
    if side * side != pos.shape[1] - 1 or side == own:
        return None
    beside = arch_file_beside(path)
    instead = (f"or load it with dinov2_dense.load_backbone(None, weights={str(path)!r}), which reads the "
               f"architecture in {beside} beside it" if beside is not None else
               f"or dinov2_dense.load_backbone(None, weights={str(path)!r}) with the architecture JSON of the run "
               f"that wrote it beside the file (same stem, or backbone.json)")
    return (f"torch.hub entry {name}: {path} holds a {side}x{side} position grid (img_size {side * patch}) and the "
            f"entry builds {own}x{own} (img_size {own * patch}): pass img_size={side * patch} "
            f"(torch.hub.load(..., weights=FILE, img_size={side * patch})), {instead}.")


# -- finding and fetching weight files ----------------------------------------------------
def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        import warnings

        warnings.warn(message, stacklevel=3)


def candidate_paths(filename: str) -> list[Path]:
    """Places a weight file is looked for, in order (environment directory, torch hub cache)."""
    places = []
    if os.environ.get(WEIGHTS_ENV):
        folder = Path(os.environ[WEIGHTS_ENV]).expanduser()
        if not folder.is_dir():
            _warn_once(f"${WEIGHTS_ENV}={folder} is not a folder; weights are looked for elsewhere")
        places.append(folder / filename)
    places.append(hub_checkpoint_dir() / filename)
    return places


def find_weights(name: str) -> Path | None:
    """The local weight file of a zoo entry, or None."""
    spec = get_spec(name)
    if spec.embedded:
        return spec.package_file if spec.package_file.is_file() else None
    return next((p for p in candidate_paths(spec.filename) if p.is_file()), None)


class WeightsNotFoundError(FileNotFoundError):
    """No local weight file and no way to download it; the message lists where we looked."""


#: How to go on without the weights, appended to every "not found" message.
NO_WEIGHTS_HINT = (f"To go on without a download: --model {DEFAULT_EMBEDDED} on the command line, "
                   f"load_backbone(\"{DEFAULT_EMBEDDED}\") in Python (a small backbone embedded in the package, "
                   "pretrained by us on synthetic scenes: its features mean little on real images); or --weights "
                   "random, weights=None in Python (random weights: features, maps and metrics then mean nothing).")


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True,
             verify: Callable[[Path], str | None] | None = None) -> Path:
    """Fetch ``url`` to ``dest`` atomically; check length, if given SHA-256, and if given ``verify``
    (what is wrong with the file, e.g. :func:`~dinov2_dense.checkpoints.weight_file_problem`, or None).

    A failed, short or refused transfer leaves no file at ``dest`` (the partial temp file is
    removed). Partial files that downloads killed with ``kill -9`` left in ``dest``'s folder are
    removed first (once idle for :data:`STALE_DOWNLOAD_S`).
    """
    dest = Path(dest)
    discard_stale_temporaries_in(dest.parent, idle_s=STALE_DOWNLOAD_S)
    digest = hashlib.sha256()
    received, total = 0, None
    with atomic_path(dest) as tmp:
        try:
            with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=60) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length is not None else None
                with _progress(total, dest.name, progress) as bar:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except http.client.HTTPException as exc:  # e.g. IncompleteRead of a chunked reply; not an OSError
            raise OSError(f"download of {url} failed ({type(exc).__name__}: {exc}); try again") from exc
        if total is not None and received != total:
            raise OSError(f"download of {url} stopped after {received} of {total} bytes (truncated); try again")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise OSError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected {sha256}: "
                "the file is corrupt or not the official one"
            )
        problem = verify(tmp) if verify is not None else None
        if problem is not None:
            raise OSError(f"download of {url} is not a whole weight file: it is {problem}; nothing was saved")
    return dest


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled)


def official_url(folder: str, filename: str) -> str:
    """URL of an official release file (``$DINOV2_DENSE_BASE_URL`` replaces the host)."""
    base = os.environ.get(BASE_URL_ENV, OFFICIAL_BASE_URL).rstrip("/")
    return f"{base}/{folder}/{filename}"


def resolve_file(
    filename: str, url: str, sha256: str | None = None, label: str | None = None,
    download_ok: bool = True, progress: bool = True,
) -> Path:
    """Find ``filename`` where weights are looked for, or download it from ``url`` into the hub cache."""
    label = label or filename
    places = candidate_paths(filename)
    found = next((p for p in places if p.is_file()), None)
    if found is not None:
        return _whole(found)
    forbidden = offline()
    looked = "\n".join(f"    {p}" for p in places)
    if forbidden or not download_ok:
        why = f"{OFFLINE_ENV} is set" if forbidden else "downloads are disabled"
        raise WeightsNotFoundError(
            f"weights for {label} ({filename}) not found, and {why}. Looked in:\n{looked}\n"
            f"Fetch {url} into one of those places (or set {WEIGHTS_ENV} to its directory).\n{NO_WEIGHTS_HINT}"
        )
    try:
        return download(url, hub_checkpoint_dir() / filename, sha256, progress, verify=weight_file_problem)
    except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: a malformed $DINOV2_DENSE_BASE_URL
        raise WeightsNotFoundError(
            f"weights for {label} ({filename}) not found locally and the download failed ({exc}). "
            f"Looked in:\n{looked}\nFetch {url} by hand into one of those places "
            f"(or set {WEIGHTS_ENV} to its directory).\n{NO_WEIGHTS_HINT}"
        ) from exc


def resolve_weights(name: str, download_ok: bool = True, progress: bool = True) -> Path:
    """Path of the official weight file of ``name``, downloading it if needed and allowed."""
    spec = get_spec(name)
    if spec.embedded:
        if not spec.package_file.is_file():
            raise WeightsNotFoundError(f"{name}: the package's own weight file {spec.package_file} is missing; "
                                       "reinstall dinov2-dense (pip install --force-reinstall dinov2-dense)")
        return spec.package_file
    return resolve_file(spec.filename, spec.url, spec.sha256, name, download_ok, progress)


def load_backbone(
    name: str | os.PathLike | dict | None,
    weights: str | os.PathLike | None = "official",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    eval_mode: bool = True,
    compile: bool | str = False,
    attention: str = "auto",
    float8: bool = False,
    label: str | None = None,
    **overrides,
) -> models.DinoVisionTransformer:
    """Build a backbone and load its weights.

    ``name``: a zoo name (``dinov2_vits14``), an architecture JSON file (the ``backbone.json`` that
    pretraining writes: ``DinoVisionTransformer`` keyword arguments), such a dict, or None with a
    weights file that has an architecture JSON beside it (same stem, or ``backbone.json`` in its
    folder: a pretraining export or work dir).
    ``weights``: "official" (find or download the released file; zoo names only), a local path
    (official, training, Hugging Face or timm format, or ours), an http(s) URL (fetched once into
    the hub cache as ``url-<hash>-NAME`` and used from there on, as torch.hub does: delete that file
    to fetch it again), a file URL (read in place), or None for random weights. Weights load strictly.
    ``dtype``: weights in ``bfloat16`` / ``float16`` (``"bf16"``, ``"fp16"`` or a torch dtype) for
    inference: half the memory, and faster where the device computes it natively (features and the
    feature extractors cast inputs to the weights' dtype and return float32). On a CPU without
    native bfloat16, and for float16 on any CPU, the weights stay float32 and a warning says why.
    ``compile``: ``torch.compile`` the blocks (True, or a mode: "default", "max-autotune",
    "reduce-overhead" for CUDA graphs); without a compiler the model runs uncompiled, with a warning.
    ``attention``: the preferred attention kernel ("auto": torch's choice, "flash", "efficient",
    "cudnn", "math"). See :mod:`dinov2_dense.models.speed`.
    ``float8``: the blocks' linear layers run as rowwise-scaled FP8 matrix products (H100/Ada-class
    GPUs; a ValueError on older ones), quantised from the weights in ``dtype``: faster, but it changes
    the features (cosine similarity 0.995-0.99999 to the unquantised ones, measured), so it is off. Use it with
    ``compile``, which fuses the input quantisation into the neighbouring ops (uncompiled it is slower
    than bf16). See :mod:`dinov2_dense.models.float8`.
    ``label``: how errors name what is loaded (default: ``name`` when it is a zoo name or an architecture
    file's path, else the weights); the command line gives the ``--weights`` it was given when no
    ``--model`` was, so that an error never names a model nobody chose.
    """
    if device is not None and str(device) != "meta":  # (meta: sizes without memory, as torch takes it)
        from .options import check_device  # a device this machine lacks: one line, not torch's error after the build

        device = check_device(f"cuda:{device}" if isinstance(device, int) else str(device), option="device")
    given_weights = weights
    weights = _file_url_path(weights)
    arch = _architecture(name, weights)
    if label is None:
        label = name if isinstance(name, str) else str(given_weights)
    model = build_backbone(name, **overrides) if arch is None else models.DinoVisionTransformer(**{**arch, **overrides})
    if weights is not None:
        if isinstance(weights, str) and weights == "official":
            if arch is not None:
                raise ValueError(f"{label}: an architecture file has no official weights; give a weight file "
                                 "(weights=FILE in Python, --weights FILE on the command line) or random weights "
                                 "(weights=None, --weights random)")
            path = resolve_weights(name)
        elif isinstance(weights, str) and weights.startswith(("http://", "https://")):
            path = _fetch_url(weights)
        else:
            path = Path(weights).expanduser()
            if not path.exists():
                raise WeightsNotFoundError(f"weights file {path} does not exist")
        try:
            load_backbone_weights(model, path)
        except CheckpointReadError as exc:
            if _in_cache(exc.path):
                raise _cached_unreadable(exc.path, exc.reason) from None
            raise CheckpointError(_cannot_load(label, exc)) from None
        except CheckpointError as exc:
            raise CheckpointError(_cannot_load(label, exc)) from None
    if isinstance(name, str) and name in BACKBONES:
        model.zoo_name = name  # what the model is, for records made of it (a PCA basis)
    if device is not None:
        model = model.to(device)
    if dtype is not None:
        model = model.to(weights_dtype(dtype, next(model.parameters()).device))
    model = model.eval() if eval_mode else model
    from .models.speed import compile_blocks, set_attention

    set_attention(model, attention)
    if float8:  # before compiling: the compiler then fuses the quantisation into its neighbours
        from .models.float8 import float8_linears

        float8_linears(model)
    if compile:
        compile_blocks(model, "default" if compile is True else compile)
    return model


def _cannot_load(label: str, exc: Exception) -> str:
    """``cannot load LABEL: ...``, the label once where the error begins with it (a file named as given)."""
    text = str(exc)
    return f"cannot load {text}" if text.startswith(f"{label}: ") else f"cannot load {label}: {text}"


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16, "half": torch.float16}


def weights_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """The weight dtype to use for ``dtype`` on ``device``: as asked, except on a CPU that would run
    it far slower than float32 or gain little (bfloat16 without AVX512-BF16 / AMX: 3-4x slower; float16 on any
    CPU), where it is float32 with a warning that says so."""
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(sorted(_DTYPES))}")
        dtype = _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype {dtype}: expected float32, bfloat16 or float16")
    if torch.device(device).type == "cpu" and dtype != torch.float32:
        from .features import cpu_has_native_bf16

        bf16 = cpu_has_native_bf16()
        if dtype == torch.float16 or not bf16:
            import warnings

            why = ("this CPU has no native bfloat16 (AVX512-BF16 / AMX), so they would run 3-4x slower"
                   if dtype == torch.bfloat16 else
                   "float16 on a CPU gains little over float32 with AVX512-FP16 and runs 3-4x slower without it"
                   + ("; bfloat16 weights are the fast half precision on this CPU" if bf16 else ""))
            warnings.warn(f"{str(dtype).removeprefix('torch.')} weights requested, float32 kept: {why}", stacklevel=3)
            return torch.float32
    return dtype


def architecture(name: str | os.PathLike | dict | None, weights=None) -> models.DinoVisionTransformer:
    """The backbone ``load_backbone(name, weights)`` would build, with random weights and nothing
    loaded (build it under ``torch.device("meta")`` to get only its sizes)."""
    arch = _architecture(name, _file_url_path(weights))
    return build_backbone(name) if arch is None else models.DinoVisionTransformer(**arch)


def _refuse_distillation_checkpoint(path: Path) -> None:
    """A distillation run's checkpoint (its folder has no backbone.json) given where one backbone is
    wanted: the CheckpointError that names the student exports to give instead; nothing for other files."""
    from .checkpoints import CheckpointError, distillation_refusal, distilled_students, read_checkpoint

    if path.suffix not in (".pth", ".pt") or not path.is_file():
        return
    try:
        raw = read_checkpoint(path)
    except CheckpointError:
        return  # unreadable: the caller's error stands
    model = raw.get("model") if isinstance(raw.get("model"), dict) else raw
    students = distilled_students(model)
    if students:
        raise CheckpointError(f"{path}: {distillation_refusal(students, path)}")


def _arch_files_beside(weights: Path) -> list[Path]:
    """Where the architecture JSON of ``weights`` may lie: the same stem with ``.json``, and ``backbone.json``
    in its folder. A JSON given as weights (a Hugging Face sharded save's ``model.safetensors.index.json`` or
    ``pytorch_model.bin.index.json``) is no architecture of its own: only ``backbone.json`` is looked for, and
    then the folder's ``config.json`` (:func:`hf_config_beside`), as for the folder."""
    if weights.name in ("", ".."):  # "." or "..": the folder's own name (with_suffix needs a name)
        weights = Path(os.path.abspath(weights))
    same_stem = [] if weights.suffix.lower() == ".json" else [weights.with_suffix(".json")]
    return list(dict.fromkeys([*same_stem, weights.parent / "backbone.json"]))


def arch_file_beside(weights: str | os.PathLike) -> Path | None:
    """The architecture JSON that goes with a weights file (same stem, or ``backbone.json`` in its
    folder: a pretraining export's or run's), or None."""
    return next((c for c in _arch_files_beside(Path(weights).expanduser()) if c.is_file()), None)


#: transformers' defaults for the Dinov2Config settings that it leaves out of a config.json.
#: transformers' Dinov2Config defaults (Dinov2WithRegistersConfig's differ in patch_size: 16)
_HF_DEFAULTS = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "mlp_ratio": 4,
                "image_size": 224, "patch_size": 14, "qkv_bias": True, "layerscale_value": 1.0,
                "use_swiglu_ffn": False, "hidden_act": "gelu", "layer_norm_eps": 1e-6}


def hf_architecture(config: str | os.PathLike) -> dict:
    """The DinoVisionTransformer settings of a Hugging Face DINOv2 ``config.json`` (``model_type``
    ``dinov2`` or ``dinov2_with_registers``), with the original models' position-embedding
    interpolation (transformers resamples it its own way; the weights are the original models')."""
    import json

    path = Path(config)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable Hugging Face config ({exc})") from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind not in HF_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {kind!r} is not a DINOv2 backbone (dinov2 or dinov2_with_registers); "
                         "name the backbone")
    # transformers' defaults for what a config.json leaves out: its registers config's patch size is 16
    cfg = {**_HF_DEFAULTS, **({"patch_size": 16} if kind == "dinov2_with_registers" else {}), **cfg}
    for key, ours in (("hidden_act", "gelu"), ("layer_norm_eps", 1e-6)):
        if cfg[key] != ours:
            raise ValueError(f"{path}: {key} = {cfg[key]!r}; DINOv2 backbones have {ours!r}")
    registers = cfg.get("num_register_tokens", 4) if kind == "dinov2_with_registers" else 0
    return {"img_size": cfg["image_size"], "patch_size": cfg["patch_size"], "embed_dim": cfg["hidden_size"],
            "depth": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"], "mlp_ratio": cfg["mlp_ratio"],
            "ffn_layer": "swiglufused" if cfg["use_swiglu_ffn"] else "mlp", "qkv_bias": cfg["qkv_bias"],
            "init_values": cfg["layerscale_value"], "num_register_tokens": registers,
            "interpolate_antialias": registers > 0, "interpolate_offset": 0.0 if registers else 0.1}


#: The ``model_type`` of the Hugging Face configs of DINOv2 backbones.
HF_MODEL_TYPES = ("dinov2", "dinov2_with_registers")


def hf_config_beside(weights: str | os.PathLike) -> Path | None:
    """The Hugging Face ``config.json`` of a DINOv2 ``save_pretrained`` folder (``weights`` the folder or
    a file in it), or None: a ``config.json`` of anything else (a timm download's, a training run's) is
    no architecture of ours and is left alone."""
    import json

    w = Path(weights).expanduser()
    config = (w if w.is_dir() else w.parent) / "config.json"
    try:
        kind = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):  # none, unreadable, or not a JSON object
        return None
    return config if kind in HF_MODEL_TYPES else None


def architecture_beside(weights: str | os.PathLike) -> bool:
    """Whether ``load_backbone(None, weights)`` finds the architecture: a JSON beside the weights
    (:func:`arch_file_beside`) or a Hugging Face config (:func:`hf_config_beside`)."""
    return arch_file_beside(weights) is not None or hf_config_beside(weights) is not None


def _architecture(name, weights) -> dict | None:
    """The DinoVisionTransformer arguments ``name`` gives (None for a zoo name)."""
    import json

    if isinstance(name, dict):
        arch = dict(name)
        source = "the architecture dict"
    elif name is None or (isinstance(name, (str, os.PathLike)) and str(name).endswith(".json")):
        if name is None:
            if not isinstance(weights, (str, os.PathLike)) or str(weights) in ("official",):
                raise ValueError("load_backbone(None, ...) needs a weights file with an architecture JSON beside it")
            w = Path(weights).expanduser()
            if not w.exists():
                raise WeightsNotFoundError(f"{w}: no such weights file")
            found = arch_file_beside(w)
            if found is None:
                config = hf_config_beside(w)
                if config is not None:  # a Hugging Face folder, or a file in one
                    return check_architecture(hf_architecture(config), str(config))
                _refuse_distillation_checkpoint(w)  # a distill run writes no backbone.json: say what it is
                raise WeightsNotFoundError(f"{w}: no architecture file beside it (looked for "
                                           f"{', '.join(str(c) for c in _arch_files_beside(w))}, and for a "
                                           "Hugging Face config.json); name the backbone")
            name = found
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such architecture file")
        try:
            arch = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable architecture JSON ({exc})") from None
        source = str(path)
    else:
        return None
    return check_architecture(arch, source)


def offline() -> bool:
    """True when DINOV2_DENSE_OFFLINE forbids downloads."""
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def _file_url_path(weights):
    """The local path of a ``file://`` weights URL (read in place, never copied: a copy would go
    stale when the file changes); any other ``weights`` as it is."""
    if not (isinstance(weights, str) and weights.startswith("file://")):
        return weights
    parsed = urllib.parse.urlparse(weights)
    if parsed.netloc not in ("", "localhost"):
        raise ValueError(f"weights {weights}: a file URL of another host ({parsed.netloc}); mount its folder "
                         "and give the path")
    return urllib.request.url2pathname(parsed.path)


def _in_cache(path: Path) -> bool:
    """Whether ``path`` is in the weights cache (the hub cache, where downloads go)."""
    try:
        Path(path).resolve().relative_to(hub_checkpoint_dir().resolve())
        return True
    except (ValueError, OSError):
        return False


def _cached_unreadable(path: Path, reason: str) -> CheckpointReadError:
    return CheckpointReadError(path, f"in the weights cache, but not readable as weights: {reason}",
                               f"delete it (rm '{path}') so that it is fetched again")


def _whole(path: Path) -> Path:
    """``path``, found where weights are looked for, if it is a complete weight file; otherwise an
    error that says where it is and what to do (a file in the cache: delete it, to fetch it again)."""
    problem = weight_file_problem(path)
    if problem is None:
        return path
    if _in_cache(path):
        raise _cached_unreadable(path, f"it is {problem}")
    raise CheckpointReadError(path, f"not a weight file: it is {problem}",
                              "replace it with the released file, or delete it")


def _fetch_url(url: str) -> Path:
    """An http(s) URL's weight file: fetched once into the hub cache (``url-<hash>-NAME``) and used
    from there on, as torch.hub does; the URL is not asked again, so delete that file to refetch."""
    # the file name comes from the URL's path: no query string (it would hide the .safetensors suffix)
    filename = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or "weights.pth"
    # many hubs serve one name (model.safetensors) from many places: key the cache by the URL too
    tag = hashlib.sha256(url.encode()).hexdigest()[:10]
    dest = hub_checkpoint_dir() / f"url-{tag}-{filename}"
    if dest.is_file():
        return _whole(dest)
    if offline():
        raise WeightsNotFoundError(f"weights {url} are not in {dest}, and {OFFLINE_ENV} is set: fetch the file by hand")
    try:
        return download(url, dest, verify=weight_file_problem)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise WeightsNotFoundError(f"cannot fetch weights from {url} into {dest}: {exc}") from exc


def describe_weights(name: str | os.PathLike | dict | None, weights: str | os.PathLike | None = "official") -> str:
    """What ``load_backbone(name, weights)`` loads, in words for a record (an output file's
    metadata): "random", "embedded in the package (FILE)", "official (FILE)", or the file (its
    absolute path: a relative one told nothing from another folder) or URL."""
    if weights is None or weights == "random":
        return "random"
    if isinstance(weights, str) and weights == "official" and isinstance(name, str) and name in BACKBONES:
        spec = BACKBONES[name]
        if spec.embedded:
            return f"embedded in the package ({spec.filename}: ours, pretrained on synthetic scenes)"
        return f"official ({spec.filename})"
    text = str(weights)
    if "://" not in text and Path(text).expanduser().exists():
        return str(Path(text).expanduser().resolve())
    return text


def _problem(path: Path) -> str | None:
    try:
        return weight_file_problem(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"


def weights_status() -> list[dict]:
    """For ``dinov2-dense info``: each zoo entry, its file, and where it was (or was not) found."""
    rows = []
    for name, spec in BACKBONES.items():
        found = find_weights(name)
        rows.append(
            {
                "name": name,
                "arch": spec.arch,
                "registers": spec.kwargs.get("num_register_tokens", 0),
                "file": spec.filename,
                "found": str(found) if found else None,
                "problem": _problem(found) if found else None,  # a found file that is not a whole weight file
                "looked": [str(spec.package_file)] if spec.embedded else [str(p) for p in candidate_paths(spec.filename)],
                "embedded": spec.embedded,
                "url": spec.url,
            }
        )
    return rows
