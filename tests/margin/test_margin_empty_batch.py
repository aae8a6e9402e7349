"""Margin heads on an empty batch (N = 0) give what ``cross_entropy`` gives.

``F.cross_entropy`` of ``(0, C)`` logits: NaN for 'mean' (0/0), 0 for 'sum', an empty
tensor for 'none'; crossent's ``all_ignored='zero'`` gives 0 for 'mean'. The gradients
have the inputs' shapes: an empty one for the embeddings, zeros for the class weight.
The same holds for a non-empty batch whose rows are all ignored.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import crossent as ce

D, C = 8, 5

FUNCTIONS = [
    (ce.arcface_loss, {}, 1),
    (ce.cosface_loss, {}, 1),
    (ce.sphereface_loss, {}, 1),
    (ce.large_margin_softmax_loss, {"annealing": 1.0}, 1),
    (ce.combined_margin_loss, {"m1": 1.2}, 1),
    (ce.subcenter_arcface_loss, {"centers": 3}, 3),
]
MODULES = [ce.ArcFace, ce.CosFace, ce.SphereFace, ce.LargeMarginSoftmax, ce.CombinedMargin,
           ce.SubCenterArcFace]


def _expected(reduction, all_ignored, dtype=torch.float32):
    """What ``cross_entropy`` (and for the default, ``F.cross_entropy``) returns for N = 0."""
    x, y = torch.zeros(0, C, dtype=dtype), torch.zeros(0, dtype=torch.long)
    out = ce.cross_entropy(x, y, reduction=reduction, all_ignored=all_ignored)
    if all_ignored == "nan":
        torch.testing.assert_close(out, F.cross_entropy(x, y, reduction=reduction), equal_nan=True)
    return out


def _check(loss, reduction, all_ignored, embeddings, weight):
    want = _expected(reduction, all_ignored, loss.dtype)
    assert loss.shape == want.shape and loss.dtype == want.dtype
    torch.testing.assert_close(loss, want, equal_nan=True)
    if reduction == "mean" and all_ignored == "nan":
        assert math.isnan(loss.item())
    loss.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.shape == embeddings.shape
    assert weight.grad is not None and weight.grad.shape == weight.shape
    assert torch.equal(weight.grad, torch.zeros_like(weight))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("all_ignored", ["nan", "zero"])
@pytest.mark.parametrize("fn, params, centers", FUNCTIONS, ids=[f[0].__name__ for f in FUNCTIONS])
def test_functions_on_an_empty_batch(fn, params, centers, reduction, all_ignored):
    x = torch.randn(0, D, requires_grad=True)
    w = torch.randn(C * centers, D, requires_grad=True)
    y = torch.zeros(0, dtype=torch.long)
    loss = fn(x, w, y, reduction=reduction, all_ignored=all_ignored, **params)
    _check(loss, reduction, all_ignored, x, w)


@pytest.mark.parametrize("cls", MODULES, ids=[m.__name__ for m in MODULES])
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_modules_on_an_empty_batch(cls, sample_rate):
    head = cls(C, D, sample_rate=sample_rate)
    x = torch.randn(0, D, requires_grad=True)
    loss = head(x, torch.zeros(0, dtype=torch.long))
    _check(loss, "mean", "nan", x, head.weight)
    head.weight.grad = None
    head_zero = cls(C, D, sample_rate=sample_rate, all_ignored="zero", reduction="mean")
    x = torch.randn(0, D, requires_grad=True)
    _check(head_zero(x, torch.zeros(0, dtype=torch.long)), "mean", "zero", x, head_zero.weight)


def test_empty_batch_half_precision_returns_float32():
    x = torch.randn(0, D, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(C, D, dtype=torch.bfloat16, requires_grad=True)
    loss = ce.arcface_loss(x, w, torch.zeros(0, dtype=torch.long), reduction="sum")
    assert loss.dtype == torch.float32 and loss.item() == 0.0


@pytest.mark.parametrize("fn, params, centers", FUNCTIONS, ids=[f[0].__name__ for f in FUNCTIONS])
def test_all_ignored_rows_match_cross_entropy_of_margin_logits(fn, params, centers):
    """A batch whose rows are all ignored: as ``cross_entropy`` of the head's logits, with
    the new ``all_ignored`` option (default NaN, as PyTorch)."""
    x = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C * centers, D, dtype=torch.float64, requires_grad=True)
    y = torch.full((3,), -100)
    head = fn.__name__.replace("_loss", "").replace("large_margin_softmax", "lsoftmax") \
        .replace("combined_margin", "combined")
    for all_ignored in ("nan", "zero"):
        got = fn(x, w, y, all_ignored=all_ignored, **params)
        want = ce.cross_entropy(ce.margin_logits(x, w, y, head=head, **params), y,
                                all_ignored=all_ignored)
        torch.testing.assert_close(got, want, equal_nan=True)
    got = fn(x, w, y, all_ignored="zero", **params)
    got.backward()
    assert torch.equal(x.grad, torch.zeros_like(x)) and torch.equal(w.grad, torch.zeros_like(w))


def test_all_ignored_is_validated():
    x, w = torch.randn(2, D), torch.randn(C, D)
    with pytest.raises(ce.ArgumentError, match="all_ignored must be one of"):
        ce.arcface_loss(x, w, torch.tensor([0, 1]), all_ignored="skip")
