"""crossent.linear_cross_entropy against cross_entropy(x @ W.T + b) in float64 PyTorch."""

import pytest
import torch
import torch.nn.functional as F

from crossent.linear import LinearCrossEntropyLoss, linear_cross_entropy

N, H, V = 23, 12, 37
TILINGS = [{}, {"token_chunk_size": 5, "vocab_chunk_size": 8}, {"token_chunk_size": 4}]


def _data(seed=0, dtype=torch.float64, probs=False, bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, H, generator=g, dtype=torch.float64)
    w = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(V, generator=g, dtype=torch.float64) if bias else None
    if probs:
        y = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 2, 1)
    else:
        y = torch.randint(0, V, (N,), generator=g)
        y[[2, 7]] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
    return x.to(dtype), w.to(dtype), (b.to(dtype) if b is not None else None), y, cw


def _reference(x, w, b, y, *, weight=None, reduction="mean", ignore_index=None,
               label_smoothing=0.0, z_loss=0.0, softcap=None, logit_scale=1.0):
    """Float64 definition: logits in full, then PyTorch's cross-entropy (+ z-loss)."""
    z = F.linear(x.double(), w.double(), None if b is None else b.double()) * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ii = -100 if ignore_index is None else ignore_index
    wt = None if weight is None else weight.double()
    yy = y.double() if y.is_floating_point() else y
    ce = F.cross_entropy(z, yy, weight=wt, ignore_index=ii, label_smoothing=label_smoothing,
                         reduction="none")
    if z_loss:
        valid = torch.ones_like(ce, dtype=torch.bool) if y.is_floating_point() else y != ii
        ce = ce + z_loss * torch.where(valid, torch.logsumexp(z, -1) ** 2, 0.0)
    if reduction == "none":
        return ce
    if reduction == "sum":
        return ce.sum()
    if y.is_floating_point():
        return ce.sum() / ce.shape[0]
    valid = y != ii
    den = valid.double().sum() if wt is None else (wt[y.clamp(min=0)] * valid).sum()
    return ce.sum() / den


def _grads(fn, x, w, b, upstream_seed=1):
    leaves = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(upstream_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, leaves, g)
    return out.detach(), grads


def _compare(kwargs, ours_extra, *, probs=False, bias=True, atol=1e-10):
    x, w, b, y, cw = _data(probs=probs, bias=bias)
    if kwargs.pop("use_weight", False):
        kwargs["weight"] = cw
    if "ignore_index" in kwargs:
        y = torch.where(y == -100, kwargs["ignore_index"], y)

    def ours(xx, ww, bb=None):
        return linear_cross_entropy(xx, ww, y, linear_bias=bb, **kwargs, **ours_extra)

    def ref(xx, ww, bb=None):
        return _reference(xx, ww, bb, y, **kwargs)

    lo, go = _grads(ours, x, w, b)
    lr, gr = _grads(ref, x, w, b)
    torch.testing.assert_close(lo, lr, atol=atol, rtol=1e-9)
    for a, r in zip(go, gr):
        torch.testing.assert_close(a, r, atol=atol, rtol=1e-9)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"use_weight": True},
    {"use_weight": True, "label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"logit_scale": 0.7, "softcap": 5.0, "z_loss": 0.1},
    {"ignore_index": 3},
]


