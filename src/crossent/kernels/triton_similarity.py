"""Triton backend of the similarity tiles: scores formed on chip, never written.

The contract of :mod:`crossent.kernels.similarity` (``block_forward`` /
``block_backward``), with two kernels that recompute ``z = (scale a) b^T + bias``
(``tl.dot`` over ``BLOCK_K`` slices of the feature dimension, excluded self pairs
``-inf``) in registers:

- :func:`_stats_kernel`, one program per ``BLOCK_N`` rows of a band, walks every column
  of the block with the online softmax recurrence (Milakov & Gimelshein 2018) — or sums
  ``softplus`` for the sigmoid aggregate — and writes the rows' ``(max, sum, dot, mass)``,
  the dot relative to the max (:mod:`crossent.core.stats`); in
  the same pass it writes each column's partial statistics over the program's rows
  (``(4, programs, m)``), which the host merges with the same exact merge as the tiles
  (:mod:`crossent.core.stats`). One pass gives both CLIP directions.
- :func:`_grad_kernel`, one program per ``BLOCK_N x BLOCK_M`` tile, writes the gradient
  tile ``G = gR p + gC q + gDR t + gDC t'``; ``G b``, ``G^T (scale a)`` and ``sum G`` are
  then dense matmuls on the band (deterministic, no atomics), shared with the PyTorch
  backend (:func:`crossent.kernels.similarity.block_backward`).

Targets handled on chip: one target column per row (``ClassIndexTarget.indices``) and
SupCon's label sets; columns' targets are rows of the same global index. Float64, and
blocks with per-column terms (the sampled softmax's logQ bias and accidental hits), run on
the PyTorch backend. Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU (tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.targets import ClassIndexTarget, LabelSetTarget
from . import similarity as sim
from .triton_linear import _dot_precision, _logits_tile

BLOCKS = {"interpret": (16, 16, 16), "cuda": (64, 64, 32)}


@triton.jit
def _softplus(z):
    # log(1 + e^z) without overflow; 0 at z = -inf
    return tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def _scores(a_ptr, b_ptr, bias_ptr, rows, cols, row_mask, col_mask, K, stride_a, stride_b,
            row_start, col_start, self_offset,
            HAS_BIAS: tl.constexpr, HAS_SELF: tl.constexpr,
            BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
            DOT_PRECISION: tl.constexpr):
    """``z`` for rows x cols (local indices); ``-inf`` outside the block and on self pairs.
    The product is the linear cross-entropy's logit tile (no bias, scale or cap there:
    the scale is folded into ``a``, the bias is a scalar here)."""
    acc, _ = _logits_tile(a_ptr, b_ptr, a_ptr, rows, cols, row_mask, col_mask, K, stride_a, stride_b,
                          1.0, 1.0, False, False, BLOCK_N, BLOCK_M, BLOCK_K, DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr)
    keep = row_mask[:, None] & col_mask[None, :]
    if HAS_SELF:
        keep = keep & ((row_start + rows)[:, None] + self_offset != (col_start + cols)[None, :])
    return tl.where(keep, acc, float("-inf"))


@triton.jit
def _row_positive(tgt_ptr, lab_ptr, self_ptr, clab_ptr, rows, cols, row_mask, col_mask, col_start,
                  clab_start, ROW_LABELS: tl.constexpr):
    """``[column is a positive of row]`` for the rows' target (index or label set)."""
    gcols = col_start + cols
    if ROW_LABELS:
        lab = tl.load(lab_ptr + rows, mask=row_mask, other=-1)
        me = tl.load(self_ptr + rows, mask=row_mask, other=-1)
        clab = tl.load(clab_ptr + (gcols - clab_start), mask=col_mask, other=-2)
        pos = (lab[:, None] == clab[None, :]) & (gcols[None, :] != me[:, None])
    else:
        tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
        pos = tgt[:, None] == gcols[None, :]
    return pos & row_mask[:, None] & col_mask[None, :]


@triton.jit
def _col_positive(ctgt_ptr, rows, cols, row_mask, col_mask, row_start):
    ct = tl.load(ctgt_ptr + cols, mask=col_mask, other=-1)
    return (ct[None, :] == (row_start + rows)[:, None]) & row_mask[:, None] & col_mask[None, :]


