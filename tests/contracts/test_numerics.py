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


# ------------------------- the loss relative to the row max: exact at any magnitude


def _max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _ce_options():
    g = torch.Generator().manual_seed(11)
    weight = torch.rand(50, generator=g) + 0.5
    return [{}, {"label_smoothing": 0.1}, {"weight": weight},
            {"weight": weight, "label_smoothing": 0.2}, {"probs": True},
            {"probs": True, "weight": weight, "label_smoothing": 0.1}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("opts", _ce_options(),
                         ids=["index", "smoothing", "weight", "weight-smoothing", "probs",
                              "probs-weight-smoothing"])
@pytest.mark.parametrize("offset", [1e4, -1e4])
def test_cross_entropy_at_a_large_offset_is_exact(dtype, opts, offset):
    # PyTorch sums t (z - lse): 3e-7 off at offset 1e4 in float32; mass * lse - dot lost
    # ulp(lse) = 5e-4. Relative to the row max the loss keeps every digit, in float32 and
    # for half inputs (accumulated in float32) alike.
    opts = dict(opts)
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(64, 50, generator=g) * 3 + offset).to(dtype)
    if opts.pop("probs", False):
        y = torch.softmax(torch.randn(64, 50, generator=g, dtype=D), 1)
    else:
        y = torch.randint(0, 50, (64,), generator=g)
    w = opts.get("weight")
    if w is not None:
        opts["weight"] = w = w.to(dtype)
    ref_opts = dict(opts, weight=None if w is None else w.to(D))
    want = F.cross_entropy(x.to(D), y, reduction="none", **ref_opts)
    got = ce.cross_entropy(x, y.float() if y.is_floating_point() else y, reduction="none", **opts)
    assert got.dtype == torch.float32
    # float32 rounding of the result and of its few terms: some ulps of the loss (~10)
    tol = 6e-7 * want.abs().max().item() + 1e-6  # (mass * lse - dot: 5e-4)
    assert _max_err(got, want) <= tol
    if dtype == torch.float32:  # as PyTorch's own float32 path, to a few ulps
        yy = y.float() if y.is_floating_point() else y
        torch_err = _max_err(F.cross_entropy(x, yy, reduction="none", **opts), want)
        assert _max_err(got, want) <= 3 * torch_err + 2e-6
    # the mean reduction (class-weighted denominator) and the gradient, as PyTorch's
    leaf = x.clone().requires_grad_()
    loss = ce.cross_entropy(leaf, y.float() if y.is_floating_point() else y, **opts)
    (g_got,) = torch.autograd.grad(loss, leaf)
    leaf64 = x.to(D).requires_grad_()
    want_mean = F.cross_entropy(leaf64, y, **ref_opts)
    (g_want,) = torch.autograd.grad(want_mean, leaf64)
    assert _max_err(loss, want_mean) <= tol
    torch.testing.assert_close(g_got.double(), g_want, atol=1e-7 if dtype == torch.float32 else 1e-3,
                               rtol=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("value", [-1e30, 1e30, -3e38, 3e38])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_rows_of_one_huge_value_give_log_c(value, label_smoothing):
    # all C scores equal: softmax is uniform, the loss is log C whatever the value
    # (mass * lse - dot gave 0 or ulp(1e30)-sized garbage)
    x = torch.full((3, 5), value)
    y = torch.tensor([0, 3, 4])
    got = ce.cross_entropy(x, y, reduction="none", label_smoothing=label_smoothing)
    torch.testing.assert_close(got, torch.full((3,), math.log(5)), atol=0, rtol=1e-7)
    q = torch.softmax(torch.randn(3, 5), 1)
    torch.testing.assert_close(ce.cross_entropy(x, q, reduction="none"),
                               torch.full((3,), math.log(5)), atol=0, rtol=1e-6)


def test_probability_target_on_1e30_rows_is_non_negative_and_pytorchs():
    g = torch.Generator().manual_seed(13)
    q = torch.softmax(torch.randn(4, 5, generator=g), 1)
    x = torch.full((4, 5), 1e30)
    x[1, 0] = 1.1e30  # one row with a real spread: its loss is ~1e29
    x[2] = torch.randn(5, generator=g) * 1e30
    x[3] = -1e30
    got = ce.cross_entropy(x, q, reduction="none")
    want = F.cross_entropy(x.to(D), q.to(D), reduction="none")
    assert (got >= 0).all()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got, F.cross_entropy(x, q, reduction="none"), rtol=1e-6, atol=1e-6)


