"""crossent.sampled_softmax_loss: the sampled softmax of two-tower retrieval (one process).

Oracles: the formula written out below in float64 on the materialised ``B x (B + M)``
logits (``s / T - log Q``, accidental hits set to ``-inf``), through
``torch.nn.functional.cross_entropy``, values and gradients by autograd through it; a 2 x 2
case derived by hand (where the sign of the correction decides the answer); a probe that
records every tensor the loss produces, to check that the logits are never formed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import crossent as ce
from crossent import ArgumentError, ArgumentTypeError
from crossent.kernels import similarity as sim
from tensor_probe import LargestTensor

D = torch.float64


def reference(query, item, item_ids=None, item_log_q=None, negatives=None, negative_ids=None,
              negative_log_q=None, temperature=1.0, remove_accidental_hits=True,
              reduction="mean"):
    """The definition, in float64: materialised logits, masked accidental hits."""
    q, cols = query.to(D), item.to(D)
    b = q.shape[0]
    m = 0 if negatives is None else negatives.shape[0]
    if negatives is not None:
        cols = torch.cat([cols, negatives.to(D)])
    z = q @ cols.T / temperature
    log_q = torch.zeros(b + m, dtype=D)
    if item_log_q is not None:
        log_q[:b] = item_log_q.to(D)
    if negative_log_q is not None:
        log_q[b:] = negative_log_q.to(D)
    z = z - log_q
    if remove_accidental_hits and item_ids is not None:
        col_ids = item_ids if negative_ids is None else torch.cat([item_ids, negative_ids])
        hit = item_ids[:, None] == col_ids[None, :]
        hit[torch.arange(b), torch.arange(b)] = False
        z = z.masked_fill(hit, -math.inf)
    return F.cross_entropy(z, torch.arange(b), reduction=reduction)


def _inputs(b=6, m=5, d=4, dtype=D, seed=0, pool_ids=True):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(b, d, generator=g, dtype=dtype)
    item = torch.randn(b, d, generator=g, dtype=dtype)
    negatives = torch.randn(m, d, generator=g, dtype=dtype)
    # duplicates inside the batch (ids 3 and 5 twice) and between batch and pool (3, 5, 7)
    item_ids = torch.tensor([3, 5, 3, 7, 5, 11][:b])
    negative_ids = torch.tensor([5, 20, 3, 21, 7][:m]) if pool_ids else None
    item_log_q = torch.log(torch.rand(b, generator=g, dtype=D) * 0.5 + 0.01).to(dtype)
    negative_log_q = torch.log(torch.rand(m, generator=g, dtype=D) * 0.5 + 0.01).to(dtype)
    return dict(query=query, item=item, item_ids=item_ids, item_log_q=item_log_q,
                negatives=negatives, negative_ids=negative_ids, negative_log_q=negative_log_q)


def _leaves(kw):
    out = {}
    for k in ("query", "item", "negatives"):
        if kw.get(k) is not None:
            out[k] = kw[k].detach().clone().requires_grad_(True)
    return out


def _compare(kw, *, rtol=1e-12, atol=1e-12, **options):
    """Value and gradients of crossent against the reference, same leaves' values."""
    mine, ref = _leaves(kw), _leaves(kw)
    reduction = options.get("reduction", "mean")
    got = ce.sampled_softmax_loss(**{**kw, **mine}, **options)
    ref_kw = {k: v for k, v in options.items() if k != "memory_budget"}
    want = reference(**{**kw, **ref}, **ref_kw)
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol)
    weights = torch.linspace(0.5, 1.5, got.numel(), dtype=D).reshape(got.shape)
    (got * weights.to(got.dtype)).sum().backward()
    (want * weights).sum().backward()
    for k in mine:
        torch.testing.assert_close(mine[k].grad, ref[k].grad.to(mine[k].dtype), rtol=rtol,
                                   atol=atol, msg=lambda s, k=k: f"grad {k} ({reduction}): {s}")
    return got


# ------------------------------------------------------------------ values and gradients