@pytest.mark.parametrize("tiling", TILINGS, ids=["whole", "tiled", "rows"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_index_targets_match_float64(opts, reduction, tiling):
    _compare({**opts, "reduction": reduction}, tiling)


@pytest.mark.parametrize("tiling", TILINGS, ids=["whole", "tiled", "rows"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "use_weight": True},
                                  {"softcap": 4.0, "z_loss": 0.05}], ids=["default", "ls+w", "cap+z"])
def test_probability_targets_match_float64(opts, reduction, tiling):
    _compare({**opts, "reduction": reduction}, tiling, probs=True)


def test_without_bias_and_small_budget():
    # The smallest budget accepted (crossent.core.tiles.min_memory_budget: one tile of 256
    # floats plus dx's accumulator row of H floats; the 160 bytes used before made 1 x 28
    # tiles, which issue 20 rules out): one-row bands of whole rows.
    _compare({}, {"memory_budget": 4 * (256 + H)}, bias=False)


def test_float32_close_to_float64():
    x, w, b, y, _ = _data(dtype=torch.float32)
    lo, go = _grads(lambda a, c, d: linear_cross_entropy(a, c, y, linear_bias=d), x, w, b)
    lr, gr = _grads(lambda a, c, d: _reference(a, c, d, y), x, w, b)
    assert lo.dtype == torch.float32 and go[1].dtype == torch.float32
    torch.testing.assert_close(lo.double(), lr, atol=1e-5, rtol=1e-5)
    for a, r in zip(go, gr):
        torch.testing.assert_close(a.double(), r.double(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_bfloat16_no_less_accurate_than_pytorch(reduction):
    x, w, b, y, _ = _data(seed=3, dtype=torch.bfloat16)
    _, gr = _grads(lambda a, c, d: _reference(a, c, d, y, reduction=reduction), x, w, b)
    lr = _reference(x, w, b, y, reduction=reduction)
    lo, go = _grads(lambda a, c, d: linear_cross_entropy(a, c, y, linear_bias=d, reduction=reduction), x, w, b)
    lt, gt = _grads(lambda a, c, d: F.cross_entropy(F.linear(a, c, d), y, reduction=reduction), x, w, b)
    assert lo.dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in go)
    err = lambda a, r: (a.double() - r).abs().max().item()  # noqa: E731
    assert err(lo, lr) <= err(lt, lr) + 1e-6
    for a, t, r in zip(go, gt, gr):
        assert err(a, r) <= err(t, r) * 1.01 + 1e-6


def test_matches_pytorch_linear_cross_entropy_and_one_d_input():
    x, w, b, y, _ = _data()
    ours = linear_cross_entropy(x[0], w, y[0], linear_bias=b, reduction="none")
    theirs = F.linear_cross_entropy(x[0], w, y[0], linear_bias=b, reduction="none")
    assert ours.shape == theirs.shape == ()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(linear_cross_entropy(x, w, y), F.linear_cross_entropy(x, w, y))


def test_return_stats_lse_entropy_argmax():
    x, w, b, y, _ = _data()
    loss, stats = linear_cross_entropy(x, w, y, linear_bias=b, return_stats=True, vocab_chunk_size=8)
    z = F.linear(x, w, b)
    torch.testing.assert_close(stats.lse, torch.logsumexp(z, 1))
    ent = -(torch.softmax(z, 1) * torch.log_softmax(z, 1)).sum(1)
    torch.testing.assert_close(stats.entropy, ent)
    assert torch.equal(stats.argmax, z.argmax(1))


def test_all_ignored_zero_and_nan():
    x, w, b, _, _ = _data()
    y = torch.full((N,), -100)
    assert torch.isnan(linear_cross_entropy(x, w, y))
    xx = x.clone().requires_grad_()
    loss = linear_cross_entropy(xx, w, y, all_ignored="zero")
    loss.backward()
    assert loss.item() == 0 and torch.all(xx.grad == 0)


def test_inputs_not_modified_and_no_grad_mode():
    x, w, b, y, cw = _data()
    copies = [t.clone() for t in (x, w, b, y, cw)]
    with torch.no_grad():
        linear_cross_entropy(x, w, y, linear_bias=b, weight=cw, label_smoothing=0.1)
    xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
    linear_cross_entropy(xx, ww, y, linear_bias=b, weight=cw, reduction="sum").backward()
    for t, c in zip((x, w, b, y, cw), copies):
        assert torch.equal(t, c)


def test_second_backward_raises_clearly():
    x, w, b, y, _ = _data()
    xx = x.clone().requires_grad_()
    loss = linear_cross_entropy(xx, w, y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


def test_module_owns_output_layer():
    torch.manual_seed(0)
    m = LinearCrossEntropyLoss(H, V, bias=True, dtype=torch.float64, label_smoothing=0.1)
    x, _, _, y, _ = _data()
    loss = m(x, y)
    torch.testing.assert_close(loss, F.cross_entropy(m.logits(x), y, label_smoothing=0.1))
    loss.backward()
    assert m.weight.grad is not None and m.bias.grad is not None


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda x, w, y: linear_cross_entropy(x[None], w, y), ValueError, "input"),
        (lambda x, w, y: linear_cross_entropy(x, w[:, :-1], y), ValueError, "in_features"),
        (lambda x, w, y: linear_cross_entropy(x, w.float(), y), TypeError, "dtype"),
        (lambda x, w, y: linear_cross_entropy(x, w[:, None], y), ValueError, "K-dimensional"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, linear_bias=w[0]), ValueError, "linear_bias"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, reduction="avg"), ValueError, "reduction"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, label_smoothing=2.0), ValueError, "label_smoothing"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, softcap=0.0), ValueError, "softcap"),
        (lambda x, w, y: linear_cross_entropy(x, w, y[:-1]), ValueError, "target"),
        (lambda x, w, y: linear_cross_entropy(x, w, y.float()), ValueError, "target"),
        (lambda x, w, y: linear_cross_entropy(x, w, y.int()), TypeError, "target dtype"),
        (lambda x, w, y: linear_cross_entropy(x, w, y + V), IndexError, "out of bounds"),
        (lambda x, w, y: linear_cross_entropy(x, w, torch.zeros(N, V, dtype=x.dtype), ignore_index=0),
         ValueError, "ignore_index"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, weight=torch.ones(3, dtype=x.dtype)), ValueError, "weight"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, memory_budget=0), ValueError, "memory_budget"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, token_chunk_size=-1), ValueError, "token_chunk_size"),
        (lambda x, w, y: linear_cross_entropy(x, w, y, backend="cuda"), ValueError, "backend"),
    ],
)
def test_errors_name_the_argument(call, exc, match):
    x, w, _, y, _ = _data()
    y = y.clamp(min=0)
    with pytest.raises(exc, match=match):
        call(x, w, y)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    x, w, b, y, _ = _data(dtype=torch.float32)

    def f(xx, ww, bb):
        return linear_cross_entropy(xx, ww, y, linear_bias=bb, token_chunk_size=8)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    lo, go = _grads(compiled, x, w, b)
    lr, gr = _grads(lambda a, c, d: _reference(a, c, d, y), x, w, b)
    torch.testing.assert_close(lo.double(), lr, atol=1e-5, rtol=1e-5)
    for a, r in zip(go, gr):
        torch.testing.assert_close(a.double(), r.double(), atol=1e-5, rtol=1e-4)
