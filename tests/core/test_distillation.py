"""crossent.distillation_loss on given logits: forward/reverse KL and GKD's JSD, dense and
top-k teachers (tail bucket / renormalised), alpha and T^2, ignore_index.

Oracles: float64 formulas written here with explicit probabilities (values; gradients by
autograd through them), TRL 1.16's ``GKDTrainer.generalized_jsd_loss`` (dense teachers)
and its server distillation's ``_jsd_divergence`` / ``_add_tail_bucket`` (top-k teachers).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import crossent as ce
from crossent import ArgumentError, ArgumentTypeError, TargetIndexError
from distill_reference import IGNORE
from distill_reference import reference as _reference

D = torch.float64
N, C, K = 7, 11, 4


def _problem(seed=0, n=N, c=C, k=K, dtype=D):
    g = torch.Generator().manual_seed(seed)
    s = (2 * torch.randn(n, c, generator=g, dtype=D)).to(dtype)
    t = 2 * torch.randn(n, c, generator=g, dtype=D)
    y = torch.randint(0, c, (n,), generator=g)
    y[1] = IGNORE
    y[4] = IGNORE
    log_q_full = torch.log_softmax(t / 1.3, 1)  # a top-k teacher sampled at its own temperature
    lq, idx = log_q_full.topk(k, 1)
    perm = torch.randperm(k, generator=g)  # order does not matter
    return s, t, y, idx[:, perm], lq[:, perm]


def _value_and_grad(fn, s):
    s = s.detach().clone().requires_grad_()
    out = fn(s)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    (grad,) = torch.autograd.grad(out, s, g)
    return out.detach(), grad


CASES = list(itertools.product(
    [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.0), ("jsd", 1.0)],
    ["dense", "bucket", "renormalize"],
    ["batchmean", "sum", "none"],
    [False, True],
))


@pytest.mark.parametrize("div, teacher, reduction, with_target", CASES,
                         ids=["-".join(map(str, (d[0], d[1], t, r, w))) for d, t, r, w in CASES])
def test_matches_float64_formula(div, teacher, reduction, with_target):
    divergence, beta = div
    s, t, y, idx, lq = _problem()
    y = y if with_target else None
    kw = dict(divergence=divergence, beta=beta, temperature=1.7, alpha=0.3, reduction=reduction)
    if teacher == "dense":
        ours = lambda z: ce.distillation_loss(z, t, y, **kw)  # noqa: E731
        ref = lambda z: _reference(z, t, y, **kw)  # noqa: E731
    else:
        ours = lambda z: ce.distillation_loss(z, None, y, teacher_topk_indices=idx,  # noqa: E731
                                              teacher_topk_log_probs=lq, tail=teacher, **kw)
        ref = lambda z: _reference(z, None, y, idx=idx, lq=lq, tail=teacher, **kw)  # noqa: E731
    v, g = _value_and_grad(ours, s)
    rv, rg = _value_and_grad(ref, s)
    torch.testing.assert_close(v, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-12)


def test_ignored_tokens_count_in_neither_term():
    s, t, y, _, _ = _problem()
    rows = ce.distillation_loss(s, t, y, reduction="none", divergence="jsd")
    assert torch.all(rows[y == IGNORE] == 0) and torch.all(rows[y != IGNORE] > 0)
    mean = ce.distillation_loss(s, t, y, divergence="jsd")
    torch.testing.assert_close(mean, rows.sum() / (y != IGNORE).sum())
    # changing the ignored tokens' logits changes nothing, gradient included
    s2 = s.clone()
    s2[y == IGNORE] += 5.0
    torch.testing.assert_close(ce.distillation_loss(s2, t, y, divergence="jsd"), mean)
    _, g = _value_and_grad(lambda z: ce.distillation_loss(z, t, y), s)
    assert torch.all(g[y == IGNORE] == 0)


def test_half_input_gives_float32_loss():
    s, t, y, idx, lq = _problem(dtype=torch.bfloat16)
    for kw in (dict(teacher_logits=t.float()), dict(teacher_topk_indices=idx,
                                                    teacher_topk_log_probs=lq.float())):
        loss = ce.distillation_loss(s, target=y, divergence="reverse_kl", **kw)
        assert loss.dtype == torch.float32
        torch.testing.assert_close(loss.double(), _reference(
            s.double(), t, y, divergence="reverse_kl", idx=kw.get("teacher_topk_indices"),
            lq=kw.get("teacher_topk_log_probs")), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- peer: TRL 1.16

def _trl_gkd():
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    return gkd.GKDTrainer.generalized_jsd_loss


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_matches_trl_generalized_jsd_loss(beta, temperature):
    trl = _trl_gkd()
    s, t, y, _, _ = _problem(seed=5)
    s = s.float()
    t = t.float()
    # alpha = 1: the soft term alone over the counted tokens; TRL's loss has no T^2
    ours = lambda z: ce.distillation_loss(z, t, y, divergence="jsd", beta=beta,  # noqa: E731
                                          temperature=temperature, alpha=1.0) / temperature**2
    theirs = lambda z: trl(z, t, labels=y, beta=beta, temperature=temperature)  # noqa: E731
    v, g = _value_and_grad(ours, s)
    rv, rg = _value_and_grad(theirs, s)
    torch.testing.assert_close(v, rv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_matches_trl_server_distillation(beta, tail):
    server = pytest.importorskip("trl.experimental.server_distillation.server_distillation_trainer")
    s, _, _, idx, lq = _problem(seed=6)

    def theirs(z):
        log_p = torch.log_softmax(z, -1).gather(1, idx)
        mask = torch.ones_like(idx, dtype=torch.bool)
        if tail == "bucket":
            sp, support = server._add_tail_bucket(log_p, mask)
            tq, _ = server._add_tail_bucket(lq, mask)
        else:
            sp, tq, support = log_p - log_p.logsumexp(-1, True), lq - lq.logsumexp(-1, True), mask
        return server._jsd_divergence(sp, tq, beta=beta, support_mask=support).sum() / z.shape[0]

    ours = lambda z: ce.distillation_loss(z, teacher_topk_indices=idx,  # noqa: E731
                                          teacher_topk_log_probs=lq, divergence="jsd", beta=beta,
                                          tail=tail)
    v, g = _value_and_grad(ours, s)
    rv, rg = _value_and_grad(theirs, s)
    torch.testing.assert_close(v, rv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-12)


# ----------------------------------------------------------------- validation

def test_defaults_are_todays():
    s, t, y, _, _ = _problem()
    valid = y != IGNORE
    soft = 4.0 * torch.nn.functional.kl_div(torch.log_softmax(s / 2, 1), torch.softmax(t / 2, 1),
                                            reduction="none").sum(1)
    hard = torch.nn.functional.cross_entropy(s, y, reduction="none")
    want = (0.5 * soft + 0.5 * hard)[valid].sum() / valid.sum()
    torch.testing.assert_close(ce.distillation_loss(s, t, y, temperature=2.0), want)


@pytest.mark.parametrize("call, error, text", [
    (lambda s, t, i, lq: ce.distillation_loss(s, t, divergence="kl"), ArgumentError, "divergence"),
    (lambda s, t, i, lq: ce.distillation_loss(s, t, divergence="jsd", beta=1.5), ArgumentError, "beta"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i, teacher_topk_log_probs=lq,
                                             tail="drop"), ArgumentError, "tail"),
    (lambda s, t, i, lq: ce.distillation_loss(s), ArgumentError, "neither"),
    (lambda s, t, i, lq: ce.distillation_loss(s, t, teacher_topk_indices=i, teacher_topk_log_probs=lq),
     ArgumentError, "both"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i), ArgumentError, "together"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i.float(),
                                             teacher_topk_log_probs=lq), ArgumentTypeError, "integer"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i[:3],
                                             teacher_topk_log_probs=lq[:3]), ArgumentError, "shape"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i,
                                             teacher_topk_log_probs=lq[:, :2]), ArgumentError, "shape"),
    (lambda s, t, i, lq: ce.distillation_loss(s[:, :3], teacher_topk_indices=i.clamp(max=2),
                                             teacher_topk_log_probs=lq), ArgumentError, "k in"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i + C,
                                             teacher_topk_log_probs=lq), TargetIndexError, "bounds"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=torch.cat([i[:, :1], i[:, :-1]], 1),
                                             teacher_topk_log_probs=lq), ArgumentError, "repeat"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i,
                                             teacher_topk_log_probs=lq + 3.0), ArgumentError, "<= 0"),
    (lambda s, t, i, lq: ce.distillation_loss(s, teacher_topk_indices=i,
                                             teacher_topk_log_probs=lq * 0 - 0.1), ArgumentError,
     "at most 1"),
])
def test_bad_arguments_raise_naming_them(call, error, text):
    s, t, _, idx, lq = _problem()
    with pytest.raises(error, match=text):
        call(s, t, idx, lq)


def test_teacher_gets_no_gradient_and_inputs_are_not_modified():
    s, t, y, idx, lq = _problem()
    t = t.clone().requires_grad_()
    lq = lq.clone().requires_grad_()
    before = [v.detach().clone() for v in (s, t, idx, lq)]
    ce.distillation_loss(s.requires_grad_(), t, y, divergence="jsd").backward()
    ce.distillation_loss(s, None, y, teacher_topk_indices=idx, teacher_topk_log_probs=lq).backward()
    assert t.grad is None and lq.grad is None
    for a, b in zip((s, t, idx, lq), before):
        assert torch.equal(a.detach(), b)
