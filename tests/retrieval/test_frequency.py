"""crossent.retrieval.FrequencyEstimator: Yi et al.'s streaming frequency estimate.

Oracles: Algorithm 2 written as the paper's loop over the ids of each batch (a dict per
hash function), on the estimator's own buckets; the true sampling probabilities of
simulated streams (uniform and Zipf), as expected occurrences per step; for collisions,
the sum of the true probabilities of the ids sharing a bucket (one hash) and its minimum
over the hash functions (several hashes), as the paper describes.
"""

from __future__ import annotations

import math

import pytest
import torch

from crossent import ArgumentError, ArgumentTypeError
from crossent.retrieval import FrequencyEstimator


def _paper_loop(stream, buckets_of, alpha, num_hashes):
    """Algorithm 2 as written: for each step t, for each id y, in order."""
    A = [dict() for _ in range(num_hashes)]
    B = [dict() for _ in range(num_hashes)]
    for t, ids in enumerate(stream, start=1):
        h = buckets_of(ids)
        for j in range(len(ids)):
            for i in range(num_hashes):
                b = int(h[i, j])
                B[i][b] = (1 - alpha) * B[i].get(b, 0.0) + alpha * (t - A[i].get(b, 0))
                A[i][b] = t
    return A, B


def _stream(probs, batch, steps, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.multinomial(probs, batch, replacement=True, generator=g) for _ in range(steps)]


