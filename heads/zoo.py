"""Deprecated: the full-model zoo builds backbones, so it lives above the heads, in ``dinov2_dense.zoo``.

``heads.zoo.load_model`` and the other names keep working (with a DeprecationWarning) until the
next minor release; import them from ``dinov2_dense.zoo`` (or ``dinov2_dense.load_model``).
"""

from __future__ import annotations

import importlib
import warnings

_NAMES = ("MODELS", "ModelSpec", "build_model", "get_model_spec", "load_head_weights", "load_model",
          "model_weights_status")


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'heads.zoo' has no attribute {name!r}")
    warnings.warn(f"heads.zoo.{name} moved to dinov2_dense.zoo.{name}", DeprecationWarning, stacklevel=2)
    return getattr(importlib.import_module("dinov2_dense.zoo"), name)
