"""Plain-PyTorch backend of the fused linear cross-entropy: logit tiles, never logits.

Scores are ``z = softcap(logit_scale * (x @ W.T + b))`` for hidden states ``x``
``(N, H)``, output weight ``W`` ``(V, H)`` and bias ``b`` ``(V,)``. For a target
distribution ``t`` (:mod:`crossent.core.targets`) with row mass ``s_i``::

    loss_i   = s_i * lse_i - sum_c t_ic z_ic + z_loss * lse_i^2
    dloss/dz = (s_i + 2 z_loss lse_i) * softmax(z_i) - t_i

and with ``G = r[:, None] * dloss/dz`` chained back through the soft-cap
(``1 - tanh^2``) and the scale, for per-row upstream gradients ``r``::

    dx = G @ W          dW = G.T @ x          db = G.sum(0)

The backend walks ``plan.rows``-token bands and ``plan.cols``-class tiles. With whole
rows per tile (``plan.fused``) one matmul gives the statistics and, in the same buffer,
the gradient tile; otherwise statistics are merged across tiles
(:func:`crossent.core.stats.merge`) and a second pass recomputes each tile against the
final log-sum-exp. ``dW`` and ``db`` accumulate in float32 in place (``addmm_``);
``dx`` is formed band by band. On CPU, whole-row tiles become ``softmax(z)`` in place
through PyTorch's fused row kernel (:func:`crossent.core.stats.softmax_stats_`), and with
class-index targets and no soft-cap the target and the row coefficients go into the
matmuls' operands rather than into the tile (:class:`_FoldedTarget`): after the logits,
a band's tile is read once by the max, read and written once by the softmax, then only
read by the two gradient matmuls. Memory beyond the outputs: the tile buffer(s) and, when
the vocabulary is tiled, one ``rows x H`` float32 accumulator.

Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models" (2024) and Hsu et
al., "Liger Kernel" (2024) describe the same idea on GPUs.

Contract shared with the Triton backend: :func:`run` takes a :class:`LinearProblem`,
a :class:`~crossent.core.tiles.TilePlan` and

- ``row_scale`` ``(N,)`` acc dtype or None: the ``r`` above (None: statistics only);
- ``lse`` ``(N,)`` or None: known log-sum-exp (then only gradients are formed);
- ``entropy_grad`` :class:`EntropyGrad` or None (only with ``lse``): the upstream
  gradient ``e`` of each row's entropy ``H`` of ``softmax(z)`` and ``H`` itself, which add
  ``-e_i p_ic (z_ic - lse_i + H_i)`` (``dH/dz = -p (log p + H)``) to ``dloss/dz`` above;

and returns a :class:`LinearResult`, whose statistics are relative to the row max
(``lse_shifted``, ``dot``; ``shift``) so that the loss keeps its digits.

**Other score sources.** ``LinearProblem.scores`` (default None: the scores above) may
name another source of logits over the same weight, e.g. the margin heads'
:class:`crossent.kernels.margin_scores.MarginScores`. It gives ``num_classes`` and
``band(start, end)``, whose ``logits_(tile, ops, xb, c0)`` writes a tile of scores,
``add_tile(ops, sinks, g, xb, c0, gx_acc)`` takes the tile's ``dL/dz`` into the
gradients, and ``finish_x_(gx_acc)`` completes a band's ``dx``; ``finish_w_(grad_w)``
completes ``dW`` after every band. Statistics, merge and targets are unchanged. Such a
source ignores the bias and the :class:`ScoreTransform`, and always accumulates ``dx``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..core import stats as _stats
from ..core.reduction import accumulation_dtype
from ..core.statistics import ScoreTransform
from ..core.targets import ClassIndexTarget, ClassProbTarget
from ..core.tiles import TilePlan


@dataclass
class LinearProblem:
    """One fused linear cross-entropy: 2-D ``x``, ``weight`` ``(V, H)``, optional ``bias``."""

    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    target: ClassIndexTarget | ClassProbTarget
    transform: ScoreTransform
    z_loss: float
    scores: object | None = None  # another score source (see the module docstring)

    @property
    def acc(self) -> torch.dtype:
        return accumulation_dtype(self.x.dtype)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0] if self.scores is None else self.scores.num_classes


class LinearResult(NamedTuple):
    lse: torch.Tensor | None  # the log-sum-exp itself (the gradient pass's)
    dot: torch.Tensor | None  # sum_c t_c (z_c - shift)
    entropy: torch.Tensor | None
    argmax: torch.Tensor | None
    grad_x: torch.Tensor | None  # x's dtype
    grad_weight: torch.Tensor | None  # float32 (float64 for float64 input)
    grad_bias: torch.Tensor | None  # float32 (float64 for float64 input)
    # with the statistics: lse - shift (in [0, log V] for a finite row), and the shift,
    # the row max (0 for a row of -inf). The loss is mass * lse_shifted - dot, a sum of
    # non-negative terms at any magnitude of the scores (crossent.core.stats).
    lse_shifted: torch.Tensor | None = None
    shift: torch.Tensor | None = None


class EntropyGrad(NamedTuple):
    """The entropy's share of a recomputed gradient: per row the upstream gradient
    ``coef`` of the entropy (0 on rows that get none) and the ``entropy`` ``H`` of the
    forward pass, both ``(N,)`` in the accumulation dtype."""

    coef: torch.Tensor
    entropy: torch.Tensor


def _entropy_tile_(tile: torch.Tensor, coef: torch.Tensor, p_coef: torch.Tensor,
                   ent: EntropyGrad, s: int, e: int) -> torch.Tensor:
    """``tile`` (``log p = z - lse``) becomes ``p * (p_coef - e (log p + H))`` in place,
    through ``coef`` (a buffer of its shape); the target term is added afterwards.
    ``log p`` is clamped at -1e4 first, where ``p`` is 0 in float32 and float64 alike: a
    ``-inf`` score (a masked class) then gives 0, not ``0 * inf``."""
    grad_h = ent.coef[s:e]
    tile.clamp_(min=-1e4)
    offset = p_coef - grad_h * ent.entropy[s:e]  # p_coef - e H, per row
    torch.addcmul(offset.unsqueeze(1), tile, grad_h.neg().unsqueeze(1), out=coef)
    return tile.exp_().mul_(coef)


def tile_buffers(transform: ScoreTransform, *, grads: bool, entropy: bool, probs: bool) -> int:
    """How many tile-sized float buffers a pass keeps alive (for the budget)."""
    return 1 + int(grads and transform.softcap is not None) + int(entropy) + int(probs)


class _Operands:
    """Matmul operands in the dtype the device multiplies best, cast once."""

    def __init__(self, p: LinearProblem):
        acc = p.acc
        on_cpu = p.x.device.type == "cpu"
        # CPU multiplies half precision slowly (emulated): cast W once, as PyTorch's
        # "accurate" policy does. Elsewhere multiply natively and upcast the tile.
        self.mm_dtype = acc if on_cpu else p.x.dtype
        self.weight = p.weight if p.weight.dtype == self.mm_dtype else p.weight.to(self.mm_dtype)
        self.bias = None if p.bias is None else p.bias.to(acc)
        self.acc = acc

    def x(self, xb: torch.Tensor) -> torch.Tensor:
        return xb if xb.dtype == self.mm_dtype else xb.to(self.mm_dtype)

    def logits_(self, out: torch.Tensor, xb: torch.Tensor, c0: int, transform: ScoreTransform,
                keep_tanh: bool) -> torch.Tensor | None:
        """``out = transform(xb @ W[c0:].T + b)``; returns ``tanh(.)`` when soft-capping
        and ``keep_tanh`` (for the chain rule), else None."""
        k = out.shape[1]
        wt = self.weight[c0:c0 + k]
        if self.mm_dtype == self.acc:
            torch.mm(xb, wt.T, out=out)
        else:
            out.copy_(xb @ wt.T)
        if self.bias is not None:
            out.add_(self.bias[c0:c0 + k])
        if transform.logit_scale != 1.0:
            out.mul_(transform.logit_scale)
        if transform.softcap is None:
            return None
        out.div_(transform.softcap).tanh_()
        u = out.clone() if keep_tanh else None
        out.mul_(transform.softcap)
        return u

    def matmul(self, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.mm_dtype == self.acc:
            return g @ b
        return (g.to(self.mm_dtype) @ b).to(self.acc)


class _Sinks:
    """Where gradient tiles go: ``dx`` band, float32 ``dW`` and ``db`` accumulators."""

    def __init__(self, p: LinearProblem, need_x: bool, need_w: bool, need_b: bool):
        acc, dev = p.acc, p.x.device
        self.grad_x = torch.empty_like(p.x, memory_format=torch.contiguous_format) if need_x else None
        # The first token band writes dW and db (every class tile of it), later bands add:
        # no zero fill, and one read of the V x H accumulator fewer. Other score sources
        # add into them on their own, so for those they start at zero.
        self.first_band = p.scores is None and p.x.shape[0] > 0
        new = torch.empty if self.first_band else torch.zeros
        self.grad_w = new(p.weight.shape, dtype=acc, device=dev) if need_w else None
        self.grad_b = new(p.weight.shape[0], dtype=acc, device=dev) if need_b and p.bias is not None else None

    @property
    def any(self) -> bool:
        return self.grad_x is not None or self.grad_w is not None or self.grad_b is not None

    def add_tile(self, ops: _Operands, g: torch.Tensor, xb: torch.Tensor, c0: int,
                 gx_acc: torch.Tensor | None) -> None:
        k = g.shape[1]
        if gx_acc is not None:
            if ops.mm_dtype == ops.acc:
                gx_acc.addmm_(g, ops.weight[c0:c0 + k])
            else:
                gx_acc.add_(ops.matmul(g, ops.weight[c0:c0 + k]))
        if self.grad_w is not None:
            dw = self.grad_w[c0:c0 + k]
            if ops.mm_dtype != ops.acc:
                part = ops.matmul(g.T, xb)
                (dw.copy_ if self.first_band else dw.add_)(part)
            elif self.first_band:
                torch.mm(g.T, xb, out=dw)
            else:
                dw.addmm_(g.T, xb)
        if self.grad_b is not None:
            db = self.grad_b[c0:c0 + k]
            if self.first_band:
                torch.sum(g, 0, out=db)
            else:
                db.add_(g.sum(0))


class _FoldedTarget:
    """A band's gradients with the class-index target multiplied into the matmuls'
    operands instead of into the tile (whole rows of ``x W^T``, no soft-cap, CPU)::

        G  = diag(a) S + diag(c) T           S = softmax(z),  a = p_coef * scale,  c = -r * scale
        dx = a * (S W) + (c T) W             dW += S^T (a * x) + (c T)^T x
        db += S^T a + (c T)^T 1

    After the in-place softmax the tile is only read by the matmuls: no pass scales it
    or adds the target. ``T``'s products are a gather / ``index_add`` of target rows
    (:meth:`ClassIndexTarget.rows_mm`, :meth:`~ClassIndexTarget.cols_mm_`) and, with
    label smoothing, rank-one terms: ``W``'s class mix, and ``w (x) u`` added to ``dW``
    (``db``) once after every band."""

    def __init__(self, target: ClassIndexTarget):
        self.weight = target.weight  # (C,) or None
        self.class_mix: torch.Tensor | None = None
        self.u_w: torch.Tensor | None = None
        self.u_b: torch.Tensor | None = None

    @staticmethod
    def applies(p: LinearProblem, normalized: bool, ops: "_Operands") -> bool:
        return (normalized and p.transform.softcap is None and ops.mm_dtype == ops.acc
                and isinstance(p.target, ClassIndexTarget))

    def _mix(self, ops: "_Operands", target: ClassIndexTarget) -> torch.Tensor | None:
        if not target.label_smoothing:
            return None
        if self.class_mix is None:
            w = ops.weight
            self.class_mix = w.sum(0) if self.weight is None else self.weight.to(w.dtype) @ w
        return self.class_mix

    @staticmethod
    def _add(total: torch.Tensor | None, part: torch.Tensor | None) -> torch.Tensor | None:
        return part if total is None else total if part is None else total + part

    def band_(self, ops: "_Operands", sinks: "_Sinks", S: torch.Tensor, xb: torch.Tensor,
              target: ClassIndexTarget, a: torch.Tensor, c: torch.Tensor,
              grad_x: torch.Tensor | None) -> None:
        col = a.unsqueeze(1)
        if grad_x is not None:
            gx = grad_x if grad_x.dtype == ops.acc else torch.empty(grad_x.shape, dtype=ops.acc,
                                                                    device=grad_x.device)
            torch.mm(S, ops.weight, out=gx)
            gx.mul_(col).add_(target.rows_mm(c, ops.weight, self._mix(ops, target)))
            if gx is not grad_x:
                grad_x.copy_(gx)
        if sinks.grad_w is not None:
            xs = xb * col
            if sinks.first_band:
                torch.mm(S.T, xs, out=sinks.grad_w)
            else:
                sinks.grad_w.addmm_(S.T, xs)
            self.u_w = self._add(self.u_w, target.cols_mm_(sinks.grad_w, c, xb))
        if sinks.grad_b is not None:
            if sinks.first_band:
                torch.mv(S.T, a, out=sinks.grad_b)
            else:
                sinks.grad_b.addmv_(S.T, a)
            ones = torch.ones(xb.shape[0], 1, dtype=ops.acc, device=xb.device)
            self.u_b = self._add(self.u_b, target.cols_mm_(sinks.grad_b.unsqueeze(1), c, ones))

    def finish_(self, sinks: "_Sinks") -> None:
        """Label smoothing's rank-one share of ``dW`` and ``db``, for every band at once."""
        for grad, u in ((sinks.grad_w, self.u_w), (sinks.grad_b, self.u_b)):
            if grad is None or u is None:
                continue
            if grad.dim() == 1:
                grad, u = grad.unsqueeze(1), u.reshape(1)
            if self.weight is None:
                grad.add_(u)
            else:
                grad.addr_(self.weight.to(grad.dtype), u)


