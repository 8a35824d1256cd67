"""Procedural scenes with exact segmentation and depth, for tests, demos and pretraining.

A scene is a slanted background plane (class 0, "background": a wall/floor whose depth rises
linearly from the bottom row, ``depth_range[0]``, to the top row, ``depth_range[1]``) in front of
which stand several flat shapes (disc, rectangle, triangle, ellipse). Each shape has a random
class in ``1 .. num_classes - 1`` and its own constant depth, always nearer than the plane behind
it. Shapes are rasterised far to near through a z-buffer, so a pixel's class and depth are those
of the nearest surface covering it: both maps are exact, not estimates.

Appearance is learnable: each class has a fixed base colour (:func:`class_colors`) and a fixed
texture kind (stripes, checker or smooth noise, by class id); each shape draws its own texture
frequency, orientation and phase, a small colour jitter and a linear shading gradient. A mild
depth fog (mixing towards grey with distance) gives a monocular depth cue.

Every random draw comes from ``numpy.random.default_rng(seed)``: the same seed gives identical
bytes, and scenes with different seeds are independent. The writers produce the on-disk layouts
that the real loaders read (:mod:`dinov2_dense.data.datasets`), so tests exercise them end to end.
They write a set whole or not at all, as ``dinov2-dense synth`` does: the scenes are staged beside
the target folder and swapped in when complete, and a folder that already holds other files is
refused (writing into it would mix two sets), unless it holds exactly the set asked for (left as it
is) or ``overwrite=True`` (an earlier set is replaced whole).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import cv2
import numpy as np

from ..fileio import MARKER, OutputError, some_names, staged_dir
from .files import write_image, write_npy, write_text

SHAPES = ("disc", "rectangle", "triangle", "ellipse")
TEXTURES = ("stripes", "checker", "noise")
APPEARANCES = ("colour", "texture")
NYU_FOCAL = 518.8579  # NYU-Depth v2 focal length (pixels at 640x480), as in the depth toolboxes' split files


@dataclass(frozen=True)
class SceneConfig:
    """Settings of :func:`generate_scene`.

    size: (H, W) in pixels. num_classes: classes including the background (class 0).
    min_shapes / max_shapes: shapes per scene (uniform). depth_range: (bottom, top) depth of the
    background plane in metres. min_depth: nearest depth a shape may take. shape_size: radius
    range as a fraction of min(H, W). fog: strength of the depth fog in [0, 1].
    appearance: "colour" (each class has its own base colour and texture kind: easy, even for
    random features) or "texture" (every surface, the background too, draws a random colour, so a
    class shows only through its texture: kind and scale; telling classes apart needs features
    that respond to texture, which random ones hardly do).
    class_sizes: None (a shape's radius is drawn from ``shape_size``, its depth independently), or
    one physical radius per shape class (classes 1 .. num_classes - 1, in units of min(H, W) at
    1 m): a shape's depth is drawn first, uniform in [min_depth, 0.95 x the plane's middle depth],
    and it appears with radius ``class_sizes[cls - 1] / depth`` (x 0.9-1.1), its centre drawn
    uniformly above the lowest row that keeps it in front of the plane. Apparent size then tells depth to a model that knows the
    class (the "familiar size" cue of monocular depth); ``shape_size`` is not used.
    """

    size: tuple[int, int] = (224, 224)
    num_classes: int = 5
    min_shapes: int = 2
    max_shapes: int = 8
    depth_range: tuple[float, float] = (2.0, 8.0)
    min_depth: float = 1.0
    shape_size: tuple[float, float] = (0.08, 0.28)
    fog: float = 0.35
    appearance: str = "colour"
    class_sizes: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.appearance not in APPEARANCES:
            raise ValueError(f"SceneConfig.appearance={self.appearance!r}: expected one of {', '.join(APPEARANCES)}")
        if isinstance(self.size, (int, np.integer)) and not isinstance(self.size, bool):  # a square, as synth --size
            object.__setattr__(self, "size", (int(self.size), int(self.size)))
        if not (isinstance(self.size, (tuple, list)) and len(self.size) == 2):
            raise ValueError(f"SceneConfig.size={self.size!r}: (H, W) in pixels, or one number for a square")
        h, w = self.size
        if h < 8 or w < 8:
            raise ValueError(f"SceneConfig.size={self.size}: at least 8x8 pixels")
        if not 2 <= self.num_classes <= 255:
            raise ValueError(f"SceneConfig.num_classes={self.num_classes}: expected 2..255 (background + shapes)")
        if not 0 <= self.min_shapes <= self.max_shapes <= 254:
            raise ValueError(f"SceneConfig: need 0 <= min_shapes <= max_shapes <= 254, got {self.min_shapes}, "
                             f"{self.max_shapes}")
        if not 0 < self.shape_size[0] <= self.shape_size[1] or not 0 <= self.fog <= 1:
            raise ValueError(f"SceneConfig: need 0 < shape_size[0] <= shape_size[1] and 0 <= fog <= 1, got "
                             f"{self.shape_size}, {self.fog}")
        if self.class_sizes is not None:
            problem = class_sizes_problem(self.class_sizes, self.num_classes, self.min_depth)
            if problem:
                raise ValueError(f"SceneConfig.class_sizes={self.class_sizes}: {problem}")
        near, far = self.depth_range
        if not 0 < self.min_depth < near <= far:
            raise ValueError(f"SceneConfig: need 0 < min_depth < depth_range[0] <= depth_range[1], got "
                             f"{self.min_depth}, {self.depth_range}")

    @property
    def max_depth(self) -> float:
        return float(self.depth_range[1])


#: The largest apparent radius that class_sizes may ask for, in image sides (at the nearest depth).
MAX_APPARENT_RADIUS = 4.0


def class_sizes_problem(sizes, num_classes: int, min_depth: float = 1.0) -> str | None:
    """What is wrong with ``class_sizes`` for scenes of ``num_classes`` classes, or None: one finite
    size per shape class, positive, and no shape wider than MAX_APPARENT_RADIUS image sides at
    ``min_depth``."""
    values = list(sizes)
    if len(values) != num_classes - 1:
        return f"expected {num_classes - 1} sizes, one per shape class ({num_classes} classes count the background)"
    bad = [v for v in values if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    if bad:
        return f"{bad[0]!r} is not a positive finite size"
    if max(values) / min_depth > MAX_APPARENT_RADIUS:
        return (f"{max(values)!r} would draw shapes of radius {max(values) / min_depth:g} image sides at the nearest "
                f"depth ({min_depth:g} m); at most {MAX_APPARENT_RADIUS * min_depth:g}")
    return None


#: Disk bytes per pixel of a written scene, with margin (measured: 0.2-0.4 for the JPEG layouts).
SCENE_DISK_BYTES_PER_PIXEL = 2

#: Peak bytes per pixel of generate_scene (measured with tracemalloc at 512x512: about 47), with margin.
SCENE_BYTES_PER_PIXEL = 64


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(config: SceneConfig | dict | None = None, available: int | None = None) -> int:
    """Refuse a scene size whose generation would not fit in memory, before allocating anything.
    Returns the estimated bytes per scene."""
    cfg = _config(config)
    h, w = cfg.size
    need = h * w * SCENE_BYTES_PER_PIXEL
    available = available_memory() if available is None else available
    if available is not None and need > 0.8 * available:
        raise ValueError(f"synthetic scenes of {h}x{w} need about {need / 2**20:.0f} MB each, and "
                         f"{available / 2**20:.0f} MB are available; choose a smaller size")
    return need


class Scene(NamedTuple):
    """image: uint8 RGB (H, W, 3); seg: uint8 class ids (H, W); depth: float32 metres (H, W)."""

    image: np.ndarray
    seg: np.ndarray
    depth: np.ndarray


def class_colors(num_classes: int) -> np.ndarray:
    """Fixed base colours (num_classes, 3) in [0, 1]: a muted grey-beige background, then hues
    spread around the colour wheel (golden-angle steps, so neighbouring ids differ)."""
    colors = np.empty((num_classes, 3), np.float32)
    colors[0] = (0.62, 0.58, 0.52)
    for k in range(1, num_classes):
        hue = ((k - 1) * 0.381966) % 1.0
        sat = 0.75 if k % 2 else 0.55
        val = 0.85 if (k // 2) % 2 else 0.65
        colors[k] = _hsv_to_rgb(hue, sat, val)
    return colors


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the synthetic classes: background, then the shape classes."""
    return ("background",) + tuple(f"class{k}" for k in range(1, num_classes))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bilinearly (cheap, no per-pixel draws)."""
    coarse = rng.random((h // cell + 2, w // cell + 2), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)


#: Texture scales of the "texture" appearance: class k uses kind ``TEXTURES[(k - 1) % 3]`` at scale
#: ``(k - 1) // 3 % 2`` (stripe period, checker cell, noise cell in pixels), so classes 1 and 4 differ.
_SCALES = {"stripes": ((4, 7), (9, 16)), "checker": ((3, 6), (8, 14)), "noise": ((2, 4), (6, 10))}
_DEFAULT_SCALES = {"stripes": (5, 14), "checker": (4, 12), "noise": (3, 8)}


def _texture(rng: np.random.Generator, kind: str, h: int, w: int, scale: tuple[float, float] | None = None
             ) -> np.ndarray:
    """Texture pattern in [0, 1] of shape (h, w) with per-shape random parameters; ``scale``: the
    range of its period or cell size (default: the "colour" appearance's)."""
    lo, hi = scale or _DEFAULT_SCALES[kind]
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if kind == "stripes":
        angle, period, phase = rng.uniform(0, math.pi), rng.uniform(lo, hi), rng.uniform(0, 2 * math.pi)
        k = 2 * math.pi / period
        return 0.5 + 0.5 * np.sin(xs * (k * math.cos(angle)) + ys * (k * math.sin(angle)) + phase)
    if kind == "checker":
        cell = int(rng.integers(lo, hi))
        ox, oy = rng.integers(0, cell, size=2)
        return (((np.arange(h)[:, None] + oy) // cell + (np.arange(w)[None, :] + ox) // cell) % 2).astype(np.float32)
    return _smooth_noise(rng, h, w, int(rng.integers(lo, hi)))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return np.asarray(_hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.8), rng.uniform(0.45, 0.9)), np.float32)


def _shape_mask(rng: np.random.Generator, kind: str, cx: float, cy: float, r: float) -> tuple[np.ndarray, int, int]:
    """Rasterise one shape (no antialiasing: the mask is exact) into its bounding box.

    Returns (mask uint8 (h, w), x0, y0) with the box's top-left corner in image coordinates
    (it may lie outside the image; the caller clips).
    """
    x0, y0 = int(math.floor(cx - r)) - 1, int(math.floor(cy - r)) - 1
    size = int(math.ceil(2 * r)) + 3
    mask = np.zeros((size, size), np.uint8)
    c = (cx - x0, cy - y0)
    if kind == "disc":
        cv2.circle(mask, (round(c[0]), round(c[1])), max(1, round(r)), 1, -1)
    elif kind == "ellipse":
        axes = (max(1, round(r)), max(1, round(r * rng.uniform(0.35, 0.8))))
        cv2.ellipse(mask, (round(c[0]), round(c[1])), axes, rng.uniform(0, 180), 0, 360, 1, -1)
    else:
        if kind == "rectangle":
            aspect = rng.uniform(0.4, 1.0)
            side = 2 * r / math.sqrt(1 + aspect**2)  # sides w, w * aspect: the diagonal is 2r
            pts = cv2.boxPoints(((c[0], c[1]), (side, side * aspect), rng.uniform(0, 180)))
        else:  # triangle: three points on the circle, kept well apart
            angles = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.4, 0.4, 3)
            pts = np.stack([c[0] + r * np.cos(angles), c[1] + r * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask, x0, y0


def _config(config: SceneConfig | dict | None) -> SceneConfig:
    if config is None:
        return SceneConfig()
    if isinstance(config, dict):
        return SceneConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return config


def _draw_order(shapes: list[tuple]) -> list[tuple]:
    """Far to near (painter's order); the z-test makes the result independent of the order."""
    return sorted(shapes, key=lambda s: -s[0])


def generate_scene(seed: int, config: SceneConfig | dict | None = None) -> Scene:
    """One scene, fully determined by ``seed``: image uint8 RGB (H, W, 3), seg uint8 (H, W),
    depth float32 metres (H, W). Class 0 is the background plane. ``config`` may be a dict of
    :class:`SceneConfig` fields (as in mmengine configs). About 400-800 scenes/s at 224x224 on
    one CPU core."""
    cfg = _config(config)
    rng = np.random.default_rng(seed)
    H, W = cfg.size
    near, far = cfg.depth_range
    colors = class_colors(cfg.num_classes)

    # background plane: depth linear in the row, far at the top, near at the bottom
    plane = np.linspace(far, near, H, dtype=np.float32)
    depth = np.repeat(plane[:, None], W, axis=1)
    seg = np.zeros((H, W), np.uint8)
    # appearance = albedo (a colour per surface, gathered at the end) x intensity (texture, shading)
    surface = np.zeros((H, W), np.uint8)  # 0 = plane, j = j-th drawn shape
    by_texture = cfg.appearance == "texture"
    albedo = [_random_colour(rng) if by_texture else colors[0] * rng.uniform(0.92, 1.08, 3).astype(np.float32)]
    shade = 0.8 + 0.25 * np.linspace(0, 1, H, dtype=np.float32)[:, None]  # lit from below
    intensity = (0.85 + 0.3 * _smooth_noise(rng, H, W, int(rng.integers(6, 16)))) * shade

    # shapes: draw all parameters first, then rasterise far to near through the z-buffer
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    shapes = []
    for _ in range(n):
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        cls = int(rng.integers(1, cfg.num_classes))
        if cfg.class_sizes is None:
            r = float(rng.uniform(*cfg.shape_size)) * min(H, W)
            cx, cy = float(rng.uniform(0, W - 1)), float(rng.uniform(0, H - 1))
            bottom = min(H - 1, int(cy + r))
            d = float(rng.uniform(cfg.min_depth, 0.95 * plane[bottom]))  # in front of the plane at every row it covers
        else:  # familiar size: depth first, the apparent radius follows; the bottom row stays in front of the plane
            d = float(rng.uniform(cfg.min_depth, 0.95 * (near + far) / 2))
            r = cfg.class_sizes[cls - 1] / d * float(rng.uniform(0.9, 1.1)) * min(H, W)
            # the lowest centre whose bottom row has plane >= d / 0.95 (a flat plane: any row)
            lowest = (far - d / 0.95) / (far - near) * (H - 1) - r if far > near else math.inf
            # uniform below that bound (not clamped to it: a bottom row fixed by the depth would tell it)
            cx, cy = float(rng.uniform(0, W - 1)), float(rng.uniform(0, min(H - 1, lowest))) if lowest > 0 else lowest
        shapes.append((d, kind, cls, cx, cy, r, int(rng.integers(2**31))))

    for d, kind, cls, cx, cy, r, shape_seed in _draw_order(shapes):
        srng = np.random.default_rng(shape_seed)
        mask, x0, y0 = _shape_mask(srng, kind, cx, cy, r)
        ax0, ay0 = max(x0, 0), max(y0, 0)  # clip the box to the image
        ax1, ay1 = min(x0 + mask.shape[1], W), min(y0 + mask.shape[0], H)
        if ax0 >= ax1 or ay0 >= ay1:
            continue
        box = np.s_[ay0:ay1, ax0:ax1]
        m = mask[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0].astype(bool)
        m &= d < depth[box]  # z-test: keep only where this shape is the nearest surface so far
        if not m.any():
            continue
        h, w = m.shape
        kind = TEXTURES[(cls - 1) % len(TEXTURES)]
        tex = _texture(srng, kind, h, w, _SCALES[kind][(cls - 1) // len(TEXTURES) % 2] if by_texture else None)
        contrast = srng.uniform(0.25, 0.5)
        angle, grad = srng.uniform(0, 2 * math.pi), srng.uniform(0.1, 0.35)
        ys = (np.arange(ay0, ay1, dtype=np.float32) - cy)[:, None] * (grad * math.sin(angle) / r)
        xs = (np.arange(ax0, ax1, dtype=np.float32) - cx)[None, :] * (grad * math.cos(angle) / r)
        np.copyto(intensity[box], (1.0 - contrast + contrast * tex) * (1.0 + xs + ys), where=m)
        albedo.append(_random_colour(srng) if by_texture else colors[cls] * srng.uniform(0.9, 1.1, 3).astype(np.float32))
        surface[box][m] = len(albedo) - 1
        depth[box][m] = d
        seg[box][m] = cls

    # depth fog towards a light grey (farther surfaces are paler), then to 8 bits
    fog = (cfg.fog / (far - cfg.min_depth)) * (depth - cfg.min_depth)
    scale = 255.0 * intensity * (1.0 - fog)
    offset = 255.0 * 0.78 * fog + 0.5
    table = np.stack(albedo)
    # per-channel gathers are ~5x faster than table[surface] on (H, W, 3)
    image = np.stack([np.take(table[:, c], surface) * scale + offset for c in range(3)], axis=-1)
    image = np.clip(image, 0, 255, out=image).astype(np.uint8)
    return Scene(image, seg, depth)


# -- writers -------------------------------------------------------------------------------
def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of scene ``index`` of ``split`` ("train" or "val") in a written data set.

    Every writer uses it, so the same ``seed`` gives the same scenes in every layout: training scene
    ``i`` of :func:`write_ade20k_layout` is training scene ``i`` of :func:`write_nyu_layout` and
    scene ``i`` of :func:`write_folder_layout` (segmentation and depth of the same images).
    """
    split_id = int.from_bytes(split.encode()[:8].ljust(8, b"\0"), "little")
    return int(np.random.SeedSequence([seed, split_id, index]).generate_state(1, np.uint64)[0])


def _progress(total: int, desc: str, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not progress if progress is not None else total < 200)


def _info(layout: str, config: SceneConfig, seed: int, counts: dict[str, int], **extra) -> dict:
    """The contents of ``synthetic.json``, as read back from the file (JSON types)."""
    info = dict(layout=layout, seed=seed, counts=counts, config=asdict(config),
                class_names=list(class_names(config.num_classes)), **extra)
    return json.loads(json.dumps(info))


#: The files of each layout, relative to its root (``synthetic.json`` aside): an unmarked folder
#: holding only these and a ``synthetic.json`` was written by an earlier version of these writers.
_LAYOUT_FILES = {
    "ade20k": re.compile(r"(images/(training|validation)/ADE_(train|val)_\d{8}\.(jpg|jpeg|png)"
                         r"|annotations/(training|validation)/ADE_(train|val)_\d{8}\.png)"),
    "nyu": re.compile(r"((sync|official_splits/test)/scene_\d{4}/(rgb_\d{5}\.(jpg|jpeg|png)|sync_depth_\d{5}\.png)"
                      r"|nyu_(train|test)\.txt)"),
    "folder": re.compile(r"(images/\d{5}\.(jpg|jpeg|png)|masks/\d{5}\.png|depth/\d{5}\.(png|npy))"),
}

#: The top-level entries of the layouts.
_SET_ENTRIES = frozenset({"images", "annotations", "sync", "official_splits", "nyu_train.txt", "nyu_test.txt", "masks",
                          "depth", "synthetic.json"})


def _files_under(root: Path) -> set[str]:
    """Every file below ``root`` (relative, with "/"), the output marker at its top aside."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir()} - {MARKER}


def _read_info(root: Path) -> dict | None:
    try:
        info = json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict) -> str:
    """A set's synthetic.json in words: "ade20k set (training 400, validation 50 scenes; seed 0; 224x224)"."""
    counts = info.get("counts")
    counts = ", ".join(f"{k} {v}" for k, v in counts.items()) if isinstance(counts, dict) else "?"
    size = (info.get("config") or {}).get("size") if isinstance(info.get("config"), dict) else None
    size = "x".join(map(str, size)) if isinstance(size, list) else "?"
    return f"{info.get('layout', '?')} set ({counts} scenes; seed {info.get('seed', '?')}; {size})"


class _SetPlan(NamedTuple):
    """A data set to write: its ``synthetic.json`` (``info``), the files ``write(stage)`` makes
    (relative paths), the number of scenes and their config (for the space check), and the writer's
    name, which messages from Python give."""

    writer: str
    info: dict
    files: set[str]
    scenes: int
    cfg: SceneConfig
    write: Callable[[Path], None]


def _held(root: Path, plan: _SetPlan, option: str, who: str) -> bool | None:
    """What ``root`` (a folder with entries) holds, judged against ``plan``: True, exactly this set (the
    same files and the same synthetic.json: the same bytes, scenes being deterministic); None, no
    synthetic set (other files: the caller refuses them); another synthetic set, or this one incomplete
    or changed, is refused with an :class:`OutputError` naming both sets and ``option``: writing into
    it would leave a mix of two sets. ``who`` starts the message ("write_ade20k_layout: "; "" for the
    command, whose errors are already named)."""
    files = plan.files | {"synthetic.json"}
    old = _read_info(root)
    if old is None or old.get("layout") not in _LAYOUT_FILES:
        return None
    others = sorted(p.name for p in root.iterdir() if p.name not in _SET_ENTRIES and p.name != MARKER)
    differ = len({f for f in _files_under(root) if f.split("/", 1)[0] in _SET_ENTRIES} ^ files) \
        if old == plan.info else None
    if differ == 0 and not others:
        return True  # this very set is there already
    if differ == 0:
        raise OutputError(f"{who}{root} holds the {_describe(old)} asked for and also {some_names(others)}, which "
                          "dinov2-dense did not write: move those out of the folder and run again, or choose another "
                          "folder")
    held = f"a synthetic {_describe(old)}"
    if differ:
        held += f", incomplete or changed ({differ} files differ from this set's)"
    if others:
        held += f" and also {some_names(others)}"
    then = (f"move those out of the folder ({option} never deletes files that dinov2-dense did not write) and "
            f"pass {option}" if others else f"pass {option}")
    raise OutputError(f"{who}{root} already holds {held}; writing the {_describe(plan.info)} into it would leave a "
                      f"mix of both: choose another (new or empty) folder, or {then} to replace the earlier set whole")


def _write_set(root: str | os.PathLike, plan: _SetPlan, overwrite: bool) -> Path:
    """Write a data set whole at ``root``: ``plan.write(stage)`` fills a staging folder beside it, with
    ``synthetic.json`` (``plan.info``) added, and the stage is swapped in when complete (an interrupted
    write leaves ``root`` as it was). An empty ``root`` inside a caller's staging folder (the demo) is
    written in place.

    An absent or empty ``root`` is written. One holding exactly this set is left as it is, unless
    ``overwrite``. Any other contents are refused, naming the folder and what it holds (another set:
    both sets, see :func:`_held`): writing into them would leave a mix of two sets. With ``overwrite``
    an earlier data set (written by these writers or ``dinov2-dense synth``) is replaced whole; files
    that dinov2-dense did not write are never deleted (see :func:`dinov2_dense.fileio.check_output_dir`).
    """
    root = Path(root)
    writer = plan.writer
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if entries and not overwrite:
        if _held(root, plan, "overwrite=True", f"{writer}: "):
            return root
        raise OutputError(f"{writer}: {root} already holds other files ({some_names(entries)}); writing the "
                          f"{_describe(plan.info)} into it would mix them with it: choose another (new or empty) "
                          "folder (overwrite=True replaces only an earlier output of dinov2-dense, never files "
                          "it did not write)")
    if not entries and _in_a_stage(root):  # a caller's staging folder (synth, the demo), swapped in whole by it
        plan.write(root)
        write_text(root / "synthetic.json", json.dumps(plan.info, indent=2) + "\n")
        return root
    if entries:
        _adopt_earlier_set(root, f"{writer}: ", "overwrite=True")
    need = plan.scenes * plan.cfg.size[0] * plan.cfg.size[1] * SCENE_DISK_BYTES_PER_PIXEL
    with staged_dir(root, overwrite=overwrite, option="overwrite=True", expected_bytes=need) as stage:
        plan.write(stage)
        write_text(stage / "synthetic.json", json.dumps(plan.info, indent=2) + "\n")
    return root


def check_set_folder(root: str | os.PathLike, layout: str, n_train: int, n_val: int = 0,
                     config: SceneConfig | dict | None = None, seed: int = 0, overwrite: bool = False,
                     option: str = "--overwrite") -> bool:
    """What ``dinov2-dense synth`` does before it writes, as the writers do: whether ``root`` already
    holds exactly the set that ``write_<layout>_layout(root, n_train, n_val, config, seed)`` writes
    (their default image formats): True, and writing it again would change nothing. False for an
    absent or empty folder, and for one that holds no synthetic set (the command's output check
    refuses other files as any non-empty folder). Another synthetic set there (other counts, seed or
    config; or this one, incomplete or changed) is refused with an :class:`OutputError` naming both
    sets and ``option``, which replaces the earlier set whole. With ``overwrite`` nothing is refused
    here (a set written before sets were marked is marked, so that it can be replaced) and False is
    returned: the set is written again."""
    plans = {"ade20k": lambda: _ade20k_plan(n_train, n_val, config, seed),
             "nyu": lambda: _nyu_plan(n_train, n_val, config, seed),
             "folder": lambda: _folder_plan(n_train, config, seed)}
    if layout not in plans:
        raise ValueError(f"layout={layout!r}: expected one of {', '.join(plans)}")
    if layout == "folder" and n_val:
        raise ValueError(f"n_val={n_val}: the folder layout has no validation split")
    root = Path(root)
    if not root.is_dir() or not any(root.iterdir()):
        return False
    plan = plans[layout]()
    if overwrite:
        _adopt_earlier_set(root, "", option)
        return False
    return bool(_held(root, plan, option, ""))


def _in_a_stage(root: Path) -> bool:
    """Whether ``root`` lies in a staging folder of :func:`dinov2_dense.fileio.staged_dir`
    (``.<name>.<tag>.partial/<name>/...``), whose owner swaps it in whole or removes it."""
    return any(p.name.startswith(".") and p.name.endswith(".partial") for p in root.absolute().parents)


def _adopt_earlier_set(root: Path, who: str, option: str) -> None:
    """Mark ``root`` as dinov2-dense's output (so that ``overwrite=True`` may replace it) when it
    is a set written by these writers before they marked their output: a synthetic.json naming a
    layout, and only that layout's files. Such a set with other entries beside it is refused,
    naming them; anything else is left to :func:`staged_dir` to judge."""
    if (root / MARKER).exists():
        return
    info = _read_info(root)
    pattern = _LAYOUT_FILES.get(info.get("layout")) if info is not None else None
    if pattern is None:
        return
    tops = {p.name for p in root.iterdir()}
    files = {f for f in _files_under(root) if f.split("/", 1)[0] in _SET_ENTRIES} - {"synthetic.json"}
    if not all(pattern.fullmatch(f) for f in files):
        return
    mine = {f.split("/", 1)[0] for f in files} | {"synthetic.json"}
    others = sorted(tops - mine)
    if others:
        raise OutputError(f"{who}{root} holds a synthetic {_describe(info)} and also {some_names(others)}, "
                          f"which its writer did not write; {option} never deletes those: move them out of the "
                          "folder and run again, or choose another folder")
    write_text(root / MARKER, json.dumps({"entries": sorted(tops), "adopted": "synthetic set"}))


def _check_ext(image_ext: str) -> str:
    ext = image_ext if image_ext.startswith(".") else "." + image_ext
    if ext.lower() not in (".jpg", ".jpeg", ".png"):
        raise ValueError(f"image_ext={image_ext!r}: use '.jpg' (as the real data sets) or '.png' (exact pixels)")
    return ext


def _check_counts(cfg: SceneConfig, **counts: int) -> None:
    """Scene counts are whole numbers, the training split (or a folder) gets at least one scene,
    and a scene fits in memory."""
    for name, n in counts.items():
        least = 0 if name == "val" else 1
        if isinstance(n, bool) or not isinstance(n, int) or n < least:
            raise ValueError(f"{name}={n!r}: expected a whole number of scenes >= {least}")
    check_memory(cfg)


def write_ade20k_layout(root: str | os.PathLike, n_train: int, n_val: int, config: SceneConfig | dict | None = None,
                        seed: int = 0, image_ext: str = ".jpg", progress: bool | None = None,
                        overwrite: bool = False) -> Path:
    """Write an ADEChallengeData2016-like tree that :class:`ADE20KDataset` reads::

        root/images/{training,validation}/ADE_{train,val}_00000001.jpg
        root/annotations/{training,validation}/ADE_{train,val}_00000001.png
        root/synthetic.json   (config, seed, class names)

    Annotations follow ADE20K: 0 = "other" (unused here), class k stored as k + 1, so loading with
    ``reduce_zero_label=True`` gives back the synthetic ids 0 .. num_classes - 1. Images are JPEG
    (quality 95) like ADE20K by default; ``image_ext=".png"`` keeps the exact pixels.

    The set is written whole or not at all. ``root`` must be new or empty, or hold exactly this
    set already (then it is left as it is); a folder holding anything else (another set: other
    counts, seed or config) is refused, as writing into it would mix the two, unless
    ``overwrite=True``, which replaces an earlier set whole (never files that dinov2-dense did not
    write).
    """
    return _write_set(root, _ade20k_plan(n_train, n_val, config, seed, image_ext, progress), overwrite)


def _ade20k_plan(n_train: int, n_val: int, config: SceneConfig | dict | None = None, seed: int = 0,
                 image_ext: str = ".jpg", progress: bool | None = None) -> _SetPlan:
    cfg, ext = _config(config), _check_ext(image_ext)
    _check_counts(cfg, train=n_train, val=n_val)
    if cfg.num_classes > 254:
        raise ValueError(f"num_classes={cfg.num_classes}: ADE20K stores class k as k + 1 in 8 bits, 255 being ignore; "
                         "use at most 254 classes")
    counts = {"training": n_train, "validation": n_val}
    names = [(split, "train" if split == "training" else "val", i) for split, n in counts.items() for i in range(n)]

    def paths(split, tag, i):
        stem = f"ADE_{tag}_{i + 1:08d}"
        return f"images/{split}/{stem}{ext}", f"annotations/{split}/{stem}.png"

    def write(stage: Path) -> None:
        with _progress(len(names), f"ADE20K-like {stage.name}", progress) as bar:
            for split, tag, i in names:
                scene = generate_scene(scene_seed(seed, tag, i), cfg)
                image, label = paths(split, tag, i)
                write_image(stage / image, scene.image)
                write_image(stage / label, scene.seg + np.uint8(1))
                bar.update()

    info = _info("ade20k", cfg, seed, counts, reduce_zero_label=True)
    files = {f for name in names for f in paths(*name)}
    return _SetPlan("write_ade20k_layout", info, files, len(names), cfg, write)


def write_nyu_layout(root: str | os.PathLike, n_train: int, n_val: int, config: SceneConfig | dict | None = None,
                     seed: int = 0, image_ext: str = ".jpg", scenes_per_folder: int = 50,
                     progress: bool | None = None, overwrite: bool = False) -> Path:
    """Write the NYU-Depth v2 layout of the depth toolboxes (BTS, Monocular-Depth-Estimation-Toolbox)::

        root/sync/scene_0000/rgb_00000.jpg, sync_depth_00000.png           training
        root/official_splits/test/scene_0000/rgb_00000.jpg, sync_depth_00000.png
        root/nyu_train.txt, root/nyu_test.txt   lines "rgb_path depth_path focal", relative to root
        root/synthetic.json

    Depth PNGs are 16-bit millimetres (``round(metres * 1000)``), read back with
    ``NYUDepthDataset(root, "nyu_train.txt", depth_scale=1000)``. The focal is NYU's 518.8579
    scaled to the image width (nominal: synthetic scenes have no camera). ``root`` and
    ``overwrite`` as in :func:`write_ade20k_layout`: a set is written whole, never into another.
    """
    return _write_set(root, _nyu_plan(n_train, n_val, config, seed, image_ext, scenes_per_folder, progress),
                      overwrite)


def _nyu_plan(n_train: int, n_val: int, config: SceneConfig | dict | None = None, seed: int = 0,
              image_ext: str = ".jpg", scenes_per_folder: int = 50, progress: bool | None = None) -> _SetPlan:
    cfg, ext = _config(config), _check_ext(image_ext)
    _check_counts(cfg, train=n_train, val=n_val)
    if cfg.max_depth * 1000 > 65535:
        raise ValueError(f"depth_range {cfg.depth_range}: more than 65.535 m does not fit a 16-bit millimetre PNG")
    focal = NYU_FOCAL * cfg.size[1] / 640
    counts = {"train": n_train, "test": n_val}

    def paths(split, i):
        folder = f"{'sync' if split == 'train' else 'official_splits/test'}/scene_{i // scenes_per_folder:04d}"
        return f"{folder}/rgb_{i:05d}{ext}", f"{folder}/sync_depth_{i:05d}.png"

    def write(stage: Path) -> None:
        with _progress(n_train + n_val, f"NYU-like {stage.name}", progress) as bar:
            for split, n in counts.items():
                lines = []
                for i in range(n):
                    scene = generate_scene(scene_seed(seed, "train" if split == "train" else "val", i), cfg)
                    rgb, dep = paths(split, i)
                    write_image(stage / rgb, scene.image)
                    write_image(stage / dep, np.round(scene.depth * 1000.0).astype(np.uint16))
                    lines.append(f"{rgb} {dep} {focal:.4f}\n")
                    bar.update()
                write_text(stage / f"nyu_{split}.txt", "".join(lines))

    info = _info("nyu", cfg, seed, counts, depth_scale=1000.0)
    files = {f for split, n in counts.items() for i in range(n) for f in paths(split, i)}
    files |= {f"nyu_{split}.txt" for split in counts}
    return _SetPlan("write_nyu_layout", info, files, n_train + n_val, cfg, write)


def write_folder_layout(root: str | os.PathLike, n: int, config: SceneConfig | dict | None = None, seed: int = 0,
                        image_ext: str = ".png", depth_format: str = "png", progress: bool | None = None,
                        overwrite: bool = False) -> Path:
    """Write plain folders read by :class:`FolderSegmentationDataset` and :class:`FolderDepthDataset`::

        root/images/00000.png   root/masks/00000.png (class ids, 0 = background)
        root/depth/00000.png (16-bit millimetres: depth_scale=1000) or 00000.npy (float32 metres)

    ``root`` and ``overwrite`` as in :func:`write_ade20k_layout`: a set is written whole, never
    into another.
    """
    return _write_set(root, _folder_plan(n, config, seed, image_ext, depth_format, progress), overwrite)


def _folder_plan(n: int, config: SceneConfig | dict | None = None, seed: int = 0, image_ext: str = ".png",
                 depth_format: str = "png", progress: bool | None = None) -> _SetPlan:
    if depth_format not in ("png", "npy"):
        raise ValueError(f"depth_format={depth_format!r}: expected 'png' (16-bit millimetres) or 'npy' (metres)")
    cfg, ext = _config(config), _check_ext(image_ext)
    _check_counts(cfg, scenes=n)

    def paths(i):
        return f"images/{i:05d}{ext}", f"masks/{i:05d}.png", f"depth/{i:05d}.{depth_format}"

    def write(stage: Path) -> None:
        with _progress(n, f"folders {stage.name}", progress) as bar:
            for i in range(n):
                scene = generate_scene(scene_seed(seed, "train", i), cfg)
                image, mask, depth = paths(i)
                write_image(stage / image, scene.image)
                write_image(stage / mask, scene.seg)
                if depth_format == "png":
                    write_image(stage / depth, np.round(scene.depth * 1000.0).astype(np.uint16))
                else:
                    write_npy(stage / depth, scene.depth)
                bar.update()

    info = _info("folder", cfg, seed, {"all": n}, depth_scale=1000.0 if depth_format == "png" else None)
    files = {f for i in range(n) for f in paths(i)}
    return _SetPlan("write_folder_layout", info, files, n, cfg, write)
