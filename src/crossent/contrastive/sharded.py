"""Contrastive losses across ranks: the two designs, on the tiles of one device.

Every rank holds its local batch: rows ``a_r`` (``n_r`` of them) and columns ``b_r``
(``m_r``), sizes may differ. Globally the rows and columns are concatenated in rank
order; rank ``r``'s rows start at ``R_r = n_0 + ... + n_{r-1}`` and its columns at
``C_r``. Each rank computes the statistics of *its own rows* against *all* columns and
(CLIP) of *its own columns* against all rows, complete over the global batch; the loss
module then sums its local terms and all-reduces the sum, so every rank returns the
global loss and every similarity ``z_ij`` is computed exactly once, on the rank owning
row ``i``.

Gradients follow the data-parallel contract of :mod:`crossent.core.collectives`: every rank
backpropagates its copy of the global loss ``L``, the collectives' backward passes are
true adjoints, so the ranks jointly differentiate ``W * L``: each rank's features get
``W * dL/d(local features)`` and its replicated ``logit_scale`` / ``logit_bias``
``W * (its share of dL/dscale)``. DDP's average over the ``W`` ranks then gives exactly
the gradients of one process holding the global batch.

Two designs (``design=``):

``'gather'``
    All-gather the columns with gradients flowing back to their owners (a
    reduce-scatter, :func:`crossent.core.collectives.all_gather`), then one pass of the local
    rows against all columns (open_clip's ``gather_with_grad=True, local_loss=True``).
    Both CLIP directions still come from that one pass: the columns' partial
    statistics from the local rows are merged across ranks exactly as tiles are
    (:func:`merge_columns`: :func:`crossent.core.collectives.merge_row_stats` and its
    chain rule), so only ``(N,)`` statistics travel, not the image features.
    Holds ``sum_r m_r`` columns.

``'ring'``
    The column blocks travel around the ring with point-to-point sends
    (:func:`crossent.core.collectives.ring_exchange`), the next block in flight while the
    current one is computed; the columns' running statistics travel with their block
    and come home complete. The backward passes the blocks again, with their
    accumulating gradient, which comes home to the owner. Each rank holds at most two
    blocks at a time and saves only its own features and ``(n_r + m_r)`` statistics:
    memory per rank does not grow with the number of ranks (Inf-CL, Wang et al. 2024;
    the ring of Liu et al., "Ring Attention", 2023).

Before any work the ranks agree (:func:`crossent.core.collectives.check_agreement`, the one
agreement check of every ``group=`` path): feature dimension, dtype, device type, options,
the hyperparameters by value (``logit_scale``, ``logit_bias``, ``temperature``,
``base_temperature``; a tensor's value is read once, in that exchange), and every rank's
local sizes; a mismatch, or an argument error on any rank, raises the same error on every
rank instead of hanging or training a mixed objective. A group of one rank is no group
(:func:`crossent.core.collectives.spans_ranks`): the loss runs on one device.
"""

from __future__ import annotations

import torch

from ..core import checks as _checks
from ..core import collectives as D
from ..core import stats as _stats
from ..kernels import similarity as sim
from ..kernels.dispatch import resolve_backend
from .engine import Statistics, backend_module, refuse_double_backward, similarity_statistics
from .problem import Result, positive_counts