CASES = {
    "in_batch_only": dict(negatives=None, negative_ids=None, negative_log_q=None),
    "in_batch_logq": dict(negatives=None, negative_ids=None, negative_log_q=None, drop=("item_ids",)),
    "mixed_full": dict(),
    "mixed_no_ids": dict(item_ids=None, negative_ids=None),
    "mixed_no_logq": dict(item_log_q=None, negative_log_q=None),
    "pool_logq_only": dict(item_log_q=None),
    "items_logq_only": dict(negative_log_q=None),
    "no_correction_no_ids": dict(item_ids=None, negative_ids=None, item_log_q=None,
                                 negative_log_q=None),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equals_float64_formula(case, reduction):
    kw = _inputs()
    spec = dict(CASES[case])
    for name in spec.pop("drop", ()):
        kw[name] = None
    kw.update(spec)
    _compare(kw, temperature=0.7, reduction=reduction)


@pytest.mark.parametrize("budget", [3 * 1024, 5000, None])
def test_memory_budgets_that_force_tiling(budget):
    b, m = 40, 70
    kw = _inputs(b=6, m=5)
    g = torch.Generator().manual_seed(3)
    kw.update(query=torch.randn(b, 8, generator=g, dtype=D), item=torch.randn(b, 8, generator=g, dtype=D),
              negatives=torch.randn(m, 8, generator=g, dtype=D),
              item_ids=torch.randint(0, 30, (b,), generator=g),
              negative_ids=torch.randint(0, 30, (m,), generator=g),
              item_log_q=-torch.rand(b, generator=g, dtype=D) * 5,
              negative_log_q=-torch.rand(m, generator=g, dtype=D) * 5)
    if budget is not None:  # the plan is several tiles in both directions
        p = sim.plan(b, b + m, memory_budget=budget)
        assert p.rows < b and p.cols < b + m, p
    _compare(kw, temperature=0.3, memory_budget=budget, reduction="none")


def test_tensor_temperature_gets_its_gradient():
    kw = _inputs()
    t1 = torch.tensor(0.6, dtype=D, requires_grad=True)
    t2 = torch.tensor(0.6, dtype=D, requires_grad=True)
    ce.sampled_softmax_loss(**kw, temperature=t1).backward()
    reference(**kw, temperature=t2).backward()
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-12, atol=1e-12)


def test_no_gradient_reaches_log_q():
    kw = _inputs()
    lq = kw["item_log_q"].clone().requires_grad_(True)
    nlq = kw["negative_log_q"].clone().requires_grad_(True)
    q = kw["query"].clone().requires_grad_(True)
    ce.sampled_softmax_loss(**{**kw, "query": q, "item_log_q": lq, "negative_log_q": nlq}).backward()
    assert q.grad is not None and lq.grad is None and nlq.grad is None


# ------------------------------------------------------------------ the sign of logQ


def test_hand_derived_two_by_two_and_the_sign_of_the_correction():
    """q = diag(2, 1), items = I, T = 1, Q = (0.9, 0.1), no pool.

    z = s - log Q:  row 0: (2 - log .9, -log .1), row 1: (-log .9, 1 - log .1), so
    loss_0 = log(1 + exp(z01 - z00)) = log1p(9 e^-2),  loss_1 = log1p(e^-1 / 9),
    dloss_0/dq_0 = sigmoid(z01 - z00) (item_1 - item_0),  dloss_1/dq_1 likewise.
    The wrong sign (s + log Q) gives log1p(e^-2 / 9) and log1p(9 e^-1) instead.
    """
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=D, requires_grad=True)
    items = torch.eye(2, dtype=D)
    log_q = torch.log(torch.tensor([0.9, 0.1], dtype=D))
    loss = ce.sampled_softmax_loss(q, items, item_log_q=log_q, reduction="none")
    right = torch.tensor([math.log1p(9 * math.exp(-2)), math.log1p(math.exp(-1) / 9)], dtype=D)
    wrong = torch.tensor([math.log1p(math.exp(-2) / 9), math.log1p(9 * math.exp(-1))], dtype=D)
    torch.testing.assert_close(loss.detach(), right, rtol=1e-14, atol=1e-14)
    assert (loss.detach() - wrong).abs().min() > 0.01  # the test tells the signs apart
    loss.sum().backward()
    s0 = 1 / (1 + math.exp(-(-2 + math.log(9))))
    s1 = 1 / (1 + math.exp(-(-1 - math.log(9))))
    want = torch.tensor([[-s0, s0], [s1, -s1]], dtype=D)
    torch.testing.assert_close(q.grad, want, rtol=1e-14, atol=1e-14)


