"""Streaming softmax statistics: per-row summaries of a tile of scores, and their merge.

This is the one primitive under every loss of the family. Walking the classes in tiles,
each row keeps, relative to its reference ``r = m`` (0 while ``m = -inf``)::

    m      running max of the scores                       (for a stable exp)
    l      sum_c exp(z_c - m)                              (so logsumexp = m + log l)
    dot    sum_c t_c (z_c - r)                             (target-weighted score sum)
    mass   sum_c t_c                                       (target mass seen)
    zexp   sum_c exp(z_c - m) (z_c - r)  [optional]        (entropy = log l - zexp / l)
    argmax index of the largest score    [optional]        (accuracy, monitoring)

and two tiles merge exactly (Milakov & Gimelshein, "Online normalizer calculation for
softmax", 2018), the sums re-referenced to the merged max::

    m = max(m_a, m_b);  l = l_a e^(m_a - m) + l_b e^(m_b - m)
    dot = dot_a + mass_a (m_a - m) + dot_b + mass_b (m_b - m);  mass = mass_a + mass_b

Relative to the row max, every term of ``loss = mass (lse - m) - dot = mass log l +
sum_c t_c (m - z_c)`` is non-negative (for a non-negative target): the loss is never the
difference of two large numbers, whatever the scores' magnitude (``mass * lse - dot``
loses ``ulp(lse)``: 5e-4 at scores of 1e4, everything at 1e30).
:func:`cross_entropy_rows` is that formula.

Rows whose scores are all ``-inf`` keep ``m = -inf``, ``l = 0`` and so ``lse = -inf``
(as PyTorch's ``logsumexp``); ``exp`` is never evaluated at ``-inf - (-inf)``, and a
state with no mass is never scaled by a factor that can overflow.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .targets import ClassIndexTarget, ClassProbTarget


class RowStats(NamedTuple):
    max: torch.Tensor  # (n,)
    sumexp: torch.Tensor  # (n,)
    dot: torch.Tensor  # (n,), relative to reference(max)
    zexp: torch.Tensor | None  # (n,) or None, relative to reference(max)
    argmax: torch.Tensor | None  # (n,) int64 or None
    mass: torch.Tensor | None = None  # (n,), target mass seen; None: dot is never moved
    # between references (no target, or sums that callers keep absolute)


def _finite_or_zero(m: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def reference(stats: RowStats) -> torch.Tensor:
    """The per-row shift ``dot`` and ``zexp`` are relative to: the max, 0 where it is
    not finite."""
    return _finite_or_zero(stats.max)


def _dot(z: torch.Tensor, target, col_start: int, shift: torch.Tensor | None):
    """``(sum_c t_c (z_c - shift), tile mass)`` of a tile, or ``(0, None)`` without target."""
    if target is None:
        return z.new_zeros(z.shape[0]), None
    return target.dot(z, col_start, shift), target.tile_mass(col_start, z.shape[1])


def _shift_is_free(target) -> bool:
    """Whether ``target.dot(z, shift=...)`` costs no tile-sized work (one picked score per
    row); else the tile itself is shifted first."""
    return target is None or (isinstance(target, ClassIndexTarget) and not target.label_smoothing)


def tile_stats(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    entropy: bool = False,
    argmax: bool = False,
) -> RowStats:
    """Statistics of one tile ``z`` (``(n, k)``, accumulation dtype) of columns
    ``[col_start, col_start + k)``; ``z`` is not modified."""
    if entropy:
        # The entropy needs sum_c exp(z_c - m) (z_c - m): the in-place pass on a copy gives it.
        return tile_stats_(z.clone(), target, col_start, entropy=True, argmax=argmax)
    if z.shape[1] == 0:
        m = z.new_full(z.shape[:1], -torch.inf)
        dot, mass = _dot(z, target, col_start, None)
        best = z.new_zeros(z.shape[:1], dtype=torch.long) + col_start if argmax else None
        return RowStats(m, torch.zeros_like(m), dot, None, best, mass)
    # (m, l) with m the row max, an exact score: lse = m + log l keeps its digits at any
    # magnitude (a state (logsumexp, 1) would round lse to ulp(lse) first). l comes from
    # PyTorch's fused softmax, whose value at the max is 1 / l (as row_logsumexp).
    m, local = z.max(1)
    ref = _finite_or_zero(m)
    # row-major whatever z's layout (z may be a transposed tile): the in-place softmax
    # below runs over rows
    shifted = torch.sub(z, ref.unsqueeze(1), out=torch.empty(z.shape, dtype=z.dtype, device=z.device))
    dot, mass = _dot(shifted, target, col_start, None)
    p = torch._softmax(shifted, 1, False, out=shifted)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    # (NaN rows stay NaN: only a max of -inf means no mass)
    sumexp = torch.where(m == -torch.inf, zero, p.gather(1, local.unsqueeze(1)).squeeze(1).reciprocal())
    return RowStats(m, sumexp, dot, None, local + col_start if argmax else None, mass)


def row_stats_(z: torch.Tensor, target, scratch: torch.Tensor) -> RowStats:
    """``(m, l, dot, mass)`` of a tile of *whole* rows through PyTorch's fused softmax,
    written into ``scratch`` (``z``'s shape; ``z`` itself when it may be overwritten),
    as :func:`row_logsumexp`: ``l = 1 / max_c p_c``. The target sum is relative to the
    row max: free for one picked score per row, else over ``z - m`` formed in
    ``scratch`` first (one more pass, for label smoothing and probability targets)."""
    if z.shape[1] == 0:
        m = z.new_full(z.shape[:1], -torch.inf)
        dot, mass = _dot(z, target, 0, None)
        return RowStats(m, torch.zeros_like(m), dot, None, None, mass)
    m = z.amax(1)
    ref = _finite_or_zero(m)
    if _shift_is_free(target):
        dot, mass = _dot(z, target, 0, ref)
        src = z
    else:
        src = torch.sub(z, ref.unsqueeze(1), out=scratch)
        dot, mass = _dot(src, target, 0, None)
    p = torch._softmax(src, 1, False, out=scratch)
    zero = torch.zeros((), dtype=z.dtype, device=z.device)
    sumexp = torch.where(m == -torch.inf, zero, p.amax(1).reciprocal())  # NaN rows stay NaN
    return RowStats(m, sumexp, dot, None, None, mass)


def state_from_lse(shift: torch.Tensor, lse_shifted: torch.Tensor, dot: torch.Tensor,
                   mass: torch.Tensor | None = None, entropy: torch.Tensor | None = None,
                   argmax: torch.Tensor | None = None) -> RowStats:
    """The running state of a part (a class shard, a rank's rows) known by its summary
    relative to its row max ``shift``: the one place a state is rebuilt from a
    log-sum-exp (class-sharded merges, contrastive column merges).

    ::

        (max, l) = (shift, exp(lse - shift)),   zexp = (log l - entropy) * l

    ``(max, l)`` carries the true row max, as the argmax comparison across parts needs,
    and ``zexp / l = log l - entropy`` is the mean shifted score under the part's softmax.
    A part with ``lse_shifted = -inf`` (no finite score) gets ``max = -inf``, ``l = 0``.

    Args:
        shift: ``(n,)`` the part's row max (0 where it is ``-inf``).
        lse_shifted: ``(n,)`` ``lse - shift``. dot: ``(n,)`` ``sum_c t_c (z_c - shift)``.
        mass: ``(n,)`` the part's target mass (moves ``dot`` in a merge), or None.
        entropy, argmax: ``(n,)`` for the monitoring statistics, or None.
    Returns:
        A :class:`RowStats`.
    """
    finite = lse_shifted > -torch.inf
    zero = torch.zeros((), dtype=lse_shifted.dtype, device=lse_shifted.device)
    sumexp = torch.where(finite, torch.exp(lse_shifted), zero)
    zexp = None if entropy is None else torch.where(finite, (lse_shifted - entropy) * sumexp, zero)
    return RowStats(torch.where(finite, shift, -torch.inf), sumexp, dot, zexp, argmax, mass)


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
    """Combine the statistics of two disjoint column ranges (``a`` before ``b``).

    The relative sums move to the merged reference: ``dot + mass * (r_part - r)`` and
    ``zexp + l * (r_part - r)``, with ``r_part - r <= 0`` and finite (references are 0
    where a max is ``-inf``), so a part with no mass adds exactly nothing."""
    m = torch.maximum(a.max, b.max)
    safe = _finite_or_zero(m)
    scale_a = _rescale(a.max, safe)
    scale_b = _rescale(b.max, safe)
    delta_a = _finite_or_zero(a.max) - safe
    delta_b = _finite_or_zero(b.max) - safe
    sumexp = a.sumexp * scale_a + b.sumexp * scale_b
    dot = _moved(a.dot, a.mass, delta_a) + _moved(b.dot, b.mass, delta_b)
    zexp = None
    if a.zexp is not None and b.zexp is not None:
        zexp = (a.zexp + a.sumexp * delta_a) * scale_a + (b.zexp + b.sumexp * delta_b) * scale_b
    best = None
    if a.argmax is not None and b.argmax is not None:
        best = torch.where(b.max > a.max, b.argmax, a.argmax)  # ties keep the first column
    mass = b.mass if a.mass is None else a.mass if b.mass is None else a.mass + b.mass
    return RowStats(m, sumexp, dot, zexp, best, mass)


def _moved(dot: torch.Tensor, mass: torch.Tensor | None, delta: torch.Tensor) -> torch.Tensor:
    """``dot`` relative to a reference ``delta`` above its own (no mass: no target, 0)."""
    return dot if mass is None else dot + mass * delta


def logsumexp(stats: RowStats) -> torch.Tensor:
    """``m + log(l)``: ``-inf`` for an empty or all ``-inf`` row (``m = -inf``)."""
    return torch.where(stats.max == -torch.inf, stats.max,
                       _finite_or_zero(stats.max) + torch.log(stats.sumexp))


def shifted_logsumexp(stats: RowStats) -> torch.Tensor:
    """``lse - reference = log l``: in ``[0, log C]`` for a finite row, ``-inf`` for an
    empty or all ``-inf`` one."""
    return torch.log(stats.sumexp)


def entropy(stats: RowStats, lse: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of ``softmax(z)`` in nats: ``lse - sum_c p_c z_c = log l - zexp / l``
    (both terms relative to the reference: no cancellation of large scores; ``lse`` is
    not needed, and accepted for older callers)."""
    if stats.zexp is None:
        raise ValueError("entropy needs statistics gathered with entropy=True")
    return torch.log(stats.sumexp) - stats.zexp / stats.sumexp


def tile_stats_(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    entropy: bool = False,
    argmax: bool = False,
    scratch: torch.Tensor | None = None,
) -> RowStats:
    """:func:`tile_stats` that reuses ``z``'s storage: on return ``z`` holds
    ``exp(z - m)`` (``m`` the row max), ready to become ``softmax`` by one division.

    For fused passes that need the exponentials next (a gradient tile) and cannot
    afford a second tile-sized buffer. The target sums are taken on ``z - m``, between
    the shift and the exponential (no extra pass). ``entropy=True`` takes
    ``zexp = sum_c e_c (z_c - m) = sum_c e_c log e_c`` from the exponentials ``e``
    (:func:`_xlogx_sum`, into ``scratch``, a buffer of at least ``z``'s shape, or a
    temporary when None).
    """
    if argmax and z.shape[1]:
        m, best = z.max(1)  # one pass for both
        best = best + col_start
    else:
        best = None
        m = z.amax(1) if z.shape[1] else z.new_full(z.shape[:1], -torch.inf)
    safe = _finite_or_zero(m).unsqueeze(1)
    z.sub_(safe)
    dot, mass = _dot(z, target, col_start, None)
    z.exp_()
    zexp = _xlogx_sum(z, scratch) if entropy else None
    return RowStats(m, z.sum(1), dot, zexp, best, mass)


def _xlogx_sum(e: torch.Tensor, scratch: torch.Tensor | None) -> torch.Tensor:
    """``sum_c e_c log e_c`` per row (0 for ``e_c = 0``: a ``-inf`` score), through
    ``scratch`` (a buffer of at least ``e``'s shape) when given. With ``e = exp(z - m)``
    this is the entropy's ``zexp`` with ``log e = z - m`` read back from ``e``: two passes
    over the tile, where forming ``e * (z - m)`` beside ``z - m`` takes four and a copy."""
    out = None if scratch is None else scratch[: e.shape[0], : e.shape[1]]
    return torch.special.xlogy(e, e, out=out).sum(1)


def softmax_stats_(
    z: torch.Tensor,
    target: ClassIndexTarget | ClassProbTarget | None,
    col_start: int = 0,
    *,
    argmax: bool = False,
    entropy: bool = False,
    scratch: torch.Tensor | None = None,
) -> RowStats:
    """:func:`tile_stats_` for a tile of *whole* rows, leaving ``softmax(z)`` in ``z``
    (not ``exp(z - m)``): no division is left for the caller.

    PyTorch's fused row kernel runs in place (it reads each element before writing it),
    so after the max the tile is read once and written once, with each row cached in
    between; ``max`` / ``sub`` / ``exp`` / ``sum`` written out pass over the tile four
    times. The state is ``(m, l)`` with ``l = 1 / p(argmax)``, since the softmax at the
    row max is ``e^0 / l`` (as :func:`row_logsumexp`). Finite rows only (a row of
    ``-inf`` gives NaN here). A target whose sum needs every shifted score
    (label smoothing, probabilities) costs one more in-place pass, ``z -= m``. With
    ``entropy``, ``zexp = sum_c e_c (z_c - m) = l (sum_c p_c log p_c + log l)`` from the
    probabilities (:func:`_xlogx_sum`, through ``scratch``), so that
    :func:`entropy` gives ``-sum_c p_c log p_c``.
    """
    m, best = z.max(1)
    if _shift_is_free(target):
        dot, mass = _dot(z, target, col_start, m)
    else:
        z.sub_(m.unsqueeze(1))
        dot, mass = _dot(z, target, col_start, None)
    torch._softmax(z, 1, False, out=z)
    sumexp = z.gather(1, best.unsqueeze(1)).squeeze(1).reciprocal()
    zexp = sumexp * (_xlogx_sum(z, scratch) + torch.log(sumexp)) if entropy else None
    return RowStats(m, sumexp, dot, zexp, best + col_start if argmax else None, mass)


def cross_entropy_rows(
    lse: torch.Tensor,
    dot: torch.Tensor,
    mass: torch.Tensor,
    valid: torch.Tensor | None = None,
    z_loss: float = 0.0,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-row cross-entropy from the statistics, the one formula every path shares::

        loss_i = mass_i * lse_i - dot_i + z_loss * (lse_i + shift_i)^2   (0 on rows not ``valid``)

    ``mass_i * lse_i - dot_i = sum_c t_ic (lse_i - z_ic)`` is invariant to a per-row shift
    of the scores: pass ``lse`` and ``dot`` relative to one (``lse - shift`` and
    ``sum_c t_ic (z_ic - shift)``, :func:`shifted_logsumexp` and ``RowStats.dot``) with
    ``shift`` near the row max, and no two large numbers are subtracted; ``shift`` (None:
    0) is only needed for the z-loss, PaLM's auxiliary ``log^2 Z`` (Chowdhery et al. 2022).
    """
    rows = mass * lse - dot
    if z_loss:
        absolute = lse if shift is None else lse + shift
        rows = rows + z_loss * absolute.square()
    if valid is None:
        return rows
    return torch.where(valid, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))
