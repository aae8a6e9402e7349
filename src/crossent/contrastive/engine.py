"""The contrastive engine: differentiable similarity statistics on one device.

A contrastive loss needs, per row ``i`` of ``z = scale * a b^T + bias`` (and for CLIP per
column ``j``), an aggregate and a target dot::

    row_agg_i = logsumexp_j z_ij   (softmax)   or   sum_j softplus(z_ij)   (sigmoid)
    row_dot_i = sum_j t_ij z_ij

:func:`similarity_statistics` returns them as one autograd Function whose forward and
backward are a backend's ``block_forward`` / ``block_backward`` (the ``"similarity"`` op of
:func:`crossent.kernels.dispatch.get_backend`: plain PyTorch tiles or their Triton twin).
The backward is the chain rule of :mod:`crossent.kernels.similarity`::

    G_ij = gR_i p_ij + gC_j q_ij + gDR_i t_ij + gDC_j t'_ji
    dL/da = scale G b,   dL/db = scale G^T a,   dL/dscale = sum_i <a_i, (G b)_i>,
    dL/dbias = sum_ij G_ij

computed from the saved features and aggregates (the tiles are recomputed, never saved).
It is first-order only: a backward asked to build a graph (``create_graph=True``) raises
(:func:`refuse_double_backward`). The ring design across ranks
(:mod:`crossent.contrastive.sharded`) calls the same backends block by block.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..core.backward import refuse_double_backward as core_refuse_double_backward
from ..core.tiles import TilePlan
from ..kernels import similarity as sim
from ..kernels.dispatch import get_backend

__all__ = ["Statistics", "similarity_statistics", "backend_module", "refuse_double_backward"]


class Statistics(NamedTuple):
    """Differentiable statistics of rows and columns, in the accumulation dtype. For the
    softmax aggregate they are relative to each row's (column's) max ``r``: ``agg = lse -
    r`` and ``dot = sum_j t_j (z_j - r)`` (:mod:`crossent.core.stats`), so ``agg - dot``
    and ``mass * agg - dot`` keep their digits at any magnitude of the scores."""

    row_agg: torch.Tensor  # (n,) lse - r (softmax) or sum of softplus (sigmoid); empty if unwanted
    row_dot: torch.Tensor  # (n,)
    col_agg: torch.Tensor  # (m,)
    col_dot: torch.Tensor  # (m,)
    # the columns' shift r and target mass (no gradient): what a merge of partial column
    # statistics across ranks needs (crossent.contrastive.sharded.merge_columns)
    col_shift: torch.Tensor | None = None
    col_mass: torch.Tensor | None = None


def backend_module(backend: str):
    """The ``"similarity"`` backend module for a resolved backend name."""
    return get_backend(backend, op="similarity")


def refuse_double_backward(context: str) -> None:
    """:func:`crossent.core.backward.refuse_double_backward` for a contrastive loss: its
    backward recomputes the similarity tiles in place and builds no graph of the gradient."""
    core_refuse_double_backward(
        context, "Call backward()/autograd.grad without create_graph, or write the loss "
        "on the materialised similarity matrix for a gradient of the gradient.")


class _BlockFunction(torch.autograd.Function):
    """Statistics of one block of rows against one block of columns (one device)."""

    @staticmethod
    def forward(ctx, a, b, scale, bias, blk: sim.Block, p: TilePlan, backend: str, context: str):
        same = b is None  # self-similarity: ``b`` is ``a`` (passed once: torch.compile)
        b = a if same else b
        ops = sim.Operands.build(a, b, scale, bias)
        agg = sim.aggregate(blk.aggregate)
        n, m, acc, dev = a.shape[0], b.shape[0], ops.a.dtype, a.device
        row_state = agg.init(n, acc, dev) if blk.rows else None
        col_state = agg.init(m, acc, dev) if blk.cols else None
        backend_module(backend).block_forward(ops, ops.b, blk, p, row_state, col_state)
        row_value = agg.value(row_state) if blk.rows else None
        col_value = agg.value(col_state) if blk.cols else None
        # Only computed tensors are saved (None for a side without statistics): under
        # torch.compile a saved placeholder that is not an output of the traced forward
        # fails ("Placeholder node not found").
        ctx.save_for_backward(a, b, scale, bias, row_value, col_value)
        ctx.blk, ctx.plan, ctx.backend, ctx.same, ctx.context = blk, p, backend, same, context

        def out(t):
            return a.new_empty(0, dtype=acc) if t is None else t
        # the losses see the statistics relative to the max (the gradient is the same:
        # the shift is a constant); the columns' shift and mass, for a merge across ranks
        row_agg, row_dot = agg.loss_terms(row_state) if blk.rows else (None, None)
        col_agg, col_dot = agg.loss_terms(col_state) if blk.cols else (None, None)
        col_shift = out(agg.shift(col_state) if blk.cols else None)
        col_mass = out(col_state[3] if blk.cols else None)
        ctx.mark_non_differentiable(col_shift, col_mass)
        return (out(row_agg), out(row_dot), out(col_agg), out(col_dot), col_shift, col_mass)

    @staticmethod
    def backward(ctx, g_row, g_row_dot, g_col, g_col_dot, _g_col_shift, _g_col_mass):
        refuse_double_backward(ctx.context)
        a, b, scale, bias, row_value, col_value = ctx.saved_tensors
        blk: sim.Block = ctx.blk
        need_a, need_b, need_scale, need_bias = ctx.needs_input_grad[:4]
        ops = sim.Operands.build(a, a if ctx.same else b, scale, bias)
        acc = ops.a.dtype
        grads = sim.BlockGrads(
            sim.finite(row_value) if blk.rows else None, _acc(g_row, acc) if blk.rows else None,
            _acc(g_row_dot, acc) if blk.rows else None,
            sim.finite(col_value) if blk.cols else None, _acc(g_col, acc) if blk.cols else None,
            _acc(g_col_dot, acc) if blk.cols else None,
        )
        grad_a = torch.zeros_like(ops.a) if need_a or need_scale else None
        grad_b = torch.zeros_like(ops.b) if need_b or (ctx.same and need_a) else None
        grad_bias = torch.zeros((), dtype=acc, device=a.device) if need_bias else None
        backend_module(ctx.backend).block_backward(ops, ops.b, blk, ctx.plan, grads, grad_a,
                                                   grad_b, grad_bias)
        g_a, g_scale = sim.scale_grads(ops, scale, grad_a, need_a, need_scale)
        if ctx.same and g_a is not None:  # a entered as both sides
            g_a = g_a + grad_b
            grad_b = None
        return (
            g_a.to(a.dtype) if g_a is not None else None,
            grad_b.to(b.dtype) if grad_b is not None and need_b else None,
            g_scale.to(scale.dtype) if g_scale is not None else None,
            grad_bias.to(bias.dtype) if grad_bias is not None else None,
            None, None, None, None,
        )


def _acc(g: torch.Tensor | None, acc: torch.dtype) -> torch.Tensor | None:
    return None if g is None else g.to(acc)


def similarity_statistics(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                          bias: torch.Tensor | None, blk: sim.Block, p: TilePlan,
                          backend: str = "torch", *, context: str = "crossent") -> Statistics:
    """Differentiable row and column statistics of ``z = scale a b^T + bias`` (one device).

    Args:
        a, b: ``(n, d)`` rows and ``(m, d)`` columns; ``b`` may be ``a`` itself
            (self-similarity: passed once, its gradient is the sum of both sides').
        scale, bias: 0-d tensors (``bias`` may be None); both receive gradients.
        blk: the block's targets, excluded self pairs and global offsets.
        p: the tile plan; ``backend``: a resolved backend name.
        context: names the loss in errors (e.g. ``"crossent.clip_loss"``).

    Returns:
        :class:`Statistics`, ``(n,)`` / ``(m,)`` each (empty for an unwanted side), in the
        accumulation dtype (float32, or float64 for float64 features).
    """
    return Statistics(*_BlockFunction.apply(a, None if b is a else b, scale, bias, blk, p,
                                            backend, context))
