"""Two linear heads at once, tile by tile: the score source of the fused distillation.

The student's logits ``z = x @ W.T + b`` (``(N, V)``) and, for a dense teacher, the
teacher's ``t = x_t @ W_t.T + b_t``, are formed ``plan.rows x plan.cols`` at a time and
never whole. With ``s = z / T`` (``inv_t = 1 / T``), ``p = softmax(s)``, ``q = softmax(t / T)``
and ``D`` a divergence of :mod:`crossent.core.divergence`, three passes over the tiles:

1. statistics (:func:`stats`): the online log-sum-exp (``core.stats``, merged across
   tiles) of ``s``, of ``t / T`` and, when asked, of the raw ``z`` (the hard-label term at
   a temperature ``!= 1``); and the raw student logits at given columns ``index``
   (``(N, g)``: a top-k teacher's classes, the hard target);
2. divergence (:func:`divergence`, dense teacher): per row ``D_i`` and
   ``S_i = sum_v p_v g_v`` with ``g_v = dD/dp_v`` (:func:`crossent.core.divergence.divergence_weighted_scores`);
3. gradients (:func:`gradients`): for per-row coefficients the gradient tile with respect
   to the raw logits::

       G_iv = inv_t (A_i p_iv + a_i (p_iv g_iv - p_iv S_i)) + c_i softmax(z_i)_v + E_ij [v = index_ij]

   (``a``: on ``D``; ``A``: on the log-sum-exp of ``s``; ``c``: on the raw log-sum-exp;
   ``E``: on the gathered logits), then ``dx += G W``, ``dW += G.T x``, ``db += sum G``
   (:class:`crossent.kernels.torch_chunked._Sinks`, float32 accumulators).

Where whole rows fit one tile (``plan.fused``) the passes share the tiles of one band
(one pair of matmuls per band). The teacher never gets a gradient. A class-sharded caller
runs the passes separately and merges their ``(N,)`` results across ranks in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core import stats as _stats
from ..core.divergence import divergence_rows, divergence_weighted_scores
from ..core.reduction import accumulation_dtype
from ..core.statistics import ScoreTransform
from ..core.tiles import TilePlan
from .torch_chunked import LinearProblem, _Operands, _Sinks

_IDENTITY = ScoreTransform(1.0, None)


@dataclass
class TwoHeads:
    """One fused distillation problem (see the module docstring)."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    teacher_x: torch.Tensor | None = None
    teacher_weight: torch.Tensor | None = None
    teacher_bias: torch.Tensor | None = None
    inv_t: float = 1.0
    raw: bool = False  # also the log-sum-exp of the raw student logits
    index: torch.Tensor | None = None  # (N, g) int64 columns to gather (-1: none)
    kind: str | None = None  # the dense teacher's divergence
    beta: float = 0.5
    col_offset: int = 0  # the first class of this shard (a class-sharded caller)

    @property
    def acc(self) -> torch.dtype:
        return accumulation_dtype(self.x.dtype)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def student(self) -> LinearProblem:
        return LinearProblem(self.x, self.weight, self.bias, None, _IDENTITY, 0.0)

    def teacher(self) -> LinearProblem:
        return LinearProblem(self.teacher_x, self.teacher_weight, self.teacher_bias, None,
                             _IDENTITY, 0.0)


class HeadStats(NamedTuple):
    """Per-row results, ``(N,)`` (``gathered`` ``(N, g)``); None where not asked for.
    ``*_state`` are the unmerged :class:`~crossent.core.stats.RowStats` (for a cross-rank merge)."""

    lse: torch.Tensor
    lse_raw: torch.Tensor | None = None
    teacher_lse: torch.Tensor | None = None
    gathered: torch.Tensor | None = None
    div: torch.Tensor | None = None
    score: torch.Tensor | None = None


class Coefs(NamedTuple):
    """The per-row coefficients of the gradient tile (module docstring); None: zero."""

    soft: torch.Tensor | None = None  # a (N,)
    lse: torch.Tensor | None = None  # A (N,)
    raw: torch.Tensor | None = None  # c (N,)
    gathered: torch.Tensor | None = None  # E (N, g)


