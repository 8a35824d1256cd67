"""mmsegmentation 1.x plugin: our DINOv2 backbone, heads, depth estimator, losses and data sets
in mmseg's registries, for mmseg's own configs and tools.

    custom_imports = dict(imports=["dinov2_dense.mmseg"], allow_failed_imports=False)
    model = dict(type="EncoderDecoder", backbone=dict(type="DINOv2", arch="dinov2_vits14", ...), ...)

Registered: ``DINOv2`` (backbone), ``DINOv2BNHead`` (linear lin. / +ms), ``DINOv2DPTHead``
(segmentation), ``DINOv2LinearDepthHead`` and ``DINOv2DPTDepthHead`` (depth), ``DINOv2DepthEstimator``
(mmseg's ``DepthEstimator`` with slide inference that really slides, and the protocols' flip test),
``SigLoss`` (the depth toolbox's, which mmseg lacks) and ``GradientLoss`` (spatial: :class:`heads.GradientLoss`), ``SyntheticADE20KDataset``
and ``NYUToolboxDataset`` (the split-file layout of the depth toolboxes), ``DINOv2DepthAugment`` and
``KBCrop`` (the released depth protocols' augmentation, seeded from the run, and crop),
``DINOv2DepthMetric`` (our depth metric: the numbers ``dinov2-dense test`` reports) and
``SeedAugmentation`` (mmcv's random transforms seeded by the sample's place in the run's stream). Our
engine's classes are found by name too: the configs' data loaders draw from ``SeededInfiniteSampler``,
and their runtime (``configs/mmseg/_base_/runtime.py``) adds ``CheckpointSanitizerHook``,
``LossWarmUpHook`` (a resumed run continues SigLoss's warm-up), ``ResumeDataHook`` (a resumed run's
data starts at the checkpoint's sample, loading none before it, with the uninterrupted run's crops) and
``DivergenceHook`` (a NaN or infinite loss stops the run before its checkpoint).
State-dict keys are the official ``backbone.*`` / ``decode_head.*`` ones, so released head files load
strictly; :mod:`.convert` moves checkpoints between mmseg and :func:`dinov2_dense.zoo.load_model`.

Needs mmsegmentation 1.2 and mmcv 2.1 with compiled ops (see the README's mmseg section); the rest of
dinov2-dense never imports this package. The converter, ``python -m dinov2_dense.mmseg.convert``, runs
without them.
"""

import sys

#: install advice for the plugin's packages (one fact: the README's mmseg section gives the same steps)
INSTALL = ('pip install "setuptools<82" && MMCV_WITH_OPS=1 pip install --no-build-isolation mmcv==2.1.0, then '
           'pip install "dinov2-dense[mmseg]" (from a checkout: pip install -e ".[mmseg]"); see the README, mmseg')


def _converter_alone() -> bool:
    """Whether this process is ``python -m dinov2_dense.mmseg.convert``: the converter reads and writes
    checkpoints with torch alone, so it runs without mmseg and mmcv (importing it imports this package
    first, which would refuse)."""
    argv, name = getattr(sys, "orig_argv", []), f"{__name__}.convert"
    return any(a == "-m" and b == name for a, b in zip(argv, argv[1:])) or f"-m{name}" in argv


try:
    import mmcv  # noqa: F401
    import mmseg  # noqa: F401
    from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: F401 - needs mmcv's ops
    _MISSING = None
except ImportError as exc:  # one line: what is missing and how to get it
    _MISSING = (f"dinov2_dense.mmseg needs mmsegmentation 1.2 with mmcv 2.1 built with its ops ({exc}); install "
                f"them: {INSTALL}")
    if not _converter_alone():
        raise ImportError(_MISSING) from None

if _MISSING is None:
    from dinov2_dense.engine import register_all

    register_all()  # CheckpointSanitizerHook, ...: mmengine's root registries, found from mmseg's scope

    from .backbone import DINOv2
    from .datasets import NYUToolboxDataset, SyntheticADE20KDataset
    from .heads import DINOv2BNHead, DINOv2DPTDepthHead, DINOv2DPTHead, DINOv2LinearDepthHead
    from .losses import GradientLoss, SigLoss
    from .segmentors import DINOv2DepthEstimator
    from .transforms import DINOv2DepthAugment, DINOv2DepthMetric, KBCrop, SeedAugmentation

__all__ = [
    "DINOv2", "DINOv2BNHead", "DINOv2DPTDepthHead", "DINOv2DPTHead", "DINOv2DepthAugment", "DINOv2DepthEstimator",
    "DINOv2DepthMetric", "DINOv2LinearDepthHead", "GradientLoss", "KBCrop", "NYUToolboxDataset", "SeedAugmentation",
    "SigLoss", "SyntheticADE20KDataset", "from_mmseg", "to_mmseg",
]


def __getattr__(name: str):
    """``from_mmseg`` and ``to_mmseg`` from :mod:`.convert`, imported on first use: imported here, the
    module would be in ``sys.modules`` before ``python -m dinov2_dense.mmseg.convert`` runs it as
    ``__main__``, and runpy warns about that on every call."""
    if _MISSING is not None and name in __all__ and name not in ("from_mmseg", "to_mmseg"):
        raise ImportError(_MISSING)  # (the converter alone was imported)
    if name in ("from_mmseg", "to_mmseg"):
        from . import convert

        return getattr(convert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
