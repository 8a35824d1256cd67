"""Write the per-model leaf configs of configs/segmentation and configs/depth.

Each leaf names its bases (``configs/_base_/models``, ``datasets``, ``schedules``) and overrides only
what differs between backbone sizes and data sets: the backbone, the head's widths, the blocks read,
the classes or depth range, and the test protocol. Those numbers come from the one table,
``dinov2_dense/settings.py``; the protocol values live in the bases. tests/test_configs.py loads
every config through mmengine and checks its values against the table and the released protocol
(independently of this script), and that the committed leaves are what this script writes.

    python tools/make_configs.py            # rewrite the leaves
    python tools/make_configs.py --check    # exit 1 if a committed leaf differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dinov2_dense.settings import BACKBONE_SETTINGS, DATASET_SETTINGS, test_protocol

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEG_HEADS = {"linear": "lin.: BatchNorm + 1x1 conv on the last of the four blocks",
             "ms": "+ms: the four blocks concatenated; multi-scale + flip test",
             "dpt": "a DPT head ending in class logits"}
DEPTH_HEADS = {"linear": "lin.1: the last block and its class token, 256 bins",
               "linear4": "lin.4: four blocks and their class tokens, 256 bins",
               "dpt": "DPT head"}
SEG_DATA = ("ade20k", "voc2012", "cityscapes", "synthetic")
DEPTH_DATA = ("nyu", "kitti", "synthetic")


def _leaf(title: str, bases: list[str], model: dict[str, str]) -> str:
    quoted = [f'"../_base_/{b}.py"' for b in bases]
    args = ",\n             ".join(f"{k}={v}" for k, v in model.items())
    return (f"# {title}.\n_base_ = [{', '.join(quoted[:2])},\n          {', '.join(quoted[2:])}]\n"
            f"model = dict({args})\n")


def _dict(values: dict) -> str:
    return "dict(" + ", ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v!r}" for k, v in values.items()) + ")"


def _seg_leaf(size: str, dataset: str, kind: str) -> str:
    s = BACKBONE_SETTINGS[size]
    synthetic = dataset == "synthetic"
    name = "synthetic_seg" if synthetic else dataset
    data = DATASET_SETTINGS[name]
    d = s.embed_dim
    if kind == "dpt":
        head = f"dict(embed_dim={d}, post_process_channels={list(s.post_process_channels)}, num_classes={data.num_classes})"
        layers = list(s.depth_layers)
    else:
        widths = [d] * (4 if kind == "ms" else 1)
        head = f"dict(in_channels={widths}, num_classes={data.num_classes})"
        layers = list(s.seg_layers)
    bases = [f"models/seg_{kind}", f"datasets/{name}{'_ms' if kind == 'ms' else ''}",
             "schedules/schedule_synthetic" if synthetic else "schedules/seg_40k",
             "synthetic_runtime" if synthetic else "default_runtime"]
    model = {"backbone": f'"{s.name}", layers={layers}', "head": head,
             "test_cfg": _dict({"_delete_": True, **test_protocol(name, kind)})}
    return _leaf(f"{s.name}, {dataset}: {SEG_HEADS[kind]}", bases, model)


def _depth_leaf(size: str, dataset: str, kind: str) -> str:
    s = BACKBONE_SETTINGS[size]
    synthetic = dataset == "synthetic"
    name = "synthetic_depth" if synthetic else dataset
    data = DATASET_SETTINGS[name]
    d = s.embed_dim
    depth_range = f"min_depth={data.min_depth}, max_depth={data.max_depth}"
    if kind == "dpt":
        head = f"dict(embed_dim={d}, post_process_channels={list(s.post_process_channels)}, {depth_range})"
    else:
        head = f"dict(in_channels={[d] * (4 if kind == 'linear4' else 1)}, {depth_range})"
    layers = [s.depth - 1] if kind == "linear" else list(s.depth_layers)
    bases = [f"models/depth_{kind}", f"datasets/{name}",
             "schedules/schedule_synthetic" if synthetic else "schedules/depth_38k",
             "synthetic_runtime" if synthetic else "default_runtime"]
    model = {"backbone": f'"{s.name}", layers={layers}', "head": head}
    return _leaf(f"{s.name}, {dataset}: {DEPTH_HEADS[kind]}", bases, model)


def generate() -> dict[str, str]:
    """Relative path -> file text, for every generated leaf config."""
    files = {}
    for size, s in BACKBONE_SETTINGS.items():
        for dataset in SEG_DATA:
            for kind in SEG_HEADS:
                files[f"segmentation/{s.name}_{dataset}_{kind}.py"] = _seg_leaf(size, dataset, kind)
        for dataset in DEPTH_DATA:
            for kind in DEPTH_HEADS:
                files[f"depth/{s.name}_{dataset}_{kind}.py"] = _depth_leaf(size, dataset, kind)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="report differences instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for rel, text in generate().items():
        path = CONFIGS / rel
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(rel)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    verb = "differ" if args.check else "written"
    print(f"{len(stale)} config(s) {verb}" + (": " + ", ".join(stale) if stale and args.check else ""))
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
