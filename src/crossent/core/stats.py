"""Streaming softmax statistics: per-row summaries of a tile of scores, and their merge.

This is the one primitive under every loss of the family. Walking the classes in tiles,
each row keeps::

    m      running max of the scores                       (for a stable exp)
    l      sum_c exp(z_c - m)                              (so logsumexp = m + log l)
    dot    sum_c t_c z_c                                   (target-weighted score sum)
    zexp   sum_c exp(z_c - m) z_c        [optional]        (entropy = lse - zexp / l)
    argmax index of the largest score    [optional]        (accuracy, monitoring)

and two tiles merge exactly (Milakov & Gimelshein, "Online normalizer calculation for
softmax", 2018)::

    m = max(m_a, m_b);  l = l_a e^(m_a - m) + l_b e^(m_b - m);  dot = dot_a + dot_b

Rows whose scores are all ``-inf`` keep ``m = -inf``, ``l = 0`` and so ``lse = -inf``
(as PyTorch's ``logsumexp``); ``exp`` is never evaluated at ``-inf - (-inf)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .targets import ClassIndexTarget, ClassProbTarget


class RowStats(NamedTuple):
    max: torch.Tensor  # (n,)
    sumexp: torch.Tensor  # (n,)
    dot: torch.Tensor  # (n,)
    zexp: torch.Tensor | None  # (n,) or None
    argmax: torch.Tensor | None  # (n,) int64 or None


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def tile_stats(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    entropy: bool = False,
    argmax: bool = False,
) -> RowStats:
    """Statistics of one tile ``z`` (``(n, k)``, accumulation dtype) of columns
    ``[col_start, col_start + k)``."""
    if entropy:
        # The entropy needs sum_c exp(z_c - m) z_c: the in-place pass on a copy gives it.
        return tile_stats_(z.clone(), target, col_start, entropy=True, argmax=argmax)
    dot = target.dot(z, col_start) if target is not None else z.new_zeros(z.shape[0])
    # (m, l) = (logsumexp, 1) is a valid state (m + log l = lse), and PyTorch's fused
    # logsumexp is faster than max / exp / sum written out.
    lse = torch.logsumexp(z, 1)
    if not argmax:
        return RowStats(lse, torch.ones_like(lse), dot, None, None)
    # merge() picks the argmax of the tile with the larger ``max``, so the state must
    # carry the true row max: (m, exp(lse - m)), m read at the argmax (no extra pass).
    local = z.argmax(1) if z.shape[1] else z.new_zeros(z.shape[:1], dtype=torch.long)
    m = z.gather(1, local[:, None]).squeeze(1) if z.shape[1] else lse
    sumexp = torch.where(m > -torch.inf, torch.exp(lse - _finite_or_zero(m)), 0.0)
    return RowStats(m, sumexp, dot, None, local + col_start)


def row_logsumexp(z: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """``logsumexp(z, 1)`` of a 2-D float tile through PyTorch's fused softmax kernel.

    ``p = softmax(z)`` is written into ``scratch`` (a buffer of ``z``'s shape, or ``z``
    itself, which is then overwritten: the kernel reads each element before writing it); at the
    row max ``m`` it holds ``p = e^0 / l = 1 / l``, which is also ``max_c p_c``, so
    ``lse = m + log l = m - log(max_c p_c)``. Two ``amax`` reductions and one softmax
    pass; on CPU about half the time of ``torch.logsumexp`` (which runs max, subtract,
    exp, sum and log as separate passes). Rows of ``-inf`` give ``-inf``; a row with a
    NaN gives NaN.
    """
    if z.shape[1] == 0:
        return z.new_full(z.shape[:1], -torch.inf)
    m = z.amax(1)
    p = torch._softmax(z, 1, False, out=scratch)
    lse = m - p.amax(1).log()
    return torch.where(m == -torch.inf, m, lse)


def _rescale(part_max: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """``exp(part_max - m)`` (``safe``: the merged max ``m``, 0 where it is ``-inf``), and 0
    for a part with no mass (``part_max = -inf``, e.g. the empty state).

    Selected with ``where``, never masked by a product: for the empty state against a
    tile whose max is below about -88.7 (float32), ``exp(0 - m)`` overflows to ``inf``
    and ``inf * 0`` would be NaN."""
    zero = torch.zeros((), dtype=safe.dtype, device=safe.device)
    return torch.where(part_max > -torch.inf, torch.exp(part_max - safe), zero)


def merge(a: RowStats, b: RowStats) -> RowStats:
    """Combine the statistics of two disjoint column ranges (``a`` before ``b``)."""
    m = torch.maximum(a.max, b.max)
    safe = _finite_or_zero(m)
    scale_a = _rescale(a.max, safe)
    scale_b = _rescale(b.max, safe)
    sumexp = a.sumexp * scale_a + b.sumexp * scale_b
    zexp = None
    if a.zexp is not None and b.zexp is not None:
        zexp = a.zexp * scale_a + b.zexp * scale_b
    best = None
    if a.argmax is not None and b.argmax is not None:
        best = torch.where(b.max > a.max, b.argmax, a.argmax)  # ties keep the first column
    return RowStats(m, sumexp, a.dot + b.dot, zexp, best)


def logsumexp(stats: RowStats) -> torch.Tensor:
    """``m + log(l)``: ``-inf`` for an empty or all ``-inf`` row (``m = -inf``, whatever
    ``l`` holds: a state ``(lse, 1)`` of an all ``-inf`` tile has ``l = 1``)."""
    return torch.where(stats.max == -torch.inf, stats.max,
                       _finite_or_zero(stats.max) + torch.log(stats.sumexp))


def entropy(stats: RowStats, lse: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(z)`` in nats: ``lse - sum_c p_c z_c``."""
    if stats.zexp is None:
        raise ValueError("entropy needs statistics gathered with entropy=True")
    return lse - stats.zexp / stats.sumexp


