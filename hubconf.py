"""torch.hub entry points with the official names.

``torch.hub.load("/path/to/dinov2-dense", "dinov2_vits14", source="local")`` returns the same
model as ``torch.hub.load("facebookresearch/dinov2", "dinov2_vits14")``, with weights found or
downloaded as ``dinov2_dense.load_backbone`` does. Keyword arguments override the architecture;
ones that turn register tokens on or off (``num_register_tokens=4``) bring the position-embedding
interpolation of the official models of that kind unless set too (``dinov2_dense.hub.zoo_kwargs``).
``weights=FILE`` takes a weight file; one of another position grid is refused with what to pass instead.
"""

dependencies = ["torch"]

from dinov2_dense.hub import hub_entry as _hub_entry  # noqa: E402


def _entry(name: str):
    def entry(*, pretrained: bool = True, weights: str = "LVD142M", **kwargs):
        return _hub_entry(name, pretrained=pretrained, weights=weights, **kwargs)

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