def test_z_loss_and_statistics_at_a_large_offset():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(16, 30, generator=g) + 1e4
    y = torch.randint(0, 30, (16,), generator=g)
    got, st = ce.cross_entropy(x, y, reduction="none", z_loss=1e-4, return_stats=True)
    lse = torch.logsumexp(x.to(D), 1)
    want = F.cross_entropy(x.to(D), y, reduction="none") + 1e-4 * lse.square()
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    torch.testing.assert_close(st.lse.double(), lse, rtol=1e-7, atol=0)
    logp = torch.log_softmax(x.to(D), 1)
    torch.testing.assert_close(st.entropy.double(), -(logp.exp() * logp).sum(1), atol=2e-6, rtol=1e-6)


def test_focal_and_poly1_at_a_large_offset():
    g = torch.Generator().manual_seed(15)
    x = torch.randn(32, 20, generator=g) * 2 + 1e4
    y = torch.randint(0, 20, (32,), generator=g)
    logp = torch.log_softmax(x.to(D), 1).gather(1, y[:, None]).squeeze(1)
    focal = -((1 - logp.exp()) ** 2) * logp
    torch.testing.assert_close(ce.focal_loss(x, y, reduction="none").double(), focal,
                               atol=1e-6, rtol=1e-6)
    poly = -logp + (1 - logp.exp())
    torch.testing.assert_close(ce.poly1_cross_entropy(x, y, reduction="none").double(), poly,
                               atol=1e-6, rtol=1e-6)


def _dyadic(g, *shape, scale=8):
    """Small multiples of 1/scale: products and sums of a few stay exact in float32."""
    return torch.randint(-2 * scale, 2 * scale + 1, shape, generator=g).float() / scale


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "use_weight": True},
                                  {"vocab_chunk_size": 16, "label_smoothing": 0.1},
                                  {"vocab_chunk_size": 16, "use_weight": True, "reduction": "none"},
                                  {"probs": True}, {"probs": True, "vocab_chunk_size": 16}],
                         ids=["whole", "whole-smoothing-weight", "tiled-smoothing",
                              "tiled-weight-none", "probs", "probs-tiled"])
def test_linear_cross_entropy_at_a_large_offset_is_exact(backend, opts):
    # logits 1e4 + (dyadic x W^T): exactly representable in float32, so any error is
    # the loss's own; the float64 reference sees the same logits
    if backend == "triton":
        pytest.importorskip("triton")
    opts = dict(opts)
    g = torch.Generator().manual_seed(16)
    n, h, v = 7, 6, 40
    x, w = _dyadic(g, n, h), _dyadic(g, v, h)
    bias = torch.full((v,), 1e4)
    weight = torch.rand(v, generator=g) + 0.5 if opts.pop("use_weight", False) else None
    if opts.pop("probs", False):
        y = torch.softmax(torch.randn(n, v, generator=g), 1)
    else:
        y = torch.randint(0, v, (n,), generator=g)
    reduction = opts.pop("reduction", "mean")
    leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
    loss = ce.linear_cross_entropy(*leaves, y, linear_bias=bias, weight=weight, backend=backend,
                                   reduction=reduction, **opts)
    got = torch.autograd.grad(loss.sum(), leaves)
    refs = [x.to(D).requires_grad_(), w.to(D).requires_grad_()]
    logits = F.linear(refs[0], refs[1], bias.to(D))
    assert torch.equal(logits.detach().float().double(), logits.detach())  # exact logits
    want = F.cross_entropy(logits, y.to(D) if y.is_floating_point() else y,
                           weight=None if weight is None else weight.to(D),
                           label_smoothing=opts.get("label_smoothing", 0.0), reduction=reduction)
    assert _max_err(loss, want) <= 2e-6
    for a, b in zip(got, torch.autograd.grad(want.sum(), refs)):
        # the tiled gradient is exp(z - lse), lse rounded to ulp(1e4) / 2: 5e-4 relative
        torch.testing.assert_close(a.double(), b, atol=2e-3, rtol=2e-3)


def _offset_features(g, n, d, *, scale=8):
    """``[100, dyadic]`` rows: scores 1e4 + small, exact in float32 at logit scale 1."""
    return torch.cat([torch.full((n, 1), 100.0), _dyadic(g, n, d - 1, scale=scale)], 1)


@pytest.mark.parametrize("kw", [{}, {"tile_rows": 3, "tile_cols": 4},
                                pytest.param({"backend": "triton", "tile_rows": 3, "tile_cols": 20},
                                             marks=pytest.mark.triton)],
                         ids=["whole", "tiled", "triton"])