@pytest.mark.parametrize("num_hashes", [1, 3])
def test_state_equals_the_papers_loop_duplicates_included(num_hashes):
    est = FrequencyEstimator(num_buckets=7, learning_rate=0.3, num_hashes=num_hashes, seed=4)
    g = torch.Generator().manual_seed(0)
    stream = [torch.randint(-5, 12, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g)
              for _ in range(40)]
    for ids in stream:
        est.update(ids)
    A, B = _paper_loop(stream, est._buckets, 0.3, num_hashes)
    assert int(est.step) == 40
    for i in range(num_hashes):
        for b in range(7):
            assert int(est.last_step[i, b]) == A[i].get(b, 0)
            assert math.isclose(float(est.gap[i, b]), B[i].get(b, 0.0), rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("kind", ["uniform", "zipf"])
def test_converges_to_the_true_probability(kind):
    n, batch = (20, 8) if kind == "uniform" else (50, 32)
    if kind == "uniform":
        f = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        f = torch.arange(1, n + 1, dtype=torch.float64) ** -1.1
        f = f / f.sum()
    truth = batch * f  # expected occurrences per step: 1 / the mean gap
    est = FrequencyEstimator(num_buckets=1 << 16, learning_rate=0.01)
    for ids in _stream(f, batch, 4000, seed=1):
        est.update(ids)
    got = est.log_q(torch.arange(n)).double().exp()
    rel = (got / truth - 1).abs()
    assert rel.max() < 0.2, rel
    assert rel.mean() < 0.07, rel.mean()
    if kind == "zipf":  # the ranking of popularity is recovered
        assert torch.equal(torch.argsort(got[:6], descending=True), torch.arange(6))


def _shared(buckets, y):
    """The ids whose bucket (``buckets``: ``(n,)``, one hash) is id ``y``'s."""
    return [j for j in range(buckets.shape[0]) if buckets[y] == buckets[j]]


def test_collisions_add_the_probabilities_of_a_bucket():
    """One hash, fewer buckets than ids: each id's estimate is its bucket's, the sum of
    the probabilities of the ids in it (an over-estimate)."""
    n, batch = 12, 6
    f = torch.linspace(1, 3, n, dtype=torch.float64)
    f = f / f.sum()
    est = FrequencyEstimator(num_buckets=5, learning_rate=0.01, seed=2)
    for ids in _stream(f, batch, 5000, seed=3):
        est.update(ids)
    h = est._buckets(torch.arange(n))[0]
    got = est.log_q(torch.arange(n)).double().exp()
    want = torch.stack([batch * f[_shared(h, y)].sum() for y in range(n)])
    assert ((got / want - 1).abs() < 0.15).all(), (got, want)
    collided = torch.tensor([len(_shared(h, y)) > 1 for y in range(n)])
    assert collided.any()
    assert (got[collided] > 1.3 * batch * f[collided]).all()  # over-estimated


def test_more_hashes_take_the_least_shared_bucket():
    """Several hashes: the estimate is the minimum over hash functions of the bucket sums
    (``1 / max_i B_i``), closer to the truth than one hash of the same width."""
    n, batch, buckets = 12, 6, 6
    f = torch.linspace(1, 3, n, dtype=torch.float64)
    f = f / f.sum()
    stream = _stream(f, batch, 6000, seed=5)
    one = FrequencyEstimator(num_buckets=buckets, learning_rate=0.003, num_hashes=1, seed=7)
    four = FrequencyEstimator(num_buckets=buckets, learning_rate=0.003, num_hashes=4, seed=7)
    for ids in stream:
        one.update(ids)
        four.update(ids)
    truth = batch * f
    h = four._buckets(torch.arange(n))
    want = torch.stack([min(batch * f[_shared(h[i], y)].sum() for i in range(4))
                        for y in range(n)])
    got4 = four.log_q(torch.arange(n)).double().exp()
    got1 = one.log_q(torch.arange(n)).double().exp()
    assert ((got4 / want - 1).abs() < 0.15).all(), (got4, want)
    assert (got4 / truth - 1).abs().mean() < 0.5 * (got1 / truth - 1).abs().mean()


def test_unseen_ids_and_the_first_step():
    est = FrequencyEstimator(num_buckets=1 << 12)
    torch.testing.assert_close(est.log_q(torch.tensor([3])), torch.zeros(1))  # p = 1 at t = 0
    for _ in range(10):
        est.update(torch.tensor([1, 2]))
    unseen = est.log_q(torch.tensor([999]))
    torch.testing.assert_close(unseen, torch.tensor([-math.log(10.0)]))


def test_state_dict_round_trip_continues_the_same_stream():
    f = torch.full((30,), 1 / 30, dtype=torch.float64)
    stream = _stream(f, 5, 200, seed=9)
    a = FrequencyEstimator(num_buckets=64, learning_rate=0.05, num_hashes=2, seed=1)
    for ids in stream[:100]:
        a.update(ids)
    b = FrequencyEstimator(num_buckets=64, learning_rate=0.05, num_hashes=2, seed=1)
    b.load_state_dict(a.state_dict())
    for ids in stream[100:]:
        a.update(ids)
        b.update(ids)
    assert torch.equal(a.log_q(torch.arange(30)), b.log_q(torch.arange(30)))
    assert int(b.step) == 200


def test_log_q_feeds_the_loss():
    import crossent as ce

    est = FrequencyEstimator(num_buckets=256)
    ids = torch.tensor([4, 8, 15, 16])
    est.update(ids)
    loss = ce.sampled_softmax_loss(torch.randn(4, 3), torch.randn(4, 3), item_ids=ids,
                                   item_log_q=est.log_q(ids))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kwargs, kind, text", [
    (dict(num_buckets=0), ArgumentError, "num_buckets must be a positive int"),
    (dict(num_buckets=2.5), ArgumentTypeError, "num_buckets must be an int"),
    (dict(num_hashes=0), ArgumentError, "num_hashes must be a positive int"),
    (dict(learning_rate=0.0), ArgumentError, "learning_rate must be a positive number"),
    (dict(learning_rate=1.5), ArgumentError, "learning_rate must be in (0, 1]"),
    (dict(learning_rate=float("nan")), ArgumentError, "learning_rate must be a positive number"),
])
def test_constructor_errors(kwargs, kind, text):
    with pytest.raises(kind) as info:
        FrequencyEstimator(**kwargs)
    assert text in str(info.value)


@pytest.mark.parametrize("ids, kind, text", [
    (torch.tensor([1.0, 2.0]), ArgumentTypeError, "ids must hold int64 ids"),
    (torch.tensor([1, 2], dtype=torch.int32), ArgumentTypeError, "ids must hold int64 ids"),
    (torch.tensor([[1, 2]]), ArgumentError, "ids must be 1-D"),
    ([1, 2], ArgumentTypeError, "ids must be a torch.Tensor"),
])
@pytest.mark.parametrize("method", ["update", "log_q"])
def test_id_errors(ids, kind, text, method):
    est = FrequencyEstimator(num_buckets=8)
    with pytest.raises(kind) as info:
        getattr(est, method)(ids)
    assert text in str(info.value)
    assert int(est.step) == 0
