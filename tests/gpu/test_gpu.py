"""The CUDA paths at real sizes, against float64 references computed with plain PyTorch.

Skipped without CUDA (CI has none). On a GPU these check what the Triton interpreter
cannot: the compiled kernels at the shapes users run (partial blocks at every edge, fp32
``tl.dot`` in IEEE mode, bf16 operands), and index arithmetic past 2**31 logit elements.

Tolerances follow the operands: float32 inputs against a float64 reference land near
1e-6 relative; bf16 inputs (rounded once, then accumulated in float32) near 1e-3.
Errors are relative Frobenius norms, ``||got - want|| / ||want||``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossent as ce
import oracle

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

D = torch.float64


def _rel(got, want):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), "non-finite values"
    return ((got - want).norm() / want.norm().clamp_min(1e-30)).item()


def _grads(loss, inputs):
    return torch.autograd.grad(loss, inputs)


def _linear_problem(n, h, v, dtype, seed=0, probs=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, h, generator=g, device="cuda").to(dtype).requires_grad_()
    w = (torch.randn(v, h, generator=g, device="cuda") * h ** -0.5).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g, device="cuda").to(dtype).requires_grad_()
    if probs:
        y = torch.softmax(torch.randn(n, v, generator=g, device="cuda") * 3, 1)
    else:
        y = torch.randint(0, v, (n,), generator=g, device="cuda")
        y[::7] = -100
    return x, w, b, y


def _linear_reference(x, w, b, y, **options):
    """Full float64 logits, then PyTorch's cross-entropy plus the written-out extras."""
    return oracle.linear_cross_entropy(x, w, b, y, **options)


LINEAR_CASES = {
    "plain": {},
    "smoothing-weight": {"label_smoothing": 0.1, "weight": "rand"},
    "zloss-softcap": {"z_loss": 1e-4, "softcap": 30.0},
    "none": {"reduction": "none"},
    "probs": {"probs": True},
}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(LINEAR_CASES))
def test_triton_linear_cross_entropy_at_size(case, dtype, tol):
    """N=4097, H=1000, V=32011: no dimension a multiple of any block size."""
    opts = dict(LINEAR_CASES[case])
    x, w, b, y = _linear_problem(4097, 1000, 32011, dtype, probs=opts.pop("probs", False))
    if opts.get("weight") == "rand":
        opts["weight"] = (torch.rand(32011, device="cuda") + 0.5).to(dtype)
    got = ce.linear_cross_entropy(x, w, y, linear_bias=b, backend="triton", **opts)
    want = _linear_reference(x, w, b, y, **opts)
    assert got.dtype == torch.float32
    assert _rel(got, want) < tol
    seed = torch.randn_like(want) if want.dim() else torch.ones((), dtype=D, device="cuda")
    g_got = _grads((got.double() * seed).sum(), (x, w, b))
    g_want = _grads((want * seed).sum(), (x, w, b))
    for name, a, e in zip("xwb", g_got, g_want):
        assert a.dtype == dtype, name
        assert _rel(a, e) < tol * 5, name


def test_triton_linear_past_two_to_the_31_logits():
    """16640 x 131072 = 2.18e9 > 2**31 logit elements (int32 offsets would wrap)."""
    n, h, v = 16640, 64, 131072
    assert n * v > 2 ** 31
    x, w, b, y = _linear_problem(n, h, v, torch.bfloat16, seed=1)
    got = ce.linear_cross_entropy(x, w, y, linear_bias=b, backend="triton", reduction="sum")
    gx, gw = _grads(got, (x, w))
    # reference in float64, 2048 rows at a time (the full float64 logits are 17 GB)
    want = torch.zeros((), dtype=D, device="cuda")
    rx, rw = torch.zeros(n, h, dtype=D, device="cuda"), torch.zeros(v, h, dtype=D, device="cuda")
    wd, bd = w.detach().double().requires_grad_(), b.detach().double()
    for s in range(0, n, 2048):
        xd = x.detach()[s:s + 2048].double().requires_grad_()
        part = F.cross_entropy(F.linear(xd, wd, bd), y[s:s + 2048], reduction="sum")
        a, c = torch.autograd.grad(part, (xd, wd))
        want += part.detach()
        rx[s:s + 2048] = a
        rw += c
    assert _rel(got, want) < 1e-3
    assert _rel(gx, rx) < 2e-2
    assert _rel(gw, rw) < 2e-2