def _gradient_tile_(e: torch.Tensor, u: torch.Tensor | None, p_coef: torch.Tensor | None,
                    t_coef: torch.Tensor, target, c0: int, transform: ScoreTransform) -> torch.Tensor:
    """``e`` (exponentials, ``p = e * p_coef / r-part``) becomes ``dL/d(xW^T+b)`` in place:
    ``e * p_coef + t_coef * t`` (``p_coef`` None: ``e`` is scaled already), times
    ``1 - tanh^2`` and the logit scale."""
    target.add_scaled_(e, t_coef, c0, grad_scale=p_coef)
    if u is not None:
        e.mul_(u.square_().neg_().add_(1.0))
    if transform.logit_scale != 1.0:
        e.mul_(transform.logit_scale)
    return e


def _logits_(ops: _Operands, band, tile: torch.Tensor, xb: torch.Tensor, c0: int,
             transform: ScoreTransform, keep_tanh: bool) -> torch.Tensor | None:
    """A tile of scores: ``x W^T + b`` transformed, or those of another score source."""
    if band is None:
        return ops.logits_(tile, xb, c0, transform, keep_tanh)
    band.logits_(tile, ops, xb, c0)
    return None


def _source_gradients(p: LinearProblem, ops: _Operands, sinks: _Sinks, band, buf: torch.Tensor,
                      xb: torch.Tensor, tgt, cols: int, band_lse: torch.Tensor,
                      p_coef: torch.Tensor, r: torch.Tensor, fused_stats, gx_acc) -> None:
    """One band's gradients for another score source: from the tile the statistics left
    (whole rows, ``fused_stats`` given) or from tiles recomputed against ``band_lse``."""
    n = xb.shape[0]
    if fused_stats is not None:  # the tile still holds exp(z - m)
        g = _gradient_tile_(buf[:n], None, p_coef / fused_stats.sumexp, -r, tgt, 0, p.transform)
        band.add_tile(ops, sinks, g, xb, 0, gx_acc)
    else:
        v = p.num_classes
        for c0 in range(0, v, cols):
            tile = buf[:n, : min(cols, v - c0)]
            band.logits_(tile, ops, xb, c0)
            tile.sub_(band_lse.unsqueeze(1)).exp_()
            g = _gradient_tile_(tile, None, p_coef, -r, tgt, c0, p.transform)
            band.add_tile(ops, sinks, g, xb, c0, gx_acc)
    if gx_acc is not None:
        band.finish_x_(gx_acc)


