"""crossent.token_log_probs: per-token log-probabilities and entropy from given logits.

Oracles: a float64 reference written with ``torch.log_softmax`` (values, and gradients by
autograd through it), the hand-derived entropy gradient ``-p (log p + H) / T``, and two
independent implementations: TRL 1.16's ``ChunkedLogProbFunction`` (the kernel of its
``add_fused_lm_head``) and verl's ``FusedLinearForPPOFunction`` (PyTorch path). Both take
``(hidden, weight)``; with ``weight = I`` their logits are the hidden states themselves.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import pytest
import torch

import crossent as ce
import oracle
from crossent import ArgumentError, ArgumentTypeError, TargetIndexError

IGNORE = -100


def _reference(logits, target, temperature=1.0, ignore_index=IGNORE):
    """float64 log p[target] and entropy via torch.log_softmax; 0 at ignored positions."""
    return oracle.token_log_probs(logits, target, temperature, ignore_index)


def _problem(shape, vocab, dtype=torch.float32, seed=0, ignored=0.2, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * scale).to(dtype)
    target = torch.randint(0, vocab, shape, generator=g)
    if ignored:
        target[torch.rand(shape, generator=g) < ignored] = IGNORE
    grads = (torch.randn(shape, generator=g, dtype=torch.float64),
             torch.randn(shape, generator=g, dtype=torch.float64))
    return logits, target, grads


def _grad(fn, logits, grads):
    x = logits.detach().clone().requires_grad_()
    lp, ent = fn(x)
    (lp.double() * grads[0] + ent.double() * grads[1]).sum().backward()
    return lp.detach(), ent.detach(), x.grad


@pytest.mark.parametrize("shape", [(), (7,), (3, 5)], ids=["V", "NV", "BTV"])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_values_and_gradients_match_float64_log_softmax(shape, temperature):
    logits, target, grads = _problem(shape, 37, ignored=0.0 if shape == () else 0.2)
    lp, ent, grad = _grad(lambda x: ce.token_log_probs(x, target, temperature=temperature,
                                                       return_entropy=True), logits, grads)
    rlp, rent, rgrad = _grad(lambda x: _reference(x, target, temperature), logits.double(), grads)
    assert lp.shape == ent.shape == target.shape and lp.dtype == ent.dtype == torch.float32
    torch.testing.assert_close(lp.double(), rlp, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(ent.double(), rent, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(grad.double(), rgrad, atol=2e-6, rtol=1e-5)
    assert (lp <= 0).all()


def test_log_probs_alone_and_their_gradient():
    logits, target, grads = _problem((4, 6), 50, seed=1)
    x = logits.clone().requires_grad_()
    lp = ce.token_log_probs(x, target, temperature=1.3)
    assert isinstance(lp, torch.Tensor)
    (lp.double() * grads[0]).sum().backward()
    y = logits.double().requires_grad_()
    rlp, _ = _reference(y, target, 1.3)
    (rlp * grads[0]).sum().backward()
    torch.testing.assert_close(lp.double(), rlp.detach(), atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, atol=2e-6, rtol=1e-5)


def test_gradient_of_one_output_when_both_are_returned():
    """Only one output used downstream (the other's gradient is None, not zeros)."""
    logits, target, grads = _problem((4, 6), 50, seed=12)
    for used in (0, 1):
        x = logits.clone().requires_grad_()
        out = ce.token_log_probs(x, target, temperature=0.8, return_entropy=True)
        (out[used].double() * grads[used]).sum().backward()
        y = logits.double().requires_grad_()
        (_reference(y, target, 0.8)[used] * grads[used]).sum().backward()
        torch.testing.assert_close(x.grad.double(), y.grad, atol=2e-6, rtol=1e-5)


def test_entropy_gradient_is_the_derived_formula():
    """dH/dz_c = -p_c (log p_c + H) / T, written out (not autograd), only H's gradient."""
    temperature = 0.8
    logits, target, grads = _problem((9,), 23, dtype=torch.float64, seed=2, ignored=0.0)
    x = logits.clone().requires_grad_()
    _, ent = ce.token_log_probs(x, target, temperature=temperature, return_entropy=True)
    (ent * grads[1]).sum().backward()
    log_p = torch.log_softmax(logits / temperature, -1)
    p = log_p.exp()
    h = -(p * log_p).sum(-1, keepdim=True)
    expected = -p * (log_p + h) / temperature * grads[1].unsqueeze(-1)
    torch.testing.assert_close(x.grad, expected, atol=1e-12, rtol=1e-10)


def test_gradcheck_float64_both_outputs():
    logits, target, _ = _problem((2, 3), 6, dtype=torch.float64, seed=3)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: ce.token_log_probs(a, target, temperature=0.6, return_entropy=True), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_give_float32_outputs_and_half_gradients(dtype):
    logits, target, grads = _problem((4, 8), 64, dtype=dtype, seed=4)
    lp, ent, grad = _grad(lambda x: ce.token_log_probs(x, target, temperature=0.9,
                                                       return_entropy=True), logits, grads)
    assert lp.dtype == ent.dtype == torch.float32 and grad.dtype == dtype
    # the reference on the very same (half) values, in float64
    rlp, rent, rgrad = _grad(lambda x: _reference(x, target, 0.9), logits.double(), grads)
    torch.testing.assert_close(lp.double(), rlp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), rent, atol=1e-5, rtol=1e-5)
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3  # the gradient's own rounding to half
    torch.testing.assert_close(grad.double(), rgrad, atol=tol, rtol=tol)