def _features(n, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, device="cuda", dtype=D), dim=1)
    return x.to(dtype).requires_grad_()


def _clip_reference(a, b, scale, bias=None):
    z = scale.double() * a.double() @ b.double().T
    if bias is not None:
        z = z + bias.double()
    labels = torch.arange(z.shape[0], device=z.device)
    return (F.cross_entropy(z, labels) + F.cross_entropy(z.T, labels)) / 2


def _siglip_reference(a, b, scale, bias):
    z = scale.double() * a.double() @ b.double().T + bias.double()
    sign = 2 * torch.eye(z.shape[0], dtype=D, device=z.device) - 1
    return -F.logsigmoid(sign * z).sum() / z.shape[0]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "bf16"])
def test_triton_clip_and_siglip_at_size(dtype, tol):
    """N=8193 pairs, D=256: the whole matrix is never formed by crossent; the reference forms it."""
    a, b = _features(8193, 256, dtype, 2), _features(8193, 256, dtype, 3)
    s = torch.tensor(14.3, device="cuda", requires_grad=True)
    t = torch.tensor(-10.0, device="cuda", requires_grad=True)
    for got, want, inputs in (
        (ce.clip_loss(a, b, s, backend="triton"), _clip_reference(a, b, s), (a, b, s)),
        (ce.siglip_loss(a, b, s, t, backend="triton"), _siglip_reference(a, b, s, t), (a, b, s, t)),
    ):
        assert _rel(got, want) < tol
        for a_, e_ in zip(_grads(got, inputs), _grads(want, inputs)):
            assert _rel(a_, e_) < tol * 5


def test_arcface_on_cuda_at_size():
    """ArcFace over 100,003 classes on CUDA against the formula written out in float64."""
    n, d, c = 512, 256, 100_003
    g = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn(n, d, generator=g, device="cuda").requires_grad_()
    w = torch.randn(c, d, generator=g, device="cuda").requires_grad_()
    y = torch.randint(0, c, (n,), generator=g, device="cuda")
    got = ce.arcface_loss(x, w, y, scale=64.0, margin=0.5)
    cos = F.normalize(x.double(), dim=1) @ F.normalize(w.double(), dim=1).T
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1, 1))
    m = 0.5
    target = torch.where(theta <= torch.pi - m, torch.cos(theta + m),
                         torch.cos(theta) - m * torch.sin(torch.tensor(m, dtype=D)))
    want = F.cross_entropy(64.0 * cos.scatter(1, y[:, None], target), y)
    assert _rel(got, want) < 1e-5
    for a_, e_ in zip(_grads(got, (x, w)), _grads(want, (x, w))):
        assert _rel(a_, e_) < 1e-4


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)],
                         ids=["fp32", "bf16"])
def test_cross_entropy_on_cuda_logits(dtype, tol):
    g = torch.Generator(device="cuda").manual_seed(5)
    z = (torch.randn(8192, 50257, generator=g, device="cuda") * 4).to(dtype).requires_grad_()
    y = torch.randint(0, 50257, (8192,), generator=g, device="cuda")
    y[::5] = -100
    got = ce.cross_entropy(z, y, label_smoothing=0.1)
    want = F.cross_entropy(z.double(), y, label_smoothing=0.1)
    assert _rel(got, want) < tol
    assert _rel(_grads(got, z)[0], _grads(want, z)[0]) < tol * 10