def _bands(n: int, rows: int):
    for start in range(0, n, rows):
        yield start, min(start + rows, n)


def run(
    p: LinearProblem,
    plan: TilePlan,
    *,
    row_scale: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
    need_x: bool = True,
    need_w: bool = True,
    need_b: bool = True,
    entropy: bool = False,
    argmax: bool = False,
    entropy_grad: EntropyGrad | None = None,
) -> LinearResult:
    """Statistics (when ``lse`` is None) and gradients (when ``row_scale`` is given; with
    ``entropy_grad`` and a known ``lse``, the entropy's share too)."""
    n, v = p.x.shape[0], p.num_classes
    acc, dev = p.acc, p.x.device
    ops = _Operands(p)
    grads = row_scale is not None
    sinks = _Sinks(p, need_x and grads, need_w and grads, need_b and grads)
    grads = grads and sinks.any
    want_stats = lse is None
    fused = plan.fused(v)
    if want_stats:
        lse = torch.empty(n, dtype=acc, device=dev)
        dot = torch.empty_like(lse)
        lse_shifted = torch.empty_like(lse)
        shift = torch.empty_like(lse)
        ent = torch.empty_like(lse) if entropy else None
        best = torch.empty(n, dtype=torch.int64, device=dev) if argmax else None
    else:
        dot = ent = best = lse_shifted = shift = None
    keep_tanh = grads and p.transform.softcap is not None
    # Whole rows of x W^T on CPU: the statistics leave softmax(z) in the tile through
    # PyTorch's fused in-place row kernel (_stats.softmax_stats_). Elsewhere, or for
    # another score source, exp(z - m) as the tiles of the two-pass path.
    normalized = fused and want_stats and p.scores is None and dev.type == "cpu"
    fold = _FoldedTarget(p.target) if grads and _FoldedTarget.applies(p, normalized, ops) else None
    buf = torch.empty(min(plan.rows, n), min(plan.cols, v), dtype=acc, device=dev)
    gx_acc_buf = (
        torch.empty(min(plan.rows, n), p.x.shape[1], dtype=acc, device=dev)
        if grads and sinks.grad_x is not None and (not fused or p.scores is not None) else None
    )
    mass = p.target.mass
    # the entropy's tile-sized scratch: its terms in the statistics, its gradient's
    # coefficients against a known lse (one of the two per call)
    scratch = None
    if (want_stats and entropy) or (grads and entropy_grad is not None):
        scratch = torch.empty_like(buf)
    coef_buf = scratch if grads and entropy_grad is not None else None
    for s, e in _bands(n, plan.rows):
        if s > 0:
            sinks.first_band = False
        xb = ops.x(p.x[s:e])
        tgt = p.target.rows(s, e)
        band = None if p.scores is None else p.scores.band(s, e)
        if want_stats:
            stats = None
            for c0 in range(0, v, plan.cols):
                tile = buf[: e - s, : min(plan.cols, v - c0)]
                u = _logits_(ops, band, tile, xb, c0, p.transform, keep_tanh and fused)
                if normalized:  # the tile becomes softmax(z)
                    part = _stats.softmax_stats_(tile, tgt, c0, argmax=argmax, entropy=entropy,
                                                 scratch=scratch)
                else:  # the tile becomes exp(z - m)
                    part = _stats.tile_stats_(tile, tgt, c0, entropy=entropy, argmax=argmax,
                                              scratch=scratch)
                stats = part if stats is None else _stats.merge(stats, part)
            lse[s:e] = _stats.logsumexp(stats)
            lse_shifted[s:e] = _stats.shifted_logsumexp(stats)
            shift[s:e] = _stats.reference(stats)
            dot[s:e] = stats.dot
            if entropy:
                ent[s:e] = _stats.entropy(stats)
            if argmax:
                best[s:e] = stats.argmax
        if not grads:
            continue
        band_lse = lse[s:e]
        r = row_scale[s:e].to(acc)
        p_coef = r * (mass[s:e] + 2.0 * p.z_loss * band_lse)
        if fold is not None:
            scale = p.transform.logit_scale
            fold.band_(ops, sinks, buf[: e - s], xb, tgt, p_coef * scale, r * -scale,
                       None if sinks.grad_x is None else sinks.grad_x[s:e])
            continue
        if want_stats and fused and band is None:
            # The tile holds softmax(z), or exp(z - m): softmax one division away.
            tile = buf[: e - s]
            g = _gradient_tile_(tile, u, p_coef if normalized else p_coef / stats.sumexp, -r,
                                tgt, 0, p.transform)
            if sinks.grad_x is not None:
                gx = sinks.grad_x[s:e]
                if gx.dtype == acc and ops.mm_dtype == acc:
                    torch.mm(g, ops.weight, out=gx)
                else:
                    gx.copy_(ops.matmul(g, ops.weight))
            sinks.add_tile(ops, g, xb, 0, None)
            continue
        gx_acc = None
        if gx_acc_buf is not None:
            gx_acc = gx_acc_buf[: e - s].zero_()
        if band is not None:
            _source_gradients(p, ops, sinks, band, buf, xb, tgt, plan.cols, band_lse, p_coef, r,
                              stats if want_stats and fused else None, gx_acc)
            if gx_acc is not None:
                sinks.grad_x[s:e].copy_(gx_acc)
            continue
        for c0 in range(0, v, plan.cols):
            tile = buf[: e - s, : min(plan.cols, v - c0)]
            u = ops.logits_(tile, xb, c0, p.transform, keep_tanh)
            tile.sub_(band_lse.unsqueeze(1))
            if coef_buf is None:
                g = _gradient_tile_(tile.exp_(), u, p_coef, -r, tgt, c0, p.transform)
            else:
                coef = coef_buf[: e - s, : tile.shape[1]]
                g = _gradient_tile_(_entropy_tile_(tile, coef, p_coef, entropy_grad, s, e), u,
                                    None, -r, tgt, c0, p.transform)
            if gx_acc is None and sinks.grad_x is not None:  # one tile: write dx directly
                sinks.grad_x[s:e].copy_(ops.matmul(g, ops.weight[c0:c0 + g.shape[1]]))
            sinks.add_tile(ops, g, xb, c0, gx_acc)
        if gx_acc is not None:
            sinks.grad_x[s:e].copy_(gx_acc)
    if fold is not None:
        fold.finish_(sinks)
    if grads and p.scores is not None and sinks.grad_w is not None:
        p.scores.finish_w_(sinks.grad_w)
    return LinearResult(
        lse if want_stats else None, dot, ent, best, sinks.grad_x, sinks.grad_w, sinks.grad_b,
        lse_shifted, shift,
    )