class _Band:
    """The logit tiles of one band of rows: computed on demand, kept when whole rows fit."""

    def __init__(self, p: TwoHeads, ops, tops, bufs, s: int, e: int, cols: int):
        self.p, self.ops, self.tops, self.s, self.e, self.cols = p, ops, tops, s, e, cols
        self.xs = ops.x(p.x[s:e])
        self.xt = None if tops is None else tops.x(p.teacher_x[s:e])
        self.bufs = bufs
        self.whole = cols >= p.num_classes
        self.ready = False

    def tile(self, c0: int):
        """``(z, t)``: raw student logits and teacher logits (None without) of columns
        ``[c0, c0 + width)``."""
        n, w = self.e - self.s, min(self.cols, self.p.num_classes - c0)
        zs = self.bufs[0][:n, :w]
        zt = None if self.tops is None else self.bufs[1][:n, :w]
        if self.whole and self.ready:
            return zs, zt
        self.ops.logits_(zs, self.xs, c0, _IDENTITY, False)
        if zt is not None:
            self.tops.logits_(zt, self.xt, c0, _IDENTITY, False)
        self.ready = True
        return zs, zt

    def columns(self):
        return range(0, self.p.num_classes, self.cols)


def _scaled(z: torch.Tensor, inv_t: float) -> torch.Tensor:
    return z if inv_t == 1.0 else z * inv_t


def _local_index(index: torch.Tensor, c0: int, width: int):
    cols = index - c0
    inside = (cols >= 0) & (cols < width)
    return cols.clamp(0, max(width - 1, 0)), inside


def _setup(p: TwoHeads, plan: TilePlan):
    ops = _Operands(p.student())
    tops = None if p.teacher_x is None else _Operands(p.teacher())
    n, v = p.x.shape[0], p.num_classes
    shape = (min(plan.rows, max(n, 1)), min(plan.cols, max(v, 1)))
    bufs = [torch.empty(shape, dtype=p.acc, device=p.x.device)]
    if tops is not None:
        bufs.append(torch.empty(shape, dtype=p.acc, device=p.x.device))
    return ops, tops, bufs


def _bands(p: TwoHeads, plan: TilePlan, ops, tops, bufs):
    for s in range(0, p.x.shape[0], plan.rows):
        yield _Band(p, ops, tops, bufs, s, min(s + plan.rows, p.x.shape[0]), plan.cols)


def _band_stats(p: TwoHeads, band: _Band, out: dict) -> None:
    """Pass 1 over one band: ``RowStats`` of ``s``, raw ``z`` and ``t / T`` (merged across
    the tiles) and the gathered logits, written into ``out``'s ``(N,)`` slices."""
    s, e = band.s, band.e
    states = {}
    gathered = None if p.index is None else out["gathered"][s:e]
    for c0 in band.columns():
        zs, zt = band.tile(c0)
        parts = {"lse": _stats.tile_stats(_scaled(zs, p.inv_t), None)}
        if p.raw:
            parts["lse_raw"] = _stats.tile_stats(zs, None)
        if zt is not None:
            parts["teacher_lse"] = _stats.tile_stats(_scaled(zt, p.inv_t), None)
        for k, part in parts.items():
            states[k] = part if k not in states else _stats.merge(states[k], part)
        if gathered is not None:
            cols, inside = _local_index(p.index[s:e] - p.col_offset, c0, zs.shape[1])
            gathered.copy_(torch.where(inside, zs.gather(1, cols), gathered))
    for k, state in states.items():
        out[k][s:e] = _stats.logsumexp(state)


def _log_probs(z: torch.Tensor, inv_t: float, lse: torch.Tensor) -> torch.Tensor:
    return torch.sub(_scaled(z, inv_t), lse.unsqueeze(1))


def _band_divergence(p: TwoHeads, band: _Band, st: HeadStats, div: torch.Tensor,
                     score: torch.Tensor) -> None:
    """Pass 2 over one band: ``D_i`` and ``S_i`` summed over the tiles."""
    s, e = band.s, band.e
    div[s:e] = 0
    score[s:e] = 0
    for c0 in band.columns():
        zs, zt = band.tile(c0)
        log_p = _log_probs(zs, p.inv_t, st.lse[s:e])
        log_q = _log_probs(zt, p.inv_t, st.teacher_lse[s:e])
        div[s:e] += divergence_rows(log_p, log_q, p.kind, p.beta)
        score[s:e] += divergence_weighted_scores(log_p, log_q, p.kind, p.beta).sum(1)


