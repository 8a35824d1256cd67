"""DINOv2 Vision Transformers with the official state-dict layout."""

from .vision_transformer import (
    DinoVisionTransformer,
    interpolate_pos_embed,
    vit_base,
    vit_giant2,
    vit_large,
    vit_small,
)

__all__ = ["DinoVisionTransformer", "interpolate_pos_embed", "vit_small", "vit_base", "vit_large", "vit_giant2"]
