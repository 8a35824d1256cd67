"""dinov2-dense: dense prediction with DINOv2 backbones.

The front door::

    from dinov2_dense import load_backbone, extract_features
    model = load_backbone("dinov2_vits14")          # official weights, found or downloaded
    feats = extract_features(model, "image.jpg", layers=[11])
"""

from .checkpoints import CheckpointError, load_backbone_weights, save_safetensors
from .features import DenseFeatures, extract_features, load_image
from .hub import BACKBONES, WeightsNotFoundError, build_backbone, load_backbone

__version__ = "0.1.0"


def __getattr__(name: str):
    # load_model builds backbone + head: dinov2_dense.zoo is a higher layer, imported on use
    if name in ("load_model", "build_model", "MODELS"):
        from . import zoo

        return getattr(zoo, name)
    import importlib.util

    if not name.startswith("_") and "." not in name and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # a submodule, as after `import dinov2_dense.zoo` (the README names dinov2_dense.zoo.load_model)
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ImportError as exc:  # (dinov2_dense.mmseg without its extra): hasattr() says False, not raises
            raise AttributeError(f"module 'dinov2_dense' has no attribute {name!r} ({exc})") from exc
    raise AttributeError(f"module 'dinov2_dense' has no attribute {name!r}")

__all__ = [
    "BACKBONES",
    "CheckpointError",
    "DenseFeatures",
    "WeightsNotFoundError",
    "build_backbone",
    "extract_features",
    "load_backbone",
    "load_backbone_weights",
    "load_image",
    "load_model",
    "save_safetensors",
]
