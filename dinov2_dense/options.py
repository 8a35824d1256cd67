"""Checks of command-line values, done when the arguments are parsed: argparse ``type=`` functions
with ranges (``--size 0`` or ``--frame-step 0`` stop at once with argparse's one-line error and
exit code 2, instead of running and meaning nothing), and the ``--device`` check.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def _ranged(kind: type, minimum, maximum, strict_min: bool, what: str, strict_max: bool = False
            ) -> Callable[[str], float | int]:
    noun = "an integer" if kind is int else "a number"

    def parse(text: str):
        value = _number(kind, text)
        low_bad = minimum is not None and (value <= minimum if strict_min else value < minimum)
        high_bad = maximum is not None and (value >= maximum if strict_max else value > maximum)
        if low_bad or high_bad:
            lo = "" if minimum is None else f"{'>' if strict_min else '>='} {minimum:g}"
            hi = "" if maximum is None else f"{'<' if strict_max else '<='} {maximum:g}"
            raise argparse.ArgumentTypeError(f"{text}: expected {noun} {' and '.join(x for x in (lo, hi) if x)}"
                                             + (f" ({what})" if what else ""))
        return value

    parse.__name__ = "integer" if kind is int else "number"  # argparse names the type in some messages
    return parse


def int_range(minimum: int | None = None, maximum: int | None = None, what: str = "") -> Callable[[str], int]:
    """An argparse type: an integer in [minimum, maximum] (either bound may be open)."""
    return _ranged(int, minimum, maximum, False, what)


def float_range(minimum: float | None = None, maximum: float | None = None, *, strict_min: bool = False,
                strict_max: bool = False, what: str = "") -> Callable[[str], float]:
    """An argparse type: a finite float in [minimum, maximum] (``strict_min``: > minimum; ``strict_max``:
    < maximum)."""
    return _ranged(float, minimum, maximum, strict_min, what, strict_max)


positive_int = int_range(1)
nonnegative_int = int_range(0)
positive_float = float_range(0.0, strict_min=True)
nonnegative_float = float_range(0.0)


def check_device(text: str | None, option: str = "--device"):
    """``--device`` value -> torch.device, refusing devices this machine does not have."""
    import torch

    if text is None:
        return None
    cpu = f"{option} cpu" if option.startswith("-") else f"{option}=cpu"  # a command-line option or a config key
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{option} {text!r}: not a device name (use cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{option} {text}: no CUDA device is available here "
                             f"(torch {torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'}); "
                             f"use {cpu}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{option} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{option} {text}: MPS is not available here; use {cpu}")
    elif device.type not in ("cpu", "cuda", "mps"):
        if not hasattr(torch, device.type) or not getattr(torch, device.type).is_available():
            raise ValueError(f"{option} {text}: no {device.type} device is available here")
    return device


#: ``torch.compile`` modes and attention kernels the backbones take (see dinov2_dense.models.speed);
#: here, free of torch, for the command line's choices.
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
ATTENTION_KERNEL_NAMES = ("auto", "flash", "efficient", "cudnn", "math")
