# lin.4 depth: the lin.1 head on four blocks ([2, 5, 8, 11] for ViT-S/B), each with its class token
# (dinov2/hub/depthers.py: in_index [0, 1, 2, 3], channels = 2 x D x 4). No copy of a released
# linear4 config was found; the rest is lin.1's. ViT-S values.
_base_ = ["./depth_linear.py"]
model = dict(
    head=dict(in_channels=[384, 384, 384, 384]),
    layers=[2, 5, 8, 11],
)
