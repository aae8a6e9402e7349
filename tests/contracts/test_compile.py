"""The core family under ``torch.compile(fullgraph=True)``: no graph break, eager's numbers.

``aot_eager`` (first tests): value checks that read tensor contents (target bounds) become
traced assertions under compilation instead of host-side ``if``s, so a bad target still
raises.

Inductor, the default backend (the rest): each loss is compiled and the compiled value and
gradients must equal eager crossent's. Eager crossent is itself checked against PyTorch
elsewhere (tests/test_conformance_opinfo.py); the point here is that compilation neither
breaks the graph nor changes the numbers. float64 and small shapes: inductor's CPU code
generation (a C++ compile per graph) dominates the time, so each compiled function is used
for as many checks as it can. ``linear_cross_entropy`` and the margin losses:
tests/test_compile_fused.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent as ce

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1, "ignore_index": 3},
                                    {"weight": torch.rand(10, dtype=torch.float64)}],
                         ids=["plain", "smoothing-ignore", "weight"])
def test_fullgraph_matches_pytorch(kwargs):
    torch._dynamo.reset()
    x = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    compiled = torch.compile(lambda x, y: ce.cross_entropy(x, y, **kwargs),
                             backend="aot_eager", fullgraph=True)
    loss = compiled(x, y)
    (grad,) = torch.autograd.grad(loss, x)
    ref = F.cross_entropy(x, y, **kwargs)
    (ref_grad,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_fullgraph_still_rejects_out_of_range_target():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, y: ce.cross_entropy(x, y), backend="aot_eager",
                             fullgraph=True)
    x = torch.randn(4, 10)
    compiled(x, torch.tensor([0, 1, 2, 3]))  # compiles with a valid target first
    with pytest.raises(RuntimeError, match="out of bounds"):
        compiled(x, torch.tensor([0, 1, 2, 12]))


# ----------------------------------------------------------------------------- inductor

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs CUDA")),
]
N, C = 6, 5


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # compile_threads=1: inductor compiles in this process instead of starting a pool of
    # compile workers (on CI's 2 cores, already shared by two pytest-xdist workers)
    torch._dynamo.reset()
    with torch._inductor.config.patch(compile_threads=1):
        yield
    torch._dynamo.reset()


def _grads(out, inputs):
    """Gradients of ``sum(out * cotangent)`` (a fixed cotangent, so 'none' outputs count)."""
    gen = torch.Generator().manual_seed(1)
    cot = torch.rand(out.shape, generator=gen, dtype=out.dtype).to(out.device) + 0.5
    return torch.autograd.grad((out * cot).sum(), inputs)


def _clone(args):
    return [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor)
            else a for a in args]


def check_compiled(fn, *args, calls=None):
    """``torch.compile(fn, fullgraph=True)`` gives eager's values and gradients (w.r.t.
    every argument that requires grad), for ``args`` and then each argument tuple of
    ``calls`` (further inputs through the same compiled function)."""
    compiled = torch.compile(fn, fullgraph=True)
    for call in [args] + list(calls or []):
        eager_args, comp_args = _clone(call), _clone(call)
        want = fn(*eager_args)
        got = compiled(*comp_args)
        torch.testing.assert_close(got, want, equal_nan=True)
        wrt_e = [a for a in eager_args if isinstance(a, torch.Tensor) and a.requires_grad]
        wrt_c = [a for a in comp_args if isinstance(a, torch.Tensor) and a.requires_grad]
        assert wrt_e, "nothing to differentiate"
        for k, (g_got, g_want) in enumerate(zip(_grads(got, wrt_c), _grads(want, wrt_e))):
            torch.testing.assert_close(g_got, g_want, equal_nan=True,
                                       msg=lambda m, k=k: f"gradient {k}: {m}")


def _logits(device, *shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape or (N, C), generator=gen, dtype=torch.float64)).to(device) \
        .requires_grad_()


def _labels(device, n=N, c=C, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n,), generator=gen).to(device)


def _probs(device, *shape, seed=2, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(shape or (N, C), generator=gen, dtype=torch.float64).softmax(-1)
    return p.to(device).requires_grad_(requires_grad)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_class_indices(device):
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.5
    y = _labels(device)
    y_ignored = y.clone()
    y_ignored[::3] = 2

    def fn(x, y, weight):
        return ce.cross_entropy(x, y, weight=weight, ignore_index=2, label_smoothing=0.1,
                                z_loss=1e-3)

    # a second call with other values (some rows ignored) runs the same compiled graph
    check_compiled(fn, _logits(device), y, weight,
                   calls=[(_logits(device, seed=3), y_ignored, weight)])


def test_cross_entropy_options():
    """Softcap, scale, 'none', K-dimensional input, and the statistics pass."""
    x = _logits("cpu", N, C, 3)
    y = torch.randint(0, C, (N, 3), generator=torch.Generator().manual_seed(4))

    def fn(x, y):
        loss, stats = ce.cross_entropy(x, y, reduction="none", softcap=4.0, logit_scale=0.5,
                                       return_stats=True)
        return torch.cat([loss.flatten(), stats.lse.flatten(), stats.entropy.flatten(),
                          stats.argmax.flatten().to(loss.dtype)])

    check_compiled(fn, x, y)


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_probability_targets(device):
    def fn(x, q):
        return ce.cross_entropy(x, q, label_smoothing=0.2)

    check_compiled(fn, _logits(device), _probs(device, requires_grad=True))


def test_cross_entropy_module():
    loss = ce.CrossEntropyLoss(weight=torch.rand(C, dtype=torch.float64) + 0.5,
                               label_smoothing=0.05)
    check_compiled(loss, _logits("cpu"), _labels("cpu"))


def test_nll_loss_and_log_softmax():
    def fn(x, y):
        return ce.nll_loss(ce.log_softmax(x, dim=1), y, reduction="sum")

    check_compiled(fn, _logits("cpu"), _labels("cpu"))


def test_softmax():
    check_compiled(lambda x: ce.softmax(x, dim=-1), _logits("cpu"))


def test_binary_cross_entropy_and_module():
    gen = torch.Generator().manual_seed(5)
    p = torch.rand(N, C, generator=gen, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    t = torch.rand(N, C, generator=gen, dtype=torch.float64).requires_grad_()
    w = torch.rand(C, dtype=torch.float64, generator=gen)
    check_compiled(ce.BCELoss(weight=w), p, t)


@pytest.mark.parametrize("device", DEVICES)
def test_binary_cross_entropy_with_logits(device):
    gen = torch.Generator().manual_seed(6)
    t = torch.rand(N, C, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    pos_weight = torch.rand(C, generator=gen, dtype=torch.float64).to(device) + 0.5

    def fn(x, t):
        return ce.binary_cross_entropy_with_logits(x, t, pos_weight=pos_weight)

    check_compiled(fn, _logits(device), t)


def test_sigmoid_focal_loss():
    t = (torch.rand(N, C, generator=torch.Generator().manual_seed(7)) > 0.5).double()
    check_compiled(lambda x, t: ce.sigmoid_focal_loss(x, t, reduction="mean"),
                   _logits("cpu"), t)


@pytest.mark.parametrize("log_target", [False, True], ids=["probs", "log-probs"])
def test_kl_div(log_target):
    def fn(x, q):
        return ce.kl_div(ce.log_softmax(x, dim=1), q.log() if log_target else q,
                         reduction="mean", log_target=log_target)

    check_compiled(fn, _logits("cpu"), _probs("cpu", requires_grad=True))


def test_js_div_module():
    check_compiled(ce.JSDivLoss(), ce.log_softmax(_logits("cpu"), dim=1).detach()
                   .requires_grad_(), _probs("cpu", requires_grad=True))


def test_focal_loss():
    alpha = torch.rand(C, dtype=torch.float64) + 0.1
    y = _labels("cpu")
    y[1] = -100
    check_compiled(lambda x, y: ce.focal_loss(x, y, gamma=2.0, alpha=alpha), _logits("cpu"), y)


def test_poly1_cross_entropy():
    check_compiled(lambda x, y: ce.poly1_cross_entropy(x, y, epsilon=2.0, label_smoothing=0.1),
                   _logits("cpu"), _labels("cpu"))


def test_distillation_loss_module():
    teacher = _logits("cpu", seed=8).detach()
    check_compiled(ce.DistillationLoss(temperature=2.0, alpha=0.3), _logits("cpu"), teacher,
                   _labels("cpu"))
