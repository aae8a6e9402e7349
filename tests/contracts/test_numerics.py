"""Extreme values: every loss gives the exact value and a finite, exact gradient.

Expected values are independent of crossent: float64 PyTorch formulas
(``torch.logsumexp``, ``F.cross_entropy``), ``contrastive_reference`` (the papers' formulas
in float64), or hand derivations written out in the test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import contrastive_reference as ref
import crossent as ce
from crossent.core import stats as _stats

D = torch.float64


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=D), dim=1)


# ------------------------------------------- the streaming merge below exp's range


@pytest.mark.parametrize("low", [-88.8, -100.0, -1e4, -3e38])
def test_merge_into_the_empty_state_of_a_tile_below_exp_range(low):
    # The empty state (max -inf, sum 0) merged with a tile whose max is below log of the
    # smallest float32: exp(0 - max) overflows, and must not be multiplied by the 0 mask.
    z = torch.tensor([[low, low - 1.0, low - 2.0], [low, -torch.inf, -torch.inf]])
    empty = _stats.RowStats(torch.full((2,), -torch.inf), torch.zeros(2), torch.zeros(2), None, None)
    for part in (_stats.tile_stats(z, None), _stats.tile_stats_(z.clone(), None)):
        for merged in (_stats.merge(empty, part), _stats.merge(part, empty)):
            torch.testing.assert_close(_stats.logsumexp(merged).double(),
                                       torch.logsumexp(z.double(), 1))


def test_logsumexp_of_an_all_minus_inf_tile_state_is_minus_inf():
    # tile_stats gives the state (lse, 1); for an all -inf tile lse = -inf, so is the value
    z = torch.full((2, 3), -torch.inf)
    assert _stats.logsumexp(_stats.tile_stats(z, None)).tolist() == [-math.inf, -math.inf]


def _clip_check(img, txt, scale, *, bias=None, atol=1e-6, rtol=1e-6, grad_atol=None, **kw):
    a = img.clone().requires_grad_()
    b = txt.clone().requires_grad_()
    loss = ce.clip_loss(a, b, scale, logit_bias=bias, **kw)
    ga, gb = torch.autograd.grad(loss, (a, b))
    a64, b64 = img.to(D).requires_grad_(), txt.to(D).requires_grad_()
    want = ref.clip(a64, b64, scale, bias)
    wa, wb = torch.autograd.grad(want, (a64, b64))
    torch.testing.assert_close(loss.double(), want, atol=atol, rtol=rtol)
    grad_atol = atol * 10 if grad_atol is None else grad_atol
    torch.testing.assert_close(ga.double(), wa, atol=grad_atol, rtol=rtol * 10)
    torch.testing.assert_close(gb.double(), wb, atol=grad_atol, rtol=rtol * 10)
    return loss


@pytest.mark.parametrize("kw", [
    {}, {"tile_rows": 3, "tile_cols": 5},
    pytest.param({"backend": "triton", "tile_rows": 3, "tile_cols": 5}, marks=pytest.mark.triton),
])
def test_clip_with_a_large_negative_bias_equals_no_bias(kw):
    if kw.get("backend") == "triton":
        pytest.importorskip("triton")
    img, txt = _unit(8, 16, 1).float(), _unit(8, 16, 2).float()
    with_bias = _clip_check(img, txt, 10.0, bias=-100.0, **kw)
    torch.testing.assert_close(with_bias, ce.clip_loss(img, txt, 10.0, **kw), atol=2e-6, rtol=0)


def test_clip_all_pairs_opposite_at_scale_100_is_log_2():
    # every score is -100: both directions are a uniform softmax over 2 columns
    u = _unit(1, 16, 3).float()
    # (the gradient, exactly 0, is formed as exp(z - lse) with lse = -100 + log 2 rounded
    # to float32: scale * ulp(100) / 2 ~ 4e-4 off)
    loss = _clip_check(torch.cat([u, u]), torch.cat([-u, -u]), 100.0, grad_atol=5e-4)
    assert math.isfinite(loss.item())


def test_clip_unnormalised_features_at_scale_100():
    g = torch.Generator().manual_seed(4)
    img = torch.randn(8, 16, generator=g) * 3
    txt = -img + 0.1 * torch.randn(8, 16, generator=g)  # every score far below -88
    _clip_check(img, txt, 100.0, atol=1e-2, rtol=1e-5, tile_rows=3, tile_cols=5)


def test_clip_fp16_at_scale_1e4():
    u = _unit(1, 16, 5)
    img, txt = torch.cat([u, u, -u]).half(), torch.cat([-u, -u, -u]).half()
    loss = ce.clip_loss(img, txt, 1e4)
    want = ref.clip(img, txt, 1e4)
    torch.testing.assert_close(loss.double(), want, atol=1e-2, rtol=1e-5)


def test_supcon_at_a_tiny_temperature():
    # two anchors of one label, pointing apart: the only other column is the positive,
    # so each anchor's log-probability is log 1 = 0 whatever the temperature
    u = _unit(1, 16, 6).float()
    feats = torch.cat([u, -u]).requires_grad_()
    loss = ce.supcon_loss(feats, torch.tensor([0, 0]), temperature=1 / 3000)
    (g,) = torch.autograd.grad(loss, feats)
    assert loss.item() == 0.0
    assert torch.isfinite(g).all()
    feats = _unit(6, 8, 7).float()
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    torch.testing.assert_close(ce.supcon_loss(feats, labels, temperature=1 / 3000).double(),
                               ref.supcon(feats, labels, 1 / 3000), atol=2e-2, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_linear_cross_entropy_after_a_tile_of_minus_inf(backend):
    # the first vocabulary tile is padding (bias -inf), the real logits are below -88
    if backend == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 16, generator=g)
    w = torch.randn(80, 16, generator=g) * 0.3
    bias = torch.randn(80, generator=g) - 150.0
    bias[:32] = -torch.inf
    y = torch.tensor([40, 41, 50, 63, 79])
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    loss, st = ce.linear_cross_entropy(*leaves, y, linear_bias=bias, backend=backend,
                                       vocab_chunk_size=32, return_stats=True)
    got = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.to(D).requires_grad_() for t in (x, w)]
    logits = F.linear(ref_leaves[0], ref_leaves[1], bias.to(D))
    want = F.cross_entropy(logits, y)
    torch.testing.assert_close(loss.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(st.lse.double(), torch.logsumexp(logits, 1), atol=1e-4, rtol=1e-6)
    p = torch.softmax(logits, 1)[:, 32:]
    ent = -(p * torch.log(p)).sum(1)
    torch.testing.assert_close(st.entropy.double(), ent, atol=1e-4, rtol=1e-4)
    for a, b in zip(got, torch.autograd.grad(want, ref_leaves)):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-4)


# ------------------------------------------ focal losses with 0 < gamma < 1


def _focal64(x, y, gamma):
    """Lin et al.'s softmax focal loss per row, float64: -(1 - p_t)^gamma log p_t."""
    log_pt = torch.log_softmax(x, 1).gather(1, y[:, None]).squeeze(1)
    return -((1 - log_pt.exp()) ** gamma) * log_pt


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9, 1.0, 2.0])
@pytest.mark.parametrize("margin", [17.0, 20.0, 30.0])
def test_focal_gradient_of_a_confidently_right_row_is_finite_and_exact(gamma, margin):
    # float32 rounds p_t to 1 at these margins; float64 does not, and is the reference
    x = torch.tensor([[margin, 0.0, 0.0], [0.3, 0.1, -0.2], [1.0, -2.0, 0.5]])
    y = torch.tensor([0, 1, 2])
    leaf = x.clone().requires_grad_()
    loss = ce.focal_loss(leaf, y, gamma=gamma, reduction="sum")
    (g,) = torch.autograd.grad(loss, leaf)
    x64 = x.to(D).requires_grad_()
    want = _focal64(x64, y, gamma).sum()
    (w,) = torch.autograd.grad(want, x64)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(loss.double(), want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g.double(), w, atol=1e-7, rtol=1e-5)


