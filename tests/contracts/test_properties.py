"""Property tests (hypothesis): crossent in float64 against the definitions in crossent.reference.

Random shapes (N, C, and 0-2 extra K dims), logit scales from 1e-3 to 1e3, label smoothing,
class weights, ignored targets and all reductions. The expected values are written with the
reference functions (log_softmax, cross_entropy_from_logits, kl_divergence, js_divergence...)
and NumPy only, never with torch's losses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import crossent as ce
from crossent import reference as R

TOL = dict(rtol=1e-9, atol=1e-9)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # kl_div 'mean' warns in torch

REDUCTIONS = ("mean", "sum", "none")
SCALES = (1e-3, 0.3, 1.0, 10.0, 1e3)


def close(got, expected, **tol):
    expected = torch.as_tensor(np.asarray(expected, dtype=np.float64))
    got = got.detach()
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected.reshape(got.shape), equal_nan=True,
                               **(tol or TOL))


@st.composite
def problems(draw, min_c=1, kdims=True):
    """A float64 multi-class problem: logits (N, C, *d), class targets, probabilities, weights."""
    n = draw(st.integers(1, 6))
    c = draw(st.integers(min_c, 7))
    d = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if kdims else ()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from(SCALES))
    x = rng.normal(size=(n, c, *d)) * scale
    y = rng.integers(0, c, size=(n, *d))
    p = rng.dirichlet(np.full(c, 0.5), size=(n, *d))  # (..., C): classes last
    p = np.moveaxis(p, -1, 1)  # (N, C, *d)
    w = rng.uniform(0.1, 2.0, size=c)
    return x, y, p, w, rng


def _logp(x):
    return np.moveaxis(R.log_softmax(x, axis=1), 1, -1)  # classes last


def ref_ce_index(x, y, w, ignore_index, reduction, ls):
    c = x.shape[1]
    wv = np.ones(c) if w is None else w
    mask = y != ignore_index
    yc = np.where(mask, y, 0)
    nll = R.cross_entropy_from_logits(x, yc, axis=1) * wv[yc]
    smooth = -(_logp(x) * wv).sum(-1)
    per = np.where(mask, (1 - ls) * nll + ls / c * smooth, 0.0)
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return per.sum() / (wv[yc] * mask).sum()


def ref_ce_prob(x, p, w, reduction, ls):
    c = x.shape[1]
    wv = np.ones(c) if w is None else w
    t = (1 - ls) * np.moveaxis(p, 1, -1) + ls / c
    per = -(t * wv * _logp(x)).sum(-1)
    return {"none": per, "sum": per.sum(), "mean": per.mean() if per.size else math.nan}[
        reduction
    ]


# ----------------------------------------------------------------------------- cross_entropy


@given(
    prob=problems(),
    reduction=st.sampled_from(REDUCTIONS),
    ls=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    use_weight=st.booleans(),
    ignore_frac=st.sampled_from([0.0, 0.3, 1.0]),
    ignore_index=st.sampled_from([-100, -1, 2]),
)
def test_cross_entropy_class_index_matches_reference(
    prob, reduction, ls, use_weight, ignore_frac, ignore_index
):
    x, y, _, w, rng = prob
    if ignore_index < 0:  # sprinkle ignored positions
        y = np.where(rng.random(y.shape) < ignore_frac, ignore_index, y)
    w = w if use_weight else None
    got = ce.cross_entropy(
        torch.from_numpy(x), torch.from_numpy(y), weight=None if w is None else
        torch.from_numpy(w), ignore_index=ignore_index, reduction=reduction, label_smoothing=ls,
    )
    close(got, ref_ce_index(x, y, w, ignore_index, reduction, ls))


@given(
    prob=problems(),
    reduction=st.sampled_from(REDUCTIONS),
    ls=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    use_weight=st.booleans(),
)
def test_cross_entropy_probability_target_matches_reference(prob, reduction, ls, use_weight):
    x, _, p, w, _ = prob
    w = w if use_weight else None
    got = ce.cross_entropy(
        torch.from_numpy(x), torch.from_numpy(p), weight=None if w is None else
        torch.from_numpy(w), reduction=reduction, label_smoothing=ls,
    )
    close(got, ref_ce_prob(x, p, w, reduction, ls))


@given(prob=problems(min_c=2, kdims=False))
def test_cross_entropy_is_h_of_target_and_softmax(prob):
    x, _, p, _, _ = prob
    x = np.clip(x, -30, 30)  # keep softmax away from underflow so H(p, q) stays finite
    got = ce.cross_entropy(torch.from_numpy(x), torch.from_numpy(p), reduction="none")
    close(got, R.cross_entropy(p, R.softmax(x)), rtol=1e-8, atol=1e-8)


@given(prob=problems(min_c=2, kdims=False))
def test_cross_entropy_equals_entropy_plus_kl(prob):
    # H(p, q) = H(p) + KL(p || q), with q = softmax(x); KL taken from crossent's kl_div
    x, _, p, _, _ = prob
    xt, pt = torch.from_numpy(x), torch.from_numpy(p)
    h_pq = ce.cross_entropy(xt, pt, reduction="none")
    kl = ce.kl_div(ce.log_softmax(xt, dim=1), pt, reduction="none").sum(-1)
    close(h_pq, R.entropy(p) + kl.numpy())
    close(h_pq - kl, R.entropy(p))


@given(prob=problems(), shift=st.floats(-1e3, 1e3))
def test_cross_entropy_is_shift_invariant(prob, shift):
    x, y, _, _, _ = prob
    a = ce.cross_entropy(torch.from_numpy(x), torch.from_numpy(y), reduction="none")
    b = ce.cross_entropy(torch.from_numpy(x + shift), torch.from_numpy(y), reduction="none")
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * (1 + abs(shift)))


@given(prob=problems(), use_weight=st.booleans())
def test_mean_is_sum_over_total_weight(prob, use_weight):
    x, y, _, w, _ = prob
    w = torch.from_numpy(w) if use_weight else None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    s = ce.cross_entropy(xt, yt, weight=w, reduction="sum")
    m = ce.cross_entropy(xt, yt, weight=w, reduction="mean")
    total = w[yt].sum() if w is not None else yt.numel()
    torch.testing.assert_close(m, s / total, rtol=1e-12, atol=1e-12)


@given(prob=problems(kdims=False))
def test_cross_entropy_gradient_is_softmax_minus_one_hot(prob):
    x, y, _, _, _ = prob
    xt = torch.from_numpy(x).requires_grad_()
    ce.cross_entropy(xt, torch.from_numpy(y), reduction="sum").backward()
    expected = R.softmax(x, axis=1) - np.eye(x.shape[1])[y]
    close(xt.grad, expected)
    close(xt.grad.sum(1), np.zeros(x.shape[0]), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- nll, softmax


@given(
    prob=problems(),
    reduction=st.sampled_from(REDUCTIONS),
    use_weight=st.booleans(),
    ignore_index=st.sampled_from([-100, 0]),
)
def test_nll_loss_matches_reference(prob, reduction, use_weight, ignore_index):
    x, y, _, w, _ = prob
    logp = np.moveaxis(_logp(x), -1, 1)
    w = w if use_weight else None
    got = ce.nll_loss(torch.from_numpy(logp), torch.from_numpy(y), weight=None if w is None
                      else torch.from_numpy(w), ignore_index=ignore_index, reduction=reduction)
    close(got, ref_ce_index(x, y, w, ignore_index, reduction, 0.0))


@given(prob=problems(), data=st.data())
def test_softmax_and_log_softmax_match_reference(prob, data):
    x = prob[0]
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    xt = torch.from_numpy(x)
    close(ce.log_softmax(xt, dim=dim), R.log_softmax(x, axis=dim))
    close(ce.softmax(xt, dim=dim), R.softmax(x, axis=dim))
    close(ce.softmax(xt, dim=dim).sum(dim), np.ones(np.delete(x.shape, dim % x.ndim)))


# ----------------------------------------------------------------------------- binary


@st.composite
def binary_problems(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((0.1, 1.0, 5.0, 30.0)))
    x = rng.normal(size=shape) * scale
    y = rng.random(shape)
    if draw(st.booleans()):
        y = np.round(y)  # hard labels
    w = rng.uniform(0.1, 2.0, size=shape[-1:])
    return x, y, w


def _reduce(per, reduction):
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


@given(prob=binary_problems(), reduction=st.sampled_from(REDUCTIONS), use_weight=st.booleans())
def test_binary_cross_entropy_matches_reference(prob, reduction, use_weight):
    x, y, w = prob
    p = np.clip(R.sigmoid(x), 1e-6, 1 - 1e-6)  # away from torch's log clamp at -100
    per = R.binary_cross_entropy(p, y) * (w if use_weight else 1.0)
    got = ce.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(y),
                                  weight=torch.from_numpy(w) if use_weight else None,
                                  reduction=reduction)
    close(got, _reduce(per, reduction), rtol=1e-9, atol=1e-9)


@given(prob=binary_problems(), reduction=st.sampled_from(REDUCTIONS),
       use_weight=st.booleans(), use_pos_weight=st.booleans())
def test_bce_with_logits_matches_reference(prob, reduction, use_weight, use_pos_weight):
    x, y, w = prob
    pw = w[::-1].copy() if use_pos_weight else None
    per = R.binary_cross_entropy_with_logits(x, y, pos_weight=pw) * (w if use_weight else 1.0)
    got = ce.binary_cross_entropy_with_logits(
        torch.from_numpy(x), torch.from_numpy(y),
        weight=torch.from_numpy(w) if use_weight else None,
        pos_weight=torch.from_numpy(pw) if use_pos_weight else None, reduction=reduction,
    )
    close(got, _reduce(per, reduction))


# ----------------------------------------------------------------------------- divergences


@given(prob=problems(min_c=2), reduction=st.sampled_from(REDUCTIONS + ("batchmean",)),
       log_target=st.booleans())
def test_kl_div_matches_reference(prob, reduction, log_target):
    x, _, p, _, _ = prob
    p = (p + 1e-3) / (p + 1e-3).sum(1, keepdims=True)  # strictly positive: log p is finite
    logq = R.log_softmax(x, axis=1)
    # elementwise KL term p*log p - p*log q (p log p = minus the entropy of a 1-outcome axis)
    per = -R.entropy(p[..., None]) - p * logq
    expected = per.sum() / x.shape[0] if reduction == "batchmean" else _reduce(per, reduction)
    target = np.log(p) if log_target else p
    got = ce.kl_div(torch.from_numpy(logq), torch.from_numpy(target), reduction=reduction,
                    log_target=log_target)
    close(got, expected, rtol=1e-8, atol=1e-8)


@st.composite
def distribution_pairs(draw):
    n = draw(st.integers(1, 6))
    c = draw(st.integers(2, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from((0.1, 1.0, 5.0)))
    return (R.softmax(rng.normal(size=(n, c)) * scale),
            R.softmax(rng.normal(size=(n, c)) * scale))


@given(pq=distribution_pairs(), log_target=st.booleans())
def test_js_div_matches_reference(pq, log_target):
    p, q = pq
    logp = torch.from_numpy(np.log(p))
    target = torch.from_numpy(np.log(q) if log_target else q)
    js = R.js_divergence(p, q)  # per row
    close(ce.js_div(logp, target, log_target=log_target), js.mean())  # batchmean default
    close(ce.js_div(logp, target, reduction="sum", log_target=log_target), js.sum())
    close(ce.js_div(logp, target, reduction="none", log_target=log_target).sum(), js.sum())


@given(pq=distribution_pairs())
def test_js_div_symmetric_bounded_and_zero_on_itself(pq):
    p, q = pq
    lp, lq = torch.from_numpy(np.log(p)), torch.from_numpy(np.log(q))
    pt, qt = torch.from_numpy(p), torch.from_numpy(q)
    close(ce.js_div(lp, qt), ce.js_div(lq, pt).numpy())
    for i in range(p.shape[0]):
        row = float(ce.js_div(lp[i:i + 1], qt[i:i + 1], reduction="sum"))
        assert -1e-12 <= row <= math.log(2) + 1e-12
    close(ce.js_div(lp, pt), 0.0, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- extras at 0


@given(prob=problems(), use_weight=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_focal_with_gamma_zero_is_cross_entropy(prob, use_weight, reduction):
    x, y, _, w, _ = prob
    w = torch.from_numpy(w) if use_weight else None
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.testing.assert_close(
        ce.focal_loss(xt, yt, gamma=0.0, weight=w, reduction=reduction),
        ce.cross_entropy(xt, yt, weight=w, reduction=reduction), **TOL)


@given(prob=problems(), ls=st.floats(0.0, 1.0), reduction=st.sampled_from(REDUCTIONS))
def test_poly1_with_epsilon_zero_is_cross_entropy(prob, ls, reduction):
    x, y, _, _, _ = prob
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    torch.testing.assert_close(
        ce.poly1_cross_entropy(xt, yt, epsilon=0.0, label_smoothing=ls, reduction=reduction),
        ce.cross_entropy(xt, yt, label_smoothing=ls, reduction=reduction), **TOL)


@given(prob=problems())
def test_return_stats_match_reference(prob):
    x, y, _, _, _ = prob
    loss, stats = ce.cross_entropy(torch.from_numpy(x), torch.from_numpy(y), reduction="none",
                                   return_stats=True)
    close(stats.lse, R.logsumexp(x, axis=1))
    close(stats.entropy, R.entropy(R.softmax(x, axis=1), axis=1), rtol=1e-8, atol=1e-8)
    assert stats.argmax.dtype == torch.int64
    top = np.take_along_axis(x, stats.argmax.numpy()[:, None], 1)[:, 0]
    np.testing.assert_array_equal(top, x.max(1))  # an argmax (ties may pick either)
    close(loss, R.cross_entropy_from_logits(x, y, axis=1))


# ----------------------------------------------------------------------------- reference itself


@given(pq=distribution_pairs(), base=st.sampled_from([2, 10, math.e]))
def test_reference_bits_and_nats(pq, base):
    p, q = pq
    for fn in (R.cross_entropy, R.kl_divergence, R.js_divergence):
        # KL and JS of nearly equal distributions are sums with cancellation: the terms
        # agree to ~1e-16 absolute, so the relative error of a 1e-5 result can pass 1e-12.
        np.testing.assert_allclose(fn(p, q, base=base), fn(p, q) / math.log(base),
                                   rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(R.entropy(p, base=base), R.entropy(p) / math.log(base),
                               rtol=1e-12)
    assert np.all(R.js_divergence(p, q, base=2) <= 1 + 1e-12)


@given(pq=distribution_pairs())
def test_reference_numpy_and_torch_inputs_agree(pq):
    p, q = pq
    for fn in (R.cross_entropy, R.kl_divergence, R.js_divergence):
        np.testing.assert_array_equal(fn(torch.from_numpy(p), torch.from_numpy(q)).numpy(),
                                      fn(p, q))
    for fn in (R.entropy, R.softmax, R.log_softmax, R.logsumexp):
        np.testing.assert_array_equal(fn(torch.from_numpy(p).float()).numpy(),
                                      fn(p.astype(np.float32)))


@given(pq=distribution_pairs())
def test_reference_identity_h_equals_h_plus_kl(pq):
    p, q = pq
    np.testing.assert_allclose(R.cross_entropy(p, q), R.entropy(p) + R.kl_divergence(p, q),
                               rtol=1e-12, atol=1e-12)