def test_contrastive_losses_at_a_large_offset_are_exact(kw):
    if kw.get("backend") == "triton":
        pytest.importorskip("triton")
    g = torch.Generator().manual_seed(17)
    img, txt = _offset_features(g, 9, 5), _offset_features(g, 9, 5)
    z = img.to(D) @ txt.to(D).T
    assert torch.equal(z.float().double(), z) and z.min() > 9e3
    got = ce.clip_loss(img, txt, 1.0, **kw)
    want = (F.cross_entropy(z, torch.arange(9)) + F.cross_entropy(z.T, torch.arange(9))) / 2
    assert _max_err(got, want) <= 2e-6
    got = ce.info_nce(img, txt, temperature=1.0, normalize=False, **kw)
    assert _max_err(got, F.cross_entropy(z, torch.arange(9))) <= 2e-6
    # SupCon's several positives: mass * (lse - m) - sum_p (z_p - m)
    feats = _offset_features(g, 8, 5)
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 0, 3])
    zz = feats.to(D) @ feats.to(D).T
    zz.fill_diagonal_(-math.inf)
    logp = torch.log_softmax(zz, 1)
    pos = (labels[:, None] == labels[None, :]) & ~torch.eye(8, dtype=torch.bool)
    per = -torch.where(pos, logp, 0.0).sum(1) / pos.sum(1).clamp(min=1)
    got = _supcon_unnormalised(feats, labels, **kw)
    assert _max_err(got, per.mean()) <= 2e-6


def _supcon_unnormalised(feats, labels, **kw):
    """supcon_loss normalises its features; its statistics on the raw ones (the loss's
    last step) come from the same engine: crossent.contrastive with normalisation off."""
    from crossent.contrastive import engine
    from crossent.contrastive import problem as C

    prob = C.Problem("softmax", feats, feats, labels=labels.long(), self_offset=0)
    count = C.positive_counts(prob.labels, prob.labels, prob.acc)
    target = prob.row_target(0, count)
    blk = prob.block(target, 0, 0, feats.shape[0])
    opts = C.Options(**{k: v for k, v in kw.items() if k in ("tile_rows", "tile_cols")})
    backend = kw.get("backend", "torch")
    st = engine.similarity_statistics(feats, feats, torch.tensor(1.0), None, blk,
                                   opts.plan(feats.shape[0], feats.shape[0]), backend)
    from crossent.core.stats import cross_entropy_rows

    return cross_entropy_rows(st.row_agg, st.row_dot, target.mass, target.count > 0).mean()


def test_clip_all_pairs_opposite_is_log_2_to_the_last_bit():
    u = _unit(1, 16, 3).float()
    loss = ce.clip_loss(torch.cat([u, u]), torch.cat([-u, -u]), 100.0)
    assert abs(loss.item() - math.log(2)) <= 1e-7


def test_merged_relative_sums_equal_whole_row_ones_at_any_offset():
    # tiles with different maxima: the target sums move to the merged max exactly
    from crossent.core.targets import ClassIndexTarget, ClassProbTarget

    g = torch.Generator().manual_seed(18)
    z = torch.randn(6, 40, generator=g, dtype=D) * 3 + 1e6
    z[1, :20] -= 500.0  # the first tiles far below the row max
    z[2, 30:] = -math.inf
    y = torch.randint(0, 40, (6,), generator=g)
    q = torch.softmax(torch.randn(6, 40, generator=g, dtype=D), 1)
    targets = [ClassIndexTarget.build(y, 40, weight=torch.rand(40, generator=g, dtype=D) + 0.5,
                                      ignore_index=-100, label_smoothing=0.2, dtype=D),
               ClassProbTarget.build(q, weight=None, label_smoothing=0.1, dtype=D)]
    for t in targets:
        tt = torch.stack([t.tile(0, 40)[i] for i in range(6)]) if isinstance(t, ClassProbTarget) \
            else None
        if tt is None:
            tt = torch.full((6, 40), 0.0, dtype=D)
            tt += 0.2 / 40 * t.weight
            tt[torch.arange(6), y] += 0.8 * t.weight[y]
        for bounds in ([0, 40], [0, 7, 20, 33, 40]):
            parts = [_stats.tile_stats_(z[:, a:b].clone(), t, a, entropy=True)
                     for a, b in zip(bounds, bounds[1:])]
            st = parts[0]
            for p in parts[1:]:
                st = _stats.merge(st, p)
            m = z.amax(1, keepdim=True)
            finite = torch.isfinite(z)
            want_dot = torch.where(finite, tt * (z - m), 0.0).sum(1)
            torch.testing.assert_close(st.dot[[0, 1, 3, 4, 5]], want_dot[[0, 1, 3, 4, 5]],
                                       rtol=1e-12, atol=1e-9)
            torch.testing.assert_close(st.mass, tt.sum(1), rtol=1e-12, atol=0)
            torch.testing.assert_close(_stats.shifted_logsumexp(st), torch.logsumexp(z - m, 1))
            logp = torch.log_softmax(z, 1)
            ent = -torch.where(finite, logp.exp() * logp, 0.0).sum(1)
            torch.testing.assert_close(_stats.entropy(st), ent, rtol=1e-9, atol=1e-9)


