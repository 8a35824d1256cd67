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
    "save_safetensors",
]