def tile_stats_(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    entropy: bool = False,
    argmax: bool = False,
) -> RowStats:
    """:func:`tile_stats` that reuses ``z``'s storage: on return ``z`` holds
    ``exp(z - m)`` (``m`` the row max), ready to become ``softmax`` by one division.

    For fused passes that need the exponentials next (a gradient tile) and cannot
    afford a second tile-sized buffer. Only ``entropy=True`` allocates a temporary.
    """
    dot = target.dot(z, col_start) if target is not None else z.new_zeros(z.shape[0])
    best = z.argmax(1) + col_start if argmax else None
    m = z.amax(1) if z.shape[1] else z.new_full(z.shape[:1], -torch.inf)
    safe = _finite_or_zero(m).unsqueeze(1)
    zexp = None
    if entropy:
        e = torch.exp(z - safe)
        zexp = torch.where(e > 0, e * z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
        del e
    z.sub_(safe).exp_()
    return RowStats(m, z.sum(1), dot, zexp, best)


def softmax_stats_(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    argmax: bool = False,
) -> RowStats:
    """:func:`tile_stats_` for a tile of *whole* rows, leaving ``softmax(z)`` in ``z``
    (not ``exp(z - m)``): no division is left for the caller.

    PyTorch's fused row kernel runs in place (it reads each element before writing it),
    so after the max the tile is read once and written once, with each row cached in
    between; ``max`` / ``sub`` / ``exp`` / ``sum`` written out pass over the tile four
    times. The state is ``(m, l)`` with ``l = 1 / p(argmax)``, since the softmax at the
    row max is ``e^0 / l`` (as :func:`row_logsumexp`). Finite rows only (a row of
    ``-inf`` gives NaN here); no entropy.
    """
    dot = target.dot(z, col_start) if target is not None else z.new_zeros(z.shape[0])
    m, best = z.max(1)
    torch._softmax(z, 1, False, out=z)
    sumexp = z.gather(1, best.unsqueeze(1)).squeeze(1).reciprocal()
    return RowStats(m, sumexp, dot, None, best + col_start if argmax else None)


def cross_entropy_rows(
    lse: torch.Tensor,
    dot: torch.Tensor,
    mass: torch.Tensor,
    valid: torch.Tensor | None = None,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Per-row cross-entropy from the statistics, the one formula every path shares::

        loss_i = mass_i * lse_i - dot_i + z_loss * lse_i^2     (0 on rows not ``valid``)

    ``mass_i * lse_i - dot_i = sum_c t_ic (lse_i - z_ic)``; the z-loss is PaLM's
    auxiliary ``log^2 Z`` (Chowdhery et al. 2022).
    """
    rows = mass * lse - dot
    if z_loss:
        rows = rows + z_loss * lse.square()
    if valid is None:
        return rows
    return torch.where(valid, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