def test_focal_issue_repro_and_a_huge_margin():
    x = torch.tensor([[20.0, 0, 0], [0.3, 0.1, -0.2]], requires_grad=True)
    ce.focal_loss(x, torch.tensor([0, 1]), gamma=0.5).backward()
    assert torch.isfinite(x.grad).all()
    # margin 1e4: p_t = 1 even in float64; by hand, the row's loss and gradient are
    # O(e^-1e4 * gamma) = 0, and the other row's are those of its own focal term
    x = torch.tensor([[1e4, 0, 0], [0.3, 0.1, -0.2]], requires_grad=True)
    loss = ce.focal_loss(x, torch.tensor([0, 1]), gamma=0.5, reduction="none")
    loss.sum().backward()
    assert loss[0].item() == 0.0 and x.grad[0].tolist() == [0.0, 0.0, 0.0]
    x64 = x[1:].detach().to(D).requires_grad_()
    want = _focal64(x64, torch.tensor([1]), 0.5).sum()
    want.backward()
    torch.testing.assert_close(x.grad[1:].double(), x64.grad, atol=1e-7, rtol=1e-5)


def _sigmoid_focal64(x, y, gamma, alpha=0.25):
    """torchvision's formula in float64, each factor written so that float64 keeps it
    to full relative precision at |x| <= 30 (PyTorch's float64 BCE-with-logits rounds
    log(1 + e^-30) to 1%, and 1 - sigmoid(30) loses 3 digits)."""
    ce_ = (1 - y) * x + torch.clamp_min(-x, 0) + torch.log1p(torch.exp(-x.abs()))
    q = y * torch.sigmoid(-x) + (1 - y) * torch.sigmoid(x)  # 1 - p_t
    return (alpha * y + (1 - alpha) * (1 - y)) * ce_ * q ** gamma


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9, 2.0])
def test_sigmoid_focal_gradient_of_confident_elements_is_finite_and_exact(gamma):
    x = torch.tensor([[20.0, -20.0, 17.0, -30.0], [0.3, -0.1, 25.0, 2.0]])
    y = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.7, 1.0]])
    leaves = [x.clone().requires_grad_(), y.clone().requires_grad_()]
    loss = ce.sigmoid_focal_loss(*leaves, gamma=gamma, reduction="sum")
    got = torch.autograd.grad(loss, leaves)
    ref_leaves = [x.to(D).requires_grad_(), y.to(D).requires_grad_()]
    want = _sigmoid_focal64(*ref_leaves, gamma).sum()
    for a, b in zip(got, torch.autograd.grad(want, ref_leaves)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(loss.double(), want, atol=1e-7, rtol=1e-6)


def test_sigmoid_focal_far_beyond_float_range_has_zero_gradient():
    # sigmoid(-200) is 0 in float32 (and ~1e-87 exactly): by hand the elements' loss and
    # gradients are O(e^-200) = 0
    x = torch.tensor([200.0, -200.0], requires_grad=True)
    y = torch.tensor([1.0, 0.0], requires_grad=True)
    loss = ce.sigmoid_focal_loss(x, y, gamma=0.5, reduction="sum")
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad.tolist() == [0.0, 0.0]
    assert torch.isfinite(y.grad).all()


# ---------------------------------------------------- js_div with disjoint supports


def _js_grads_by_hand(p, q):
    """Per-element dJS/dlog p, dJS/dq and dJS/dlog q of JS = sum_c [p log(p/m) + q log(q/m)] / 2,
    m = (p + q) / 2 (float64): d/dp = log(p / m) / 2 (the m terms cancel), so
    d/dlog p = p log(p / m) / 2 (0 at p = 0); d/dq = log(q / m) / 2 is -inf at q = 0 < p
    and log(2) / 2 at p = q = 0 (where JS = q log 2 / 2 along q)."""
    m = (p + q) / 2
    d_log_p = torch.where(p > 0, p * torch.log(p / m), 0.0) / 2
    d_q = torch.where(p > 0, torch.log(q / m), math.log(2.0)) / 2
    d_log_q = torch.where(q > 0, q * torch.log(q / m), 0.0) / 2
    return d_log_p, d_q, d_log_q


@pytest.mark.parametrize("dtype", [torch.float32, D])
@pytest.mark.parametrize("log_target", [False, True])
def test_js_div_gradient_at_disjoint_support(dtype, log_target):
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=D)
    q = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0], [0.1, 0.2, 0.3, 0.4]], dtype=D)
    log_p = p.log().to(dtype).requires_grad_()
    tgt = (q.log() if log_target else q).to(dtype).requires_grad_()
    loss = ce.js_div(log_p, tgt, reduction="sum", log_target=log_target)
    loss.backward()
    m = (p + q) / 2
    js = (torch.where(p > 0, p * torch.log(p / m), 0.0) + torch.where(q > 0, q * torch.log(q / m), 0.0)) / 2
    torch.testing.assert_close(loss.double(), js.sum())
    d_log_p, d_q, d_log_q = _js_grads_by_hand(p, q)
    torch.testing.assert_close(log_p.grad.double(), d_log_p)
    torch.testing.assert_close(tgt.grad.double(), d_log_q if log_target else d_q)
    assert torch.isfinite(log_p.grad).all()


def test_js_div_gradient_matches_float64_autograd_on_overlapping_support():
    g = torch.Generator().manual_seed(9)
    log_p = torch.log_softmax(torch.randn(4, 6, generator=g, dtype=D), 1).requires_grad_()
    q = torch.softmax(torch.randn(4, 6, generator=g, dtype=D), 1).requires_grad_()
    ce.js_div(log_p, q).backward()
    lp2, q2 = log_p.detach().clone().requires_grad_(), q.detach().clone().requires_grad_()
    p2 = lp2.exp()
    m = (p2 + q2) / 2
    ((p2 * (p2 / m).log()).sum() / 2 + (q2 * (q2 / m).log()).sum() / 2).div(4).backward()
    torch.testing.assert_close(log_p.grad, lp2.grad)
    torch.testing.assert_close(q.grad, q2.grad)
