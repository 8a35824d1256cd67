"""Position-embedding interpolation against an independent numpy computation of the official formula.

Original models: bicubic (a = -0.75, no antialias) with scale_factor ((h0 + 0.1) / M, (w0 + 0.1) / M),
so source coordinates are (dst + 0.5) * M / (h0 + 0.1) - 0.5. Register models: explicit size
(h0, w0) with antialias, i.e. the separable PIL-style bicubic filter (a = -0.5) widened by the
downscale factor.
"""

import math

import numpy as np
import pytest
import torch

from dinov2_dense.hub import build_backbone

from .conftest import randomize_


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(
        x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1, np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0)
    )


def _matrix_plain(n_in: int, n_out: int, inv_scale: float) -> np.ndarray:
    """Rows: output samples; bicubic convolution a=-0.75 with clamped borders."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * inv_scale - 0.5
        base = math.floor(src)
        t = src - base
        for k in range(-1, 3):
            m[i, min(max(base + k, 0), n_in - 1)] += _cubic(np.array(k - t), -0.75)
    return m


def _matrix_antialias(n_in: int, n_out: int) -> np.ndarray:
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        w = _cubic((np.arange(lo, hi) - center + 0.5) * inv, -0.5)
        m[i, lo:hi] = w / w.sum()
    return m


def official_pos_embed(pos: np.ndarray, h0: int, w0: int, registers: bool) -> np.ndarray:
    """(1 + M*M, D) -> (1 + h0*w0, D), computed in float64."""
    n, d = pos.shape[0] - 1, pos.shape[1]
    m = int(round(math.sqrt(n)))
    grid = pos[1:].reshape(m, m, d)
    if registers:
        rows, cols = _matrix_antialias(m, h0), _matrix_antialias(m, w0)
    else:
        rows = _matrix_plain(m, h0, m / (h0 + 0.1))
        cols = _matrix_plain(m, w0, m / (w0 + 0.1))
    out = np.einsum("ih,jw,hwd->ijd", rows, cols, grid).reshape(h0 * w0, d)
    return np.concatenate([pos[:1], out], axis=0)


@pytest.mark.parametrize("registers", [False, True])
@pytest.mark.parametrize("size", [(224, 224), (308, 434), (98, 98), (728, 560)])
def test_interpolation_matches_official_formula(registers, size):
    model = randomize_(build_backbone("dinov2_vits14_reg" if registers else "dinov2_vits14", depth=1))
    h, w = size
    x = torch.zeros(1, 1 + (h // 14) * (w // 14), 384)
    got = model.interpolate_pos_encoding(x, h, w)[0].detach().double().numpy()
    pos = model.pos_embed[0].detach().double().numpy()
    ref = official_pos_embed(pos, h // 14, w // 14, registers)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=2e-6, rtol=0)
    # the two families really differ, so each half of the test checks its own mode
    other = official_pos_embed(pos, h // 14, w // 14, not registers)
    assert np.abs(got - other).max() > 1e-3


def test_native_grid_is_not_interpolated():
    model = build_backbone("dinov2_vits14", depth=1)
    x = torch.zeros(1, 1 + 37 * 37, 384)
    assert model.interpolate_pos_encoding(x, 518, 518) is model.pos_embed


def test_tokens_use_interpolated_embedding_and_register_order():
    model = randomize_(build_backbone("dinov2_vits14_reg", depth=1)).eval()
    img = torch.randn(1, 3, 98, 126)
    with torch.no_grad():
        tokens = model.prepare_tokens_with_masks(img)
        patches = model.patch_embed(img)
    pos = official_pos_embed(model.pos_embed[0].detach().double().numpy(), 7, 9, True)
    pos = torch.from_numpy(pos).float()
    assert tokens.shape == (1, 1 + 4 + 63, 384)
    torch.testing.assert_close(tokens[0, 0], model.cls_token[0, 0] + pos[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens[0, 1:5], model.register_tokens[0].detach(), atol=0, rtol=0)
    torch.testing.assert_close(tokens[0, 5:], patches[0] + pos[1:], atol=1e-5, rtol=0)
