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


def _log(x: np.ndarray, base: float | None) -> np.ndarray:
    with np.errstate(divide="ignore"):
        out = np.log(x)
    return out if base is None else out / math.log(base)


def _xlogy(x: np.ndarray, y: np.ndarray, base: float | None) -> np.ndarray:
    """``x * log(y)`` with ``0 * log(anything) = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(x == 0, 0.0, x * _log(np.where(x == 0, 1.0, y), base))
    return out


def self_information(p: Any, base: float | None = None) -> Any:
    """Information content of an outcome of probability ``p``: ``I = -log_base(p)``.

    ``p = 1`` carries no information, ``p -> 0`` carries unboundedly much
    (``I(0) = inf``). Elementwise; any shape.
    """
    arr, as_torch = _as_float64(p)
    return _back(-_log(arr, base), as_torch)


def entropy(p: Any, base: float | None = None, axis: int = -1) -> Any:
    """Shannon entropy ``H(p) = -sum_x p(x) log p(x)`` along ``axis``."""
    arr, as_torch = _as_float64(p)
    return _back(-_xlogy(arr, arr, base).sum(axis=axis), as_torch)


def cross_entropy(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Cross-entropy ``H(p, q) = -sum_x p(x) log q(x)`` along ``axis``.

    ``p`` is the true distribution, ``q`` the model's. Infinite where ``q`` puts zero mass
    on an outcome ``p`` gives mass to.
    """
    pa, as_torch = _as_float64(p)
    qa, q_torch = _as_float64(q)
    return _back(-_xlogy(pa, qa, base).sum(axis=axis), as_torch or q_torch)


def kl_divergence(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Relative entropy ``KL(p||q) = sum_x p(x) log(p(x)/q(x)) = H(p, q) - H(p)``."""
    pa, as_torch = _as_float64(p)
    qa, q_torch = _as_float64(q)
    terms = _xlogy(pa, pa, base) - _xlogy(pa, qa, base)
    return _back(terms.sum(axis=axis), as_torch or q_torch)


def js_divergence(p: Any, q: Any, base: float | None = None, axis: int = -1) -> Any:
    """Jensen-Shannon divergence ``KL(p||m)/2 + KL(q||m)/2`` with ``m = (p + q)/2``.

    Symmetric and bounded by ``log(2)`` (one bit with ``base=2``).
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
    """``log(sum_j exp(z_j))`` along ``axis``, computed stably by shifting by the max."""
    arr, as_torch = _as_float64(z)
    return _back(_logsumexp(arr, axis), as_torch)


def softmax(z: Any, axis: int = -1, temperature: float = 1.0) -> Any:
    """``exp(z_i / T) / sum_j exp(z_j / T)`` along ``axis`` (stable: shifted by the max)."""
    arr, as_torch = _as_float64(z)
    arr = arr / temperature
    lse = np.expand_dims(_logsumexp(arr, axis), axis)
    return _back(np.exp(arr - lse), as_torch)


def log_softmax(z: Any, axis: int = -1, temperature: float = 1.0) -> Any:
    """``z_i / T - logsumexp(z / T)`` along ``axis``."""
    arr, as_torch = _as_float64(z)
    arr = arr / temperature
    return _back(arr - np.expand_dims(_logsumexp(arr, axis), axis), as_torch)


def sigmoid(x: Any) -> Any:
    """Logistic function ``1 / (1 + exp(-x))``, elementwise, without overflow."""
    arr, as_torch = _as_float64(x)
    out = np.where(arr >= 0, 1.0 / (1.0 + np.exp(-np.abs(arr))),
                   np.exp(-np.abs(arr)) / (1.0 + np.exp(-np.abs(arr))))
    return _back(out, as_torch)


def binary_cross_entropy(p: Any, y: Any, base: float | None = None) -> Any:
    """Binary cross-entropy of predicted probability ``p`` for label ``y`` in [0, 1].

    ``-(y log p + (1 - y) log(1 - p))``, elementwise, unreduced, without PyTorch's clamp
    of the logarithm at -100 (this is the definition, not the implementation).
    """
    pa, as_torch = _as_float64(p)
    ya, y_torch = _as_float64(y)
    out = -(_xlogy(ya, pa, base) + _xlogy(1.0 - ya, 1.0 - pa, base))
    return _back(out, as_torch or y_torch)


def binary_cross_entropy_with_logits(x: Any, y: Any, pos_weight: Any = None) -> Any:
    """``-(pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))``, elementwise, stable.

    Uses ``log sigmoid(x) = -softplus(-x)`` and ``log(1 - sigmoid(x)) = -softplus(x)``.
    """
    xa, as_torch = _as_float64(x)
    ya, y_torch = _as_float64(y)
    pw = 1.0 if pos_weight is None else _as_float64(pos_weight)[0]
    softplus_neg = np.logaddexp(0.0, -xa)
    softplus_pos = np.logaddexp(0.0, xa)
    out = pw * ya * softplus_neg + (1.0 - ya) * softplus_pos
    return _back(out, as_torch or y_torch)


def cross_entropy_from_logits(logits: Any, target: Any, axis: int = -1) -> Any:
    """Per-example ``-log softmax(logits)[target]``: the multi-class loss, unreduced.

    ``target`` holds class indices (an integer array with ``logits``' shape minus ``axis``)
    or, when it has ``logits``' shape, class probabilities (then ``H(target, softmax)``).
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