def _band_gradients(p: TwoHeads, band: _Band, st: HeadStats, k: Coefs, ops, sinks,
                    gx_acc: torch.Tensor | None) -> None:
    """Pass 3 over one band: the gradient tiles (module docstring) into the sinks."""
    s, e = band.s, band.e
    col = lambda t: None if t is None else t[s:e].unsqueeze(1)  # noqa: E731
    a, big_a, c = col(k.soft), col(k.lse), col(k.raw)
    for c0 in band.columns():
        zs, zt = band.tile(c0)
        log_p = _log_probs(zs, p.inv_t, st.lse[s:e])
        prob = log_p.exp()
        g = torch.zeros_like(prob) if big_a is None else prob * big_a
        if a is not None:
            log_q = _log_probs(zt, p.inv_t, st.teacher_lse[s:e])
            pg = divergence_weighted_scores(log_p, log_q, p.kind, p.beta)
            g += a * (pg - prob * st.score[s:e].unsqueeze(1))
            del log_q, pg
        del log_p, prob
        if p.inv_t != 1.0:
            g *= p.inv_t
        if c is not None:
            g += c * torch.exp(zs - st.lse_raw[s:e].unsqueeze(1))
        if k.gathered is not None:
            cols, inside = _local_index(p.index[s:e] - p.col_offset, c0, g.shape[1])
            g.scatter_add_(1, cols, torch.where(inside, k.gathered[s:e].to(g.dtype), 0.0))
        if gx_acc is None and sinks.grad_x is not None:  # one tile: dx directly
            sinks.grad_x[s:e].copy_(ops.matmul(g, ops.weight[c0:c0 + g.shape[1]]))
        sinks.add_tile(ops, g, band.xs, c0, gx_acc)


def _empty_stats(p: TwoHeads, want_div: bool) -> dict:
    n, acc, dev = p.x.shape[0], p.acc, p.x.device
    new = lambda: torch.full((n,), -torch.inf, dtype=acc, device=dev)  # noqa: E731
    out = {"lse": new()}
    if p.raw:
        out["lse_raw"] = new()
    if p.teacher_x is not None:
        out["teacher_lse"] = new()
    if p.index is not None:
        out["gathered"] = torch.zeros(p.index.shape, dtype=acc, device=dev)
    if want_div:
        out["div"] = torch.zeros(n, dtype=acc, device=dev)
        out["score"] = torch.zeros(n, dtype=acc, device=dev)
    return out


def stats(p: TwoHeads, plan: TilePlan) -> HeadStats:
    """Pass 1 alone: the log-sum-exps and the gathered logits (for a cross-rank merge)."""
    ops, tops, bufs = _setup(p, plan)
    out = _empty_stats(p, False)
    for band in _bands(p, plan, ops, tops, bufs):
        _band_stats(p, band, out)
    return HeadStats(**out)


def divergence(p: TwoHeads, plan: TilePlan, st: HeadStats) -> HeadStats:
    """Pass 2 alone, against the (global) log-sum-exps ``st``: ``st`` with ``div`` and ``score``
    (this shard's partial sums)."""
    ops, tops, bufs = _setup(p, plan)
    div = torch.zeros_like(st.lse)
    score = torch.zeros_like(st.lse)
    for band in _bands(p, plan, ops, tops, bufs):
        _band_divergence(p, band, st, div, score)
    return st._replace(div=div, score=score)


def run(p: TwoHeads, plan: TilePlan, *, st: HeadStats | None = None, coefs: Coefs | None = None,
        need_x: bool = True, need_w: bool = True, need_b: bool = True):
    """Statistics (and, for a dense teacher with ``p.kind``, ``D`` and ``S``) when ``st`` is
    None; then, with ``coefs``, the gradients against them (which may not depend on this
    call's statistics: they are known before, as for scalar reductions, or come from a
    backward). Returns ``(HeadStats, grad_x, grad_weight, grad_bias)``; whole-row bands
    compute each tile once."""
    ops, tops, bufs = _setup(p, plan)
    grads = coefs is not None
    sinks = _Sinks(p.student(), need_x and grads, need_w and grads, need_b and grads)
    sinks.first_band = False  # bands add into zeroed accumulators
    for t in (sinks.grad_w, sinks.grad_b):
        if t is not None:
            t.zero_()
    grads = grads and sinks.any
    want_div = p.kind is not None and p.teacher_x is not None
    out = _empty_stats(p, want_div) if st is None else None
    gx_buf = None
    if grads and sinks.grad_x is not None and plan.cols < p.num_classes:
        gx_buf = torch.empty(min(plan.rows, p.x.shape[0]), p.x.shape[1], dtype=p.acc,
                             device=p.x.device)
    result = st
    for band in _bands(p, plan, ops, tops, bufs):
        if out is not None:
            _band_stats(p, band, out)
            if want_div:
                _band_divergence(p, band, HeadStats(**out), out["div"], out["score"])
            result = HeadStats(**out)
        if grads:
            gx_acc = None if gx_buf is None else gx_buf[: band.e - band.s].zero_()
            _band_gradients(p, band, result, coefs, ops, sinks, gx_acc)
            if gx_acc is not None:
                sinks.grad_x[band.s:band.e].copy_(gx_acc)
    if st is None:
        result = HeadStats(**out)
    return result, sinks.grad_x, sinks.grad_w, sinks.grad_b
