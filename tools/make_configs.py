"""Write the per-model configs of configs/segmentation and configs/depth from heads/settings.py.

One config per backbone size, data set and head, as mmseg keeps them: a file names its model fully,
so it reads (and can be edited) on its own. They are generated here, from the one table of official
settings, so that they cannot drift apart; tests/test_configs.py checks that the committed files
are what this script writes.

    python tools/make_configs.py            # rewrite configs/segmentation and configs/depth
    python tools/make_configs.py --check    # exit 1 if a committed config differs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heads.settings import BACKBONE_SETTINGS, MS_RATIOS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEG_DATA = {"ade20k": 150, "voc2012": 21, "cityscapes": 19, "synthetic": 5}
DEPTH_DATA = {"nyu": 10.0, "kitti": 80.0, "synthetic": 10.0}
SLIDE = {"cityscapes": 'dict(mode="slide", crop_size=(512, 1024), stride=(341, 682)'}


def _config(title: str, dataset_base: str, synthetic: bool, model: dict[str, str]) -> str:
    schedule = "schedule_synthetic" if synthetic else "schedule_40k"
    lines = [f"# {title}.",
             f'_base_ = ["../_base_/default_runtime.py", "../_base_/schedules/{schedule}.py", '
             f'"../_base_/datasets/{dataset_base}.py"]',
             "model = dict(", '    type="DenseModel",']
    lines += [f"    {k}={v}," for k, v in model.items()]
    lines.append(")")
    if synthetic:
        lines.append("default_hooks = dict(checkpoint=dict(interval=200), logger=dict(interval=20))")
    return "\n".join(lines) + "\n"


def generate() -> dict[str, str]:
    """Relative path -> file text, for every generated config."""
    files = {}
    for size, s in BACKBONE_SETTINGS.items():
        d, bb = s.embed_dim, f"dinov2_vit{size}14"
        common = {"backbone": f'"{bb}"', "backbone_weights": '"official"'}
        for ds, k in SEG_DATA.items():
            synthetic = ds == "synthetic"
            test = 'dict(mode="whole"' if synthetic else SLIDE.get(ds, 'dict(mode="slide", crop_size=512, stride=341')
            heads = {
                "linear": ("lin.: BatchNorm + 1x1 conv on the last of the four blocks",
                           f'dict(type="LinearHead", in_channels=[{d}], num_classes={k}, in_index=[3])',
                           s.seg_layers, True, test + ")"),
                "ms": ("+ms: the four blocks concatenated" + ("" if synthetic else "; multi-scale + flip test"),
                       f'dict(type="LinearHead", in_channels=[{d}] * 4, num_classes={k}, in_index=[0, 1, 2, 3])',
                       s.seg_layers, True, test + ")" if synthetic else test + f", scales={MS_RATIOS}, flip=True)"),
                "dpt": ("DPT head ending in class logits, on the depth blocks with class tokens",
                        f'dict(type="DPTHead", embed_dim={d}, post_process_channels={list(s.post_process_channels)}, '
                        f'task="segmentation", num_classes={k})', s.depth_layers, False, test + ")"),
            }
            for kind, (doc, head, layers, norm, test_cfg) in heads.items():
                model = {**common, "head": head, "task": '"segmentation"', "layers": str(list(layers)),
                         "norm": str(norm), "class_token": str(not norm), "test_cfg": test_cfg}
                files[f"segmentation/{bb}_{ds}_{kind}.py"] = _config(
                    f"{bb} {ds} {doc}", "synthetic_seg" if synthetic else ds, synthetic, model)
        for ds, hi in DEPTH_DATA.items():
            rng = f"min_depth=0.001, max_depth={hi}"
            heads = {
                "linear": ("lin.1: the last block, class token concatenated, 256 bins",
                           f'dict(type="LinearDepthHead", in_channels=[{d}], {rng})', [s.depth - 1]),
                "linear4": ("lin.4: four blocks, class tokens, 256 bins",
                            f'dict(type="LinearDepthHead", in_channels=[{d}] * 4, {rng})', s.depth_layers),
                "dpt": ("DPT head", f'dict(type="DPTHead", embed_dim={d}, '
                                    f'post_process_channels={list(s.post_process_channels)}, {rng})', s.depth_layers),
            }
            for kind, (doc, head, layers) in heads.items():
                model = {**common, "head": head, "task": '"depth"', "layers": str(list(layers)), "norm": "False",
                         "class_token": "True",
                         "losses": '[dict(type="SigLoss", loss_weight=10.0), dict(type="GradientLoss", loss_weight=0.5)]',
                         "test_cfg": 'dict(mode="whole")'}
                synthetic = ds == "synthetic"
                files[f"depth/{bb}_{ds}_{kind}.py"] = _config(
                    f"{bb} {ds} {doc}", "synthetic_depth" if synthetic else ds, synthetic, model)
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
