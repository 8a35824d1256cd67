"""torch.hub entry points with the official names.

``torch.hub.load("/path/to/dinov2-dense", "dinov2_vits14", source="local")`` returns the same
model as ``torch.hub.load("facebookresearch/dinov2", "dinov2_vits14")``, with weights found or
downloaded as ``dinov2_dense.load_backbone`` does.
"""

dependencies = ["torch"]

from dinov2_dense.hub import load_backbone as _load_backbone  # noqa: E402


def _entry(name: str):
    def entry(*, pretrained: bool = True, weights: str = "LVD142M", **kwargs):
        if weights != "LVD142M" and pretrained and not isinstance(weights, str):
            raise ValueError(f"unsupported weights {weights!r}")
        source = None if not pretrained else ("official" if weights == "LVD142M" else weights)
        return _load_backbone(name, weights=source, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"DINOv2 {name} backbone (optionally) pretrained on LVD-142M; kwargs override the architecture."
    return entry


dinov2_vits14 = _entry("dinov2_vits14")
dinov2_vitb14 = _entry("dinov2_vitb14")
dinov2_vitl14 = _entry("dinov2_vitl14")
dinov2_vitg14 = _entry("dinov2_vitg14")
dinov2_vits14_reg = _entry("dinov2_vits14_reg")
dinov2_vitb14_reg = _entry("dinov2_vitb14_reg")
dinov2_vitl14_reg = _entry("dinov2_vitl14_reg")
dinov2_vitg14_reg = _entry("dinov2_vitg14_reg")
