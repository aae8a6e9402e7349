"""Mixed dtypes as strict as PyTorch, and the loss dtype PyTorch returns.

PyTorch 2.13 (checked by each test on the spot): ``F.linear`` refuses a bias of another
dtype, ``F.binary_cross_entropy`` refuses a target of another dtype, and a wider
probability (or binary) target promotes the loss: ``F.cross_entropy(float32, float64
probabilities)`` is float64, as are ``F.linear_cross_entropy`` and
``F.binary_cross_entropy_with_logits`` with a float64 target.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent as ce

f32, f64 = torch.float32, torch.float64


def test_linear_bias_of_another_dtype_is_a_type_error_as_in_pytorch():
    x, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 4])
    b = torch.randn(5, dtype=f64)
    with pytest.raises(RuntimeError):  # PyTorch's own rule
        F.linear_cross_entropy(x, w, y, linear_bias=b)
    with pytest.raises(ce.ArgumentTypeError, match=r"linear_bias .*float32.*float64") as info:
        ce.linear_cross_entropy(x, w, y, linear_bias=b)
    assert isinstance(info.value, TypeError)
    # the same dtype works
    ce.linear_cross_entropy(x, w, y, linear_bias=b.float())


@pytest.mark.parametrize("input_dtype, target_dtype", [(f32, f64), (f64, f32)])
def test_binary_cross_entropy_target_of_another_dtype_is_a_type_error(input_dtype, target_dtype):
    p, t = torch.rand(6, dtype=input_dtype), torch.rand(6, dtype=target_dtype)
    with pytest.raises(RuntimeError):  # PyTorch's own rule
        F.binary_cross_entropy(p, t)
    with pytest.raises(ce.ArgumentTypeError, match=r"target .*dtype") as info:
        ce.binary_cross_entropy(p, t)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ce.ArgumentTypeError, match="target"):
        ce.BCELoss()(p, t)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("extras", [{}, {"label_smoothing": 0.2}, {"weight": "ones"}])
def test_cross_entropy_wider_probability_target_promotes_like_pytorch(reduction, extras):
    x = torch.randn(5, 7, requires_grad=True)
    q = torch.softmax(torch.randn(5, 7, dtype=f64), 1).requires_grad_()
    kw = dict(extras)
    if kw.get("weight") == "ones":
        kw["weight"] = torch.rand(7) + 0.5  # the input's dtype (crossent requires it)
    want = F.cross_entropy(x, q, reduction=reduction, **kw)
    got = ce.cross_entropy(x, q, reduction=reduction, **kw)
    assert want.dtype == f64 and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
    gx_want, gq_want = torch.autograd.grad(want.sum(), (x, q))
    gx_got, gq_got = torch.autograd.grad(got.sum(), (x, q))
    assert gx_got.dtype == f32 and gq_got.dtype == f64
    torch.testing.assert_close(gx_got, gx_want, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gq_got, gq_want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("input_dtype, target_dtype", [
    (f32, f32), (f64, f32), (torch.float16, f32), (torch.bfloat16, f64), (f32, torch.float16),
])
def test_cross_entropy_loss_dtype_matches_pytorch_promotion(input_dtype, target_dtype):
    x = torch.randn(4, 6).to(input_dtype)
    q = torch.softmax(torch.randn(4, 6), 1).to(target_dtype)
    want = F.cross_entropy(x, q)
    got = ce.cross_entropy(x, q)
    # crossent returns float32 for half inputs (its rule); otherwise PyTorch's promotion
    expected = torch.promote_types(f32 if input_dtype in (torch.float16, torch.bfloat16)
                                   else input_dtype, target_dtype)
    assert got.dtype == expected
    assert got.dtype == torch.promote_types(want.dtype, f32)
    torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=2e-2)


def test_linear_cross_entropy_wider_probability_target_promotes_like_pytorch():
    x = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(6, 4, requires_grad=True)
    q = torch.softmax(torch.randn(5, 6, dtype=f64), 1)
    for reduction in ("mean", "sum", "none"):
        want = F.linear_cross_entropy(x, w, q, reduction=reduction)
        got = ce.linear_cross_entropy(x, w, q, reduction=reduction)
        assert want.dtype == f64 and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=2e-6, atol=2e-6)
        g_want = torch.autograd.grad(want.sum(), (x, w))
        g_got = torch.autograd.grad(got.sum(), (x, w))
        for a, b in zip(g_got, g_want):
            assert a.dtype == f32
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_bce_with_logits_wider_target_promotes_like_pytorch():
    x = torch.randn(8, requires_grad=True)
    t = torch.rand(8, dtype=f64)
    for reduction in ("mean", "sum", "none"):
        want = F.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        got = ce.binary_cross_entropy_with_logits(x, t, reduction=reduction)
        assert want.dtype == f64 and got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        g_want, = torch.autograd.grad(want.sum(), x)
        g_got, = torch.autograd.grad(got.sum(), x)
        assert g_got.dtype == f32
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-6)


def test_same_dtype_results_are_unchanged():
    """Equal dtypes keep their loss dtype (no promotion, no copies)."""
    x, q = torch.randn(3, 4), torch.softmax(torch.randn(3, 4), 1)
    assert ce.cross_entropy(x, q).dtype == f32
    assert ce.cross_entropy(x.half(), q.half()).dtype == f32
    assert ce.binary_cross_entropy_with_logits(x, q).dtype == f32
    assert ce.linear_cross_entropy(x, torch.randn(4, 4), q).dtype == f32