def run(context: str, opts, build):
    """:func:`crossent.contrastive.front._run` across the ranks of ``opts.group``.

    ``build() -> (Problem, scale, bias, hyper)`` validates this rank's arguments; what it
    raises (one of :data:`crossent.core.collectives.LOCAL_ERRORS`) is raised on every rank
    by the agreement check, which also compares the problem's layout, the options and the
    hyperparameters ``hyper`` (``{name: number, 0-d tensor or None}``, by value: a tensor is
    read once here, inside the exchange that synchronises anyway).
    """
    group = opts.group
    where = f"{context}(group=...)"
    rank, world = D.rank_and_size(group)
    error, prob, same, each = None, None, {}, {}
    try:
        prob, scale, bias, hyper = build()
        same = {"dim": prob.a.shape[1], "dtype": str(prob.a.dtype), "device": prob.a.device.type,
                "aggregate": prob.aggregate, "cols": prob.cols,
                "labels": prob.labels is not None, "self": prob.self_offset,
                "design": opts.design, "accidental_hits": prob.col_ids is not None}
        same.update({name: _host_value(value) for name, value in hyper.items()})
        each = {"rows": prob.a.shape[0], "cols": prob.b.shape[0],
                "col_bias": prob.col_bias is not None}
    except D.LOCAL_ERRORS as exc:  # raised on every rank by the agreement check
        error = exc
    records = D.check_agreement(where, group, same=same, each=each, error=error)
    row_sizes = [r["rows"] for r in records]
    col_sizes = [r["cols"] for r in records]
    row_starts, total_rows = D.offsets(row_sizes), sum(row_sizes)
    col_starts, total_cols = D.offsets(col_sizes), sum(col_sizes)
    if total_rows == 0:
        raise _checks.ArgumentError(f"{where}: the global batch is empty on every rank")
    count = None
    if prob.labels is not None:  # SupCon: positives per row need every label (temporary)
        all_labels = torch.cat(D.gather_uneven(prob.labels, group, col_sizes))
        count = positive_counts(prob.labels, all_labels, prob.acc)
    target = prob.row_target(col_starts[rank], count)
    layout = _Layout(rank, world, row_sizes, col_sizes, row_starts, col_starts,
                     col_bias=any(r["col_bias"] for r in records))
    design = _gather if opts.design == "gather" else _ring
    stats = design(context, prob, scale, bias, target, layout, opts)
    return Result(stats, row_starts[rank], total_rows, total_cols, target, scale)


