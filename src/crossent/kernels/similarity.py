"""Tiles of a similarity matrix with row and column statistics (plain PyTorch).

Contrastive losses score rows ``a`` (``(n, d)``) against columns ``b`` (``(m, d)``)::

    z_ij = scale * <a_i, b_j> + bias (+ col_bias_j)   (-inf where column j is row i itself,
                                                       or an excluded accidental hit)

and need, per row and/or per column, an *aggregate* of the scores and a *target dot*:

- ``softmax``: ``lse_i = logsumexp_j z_ij`` (InfoNCE, CLIP, NT-Xent, SupCon); the
  streaming statistics of :mod:`crossent.core.stats` (max, sum of exp, target dot) and their
  exact merge;
- ``sigmoid``: ``sp_i = sum_j softplus(z_ij)`` (SigLIP: ``-log sigmoid(+-z)`` is
  ``softplus(z) - [positive] z``); statistics merge by addition;

and ``dot_i = sum_j t_ij z_ij`` for a target from :mod:`crossent.core.targets` (columns are
the classes: :meth:`~crossent.core.targets.ClassIndexTarget.indices` or
:class:`~crossent.core.targets.LabelSetTarget`). Every contrastive loss is then arithmetic
on these ``(n,)`` / ``(m,)`` vectors, done by autograd; this module supplies the
``n x m`` part of the chain rule::

    G_ij = dL/dz_ij = gR_i p_ij + gC_j q_ij + gDR_i t_ij + gDC_j t'_ji
    dL/da = scale * G b,   dL/db = scale * G^T a,   dL/dscale = sum_i <a_i, (G b)_i>,
    dL/dbias = sum_ij G_ij

with ``p``/``q`` the row/column softmax (``sigmoid(z)`` for the sigmoid aggregate) and
``gR, gDR, gC, gDC`` the upstream gradients of the four statistics.

One walk over ``rows x cols`` tiles gives the row statistics *and* the column
statistics of every tile (a symmetric CLIP loss is one pass, not two); the backward
recomputes each tile from the saved features and the saved aggregates. Memory beyond the
inputs and outputs: a few tiles (from a memory budget, :func:`plan`) and ``O(n + m)``
statistics, never ``n x m``.

This module is the plain-PyTorch backend of the ``"similarity"`` op; its Triton twin is
:mod:`crossent.kernels.triton_similarity`, and :func:`crossent.kernels.dispatch.get_backend`
picks one. The contract of a backend module is two functions:

- ``block_forward(ops, b, blk, plan, row_state, col_state)``: merge the statistics of
  rows ``ops.a`` against columns ``b`` into the running ``(3, n)`` / ``(3, m)`` states;
- ``block_backward(ops, b, blk, plan, grads, grad_a, grad_b, grad_bias)``: accumulate
  ``G b``, ``G^T (scale a)`` and ``sum G`` into the given buffers;

with the data types defined here (:class:`Block`, :class:`Operands`, :class:`BlockGrads`).
The autograd Functions that call them (one device, and the ring across ranks) live in
the contrastive family (:mod:`crossent.contrastive.engine`, :mod:`crossent.contrastive.sharded`).
Rows and columns carry *global* indices (``row_start``, ``col_start``) so that targets
and the excluded self pairs are the same on one device and across ranks.

Oord et al., "Representation Learning with Contrastive Predictive Coding" (2018);
Radford et al., "Learning Transferable Visual Models From Natural Language Supervision"
(2021); Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (2023); Wang et al.,
"Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive Loss"
(2024, Inf-CL) tile the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..core import stats as _stats
from ..core.reduction import accumulation_dtype
from ..core.tiles import TilePlan, plan_tiles

# Tile-sized float buffers alive at once: the score tile, logsumexp's temporaries
# (forward) or the second exponential (backward), the target mask.
TILE_BUFFERS = 3
# Tiles four times wider than tall (1024 x 4096 at the default budget of
# crossent.core.tiles.BUDGETS["similarity", ...]).
TILE_ASPECT = 4

AGGREGATES = ("softmax", "sigmoid")


# ------------------------------------------------------------------ aggregates


def _row_stats(state: torch.Tensor) -> _stats.RowStats:
    return _stats.RowStats(state[0], state[1], state[2], None, None, state[3])


class _Softmax:
    """Running ``(max, sum of exp, dot, mass)`` per row (a ``(4, k)`` state), the dot
    relative to the max: :mod:`crossent.core.stats`."""

    @staticmethod
    def accumulate_(state: torch.Tensor, z: torch.Tensor, target, col_start: int) -> None:
        part = _stats.tile_stats(z, target, col_start)
        merged = _stats.merge(_row_stats(state), part)
        state[0].copy_(merged.max)
        state[1].copy_(merged.sumexp)
        state[2].copy_(merged.dot)
        state[3].copy_(merged.mass)

    @staticmethod
    def combine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Merge two ``(4, k)`` states of disjoint column ranges."""
        m = _stats.merge(_row_stats(x), _row_stats(y))
        return torch.stack([m.max, m.sumexp, m.dot, m.mass])

    @staticmethod
    def value(state: torch.Tensor) -> torch.Tensor:
        """The log-sum-exp itself (the backward's ``exp(z - lse)``)."""
        return _stats.logsumexp(_row_stats(state))

    @staticmethod
    def loss_terms(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lse - m, sum_j t_j (z_j - m))``: the statistics the losses combine, relative
        to the row max ``m`` (its finite part), so that ``lse - dot`` keeps its digits."""
        return _stats.shifted_logsumexp(_row_stats(state)), state[2]

    @staticmethod
    def shift(state: torch.Tensor) -> torch.Tensor:
        return _stats.reference(_row_stats(state))

    @staticmethod
    def init(k: int, dtype: torch.dtype, device) -> torch.Tensor:
        state = torch.zeros(4, k, dtype=dtype, device=device)
        state[0] = -torch.inf
        return state

    @staticmethod
    def grad_(out: torch.Tensor, z: torch.Tensor, value: torch.Tensor, coef: torch.Tensor) -> None:
        """``out = coef_i * exp(z_ij - value_i)`` (``value`` finite: ``-inf`` rows were
        zeroed, their scores all ``-inf``)."""
        _into(out, torch.sub, z, value.unsqueeze(1)).exp_().mul_(coef.unsqueeze(1))


def _into(out: torch.Tensor, fn, *args) -> torch.Tensor:
    """``fn(*args, out=out)``: no temporary in eager mode. Under ``torch.compile`` (which
    refuses ``out=`` into a non-contiguous tile view) a copy, which inductor plans away."""
    if torch.compiler.is_compiling():
        return out.copy_(fn(*args))
    return fn(*args, out=out)


def _tile(buf: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A contiguous ``shape`` tile at the start of the flat buffer ``buf``. Under
    ``torch.compile`` a fresh tensor instead (inductor plans the memory): functionalising
    an in-place op on the transpose of a view of a flat buffer replays the views and fails
    ("Cannot view a tensor ... as a tensor with shape (k,)")."""
    if torch.compiler.is_compiling():
        return buf.new_empty(shape)
    return buf[: shape[0] * shape[1]].view(shape)


