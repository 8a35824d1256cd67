"""A frozen DINOv2 backbone and a head, with the official inference modes.

``DensePredictor(backbone, head, ...)`` is the official ``EncoderDecoder`` /
``DepthEncoderDecoder`` of the DINOv2 evaluation code: the input is centre-padded to a multiple of
the patch size inside the backbone call, the chosen blocks' features feed the head, and the head's
output is resized (bilinear, align_corners False) to the input size; depth is clamped to
[min_depth, max_depth] before that resize. ``model(images)`` is the official whole-image forward.

``predict`` adds the test-time protocols: sliding windows (mmseg ``slide``: crop and stride, e.g.
512/341 for ADE20K) and multi-scale + flip test-time augmentation (the "+ms" ratios
1.0, 1.32, 1.73, 2.28, 3.0), averaging softmax probabilities (segmentation) or depth maps.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dinov2_dense.features import IMAGENET_MEAN, IMAGENET_STD, center_pad, kept_modes, normalise_8bit, rescale_size

TASKS = ("segmentation", "depth")
TEST_CFG_KEYS = ("mode", "crop_size", "stride", "scales", "flip", "scale", "crop_batch_size")


def _pair(value) -> tuple | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in value):
        return tuple(value)
    return None


def check_test_cfg(cfg: dict, where: str = "test_cfg") -> None:
    """Refuse test settings that cannot run or would mean nothing, naming ``where.key``: an unknown key or
    mode, a window or stride below 1, a stride beyond the window (the pixels between windows would never
    be predicted; mmseg refuses it too), an empty or non-positive ``scales``, a ``flip`` that is not a
    bool, a ``scale`` that is not two positive integers, ``crop_batch_size`` < 1.
    Checked when a predictor is built, not at the first prediction (after a training run)."""
    unknown = sorted(set(cfg) - set(TEST_CFG_KEYS))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown test setting; known: {', '.join(TEST_CFG_KEYS)}")
    if cfg.get("mode", "whole") not in ("whole", "slide"):
        raise ValueError(f"{where}.mode={cfg['mode']!r}: use 'whole' or 'slide'")
    for key in ("crop_size", "stride"):
        if key in cfg and (_pair(cfg[key]) is None or min(_pair(cfg[key])) < 1):
            raise ValueError(f"{where}.{key}={cfg[key]!r}: a positive integer, or (height, width) of them")
    if cfg.get("mode") == "slide":  # the windows are used: every pixel must be in one
        crop, stride = _pair(cfg.get("crop_size", 512)), _pair(cfg.get("stride", 341))
        if stride[0] > crop[0] or stride[1] > crop[1]:
            shown = lambda key, default: f"{key}={cfg[key]!r}" if key in cfg else f"{key} {default} (the default)"  # noqa: E731
            raise ValueError(f"{where}: {shown('stride', 341)} is larger than {shown('crop_size', 512)}: the pixels "
                             "between windows would never be predicted")
    scales = cfg.get("scales", (1.0,))
    if not isinstance(scales, (list, tuple)) or not scales or not all(
            isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in scales):
        raise ValueError(f"{where}.scales={scales!r}: one or more positive ratios, e.g. (1.0,)")
    if not isinstance(cfg.get("flip", False), bool):
        raise ValueError(f"{where}.flip={cfg['flip']!r}: true or false")
    scale = cfg.get("scale")
    if scale is not None and (_pair(scale) is None or min(_pair(scale)) < 1):
        raise ValueError(f"{where}.scale={scale!r}: (long side, short side) in pixels, e.g. (2048, 512), or None")
    batch = cfg.get("crop_batch_size", 4)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"{where}.crop_batch_size={batch!r}: windows a batch, an integer >= 1")


class DensePredictor(nn.Module):
    """Backbone + head. State-dict keys ``backbone.*`` and ``decode_head.*`` (the official layout).

    Args:
        backbone: a DinoVisionTransformer (anything with ``intermediate_maps``, ``resolve_layers`` and
            ``patch_size``).
        decode_head: a head taking the list of features (maps, or (map, cls) pairs).
        task: "segmentation" (head returns (B, K, h, w) logits) or "depth" (head returns (B, 1, h, w)).
        layers: block indices fed to the head.
        norm: final LayerNorm on the features (segmentation protocol True, depth protocol False).
        class_token: pass (map, cls) pairs to the head (depth heads) instead of maps.
        min_depth, max_depth: depth range (clamped to at inference); taken from the head when it has them.
        freeze_backbone: run the backbone under no_grad and keep it in eval mode; its parameters (those
            of the module passed in, which stays frozen after this predictor is gone) get
            ``requires_grad=False``. To fine-tune a backbone that a frozen predictor had, call
            ``backbone.requires_grad_(True)`` first.
        test_cfg: defaults for ``predict`` (mode, crop_size, stride, scales, flip).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        *,
        task: str,
        layers: Sequence[int],
        norm: bool = True,
        class_token: bool = False,
        min_depth: float | None = None,
        max_depth: float | None = None,
        freeze_backbone: bool = True,
        test_cfg: dict | None = None,
    ):
        super().__init__()
        self.test_cfg = dict(test_cfg or {})  # defaults of predict(): the official test protocol
        check_test_cfg(self.test_cfg)
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.backbone = backbone
        self.decode_head = decode_head
        self.task = task
        self.layers = backbone.resolve_layers(layers)  # negative indices count from the end
        self.norm = norm
        self.class_token = class_token
        self.min_depth = min_depth if min_depth is not None else getattr(decode_head, "min_depth", None)
        self.max_depth = max_depth if max_depth is not None else getattr(decode_head, "max_depth", None)
        if task == "depth" and (self.min_depth is None or self.max_depth is None):
            raise ValueError("a depth predictor needs min_depth and max_depth (or a head that has them)")
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen: no dropout / drop path, official eval numerics
        return self

    # -- the official whole-image forward ------------------------------------------------------
    def extract_features(self, images: Tensor) -> list:
        """Features of the chosen blocks for a (B, 3, H, W) normalised batch (centre-padded inside):
        (B, D, h, w) maps, or (map, (B, D) class token) pairs with ``class_token``."""
        padded, _ = center_pad(images, self.backbone.patch_size)
        weights = next(self.backbone.parameters()).dtype
        half = weights != torch.float32 and not torch.is_autocast_enabled(padded.device.type)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            maps, class_tokens, _ = self.backbone.intermediate_maps(padded.to(weights) if half else padded, self.layers,
                                                                    norm=self.norm)
        if half:  # bf16 / fp16 backbone weights: the head takes float32, as with a float32 backbone
            maps, class_tokens = [m.float() for m in maps], [c.float() for c in class_tokens]
        return list(zip(maps, class_tokens)) if self.class_token else maps

    def encode_decode(self, images: Tensor) -> Tensor:
        """Head output resized to the input: (B, K, H, W) logits or a (B, 1, H, W) depth map."""
        return F.interpolate(self._decode(images), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _decode(self, images: Tensor) -> Tensor:
        """Head output at its own resolution (depth clamped to the range)."""
        out = self.decode_head(self.extract_features(images))
        if self.task == "depth":
            out = out.clamp(min=self.min_depth, max=self.max_depth)
        return out

    def forward(self, images: Tensor) -> Tensor:
        return self.encode_decode(images)

    def head_losses(self, features: list, target: Tensor, losses: Sequence[nn.Module]) -> dict[str, Tensor]:
        """Training losses of the head on features: its output resized (bilinear) to the target
        (B, H, W) labels or (B, [1,] H, W) depth, as the official heads' ``forward_train`` does.

        Depth is not clamped to [min_depth, max_depth] here: the official code clamps at inference only
        (``DepthEncoderDecoder.encode_decode``), and a clamp in training gives a head whose output
        overshoots the range no gradient there. SigLoss and GradientLoss take the log of depth + 1e-3:
        a depth head's output must be >= 0, as ours are (DPT: ReLU + min_depth; bins: an expectation of
        bin centres in the range); they refuse a negative one."""
        out = self.decode_head(features)
        if self.task == "depth" and target.dim() == 3:
            target = target.unsqueeze(1)
        out = F.interpolate(out, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return {f"loss_{type(fn).__name__}": fn(out, target) for fn in losses}

    # -- test-time protocols ---------------------------------------------------------------------
    def slide_inference(self, images: Tensor, crop_size: int | Sequence[int], stride: int | Sequence[int],
                        crop_batch_size: int = 1, out_size: Sequence[int] | None = None) -> Tensor:
        """mmseg sliding windows: crops of ``crop_size`` every ``stride`` pixels, outputs averaged.

        The windows of the batch's images go through the model ``crop_batch_size`` at a time (all
        windows have one size, so they stack; the result equals one window at a time to float
        tolerance). Memory is bounded by ``crop_batch_size`` crops plus the output map, not by the
        image; one crop covering the image equals whole mode.

        ``out_size``: return the averaged map resized (bilinear) to this size, which equals
        ``F.interpolate(slide_inference(...), out_size)`` to float tolerance but never builds the
        map at the input's size: every step (each window's upsampling, the averaging of the
        overlaps, the final resize) is linear and separable in rows and columns, so each window's
        head output goes straight to the output pixels it reaches through two small matrices. At
        the largest ADE20K +ms view (1920x2562, 150 classes) that spares a 3 GB map per image and
        most of the memory traffic.
        """
        ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if min(ch, cw, sh, sw) < 1:
            raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
        if sh > ch or sw > cw:
            raise ValueError(f"stride {stride} is larger than crop_size {crop_size}: the pixels between windows "
                             "would never be predicted")
        if crop_batch_size < 1:
            raise ValueError(f"crop_batch_size={crop_batch_size}: must be at least 1")
        b, _, h, w = images.shape
        rows = max(h - ch + sh - 1, 0) // sh + 1
        cols = max(w - cw + sw - 1, 0) // sw + 1
        windows = []
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
                windows.append((max(y2 - ch, 0), y2, max(x2 - cw, 0), x2))
        if out_size is not None:
            return self._slide_resampled(images, windows, (int(out_size[0]), int(out_size[1])), crop_batch_size)
        out = None
        count = images.new_zeros((1, 1, h, w))
        for i in range(0, len(windows), crop_batch_size):
            group = windows[i:i + crop_batch_size]
            crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
            preds = self.encode_decode(crops).split(b)
            if out is None:
                out = images.new_zeros((b, preds[0].shape[1], h, w))
            for (y1, y2, x1, x2), pred in zip(group, preds):
                out[:, :, y1:y2, x1:x2] += pred
                count[:, :, y1:y2, x1:x2] += 1
        return out.div_(count)

    def _slide_resampled(self, images: Tensor, windows: list[tuple[int, int, int, int]], out_size: tuple[int, int],
                         crop_batch_size: int) -> Tensor:
        """:meth:`slide_inference` resized to ``out_size`` (see there), window by window:
        ``out += P_y @ L @ P_x^T`` for each window's head output ``L``, where ``P`` = (final resize)
        x (1 / windows covering each pixel) x (the window's upsampling), restricted to the output
        rows and columns the window reaches. The windows form a grid, so the count is a product of
        a row count and a column count and the division factors into ``P_y`` and ``P_x``."""
        b, _, h, w = images.shape
        device = images.device
        wh, ww = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]  # every window has this size
        count_y = torch.zeros(h, dtype=torch.float64, device=device)
        count_x = torch.zeros(w, dtype=torch.float64, device=device)
        for y1, y2 in {(y1, y2) for y1, y2, _, _ in windows}:
            count_y[y1:y2] += 1
        for x1, x2 in {(x1, x2) for _, _, x1, x2 in windows}:
            count_x[x1:x2] += 1
        # the final resize along each axis, as (input length, output length): its weights are made for the block
        # a window reaches alone (a whole (out, in) matrix grew with the square of the image's side: +3 GB for a
        # 12,000-pixel panorama)
        resize_y, resize_x = (h, out_size[0]), (w, out_size[1])
        source_y, source_x = _source_rows(h, out_size[0]), _source_rows(w, out_size[1])
        out, factors = None, {}
        for i in range(0, len(windows), crop_batch_size):
            group = windows[i:i + crop_batch_size]
            crops = torch.cat([images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in group])
            logits = self._decode(crops)
            with torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) \
                    else nullcontext():  # (no autocast on the "meta" device, which the tests use)
                logits = logits.float()
                if out is None:
                    out = torch.zeros((b, logits.shape[1], *out_size), device=device)
                gh, gw = logits.shape[-2:]
                for (y1, y2, x1, x2), part in zip(group, logits.split(b)):
                    for key, args in ((("y", y1, gh), (resize_y, count_y, source_y, y1, y2, wh, gh)),
                                      (("x", x1, gw), (resize_x, count_x, source_x, x1, x2, ww, gw))):
                        if key not in factors:
                            factors[key] = _window_factor(*args)
                    (r0, py), (c0, px) = factors[("y", y1, gh)], factors[("x", x1, gw)]
                    out[:, :, r0:r0 + len(py), c0:c0 + len(px)] += py @ part @ px.T
        return out.to(images.dtype)

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        mode: str | None = None,
        crop_size: int | Sequence[int] | None = None,
        stride: int | Sequence[int] | None = None,
        scales: Sequence[float] | None = None,
        flip: bool | None = None,
        scale: Sequence[int] | None = None,
        out_size: Sequence[int] | None = None,
        crop_batch_size: int | None = None,
    ) -> Tensor:
        """Test-time prediction.

        Returns softmax probabilities (B, K, H, W) for segmentation (argmax for labels), or depth
        (B, 1, H, W) in [min_depth, max_depth], at ``out_size`` (default: the input's size).

        Views: for each ratio r of ``scales`` (and each flip), the image is resized (bilinear)
        - with ``scale=(long, short)``: to fit ``(int(long * r), int(short * r))`` keeping its
          aspect ratio (mmcv's rule, :func:`dinov2_dense.features.rescale_size`; the official test
          pipelines' ``Resize(img_scale)`` / ``MultiScaleFlipAug(img_ratios)``, e.g. (2048, 512) for
          ADE20K lin.), so an image at its original size gets the official view sizes;
        - without: to ``round(H * r) x round(W * r)`` of the input.
        Every view is then handled in the order of mmseg 0.x ``aug_test`` over
        ``inference(rescale=True)`` (and of the DINOv2 ``DepthEncoderDecoder``): its logits (or
        depth) are resized to ``out_size``, softmaxed (segmentation), flipped back, and the views'
        probabilities (or depths) averaged. As mmseg's test pipelines do, a view of images that
        were normalised from 8-bit ones (the data sets', :func:`dinov2_dense.features.load_image`'s)
        is resized in 8 bits (OpenCV's bilinear resize, ``mmcv.imresize``), then normalised; other
        images (16-bit or float sources) are resized as floats. This is decided for each image, so
        that its prediction does not depend on the other images of its batch.

        A view and its mirror go through the model together (one batch of twice the images), and
        slide windows ``crop_batch_size`` at a time (default 4; 1 is one window at a time).

        Arguments left None come from ``self.test_cfg`` (zoo models carry the official protocol),
        else whole / 512 / 341 / (1.0,) / no flip / no scale.

        Inference: the model runs in eval mode (a head's BatchNorm uses its running statistics, so a
        prediction does not depend on the batch and leaves the statistics as they are), and every
        module gets its own mode back afterwards (a model being trained stays in train mode).
        """
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            what = f"a tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"predict() takes a (B, 3, H, W) batch of ImageNet-normalised images, not {what}: e.g. "
                             "to_input_tensor(path)[None] (from dinov2_dense.features)")
        from dinov2_dense.features import _check_normalised

        _check_normalised(images, "predict()'s images", "to_input_tensor(image)[None] gives them from a path or array",
                          values=True)
        if images.dtype == torch.float64:  # (the model runs float32: as float32 images, 8-bit ones are found as such)
            images = images.float()
        with kept_modes(self):
            self.eval()
            out = self._predict(images, mode, crop_size, stride, scales, flip, scale, out_size, crop_batch_size)
        self._refuse_nonfinite(out, images.device)
        return out

    def _refuse_nonfinite(self, out: Tensor, device: torch.device) -> None:
        """NaN or infinite outputs (an argmax of NaN probabilities is class 0 everywhere: a plausible mIoU) are
        refused: a diverged or damaged model, or float16 overflow. Checked on the CPU, and on a GPU in float16
        alone (a check there waits for it)."""
        autocast = torch.amp.is_autocast_available(device.type) and torch.is_autocast_enabled(device.type)
        half = next(self.backbone.parameters()).dtype == torch.float16 or (
            autocast and torch.get_autocast_dtype(device.type) == torch.float16)
        if (device.type != "cpu" and not half) or bool(torch.isfinite(out).all()):
            return
        from dinov2_dense.features import nonfinite_cause

        bad = int((~torch.isfinite(out)).sum())
        raise ValueError(f"predict(): the model gave NaN or infinite outputs ({bad} of {out.numel()} values): "
                         f"{nonfinite_cause(half)}")

    def _predict(self, images: Tensor, mode, crop_size, stride, scales, flip, scale, out_size,
                 crop_batch_size) -> Tensor:
        """:meth:`predict` in the mode the modules are in."""
        cfg = {"mode": "whole", "crop_size": 512, "stride": 341, "scales": (1.0,), "flip": False, "scale": None,
               "crop_batch_size": 4, **self.test_cfg}
        crop_batch_size = cfg["crop_batch_size"] if crop_batch_size is None else crop_batch_size
        mode = cfg["mode"] if mode is None else mode
        crop_size = cfg["crop_size"] if crop_size is None else crop_size
        stride = cfg["stride"] if stride is None else stride
        scales = cfg["scales"] if scales is None else scales
        flip = cfg["flip"] if flip is None else flip
        scale = cfg["scale"] if scale is None else scale
        # the arguments as the config's test_cfg keys are checked (a float crop_batch_size raised a bare TypeError)
        check_test_cfg({"mode": mode, "crop_size": crop_size, "stride": stride, "scales": scales, "flip": flip,
                        "scale": scale, "crop_batch_size": crop_batch_size}, where="predict()")
        h, w = images.shape[-2:]
        out_size = (h, w) if out_size is None else (int(out_size[0]), int(out_size[1]))
        total = None
        views = 0
        eight: list = []  # the 8-bit images behind ``images`` (None: there are none), found at the first resize
        for ratio in scales:
            size = rescale_size(h, w, scale, ratio) if scale is not None else \
                (max(1, round(h * ratio)), max(1, round(w * ratio)))
            if size == (h, w):
                x = images
            else:
                if not eight:
                    eight.append(_eight_bit(images))
                x = _resized_view(images, eight[0], size)
            xs = torch.cat([x, x.flip(-1)]) if flip else x  # a view and its mirror in one batch
            both = self.slide_inference(xs, crop_size, stride, crop_batch_size, out_size=out_size) \
                if mode == "slide" else self.encode_decode(xs)
            for flipped, out in zip((False, True), both.split(len(images))):
                if tuple(out.shape[-2:]) != out_size:  # rescale the logits (not the probabilities)
                    out = F.interpolate(out, size=out_size, mode="bilinear", align_corners=False)
                if self.task == "segmentation":
                    out = _softmax_(out)
                if flipped:
                    out = out.flip(-1)
                total = out if total is None else total.add_(out)
                views += 1
        return total.div_(views)


