"""crossent.linear_token_log_probs: per-token log-probabilities and entropy fused with the
output layer (the logits never formed).

Oracles: a float64 full-logits formula written here (``F.linear``, ``log_softmax``,
gather, ``-sum p log p``; gradients by autograd through it), and two independent fused
implementations: TRL 1.16's ``ChunkedLogProbFunction`` (the kernel of its
``add_fused_lm_head``) and verl's ``FusedLinearForPPOFunction`` (PyTorch path), loaded
as in ``test_token_log_probs.py``. Every case draws upstream gradients for the
log-probabilities only, the entropy only, or both.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from test_token_log_probs import _trl_chunked_logprob, _verl_torch_functional

import crossent as ce
import oracle
from crossent import ArgumentError, ArgumentTypeError, TargetIndexError
from crossent.core.tiles import plan_tiles

IGNORE = -100
USES = {"both": (1.0, 1.0), "log_probs": (1.0, 0.0), "entropy": (0.0, 1.0)}


def _reference(x, w, b, target, temperature=1.0, ignore_index=IGNORE):
    """float64 log p[target] and entropy from the full logits; 0 at ignored positions."""
    logits = F.linear(x.double(), w.double(), None if b is None else b.double())
    return oracle.token_log_probs(logits, target, temperature, ignore_index)


def _problem(shape, hidden, vocab, dtype=torch.float32, seed=0, ignored=0.2, bias=True):
    g = torch.Generator().manual_seed(seed)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype)

    x, w = r(*shape, hidden), r(vocab, hidden, scale=0.5)
    b = r(vocab) if bias else None
    target = torch.randint(0, vocab, shape, generator=g)
    if ignored:
        target[torch.rand(shape, generator=g) < ignored] = IGNORE
    grads = (torch.randn(shape, generator=g, dtype=torch.float64),
             torch.randn(shape, generator=g, dtype=torch.float64))
    return x, w, b, target, grads


def _run(fn, params, grads, use="both"):
    """``(log_probs, entropy, gradients of params)`` for the upstream gradients of ``use``."""
    leaves = [None if p is None else p.detach().clone().requires_grad_() for p in params]
    lp, ent = fn(*leaves)
    a, e = USES[use]
    loss = (lp.double() * grads[0]).sum() * a + (ent.double() * grads[1]).sum() * e
    wanted = [p for p in leaves if p is not None]
    return lp.detach(), ent.detach(), torch.autograd.grad(loss, wanted)


def _crossent(target, **kwargs):
    def fn(x, w, b):
        return ce.linear_token_log_probs(x, w, target, linear_bias=b, return_entropy=True,
                                         **kwargs)
    return fn


def _ref(target, temperature=1.0, ignore_index=IGNORE):
    return lambda x, w, b: _reference(x, w, b, target, temperature, ignore_index)


def _close(got, want, atol=1e-10, rtol=1e-9):
    lp, ent, grads = got
    rlp, rent, rgrads = want
    torch.testing.assert_close(lp.double(), rlp.double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(ent.double(), rent.double(), atol=atol, rtol=rtol)
    assert len(grads) == len(rgrads)
    for g, r in zip(grads, rgrads):
        torch.testing.assert_close(g.double(), r.double(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
@pytest.mark.parametrize("shape", [(13,), (3, 5)], ids=["NH", "BTH"])
def test_values_and_gradients_match_float64_full_logits(shape, temperature, use):
    x, w, b, target, grads = _problem(shape, 16, 90, dtype=torch.float64, seed=1)
    got = _run(_crossent(target, temperature=temperature), (x, w, b), grads, use)
    want = _run(_ref(target, temperature), (x, w, b), grads, use)
    assert got[0].shape == got[1].shape == target.shape
    _close(got, want)
    assert (got[0] <= 0).all()


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("budget", [None, 6000, 20000], ids=["whole-rows", "tiny-tiles", "bands"])
def test_memory_budgets_tile_the_vocabulary(budget, use):
    """Small budgets split the vocabulary into tiles (statistics merged, the backward
    recomputing each tile against the saved lse and entropy)."""
    n, h, v = 18, 16, 700
    plan = plan_tiles(n, v, kind="linear_recompute", device=torch.device("cpu"), buffers=2,
                      memory_budget=budget, accumulator_width=h)
    assert (plan.cols == v) == (budget is None)
    x, w, b, target, grads = _problem((2, 9), h, v, dtype=torch.float64, seed=2)
    got = _run(_crossent(target, temperature=0.8, memory_budget=budget), (x, w, b), grads, use)
    _close(got, _run(_ref(target, 0.8), (x, w, b), grads, use))


def test_float32_matches_the_float64_formula():
    x, w, b, target, grads = _problem((4, 7), 32, 300, seed=3)
    got = _run(_crossent(target, temperature=0.9, memory_budget=8000), (x, w, b), grads)
    assert got[0].dtype == got[1].dtype == torch.float32
    _close(got, _run(_ref(target, 0.9), (x, w, b), grads), atol=2e-5, rtol=1e-4)


def test_log_probs_alone_and_without_bias():
    x, w, _, target, grads = _problem((5, 4), 12, 60, dtype=torch.float64, seed=4, bias=False)
    xs, ws = x.clone().requires_grad_(), w.clone().requires_grad_()
    lp = ce.linear_token_log_probs(xs, ws, target, temperature=1.3)
    assert isinstance(lp, torch.Tensor) and lp.shape == target.shape
    (lp * grads[0]).sum().backward()
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    rlp, _ = _reference(xr, wr, None, target, 1.3)
    (rlp * grads[0]).sum().backward()
    torch.testing.assert_close(lp, rlp.detach())
    torch.testing.assert_close(xs.grad, xr.grad)
    torch.testing.assert_close(ws.grad, wr.grad)


def test_only_the_weight_requires_grad():
    x, w, b, target, grads = _problem((6,), 8, 40, dtype=torch.float64, seed=5)
    ws = w.clone().requires_grad_()
    lp, ent = ce.linear_token_log_probs(x, ws, target, linear_bias=b, return_entropy=True)
    (lp * grads[0] + ent * grads[1]).sum().backward()
    wr = w.clone().requires_grad_()
    rlp, rent = _reference(x, wr, b, target)
    (rlp * grads[0] + rent * grads[1]).sum().backward()
    torch.testing.assert_close(ws.grad, wr.grad)


def test_ignored_positions_are_zero_and_get_no_gradient():
    x, w, b, target, _ = _problem((3, 10), 8, 30, dtype=torch.float64, seed=6, ignored=0.4)
    ignored = target == IGNORE
    assert ignored.any() and not ignored.all()
    xs = x.clone().requires_grad_()
    lp, ent = ce.linear_token_log_probs(xs, w, target, linear_bias=b, return_entropy=True)
    assert (lp[ignored] == 0).all() and (ent[ignored] == 0).all()
    assert not torch.signbit(lp[ignored]).any()  # +0, not -0
    assert (ent[~ignored] > 0).all() and (lp[~ignored] < 0).all()
    (lp.sum() * 3 + ent.sum() * 5).backward()
    assert (xs.grad[ignored] == 0).all()
    assert (xs.grad[~ignored].abs().sum(-1) > 0).all()
    # a custom ignore_index that is also a class index
    target7 = torch.where(ignored, torch.full_like(target, 7), target)
    lp7, ent7 = ce.linear_token_log_probs(x, w, target7, linear_bias=b, ignore_index=7,
                                          return_entropy=True)
    rlp7, rent7 = _reference(x, w, b, target7, ignore_index=7)
    torch.testing.assert_close(lp7, rlp7)
    torch.testing.assert_close(ent7, rent7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_outputs_and_half_gradients(dtype):
    x, w, b, target, grads = _problem((4, 8), 32, 200, dtype=dtype, seed=7)
    got = _run(_crossent(target, temperature=0.9), (x, w, b), grads)
    assert got[0].dtype == got[1].dtype == torch.float32
    assert all(g.dtype == dtype for g in got[2])
    # the reference on the very same (half) values, in float64
    want = _run(_ref(target, 0.9), (x.double(), w.double(), b.double()), grads)
    torch.testing.assert_close(got[0].double(), want[0], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(got[1].double(), want[1], atol=2e-5, rtol=2e-5)
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3  # the gradients' own rounding to half
    for g, r in zip(got[2], want[2]):
        torch.testing.assert_close(g.double(), r, atol=tol, rtol=tol)


def test_masked_vocabulary_entries_give_finite_gradients():
    """A -inf bias (a masked vocabulary entry) has p = 0: no NaN from 0 * log 0."""
    x, w, b, target, grads = _problem((9,), 8, 20, dtype=torch.float64, seed=8, ignored=0.0)
    b[14:] = -torch.inf
    target = target % 14
    got = _run(_crossent(target, temperature=1.5), (x, w, b), grads)
    want = _run(lambda xx, ww, bb: _reference(xx, ww[:14], bb[:14], target, 1.5), (x, w, b), grads)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    gx, gw, gb = got[2]
    assert all(torch.isfinite(g).all() for g in (gx, gw, gb))
    assert (gw[14:] == 0).all() and (gb[14:] == 0).all()
    torch.testing.assert_close(gx, want[2][0])
    torch.testing.assert_close(gw[:14], want[2][1][:14])


def test_backward_keeps_no_tokens_by_vocab_buffer():
    x, w, b, target, _ = _problem((8, 16), 8, 300, dtype=torch.float32, seed=9)
    xs = x.clone().requires_grad_()
    big = []

    def pack(t):
        if t.numel() >= target.numel() * 300:
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = ce.linear_token_log_probs(xs, w, target, linear_bias=b, temperature=0.7,
                                            return_entropy=True)
    assert not big, [t.shape for t in big]
    (lp.sum() + ent.sum()).backward()


# --- peers: TRL's and verl's own implementations ---------------------------------------------
@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_trl_chunked_logprob(monkeypatch, temperature, use):
    fn = _trl_chunked_logprob(monkeypatch)
    x, w, b, target, grads = _problem((24,), 16, 70, seed=10, ignored=0.0)

    def trl(xx, ww, bb):
        lp, ent, *_ = fn.apply(xx, ww, bb, target, temperature, 16, None, 1.0, ("entropy",))
        return lp, ent

    got = _run(_crossent(target, temperature=temperature), (x, w, b), grads, use)
    peer = _run(trl, (x, w, b), grads, use)
    _close(got, peer, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("use", list(USES))
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_verl_fused_linear_for_ppo(temperature, use):
    verl = _verl_torch_functional()
    x, w, _, target, grads = _problem((3, 8), 16, 70, seed=11, ignored=0.0, bias=False)

    def peer(xx, ww, _b):
        return verl.FusedLinearForPPOFunction.apply(xx, ww, target, temperature, 8)

    got = _run(_crossent(target, temperature=temperature), (x, w, None), grads, use)
    want = _run(peer, (x, w, None), grads, use)
    _close(got, want, atol=1e-5, rtol=1e-5)


# --- soft-capping and a logit scale (TRL reads both from the model's config) -----------------
def _reference_capped(x, w, b, target, temperature, logit_scale, cap):
    y = F.linear(x.double(), w.double(), b.double()) * logit_scale
    z = cap * torch.tanh(y / cap) / temperature
    log_p = torch.log_softmax(z, -1)
    valid = target != IGNORE
    lp = log_p.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    return lp, -(log_p.exp() * log_p).sum(-1) * valid


@pytest.mark.parametrize("use", list(USES))
def test_softcap_and_logit_scale_match_float64(use):
    x, w, b, target, grads = _problem((3, 6), 16, 400, dtype=torch.float64, seed=17)
    w = w * 4  # scores beyond the cap

    def fn(xx, ww, bb):
        return ce.linear_token_log_probs(xx, ww, target, linear_bias=bb, temperature=0.8,
                                         logit_scale=1.5, softcap=5.0, return_entropy=True,
                                         memory_budget=6000)

    ref = _run(lambda xx, ww, bb: _reference_capped(xx, ww, bb, target, 0.8, 1.5, 5.0),
               (x, w, b), grads, use)
    _close(_run(fn, (x, w, b), grads, use), ref)
    assert F.linear(x, w, b).abs().max() * 1.5 > 10.0  # the cap is active


def test_softcap_and_logit_scale_match_trl(monkeypatch):
    fn = _trl_chunked_logprob(monkeypatch)
    x, w, b, target, grads = _problem((24,), 16, 70, seed=18, ignored=0.0)
    w = w * 4

    def trl(xx, ww, bb):
        lp, ent, *_ = fn.apply(xx, ww, bb, target, 0.7, 16, 6.0, 1.3, ("entropy",))
        return lp, ent

    def ours(xx, ww, bb):
        return ce.linear_token_log_probs(xx, ww, target, linear_bias=bb, temperature=0.7,
                                         logit_scale=1.3, softcap=6.0, return_entropy=True)

    _close(_run(ours, (x, w, b), grads), _run(trl, (x, w, b), grads), atol=1e-5, rtol=1e-5)


# --- TRL's other per-token fields (extras=) -------------------------------------------------
def _reference_extras(x, w, b, target, temperature, ignore_index=IGNORE):
    z = F.linear(x.double(), w.double(), None if b is None else b.double()) / temperature
    valid = target != ignore_index
    mean = torch.where(valid, z.mean(-1), torch.zeros((), dtype=torch.float64))
    return mean, (z.argmax(-1) == target) & valid


@pytest.mark.parametrize("budget", [None, 6000], ids=["whole-rows", "tiles"])
def test_extras_match_the_full_logits(budget):
    x, w, b, target, grads = _problem((3, 20), 16, 700, dtype=torch.float64, seed=14)
    z = F.linear(x, w, b)
    target[0, :12] = z[0, :12].argmax(-1)  # some top-1 hits
    target[1, 5] = IGNORE
    out = ce.linear_token_log_probs(x, w, target, linear_bias=b, temperature=0.6,
                                    extras=("is_top1", "mean_logits"), memory_budget=budget)
    assert isinstance(out, ce.logprobs.TokenLogProbs) and out.entropy is None
    mean, top1 = _reference_extras(x, w, b, target, 0.6)
    torch.testing.assert_close(out.mean_logits, mean)
    assert torch.equal(out.is_top1, top1) and top1.sum() >= 12
    torch.testing.assert_close(out.log_probs, _reference(x, w, b, target, 0.6)[0])
    # with the entropy, which keeps its gradient; a custom ignore_index that is a class
    target7 = torch.where(target == IGNORE, torch.full_like(target, 7), target)
    xs = x.clone().requires_grad_()
    out = ce.linear_token_log_probs(xs, w, target7, linear_bias=b, temperature=0.6,
                                    return_entropy=True, ignore_index=7, extras=("is_top1",))
    assert out.mean_logits is None and not out.is_top1[target7 == 7].any()
    assert torch.equal(out.is_top1, _reference_extras(x, w, b, target7, 0.6, 7)[1])
    (out.log_probs * grads[0] + out.entropy * grads[1]).sum().backward()
    want = _run(lambda xx, ww, bb: _reference(xx, ww, bb, target7, 0.6, 7), (x, w, b), grads)
    torch.testing.assert_close(xs.grad, want[2][0])


def test_extras_match_trl(monkeypatch):
    fn = _trl_chunked_logprob(monkeypatch)
    x, w, b, target, _ = _problem((32,), 16, 70, seed=15, ignored=0.0)
    target[:10] = F.linear(x, w, b)[:10].argmax(-1)
    lp, _, _, mean, top1 = fn.apply(x, w, b, target, 0.8, 16, None, 1.0,
                                    ("mean_logits", "is_top1"))
    out = ce.linear_token_log_probs(x, w, target, linear_bias=b, temperature=0.8,
                                    extras=("mean_logits", "is_top1"))
    torch.testing.assert_close(out.log_probs, lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mean_logits, mean, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.is_top1, top1) and top1.sum() >= 10


@pytest.mark.parametrize("budget", [None, 6000], ids=["whole-rows", "tiles"])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_log_sum_sq_probs_and_capped_mean_match_float64(budget, softcap):
    """The two extras that take one more forward pass each: log sum_v p_v^2 (over the
    scores 2z) and, with a soft cap, the mean of the capped scores (lse minus the uniform
    target's cross-entropy), against the float64 full logits."""
    x, w, b, target, _ = _problem((3, 20), 16, 700, dtype=torch.float32, seed=21)
    target[1, 5] = IGNORE
    out = ce.linear_token_log_probs(x, w, target, linear_bias=b, temperature=0.6, softcap=softcap,
                                    logit_scale=1.3, extras=("log_sum_sq_probs", "mean_logits"),
                                    memory_budget=budget)
    y = 1.3 * F.linear(x.double(), w.double(), b.double())
    if softcap is not None:
        y = softcap * torch.tanh(y / softcap)
    z = y / 0.6
    valid = target != IGNORE
    log_p = torch.log_softmax(z, -1)
    want_sq = torch.where(valid, torch.logsumexp(2 * log_p, -1), torch.zeros((), dtype=torch.float64))
    want_mean = torch.where(valid, z.mean(-1), torch.zeros((), dtype=torch.float64))
    torch.testing.assert_close(out.log_sum_sq_probs.double(), want_sq, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(out.mean_logits.double(), want_mean, rtol=1e-5, atol=2e-5)
    assert bool((out.log_sum_sq_probs <= 1e-6).all())  # sum p^2 <= 1
    assert out.log_sum_sq_probs.grad_fn is None and out.mean_logits.grad_fn is None


def test_log_sum_sq_probs_and_capped_mean_match_trl(monkeypatch):
    fn = _trl_chunked_logprob(monkeypatch)
    x, w, b, target, _ = _problem((32,), 16, 70, seed=22, ignored=0.0)
    _, _, sq, mean, _ = fn.apply(x, w, b, target, 0.8, 16, 6.0, 1.2,
                                 ("log_sum_sq_probs", "mean_logits"))
    out = ce.linear_token_log_probs(x, w, target, linear_bias=b, temperature=0.8, softcap=6.0,
                                    logit_scale=1.2, extras=("log_sum_sq_probs", "mean_logits"))
    torch.testing.assert_close(out.log_sum_sq_probs, sq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.mean_logits, mean, atol=1e-5, rtol=1e-5)


# --- the Triton backend, under the interpreter -----------------------------------------------
@pytest.fixture(scope="module")
def triton_kernels():
    if torch.cuda.is_available():
        pytest.skip("interpreter tests run where there is no CUDA")
    pytest.importorskip("triton")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    name = "crossent.kernels.triton_linear"
    module = sys.modules.get(name)
    if module is not None and "Interpreted" not in type(module._stats_kernel).__name__:
        importlib.reload(module)


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("use", list(USES))
def test_triton_backend_matches_float64(triton_kernels, use):
    x, w, b, target, grads = _problem((2, 7), 24, 45, seed=12)
    b[40:] = -torch.inf  # masked entries: no NaN in the entropy's share either
    target = target.masked_fill((target >= 40) & (target != IGNORE), 3)
    got = _run(_crossent(target, temperature=0.7, backend="triton", memory_budget=3000),
               (x, w, b), grads, use)
    want = _run(lambda xx, ww, bb: _reference(xx, ww[:40], bb[:40], target, 0.7), (x, w, b),
                grads, use)
    assert all(torch.isfinite(g).all() for g in got[2])
    assert (got[2][1][40:] == 0).all() and (got[2][2][40:] == 0).all()
    _close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.triton
@pytest.mark.slow
def test_triton_backend_softcap(triton_kernels):
    x, w, b, target, grads = _problem((2, 5), 24, 45, seed=19)
    w = w * 4
    got = _run(lambda xx, ww, bb: ce.linear_token_log_probs(
        xx, ww, target, linear_bias=bb, temperature=0.8, logit_scale=1.5, softcap=5.0,
        return_entropy=True, backend="triton"), (x, w, b), grads)
    want = _run(lambda xx, ww, bb: _reference_capped(xx, ww, bb, target, 0.8, 1.5, 5.0),
                (x, w, b), grads)
    _close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.triton
@pytest.mark.slow
def test_triton_backend_extras(triton_kernels):
    x, w, b, target, _ = _problem((2, 7), 24, 45, seed=16)
    target[0] = F.linear(x, w, b)[0].argmax(-1)
    out = ce.linear_token_log_probs(x, w, target, linear_bias=b, temperature=0.7,
                                    backend="triton", extras=("is_top1", "mean_logits"))
    mean, top1 = _reference_extras(x, w, b, target, 0.7)
    assert torch.equal(out.is_top1, top1) and top1.sum() >= 5
    torch.testing.assert_close(out.mean_logits.double(), mean, atol=1e-5, rtol=1e-5)


# --- errors ----------------------------------------------------------------------------------
def test_errors_name_the_argument():
    x, w = torch.randn(2, 3, 8), torch.randn(10, 8)
    target = torch.randint(0, 10, (2, 3))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ArgumentError, match="temperature"):
            ce.linear_token_log_probs(x, w, target, temperature=bad)
    with pytest.raises(ArgumentTypeError, match="target"):
        ce.linear_token_log_probs(x, w, target.float())
    with pytest.raises(ArgumentError, match=r"target must have shape \[2, 3\]"):
        ce.linear_token_log_probs(x, w, target[:, :2])
    with pytest.raises(TargetIndexError, match="10"):
        ce.linear_token_log_probs(x, w, torch.full((2, 3), 10))
    with pytest.raises(ArgumentTypeError, match="input"):
        ce.linear_token_log_probs(x.long(), w, target)
    with pytest.raises(ArgumentTypeError, match="linear_weight"):
        ce.linear_token_log_probs(x, w.long(), target)
    with pytest.raises(ArgumentError, match="in_features"):
        ce.linear_token_log_probs(x, w[:, :5], target)
    with pytest.raises(ArgumentError, match="linear_bias"):
        ce.linear_token_log_probs(x, w, target, linear_bias=torch.zeros(9))
    with pytest.raises(ArgumentTypeError, match="linear_bias"):
        ce.linear_token_log_probs(x, w, target, linear_bias=torch.zeros(10, dtype=torch.float64))
    with pytest.raises(ArgumentError, match="input"):
        ce.linear_token_log_probs(torch.tensor(1.0), w, target)
    with pytest.raises(ArgumentTypeError, match="return_entropy"):
        ce.linear_token_log_probs(x, w, target, return_entropy=1)
    with pytest.raises(ArgumentTypeError, match="ignore_index"):
        ce.linear_token_log_probs(x, w, target, ignore_index=1.5)
    with pytest.raises(ArgumentError, match="memory_budget"):
        ce.linear_token_log_probs(x, w, target, memory_budget=16)
    with pytest.raises(ArgumentError, match="backend"):
        ce.linear_token_log_probs(x, w, target, backend="cuda")
    with pytest.raises(ArgumentError, match="extras"):
        ce.linear_token_log_probs(x, w, target, extras=("log_probs",))
    with pytest.raises(ArgumentTypeError, match="extras"):
        ce.linear_token_log_probs(x, w, target, extras="is_top1")
    with pytest.raises(ArgumentError, match="softcap"):
        ce.linear_token_log_probs(x, w, target, softcap=-1.0)
    with pytest.raises(ArgumentError, match="logit_scale"):
        ce.linear_token_log_probs(x, w, target, logit_scale=0.0)


def test_double_backward_raises():
    x, w, b, target, _ = _problem((4,), 8, 20, dtype=torch.float64, seed=13)
    xs = x.clone().requires_grad_()
    lp, ent = ce.linear_token_log_probs(xs, w, target, return_entropy=True)
    with pytest.raises(RuntimeError, match="linear_cross_entropy|gradient of the gradient"):
        torch.autograd.grad((lp + ent).sum(), xs, create_graph=True)
