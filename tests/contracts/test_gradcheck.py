"""``torch.autograd.gradcheck`` (float64, finite differences) on every differentiable function.

Covers the options too: class weights, ignore_index, label smoothing, K-dim inputs, z-loss,
softcap, logit_scale, probability targets (including the gradient w.r.t. the target), the
binary losses (input and target), kl_div/js_div (input and target), focal (both forms),
poly-1 and distillation. Inputs are small and kept away from non-differentiable points
(probabilities strictly inside (0, 1)).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import crossent as ce

D = torch.float64
N, C = 3, 4


def logits(*shape):
    return torch.randn(*shape, dtype=D).requires_grad_()


def probs(*shape, dim=-1, grad=True):
    p = torch.softmax(torch.randn(*shape, dtype=D), dim) * 0.9 + 0.1 / shape[dim]
    return p.detach().requires_grad_(grad)


def unit(*shape, grad=True):
    return (torch.rand(*shape, dtype=D) * 0.8 + 0.1).requires_grad_(grad)


def labels(*shape, c=C):
    return torch.randint(0, c, shape)


def weights(c=C):
    return torch.rand(c, dtype=D) + 0.2


Y_IGN = torch.tensor([1, -100, 3])


def _loss_only(fn):
    def call(*a, **k):
        out = fn(*a, **k)
        return out[0] if isinstance(out, tuple) else out

    return call


# (id, function, make-inputs) -- make returns (differentiable args tuple, kwargs)
CASES = [
    ("softmax", ce.softmax, lambda: ((logits(N, C),), dict(dim=1))),
    ("softmax-dim0", ce.softmax, lambda: ((logits(N, C, 2),), dict(dim=0))),
    ("log_softmax", ce.log_softmax, lambda: ((logits(N, C),), dict(dim=-1))),
    ("log_softmax-dtype", ce.log_softmax,
     lambda: ((logits(N, C),), dict(dim=1, dtype=torch.float64))),
    ("nll_loss", ce.nll_loss, lambda: ((logits(N, C), labels(N)), {})),
    ("nll_loss-weight-ignore-sum", ce.nll_loss,
     lambda: ((logits(N, C), Y_IGN), dict(weight=weights(), reduction="sum"))),
    ("nll_loss-kdim-none", ce.nll_loss,
     lambda: ((logits(2, C, 2, 2), labels(2, 2, 2)), dict(reduction="none"))),
]
for red in ("mean", "sum", "none"):
    CASES += [
        (f"cross_entropy-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), labels(N)), dict(reduction=red))),
        (f"cross_entropy-weight-ignore-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), Y_IGN), dict(weight=weights(), reduction=red))),
        (f"cross_entropy-label_smoothing-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), labels(N)), dict(label_smoothing=0.2, reduction=red))),
        (f"cross_entropy-ls-weight-ignore-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), Y_IGN),
                          dict(label_smoothing=0.3, weight=weights(), reduction=red))),
        (f"cross_entropy-prob_target-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), probs(N, C)), dict(reduction=red))),
        (f"cross_entropy-prob_target-ls-weight-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), probs(N, C)),
                          dict(label_smoothing=0.1, weight=weights(), reduction=red))),
        (f"cross_entropy-z_loss-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), Y_IGN), dict(z_loss=0.1, reduction=red))),
        (f"cross_entropy-softcap-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C) * 3, labels(N)), dict(softcap=2.0, reduction=red))),
        (f"cross_entropy-logit_scale-{red}", ce.cross_entropy,
         lambda red=red: ((logits(N, C), labels(N)), dict(logit_scale=0.7, reduction=red))),
    ]
CASES += [
    ("cross_entropy-kdim", ce.cross_entropy, lambda: ((logits(2, C, 3), labels(2, 3)), {})),
    ("cross_entropy-kdim-prob", ce.cross_entropy,
     lambda: ((logits(2, C, 3), probs(2, C, 3, dim=1)), dict(reduction="none"))),
    ("cross_entropy-1d-input", ce.cross_entropy, lambda: ((logits(C), torch.tensor(2)), {})),
    ("cross_entropy-everything", ce.cross_entropy,
     lambda: ((logits(N, C), Y_IGN), dict(weight=weights(), label_smoothing=0.1, z_loss=0.05,
                                          softcap=3.0, logit_scale=1.3))),
    ("cross_entropy-prob-z_loss-softcap-scale", ce.cross_entropy,
     lambda: ((logits(N, C), probs(N, C)), dict(z_loss=0.05, softcap=3.0, logit_scale=0.5))),
    ("cross_entropy-return_stats", _loss_only(ce.cross_entropy),
     lambda: ((logits(N, C), labels(N)), dict(return_stats=True, reduction="none"))),
    ("cross_entropy-all_ignored-zero", ce.cross_entropy,
     lambda: ((logits(N, C), torch.full((N,), -100)), dict(all_ignored="zero"))),
    ("binary_cross_entropy", ce.binary_cross_entropy, lambda: ((unit(N, C), unit(N, C)), {})),
    ("binary_cross_entropy-weight-sum", ce.binary_cross_entropy,
     lambda: ((unit(N, C), unit(N, C, grad=False)), dict(weight=weights(), reduction="sum"))),
    ("binary_cross_entropy-none", ce.binary_cross_entropy,
     lambda: ((unit(N, C), unit(N, C)), dict(reduction="none"))),
    ("bce_with_logits", ce.binary_cross_entropy_with_logits,
     lambda: ((logits(N, C), unit(N, C)), {})),
    ("bce_with_logits-weight-pos_weight-none", ce.binary_cross_entropy_with_logits,
     lambda: ((logits(N, C), unit(N, C)),
              dict(weight=weights(), pos_weight=weights(), reduction="none"))),
    ("bce_with_logits-pos_weight-sum", ce.binary_cross_entropy_with_logits,
     lambda: ((logits(N, C), unit(N, C)), dict(pos_weight=weights(), reduction="sum"))),
    ("kl_div-batchmean", ce.kl_div,
     lambda: ((torch.log(probs(N, C)).detach().requires_grad_(), probs(N, C)),
              dict(reduction="batchmean"))),
    ("kl_div-log_target-none", ce.kl_div,
     lambda: ((torch.log(probs(N, C)).detach().requires_grad_(),
               torch.log(probs(N, C)).detach().requires_grad_()),
              dict(reduction="none", log_target=True))),
    ("js_div-batchmean", ce.js_div,
     lambda: ((torch.log(probs(N, C)).detach().requires_grad_(), probs(N, C)), {})),
    ("js_div-log_target-sum", ce.js_div,
     lambda: ((torch.log(probs(N, C)).detach().requires_grad_(),
               torch.log(probs(N, C)).detach().requires_grad_()),
              dict(reduction="sum", log_target=True))),
    ("js_div-none", ce.js_div,
     lambda: ((torch.log(probs(N, C)).detach().requires_grad_(), probs(N, C)),
              dict(reduction="none"))),
    ("focal_loss", ce.focal_loss, lambda: ((logits(N, C), labels(N)), {})),
    ("focal_loss-gamma1.5-alpha_float-sum", ce.focal_loss,
     lambda: ((logits(N, C), labels(N)), dict(gamma=1.5, alpha=0.25, reduction="sum"))),
    ("focal_loss-alpha_tensor-weight-ignore", ce.focal_loss,
     lambda: ((logits(N, C), Y_IGN), dict(alpha=weights(), weight=weights()))),
    ("focal_loss-none", ce.focal_loss,
     lambda: ((logits(N, C), Y_IGN), dict(gamma=3.0, reduction="none"))),
    ("sigmoid_focal_loss", ce.sigmoid_focal_loss,
     lambda: ((logits(N, C), unit(N, C, grad=False)), {})),
    ("sigmoid_focal_loss-mean-gamma1", ce.sigmoid_focal_loss,
     lambda: ((logits(N, C), unit(N, C, grad=False)), dict(gamma=1.0, reduction="mean"))),
    ("sigmoid_focal_loss-target_grad", ce.sigmoid_focal_loss,
     lambda: ((logits(N, C), unit(N, C)), dict(alpha=0.3, reduction="sum"))),
    ("poly1_cross_entropy", ce.poly1_cross_entropy, lambda: ((logits(N, C), labels(N)), {})),
    ("poly1_cross_entropy-eps2-ls-weight-ignore", ce.poly1_cross_entropy,
     lambda: ((logits(N, C), Y_IGN),
              dict(epsilon=2.0, label_smoothing=0.1, weight=weights()))),
    ("poly1_cross_entropy-none", ce.poly1_cross_entropy,
     lambda: ((logits(N, C), labels(N)), dict(epsilon=-0.5, reduction="none"))),
    ("distillation_loss-soft", ce.distillation_loss,
     lambda: ((logits(N, C), logits(N, C).detach()), dict(temperature=2.0))),
    ("distillation_loss-with_target", ce.distillation_loss,
     lambda: ((logits(N, C), logits(N, C).detach(), labels(N)),
              dict(temperature=3.0, alpha=0.7))),
]


@pytest.mark.parametrize("fn, make", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gradcheck(fn, make):
    args, kwargs = make()
    assert any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    assert gradcheck(lambda *a: fn(*a, **kwargs), args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_case_ids_are_unique():
    assert len({c[0] for c in CASES}) == len(CASES)


def test_distillation_teacher_gets_no_gradient():
    s, t = logits(N, C), logits(N, C)
    ce.distillation_loss(s, t, labels(N), temperature=2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None or torch.all(t.grad == 0)


@pytest.mark.parametrize(
    "cls, ctor, make",
    [
        ("CrossEntropyLoss", dict(label_smoothing=0.1, weight=weights()),
         lambda: (logits(N, C), labels(N))),
        ("FocalLoss", dict(gamma=2.0), lambda: (logits(N, C), labels(N))),
        ("Poly1CrossEntropyLoss", dict(epsilon=1.0), lambda: (logits(N, C), labels(N))),
        ("BCEWithLogitsLoss", dict(pos_weight=weights()), lambda: (logits(N, C), unit(N, C))),
    ],
    ids=["CrossEntropyLoss", "FocalLoss", "Poly1CrossEntropyLoss", "BCEWithLogitsLoss"],
)
def test_gradcheck_modules(cls, ctor, make):
    module = getattr(ce, cls)(**ctor)
    assert gradcheck(lambda *a: module(*a), make(), eps=1e-6, atol=1e-5, rtol=1e-4)