def _eight_bit(images: Tensor) -> list | None:
    """For each image of the float32 batch ``images``, the (H, W, 3) uint8 numpy image it was normalised from
    (ImageNet mean and std, as the data sets do), or None where it was not (a 16-bit or float source): decided
    per image, so that an image's views do not depend on its batch. None for the whole batch where no image
    can be (float16 or bfloat16 images). Reads the images back from their device once (before any view of
    them is queued there)."""
    if images.dtype != torch.float32 or images.device.type == "meta":  # (meta: shapes only, no values)
        return None
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    levels = (images * std + mean) * 255.0
    rounded = levels.round()
    whole = ((levels - rounded).abs() <= 1e-2) & (rounded >= 0) & (rounded <= 255)
    eight = rounded.clamp(0, 255).to(torch.uint8)
    # (another normalisation of the same levels is not 8-bit either)
    same = (normalise_8bit(eight) - images).abs() <= 1e-5
    ok = (whole & same).flatten(1).all(1).cpu().tolist()
    if not any(ok):
        return None
    arrays = eight.permute(0, 2, 3, 1).cpu().contiguous().numpy()
    return [arrays[i] if ok[i] else None for i in range(len(ok))]


def _resized_view(images: Tensor, eight: list | None, size: tuple[int, int]) -> Tensor:
    """``images`` resized (bilinear) to ``size``: in 8 bits with OpenCV where ``eight`` holds the 8-bit image
    behind one (mmseg's ``Resize``: ``mmcv.imresize``), then normalised on its device (the same floats on every
    device); the others as floats."""
    floats = [i for i in range(len(images)) if eight is None or eight[i] is None]
    if len(floats) == len(images):
        return F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    import cv2
    import numpy as np

    index = [i for i in range(len(images)) if i not in floats]
    views = torch.from_numpy(np.stack([cv2.resize(eight[i], (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
                                       for i in index])).permute(0, 3, 1, 2)
    if images.device.type == "cuda":  # pinned, queued without waiting for the views already running there
        views = views.pin_memory().to(images.device, non_blocking=True)
    resized = normalise_8bit(views.to(images.device))
    if not floats:
        return resized
    out = images.new_empty((len(images), images.shape[1], *size))
    out[index] = resized
    out[floats] = F.interpolate(images[floats], size=size, mode="bilinear", align_corners=False)
    return out


def _resize_matrix(n: int, m: int, device) -> Tensor:
    """(m, n) float64 matrix of the 1-D bilinear resize n -> m (align_corners=False, no antialias):
    F.interpolate applied to the identity, so its weights are the kernel's own."""
    eye = torch.eye(n, dtype=torch.float64, device=device)[None]
    return F.interpolate(eye, size=m, mode="linear", align_corners=False)[0].T.contiguous()


def _resize_block(n: int, m: int, rows: tuple[int, int], cols: tuple[int, int], device) -> Tensor:
    """Rows ``rows[0]:rows[1]`` and columns ``cols[0]:cols[1]`` of :func:`_resize_matrix` ``(n, m)``, made alone
    from the kernel's formula (torch's: source ``scale * (i + 0.5) - 0.5`` clamped at 0, its floor and the next
    pixel, the last repeated), in float64."""
    first, last = rows
    a, b = cols
    i = torch.arange(first, last, dtype=torch.float64, device=device)  # (made on the device: no copy to it, which
    src = ((n / m) * (i + 0.5) - 0.5).clamp_(min=0)                    # would wait for the backbone's queued work)
    i0 = src.floor().long()
    l1 = (src - i0).clamp_(0, 1)
    i1 = torch.where(i0 < n - 1, i0 + 1, i0)
    block = torch.zeros(last - first, b - a, dtype=torch.float64, device=device)
    row = torch.arange(last - first, device=device).expand(2, -1)
    index, weight = torch.stack([i0, i1]), torch.stack([1 - l1, l1])
    # the weights of the taps outside the block's columns are put at column 0 with weight 0 (no boolean
    # selection, whose size a GPU would have to report back first)
    inside = (index >= a) & (index < b)
    block.index_put_((row, torch.where(inside, index - a, 0)), torch.where(inside, weight, 0.0), accumulate=True)
    return block


def _source_rows(n: int, m: int) -> Tensor:
    """(m,) int64 on the CPU: the first of the two input pixels each output pixel of the 1-D bilinear
    resize n -> m (align_corners=False) reads (torch's source index, clamped at 0, rounded down)."""
    src = ((torch.arange(m, dtype=torch.float64) + 0.5) * (n / m) - 0.5).clamp_(min=0)
    return src.floor_().long()


def _window_factor(resize: tuple[int, int], count: Tensor, source: Tensor, a: int, b: int, length: int,
                   grid: int) -> tuple[int, Tensor]:
    """(first output index, (k, grid) float32 matrix) taking a window's head output along one axis
    (``grid`` values, upsampled to ``length`` = b - a input pixels) to the k output pixels the
    window reaches, divided by the windows covering each input pixel; ``resize``: the final resize's
    (input, output) lengths along that axis.

    The output pixels reached are found on the host from ``source`` (:func:`_source_rows`), one
    pixel wider on each side than the resize's two taps for safety (their rows are zeros), so that
    no value is read back from the device: a read would wait for the backbone's queued work."""
    up = _resize_matrix(grid, length, count.device)  # (length, grid)
    reached = torch.nonzero((source + 2 >= a) & (source - 1 < b)).flatten()
    if len(reached) == 0:
        return 0, count.new_zeros((0, grid), dtype=torch.float32)
    first, last = int(reached[0]), int(reached[-1]) + 1
    full = (_resize_block(*resize, (first, last), (a, b), count.device) / count[a:b]) @ up  # (k, grid)
    return first, full.float()


def _softmax_(x: Tensor) -> Tensor:
    """Softmax over channels in place (a full-resolution (B, K, H, W) map is the largest tensor here)."""
    x.sub_(x.amax(dim=1, keepdim=True)).exp_()
    return x.div_(x.sum(dim=1, keepdim=True))
