"""The Triton backend against the float64 reference, on the CPU under TRITON_INTERPRET=1.

``TRITON_INTERPRET`` is read when a kernel is decorated, so the fixture sets it and
(re)imports the kernel module; shapes are small because the interpreter is slow.
"""

import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F

import oracle

if not torch.cuda.is_available():
    # Read when triton and the kernels are first imported: set it before either.
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

pytestmark = [pytest.mark.triton, pytest.mark.slow]

N, H, V = 19, 24, 45


@pytest.fixture(scope="module")
def lce():
    if torch.cuda.is_available():
        pytest.skip("interpreter tests run where there is no CUDA; see test_triton_cuda_*")
    name = "crossent.kernels.triton_linear"
    module = sys.modules.get(name)
    if module is not None and "Interpreted" not in type(module._stats_kernel).__name__:
        importlib.reload(module)
    from crossent.linear import linear_cross_entropy

    return linear_cross_entropy


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) * 0.3
    b = torch.randn(V, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    y[4] = -100
    cw = torch.rand(V, generator=g) + 0.5
    return x, w, b, y, cw


def _ref(x, w, b, y, **options):
    return oracle.linear_cross_entropy(x, w, b, y, float64=False, **options)


def _run(fn, x, w, b):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(out.dtype)
    return out.detach(), torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize(
    "opts",
    [
        {"reduction": "mean"},
        {"reduction": "none", "softcap": 2.5, "z_loss": 0.05, "vocab_chunk_size": 20,
         "token_chunk_size": 7},
        {"reduction": "sum", "label_smoothing": 0.1, "use_weight": True, "logit_scale": 0.8},
    ],
    ids=["mean", "none-cap-z-tiled", "sum-ls-weight-scale"],
)
def test_triton_matches_float64(lce, opts):
    x, w, b, y, cw = _data()
    opts = dict(opts)
    if opts.pop("use_weight", False):
        opts["weight"] = cw
    tiling = {k: opts.pop(k) for k in ("vocab_chunk_size", "token_chunk_size") if k in opts}
    lo, go = _run(lambda a, c, d: lce(a, c, y, linear_bias=d, backend="triton", **opts, **tiling), x, w, b)
    wd = opts.pop("weight", None)
    lr, gr = _run(lambda a, c, d: _ref(a, c, d, y, weight=None if wd is None else wd.double(), **opts),
                  x.double(), w.double(), b.double())
    torch.testing.assert_close(lo.double(), lr, atol=2e-5, rtol=2e-5)
    for a, r in zip(go, gr):
        torch.testing.assert_close(a.double(), r, atol=2e-5, rtol=2e-4)


def test_triton_stats_match_torch_backend(lce):
    x, w, b, y, _ = _data(1)
    lt, st = lce(x, w, y, linear_bias=b, backend="triton", return_stats=True)
    lp, sp = lce(x, w, y, linear_bias=b, backend="torch", return_stats=True)
    torch.testing.assert_close(lt, lp)
    torch.testing.assert_close(st.lse, sp.lse)
    torch.testing.assert_close(st.entropy, sp.entropy)
    assert torch.equal(st.argmax, sp.argmax)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_triton_cuda_auto_dispatch():
    from crossent.linear import linear_cross_entropy

    x, w, b, y, _ = (t.cuda() for t in _data())
    torch.testing.assert_close(linear_cross_entropy(x, w, y, linear_bias=b),
                               F.cross_entropy(F.linear(x, w, b), y), atol=1e-4, rtol=1e-4)