def test_ignored_positions_are_zero_and_get_no_gradient():
    logits, target, _ = _problem((3, 10), 17, seed=5, ignored=0.4)
    ignored = target == IGNORE
    assert ignored.any() and not ignored.all()
    x = logits.clone().requires_grad_()
    lp, ent = ce.token_log_probs(x, target, return_entropy=True)
    assert (lp[ignored] == 0).all() and (ent[ignored] == 0).all()
    assert (ent[~ignored] > 0).all()
    (lp.sum() * 3 + ent.sum() * 5).backward()
    assert (x.grad[ignored] == 0).all()
    assert (x.grad[~ignored].abs().sum(-1) > 0).all()
    # a custom ignore_index, which may be a class index too
    target7 = torch.where(ignored, torch.full_like(target, 7), target)
    lp7 = ce.token_log_probs(logits, target7, ignore_index=7)
    assert (lp7[target7 == 7] == 0).all()
    torch.testing.assert_close(lp7.double(), _reference(logits, target7, ignore_index=7)[0],
                               atol=2e-6, rtol=1e-6)


def test_large_offsets_keep_log_probs_exact_and_non_positive():
    """logits + 1e4 in float32: the log-probabilities are exact for the values given
    (computed relative to the row max, not as the difference of two numbers near 1e4,
    which would lose ulp(1e4) = 1e-3), and never positive, also for a dominant token."""
    logits, target, _ = _problem((6, 5), 40, seed=6, ignored=0.0)
    rows = logits.reshape(-1, 40)
    rows[::2].scatter_(1, target.reshape(-1, 1)[::2], 60.0)  # p(target) = 1 - 1e-20: log p ~ -0
    offset = logits + 1e4
    lp, ent = ce.token_log_probs(offset, target, return_entropy=True)
    rlp, rent = _reference(offset, target)  # float64 of the very float32 values
    assert (lp <= 0).all()
    torch.testing.assert_close(lp.double(), rlp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent.double(), rent, atol=1e-6, rtol=1e-6)
    lpt = ce.token_log_probs(offset, target, temperature=0.5)
    assert (lpt <= 0).all()
    torch.testing.assert_close(lpt.double(), _reference(offset, target, 0.5)[0], atol=1e-6,
                               rtol=1e-6)


def test_masked_vocabulary_entries_give_finite_gradients():
    """-inf logits (a masked vocabulary) have p = 0: no NaN from 0 * log 0."""
    logits, target, grads = _problem((5,), 12, seed=7, ignored=0.0)
    logits[:, 8:] = -torch.inf
    target = target % 8
    lp, ent, grad = _grad(lambda x: ce.token_log_probs(x, target, temperature=1.5,
                                                       return_entropy=True), logits, grads)
    rlp, rent, rgrad = _grad(lambda x: _reference(x[:, :8], target, 1.5), logits.double(), grads)
    torch.testing.assert_close(lp.double(), rlp, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(ent.double(), rent, atol=2e-6, rtol=1e-6)
    assert torch.isfinite(grad).all() and (grad[:, 8:] == 0).all()
    torch.testing.assert_close(grad[:, :8].double(), rgrad[:, :8], atol=2e-6, rtol=1e-5)


def test_backward_keeps_no_tokens_by_vocab_buffer_and_leaves_logits_alone():
    logits, target, _ = _problem((8, 16), 300, seed=8)
    x = logits.clone().requires_grad_()
    before = x.detach().clone()
    big = []

    def pack(t):
        if t.numel() >= x.numel():
            big.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp, ent = ce.token_log_probs(x, target, temperature=0.7, return_entropy=True)
    assert big and all(t.data_ptr() == x.data_ptr() for t in big), [t.shape for t in big]
    (lp.sum() + ent.sum()).backward()
    assert torch.equal(x.detach(), before)


def test_torch_func_grad_matches_the_reference():
    logits, target, grads = _problem((3, 4), 11, seed=9)

    def f(x):
        lp, ent = ce.token_log_probs(x, target, temperature=0.9, return_entropy=True)
        return (lp.double() * grads[0] + ent.double() * grads[1]).sum()

    got = torch.func.grad(f)(logits)
    _, _, expected = _grad(lambda x: _reference(x, target, 0.9), logits.double(), grads)
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)