class _Sigmoid:
    """Running ``(unused, sum of softplus, dot, unused)`` per row; merge is addition."""

    @staticmethod
    def accumulate_(state: torch.Tensor, z: torch.Tensor, target, col_start: int) -> None:
        # softplus(z) = log(1 + e^z), exactly (F.softplus switches to z above 20)
        state[1] += torch.logaddexp(z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(1)
        if target is not None:
            state[2] += target.dot(z, col_start)

    @staticmethod
    def combine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y

    @staticmethod
    def value(state: torch.Tensor) -> torch.Tensor:
        return state[1]

    @staticmethod
    def loss_terms(state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state[1], state[2]

    @staticmethod
    def shift(state: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(state[0])

    @staticmethod
    def init(k: int, dtype: torch.dtype, device) -> torch.Tensor:
        return torch.zeros(4, k, dtype=dtype, device=device)

    @staticmethod
    def grad_(out: torch.Tensor, z: torch.Tensor, value: torch.Tensor, coef: torch.Tensor) -> None:
        _into(out, torch.sigmoid, z).mul_(coef.unsqueeze(1))


def aggregate(name: str):
    return {"softmax": _Softmax, "sigmoid": _Sigmoid}[name]


# ------------------------------------------------------------------ problem


@dataclass
class Block:
    """One block of the similarity matrix: what a kernel call needs besides features.

    ``row_target`` / ``col_target``: targets of the rows (over global column indices) and
    of the columns (over global row indices); ``None`` when that side's statistics are
    not wanted. ``self_offset``: column ``row + self_offset`` (global) is excluded
    (``-inf``), or ``None``. ``row_start`` / ``col_start``: global index of ``a[0]`` /
    ``b[0]``.

    Per-column terms (sampled softmax, :mod:`crossent.retrieval`), aligned with the
    block's columns ``b`` (``(m,)``): ``col_bias`` is added to every score of its column
    (the logQ correction ``-log Q(j)``); with ``row_ids`` (``(n,)``, aligned with ``a``)
    and ``col_ids`` (int64), column ``j`` is excluded (``-inf``) from row ``i`` where
    ``col_ids[j] == row_ids[i]``, except row ``i``'s own target column (accidental hits;
    the row target must then be :meth:`~crossent.core.targets.ClassIndexTarget.indices`).
    None: no such term.
    """

    aggregate: str
    row_target: Any
    col_target: Any
    self_offset: int | None = None
    row_start: int = 0
    col_start: int = 0
    col_bias: torch.Tensor | None = None
    row_ids: torch.Tensor | None = None
    col_ids: torch.Tensor | None = None

    @property
    def rows(self) -> bool:
        return self.row_target is not None

    @property
    def cols(self) -> bool:
        return self.col_target is not None


def plan(n: int, m: int, *, memory_budget: int | None = None,
         tile_rows: int | None = None, tile_cols: int | None = None,
         device: torch.device | str = "cpu") -> TilePlan:
    """Tile sizes whose :data:`TILE_BUFFERS` float tiles fit ``memory_budget`` bytes
    (default ``crossent.core.tiles.BUDGETS["similarity", device type]``): tiles
    :data:`TILE_ASPECT` times wider than tall, at most
    :data:`~crossent.core.tiles.WIDE_MAX_ROWS` rows, as many columns as the budget then
    allows; explicit ``tile_rows`` / ``tile_cols`` win (:func:`crossent.core.tiles.plan_tiles`)."""
    return plan_tiles(n, m, kind="similarity", device=device, buffers=TILE_BUFFERS,
                      memory_budget=memory_budget, tile_rows=tile_rows, tile_cols=tile_cols,
                      aspect=TILE_ASPECT, names=("tile_rows", "tile_cols"))


class Operands(NamedTuple):
    """Features in the accumulation dtype, the scale folded into the rows (cast once)."""

    a: torch.Tensor  # (n, d) acc
    a_scaled: torch.Tensor  # (n, d) acc, scale * a
    b: torch.Tensor  # (m, d) acc
    bias: torch.Tensor | None  # 0-d acc

    @classmethod
    def build(cls, a, b, scale, bias) -> "Operands":
        acc = accumulation_dtype(a.dtype)
        a_acc = a.detach().to(acc)
        b_acc = a_acc if b is a else b.detach().to(acc)
        scale = scale.detach().to(acc)
        return cls(a_acc, a_acc * scale, b_acc, None if bias is None else bias.detach().to(acc))


def _tiles(n: int, m: int, p: TilePlan):
    for r0 in range(0, n, p.rows):
        r1 = min(r0 + p.rows, n)
        for c0 in range(0, m, p.cols):
            yield r0, r1, c0, min(c0 + p.cols, m)


def _scores_(out: torch.Tensor, ops: Operands, blk: Block, b: torch.Tensor,
             r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """``out`` (a tile buffer) = ``z`` for rows ``[r0, r1)`` and columns ``[c0, c1)``."""
    if blk.col_bias is None:
        _into(out, torch.mm, ops.a_scaled[r0:r1], b[c0:c1].T)
    else:  # the columns' bias enters the product (no second pass over the tile)
        _into(out, torch.addmm, blk.col_bias[c0:c1].unsqueeze(0), ops.a_scaled[r0:r1], b[c0:c1].T)
    if ops.bias is not None:
        out.add_(ops.bias)
    if blk.self_offset is not None:
        k = blk.row_start + r0 + blk.self_offset - (blk.col_start + c0)
        torch.diagonal(out, k).fill_(-torch.inf)
    if blk.col_ids is not None:
        out.masked_fill_(_hits(blk, r0, r1, c0, c1), -torch.inf)
    return out


def _hits(blk: Block, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """``(r1 - r0, c1 - c0)`` bool: the columns sharing the row's id, other than the row's
    own target column (accidental hits)."""
    hit = blk.row_ids[r0:r1, None] == blk.col_ids[None, c0:c1]
    # the row's own target column, where it lies in the tile, is no hit (O(rows) work)
    local = blk.row_target.index[r0:r1] - (blk.col_start + c0)
    inside = ((local >= 0) & (local < c1 - c0)).unsqueeze(1)
    at = local.clamp(0, c1 - c0 - 1).unsqueeze(1)
    return hit.scatter_(1, at, hit.gather(1, at) & ~inside)


def block_forward(ops: Operands, b: torch.Tensor, blk: Block, p: TilePlan,
                  row_state: torch.Tensor | None, col_state: torch.Tensor | None) -> None:
    """Merge the statistics of rows ``ops.a`` against columns ``b`` into ``row_state``
    (``(4, n)``) and ``col_state`` (``(4, m)``), in place (either may be None)."""
    agg = aggregate(blk.aggregate)
    n, m = ops.a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return
    buf = torch.empty(min(p.rows, n) * min(p.cols, m), dtype=ops.a.dtype, device=ops.a.device)
    for r0, r1, c0, c1 in _tiles(n, m, p):
        z = _scores_(_tile(buf, (r1 - r0, c1 - c0)), ops, blk, b, r0, r1, c0, c1)
        if row_state is not None:
            agg.accumulate_(row_state[:, r0:r1], z, blk.row_target.rows(r0, r1), blk.col_start + c0)
        if col_state is not None:
            agg.accumulate_(col_state[:, c0:c1], z.T, blk.col_target.rows(c0, c1), blk.row_start + r0)


class BlockGrads(NamedTuple):
    """Upstream gradients of the statistics, and the aggregates they were taken at."""

    row_value: torch.Tensor | None  # (n,) finite (lse, or sum of softplus)
    row_agg: torch.Tensor | None  # (n,) dL/d row aggregate
    row_dot: torch.Tensor | None  # (n,) dL/d row dot
    col_value: torch.Tensor | None  # (m,)
    col_agg: torch.Tensor | None
    col_dot: torch.Tensor | None


def block_backward(ops: Operands, b: torch.Tensor, blk: Block, p: TilePlan, g: BlockGrads,
                   grad_a: torch.Tensor | None, grad_b: torch.Tensor | None,
                   grad_bias: torch.Tensor | None, gradient_tile=None) -> None:
    """Accumulate ``G b`` into ``grad_a`` (unscaled: the caller multiplies by ``scale``
    and takes ``dscale = sum <a, G b>``), ``G^T (scale a)`` into ``grad_b`` and ``sum G``
    into ``grad_bias`` (0-d), all in place, for rows ``ops.a`` against columns ``b``.

    ``gradient_tile(out, scratch, ops, b, blk, g, r0, r1, c0, c1)`` writes the tile ``G`` into
    ``out`` (default: :func:`gradient_tile_`, plain PyTorch; the Triton backend passes its
    kernel); the matmuls that follow are the same for every backend.
    """
    n, m = ops.a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return
    gradient_tile = gradient_tile or gradient_tile_
    size = min(p.rows, n) * min(p.cols, m)
    buf = torch.empty(size, dtype=ops.a.dtype, device=ops.a.device)
    both = gradient_tile is gradient_tile_ and g.row_agg is not None and g.col_agg is not None
    buf2 = torch.empty(size, dtype=ops.a.dtype, device=ops.a.device) if both else None
    for r0, r1, c0, c1 in _tiles(n, m, p):
        shape = (r1 - r0, c1 - c0)
        out = _tile(buf, shape)
        scratch = _tile(buf2, shape) if both else None
        z = gradient_tile(out, scratch, ops, b, blk, g, r0, r1, c0, c1)
        if grad_a is not None:
            grad_a[r0:r1].addmm_(z, b[c0:c1])
        if grad_b is not None:
            grad_b[c0:c1].addmm_(z.T, ops.a_scaled[r0:r1])
        if grad_bias is not None:
            grad_bias.add_(z.sum())


def gradient_tile_(out: torch.Tensor, scratch: torch.Tensor | None, ops: Operands, b: torch.Tensor,
                   blk: Block, g: BlockGrads, r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """``out = G`` for rows ``[r0, r1)`` and columns ``[c0, c1)``, in plain PyTorch
    (``scratch``: a second tile buffer, needed when both rows and columns have gradients)."""
    agg = aggregate(blk.aggregate)
    z = _scores_(out, ops, blk, b, r0, r1, c0, c1)
    if g.row_agg is not None and g.col_agg is not None:
        other = scratch
        agg.grad_(other, z, g.row_value[r0:r1], g.row_agg[r0:r1])
        agg.grad_(z.T, z.T, g.col_value[c0:c1], g.col_agg[c0:c1])
        z.add_(other)
    elif g.row_agg is not None:
        agg.grad_(z, z, g.row_value[r0:r1], g.row_agg[r0:r1])
    elif g.col_agg is not None:
        agg.grad_(z.T, z.T, g.col_value[c0:c1], g.col_agg[c0:c1])
    else:
        z.zero_()
    if g.row_dot is not None:
        blk.row_target.rows(r0, r1).add_scaled_(z, g.row_dot[r0:r1], blk.col_start + c0)
    if g.col_dot is not None:
        blk.col_target.rows(c0, c1).add_scaled_(z.T, g.col_dot[c0:c1], blk.row_start + r0)
    return z


def finite(value: torch.Tensor) -> torch.Tensor:
    """Aggregates with ``-inf`` (rows whose every score is excluded) become 0: their
    tiles hold only ``-inf``, so ``exp(z - 0) = 0`` is their (zero) softmax."""
    return torch.where(torch.isfinite(value), value, torch.zeros_like(value))


def scale_grads(ops: Operands, scale: torch.Tensor, grad_a_unscaled: torch.Tensor | None,
                need_a: bool, need_scale: bool):
    """``(dL/da, dL/dscale)`` from the accumulated ``G b``."""
    if grad_a_unscaled is None:
        return None, None
    g_scale = (grad_a_unscaled * ops.a).sum() if need_scale else None
    g_a = grad_a_unscaled.mul_(scale.detach().to(grad_a_unscaled.dtype)) if need_a else None
    return g_a, g_scale