@triton.jit
def _stats_kernel(a_ptr, b_ptr, bias_ptr, tgt_ptr, lab_ptr, self_ptr, clab_ptr, ctgt_ptr,
                  row_out_ptr, col_out_ptr,
                  N, M, K, stride_a, stride_b, row_start, col_start, self_offset, clab_start,
                  num_programs,
                  HAS_BIAS: tl.constexpr, HAS_SELF: tl.constexpr, ROW: tl.constexpr,
                  ROW_LABELS: tl.constexpr, COL: tl.constexpr, SIGMOID: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < N
    # softmax: the dot relative to the running max m (its finite part ``ref``), moved as
    # m grows by the positives seen (``cnt``) times the step (crossent.core.stats); states
    # are (max, sum, dot, mass). Sigmoid: plain sums.
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    ref = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    dot = tl.zeros((BLOCK_N,), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, M, BLOCK_M):
        cols = c0 + tl.arange(0, BLOCK_M).to(tl.int64)
        col_mask = cols < M
        z = _scores(a_ptr, b_ptr, bias_ptr, rows, cols, row_mask, col_mask, K, stride_a, stride_b,
                    row_start, col_start, self_offset, HAS_BIAS, HAS_SELF,
                    BLOCK_N, BLOCK_M, BLOCK_K, DOT_PRECISION)
        valid = row_mask[:, None] & col_mask[None, :]
        if ROW:
            pos = _row_positive(tgt_ptr, lab_ptr, self_ptr, clab_ptr, rows, cols, row_mask, col_mask,
                                col_start, clab_start, ROW_LABELS)
            if SIGMOID:
                dot += tl.sum(tl.where(pos, z, 0.0), 1)
                s += tl.sum(tl.where(valid, _softplus(z), 0.0), 1)
            else:
                m_new = tl.maximum(m, tl.max(z, 1))
                safe = tl.where(m_new > float("-inf"), m_new, 0.0)
                zr = z - safe[:, None]
                dot = dot + cnt * (ref - safe) + tl.sum(tl.where(pos, zr, 0.0), 1)
                s = s * tl.exp(m - safe) + tl.sum(tl.exp(zr), 1)
                m = m_new
                ref = safe
            cnt += tl.sum(pos.to(tl.float32), 1)
        if COL:
            cpos = _col_positive(ctgt_ptr, rows, cols, row_mask, col_mask, row_start)
            if SIGMOID:
                cmax = tl.zeros((BLOCK_M,), dtype=tl.float32)
                csafe = cmax
                csum = tl.sum(tl.where(valid, _softplus(z), 0.0), 0)
            else:
                cmax = tl.max(z, 0)
                csafe = tl.where(cmax > float("-inf"), cmax, 0.0)
                csum = tl.sum(tl.exp(z - csafe[None, :]), 0)
            cdot = tl.sum(tl.where(cpos, z - csafe[None, :], 0.0), 0)
            base = col_out_ptr + pid * M + cols
            stride = num_programs * M
            tl.store(base, cmax, mask=col_mask)
            tl.store(base + stride, csum, mask=col_mask)
            tl.store(base + 2 * stride, cdot, mask=col_mask)
            tl.store(base + 3 * stride, tl.sum(cpos.to(tl.float32), 0), mask=col_mask)
    if ROW:
        if SIGMOID:
            m = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tl.store(row_out_ptr + rows, m, mask=row_mask)
        tl.store(row_out_ptr + N + rows, s, mask=row_mask)
        tl.store(row_out_ptr + 2 * N + rows, dot, mask=row_mask)
        tl.store(row_out_ptr + 3 * N + rows, cnt, mask=row_mask)


@triton.jit
def _grad_kernel(a_ptr, b_ptr, bias_ptr, tgt_ptr, lab_ptr, self_ptr, clab_ptr, ctgt_ptr,
                 rv_ptr, rg_ptr, rdg_ptr, cv_ptr, cg_ptr, cdg_ptr, g_ptr,
                 N, M, K, stride_a, stride_b, stride_g, row_start, col_start, self_offset,
                 clab_start,
                 HAS_BIAS: tl.constexpr, HAS_SELF: tl.constexpr, ROW: tl.constexpr,
                 ROW_LABELS: tl.constexpr, COL: tl.constexpr, SIGMOID: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    cols = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_mask = rows < N
    col_mask = cols < M
    z = _scores(a_ptr, b_ptr, bias_ptr, rows, cols, row_mask, col_mask, K, stride_a, stride_b,
                row_start, col_start, self_offset, HAS_BIAS, HAS_SELF,
                BLOCK_N, BLOCK_M, BLOCK_K, DOT_PRECISION)
    g = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    if ROW:
        rv = tl.load(rv_ptr + rows, mask=row_mask, other=0.0)
        rg = tl.load(rg_ptr + rows, mask=row_mask, other=0.0)
        rdg = tl.load(rdg_ptr + rows, mask=row_mask, other=0.0)
        if SIGMOID:
            p = 1.0 / (1.0 + tl.exp(-z))
        else:
            p = tl.exp(z - rv[:, None])
        pos = _row_positive(tgt_ptr, lab_ptr, self_ptr, clab_ptr, rows, cols, row_mask, col_mask,
                            col_start, clab_start, ROW_LABELS)
        g += rg[:, None] * p + tl.where(pos, rdg[:, None], 0.0)
    if COL:
        cv = tl.load(cv_ptr + cols, mask=col_mask, other=0.0)
        cg = tl.load(cg_ptr + cols, mask=col_mask, other=0.0)
        cdg = tl.load(cdg_ptr + cols, mask=col_mask, other=0.0)
        if SIGMOID:
            q = 1.0 / (1.0 + tl.exp(-z))
        else:
            q = tl.exp(z - cv[None, :])
        cpos = _col_positive(ctgt_ptr, rows, cols, row_mask, col_mask, row_start)
        g += cg[None, :] * q + tl.where(cpos, cdg[None, :], 0.0)
    mask = row_mask[:, None] & col_mask[None, :]
    tl.store(g_ptr + rows[:, None] * stride_g + cols[None, :], g, mask=mask)


# ------------------------------------------------------------------ host side


def _blocks(device: torch.device) -> tuple[int, int, int]:
    return BLOCKS["cuda" if device.type == "cuda" else "interpret"]


def supported(ops: sim.Operands, blk: sim.Block) -> bool:
    """Float32 accumulation and the targets the kernels know."""
    def index_ok(t):
        return t is None or (isinstance(t, ClassIndexTarget) and t.weight is None and not t.label_smoothing)

    row_ok = index_ok(blk.row_target) or isinstance(blk.row_target, LabelSetTarget)
    plain = blk.col_bias is None and blk.col_ids is None  # per-column terms: PyTorch tiles
    return ops.a.dtype == torch.float32 and row_ok and index_ok(blk.col_target) and plain


def _target_args(ops: sim.Operands, blk: sim.Block) -> dict:
    dev = ops.a.device
    none = torch.empty(0, dtype=torch.int64, device=dev)
    t, labels = blk.row_target, isinstance(blk.row_target, LabelSetTarget)
    return dict(
        tgt=t.index if blk.rows and not labels else none,
        lab=t.labels if labels else none,
        self=t.self_index if labels else none,
        clab=t.col_labels if labels else none,
        clab_start=t.col_labels_start if labels else 0,
        ctgt=blk.col_target.index if blk.cols else none,
        flags=dict(HAS_SELF=blk.self_offset is not None, ROW=blk.rows, ROW_LABELS=labels,
                   COL=blk.cols, SIGMOID=blk.aggregate == "sigmoid"),
    )


def block_forward(ops: sim.Operands, b: torch.Tensor, blk: sim.Block, p, row_state, col_state) -> None:
    """:func:`crossent.kernels.similarity.block_forward` with the scores on chip."""
    if not supported(ops, blk):
        return sim.block_forward(ops, b, blk, p, row_state, col_state)
    n, m = ops.a.shape[0], b.shape[0]
    if n == 0 or m == 0:
        return None
    agg = sim.aggregate(blk.aggregate)
    bn, bm, bk = _blocks(b.device)
    ta = _target_args(ops, blk)
    a_s, b = ops.a_scaled.contiguous(), b.contiguous()
    bias = ops.bias if ops.bias is not None else a_s.new_zeros(())
    band = max(bn, p.rows)
    for r0 in range(0, n, band):
        r1 = min(r0 + band, n)
        rows = r1 - r0
        programs = triton.cdiv(rows, bn)
        row_out = a_s.new_empty(4, rows) if blk.rows else a_s.new_empty(0)
        col_out = a_s.new_empty(4, programs, m) if blk.cols else a_s.new_empty(0)
        sliced = blk.row_target.rows(r0, r1) if blk.rows else None
        targs = _target_args(ops, sim.Block(blk.aggregate, sliced, blk.col_target, blk.self_offset,
                                            blk.row_start + r0, blk.col_start)) if blk.rows else ta
        _stats_kernel[(programs,)](
            a_s[r0:r1], b, bias, targs["tgt"], targs["lab"], targs["self"], targs["clab"], ta["ctgt"],
            row_out, col_out, rows, m, a_s.shape[1], a_s.stride(0), b.stride(0),
            blk.row_start + r0, blk.col_start, blk.self_offset or 0, targs["clab_start"], programs,
            HAS_BIAS=ops.bias is not None, **ta["flags"], BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk,
            DOT_PRECISION=_dot_precision(torch.float32),
        )
        if blk.rows:
            if isinstance(blk.row_target, LabelSetTarget):
                row_out[2:] *= sliced.coef  # dot and mass: t_ij = positive / P_i
            row_state[:, r0:r1] = agg.combine(row_state[:, r0:r1], row_out)
        if blk.cols:
            merged = col_out[:, 0]
            for j in range(1, programs):
                merged = agg.combine(merged, col_out[:, j])
            col_state.copy_(agg.combine(col_state, merged))
    return None


def _gradient_tile(out, scratch, ops: sim.Operands, b: torch.Tensor, blk: sim.Block, g: sim.BlockGrads,
                   r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
    """The kernel's ``G`` tile for rows ``[r0, r1)`` x columns ``[c0, c1)``."""
    bn, bm, bk = _blocks(b.device)
    dev = ops.a.device
    empty = torch.empty(0, dtype=ops.a.dtype, device=dev)
    rows_t = blk.row_target.rows(r0, r1) if blk.rows else None
    cols_t = blk.col_target.rows(c0, c1) if blk.cols else None
    sub = sim.Block(blk.aggregate, rows_t, cols_t, blk.self_offset, blk.row_start + r0, blk.col_start + c0)
    ta = _target_args(ops, sub)
    row = g.row_agg is not None or g.row_dot is not None
    col = g.col_agg is not None or g.col_dot is not None

    def vec(x, s, e):
        return empty if x is None else x[s:e].contiguous()

    zeros_r = torch.zeros(r1 - r0, dtype=ops.a.dtype, device=dev)
    zeros_c = torch.zeros(c1 - c0, dtype=ops.a.dtype, device=dev)
    rdg = vec(g.row_dot, r0, r1) if g.row_dot is not None else zeros_r
    if isinstance(rows_t, LabelSetTarget):
        rdg = rdg * rows_t.coef
    flags = dict(ta["flags"], ROW=row and blk.rows, COL=col and blk.cols)
    a_s, bb = ops.a_scaled[r0:r1], b[c0:c1]
    bias = ops.bias if ops.bias is not None else a_s.new_zeros(())
    _grad_kernel[(triton.cdiv(r1 - r0, bn), triton.cdiv(c1 - c0, bm))](
        a_s, bb, bias, ta["tgt"], ta["lab"], ta["self"], ta["clab"], ta["ctgt"],
        vec(g.row_value, r0, r1) if g.row_value is not None else zeros_r,
        vec(g.row_agg, r0, r1) if g.row_agg is not None else zeros_r, rdg,
        vec(g.col_value, c0, c1) if g.col_value is not None else zeros_c,
        vec(g.col_agg, c0, c1) if g.col_agg is not None else zeros_c,
        vec(g.col_dot, c0, c1) if g.col_dot is not None else zeros_c,
        out, r1 - r0, c1 - c0, a_s.shape[1], a_s.stride(0), bb.stride(0), out.stride(0),
        blk.row_start + r0, blk.col_start + c0, blk.self_offset or 0, ta["clab_start"],
        HAS_BIAS=ops.bias is not None, **flags, BLOCK_N=bn, BLOCK_M=bm, BLOCK_K=bk,
        DOT_PRECISION=_dot_precision(torch.float32),
    )
    return out


def block_backward(ops: sim.Operands, b: torch.Tensor, blk: sim.Block, p, g: sim.BlockGrads,
                   grad_a, grad_b, grad_bias) -> None:
    """:func:`crossent.kernels.similarity.block_backward` with ``G`` from the kernel."""
    if not supported(ops, blk):
        return sim.block_backward(ops, b, blk, p, g, grad_a, grad_b, grad_bias)
    return sim.block_backward(ops, b.contiguous(), blk, p, g, grad_a, grad_b, grad_bias,
                              gradient_tile=_gradient_tile)
