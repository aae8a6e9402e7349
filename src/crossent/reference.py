"""The definitions, written plainly: the float64 oracle for tests and for reading.

Every function here accepts NumPy arrays, Python sequences/scalars and torch tensors. The
computation is done in float64 with NumPy; the result comes back as the caller gave it:
a torch tensor (float64, on the CPU) for a tensor argument, otherwise a NumPy array, or a
Python float for a 0-d result.

Information is measured in nats by default; ``base=2`` gives bits, ``base=10`` bans
(hartleys). Distributions live along ``axis`` (the last one by default). The convention
``0 * log 0 = 0`` is used throughout (a zero-probability outcome contributes nothing).

Definitions (for distributions ``p`` and ``q`` over the same outcomes)::

    I(x)      = -log p(x)                            self-information (surprisal)
    H(p)      = -sum_x p(x) log p(x)                 entropy
    H(p, q)   = -sum_x p(x) log q(x)                 cross-entropy
    KL(p||q)  =  sum_x p(x) log(p(x) / q(x))          Kullback-Leibler divergence
    JS(p, q)  = KL(p||m)/2 + KL(q||m)/2, m=(p+q)/2   Jensen-Shannon divergence

    H(p, q) = H(p) + KL(p||q)    (tested as an identity)

    softmax(z)_i     = exp(z_i) / sum_j exp(z_j)
    log_softmax(z)_i = z_i - logsumexp(z)
    sigmoid(x)       = 1 / (1 + exp(-x))
    BCE(p, y)        = -(y log p + (1 - y) log(1 - p))

Shannon, "A Mathematical Theory of Communication" (1948); Kullback & Leibler, "On
Information and Sufficiency" (1951); Lin, "Divergence measures based on the Shannon
entropy" (1991).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "self_information",
    "entropy",
    "cross_entropy",
    "kl_divergence",
    "js_divergence",
    "logsumexp",
    "softmax",
    "log_softmax",
    "sigmoid",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy_from_logits",
]


def _as_float64(x: Any) -> tuple[np.ndarray, bool]:
    """Return ``x`` as a float64 NumPy array and whether it came as a torch tensor."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64).numpy(), True
    except ImportError:  # pragma: no cover - torch is a dependency, but keep numpy-only use
        pass
    return np.asarray(x, dtype=np.float64), False


def _back(value: np.ndarray, as_torch: bool) -> Any:
    """Return ``value`` in the caller's kind: a float64 tensor, a NumPy array or a float."""
    if as_torch:
        import torch

        return torch.from_numpy(np.array(value, dtype=np.float64))
    if np.ndim(value) == 0:
        return float(value)
    return value


def _positive(name: str, value: float, *, not_one: bool = False) -> float:
    """A finite number > 0 (and != 1 for a logarithm's base), else ``ValueError`` naming
    it (kept NumPy-only, like the rest of this module)."""
    value = float(value)
    if not (value > 0 and math.isfinite(value)) or (not_one and value == 1.0):
        expected = "a positive number other than 1" if not_one else "a positive number"
        raise ValueError(f"{name} must be {expected} (finite, > 0), got {value}")
    return value


def _log(x: np.ndarray, base: float | None) -> np.ndarray:
    if base is not None:
        base = _positive("base", base, not_one=True)
    with np.errstate(divide="ignore"):
        out = np.log(x)
    return out if base is None else out / math.log(base)


