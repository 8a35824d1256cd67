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
    paths relative to ``data_root``. Depth PNGs are read by mmseg's ``LoadDepthAnnotation`` (give it
    ``depth_rescale_factor=1e-3`` for millimetres)."""

    def __init__(self, split_file: str = "nyu_train.txt", **kwargs):
        self.split_file = split_file
        super().__init__(**kwargs)

    def load_data_list(self) -> list[dict]:
        path = osp.join(self.data_root, self.split_file)
        try:
            with open(path, encoding="utf-8") as fh:
                lines = [line.split() for line in fh if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise FileNotFoundError(f"{path}: no readable split file ({exc})") from None
        if not lines or any(len(parts) < 2 for parts in lines):
            raise ValueError(f"{path}: expected 'rgb_path depth_path [focal]' on every line")
        return [dict(img_path=osp.join(self.data_root, rgb), depth_map_path=osp.join(self.data_root, depth),
                     seg_fields=[], category_id=-1) for rgb, depth, *_ in lines]
