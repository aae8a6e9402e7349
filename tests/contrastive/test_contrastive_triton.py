"""The Triton similarity kernels (run by Triton's interpreter on CPU) against the formulas.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` when there is no CUDA, so
``backend='triton'`` runs the same kernels on CPU tensors. Expected values: the float64
formulas of ``contrastive_reference`` on the same (float32 or bf16) inputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastive_reference as ref
import crossent as ce

triton = pytest.importorskip("triton")
pytestmark = [pytest.mark.triton, pytest.mark.slow]

D = torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _leaf(n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=D), dim=1) * 2
    return x.to(device=DEVICE, dtype=dtype).requires_grad_()


def _scalar(v):
    return torch.tensor(v, dtype=torch.float32, device=DEVICE, requires_grad=True)


def _check(loss, expected, inputs, tol):
    torch.testing.assert_close(loss.double(), expected.double(), rtol=tol, atol=tol)
    got = torch.autograd.grad(loss, inputs)
    want = torch.autograd.grad(expected, inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=tol * 10, atol=tol)


# 37 rows with 16-row kernel blocks and 5 x 24 plan tiles: partial blocks everywhere
TILES = dict(tile_rows=5, tile_cols=24)


@pytest.mark.parametrize("n", [1, 37])
def test_triton_clip_and_siglip(n):
    img, txt = _leaf(n, 20, 1), _leaf(n, 20, 2)
    s, b = _scalar(7.0), _scalar(-3.0)
    _check(ce.clip_loss(img, txt, s, logit_bias=b, backend="triton", **TILES),
           ref.clip(img, txt, s, b), (img, txt, s), 1e-5)
    _check(ce.siglip_loss(img, txt, s, b, backend="triton", **TILES),
           ref.siglip(img, txt, s, b), (img, txt, s, b), 1e-5)


def test_triton_self_similarity_losses():
    z1, z2, neg = _leaf(19, 12, 3), _leaf(19, 12, 4), _leaf(7, 12, 5)
    t = _scalar(0.2)
    _check(ce.nt_xent(z1, z2, temperature=t, backend="triton", **TILES),
           ref.nt_xent(z1, z2, t), (z1, z2, t), 1e-5)
    _check(ce.info_nce(z1, z2, neg, temperature=t, backend="triton", **TILES),
           ref.info_nce(z1, z2, neg, t), (z1, z2, neg, t), 1e-5)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2, 2, 1, 4, 0, 1, 1, 2, 5, 0, 3, 3], device=DEVICE)
    f = torch.stack([z1, z2], 1)
    _check(ce.supcon_loss(f, labels, temperature=t, backend="triton", **TILES),
           ref.supcon(f, labels, t), (z1, z2, t), 1e-5)


def test_triton_bf16_features_accumulate_in_float32():
    img, txt = _leaf(24, 16, 6, torch.bfloat16), _leaf(24, 16, 7, torch.bfloat16)
    s = _scalar(10.0)
    loss = ce.clip_loss(img, txt, s, backend="triton", **TILES)
    assert loss.dtype == torch.float32
    _check(loss, ref.clip(img, txt, s), (s,), 1e-5)
    got = torch.autograd.grad(ce.clip_loss(img, txt, s, backend="triton", **TILES), img)[0]
    want = torch.autograd.grad(ref.clip(img, txt, s), img)[0]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=2e-3)


def test_triton_equals_torch_backend_across_budgets(monkeypatch):
    from crossent.kernels import similarity, triton_similarity

    # the kernels, not the PyTorch fallback, must do the work
    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to the PyTorch tiles")

    calls = []
    kernel_tile = triton_similarity._gradient_tile
    monkeypatch.setattr(triton_similarity, "_gradient_tile",
                        lambda *a, **k: calls.append(1) or kernel_tile(*a, **k))
    img, txt = _leaf(33, 16, 8), _leaf(33, 16, 9)
    expected = [ce.clip_loss(img, txt, 5.0, backend="torch", memory_budget=4096),
                ce.clip_loss(img, txt, 5.0, backend="torch", tile_rows=64, tile_cols=64)]
    monkeypatch.setattr(similarity, "block_forward", no_fallback)
    for kw, b in zip((dict(memory_budget=4096), dict(tile_rows=64, tile_cols=64)), expected):
        a = ce.clip_loss(img, txt, 5.0, backend="triton", **kw)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        a.backward()
    assert calls