def _xlogy(x: np.ndarray, y: np.ndarray, base: float | None) -> np.ndarray:
    """``x * log(y)`` with ``0 * log(anything) = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x == 0, 0.0, x * _log(np.where(x == 0, 1.0, y), base))
    return out


def self_information(p: Any, base: float | None = None) -> Any:
    """Information content (surprisal) of an outcome of probability ``p``.

    ::

        I(p) = -log_base(p)

    ``p = 1`` carries no information, ``p -> 0`` carries unboundedly much
    (``I(0) = inf``).

    Args:
        p: probabilities (array-like or tensor).
        base: the logarithm's base (``None``: nats; 2: bits).
    Shape:
        elementwise; any shape.
    Returns:
        ``I``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.self_information(0.5, base=2)  # one bit
        1.0
        >>> R.self_information([0.25, 0.0], base=2)
        array([ 2., inf])

    References:
        Shannon, "A Mathematical Theory of Communication", 1948.
    """
    arr, as_torch = _as_float64(p)
    return _back(-_log(arr, base), as_torch)


def entropy(p: Any, base: float | None = None, axis: int = -1) -> Any:
    """Shannon entropy of the distribution ``p`` along ``axis``.

    ::

        H(p) = -sum_x p(x) log p(x)           (0 log 0 = 0)

    Args:
        p: a distribution (array-like or tensor).
        base: the logarithm's base (``None``: nats; 2: bits).
        axis: the axis the distributions live along.
    Shape:
        ``p`` of any shape; the output drops ``axis``.
    Returns:
        ``H(p)``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.entropy([0.5, 0.5], base=2)  # a fair coin: one bit
        1.0
        >>> round(R.entropy([0.9, 0.1]), 4)
        0.3251

    References:
        Shannon, "A Mathematical Theory of Communication", 1948.
    """
    arr, as_torch = _as_float64(p)
    return _back(-_xlogy(arr, arr, base).sum(axis=axis), as_torch)


def cross_entropy(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Cross-entropy of the model distribution ``q`` under the true distribution ``p``.

    ::

        H(p, q) = -sum_x p(x) log q(x) = H(p) + KL(p||q)

    Infinite where ``q`` puts zero mass on an outcome ``p`` gives mass to.

    Args:
        p: the true distribution.
        q: the model's distribution.
        base: the logarithm's base (``None``: nats; 2: bits).
        axis: the axis the distributions live along.
    Shape:
        ``p`` and ``q`` the same shape; the output drops ``axis``.
    Returns:
        ``H(p, q)``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> p, q = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
        >>> R.cross_entropy(p, q, base=2), R.entropy(p, base=2), R.kl_divergence(p, q, base=2)
        (1.75, 1.5, 0.25)

    References:
        Shannon, "A Mathematical Theory of Communication", 1948.
    """
    pa, as_torch = _as_float64(p)
    qa, q_torch = _as_float64(q)
    return _back(-_xlogy(pa, qa, base).sum(axis=axis), as_torch or q_torch)


def kl_divergence(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Relative entropy (Kullback-Leibler divergence) of ``q`` from ``p``.

    ::

        KL(p||q) = sum_x p(x) log(p(x) / q(x)) = H(p, q) - H(p)

    Args:
        p: the true distribution.
        q: the model's distribution.
        base: the logarithm's base (``None``: nats; 2: bits).
        axis: the axis the distributions live along.
    Shape:
        ``p`` and ``q`` the same shape; the output drops ``axis``.
    Returns:
        ``KL(p||q)``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.kl_divergence([0.5, 0.25, 0.25], [0.25, 0.25, 0.5], base=2)
        0.25
        >>> R.kl_divergence([0.5, 0.5], [0.5, 0.5])
        0.0

    References:
        Kullback & Leibler, "On Information and Sufficiency", 1951.
    """
    pa, as_torch = _as_float64(p)
    qa, q_torch = _as_float64(q)
    terms = _xlogy(pa, pa, base) - _xlogy(pa, qa, base)
    return _back(terms.sum(axis=axis), as_torch or q_torch)


def js_divergence(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Jensen-Shannon divergence of ``p`` and ``q``: symmetric, at most ``log 2``.

    ::

        JS(p, q) = KL(p||m)/2 + KL(q||m)/2,    m = (p + q)/2

    Args:
        p, q: the two distributions.
        base: the logarithm's base (``None``: nats; 2: bits).
        axis: the axis the distributions live along.
    Shape:
        ``p`` and ``q`` the same shape; the output drops ``axis``.
    Returns:
        ``JS(p, q)``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.js_divergence([1.0, 0.0], [0.0, 1.0], base=2)  # disjoint: the bound, one bit
        1.0

    References:
        Lin, "Divergence Measures Based on the Shannon Entropy", 1991.
    """
    pa, as_torch = _as_float64(p)
    qa, q_torch = _as_float64(q)
    m = 0.5 * (pa + qa)
    kl_pm = (_xlogy(pa, pa, base) - _xlogy(pa, m, base)).sum(axis=axis)
    kl_qm = (_xlogy(qa, qa, base) - _xlogy(qa, m, base)).sum(axis=axis)
    return _back(0.5 * (kl_pm + kl_qm), as_torch or q_torch)


def _logsumexp(z: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True)) + m).squeeze(axis)