def test_errors_name_the_argument():
    logits = torch.randn(2, 3, 5)
    target = torch.randint(0, 5, (2, 3))
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ArgumentError, match="temperature"):
            ce.token_log_probs(logits, target, temperature=bad)
    with pytest.raises(ArgumentTypeError, match="target"):
        ce.token_log_probs(logits, target.float())
    with pytest.raises(ArgumentError, match=r"target must have shape \[2, 3\]"):
        ce.token_log_probs(logits, target[:, :2])
    with pytest.raises(TargetIndexError, match="5"):
        ce.token_log_probs(logits, torch.full((2, 3), 5))
    with pytest.raises(TargetIndexError, match="-1"):
        ce.token_log_probs(logits, torch.full((2, 3), -1))
    with pytest.raises(ArgumentTypeError, match="logits"):
        ce.token_log_probs(logits.long(), target)
    with pytest.raises(ArgumentTypeError, match="logits"):
        ce.token_log_probs(logits.tolist(), target)
    with pytest.raises(ArgumentTypeError, match="return_entropy"):
        ce.token_log_probs(logits, target, return_entropy=1)


# --- peers: TRL's and verl's own implementations ---------------------------------------------
def _trl_chunked_logprob(monkeypatch):
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")
    try:
        import trl.trainer.utils  # noqa: F401  (its backward imports a ZeRO-3 helper from it)
    except ImportError:
        # trl.trainer.utils needs pandas and datasets; the backward only takes a null context
        # from it (no DeepSpeed here), so stand in that one name, nothing of the math.
        stub = types.ModuleType("trl.trainer.utils")
        stub.maybe_gather_lm_head_ctx = lambda *params: contextlib.nullcontext()
        monkeypatch.setitem(sys.modules, "trl.trainer.utils", stub)
    return chunked.ChunkedLogProbFunction


def _verl_torch_functional():
    spec = importlib.util.find_spec("verl")
    if spec is None:
        pytest.skip("verl is not installed")
    root = spec.submodule_search_locations[0]
    path = os.path.join(root, "utils", "experimental", "torch_functional.py")
    if not os.path.exists(path):
        pytest.skip("verl/utils/experimental/torch_functional.py is not in this verl")
    # verl/__init__ imports ray: load the one file by its path
    module_spec = importlib.util.spec_from_file_location("_verl_torch_functional", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def _peer_problem(seed):
    logits, target, grads = _problem((24,), 70, seed=seed, ignored=0.0)  # peers do not ignore
    return logits, target, grads, torch.eye(70)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_trl_chunked_logprob(monkeypatch, temperature):
    fn = _trl_chunked_logprob(monkeypatch)
    logits, target, grads, eye = _peer_problem(10)

    def trl(x):
        lp, ent, *_ = fn.apply(x, eye, None, target, temperature, 16, None, 1.0, ("entropy",))
        return lp, ent

    lp, ent, grad = _grad(lambda x: ce.token_log_probs(x, target, temperature=temperature,
                                                       return_entropy=True), logits, grads)
    plp, pent, pgrad = _grad(trl, logits, grads)
    torch.testing.assert_close(lp, plp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, pent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, pgrad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_verl_fused_linear_for_ppo(temperature):
    verl = _verl_torch_functional()
    logits, target, grads, eye = _peer_problem(11)

    def peer(x):
        return verl.FusedLinearForPPOFunction.apply(x, eye, target, temperature, 8)

    lp, ent, grad = _grad(lambda x: ce.token_log_probs(x, target, temperature=temperature,
                                                       return_entropy=True), logits, grads)
    plp, pent, pgrad = _grad(peer, logits, grads)
    torch.testing.assert_close(lp, plp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, pent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, pgrad, atol=1e-5, rtol=1e-5)
