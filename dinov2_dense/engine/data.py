"""Data glue for mmengine runs: the collate function and data-set builders named in configs."""

from __future__ import annotations

import torch

from .registry import DATA_SAMPLERS, DATASETS, FUNCTIONS


@FUNCTIONS.register_module()
def dense_collate(batch: list[dict]) -> dict:
    """Samples {"image", "seg" | "depth", "meta"} -> {"inputs": (B, 3, H, W), "data_samples": [...]}.

    Images of one batch must share a size (training crops do; evaluate with batch size 1 otherwise).
    """
    sizes = {tuple(s["image"].shape) for s in batch}
    if len(sizes) > 1:
        paths = [s.get("meta", {}).get("path", "?") for s in batch]
        raise ValueError(f"a batch mixes image sizes {sorted(sizes)} ({', '.join(map(str, paths))}); "
                         "crop or pad them alike, or use batch_size=1")
    inputs = torch.stack([s["image"] for s in batch])
    samples = [{k: v for k, v in s.items() if k != "image"} for s in batch]
    return {"inputs": inputs, "data_samples": samples}


class SampleIndex(int):
    """A data-set index that carries the augmentation seed of its place in the run's sample stream
    (``augment_seed``): a data set seeds its pipeline with it (see :mod:`dinov2_dense.data.sampling`)."""

    augment_seed: int

    def __new__(cls, index: int, augment_seed: int):
        obj = super().__new__(cls, index)
        obj.augment_seed = augment_seed
        return obj

    def __reduce__(self):  # to DataLoader workers and back
        return SampleIndex, (int(self), self.augment_seed)


@DATA_SAMPLERS.register_module()
class SeededInfiniteSampler(torch.utils.data.Sampler):
    """mmengine's ``InfiniteSampler`` (same arguments) with a seed for every sample: this process's share of
    the run's endless sample stream (:class:`~dinov2_dense.data.sampling.InfiniteStream`), as
    :class:`SampleIndex` values seeded by their position. A resumed run starts it at the checkpoint's
    position (:meth:`continue_at`) instead of loading every sample before it, and draws the crops of the
    uninterrupted run, with any number of DataLoader workers."""

    def __init__(self, dataset, shuffle: bool = True, seed: int | None = None):
        from mmengine.dist import get_dist_info, sync_random_seed

        from dinov2_dense.data.sampling import InfiniteStream

        rank, world = get_dist_info()
        self.seed = int(sync_random_seed() if seed is None else seed)
        self.stream = InfiniteStream(len(dataset), self.seed, rank, world, shuffle=shuffle)

    def continue_at(self, position: int) -> None:
        """Start the next pass at ``position``: the samples all processes have read so far."""
        self.stream.start = int(position)

    def __iter__(self):
        from dinov2_dense.data.sampling import stream_seed

        for position, index in self.stream:
            yield SampleIndex(index, stream_seed(self.seed, AUGMENTATION, position))

    def __len__(self) -> int:
        return len(self.stream)

    def set_epoch(self, epoch: int) -> None:
        """Nothing: an endless stream has no epochs (mmengine's hooks call it)."""


#: The stream key of the samples' augmentation seeds (:func:`~dinov2_dense.data.sampling.stream_seed`).
AUGMENTATION = 1


def build_pipeline(cfg: dict | None):
    """``dict(type="seg_train_pipeline", crop_size=512, ...)`` -> the albumentations pipeline."""
    from dinov2_dense.data import pipelines

    if cfg is None:
        return None
    cfg = dict(cfg)
    name = cfg.pop("type")
    fn = getattr(pipelines, name, None)
    if fn is None or not name.endswith("_pipeline"):
        raise KeyError(f"unknown pipeline {name!r}: use one of seg_train_pipeline, seg_test_pipeline, "
                       "depth_train_pipeline, depth_test_pipeline")
    import inspect

    if "seed" in inspect.signature(fn).parameters and cfg.get("seed") is None:
        from mmengine.dist import get_rank

        # from the run's seed (the runner seeds torch before it builds the data sets: randomness.seed), without
        # drawing from torch's generator, and each process its own (every rank has the same torch seed);
        # albumentations would otherwise seed itself from fresh entropy, and two runs of one config would train
        # on other crops. DataLoader workers reseed their copy (DenseDataset).
        cfg["seed"] = (torch.initial_seed() + 1_000_003 * get_rank()) % 2**32
    return fn(**cfg)


def _register_datasets() -> None:
    """Each data set of ``dinov2_dense.data`` under its own name, taking ``pipeline=dict(...)``."""
    from dinov2_dense.data import datasets

    names = ["ADE20KDataset", "VOCDataset", "CityscapesDataset", "FolderSegmentationDataset",
             "NYUDepthDataset", "KITTIDepthDataset", "FolderDepthDataset"]
    for name in names:
        cls = getattr(datasets, name)

        def build(*args, pipeline: dict | None = None, _cls=cls, **kwargs):
            return _cls(*args, transform=build_pipeline(pipeline), **kwargs)

        build.__name__ = build.__qualname__ = name
        build.__doc__ = f"{name} with ``pipeline=dict(type=..., ...)`` (see dinov2_dense.data.pipelines)."
        build.dataset_class = cls  # what validate_config checks a config's keys against
        if name not in DATASETS.module_dict:
            DATASETS.register_module(name=name, module=build)


_register_datasets()