def logsumexp(z: Any, axis: int = -1) -> Any:
    """Log-sum-exp along ``axis``, computed stably by shifting by the max.

    ::

        logsumexp(z) = m + log(sum_j exp(z_j - m)),    m = max_j z_j

    Args:
        z: scores (array-like or tensor).
        axis: the axis the distributions live along.
    Shape:
        ``z`` of any shape; the output drops ``axis``.
    Returns:
        The log-sum-exp, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.logsumexp([1000.0, 1000.0])  # 1000 + log 2, no overflow
        1000.6931471805599

    References:
        See the module docstring.
    """
    arr, as_torch = _as_float64(z)
    return _back(_logsumexp(arr, axis), as_torch)


def softmax(z: Any, axis: int = -1, temperature: float = 1.0) -> Any:
    """Softmax at temperature ``T`` along ``axis`` (stable: shifted by the max).

    ::

        softmax(z)_i = exp(z_i / T) / sum_j exp(z_j / T)

    Args:
        z: scores (array-like or tensor).
        axis: the axis the distributions live along.
        temperature: ``T``.
    Shape:
        any; the output has ``z``'s shape.
    Returns:
        The probabilities, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.softmax([1.0, 2.0, 3.0]).round(4)
        array([0.09  , 0.2447, 0.6652])
        >>> R.softmax([1.0, 2.0, 3.0], temperature=1e9).round(4)  # high T: uniform
        array([0.3333, 0.3333, 0.3333])

    References:
        Bridle, "Probabilistic Interpretation of Feedforward Classification Network
        Outputs", 1990.
    """
    arr, as_torch = _as_float64(z)
    arr = arr / _positive("temperature", temperature)
    lse = np.expand_dims(_logsumexp(arr, axis), axis)
    return _back(np.exp(arr - lse), as_torch)


def log_softmax(z: Any, axis: int = -1, temperature: float = 1.0) -> Any:
    """Log-softmax at temperature ``T`` along ``axis``.

    ::

        log_softmax(z)_i = z_i / T - logsumexp(z / T)

    Args:
        z: scores (array-like or tensor).
        axis: the axis the distributions live along.
        temperature: ``T``.
    Shape:
        any; the output has ``z``'s shape.
    Returns:
        The log-probabilities, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.log_softmax([1000.0, 0.0])
        array([    0., -1000.])

    References:
        See the module docstring.
    """
    arr, as_torch = _as_float64(z)
    arr = arr / _positive("temperature", temperature)
    return _back(arr - np.expand_dims(_logsumexp(arr, axis), axis), as_torch)


def sigmoid(x: Any) -> Any:
    """Logistic function, elementwise, without overflow.

    ::

        sigmoid(x) = 1 / (1 + exp(-x))

    Args:
        x: scores (array-like or tensor).
    Shape:
        any; the output has ``x``'s shape.
    Returns:
        ``sigmoid(x)``, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.sigmoid([-1000.0, 0.0, 1000.0])
        array([0. , 0.5, 1. ])

    References:
        See the module docstring.
    """
    arr, as_torch = _as_float64(x)
    out = np.where(arr >= 0, 1.0 / (1.0 + np.exp(-np.abs(arr))),
                   np.exp(-np.abs(arr)) / (1.0 + np.exp(-np.abs(arr))))
    return _back(out, as_torch)


