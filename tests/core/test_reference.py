"""crossent.reference: the float64 definitions themselves.

Known closed-form values, the identities the module states, bits/nats/bans, the 0·log 0
convention, stability, return types (numpy in -> numpy/float out, torch in -> float64 tensor
out), and agreement with PyTorch's float64 functions where the definitions coincide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossent import reference as R

LN2 = math.log(2.0)

P = np.array([0.1, 0.2, 0.3, 0.4])
Q = np.array([0.25, 0.25, 0.25, 0.25])
P_ZERO = np.array([0.5, 0.0, 0.5, 0.0])


# ----------------------------------------------------------------------------- known values


def test_self_information_known_values():
    assert R.self_information(0.5, base=2) == pytest.approx(1.0)
    assert R.self_information(1.0) == 0.0
    assert R.self_information(0.0) == math.inf
    assert R.self_information(1 / math.e) == pytest.approx(1.0)
    np.testing.assert_allclose(R.self_information([0.25, 0.125], base=2), [2.0, 3.0])


def test_entropy_of_uniform_is_log_n():
    for n in (1, 2, 7, 100):
        assert R.entropy(np.full(n, 1.0 / n)) == pytest.approx(math.log(n))
        assert R.entropy(np.full(n, 1.0 / n), base=2) == pytest.approx(math.log2(n))


def test_entropy_fair_coin_is_one_bit():
    assert R.entropy([0.5, 0.5], base=2) == pytest.approx(1.0)


def test_entropy_of_a_certain_outcome_is_zero():
    assert R.entropy([0.0, 1.0, 0.0]) == 0.0


def test_zero_log_zero_is_zero():
    assert math.isfinite(R.entropy(P_ZERO))
    assert R.entropy(P_ZERO) == pytest.approx(math.log(2))
    assert R.cross_entropy(P_ZERO, [0.5, 0.0, 0.5, 0.0]) == pytest.approx(math.log(2))
    assert R.kl_divergence(P_ZERO, [0.5, 0.0, 0.5, 0.0]) == 0.0


def test_cross_entropy_is_infinite_where_q_misses_mass():
    assert R.cross_entropy([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert R.kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf


def test_entropy_base_10_bans():
    assert R.entropy(np.full(10, 0.1), base=10) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- identities


def test_cross_entropy_equals_entropy_plus_kl():
    assert R.cross_entropy(P, Q) == pytest.approx(R.entropy(P) + R.kl_divergence(P, Q))
    assert R.cross_entropy(Q, P) == pytest.approx(R.entropy(Q) + R.kl_divergence(Q, P))


def test_kl_of_a_distribution_with_itself_is_zero():
    assert R.kl_divergence(P, P) == pytest.approx(0.0, abs=1e-15)


def test_kl_is_not_symmetric_but_nonnegative():
    a, b = R.kl_divergence(P, Q), R.kl_divergence(Q, P)
    assert a > 0 and b > 0 and a != pytest.approx(b)


def test_js_symmetric_bounded_and_zero_on_equal():
    assert R.js_divergence(P, Q) == pytest.approx(R.js_divergence(Q, P))
    assert 0.0 <= R.js_divergence(P, Q) <= LN2
    assert R.js_divergence(P, P) == pytest.approx(0.0, abs=1e-15)


def test_js_of_disjoint_supports_is_one_bit():
    assert R.js_divergence([1.0, 0.0], [0.0, 1.0], base=2) == pytest.approx(1.0)
    assert R.js_divergence([1.0, 0.0], [0.0, 1.0]) == pytest.approx(LN2)


@pytest.mark.parametrize("fn", [R.entropy, R.self_information])
def test_bits_are_nats_over_ln2_unary(fn):
    np.testing.assert_allclose(fn(P, base=2), np.asarray(fn(P)) / LN2)


@pytest.mark.parametrize("fn", [R.cross_entropy, R.kl_divergence, R.js_divergence])
def test_bits_are_nats_over_ln2_binary(fn):
    assert fn(P, Q, base=2) == pytest.approx(fn(P, Q) / LN2)


def test_binary_cross_entropy_bits():
    np.testing.assert_allclose(
        R.binary_cross_entropy([0.5, 0.25], [1.0, 0.0], base=2), [1.0, math.log2(4 / 3)]
    )


# ----------------------------------------------------------------------------- softmax family


def test_softmax_sums_to_one_and_is_shift_invariant():
    z = np.array([[1.0, 2.0, 3.0], [-5.0, 0.0, 5.0]])
    s = R.softmax(z)
    np.testing.assert_allclose(s.sum(-1), 1.0)
    np.testing.assert_allclose(R.softmax(z + 100.0), s)


def test_log_softmax_and_logsumexp_are_stable_for_huge_logits():
    z = np.array([1e4, 0.0, -1e4])
    assert R.logsumexp(z) == pytest.approx(1e4)
    np.testing.assert_allclose(R.log_softmax(z), [0.0, -1e4, -2e4])


def test_logsumexp_all_minus_inf():
    assert R.logsumexp(np.array([-np.inf, -np.inf])) == -math.inf


def test_softmax_temperature():
    z = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(R.softmax(z, temperature=2.0), R.softmax(z / 2.0))
    np.testing.assert_allclose(R.log_softmax(z, temperature=0.5), R.log_softmax(z * 2.0))


def test_softmax_axis():
    z = np.random.default_rng(0).normal(size=(3, 4))
    np.testing.assert_allclose(R.softmax(z, axis=0).sum(0), 1.0)


def test_sigmoid_does_not_overflow():
    with np.errstate(over="raise"):
        s = R.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_allclose(s, [0.0, 0.5, 1.0])


def test_bce_is_not_clamped():
    # the definition: -log(0) = inf (PyTorch's implementation clamps the log at -100)
    assert R.binary_cross_entropy(0.0, 1.0) == math.inf
    assert R.binary_cross_entropy(0.0, 0.0) == 0.0


def test_bce_with_logits_is_bce_of_sigmoid():
    x = np.array([-3.0, -0.5, 0.0, 2.0])
    y = np.array([0.0, 1.0, 0.3, 1.0])
    np.testing.assert_allclose(
        R.binary_cross_entropy_with_logits(x, y), R.binary_cross_entropy(R.sigmoid(x), y)
    )


def test_bce_with_logits_stable_for_huge_logits():
    out = R.binary_cross_entropy_with_logits(np.array([1e4, -1e4]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(out, [1e4, 1e4])


def test_cross_entropy_from_logits_index_equals_one_hot():
    z = np.random.default_rng(1).normal(size=(4, 5))
    y = np.array([0, 4, 2, 2])
    np.testing.assert_allclose(
        R.cross_entropy_from_logits(z, y), R.cross_entropy_from_logits(z, np.eye(5)[y])
    )
    np.testing.assert_allclose(
        R.cross_entropy_from_logits(z, y), -R.log_softmax(z)[np.arange(4), y]
    )


def test_cross_entropy_from_logits_probabilities_is_h_of_target_and_softmax():
    rng = np.random.default_rng(2)
    z, t = rng.normal(size=(3, 4)), rng.dirichlet(np.ones(4), size=3)
    np.testing.assert_allclose(R.cross_entropy_from_logits(z, t), R.cross_entropy(t, R.softmax(z)))


# ----------------------------------------------------------------------------- types


def test_numpy_in_numpy_out_and_scalar_float():
    assert isinstance(R.entropy(P), float)
    assert isinstance(R.entropy(np.stack([P, Q])), np.ndarray)
    assert isinstance(R.softmax(P), np.ndarray)


def test_torch_in_float64_tensor_out():
    out = R.entropy(torch.tensor(P, dtype=torch.float32))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64


def test_torch_with_grad_and_lists_are_accepted():
    t = torch.tensor(P, requires_grad=True)
    assert float(R.entropy(t)) == pytest.approx(R.entropy(P.tolist()))


_UNARY = [R.entropy, R.self_information, R.softmax, R.log_softmax, R.logsumexp, R.sigmoid]
_BINARY = [R.cross_entropy, R.kl_divergence, R.js_divergence, R.binary_cross_entropy,
           R.binary_cross_entropy_with_logits]


@pytest.mark.parametrize("fn", _UNARY, ids=lambda f: f.__name__)
def test_numpy_and_torch_inputs_agree_unary(fn):
    a = np.random.default_rng(3).dirichlet(np.ones(5), size=3)
    np.testing.assert_array_equal(fn(torch.from_numpy(a)).numpy(), fn(a))


@pytest.mark.parametrize("fn", _BINARY, ids=lambda f: f.__name__)
def test_numpy_and_torch_inputs_agree_binary(fn):
    rng = np.random.default_rng(4)
    a, b = rng.dirichlet(np.ones(5), size=3), rng.dirichlet(np.ones(5), size=3)
    expected = fn(a, b)
    np.testing.assert_array_equal(fn(torch.from_numpy(a), torch.from_numpy(b)).numpy(), expected)
    np.testing.assert_array_equal(fn(torch.from_numpy(a), b).numpy(), expected)
    np.testing.assert_array_equal(fn(a, torch.from_numpy(b)).numpy(), expected)


# ----------------------------------------------------------------------------- vs torch float64


def test_reference_matches_torch_float64():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64) * 3
    t = torch.softmax(torch.randn(4, 6, generator=g, dtype=torch.float64), -1)
    y = torch.randint(0, 6, (4,), generator=g)
    torch.testing.assert_close(R.log_softmax(z), torch.log_softmax(z, -1))
    torch.testing.assert_close(R.softmax(z), torch.softmax(z, -1))
    torch.testing.assert_close(R.logsumexp(z), torch.logsumexp(z, -1))
    torch.testing.assert_close(R.sigmoid(z), torch.sigmoid(z))
    torch.testing.assert_close(
        R.cross_entropy_from_logits(z, y), F.cross_entropy(z, y, reduction="none")
    )
    torch.testing.assert_close(
        R.cross_entropy_from_logits(z, t), F.cross_entropy(z, t, reduction="none")
    )
    torch.testing.assert_close(
        R.kl_divergence(t, torch.softmax(z, -1)),
        F.kl_div(torch.log_softmax(z, -1), t, reduction="none").sum(-1),
    )
    p = torch.sigmoid(z)
    yb = torch.rand(4, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        R.binary_cross_entropy(p, yb), F.binary_cross_entropy(p, yb, reduction="none")
    )
    pw = torch.rand(6, generator=g, dtype=torch.float64) + 0.5
    torch.testing.assert_close(
        R.binary_cross_entropy_with_logits(z, yb, pos_weight=pw),
        F.binary_cross_entropy_with_logits(z, yb, pos_weight=pw, reduction="none"),
    )
    torch.testing.assert_close(R.entropy(t), -(t * t.log()).sum(-1))