def _offset_ranks_job(rank, world_size, data):
    """Class-parallel cross-entropy (given logits and fused linear) and CLIP across ranks,
    at scores of 1e4; float32 inputs whose values the float64 oracle shares."""
    import torch.distributed as dist

    group = dist.group.WORLD
    out = {}
    split = data["split"]
    start = sum(split[:rank])
    sl = slice(start, start + split[rank])
    for name, kw in data["ce_cases"]:
        kw = dict(kw)
        x = data["logits"][:, sl].clone().requires_grad_()
        target = data["q"][:, sl] if kw.pop("probs", False) else data["y"]
        if "weight" in kw:
            kw["weight"] = kw["weight"][sl]
        loss = ce.cross_entropy(x, target, group=group, reduction="none", **kw)
        loss.sum().backward()
        out[name] = (loss.detach(), x.grad)
    x = data["x"].clone().requires_grad_()
    w = data["w"][sl].clone().requires_grad_()
    for tiles in ({}, {"vocab_chunk_size": 3, "token_chunk_size": 4}):
        loss = ce.linear_cross_entropy(x, w, data["y"], linear_bias=data["b"][sl], group=group,
                                       label_smoothing=0.1, reduction="none", **tiles)
        out["linear" + str(len(tiles))] = loss.detach()
    rows = data["rows"]
    r0 = sum(rows[:rank])
    rs = slice(r0, r0 + rows[rank])
    for design in ("gather", "ring"):
        out["clip_" + design] = ce.clip_loss(data["img"][rs], data["txt"][rs], 1.0, group=group,
                                             design=design, tile_rows=2, tile_cols=3).detach()
    return out


def test_across_ranks_at_a_large_offset_is_exact(rank_pool):
    g = torch.Generator().manual_seed(19)
    n, c, h = 9, 11, 5
    weight = torch.rand(c, generator=g) + 0.5
    data = {
        "split": [4, 7], "rows": [4, 5],
        "logits": torch.randn(n, c, generator=g) * 3 + 1e4,
        "y": torch.randint(0, c, (n,), generator=g),
        "q": torch.softmax(torch.randn(n, c, generator=g), 1),
        "ce_cases": [("index", {}), ("smoothing_weight", {"label_smoothing": 0.1, "weight": weight}),
                     ("probs", {"probs": True})],
        "x": _dyadic(g, n, h), "w": _dyadic(g, c, h), "b": torch.full((c,), 1e4),
        "img": _offset_features(g, 9, 5), "txt": _offset_features(g, 9, 5),
    }
    results = rank_pool(2).run(_offset_ranks_job, data, timeout=300)
    z = data["logits"].to(D)
    split = data["split"]
    for name, kw in data["ce_cases"]:
        kw = dict(kw)
        target = data["q"].to(D) if kw.pop("probs", False) else data["y"]
        if "weight" in kw:
            kw["weight"] = kw["weight"].to(D)
        leaf = z.clone().requires_grad_()
        want = F.cross_entropy(leaf, target, reduction="none", **kw)
        want.sum().backward()
        for rank, res in enumerate(results):
            loss, grad = res[name]
            assert _max_err(loss, want) <= 5e-6, name  # mass * lse - dot: 5e-4
            start = sum(split[:rank])
            torch.testing.assert_close(grad.double(), leaf.grad[:, start:start + split[rank]],
                                       atol=1e-6, rtol=1e-5)
    logits = F.linear(data["x"].to(D), data["w"].to(D), data["b"].to(D))
    want = F.cross_entropy(logits, data["y"], label_smoothing=0.1, reduction="none")
    zc = data["img"].to(D) @ data["txt"].to(D).T
    clip = (F.cross_entropy(zc, torch.arange(9)) + F.cross_entropy(zc.T, torch.arange(9))) / 2
    for res in results:
        for key in ("linear0", "linear2"):
            assert _max_err(res[key], want) <= 5e-6, key
        for key in ("clip_gather", "clip_ring"):
            assert _max_err(res[key], clip) <= 2e-6, key


def test_distillation_with_a_masked_teacher_class_is_finite():
    # the teacher's entropy sum_c q log q with q = 0 where its logit is -inf: 0 log 0 = 0
    g = torch.Generator().manual_seed(20)
    s = torch.randn(3, 5, generator=g, dtype=D, requires_grad=True)
    t = torch.randn(3, 5, generator=g, dtype=D)
    t[:, 4] = -math.inf
    loss = ce.distillation_loss(s, t, temperature=2.0)
    loss.backward()
    q = torch.softmax(t / 2.0, 1)
    log_p = torch.log_softmax(s.detach() / 2.0, 1)
    kl = torch.where(q > 0, q * (torch.log(q) - log_p), 0.0).sum(1)
    torch.testing.assert_close(loss.detach(), 4.0 * kl.mean())
    assert torch.isfinite(s.grad).all()
