"""Triton backend of the fused linear cross-entropy: logit tiles formed on chip.

Two kernels, both recomputing ``z = softcap(scale * (x W^T + b))`` tile by tile in
registers (``tl.dot`` over ``BLOCK_H`` slices of the hidden size), never writing logits:

- :func:`_stats_kernel`, one program per ``BLOCK_N`` rows, walks the whole vocabulary
  with the online softmax recurrence (Milakov & Gimelshein 2018) and writes per-row
  ``lse``, and relative to the row max ``m`` ``lse - m`` and the target dot
  ``sum_c t_c (z_c - m)`` (:mod:`crossent.core.stats`), and optionally entropy and argmax.
- :func:`_grad_kernel`, one program per ``BLOCK_N x BLOCK_V`` tile of a row band,
  writes the gradient tile ``G = p_coef * exp(z - lse) + t_coef * t`` chained through
  the soft-cap and scale (see :mod:`crossent.kernels.torch_chunked` for the formulas;
  with an entropy gradient, ``p (p_coef - e (log p + H)) + t_coef * t``);
  ``dx = G @ W``, ``dW += G^T x`` and ``db += sum G`` are then dense matmuls on the
  band, in float32, deterministic (no atomics). The band follows the memory budget.

Offsets are int64 so ``N x V`` may pass 2^31. Class-index targets (with class weight
and label smoothing) run here; probability targets, float64 inputs and other score
sources (the margin heads of :mod:`crossent.margin`) use the PyTorch backend. Under ``TRITON_INTERPRET=1`` the same kernels run on the CPU (tests).

Design after Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models"
(2024), with the backward matmuls left to the BLAS as in Hsu et al., "Liger Kernel" (2024).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..core.targets import ClassIndexTarget
from ..core.tiles import TilePlan
from . import torch_chunked
from .torch_chunked import LinearProblem, LinearResult


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, H, stride_x, stride_w,
                 scale, cap, HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    """Returns ``(z, u)``: the transformed scores and ``tanh`` (``u`` is 0 without cap)."""
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        hm = hs < H
        xt = tl.load(x_ptr + rows[:, None] * stride_x + hs[None, :], mask=row_mask[:, None] & hm[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[:, None] * stride_w + hs[None, :], mask=col_mask[:, None] & hm[None, :], other=0.0)
        acc += tl.dot(xt, tl.trans(wt), input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[None, :]
    acc = acc * scale
    u = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    if HAS_CAP:
        u = _tanh(acc / cap)
        acc = u * cap
    return acc, u


@triton.jit
def _stats_kernel(x_ptr, w_ptr, b_ptr, y_ptr, tw_ptr, valid_ptr, cw_ptr,
                  lse_ptr, dot_ptr, ent_ptr, arg_ptr, lse_shifted_ptr, shift_ptr,
                  N, V, H, stride_x, stride_w, scale, cap, smooth_keep, smooth_each,
                  HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, HAS_CW: tl.constexpr,
                  STATS: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    row_mask = rows < N
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    # Sums relative to the running max m (its finite part, ``ref``), re-referenced as m
    # grows (crossent.core.stats): the loss mass * log s - dot then never subtracts two large
    # numbers. ``seen``: the smoothing weight of the columns seen (sum of w_c, or count).
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    ref = tl.zeros((BLOCK_N,), dtype=tl.float32)
    s = tl.zeros((BLOCK_N,), dtype=tl.float32)
    picked = tl.zeros((BLOCK_N,), dtype=tl.float32)
    spread = tl.zeros((BLOCK_N,), dtype=tl.float32)
    seen = tl.zeros((BLOCK_N,), dtype=tl.float32)
    zexp = tl.zeros((BLOCK_N,), dtype=tl.float32)
    best = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        col_mask = cols < V
        z, u = _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, H, stride_x,
                            stride_w, scale, cap, HAS_BIAS, HAS_CAP, BLOCK_N, BLOCK_V, BLOCK_H,
                            DOT_PRECISION)
        z = tl.where(col_mask[None, :], z, float("-inf"))
        # a target outside this block's real columns (another rank's class shard, or a
        # padded column past V) picks nothing: padded columns hold -inf
        hit = (cols[None, :] == y[:, None]) & col_mask[None, :]
        picked += tl.sum(tl.where(hit, z, 0.0), 1)
        tile_max = tl.max(z, 1)
        m_new = tl.maximum(m, tile_max)
        # exp against a finite shift: while a row has seen only -inf (e.g. a tile of
        # padding columns with a -inf bias) m_new = -inf, and exp(-inf - (-inf)) is NaN
        ref_new = tl.where(m_new > float("-inf"), m_new, 0.0)
        delta = ref - ref_new  # <= 0, finite
        alpha = tl.exp(m - ref_new)
        zr = z - ref_new[:, None]
        zz = tl.where(col_mask[None, :], zr, 0.0)
        if HAS_CW:
            cw = tl.load(cw_ptr + cols, mask=col_mask, other=0.0)
            spread = spread + seen * delta + tl.sum(zz * cw[None, :], 1)
            seen += tl.sum(cw, 0)
        else:
            spread = spread + seen * delta + tl.sum(zz, 1)
            seen += tl.sum(col_mask.to(tl.float32), 0)
        e = tl.exp(zr)
        if STATS:
            # where, not a product: a -inf score has e = 0, and 0 * -inf is NaN
            zexp = (zexp + s * delta) * alpha + tl.sum(e * tl.where(e > 0.0, zz, 0.0), 1)
            tile_arg = tl.argmax(z, 1).to(tl.int64) + v0
            best = tl.where(tile_max > m, tile_arg, best)
        s = s * alpha + tl.sum(e, 1)
        m = m_new
        ref = ref_new
    log_s = tl.log(s)
    lse = m + log_s
    tw = tl.load(tw_ptr + rows, mask=row_mask, other=0.0)
    valid = tl.load(valid_ptr + rows, mask=row_mask, other=0.0)
    # the smoothing term only where there is smoothing: spread is -inf when a score is
    # (a -inf bias), and 0 * -inf is NaN
    share = smooth_each * valid
    dot = smooth_keep * tw * (picked - ref) + share * tl.where(share != 0.0, spread, 0.0)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(lse_shifted_ptr + rows, log_s, mask=row_mask)
    tl.store(shift_ptr + rows, ref, mask=row_mask)
    tl.store(dot_ptr + rows, dot, mask=row_mask)
    if STATS:
        tl.store(ent_ptr + rows, log_s - zexp / s, mask=row_mask)
        tl.store(arg_ptr + rows, best, mask=row_mask)


@triton.jit
def _grad_kernel(x_ptr, w_ptr, b_ptr, y_ptr, tw_ptr, valid_ptr, cw_ptr, lse_ptr,
                 pcoef_ptr, tcoef_ptr, g_ptr, ecoef_ptr, ent_ptr,
                 N, V, H, v_start, v_width, stride_x, stride_w, stride_g, scale, cap,
                 smooth_keep, smooth_each,
                 HAS_BIAS: tl.constexpr, HAS_CAP: tl.constexpr, HAS_CW: tl.constexpr,
                 HAS_ENT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    local = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    cols = v_start + local
    row_mask = rows < N
    col_mask = (local < v_width) & (cols < V)
    z, u = _logits_tile(x_ptr, w_ptr, b_ptr, rows, cols, row_mask, col_mask, H, stride_x,
                        stride_w, scale, cap, HAS_BIAS, HAS_CAP, BLOCK_N, BLOCK_V, BLOCK_H,
                            DOT_PRECISION)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    pcoef = tl.load(pcoef_ptr + rows, mask=row_mask, other=0.0)
    tcoef = tl.load(tcoef_ptr + rows, mask=row_mask, other=0.0)
    y = tl.load(y_ptr + rows, mask=row_mask, other=0)
    tw = tl.load(tw_ptr + rows, mask=row_mask, other=0.0)
    valid = tl.load(valid_ptr + rows, mask=row_mask, other=0.0)
    if HAS_ENT:
        # the entropy's share: p (pcoef - e (log p + H)); 0 where p = 0 (a -inf score)
        ecoef = tl.load(ecoef_ptr + rows, mask=row_mask, other=0.0)
        ent = tl.load(ent_ptr + rows, mask=row_mask, other=0.0)
        log_p = tl.maximum(z - lse[:, None], -1e4)
        g = tl.exp(log_p) * (pcoef[:, None] - ecoef[:, None] * (log_p + ent[:, None]))
    else:
        g = pcoef[:, None] * tl.exp(z - lse[:, None])
    onehot = tl.where(cols[None, :] == y[:, None], smooth_keep * tw[:, None], 0.0)
    if HAS_CW:
        cw = tl.load(cw_ptr + cols, mask=col_mask, other=0.0)
        t = onehot + smooth_each * valid[:, None] * cw[None, :]
    else:
        t = onehot + smooth_each * valid[:, None]
    g += tcoef[:, None] * t
    if HAS_CAP:
        g = g * (1.0 - u * u)
    g = g * scale
    mask = row_mask[:, None] & col_mask[None, :]
    tl.store(g_ptr + rows[:, None] * stride_g + local[None, :], g, mask=mask)


BLOCKS = {"interpret": (16, 32, 16), "cuda": (64, 128, 64)}


def _blocks(device: torch.device) -> tuple[int, int, int]:
    return BLOCKS["cuda" if device.type == "cuda" else "interpret"]


def _supported(p: LinearProblem) -> bool:
    """Class-index targets, no float64, plain ``x W^T + b`` scores. Other score sources
    (the margin heads) run on the PyTorch backend."""
    return (isinstance(p.target, ClassIndexTarget) and p.x.dtype != torch.float64
            and p.scores is None)


def _common(p: LinearProblem, t: ClassIndexTarget):
    dev = p.x.device
    cw = t.weight if t.weight is not None else torch.empty(0, dtype=torch.float32, device=dev)
    eps, num = t.label_smoothing, t.num_classes
    cap = p.transform.softcap
    return dict(
        arrays=(t.index, t.target_weight.float(), t.valid.float(), cw.float()),
        scalars=dict(scale=float(p.transform.logit_scale), cap=float(cap or 1.0),
                     smooth_keep=1.0 - eps, smooth_each=eps / num),
        flags=dict(HAS_BIAS=p.bias is not None, HAS_CAP=cap is not None, HAS_CW=t.weight is not None,
                   DOT_PRECISION=_dot_precision(p.x.dtype)),
    )


def _dot_precision(dtype: torch.dtype) -> str:
    """fp32 operands: IEEE products unless the user allowed TF32 for PyTorch's matmuls
    (``torch.backends.cuda.matmul.allow_tf32``), so results match ``F.linear``'s. Half
    operands use the tensor cores either way."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def run(p: LinearProblem, plan: TilePlan, *, row_scale=None, lse=None, need_x=True, need_w=True,
        need_b=True, entropy=False, argmax=False, entropy_grad=None) -> LinearResult:
    """The :mod:`crossent.kernels.torch_chunked` contract, with logit tiles on chip."""
    if not _supported(p):
        return torch_chunked.run(p, plan, row_scale=row_scale, lse=lse, need_x=need_x,
                                 need_w=need_w, need_b=need_b, entropy=entropy, argmax=argmax,
                                 entropy_grad=entropy_grad)
    x = p.x.contiguous()
    w = p.weight.contiguous()
    b = p.bias if p.bias is not None else x.new_empty(0)
    n, h = x.shape
    v = w.shape[0]
    dev = x.device
    bn, bv, bh = _blocks(dev)
    c = _common(p, p.target)
    y, tw, valid, cw = c["arrays"]
    dot = ent = best = lse_shifted = shift = None
    stats_wanted = lse is None
    if stats_wanted:
        lse = torch.empty(n, dtype=torch.float32, device=dev)
        dot = torch.empty_like(lse)
        lse_shifted = torch.empty_like(lse)
        shift = torch.empty_like(lse)
        # the kernel writes both per-row statistics when either is asked for
        stats = bool(entropy or argmax)
        ent = torch.empty_like(lse) if stats else lse.new_empty(1)
        best = torch.empty(n if stats else 1, dtype=torch.int64, device=dev)
        _stats_kernel[(triton.cdiv(n, bn),)](
            x, w, b, y, tw, valid, cw, lse, dot, ent, best, lse_shifted, shift,
            n, v, h, x.stride(0), w.stride(0),
            **c["scalars"], **c["flags"], STATS=stats,
            BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
        )
        ent = ent if entropy else None
        best = best if argmax else None
    gx = gw = gb = None
    if row_scale is not None and (need_x or need_w or (need_b and p.bias is not None)):
        r = row_scale.float()
        pcoef = (r * (p.target.mass.float() + 2.0 * p.z_loss * lse)).contiguous()
        tcoef = (-r).contiguous()
        has_ent = entropy_grad is not None
        ecoef = entropy_grad.coef.float().contiguous() if has_ent else pcoef
        ent_h = entropy_grad.entropy.float().contiguous() if has_ent else pcoef
        gx = torch.empty_like(x) if need_x else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=dev) if need_w else None
        gb = torch.zeros(v, dtype=torch.float32, device=dev) if need_b and p.bias is not None else None
        rows, cols = min(plan.rows, n), min(plan.cols, v)
        buf = torch.empty(rows, cols, dtype=torch.float32, device=dev)
        block_cols = max(1, (rows * cols) // h)
        for s in range(0, n, rows):
            e = min(s + rows, n)
            xb = x[s:e]
            gx_acc = torch.zeros(e - s, h, dtype=torch.float32, device=dev) if need_x else None
            for c0 in range(0, v, cols):
                k = min(cols, v - c0)
                g = buf[: e - s, :k]
                _grad_kernel[(triton.cdiv(e - s, bn), triton.cdiv(k, bv))](
                    xb, w, b, y[s:e], tw[s:e], valid[s:e], cw, lse[s:e], pcoef[s:e], tcoef[s:e], g,
                    ecoef[s:e], ent_h[s:e],
                    e - s, v, h, c0, k, x.stride(0), w.stride(0), g.stride(0),
                    **c["scalars"], **c["flags"], HAS_ENT=has_ent,
                    BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh,
                )
                if gx_acc is not None:
                    gx_acc += (g.to(w.dtype) @ w[c0:c0 + k]).float()
                if gw is not None:
                    # G^T x has dW's rows for this tile (k x H): form it in column blocks
                    # no larger than the tile, never a dW-sized temporary.
                    for j0 in range(0, k, block_cols):
                        j1 = min(j0 + block_cols, k)
                        gw[c0 + j0:c0 + j1] += (g[:, j0:j1].T.to(x.dtype) @ xb).float()
                if gb is not None:
                    gb[c0:c0 + k] += g.sum(0)
            if gx is not None:
                gx[s:e] = gx_acc
    return LinearResult(lse if stats_wanted else None, dot, ent, best, gx, gw, gb,
                        lse_shifted, shift)
