# The runtime for synthetic scenes: checkpoints and logs at the pace of a short CPU run.
_base_ = ["./default_runtime.py"]
default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))
