"""crossent's backward keeps no N x C buffer beyond the caller's own tensors.

Two independent probes run around the forward call (the loss and its graph stay alive, as
in training between forward and backward):

1. ``torch.autograd.graph.saved_tensors_hooks`` records every tensor saved for backward
   (``save_for_backward`` and autograd's own saved variables). Every saved tensor with at
   least N*C elements must share storage with a caller's tensor (logits, probability
   target, weight).
2. A ``TorchDispatchMode`` records every tensor with at least N*C elements *produced* by an
   ATen op during the forward; after the forward returns (and ``gc.collect()``), none of
   them may still be alive unless it aliases a caller's tensor. This also catches buffers
   stashed as plain ``ctx`` attributes, which probe 1 cannot see.

Both probes are first shown to work: on ``torch.nn.functional.cross_entropy`` they do see
PyTorch's saved N x C ``log_softmax`` output.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import crossent as ce

pytestmark = pytest.mark.slow

N, C = 64, 1000


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _caller_ptrs(*tensors) -> set[int]:
    return {_ptr(t) for t in tensors if isinstance(t, torch.Tensor)}


def saved_for_backward(fn):
    """Run ``fn``; return (its output, [(shape, dtype, storage ptr) of each saved tensor])."""
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.dtype, _ptr(t), t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, saved


class _LiveLargeTensors(TorchDispatchMode):
    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold
        self.records = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() >= self.threshold:
                self.records.append((str(func), weakref.ref(t), _ptr(t), tuple(t.shape)))
        return out


def alive_after_forward(fn, callers: set[int]):
    """Run ``fn``; return (output, large tensors made in the forward and still alive)."""
    mode = _LiveLargeTensors(N * C)
    with mode:
        out = fn()
    gc.collect()
    alive = [(f, shape) for f, ref, p, shape in mode.records
             if ref() is not None and p not in callers]
    return out, alive


def large_foreign(saved, callers):
    return [s for s in saved if s[3] >= N * C and s[2] not in callers]


# ----------------------------------------------------------------------------- the cases


def _case(name):
    x = torch.randn(N, C, requires_grad=True)
    y = torch.randint(0, C, (N,))
    y_ign = y.clone()
    y_ign[::3] = -100
    probs = torch.softmax(torch.randn(N, C), 1)
    w = torch.rand(C) + 0.5
    cases = {
        "default": (x, (y,), {}),
        "label_smoothing": (x, (y,), dict(label_smoothing=0.1)),
        "weight": (x, (y,), dict(weight=w)),
        "weight-ignore-label_smoothing": (x, (y_ign,), dict(weight=w, label_smoothing=0.2)),
        "reduction_none": (x, (y,), dict(reduction="none")),
        "reduction_sum": (x, (y,), dict(reduction="sum")),
        "prob_target": (x, (probs,), {}),
        "prob_target-requires_grad": (x, (probs.clone().requires_grad_(),), {}),
        "prob_target-weight-label_smoothing": (x, (probs,), dict(weight=w, label_smoothing=0.1)),
        "kdim": (torch.randn(4, C, 16, requires_grad=True), (torch.randint(0, C, (4, 16)),),
                 {}),
        "transposed_logits": (torch.randn(C, N).t().requires_grad_(), (y,), {}),
        "bfloat16": (x.detach().bfloat16().requires_grad_(), (y,), {}),
        "z_loss": (x, (y,), dict(z_loss=1e-4)),
        "softcap-logit_scale": (x, (y,), dict(softcap=30.0, logit_scale=2.0)),
        "return_stats": (x, (y,), dict(return_stats=True)),
    }
    return cases[name]


CASES = ["default", "label_smoothing", "weight", "weight-ignore-label_smoothing",
         "reduction_none", "reduction_sum", "prob_target", "prob_target-requires_grad",
         "prob_target-weight-label_smoothing", "kdim", "transposed_logits", "bfloat16",
         "z_loss", "softcap-logit_scale", "return_stats"]


def _loss(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name", CASES)
def test_saved_tensors_are_only_the_callers(name):
    x, args, kwargs = _case(name)
    callers = _caller_ptrs(x, *args, *kwargs.values())
    out, saved = saved_for_backward(lambda: ce.cross_entropy(x, *args, **kwargs))
    assert saved, "the probe saw nothing: is the graph recorded?"
    foreign = large_foreign(saved, callers)
    assert not foreign, f"N x C buffers saved for backward: {foreign}"
    _loss(out).sum().backward()
    assert x.grad is not None and torch.all(torch.isfinite(x.grad))


@pytest.mark.parametrize("name", CASES)
def test_no_large_temporary_outlives_the_forward(name):
    x, args, kwargs = _case(name)
    callers = _caller_ptrs(x, *args, *kwargs.values())
    out, alive = alive_after_forward(lambda: ce.cross_entropy(x, *args, **kwargs), callers)
    assert not alive, f"N x C tensors kept alive by the graph: {alive}"
    _loss(out).sum().backward()  # the lean graph still differentiates


@pytest.mark.parametrize("name", ["default", "label_smoothing", "weight", "prob_target",
                                  "kdim", "transposed_logits"])
def test_lean_backward_gradient_equals_torch(name):
    x, args, kwargs = _case(name)
    xc, xt = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ce.cross_entropy(xc, *args, **kwargs).backward()
    F.cross_entropy(xt, *args, **kwargs).backward()
    torch.testing.assert_close(xc.grad, xt.grad)


# ----------------------------------------------------------------------------- probes work


@pytest.mark.parametrize("name", ["default", "label_smoothing", "weight", "prob_target"])
def test_probe_sees_torch_saved_log_softmax(name):
    x, args, kwargs = _case(name)
    callers = _caller_ptrs(x, *args, *kwargs.values())
    _, saved = saved_for_backward(lambda: F.cross_entropy(x, *args, **kwargs))
    if name != "prob_target":  # torch's nll path saves log_softmax's N x C output
        assert large_foreign(saved, callers), saved
    _, alive = alive_after_forward(lambda: F.cross_entropy(x, *args, **kwargs), callers)
    assert alive, "the liveness probe must see torch's log_softmax buffer"


def test_probe_ignores_callers_tensors():
    x = torch.randn(N, C, requires_grad=True)
    callers = _caller_ptrs(x)
    _, saved = saved_for_backward(lambda: (x * 1.0).sum() + (x.view(-1) ** 1).sum())
    # x.mul saves nothing large besides x itself; pow saves x's view: shares storage
    assert not large_foreign(saved, callers)
    _, saved = saved_for_backward(lambda: torch.exp(x).sum())
    assert large_foreign(saved, callers)  # exp saves its result: a foreign N x C buffer