def _host_value(value):
    """A hyperparameter as the agreement record holds it: a float (a tensor's value, read
    once), a string (a choice such as a reduction), or None."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor):
        return float(value.detach().reshape(()).item())
    return float(value)


class _Layout:
    def __init__(self, rank, world, row_sizes, col_sizes, row_starts, col_starts, col_bias=False):
        self.rank, self.world = rank, world
        self.col_bias = col_bias  # some rank's columns carry a bias (the others': 0)
        self.row_sizes, self.col_sizes = row_sizes, col_sizes
        self.row_starts, self.col_starts = row_starts, col_starts


def all_reduce_sum(x: torch.Tensor, group) -> torch.Tensor:
    """Differentiable sum over ranks (data-parallel adjoint: all-reduce of gradients)."""
    return D.all_reduce(x, group)


# ------------------------------------------------------------------ design 1: gather


def _gather(context, prob, scale, bias, target, lay: _Layout, opts) -> Statistics:
    group = opts.group
    b_all = D.all_gather(prob.b, group, sizes=lay.col_sizes)
    terms = {name: torch.cat(D.gather_uneven(t, group, lay.col_sizes))
             for name, t in _column_terms(prob, lay).items()}
    n, m = prob.a.shape[0], b_all.shape[0]
    blk = prob.block(target, lay.row_starts[lay.rank], 0, m, **terms)
    backend = resolve_backend(opts.backend, prob.a.device)
    stats = similarity_statistics(prob.a, b_all, scale, bias, blk, opts.plan(n, m), backend,
                                  context=context)
    if not prob.cols:
        return stats
    start, size = lay.col_starts[lay.rank], lay.col_sizes[lay.rank]
    col_agg, col_dot = merge_columns(stats.col_agg, stats.col_dot, group,
                                     shift=stats.col_shift, mass=stats.col_mass)
    return Statistics(stats.row_agg, stats.row_dot, col_agg[start:start + size],
                          col_dot[start:start + size])


def _column_terms(prob, lay: _Layout) -> dict:
    """What travels with this rank's columns besides their features (no gradient), by
    the name :meth:`~crossent.contrastive.problem.Problem.block` takes: SupCon's labels, the
    columns' bias (0 here if another rank's columns have one), their ids."""
    terms = {}
    if prob.labels is not None:
        terms["col_labels"] = prob.labels.contiguous()
    if lay.col_bias:
        terms["col_bias"] = (prob.col_bias.contiguous() if prob.col_bias is not None
                             else prob.b.new_zeros(prob.b.shape[0], dtype=prob.acc))
    if prob.col_ids is not None:
        terms["col_ids"] = prob.col_ids.contiguous()
    return terms


def merge_columns(partial_lse: torch.Tensor, partial_dot: torch.Tensor, group, *,
                  shift: torch.Tensor | None = None, mass: torch.Tensor | None = None):
    """Columns' log-sum-exp and target dot over all ranks' rows, differentiably.

    ``partial_lse`` and ``partial_dot`` are relative to each rank's per-column ``shift``
    (its max; None: 0, absolute values), ``mass`` the rank's part of the target mass;
    the result is relative to the merged max ``S`` (as
    :class:`crossent.contrastive.engine.Statistics`). The value is the exact merge
    (:func:`crossent.core.collectives.merge_row_stats`: the tile merge, one all-gather,
    the same bits on every rank); the gradient is
    :func:`crossent.core.collectives.with_merge_gradient` under the data-parallel
    convention (one all-reduce of ``(2, N)`` in the backward)::

        lse_j = log sum_r exp(lse_rj + s_rj - S_j),   dot_j = sum_r dot_rj + mass_rj (s_rj - S_j)
    """
    shift = torch.zeros_like(partial_lse) if shift is None else shift.detach()
    state = _stats.state_from_lse(shift, partial_lse.detach(), partial_dot.detach(),
                                  None if mass is None else mass.detach())
    merged, _ = D.merge_row_stats(state, group)
    return D.with_merge_gradient(partial_lse, _stats.shifted_logsumexp(merged), group,
                                 parts=(partial_dot,), sums=(merged.dot,),
                                 delta=shift - _stats.reference(merged),
                                 convention=D.DATA_PARALLEL)


# ------------------------------------------------------------------ design 2: ring


def _ring(context, prob, scale, bias, target, lay: _Layout, opts) -> Statistics:
    backend = resolve_backend(opts.backend, prob.a.device)
    out = _RingFunction.apply(prob.a, prob.b, scale, bias, prob, target, lay, opts, backend, context)
    return Statistics(*out)


class _Ring:
    """Pass blocks to rank ``r + 1`` and receive from ``r - 1``, several tensors per
    message, in a fixed order on every rank (point-to-point calls are matched in order)."""

    def __init__(self, group):
        self.group = group
        self.works = []
        self.sending = []  # kept alive until the sends complete

    def start(self, send: list[torch.Tensor], recv: list[torch.Tensor]) -> None:
        for s, r in zip(send, recv):
            s = s.contiguous()
            self.sending.append(s)
            self.works.extend(D.ring_exchange(s, r, self.group))

    def wait(self) -> None:
        for w in self.works:
            w.wait()
        self.works, self.sending = [], []


def _empty_like_block(x: torch.Tensor, rows: int) -> torch.Tensor:
    return x.new_empty((rows,) + tuple(x.shape[1:]))


class _RingFunction(torch.autograd.Function):
    """Local rows' statistics and own columns' statistics, with the columns on a ring."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, prob, target, lay: _Layout, opts, backend, context):
        kernels = backend_module(backend)
        agg = sim.aggregate(prob.aggregate)
        ops = sim.Operands.build(a, b, scale, bias)
        acc, dev = ops.a.dtype, a.device
        n = a.shape[0]
        row_state = agg.init(n, acc, dev)
        rank, world = lay.rank, lay.world
        block = ops.b.contiguous()
        terms = _column_terms(prob, lay)
        col_state = agg.init(block.shape[0], acc, dev) if prob.cols else None
        features, stats_ring = _Ring(opts.group), _Ring(opts.group)
        for step in range(world):
            k = (rank - step) % world
            nxt = (rank - step - 1) % world
            incoming = []
            if step + 1 < world:  # the next block is in flight while this one is computed
                incoming = [_empty_like_block(x, lay.col_sizes[nxt]) for x in [block, *terms.values()]]
                features.start([block, *terms.values()], incoming)
            blk = prob.block(target, lay.row_starts[rank], lay.col_starts[k], block.shape[0], **terms)
            p = opts.plan(n, block.shape[0])
            part = agg.init(block.shape[0], acc, dev) if prob.cols else None
            kernels.block_forward(ops, block, blk, p, row_state, part)
            if prob.cols:
                stats_ring.wait()  # the block's statistics from the ranks before
                col_state = part if step == 0 else agg.combine(col_state, part)
                recv_state = agg.init(lay.col_sizes[nxt], acc, dev)
                stats_ring.start([col_state], [recv_state])
                col_state = recv_state
            features.wait()
            if incoming:
                block = incoming[0]
                terms = dict(zip(terms, incoming[1:]))
        stats_ring.wait()  # after W hops the statistics of this rank's own columns are home
        empty = a.new_empty(0, dtype=acc)
        row_value = agg.value(row_state)
        col_value = agg.value(col_state) if prob.cols else empty
        ctx.save_for_backward(a, b, scale, bias, row_value, col_value)
        ctx.prob, ctx.target, ctx.lay, ctx.opts = prob, target, lay, opts
        ctx.backend, ctx.context = backend, context
        # the losses see the statistics relative to the max (sim.Statistics)
        row_agg, row_dot = agg.loss_terms(row_state)
        col_agg, col_dot = agg.loss_terms(col_state) if prob.cols else (empty, empty)
        return row_agg, row_dot, col_agg, col_dot

    @staticmethod
    def backward(ctx, g_row, g_row_dot, g_col, g_col_dot):
        refuse_double_backward(ctx.context)  # before any exchange: every rank raises alike
        a, b, scale, bias, row_value, col_value = ctx.saved_tensors
        kernels = backend_module(ctx.backend)
        prob, target, lay, opts = ctx.prob, ctx.target, ctx.lay, ctx.opts
        need_a, need_b, need_scale, need_bias = ctx.needs_input_grad[:4]
        ops = sim.Operands.build(a, b, scale, bias)
        acc, dev = ops.a.dtype, a.device
        n, d = a.shape
        rank, world = lay.rank, lay.world

        def _g(x, size):
            return torch.zeros(size, dtype=acc, device=dev) if x is None else x.to(acc)

        row_grads = (sim.finite(row_value), _g(g_row, n), _g(g_row_dot, n))
        # What travels with a block: its features, its terms, and for CLIP the columns'
        # aggregate and the upstream gradients of their statistics.
        block = ops.b.contiguous()
        terms = _column_terms(prob, lay)
        col_info = None
        if prob.cols:
            m = b.shape[0]
            col_info = torch.stack([sim.finite(col_value), _g(g_col, m), _g(g_col_dot, m)])
        grad_a = torch.zeros_like(ops.a)
        grad_bias = torch.zeros((), dtype=acc, device=dev) if need_bias else None
        travelling = None  # the gradient of the current block, accumulated by earlier ranks
        features, grads_ring = _Ring(opts.group), _Ring(opts.group)
        for step in range(world):
            k = (rank - step) % world
            nxt = (rank - step - 1) % world
            incoming = []
            if step + 1 < world:
                send = [block, *terms.values()] + ([col_info] if col_info is not None else [])
                incoming = [_empty_like_block(x, lay.col_sizes[nxt]) for x in [block, *terms.values()]]
                if col_info is not None:
                    incoming.append(col_info.new_empty(3, lay.col_sizes[nxt]))
                features.start(send, incoming)
            blk = prob.block(target, lay.row_starts[rank], lay.col_starts[k], block.shape[0], **terms)
            grads = sim.BlockGrads(*row_grads, *(tuple(col_info) if col_info is not None else (None,) * 3))
            grad_block = torch.zeros_like(block)
            kernels.block_backward(ops, block, blk, opts.plan(n, block.shape[0]), grads, grad_a,
                                   grad_block, grad_bias)
            grads_ring.wait()  # this block's gradient from the ranks before
            if travelling is not None:
                grad_block.add_(travelling)
            travelling = grad_block.new_empty((lay.col_sizes[nxt], d))
            grads_ring.start([grad_block], [travelling])
            features.wait()
            if incoming:
                block = incoming[0]
                rest = incoming[1:]
                terms = dict(zip(terms, rest[:len(terms)]))
                rest = rest[len(terms):]
                if col_info is not None:
                    col_info = rest.pop(0)
        grads_ring.wait()  # after W hops this rank's own columns' gradient is home
        g_a, g_scale = sim.scale_grads(ops, scale, grad_a, need_a, need_scale)
        return (
            g_a.to(a.dtype) if g_a is not None else None,
            travelling.to(b.dtype) if need_b else None,
            g_scale.to(scale.dtype) if g_scale is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None, None, None, None, None, None,
        )
