"""The extras against formulas written out here from their papers (float64).

* z-loss (PaLM, Chowdhery et al. 2022, sec. 5): ``c * logsumexp(z)^2`` per non-ignored row.
* logit soft-capping (Gemma 2, 2024): ``cap * tanh(z / cap)``; ``logit_scale`` applied first.
* focal loss (Lin et al. 2017): softmax form ``-alpha_t (1 - p_t)^gamma log p_t`` and the
  sigmoid form as in torchvision.ops.sigmoid_focal_loss (written out below).
* poly-1 (Leng et al. 2022): ``CE + epsilon * (1 - p_t)``, ``p_t = sum_c t_c p_c``.
* distillation (Hinton et al. 2015): ``alpha T^2 KL(q_T || p_T) + (1 - alpha) CE``.
* js_div vs crossent.reference.js_divergence; ``all_ignored``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import crossent as ce
from crossent import reference as R

D = torch.float64
N, C = 6, 5
REDUCTIONS = ("mean", "sum", "none")


@pytest.fixture
def x():
    return torch.randn(N, C, dtype=D) * 2


@pytest.fixture
def y():
    return torch.tensor([0, 4, 2, 2, 1, 3])


Y_IGN = torch.tensor([0, -100, 2, -100, 1, 3])


def reduce_rows(per_row, reduction, mask=None, denom=None):
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if denom is None:
        denom = per_row.numel() if mask is None else mask.sum()
    return per_row.sum() / denom


def close(a, b, **kw):
    torch.testing.assert_close(a, b, **kw)


def both_grads(f_ce, f_ref, *inputs):
    """Value and gradients of two scalar-or-tensor functions of ``inputs`` are equal."""
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    out_a, out_b = f_ce(*a), f_ref(*b)
    close(out_a, out_b)
    cot = torch.randn(out_b.shape, dtype=D)
    ga = torch.autograd.grad(out_a, a, cot)
    gb = torch.autograd.grad(out_b, b, cot)
    for u, v in zip(ga, gb):
        close(u, v)


# ----------------------------------------------------------------------------- z-loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_z_loss_adds_c_lse_squared(x, reduction):
    c = 1e-2
    lse = torch.logsumexp(x, 1)
    mask = Y_IGN != -100
    per = torch.where(mask, F.cross_entropy(x, Y_IGN, reduction="none") + c * lse**2, 0.0)
    both_grads(
        lambda z: ce.cross_entropy(z, Y_IGN, z_loss=c, reduction=reduction),
        lambda z: reduce_rows(torch.where(mask, F.cross_entropy(z, Y_IGN, reduction="none")
                                          + c * torch.logsumexp(z, 1) ** 2, 0.0),
                              reduction, mask),
        x,
    )
    close(ce.cross_entropy(x, Y_IGN, z_loss=c, reduction=reduction),
          reduce_rows(per, reduction, mask))


def test_z_loss_zero_is_plain_cross_entropy(x, y):
    close(ce.cross_entropy(x, y, z_loss=0.0), F.cross_entropy(x, y), rtol=0, atol=0)


def test_z_loss_with_probability_target(x):
    t = torch.softmax(torch.randn(N, C, dtype=D), 1)
    c = 0.5
    expected = F.cross_entropy(x, t) + c * (torch.logsumexp(x, 1) ** 2).mean()
    close(ce.cross_entropy(x, t, z_loss=c), expected)


def test_z_loss_is_positive_and_grows_with_lse(y):
    z = torch.zeros(N, C, dtype=D)
    base = ce.cross_entropy(z, y, z_loss=1.0) - F.cross_entropy(z, y)
    close(base, torch.tensor(math.log(C) ** 2, dtype=D))
    shifted = ce.cross_entropy(z + 5.0, y, z_loss=1.0) - F.cross_entropy(z + 5.0, y)
    close(shifted, torch.tensor((math.log(C) + 5.0) ** 2, dtype=D))


def test_z_loss_grad_pushes_lse_towards_zero(y):
    # d/dz of c*lse^2 is 2c*lse*softmax(z): with lse > 0 all logits are pushed down
    z = (torch.zeros(N, C, dtype=D) + 3.0).requires_grad_()
    (ce.cross_entropy(z, y, z_loss=1.0, reduction="sum")
     - F.cross_entropy(z, y, reduction="sum")).backward()
    expected = 2 * (math.log(C) + 3.0) * torch.full((N, C), 1.0 / C, dtype=D)
    close(z.grad, expected)


# ----------------------------------------------------------------------------- softcap / scale


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("cap", [1.0, 5.0, 30.0])
def test_softcap_is_cap_tanh(x, y, cap, reduction):
    both_grads(
        lambda z: ce.cross_entropy(z * 10, y, softcap=cap, reduction=reduction),
        lambda z: F.cross_entropy(cap * torch.tanh(z * 10 / cap), y, reduction=reduction),
        x,
    )


def test_softcap_none_is_plain(x, y):
    close(ce.cross_entropy(x, y, softcap=None), F.cross_entropy(x, y), rtol=0, atol=0)


def test_softcap_bounds_the_loss():
    # with |logits| <= cap, the loss is at most log(C) + 2*cap (no matter how extreme z is)
    z = torch.tensor([[1e6, -1e6, 0.0]], dtype=D)
    loss = ce.cross_entropy(z, torch.tensor([1]), softcap=2.0)
    assert float(loss) <= math.log(3) + 4.0
    close(loss, F.cross_entropy(2.0 * torch.tanh(z / 2.0), torch.tensor([1])))


@pytest.mark.parametrize("scale", [0.5, 2.0, 1 / 0.07])
def test_logit_scale_multiplies_logits(x, y, scale):
    both_grads(
        lambda z: ce.cross_entropy(z, y, logit_scale=scale, label_smoothing=0.1),
        lambda z: F.cross_entropy(z * scale, y, label_smoothing=0.1),
        x,
    )


def test_logit_scale_applies_before_softcap(x, y):
    s, cap = 3.0, 4.0
    both_grads(
        lambda z: ce.cross_entropy(z, y, logit_scale=s, softcap=cap),
        lambda z: F.cross_entropy(cap * torch.tanh(s * z / cap), y),
        x,
    )


def test_softcap_with_probability_target_and_weight(x):
    t = torch.softmax(torch.randn(N, C, dtype=D), 1)
    w = torch.rand(C, dtype=D) + 0.5
    both_grads(
        lambda z: ce.cross_entropy(z, t, weight=w, softcap=2.5, reduction="sum"),
        lambda z: F.cross_entropy(2.5 * torch.tanh(z / 2.5), t, weight=w, reduction="sum"),
        x,
    )


# ----------------------------------------------------------------------------- focal (softmax)


def focal_ref(x, y, gamma, alpha=None, weight=None, ignore_index=-100, reduction="mean"):
    mask = y != ignore_index
    yc = torch.where(mask, y, 0)
    logp = torch.log_softmax(x, 1)
    log_pt = logp.gather(1, yc[:, None])[:, 0]
    pt = log_pt.exp()
    per = -((1 - pt) ** gamma) * log_pt
    if alpha is not None:
        per = per * (alpha[yc] if isinstance(alpha, torch.Tensor) else alpha)
    wy = weight[yc] if weight is not None else torch.ones_like(per)
    per = torch.where(mask, per * wy, 0.0)
    return reduce_rows(per, reduction, denom=(wy * mask).sum())


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_focal_softmax_form(x, gamma, reduction):
    both_grads(
        lambda z: ce.focal_loss(z, Y_IGN, gamma=gamma, reduction=reduction),
        lambda z: focal_ref(z, Y_IGN, gamma, reduction=reduction),
        x,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_alpha_float_and_tensor(x, y, reduction):
    alpha_t = torch.tensor([0.1, 0.2, 0.3, 0.25, 0.9], dtype=D)
    close(ce.focal_loss(x, y, alpha=0.25, reduction=reduction),
          focal_ref(x, y, 2.0, alpha=0.25, reduction=reduction))
    close(ce.focal_loss(x, y, alpha=alpha_t, reduction=reduction),
          focal_ref(x, y, 2.0, alpha=alpha_t, reduction=reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_weight_mean_divides_by_weight_sum(x, reduction):
    w = torch.tensor([0.5, 1.0, 2.0, 1.5, 3.0], dtype=D)
    both_grads(
        lambda z: ce.focal_loss(z, Y_IGN, gamma=2.0, weight=w, reduction=reduction),
        lambda z: focal_ref(z, Y_IGN, 2.0, weight=w, reduction=reduction),
        x,
    )


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[8.0, 0.0, 0.0]], dtype=D)
    hard = torch.tensor([[0.0, 0.0, 0.0]], dtype=D)
    y0 = torch.tensor([0])
    ratio_easy = ce.focal_loss(easy, y0) / F.cross_entropy(easy, y0)
    ratio_hard = ce.focal_loss(hard, y0) / F.cross_entropy(hard, y0)
    close(ratio_easy, (1 - torch.softmax(easy, 1)[0, 0]) ** 2)
    assert ratio_easy < 1e-5 < ratio_hard


def test_focal_ignore_index_valid_class(x, y):
    close(ce.focal_loss(x, y, ignore_index=2), focal_ref(x, y, 2.0, ignore_index=2))


def test_focal_module(x, y):
    w = torch.rand(C, dtype=D) + 0.5
    m = ce.FocalLoss(gamma=1.5, alpha=0.5, weight=w, ignore_index=1, reduction="sum")
    close(m(x, y), focal_ref(x, y, 1.5, alpha=0.5, weight=w, ignore_index=1, reduction="sum"))


# ----------------------------------------------------------------------------- focal (sigmoid)


def torchvision_sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.0, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, written out (torchvision is not a dependency)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    return loss.sum()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 2.0), (0.9, 3.5)],
                         ids=["default", "gamma0", "no_alpha", "alpha0.9-gamma3.5"])
def test_sigmoid_focal_matches_torchvision(alpha, gamma, reduction):
    inputs = torch.randn(4, 7, dtype=D) * 3
    targets = (torch.rand(4, 7, dtype=D) > 0.6).to(D)
    both_grads(
        lambda z: ce.sigmoid_focal_loss(z, targets, alpha=alpha, gamma=gamma,
                                        reduction=reduction),
        lambda z: torchvision_sigmoid_focal_loss(z, targets, alpha, gamma, reduction),
        inputs,
    )


def test_sigmoid_focal_default_reduction_is_none():
    inputs = torch.randn(3, 2, dtype=D)
    targets = torch.rand(3, 2, dtype=D)
    out = ce.sigmoid_focal_loss(inputs, targets)
    assert out.shape == (3, 2)
    close(out, torchvision_sigmoid_focal_loss(inputs, targets))


def test_sigmoid_focal_soft_targets_and_target_gradient():
    inputs = torch.randn(5, dtype=D)
    targets = torch.rand(5, dtype=D)
    both_grads(
        lambda z, t: ce.sigmoid_focal_loss(z, t, reduction="sum"),
        lambda z, t: torchvision_sigmoid_focal_loss(z, t, reduction="sum"),
        inputs, targets,
    )


# ----------------------------------------------------------------------------- poly-1


def poly1_ref(x, y, epsilon, ignore_index=-100, reduction="mean", ls=0.0):
    mask = y != ignore_index
    yc = torch.where(mask, y, 0)
    t = F.one_hot(yc, x.shape[1]).to(x.dtype) * (1 - ls) + ls / x.shape[1]
    p_t = (t * torch.softmax(x, 1)).sum(1)
    per = F.cross_entropy(x, y, reduction="none", ignore_index=ignore_index,
                          label_smoothing=ls) + epsilon * (1 - p_t)
    per = torch.where(mask, per, 0.0)
    return reduce_rows(per, reduction, mask)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("epsilon", [1.0, 2.0, -1.0])
def test_poly1(x, y, epsilon, reduction):
    both_grads(
        lambda z: ce.poly1_cross_entropy(z, y, epsilon=epsilon, reduction=reduction),
        lambda z: poly1_ref(z, y, epsilon, reduction=reduction),
        x,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_label_smoothing_uses_smoothed_p_t(x, y, reduction):
    both_grads(
        lambda z: ce.poly1_cross_entropy(z, y, epsilon=1.0, label_smoothing=0.2,
                                         reduction=reduction),
        lambda z: poly1_ref(z, y, 1.0, reduction=reduction, ls=0.2),
        x,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_poly1_ignore_index(x, reduction):
    both_grads(
        lambda z: ce.poly1_cross_entropy(z, Y_IGN, epsilon=1.0, reduction=reduction),
        lambda z: poly1_ref(z, Y_IGN, 1.0, reduction=reduction),
        x,
    )


def test_poly1_module(x, y):
    m = ce.Poly1CrossEntropyLoss(epsilon=0.5, reduction="sum", label_smoothing=0.1)
    close(m(x, y), poly1_ref(x, y, 0.5, reduction="sum", ls=0.1))


# ----------------------------------------------------------------------------- distillation


def distill_ref(s, t, y=None, T=1.0, alpha=0.5):
    q = torch.softmax(t / T, 1)
    kl = (q * (torch.log(q) - torch.log_softmax(s / T, 1))).sum(1).mean()  # batchmean
    soft = T * T * kl
    if y is None:
        return soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(s, y)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_distillation_with_target(x, y, T, alpha):
    t = torch.randn(N, C, dtype=D) * 3
    both_grads(
        lambda s: ce.distillation_loss(s, t, y, temperature=T, alpha=alpha),
        lambda s: distill_ref(s, t, y, T, alpha),
        x,
    )


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_distillation_without_target_is_t2_kl_and_ignores_alpha(x, T):
    t = torch.randn(N, C, dtype=D)
    expected = distill_ref(x, t, None, T)
    close(ce.distillation_loss(x, t, temperature=T), expected)
    close(ce.distillation_loss(x, t, temperature=T, alpha=0.1), expected)


def test_distillation_soft_term_is_t2_kl_div(x):
    t = torch.randn(N, C, dtype=D)
    T = 2.5
    expected = T**2 * F.kl_div(F.log_softmax(x / T, 1), F.softmax(t / T, 1),
                               reduction="batchmean")
    close(ce.distillation_loss(x, t, temperature=T), expected)


def test_distillation_identical_logits_is_zero(x):
    close(ce.distillation_loss(x, x.clone(), temperature=2.0), torch.tensor(0.0, dtype=D),
          atol=1e-12, rtol=0)


def test_distillation_teacher_gets_no_gradient(x, y):
    s, t = x.clone().requires_grad_(), torch.randn(N, C, dtype=D, requires_grad=True)
    ce.distillation_loss(s, t, y, temperature=2.0).backward()
    assert s.grad is not None
    assert t.grad is None or torch.all(t.grad == 0)


def test_distillation_module(x, y):
    t = torch.randn(N, C, dtype=D)
    m = ce.DistillationLoss(temperature=2.0, alpha=0.25)
    close(m(x, t, y), distill_ref(x, t, y, 2.0, 0.25))


# ----------------------------------------------------------------------------- js_div


@pytest.mark.parametrize("log_target", [False, True])
def test_js_div_matches_reference(log_target):
    p = torch.softmax(torch.randn(N, C, dtype=D), 1)
    q = torch.softmax(torch.randn(N, C, dtype=D) * 2, 1)
    target = q.log() if log_target else q
    js = R.js_divergence(p, q)
    close(ce.js_div(p.log(), target, log_target=log_target), js.mean())
    close(ce.js_div(p.log(), target, reduction="sum", log_target=log_target), js.sum())


def test_js_div_written_out():
    p = torch.softmax(torch.randn(N, C, dtype=D), 1)
    q = torch.softmax(torch.randn(N, C, dtype=D), 1)
    m = (p + q) / 2
    expected = (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean()
    close(ce.js_div(p.log(), q), expected)


def test_js_div_disjoint_support_is_log2():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=D)
    q = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D)
    close(ce.js_div(p.log(), q), torch.tensor(math.log(2), dtype=D))


# ----------------------------------------------------------------------------- all_ignored


@pytest.mark.parametrize("fn", [ce.cross_entropy, ce.nll_loss], ids=["cross_entropy",
                                                                    "nll_loss"])
def test_all_ignored_default_is_nan_like_torch(fn, x):
    y = torch.full((N,), -100)
    assert torch.isnan(fn(x, y))
    assert torch.isnan(F.cross_entropy(x, y))


def test_all_ignored_zero(x):
    xg = x.clone().requires_grad_()
    y = torch.full((N,), -100)
    loss = ce.cross_entropy(xg, y, all_ignored="zero")
    close(loss, torch.tensor(0.0, dtype=D))
    loss.backward()
    close(xg.grad, torch.zeros_like(x))


def test_all_ignored_zero_changes_nothing_else(x, y):
    close(ce.cross_entropy(x, Y_IGN, all_ignored="zero"), F.cross_entropy(x, Y_IGN))
    close(ce.cross_entropy(x, y, all_ignored="zero", reduction="sum"),
          F.cross_entropy(x, y, reduction="sum"))
    yi = torch.full((N,), -100)
    close(ce.cross_entropy(x, yi, all_ignored="zero", reduction="none"), torch.zeros(N, dtype=D))
