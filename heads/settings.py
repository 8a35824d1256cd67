"""The per-size and per-data-set settings, re-exported from their one home, ``dinov2_dense.settings``."""

from dinov2_dense.settings import *  # noqa: F401,F403
from dinov2_dense.settings import __all__  # noqa: F401