def test_the_wrong_sign_is_a_different_loss_and_gradient():
    """The reference with ``+ log Q`` (TFRS's old bug) differs from crossent, whose value
    and gradient equal the reference with ``- log Q``: a sign error cannot pass."""
    kw = _inputs()
    got = _compare(kw, temperature=0.7)
    flipped = {**kw, "item_log_q": -kw["item_log_q"], "negative_log_q": -kw["negative_log_q"]}
    assert (got - reference(**flipped, temperature=0.7)).abs() > 0.05
    q1 = kw["query"].clone().requires_grad_(True)
    q2 = kw["query"].clone().requires_grad_(True)
    ce.sampled_softmax_loss(**{**kw, "query": q1}, temperature=0.7).backward()
    reference(**{**flipped, "query": q2}, temperature=0.7).backward()
    assert (q1.grad - q2.grad).abs().max() > 0.05


def test_correction_of_a_constant_is_no_correction():
    """``log Q`` equal for every column cancels in the softmax (a property of the formula)."""
    kw = _inputs()
    flat = {**kw, "item_log_q": torch.full((6,), -2.0, dtype=D),
            "negative_log_q": torch.full((5,), -2.0, dtype=D)}
    none = {**kw, "item_log_q": None, "negative_log_q": None}
    torch.testing.assert_close(ce.sampled_softmax_loss(**flat), ce.sampled_softmax_loss(**none),
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ accidental hits


def test_accidental_hits_are_left_out_and_the_positive_kept():
    kw = _inputs()
    masked = _compare(kw, reduction="none")
    kept = _compare(kw, reduction="none", remove_accidental_hits=False)
    # rows 0, 1, 2, 3, 4 have duplicates (in the batch or the pool), row 5 (id 11) none
    diff = (masked - kept).abs()
    assert (diff[:5] > 1e-6).all() and diff[5] < 1e-14
    assert (masked[:5] < kept[:5]).all()  # fewer negatives, smaller loss


def test_a_row_whose_every_other_column_is_a_hit():
    """Every item has the same id: each row keeps its positive alone, loss 0, gradient 0."""
    q = torch.randn(3, 4, dtype=D, requires_grad=True)
    items = torch.randn(3, 4, dtype=D)
    ids = torch.full((3,), 9)
    loss = ce.sampled_softmax_loss(q, items, item_ids=ids, item_log_q=torch.zeros(3, dtype=D),
                                   negatives=torch.randn(2, 4, dtype=D), negative_ids=ids[:2],
                                   reduction="none")
    torch.testing.assert_close(loss.detach(), torch.zeros(3, dtype=D))
    loss.sum().backward()
    torch.testing.assert_close(q.grad, torch.zeros_like(q))


def test_pool_with_ids_only_masks_the_pool():
    """Items with distinct ids: only the pool's copies of a row's id are hits."""
    kw = _inputs()
    kw["item_ids"] = torch.arange(6) * 10
    kw["negative_ids"] = torch.tensor([10, 1, 50, 2, 0])
    _compare(kw, reduction="none", temperature=0.5)


# ------------------------------------------------------------------ dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_half_and_single_precision(dtype):
    kw = _inputs(dtype=dtype)
    kw["item_log_q"] = kw["item_log_q"].float()
    kw["negative_log_q"] = kw["negative_log_q"].float()
    leaves = _leaves(kw)
    got = ce.sampled_softmax_loss(**{**kw, **leaves}, temperature=0.7)
    assert got.dtype == torch.float32
    # the reference on the same (rounded) values, in float64
    ref = {k: v.detach().to(D).requires_grad_(True) for k, v in leaves.items()}
    want = reference(**{**kw, **ref}, temperature=0.7)
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, want.float(), rtol=tol, atol=tol)
    got.backward()
    want.backward()
    gtol = 1e-5 if dtype == torch.float32 else 2e-2
    for k in leaves:
        assert leaves[k].grad.dtype == dtype
        torch.testing.assert_close(leaves[k].grad.to(D), ref[k].grad, rtol=gtol, atol=gtol)


def test_inputs_are_not_modified():
    kw = _inputs()
    before = {k: v.clone() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    ce.sampled_softmax_loss(**kw, memory_budget=3 * 1024)
    for k, v in before.items():
        assert torch.equal(kw[k], v), k


# ------------------------------------------------------------------ memory


def test_never_forms_the_logits():
    """With a small tile budget, no tensor made in the forward or the backward holds the
    ``B x (B + M)`` logits (nor a tenth of them); the plain formula does."""
    b, m, d = 128, 192, 8
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, d, generator=g, requires_grad=True)
    items = torch.randn(b, d, generator=g, requires_grad=True)
    pool = torch.randn(m, d, generator=g, requires_grad=True)
    ids, pool_ids = torch.randint(0, 50, (b,), generator=g), torch.randint(0, 50, (m,), generator=g)
    lq, plq = -torch.rand(b, generator=g), -torch.rand(m, generator=g)
    with LargestTensor() as probe:
        ce.sampled_softmax_loss(q, items, item_ids=ids, item_log_q=lq, negatives=pool,
                                negative_ids=pool_ids, negative_log_q=plq,
                                memory_budget=3 * 1024).backward()
    assert probe.largest < b * (b + m) // 10, probe.largest
    with LargestTensor() as plain:
        reference(q, items, ids, lq, pool, pool_ids, plq).backward()
    assert plain.largest >= b * (b + m)  # the probe sees the logits when they exist


