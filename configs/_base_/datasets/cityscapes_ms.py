# Cityscapes for "+ms": no DINOv2 setting exists; the lin. training pipeline is kept.
_base_ = ["./cityscapes.py"]