def binary_cross_entropy(p: Any, y: Any, base: float | None = None) -> Any:
    """Binary cross-entropy of predicted probability ``p`` for label ``y`` in [0, 1].

    ::

        BCE(p, y) = -(y log p + (1 - y) log(1 - p))

    Elementwise, unreduced, without PyTorch's clamp of the logarithm at -100 (this is the
    definition, not the implementation).

    Args:
        p: predicted probabilities.
        y: labels in ``[0, 1]``.
        base: the logarithm's base (``None``: nats; 2: bits).
    Shape:
        ``p`` and ``y`` broadcast; elementwise.
    Returns:
        The per-element loss, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.binary_cross_entropy(0.5, 1.0, base=2)
        1.0
        >>> R.binary_cross_entropy(0.0, 1.0)  # no clamp
        inf

    References:
        See the module docstring.
    """
    pa, as_torch = _as_float64(p)
    ya, y_torch = _as_float64(y)
    out = -(_xlogy(ya, pa, base) + _xlogy(1.0 - ya, 1.0 - pa, base))
    return _back(out, as_torch or y_torch)


def binary_cross_entropy_with_logits(x: Any, y: Any, pos_weight: Any = None) -> Any:
    """Binary cross-entropy on logits ``x``, elementwise, stable.

    ::

        loss = -(pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))

    Uses ``log sigmoid(x) = -softplus(-x)`` and ``log(1 - sigmoid(x)) = -softplus(x)``.

    Args:
        x: logits.
        y: labels in ``[0, 1]``.
        pos_weight: optional weight ``pw`` of the positive term.
    Shape:
        ``x`` and ``y`` broadcast; elementwise.
    Returns:
        The per-element loss, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> from crossent import reference as R
        >>> R.binary_cross_entropy_with_logits([-1000.0], [1.0])
        array([1000.])

    References:
        See the module docstring.
    """
    xa, as_torch = _as_float64(x)
    ya, y_torch = _as_float64(y)
    pw = 1.0 if pos_weight is None else _as_float64(pos_weight)[0]
    softplus_neg = np.logaddexp(0.0, -xa)
    softplus_pos = np.logaddexp(0.0, xa)
    out = pw * ya * softplus_neg + (1.0 - ya) * softplus_pos
    return _back(out, as_torch or y_torch)


def cross_entropy_from_logits(logits: Any, target: Any, axis: int = -1) -> Any:
    """Per-example multi-class cross-entropy on logits, unreduced.

    ::

        loss = -log softmax(logits)[target]          (class indices)
        loss = H(target, softmax(logits))            (class probabilities)

    ``target`` holds class indices (an integer array with ``logits``' shape minus ``axis``)
    or, when it has ``logits``' shape, class probabilities (then ``H(target, softmax)``).

    Args:
        logits: scores.
        target: class indices or class probabilities.
        axis: the class axis.
    Shape:
        logits ``(..., C)``; target ``(...)`` or ``(..., C)``; the output ``(...)``.
    Returns:
        The per-example loss, in the caller's kind: a float64 CPU tensor for a tensor argument, else a
        NumPy array, or a float for a 0-d result.
    Example:
        >>> import torch
        >>> from crossent import reference as R
        >>> x, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([2])
        >>> loss = R.cross_entropy_from_logits(x, y)
        >>> loss.dtype
        torch.float64
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(x.double(), y, reduction="none"))
        True

    References:
        See the module docstring.
    """
    za, as_torch = _as_float64(logits)
    logp = za - np.expand_dims(_logsumexp(za, axis), axis)
    try:
        import torch

        if isinstance(target, torch.Tensor):
            target = target.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    t = np.asarray(target)
    if t.shape == za.shape:
        tf = t.astype(np.float64)
        out = -np.where(tf == 0, 0.0, tf * logp).sum(axis=axis)
    else:
        idx = np.expand_dims(t.astype(np.int64), axis)
        out = -np.take_along_axis(logp, idx, axis=axis).squeeze(axis)
    return _back(out, as_torch)
