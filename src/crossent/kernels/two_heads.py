"""Two linear heads at once, tile by tile: the score source of the fused distillation.

The student's logits ``z = x @ W.T + b`` (``(N, V)``) and, for a dense teacher, the
teacher's ``t = x_t @ W_t.T + b_t``, are formed ``plan.rows x plan.cols`` at a time and
never whole. With ``s = z / T`` (``inv_t = 1 / T``), ``p = softmax(s)``, ``q = softmax(t / T)``
and ``D`` a divergence of :mod:`crossent.core.divergence`, three passes over the tiles:

1. statistics (:func:`stats`): the online log-sum-exp (``core.stats``, merged across
   tiles) of ``s``, of ``t / T`` and, when asked, of the raw ``z`` (the hard-label term at
   a temperature ``!= 1``); and the raw student logits at given columns ``index``
   (``(N, g)``: a top-k teacher's classes, the hard target);
2. divergence (:func:`divergence`, dense teacher): per row ``D_i`` (the definitions of
   :func:`crossent.core.divergence.divergence_rows`, in place) and ``S_i = sum_v p_v g_v``
   with ``g_v = dD/dp_v``::

       forward_kl: p_v g_v = -q_v                 reverse_kl: p_v g_v = p_v (log p_v - log q_v + 1)
       jsd:        p_v g_v = (1 - beta) p_v log(p_v / m_v)

   so that ``dD/ds_v = p_v g_v - p_v S_i``;
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

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core import stats as _stats
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


class _Work:
    """The tile-sized float buffers of a call: the student's tile ``z``, the teacher's ``t``
    (dense teacher only) and two scratch tiles ``w1``, ``w2``."""

    def __init__(self, p: TwoHeads, plan: TilePlan):
        n, v = p.x.shape[0], p.num_classes
        shape = (min(plan.rows, max(n, 1)), min(plan.cols, max(v, 1)))
        new = lambda: torch.empty(shape, dtype=p.acc, device=p.x.device)  # noqa: E731
        self.z, self.w1, self.w2 = new(), new(), new()
        self.t = new() if p.teacher_x is not None else None


class _Tile:
    """One tile of columns ``[c0, c0 + width)`` of a band, transformed in place, stage by
    stage: raw logits; scaled (``s = z / T``, ``t / T``) with their statistics taken; log-
    probabilities and the divergence terms (``w1 = p g``, ``w2 = p``); the gradient (in
    ``w1``)."""

    def __init__(self, p: TwoHeads, ops, tops, work: _Work, xs, xt, s: int, e: int, c0: int,
                 width: int):
        n = e - s
        self.p, self.s, self.e, self.c0 = p, s, e, c0
        self.z = work.z[:n, :width]
        self.t = None if work.t is None else work.t[:n, :width]
        self.w1, self.w2 = work.w1[:n, :width], work.w2[:n, :width]
        ops.logits_(self.z, xs, c0, _IDENTITY, False)
        if self.t is not None:
            tops.logits_(self.t, xt, c0, _IDENTITY, False)

    def gather_(self, gathered: torch.Tensor) -> None:
        """The raw student logits at ``p.index`` that fall in this tile, into ``gathered``."""
        cols, inside = _local_index(self.p.index[self.s:self.e] - self.p.col_offset, self.c0,
                                    self.z.shape[1])
        gathered.copy_(torch.where(inside, self.z.gather(1, cols), gathered))

    def scale_(self, states: dict | None) -> None:
        """Raw logits to scaled ones; with ``states``, each head's tile statistics merged in
        (``core.stats``; the raw student's first, when asked for)."""
        p = self.p
        heads = [("lse", self.z)] + ([] if self.t is None else [("teacher_lse", self.t)])
        if states is not None and p.raw:
            _merge(states, "lse_raw", _stats.row_stats_(self.z, None, self.w1))
        for name, z in heads:
            if p.inv_t != 1.0:
                z.mul_(p.inv_t)
            if states is not None:
                _merge(states, name, _stats.row_stats_(z, None, self.w1))

    def terms_(self, st: HeadStats, kind: str | None, beta: float) -> torch.Tensor | None:
        """Scaled tiles to ``log p`` (in ``z``) and ``log q`` (in ``t``); ``w2 = p`` and, with a
        teacher, ``w1 = p g`` (module docstring). Returns this tile's part of ``D`` (None
        without teacher)."""
        s, e = self.s, self.e
        log_p = self.z.sub_(st.lse[s:e].unsqueeze(1))
        p_buf, pg = self.w2, self.w1
        if self.t is None or kind is None:
            torch.exp(log_p, out=p_buf)
            return None
        # q = 0 (a masked teacher class) as the most negative float: exp gives 0, and
        # products 0 instead of 0 * inf
        log_q = self.t.sub_(st.teacher_lse[s:e].unsqueeze(1)).clamp_(min=torch.finfo(log_p.dtype).min)
        if kind == "forward_kl":  # D = sum q (log q - log p), p g = -q
            q = torch.exp(log_q, out=pg)
            div = torch.sub(log_q, log_p, out=p_buf).mul_(q).sum(1)
            pg.neg_()
            torch.exp(log_p, out=p_buf)
            return div
        if kind == "reverse_kl":  # D = sum p (log p - log q), p g = p (log p - log q + 1)
            prob = torch.exp(log_p, out=p_buf)
            ratio = torch.sub(log_p, log_q, out=pg)
            div = torch.mul(prob, ratio, out=self.t).sum(1)  # t is free from here
            pg.add_(1.0).mul_(prob)
            return div
        # jsd: log m = logaddexp(log p + log(1 - beta), log q + log beta)
        c1, c2 = math.log1p(-beta), math.log(beta)
        log_m = torch.logaddexp(log_p.add_(c1), log_q.add_(c2), out=pg)
        log_p.sub_(c1)
        log_q.sub_(c2)
        q = torch.exp(log_q, out=p_buf)
        div_q = log_q.sub_(log_m).mul_(q).sum(1)  # t: q log(q / m), free from here
        prob = torch.exp(log_p, out=p_buf)
        pg = torch.sub(log_p, log_m, out=pg).mul_(prob)  # p log(p / m)
        div = beta * div_q + (1.0 - beta) * pg.sum(1)
        pg.mul_(1.0 - beta)
        return div

    def gradient_(self, st: HeadStats, k: Coefs) -> torch.Tensor:
        """The gradient tile (module docstring) into ``w1``, from :meth:`terms_`'s buffers."""
        p, s, e = self.p, self.s, self.e
        col = lambda t: None if t is None else t[s:e].unsqueeze(1)  # noqa: E731
        g, prob = self.w1, self.w2
        if k.soft is not None:  # a (p g - p S)
            g.addcmul_(prob, col(st.score), value=-1.0).mul_(col(k.soft))
        else:
            g.zero_()
        if k.lse is not None:
            g.addcmul_(prob, col(k.lse))
        if p.inv_t != 1.0:
            g.mul_(p.inv_t)
        if k.raw is not None:  # c softmax(z): z = T (log p + lse), from log p in z
            raw = self.z.add_(col(st.lse)).mul_(1.0 / p.inv_t).sub_(col(st.lse_raw)).exp_()
            g.addcmul_(raw, col(k.raw))
        if k.gathered is not None:
            cols, inside = _local_index(p.index[s:e] - p.col_offset, self.c0, g.shape[1])
            g.scatter_add_(1, cols, torch.where(inside, k.gathered[s:e].to(g.dtype), 0.0))
        return g


def _merge(states: dict, name: str, part) -> None:
    states[name] = part if name not in states else _stats.merge(states[name], part)


def _local_index(index: torch.Tensor, c0: int, width: int):
    cols = index - c0
    inside = (cols >= 0) & (cols < width)
    return cols.clamp(0, max(width - 1, 0)), inside


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


def _walk(p: TwoHeads, plan: TilePlan, *, stats: bool, div: bool, coefs: Coefs | None,
          st: HeadStats | None, sinks=None):
    """The passes over every band: statistics (``stats``), ``D`` and ``S`` (``div``), the
    gradients (``coefs``, into ``sinks``). A band of whole rows computes its tiles once;
    otherwise each pass recomputes them. Returns the per-row results as a dict."""
    ops = _Operands(p.student())
    tops = None if p.teacher_x is None else _Operands(p.teacher())
    work = _Work(p, plan)
    n, v = p.x.shape[0], p.num_classes
    out = _empty_stats(p, div) if st is None else {k: t for k, t in st._asdict().items()
                                                    if t is not None}
    if div and st is not None:
        out["div"] = torch.zeros_like(st.lse)
        out["score"] = torch.zeros_like(st.lse)
    whole = plan.cols >= v
    gx_buf = None
    if coefs is not None and sinks.grad_x is not None and not whole:
        gx_buf = torch.empty(min(plan.rows, n), p.x.shape[1], dtype=p.acc, device=p.x.device)
    for s in range(0, n, plan.rows):
        e = min(s + plan.rows, n)
        if s > 0 and sinks is not None:
            sinks.first_band = False
        xs = ops.x(p.x[s:e])
        xt = None if tops is None else tops.x(p.teacher_x[s:e])
        new_tile = lambda c0: _Tile(p, ops, tops, work, xs, xt, s, e, c0,  # noqa: E731
                                    min(plan.cols, v - c0))
        tile = None
        if stats:
            states: dict = {}
            for c0 in range(0, v, plan.cols):
                tile = new_tile(c0)
                if p.index is not None:
                    tile.gather_(out["gathered"][s:e])
                tile.scale_(states)
            for name, state in states.items():
                out[name][s:e] = _stats.logsumexp(state)
        view = HeadStats(**out)
        if div:
            for c0 in range(0, v, plan.cols):
                if not (whole and tile is not None):
                    tile = new_tile(c0)
                    tile.scale_(None)
                part = tile.terms_(view, p.kind, p.beta)
                out["div"][s:e] += part
                out["score"][s:e] += tile.w1.sum(1)
            view = HeadStats(**out)
        if coefs is None or not sinks.any:
            continue
        gx_acc = None if gx_buf is None else gx_buf[: e - s].zero_()
        for c0 in range(0, v, plan.cols):
            if not (whole and tile is not None):
                tile = new_tile(c0)
                tile.scale_(None)
                tile.terms_(view, p.kind if coefs.soft is not None else None, p.beta)
            elif not div:
                tile.terms_(view, None, p.beta)
            g = tile.gradient_(view, coefs)
            if gx_acc is None and sinks.grad_x is not None:  # whole rows: dx directly
                sinks.grad_x[s:e].copy_(ops.matmul(g, ops.weight))
            sinks.add_tile(ops, g, xs, c0, gx_acc)
            tile = None if not whole else tile
        if gx_acc is not None:
            sinks.grad_x[s:e].copy_(gx_acc)
    return out


def stats(p: TwoHeads, plan: TilePlan) -> HeadStats:
    """Pass 1 alone: the log-sum-exps and the gathered logits (for a cross-rank merge)."""
    return HeadStats(**_walk(p, plan, stats=True, div=False, coefs=None, st=None))


def divergence(p: TwoHeads, plan: TilePlan, st: HeadStats) -> HeadStats:
    """Pass 2 alone, against the (global) log-sum-exps ``st``: ``st`` with ``div`` and ``score``
    (this shard's partial sums)."""
    return HeadStats(**_walk(p, plan, stats=False, div=True, coefs=None, st=st))


def run(p: TwoHeads, plan: TilePlan, *, st: HeadStats | None = None, coefs: Coefs | None = None,
        need_x: bool = True, need_w: bool = True, need_b: bool = True):
    """Statistics (and, for a dense teacher with ``p.kind``, ``D`` and ``S``) when ``st`` is
    None; then, with ``coefs``, the gradients against them (coefficients known before the
    statistics, as for scalar reductions, or from a backward). Returns ``(HeadStats,
    grad_x, grad_weight, grad_bias)``."""
    grads = coefs is not None
    sinks = _Sinks(p.student(), need_x and grads, need_w and grads, need_b and grads)
    want_div = st is None and p.kind is not None and p.teacher_x is not None
    out = _walk(p, plan, stats=st is None, div=want_div, coefs=coefs, st=st, sinks=sinks)
    return HeadStats(**out), sinks.grad_x, sinks.grad_w, sinks.grad_b
