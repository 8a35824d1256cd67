"""mmseg data sets for the layouts dinov2-dense writes (``dinov2-dense synth``): the ADE20K-like
tree with the scenes' own classes, and the depth toolboxes' NYU / KITTI split files
(``rgb_path depth_path [focal]`` a line), which mmseg's ``NYUDataset`` (images/ + annotations/ with
equal stems) does not read."""

from __future__ import annotations

import json
import os.path as osp

from mmseg.datasets import BaseSegDataset, NYUDataset
from mmseg.registry import DATASETS


@DATASETS.register_module()
class SyntheticADE20KDataset(BaseSegDataset):
    """``dinov2-dense synth --layout ade20k`` output: ``images/{training,validation}/*.jpg`` and
    ``annotations/.../*.png`` (class k stored as k + 1, so ``reduce_zero_label``); class names from
    ``synthetic.json`` in ``data_root``."""

    METAINFO: dict = dict()

    def __init__(self, data_root: str = "", metainfo: dict | None = None, img_suffix: str = ".jpg",
                 seg_map_suffix: str = ".png", reduce_zero_label: bool = True, **kwargs):
        if metainfo is None:
            info = osp.join(data_root, "synthetic.json")
            try:
                with open(info, encoding="utf-8") as fh:
                    metainfo = dict(classes=tuple(json.load(fh)["class_names"]))
            except (OSError, ValueError, KeyError) as exc:
                raise FileNotFoundError(f"{info}: the synthetic layout's class names could not be read ({exc}); "
                                        "write the data with `dinov2-dense synth` or pass metainfo") from None
        super().__init__(data_root=data_root, metainfo=metainfo, img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)


@DATASETS.register_module()
class NYUToolboxDataset(NYUDataset):
    """A split file of the depth toolboxes (BTS, Monocular-Depth-Estimation-Toolbox), e.g. the NYU
    ``nyu_train.txt`` our synthetic NYU layout writes: one ``rgb depth [focal]`` line per sample,
    paths relative to ``data_root / img_dir`` and ``data_root / depth_dir`` (a leading ``/``, as the
    toolboxes' own split files write them, is dropped; a depth ``None`` has no ground truth and is left
    out), read as our ``NYUDepthDataset`` reads it: a missing file is named with its split file and line.
    Depth PNGs are read by mmseg's ``LoadDepthAnnotation`` (give it ``depth_rescale_factor=1e-3`` for
    millimetres)."""

    def __init__(self, split_file: str = "nyu_train.txt", img_dir: str = "", depth_dir: str = "", **kwargs):
        self.split_file, self.img_dir, self.depth_dir = split_file, img_dir, depth_dir
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        from pathlib import Path

        from dinov2_dense.data.datasets import _read_split, _resolve_split_file

        root = Path(self.data_root)
        items, _ = _read_split(root, _resolve_split_file(root, self.split_file), self.img_dir, self.depth_dir, "skip")
        return [dict(img_path=str(item.image), depth_map_path=str(item.target), seg_fields=[], category_id=-1)
                for item in items]


@DATASETS.register_module()
class KITTIToolboxDataset(NYUToolboxDataset):
    """KITTI (Eigen split) as the Monocular-Depth-Estimation-Toolbox stores it, as our ``KITTIDepthDataset``
    reads it: split lines ``rgb depth focal``, images under ``data_root/input`` (the raw data), depth under
    ``data_root/gt_depth`` (16-bit PNGs of 1/256 m), lines without ground truth (``None``) left out."""

    def __init__(self, split_file: str = "kitti_eigen_train.txt", img_dir: str = "input",
                 depth_dir: str = "gt_depth", **kwargs):
        super().__init__(split_file=split_file, img_dir=img_dir, depth_dir=depth_dir, **kwargs)
