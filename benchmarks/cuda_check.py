"""CUDA smoke check of the device paths (run on a GPU machine; prints one line per check).

    PYTHONPATH=. python benchmarks/cuda_check.py

Compares CUDA against CPU on the same random weights: extract_features (list inputs, tiles,
bf16 autocast), DensePredictor.predict (slide, test scale, multi-scale + flip; depth flip) and the
`features` command with --device cuda. Then the fast path on CUDA against the plain float32 path:
each attention kernel, bf16 weights, compiled blocks (default and reduce-overhead), and that new
shapes reuse the compiled graph. Not a test: CI has no GPU.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dinov2_dense.features import extract_features
from dinov2_dense.hub import load_backbone
from dinov2_dense.zoo import build_model


def report(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    err = (a.float().cpu() - b.float().cpu()).abs().max().item()
    ok = err <= tol
    print(f"{'ok ' if ok else 'BAD'} {name}: max abs diff cuda vs cpu {err:.2e} (tol {tol:g})", flush=True)
    return ok


def relative(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Largest difference relative to the reference's largest magnitude (bf16 keeps ~3 digits)."""
    err = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
    ok = err <= tol
    print(f"{'ok ' if ok else 'BAD'} {name}: max diff / max |ref| {err:.2e} (tol {tol:g})", flush=True)
    return ok


def fast_path_checks() -> bool:
    from dinov2_dense.models.speed import compile_blocks, set_attention

    torch.manual_seed(3)
    plain = load_backbone("dinov2_vitb14_reg", weights=None, device="cuda").eval()
    state = plain.state_dict()
    x = torch.randn(4, 3, 224, 308, device="cuda")
    last = [len(plain.blocks) - 1]
    fwd = lambda m, t: m.intermediate_maps(t.to(next(m.parameters()).dtype), last)[0][0].float()  # noqa: E731
    ok = True
    tf32 = torch.backends.cuda.matmul.allow_tf32
    with torch.no_grad():
        torch.backends.cuda.matmul.allow_tf32 = False
        ref = fwd(plain, x)
        set_attention(plain, "math")
        ok &= report("attention math, fp32", fwd(plain, x), ref, 1e-4)
        half = load_backbone("dinov2_vitb14_reg", weights=None, device="cuda", dtype="bf16").eval()
        half.load_state_dict(state)
        for kernel in ("auto", "flash", "efficient", "cudnn", "math"):
            set_attention(half, kernel)
            ok &= relative(f"bf16 weights, attention {kernel}", fwd(half, x), ref, 0.05)
        set_attention(half, "auto")
        for mode in ("default", "reduce-overhead"):
            fast = load_backbone("dinov2_vitb14_reg", weights=None, device="cuda", dtype="bf16").eval()
            fast.load_state_dict(state)
            t = time.time()
            compiled = compile_blocks(fast, mode)
            ok &= compiled
            if not compiled:
                print(f"BAD compile {mode}: fell back (see the warning)")
                continue
            ok &= relative(f"compiled ({mode}), bf16 weights", fwd(fast, x), ref, 0.05)
            print(f"    compiled and ran in {time.time() - t:.1f} s", flush=True)
            if mode == "default":
                import torch._dynamo.utils as dynamo_utils

                before = dynamo_utils.counters["stats"]["unique_graphs"]
                for shape in ((2, 3, 280, 280), (3, 3, 154, 406), (5, 3, 518, 518)):
                    fwd(fast, torch.randn(*shape, device="cuda"))
                added = dynamo_utils.counters["stats"]["unique_graphs"] - before
                print(f"{'ok ' if added == 0 else 'BAD'} compiled, 3 new shapes: {added} new graphs", flush=True)
                ok &= added == 0
                fwd(fast, torch.randn(1, 3, 224, 224, device="cuda"))  # size 1 is specialised by dynamo: one graph
                added = dynamo_utils.counters["stats"]["unique_graphs"] - before
                print(f"    then batch 1: {added} new graph(s) (dynamo specialises sizes 0 and 1)", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    print(torch.cuda.get_device_name(0), torch.__version__, flush=True)
    fast_ok = fast_path_checks()
    torch.manual_seed(0)
    cpu = load_backbone("dinov2_vits14_reg", weights=None)
    gpu = load_backbone("dinov2_vits14_reg", weights=None).cuda()
    gpu.load_state_dict(cpu.state_dict())
    rng = np.random.default_rng(0)
    images = [rng.random((h, w, 3)).astype(np.float32) for h, w in ((224, 300), (224, 300), (98, 140))]
    ok = True
    fc = extract_features(cpu, images, layers=[-4, -1])
    fg = extract_features(gpu, images, layers=[-4, -1])
    ok &= all(report(f"features image {i}", fg[i].maps[11], fc[i].maps[11], 1e-3) for i in range(3))
    ok &= report("features tiled", extract_features(gpu, images[0], tile=112).maps[11],
                 extract_features(cpu, images[0], tile=112).maps[11], 1e-3)
    ok &= report("features bf16 autocast", extract_features(gpu, images[0], autocast=True).maps[11],
                 fc[0].maps[11], 0.25)
    x = torch.randn(1, 3, 200, 260)
    for name, kw in (("ade20k_linear", {}), ("ade20k_ms", dict(scales=(1.0, 1.32), crop_size=224, stride=150,
                                                                 scale=(400, 200)))):
        torch.manual_seed(1)
        m_cpu = build_model(f"dinov2_vits14_{name}", backbone=load_backbone("dinov2_vits14", weights=None)).eval()
        m_gpu = build_model(f"dinov2_vits14_{name}", backbone=load_backbone("dinov2_vits14", weights=None)).eval()
        m_gpu.load_state_dict(m_cpu.state_dict())
        m_gpu.cuda()
        kw = kw or dict(crop_size=224, stride=150, scale=(400, 200))
        ok &= report(f"predict {name}", m_gpu.predict(x.cuda(), **kw), m_cpu.predict(x, **kw), 1e-3)
    torch.manual_seed(2)
    d_cpu = build_model("dinov2_vits14_nyu_dpt", backbone=load_backbone("dinov2_vits14", weights=None)).eval()
    d_gpu = build_model("dinov2_vits14_nyu_dpt", backbone=load_backbone("dinov2_vits14", weights=None)).eval()
    d_gpu.load_state_dict(d_cpu.state_dict())
    d_gpu.cuda()
    ok &= report("predict nyu_dpt flip", d_gpu.predict(x.cuda()), d_cpu.predict(x), 1e-3)

    try:
        import mmengine  # noqa: F401 - the CLI builds its train/test parsers from it
    except ImportError:
        print("skip features --device cuda: mmengine is not installed here")
        ok &= fast_ok
        print("ALL OK" if ok else "SOME CHECKS FAILED")
        return 0 if ok else 1
    from dinov2_dense.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        import cv2

        cv2.imwrite(f"{tmp}/a.png", (rng.random((120, 160, 3)) * 255).astype(np.uint8))
        t = time.time()
        rc = cli(["features", f"{tmp}/a.png", "--weights", "random", "--device", "cuda", "--bf16",
                  "--out", f"{tmp}/f.npy"])
        shape = np.load(f"{tmp}/f.npy").shape if Path(f"{tmp}/f.npy").is_file() else None
        print(f"{'ok ' if rc == 0 else 'BAD'} features --device cuda --bf16: rc {rc}, {shape}, {time.time() - t:.1f} s")
        ok &= rc == 0 and fast_ok
    print("ALL OK" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
