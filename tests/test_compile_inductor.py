"""The fused losses under ``torch.compile(fullgraph=True)`` with the default inductor backend:
``linear_cross_entropy`` and the margin heads (the core family: tests/test_compile.py).

``fullgraph=True`` fails on any graph break, so each function is traced whole (the
custom autograd Functions included); the compiled value and input gradients must equal
eager's. CPU in float64 here (inductor's C++ backend); the same on CUDA in float32 when
a GPU is present. The losses under test were checked against PyTorch and float64
formulas elsewhere; here eager crossent is the reference for its own compiled form.

Not here: the contrastive losses. Their tiled ``autograd.Function`` does not trace under
``fullgraph=True`` yet: its targets' tensors reach ``apply`` inside a non-tensor argument
(Dynamo fails with "Placeholder node not found"); they compile with graph breaks only.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent as ce

N, C, D = 6, 11, 5


def _data(device, dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    y = torch.randint(0, C, (N,), generator=g).to(device)
    y[2] = -100
    return {
        "x": r(N, C), "x2": r(N, C), "h": r(N, D), "w": r(C, D),
        "f1": F.normalize(r(N, D), dim=1), "f2": F.normalize(r(N, D), dim=1),
        "y": y, "y_valid": y.clamp(min=0),
        "probs": torch.softmax(r(N, C), 1), "bits": torch.rand(N, C, generator=g).to(device, dtype),
        "cw": (torch.rand(C, generator=g) + 0.5).to(device, dtype),
        "labels": torch.tensor([0, 1, 0, 2, 1, 0], device=device),
        "scale": torch.tensor(5.0, dtype=dtype, device=device),
        "bias": torch.tensor(-2.0, dtype=dtype, device=device),
    }


# name -> (the differentiable inputs, the call)
CASES = {
    "linear_cross_entropy": (("h", "w"), lambda d: ce.linear_cross_entropy(
        d["h"], d["w"], d["y"], z_loss=1e-2, softcap=4.0, label_smoothing=0.1)),
    "linear_cross_entropy_probs": (("h", "w"), lambda d: ce.linear_cross_entropy(d["h"], d["w"], d["probs"])),
    "linear_cross_entropy_none": (("h", "w"), lambda d: ce.linear_cross_entropy(
        d["h"], d["w"], d["y"], reduction="none").square().sum()),
    "arcface_loss": (("h", "w"), lambda d: ce.arcface_loss(d["h"], d["w"], d["y"], scale=8.0)),
    "cosface_loss": (("h", "w"), lambda d: ce.cosface_loss(d["h"], d["w"], d["y"], scale=8.0)),
    "sphereface_loss": (("h", "w"), lambda d: ce.sphereface_loss(d["h"], d["w"], d["y"], margin=2)),
    "large_margin_softmax_loss": (("h", "w"), lambda d: ce.large_margin_softmax_loss(
        d["h"], d["w"], d["y"], margin=2)),
    "combined_margin_loss": (("h", "w"), lambda d: ce.combined_margin_loss(
        d["h"], d["w"], d["y"], scale=8.0, m1=1.0, m2=0.3, m3=0.1)),
    "subcenter_arcface_loss": (("h",), lambda d: ce.subcenter_arcface_loss(
        d["h"], d["w"][: (C // 2) * 2], d["y_valid"] % (C // 2), centers=2, scale=8.0)),
}


def _run(case, device, dtype, compiled):
    names, call = CASES[case]
    data = _data(device, dtype)
    for name in names:
        data[name] = data[name].clone().requires_grad_()
    fn = torch.compile(call, fullgraph=True) if compiled else call
    loss = fn(data)
    return loss.detach(), torch.autograd.grad(loss, [data[n] for n in names])


def _check(case, device, dtype, **tol):
    torch._dynamo.reset()
    want, want_grads = _run(case, device, dtype, compiled=False)
    got, got_grads = _run(case, device, dtype, compiled=True)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("case", list(CASES))
def test_inductor_fullgraph_cpu(case):
    _check(case, "cpu", torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_inductor_fullgraph_cuda(case):
    _check(case, "cuda", torch.float32, rtol=1e-4, atol=1e-5)
