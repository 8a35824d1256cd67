"""Frozen-backbone features computed once, then heads trained from them.

A linear probe with fixed (or no) augmentation sees the same backbone features every epoch; the
backbone forward is nearly all of the cost. ``FeatureCache.build`` runs it once over a data set and
stores the chosen blocks' maps (and class tokens) and the targets in memory-mapped ``.npy`` files;
``train_head`` then trains a head from the cache in a plain PyTorch loop. The cache is written into
a temporary directory and renamed, so an interrupted build never looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dinov2_dense.fileio import file_stamp, new_memmap, staged_dir
from heads.predictor import DensePredictor, kept_modes

from .model import check_head_fits


class FeatureCache(Dataset):
    """A built cache: ``cache[i]`` -> {"features": [map | (map, cls), ...], "seg" | "depth": target}."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.path}: not a feature cache (no meta.json); build it with FeatureCache.build")
        self.meta = json.loads(meta_file.read_text())
        self.maps = [np.load(self.path / f"map{i}.npy", mmap_mode="r") for i in range(len(self.meta["layers"]))]
        self.cls = ([np.load(self.path / f"cls{i}.npy", mmap_mode="r") for i in range(len(self.meta["layers"]))]
                    if self.meta["class_token"] else None)
        self.targets = np.load(self.path / "targets.npy", mmap_mode="r")

    def check(self, predictor: DensePredictor) -> None:
        """Raise ValueError when ``predictor`` reads other features than the cache holds (another
        backbone, other blocks, final norm or class tokens, or another task): a head trained on
        them would not match the predictor it is saved with. (A cache built before the backbone's
        fingerprint was recorded is checked without it.)"""
        want = {"layers": list(predictor.layers), "norm": predictor.norm, "class_token": predictor.class_token,
                "task": predictor.task}
        if "backbone" in self.meta:
            from dinov2_dense.checkpoints import fingerprint, forward_difference, forward_settings

            if self.meta["backbone"] != fingerprint(predictor.backbone):
                raise ValueError(f"{self.path}: the feature cache was built with another backbone (other weights); "
                                 "build a cache for this one")
            settings = forward_difference(self.meta, {"forward": forward_settings(predictor.backbone)})
            if settings is not None:  # (a cache of an older version records none)
                raise ValueError(f"{self.path}: the feature cache was built with the same backbone weights built "
                                 f"with other settings ({settings}); build a cache for this one")
        diff = [f"{k} {self.meta.get(k)!r} (the predictor's: {v!r})" for k, v in want.items() if self.meta.get(k) != v]
        if diff:
            raise ValueError(f"{self.path}: the feature cache was built with other settings: {'; '.join(diff)}")
        changed = [path for path, stamp in self.meta.get("files", {}).items() if _stamp(path) != stamp]
        if changed:
            raise ValueError(f"{self.path}: {len(changed)} of the data set's {len(self.meta['files'])} files changed "
                             f"or went away since the cache was built (first: {changed[0]}); build the cache again")

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, i: int) -> dict:
        feats = [torch.from_numpy(np.array(m[i], dtype=np.float32)) for m in self.maps]
        if self.cls is not None:
            feats = [(f, torch.from_numpy(np.array(c[i], dtype=np.float32))) for f, c in zip(feats, self.cls)]
        target = torch.from_numpy(np.array(self.targets[i]))
        key = "seg" if self.meta["task"] == "segmentation" else "depth"
        return {"features": feats, key: target.long() if key == "seg" else target.float()}

    @classmethod
    def build(
        cls,
        predictor: DensePredictor,
        dataset: Dataset,
        path: str | os.PathLike,
        batch_size: int = 8,
        dtype: str = "float16",
        progress: bool = True,
        num_workers: int = 0,
    ) -> "FeatureCache":
        """Run the frozen backbone once over ``dataset`` (samples of one size) and store the features.

        ``dtype`` "float16" halves the disk and memory traffic; "float32" keeps the features exact.
        The size and modification time of each image and target file (the samples' ``meta["path"]``
        and ``meta["target_path"]``) are recorded: :meth:`check` (and so ``train_head``) refuses the
        cache when one has changed.
        """
        from tqdm.auto import tqdm

        from .data import dense_collate

        if dtype not in ("float16", "float32"):
            raise ValueError(f"dtype={dtype!r}: a feature cache stores float16 or float32")
        check_head_fits(predictor)  # before the backbone runs over the data set, not at train_head's first step
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists: remove it or choose another path for the cache")
        key = "seg" if predictor.task == "segmentation" else "depth"
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=dense_collate)
        n = len(dataset)
        maps = cls_tokens = targets = None
        offset = 0
        files: dict[str, list[int] | None] = {}
        device = next(predictor.parameters()).device  # (a predictor on a GPU: the batches go there)
        with kept_modes(predictor), staged_dir(path) as tmp, torch.no_grad():
            predictor.eval()
            for batch in tqdm(loader, desc="caching features", unit="batch", disable=not progress):
                feats = predictor.extract_features(batch["inputs"].to(device))
                pairs = [f if isinstance(f, (tuple, list)) else (f, None) for f in feats]
                target = torch.stack([s[key] for s in batch["data_samples"]])
                if maps is None:
                    maps = [new_memmap(tmp / f"map{i}.npy", (n, *m.shape[1:]), dtype) for i, (m, _) in enumerate(pairs)]
                    if predictor.class_token:
                        cls_tokens = [new_memmap(tmp / f"cls{i}.npy", (n, c.shape[1]), dtype)
                                      for i, (_, c) in enumerate(pairs)]
                    tdtype = "int16" if key == "seg" else "float32"
                    targets = new_memmap(tmp / "targets.npy", (n, *target.shape[1:]), tdtype)
                b = target.shape[0]
                metas = [sample.get("meta", {}) for sample in batch["data_samples"]]
                for i, (store, (m, _)) in enumerate(zip(maps, pairs)):
                    if tuple(store.shape[1:]) != tuple(m.shape[1:]):
                        raise ValueError(f"{metas[0].get('path', f'sample {offset}')}: features of shape "
                                         f"{tuple(m.shape[1:])} at block {predictor.layers[i]}, the first samples' "
                                         f"{tuple(store.shape[1:])}: a feature cache needs samples of one size "
                                         "(crop or resize them alike in the data set's pipeline)")
                for meta in metas:
                    for key_ in ("path", "target_path"):
                        if meta.get(key_):  # absolute: the cache is used from other working directories
                            files[os.path.abspath(meta[key_])] = _stamp(meta[key_])
                for store, (m, _) in zip(maps, pairs):
                    store[offset : offset + b] = m.cpu().numpy()
                if cls_tokens is not None:
                    for store, (_, c) in zip(cls_tokens, pairs):
                        store[offset : offset + b] = c.cpu().numpy()
                targets[offset : offset + b] = target.cpu().numpy()
                offset += b
            for store in (maps or []) + (cls_tokens or []) + ([targets] if targets is not None else []):
                store.flush()
            from dinov2_dense.checkpoints import fingerprint, forward_settings

            meta = {"layers": predictor.layers, "norm": predictor.norm, "class_token": predictor.class_token,
                    "task": predictor.task, "count": n, "dtype": dtype, "backbone": fingerprint(predictor.backbone),
                    "forward": forward_settings(predictor.backbone), "files": files}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            del maps, cls_tokens, targets
        return cls(path)


