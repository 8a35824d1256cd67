# Synthetic scenes for "+ms": the lin. pipelines (the scenes have one scale).
_base_ = ["./synthetic_seg.py"]