# ------------------------------------------------------------------ errors


def _bad(**changes):
    kw = _inputs(dtype=torch.float32)
    kw["item_log_q"] = kw["item_log_q"].float()
    kw["negative_log_q"] = kw["negative_log_q"].float()
    options = {k: changes.pop(k) for k in list(changes) if k in (
        "temperature", "remove_accidental_hits", "reduction", "memory_budget", "design")}
    kw.update(changes)
    return kw, options


ERRORS = [
    (dict(query=torch.randn(6, 4, 1)), ArgumentError, "query must be 2-D"),
    (dict(item=torch.randn(5, 4)), ArgumentError, "same batch size"),
    (dict(item=torch.randn(6, 3)), ArgumentError, "same feature dimension"),
    (dict(item=torch.randn(6, 4, dtype=D)), ArgumentTypeError, "same dtype"),
    (dict(query=torch.zeros(6, 4, dtype=torch.long)), ArgumentTypeError, "floating point"),
    (dict(negatives=torch.randn(5, 3)), ArgumentError, "same feature dimension"),
    (dict(item_ids=torch.arange(6, dtype=torch.int32)), ArgumentTypeError, "item_ids must hold int64"),
    (dict(item_ids=torch.arange(5)), ArgumentError, "item_ids must have shape [6]"),
    (dict(item_ids=[1, 2, 3, 4, 5, 6]), ArgumentTypeError, "item_ids must be a torch.Tensor"),
    (dict(negative_ids=torch.arange(4)), ArgumentError, "negative_ids must have shape [5]"),
    (dict(negative_ids=None), ArgumentError, "negative_ids is None while item_ids is given"),
    (dict(item_ids=None), ArgumentError, "negative_ids was given without item_ids"),
    (dict(negatives=None, negative_log_q=None), ArgumentError, "negative_ids was given without negatives"),
    (dict(negatives=None, negative_ids=None), ArgumentError, "negative_log_q was given without negatives"),
    (dict(item_log_q=torch.tensor([0.0, -1, float("-inf"), -1, -1, -1])), ArgumentError,
     "item_log_q must hold finite values, got -inf at index 2"),
    (dict(negative_log_q=torch.tensor([0.0, float("nan"), -1, -1, -1])), ArgumentError,
     "negative_log_q must hold finite values, got nan"),
    (dict(item_log_q=torch.zeros(6, 1)), ArgumentError, "item_log_q must have shape [6]"),
    (dict(item_log_q=torch.zeros(6, dtype=torch.long)), ArgumentTypeError, "item_log_q must be a floating"),
    (dict(temperature=0.0), ArgumentError, "temperature must be a positive number"),
    (dict(temperature=-1.0), ArgumentError, "temperature must be a positive number"),
    (dict(temperature=float("nan")), ArgumentError, "temperature must be a positive number"),
    (dict(temperature=torch.tensor(-0.5)), ArgumentError, "temperature must be a positive number"),
    (dict(remove_accidental_hits=1), ArgumentTypeError, "remove_accidental_hits must be a bool"),
    (dict(reduction="avg"), ArgumentError, "reduction"),
    (dict(memory_budget=0), ArgumentError, "memory_budget must be a positive int"),
    (dict(design="tree"), ArgumentError, "design must be one of ('gather', 'ring')"),
    (dict(query=torch.randn(0, 4), item=torch.randn(0, 4), item_ids=torch.arange(0),
          item_log_q=torch.zeros(0)), ArgumentError, "query must hold at least one row"),
]


@pytest.mark.parametrize("changes, kind, text", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_argument(changes, kind, text):
    kw, options = _bad(**dict(changes))
    with pytest.raises(kind, match=None) as info:
        ce.sampled_softmax_loss(**kw, **options)
    assert text in str(info.value), str(info.value)


def test_without_remove_accidental_hits_pool_ids_are_optional():
    kw = _inputs()
    kw["negative_ids"] = None
    _compare(kw, remove_accidental_hits=False)
