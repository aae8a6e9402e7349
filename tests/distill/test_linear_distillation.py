"""crossent.linear_distillation_loss: the fused student (and dense teacher) heads.

Oracles: the float64 formulas of ``distill_reference`` on materialised logits (values,
and gradients to input, weight and bias by autograd through them), and
crossent.distillation_loss on the materialised logits (itself checked against TRL).
Memory budgets cover whole-row tiles and a tiled vocabulary.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import crossent as ce
from crossent import ArgumentError
from crossent.core.tiles import min_memory_budget, plan_tiles
from distill_reference import IGNORE, reference

D = torch.float64
N, H, HT, V, K = 9, 8, 5, 300, 6
# the smallest budgets: one-row bands over column tiles of 256 + 44 classes
TILED = {"dense": min_memory_budget(4, accumulator_width=H),
         "topk": min_memory_budget(3, accumulator_width=H)}


def _problem(seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g, dtype=D).to(dtype)
    w = (torch.randn(V, H, generator=g, dtype=D) / 2).to(dtype)
    b = torch.randn(V, generator=g, dtype=D).to(dtype)
    xt = torch.randn(N, HT, generator=g, dtype=D)
    wt = torch.randn(V, HT, generator=g, dtype=D)
    bt = torch.randn(V, generator=g, dtype=D)
    y = torch.randint(0, V, (N,), generator=g)
    y[2] = IGNORE
    lq, idx = torch.log_softmax(xt @ wt.T + bt, 1).topk(K, 1)
    return x, w, b, xt, wt, bt, y, idx, lq


def _grads(fn, x, w, b):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    out = fn(x, w, b)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(4), dtype=out.dtype)
    return (out.detach(),) + torch.autograd.grad(out, (x, w, b), g)


# T = 1 with a target folds the hard term's log-sum-exp into the student's; T != 1 keeps
# the raw one apart: both occur
TEMPERATURE = {"batchmean": 2.0, "sum": 1.0, "none": 1.5}
CASES = list(itertools.product(
    [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)],
    ["dense", "bucket", "renormalize"],
    ["batchmean", "sum", "none"],
    [False, True],
))


@pytest.mark.parametrize("div, teacher, reduction, with_target", CASES,
                         ids=["-".join(map(str, (d[0], t, r, w))) for d, t, r, w in CASES])
def test_matches_float64_formula(div, teacher, reduction, with_target):
    temperature = TEMPERATURE[reduction]
    x, w, b, xt, wt, bt, y, idx, lq = _problem()
    y = y if with_target else None
    kw = dict(divergence=div[0], beta=div[1], temperature=temperature, alpha=0.3,
              reduction=reduction)
    if teacher == "dense":
        t = xt @ wt.T + bt
        fused = dict(teacher_input=xt, teacher_weight=wt, teacher_bias=bt)
        ref = lambda x, w, b: reference(x @ w.T + b, t, y, **kw)  # noqa: E731
    else:
        fused = dict(teacher_topk_indices=idx, teacher_topk_log_probs=lq, tail=teacher)
        ref = lambda x, w, b: reference(x @ w.T + b, None, y, idx=idx, lq=lq,  # noqa: E731
                                        tail=teacher, **kw)
    want = _grads(ref, x, w, b)
    tiled = TILED["dense" if teacher == "dense" else "topk"]
    assert plan_tiles(N, V, kind="distill", buffers=4 if teacher == "dense" else 3,
                      memory_budget=tiled, accumulator_width=H).cols < V
    for budget in (None, tiled):
        got = _grads(lambda x, w, b: ce.linear_distillation_loss(
            x, w, y, linear_bias=b, memory_budget=budget, **fused, **kw), x, w, b)
        for a, e, name in zip(got, want, ("loss", "input", "weight", "bias")):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11, msg=f"{name} at {budget}")


@pytest.mark.parametrize("teacher", ["dense", "topk"])
def test_matches_the_loss_on_given_logits_in_bfloat16(teacher):
    x, w, b, xt, wt, bt, y, idx, lq = _problem(seed=1, dtype=torch.bfloat16)
    kw = dict(divergence="jsd", temperature=1.5, alpha=0.6)
    if teacher == "dense":
        xt, wt, bt = (t.to(torch.bfloat16) for t in (xt, wt, bt))
        fused = dict(teacher_input=xt, teacher_weight=wt, teacher_bias=bt)
        given = dict(teacher_logits=(xt.double() @ wt.double().T + bt.double()))
    else:
        fused = given = dict(teacher_topk_indices=idx, teacher_topk_log_probs=lq.float())
    for budget in (None, TILED["dense" if teacher == "dense" else "topk"]):
        got = _grads(lambda x, w, b: ce.linear_distillation_loss(
            x, w, y, linear_bias=b, memory_budget=budget, **fused, **kw), x, w, b)
        # the same bfloat16 parameters, in float64 and through the loss on given logits
        want = _grads(lambda x, w, b: ce.distillation_loss(
            x.double() @ w.double().T + b.double(), target=y, **given, **kw), x, w, b)
        assert got[0].dtype == torch.float32
        assert [g.dtype for g in got[1:]] == [torch.bfloat16] * 3
        torch.testing.assert_close(got[0].double(), want[0].double(), rtol=1e-5, atol=1e-5)
        for a, e in zip(got[1:], want[1:]):
            torch.testing.assert_close(a.double(), e.double(), rtol=2e-2, atol=2e-3)


def test_teacher_gets_no_gradient_and_inputs_are_untouched():
    x, w, b, xt, wt, bt, y, idx, lq = _problem()
    xt, wt, bt = (t.clone().requires_grad_() for t in (xt, wt, bt))
    before = [t.detach().clone() for t in (x, w, b, xt, wt, bt, y, idx, lq)]
    x, w, b = (t.clone().requires_grad_() for t in (x, w, b))
    ce.linear_distillation_loss(x, w, y, teacher_input=xt, teacher_weight=wt, teacher_bias=bt,
                                linear_bias=b, divergence="reverse_kl").backward()
    assert all(t.grad is None for t in (xt, wt, bt))
    assert all(t.grad is not None for t in (x, w, b))
    after = (x, w, b, xt, wt, bt, y, idx, lq)
    assert all(torch.equal(a.detach(), e) for a, e in zip(after, before))


def test_second_backward_of_a_scalar_loss_raises():
    x, w, b, xt, wt, bt, y, _, _ = _problem()
    x = x.requires_grad_()
    loss = ce.linear_distillation_loss(x, w, y, teacher_input=xt, teacher_weight=wt)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


@pytest.mark.parametrize("call, text", [
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(x, w), "neither"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(x, w, teacher_input=xt), "both"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_input=xt, teacher_weight=wt, teacher_topk_indices=i,
        teacher_topk_log_probs=lq), "both"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_input=xt[:3], teacher_weight=wt), "rows"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_input=xt, teacher_weight=wt[:5]), "classes"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w[:, :3], teacher_input=xt, teacher_weight=wt), "in_features"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_topk_indices=i, teacher_topk_log_probs=lq, teacher_bias=wt[:, 0]),
     "teacher_bias"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_topk_indices=i, teacher_topk_log_probs=lq, divergence="tvd"), "divergence"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_topk_indices=i, teacher_topk_log_probs=-lq), "<= 0"),
    (lambda x, w, xt, wt, i, lq: ce.linear_distillation_loss(
        x, w, teacher_input=xt, teacher_weight=wt, memory_budget=100), "memory_budget"),
])
def test_bad_arguments_raise(call, text):
    x, w, _, xt, wt, _, _, idx, lq = _problem()
    with pytest.raises(ArgumentError, match=text):
        call(x, w, xt, wt, idx, lq)