def _stamp(path) -> list[int] | None:
    """:func:`~dinov2_dense.fileio.file_stamp` as meta.json holds it (a list)."""
    stamp = file_stamp(path)
    return None if stamp is None else list(stamp)


def _to_device(feats: list, device: torch.device) -> list:
    """Cached features (maps, or (map, class token) pairs) on ``device``."""
    return [tuple(t.to(device) for t in f) if isinstance(f, (tuple, list)) else f.to(device) for f in feats]


def _collate_cached(batch: list[dict]) -> dict:
    first = batch[0]["features"]
    if isinstance(first[0], tuple):
        feats = [(torch.stack([b["features"][i][0] for b in batch]), torch.stack([b["features"][i][1] for b in batch]))
                 for i in range(len(first))]
    else:
        feats = [torch.stack([b["features"][i] for b in batch]) for i in range(len(first))]
    key = "seg" if "seg" in batch[0] else "depth"
    return {"features": feats, key: torch.stack([b[key] for b in batch])}


def train_head(
    predictor: DensePredictor,
    data: FeatureCache | Dataset,
    losses: Sequence[nn.Module],
    epochs: int = 1,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train ``predictor.decode_head`` with AdamW; returns the loss of every step.

    ``data``: a FeatureCache (features read from disk), or the data set itself (the frozen backbone
    runs on every batch: the uncached loop, for comparison). Same seed, same batches.

    The head trains in train mode (its BatchNorm on batch statistics); every module of the predictor
    gets its mode back at the end, and ``predictor.predict`` runs in eval mode whatever the mode.
    """
    from tqdm.auto import tqdm

    from .data import dense_collate

    check_head_fits(predictor)
    generator = torch.Generator().manual_seed(seed)
    cached = isinstance(data, FeatureCache)
    if cached:
        data.check(predictor)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator,
                        collate_fn=_collate_cached if cached else dense_collate)
    head = predictor.decode_head
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    key = "seg" if predictor.task == "segmentation" else "depth"
    device = next(head.parameters()).device  # (a predictor on a GPU: features and targets go there)
    history = []
    with kept_modes(predictor):
        head.train()
        for _ in tqdm(range(epochs), desc="epochs", disable=not progress):
            for batch in loader:
                if cached:
                    feats, target = _to_device(batch["features"], device), batch[key].to(device)
                else:
                    feats = predictor.extract_features(batch["inputs"].to(device))
                    target = torch.stack([s[key] for s in batch["data_samples"]]).to(device)
                loss = sum(predictor.head_losses(feats, target, losses).values())
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                history.append(loss.item())
    return history
