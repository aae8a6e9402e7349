"""Margin-softmax scores as a score source of the fused linear cross-entropy backend.

For embeddings ``x`` ``(N, D)``, class weights ``W`` ``(C*K, D)`` (``K`` sub-centres per
class, row ``c*K + k``) and a :class:`~crossent.kernels.margin_spec.MarginSpec`, the logits are::

    z_ic = s * a_i * max_k (b_ck * x_i . W_ck)          (c != y_i)
    z_iy = s * Mx_i * Mw_i * phi(cos theta_iy)           (the target column)

with row factor ``a_i = 1/||x_i||`` (ArcFace, CosFace, combined) or 1 (SphereFace,
L-Softmax), column factor ``b = 1/||W||`` (all but L-Softmax) or 1, and the magnitudes
``Mx = ||x|| a ||x||``-style: ``Mx_i = 1`` when ``x`` is normalised, else ``||x_i||``
(``Mw`` likewise for the target's weight row). ``b`` is a ``(C*K,)`` vector applied to
each tile: no normalised copy of ``W`` is made. The target cosine and ``phi`` are computed
once on the gathered ``(N, K, D)`` target rows and scattered into the tile that holds the
target column.

**Gradients.** With ``G = dL/dz`` (softmax minus target, tile by tile), every non-target
logit is ``s a_i b_c (x_i . W_c)``, so ``H_ic = G_ic s a_i b_c`` gives ``dx += H W`` and
``dW += H^T x``. The target logit ``s Mx Mw phi(c)`` has::

    dz/dx_i = alpha_i W_y + beta_i x_i,    dz/dW_y = alpha_i x_i + delta_i W_y
    alpha   = s Mx Mw phi'(c) / (||x|| ||W_y||)
    beta    = s Mw (phi - c phi') / ||x||        (x not normalised; else irrelevant)
    delta   = s Mx (phi - c phi') / ||W_y||      (W not normalised; else irrelevant)

so the target entry of ``H`` is ``G_iy alpha_i``. Where ``x`` is normalised the loss
depends on ``x_i`` only through ``x_i / ||x_i||``, so the exact gradient is the projection
``dx_i = raw_i - (x_i . raw_i) x_i / ||x_i||^2`` of the accumulated ``raw = H W``: every
``x_i`` component (the ``-G z x/||x||^2`` terms and ``beta``) is what the projection
removes. Likewise ``dW_c`` is projected, in one pass over class chunks, where ``W`` is
normalised. Otherwise ``beta`` (SphereFace, L-Softmax) is added per row and ``delta``
(L-Softmax) per target row. Sub-centres: the class logit is the max over its ``K``
centres; its gradient goes to the arg-max centre (the target's arg-max from the gathered
rows).

**Shards.** Everything here is per class or per row: norms per class, the projection of
``dW`` per class, the row projection linear in the accumulated ``raw``. A class shard
computes its tiles' statistics (merged across shards like tiles) and contributes its
``raw`` dx; rows whose target lies in another shard are simply not ``active`` here.

Zero-norm embeddings (on rows that are not ignored) and zero-norm class weights have no
direction: :func:`build` raises :class:`~crossent.ArgumentError` for them (on CUDA a
device-side assertion, without host synchronisation).
"""

from __future__ import annotations

import torch

from ..core.checks import ArgumentError, plain_tensor
from ..core.statistics import ScoreTransform
from ..core.targets import ClassIndexTarget
from ..core.tiles import row_chunks
from .margin_spec import MarginSpec

_PLAIN = ScoreTransform()


def build(kind: str, args, x: torch.Tensor, weight: torch.Tensor,
          target: ClassIndexTarget) -> "MarginScores":
    """The score source of a custom-op call (``kind``, ``args`` from :meth:`MarginSpec.to_args`)."""
    return MarginScores(MarginSpec.from_args(kind, args), x, weight, target)


def num_classes(kind: str, args, weight: torch.Tensor) -> int:
    if not kind:
        return weight.shape[0]
    return weight.shape[0] // MarginSpec.from_args(kind, args).centers


def extra_tile_buffers(centers: int) -> int:
    """Tile-sized float buffers beyond the class tile: the ``K``-wide centre tile and its
    int64 arg-max (2 floats' worth) and max values for sub-centres; none otherwise."""
    return 0 if centers == 1 else centers + 3


def _row_norms(w: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``||w_r||`` for each row, in ``acc``; half inputs are upcast chunk by chunk (the
    ``"weight_norms"`` chunks of :data:`crossent.core.tiles.BUDGETS`)."""
    w = w.detach()
    if w.dtype == acc:
        return torch.linalg.vector_norm(w, dim=1)
    out = torch.empty(w.shape[0], dtype=acc, device=w.device)
    for r0, r1 in row_chunks(w.shape[0], 1, "weight_norms", w.device):
        out[r0:r1] = torch.linalg.vector_norm(w[r0:r1].to(acc), dim=1)
    return out


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_d a_rd b_rd`` as a batched product (no ``a * b`` temporary)."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).reshape(-1)


def weight_norms(weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(norms, first)``: the class weights' row norms in the accumulation dtype (as
    :class:`MarginScores` needs them) and the first row whose norm is zero or not finite
    (``-1`` if none; a host synchronisation). For callers that must report such a row
    before a collective (Partial FC) instead of failing inside it."""
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    norms = _row_norms(weight, acc)
    bad = ~(norms > 0) | ~torch.isfinite(norms)
    return norms, (int(bad.nonzero()[0, 0]) if bool(bad.any()) else -1)


def _check_nonzero(name: str, norms: torch.Tensor, where: torch.Tensor | None = None) -> None:
    norms = plain_tensor(norms)  # under torch.func: every value, no branch on a wrapper
    bad = ~(norms > 0) | ~torch.isfinite(norms)
    if where is not None:
        bad = bad & plain_tensor(where)
    if norms.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            first = bad.nonzero()[0]  # one index per dim (two under vmap: the batch's too)
            row = f"row {int(first[0])}" if norms.dim() == 1 else "a row (of a vmapped batch)"
            raise ArgumentError(
                f"{name} {row} has norm {float(norms[tuple(first)])}: a margin head needs a "
                f"direction (a finite, non-zero norm) for every {name} row that is used"
            )
    else:
        torch._assert_async(~bad.any(), f"crossent: {name} has a zero or non-finite row norm")


def _put_(t: torch.Tensor, local: torch.Tensor, in_tile: torch.Tensor, value: torch.Tensor) -> None:
    """``t[i, local_i] = value_i`` on the rows ``in_tile`` (one column per row)."""
    col = local.unsqueeze(1)
    t.scatter_(1, col, torch.where(in_tile, value, t.gather(1, col).squeeze(1)).unsqueeze(1))


class MarginScores:
    """Per-problem quantities (norms, target replacement, gradient coefficients) and the
    hooks :mod:`crossent.kernels.torch_chunked` calls (see the module docstring)."""

    def __init__(self, spec: MarginSpec, x: torch.Tensor, weight: torch.Tensor,
                 target: ClassIndexTarget, weight_norms: torch.Tensor | None = None):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        k = spec.centers
        self.spec, self.x, self.weight, self.target, self.acc = spec, x, weight, target, acc
        self.num_classes = weight.shape[0] // k
        # rows whose target class is in this weight (on a class shard, index -1 elsewhere)
        active = target.valid & (target.index >= 0)
        nx = torch.linalg.vector_norm(x, dim=1, dtype=acc)
        nw = _row_norms(weight, acc) if weight_norms is None else weight_norms
        _check_nonzero("embeddings", nx, target.valid)
        _check_nonzero("weight", nw)
        self.nx = torch.where(nx > 0, nx, torch.ones_like(nx))  # an ignored row may be zero
        s = spec.scale
        self.row = s / self.nx if spec.normalize_x else torch.full_like(nx, s)
        self.col = 1.0 / nw if spec.normalize_w else None

        # the target: gathered (N, K, D) rows, cosines, arg-max centre, phi
        n = x.shape[0]
        self.index = torch.where(active, target.index, torch.zeros_like(target.index))
        rows = self.index.unsqueeze(1) * k + torch.arange(k, device=x.device)
        wy = weight.index_select(0, rows.reshape(-1)).to(acc).reshape(n, k, weight.shape[1])
        cos = torch.bmm(wy, x.to(acc).unsqueeze(2)).squeeze(2) / (nw[rows] * self.nx.unsqueeze(1))
        c, self.kstar = cos.clamp(-1.0, 1.0).max(1)
        nwy = nw[rows.gather(1, self.kstar.unsqueeze(1)).squeeze(1)]
        phi, slope = spec.phi(c)
        phi_g = c if spec.straight_through else phi  # the function the backward differentiates
        mx = torch.ones_like(c) if spec.normalize_x else self.nx
        mw = torch.ones_like(c) if spec.normalize_w else nwy
        self.active = active
        self.z_target = s * mx * mw * phi
        self.alpha = s * mx * mw * slope / (self.nx * nwy)
        self.beta = None if spec.normalize_x else s * mw * (phi_g - c * slope) / self.nx
        self.delta = None if spec.normalize_w else s * mx * (phi_g - c * slope) / nwy
        self.grad_target = torch.zeros_like(c)  # sum of G_iy over the tiles (beta, delta)
        self._raw = None

    def band(self, start: int, end: int) -> "_Band":
        return _Band(self, start, end)

    def raw_buffer(self, n: int, width: int) -> torch.Tensor:
        """The reusable centre-level tile (sub-centres only)."""
        need = n * width
        if self._raw is None or self._raw.numel() < need:
            self._raw = torch.empty(need, dtype=self.acc, device=self.x.device)
        return self._raw[:need].view(n, width)

    def finish_w_(self, grad_w: torch.Tensor) -> None:
        """Complete ``dW`` after every band: the projection (normalised ``W``) or the
        ``delta`` terms of the target rows (L-Softmax)."""
        if self.col is not None:
            for r0, r1 in row_chunks(grad_w.shape[0], 1, "weight_norms", grad_w.device):
                g = grad_w[r0:r1]
                w = self.weight[r0:r1].to(g.dtype)
                b = self.col[r0:r1]
                g.addcmul_(w, (-_rowdot(w, g) * b * b).unsqueeze(1))
            return
        k = self.spec.centers
        rows = self.index * k + self.kstar
        coef = torch.where(self.active, self.delta * self.grad_target, torch.zeros_like(self.delta))
        w = self.weight.index_select(0, rows).to(grad_w.dtype)
        grad_w.index_put_((rows,), coef.unsqueeze(1) * w, accumulate=True)


class _Band:
    """Rows ``[start, end)``: builds logit tiles and consumes gradient tiles."""

    def __init__(self, src: MarginScores, start: int, end: int):
        self.src, self.start, self.end = src, start, end
        self.row = src.row[start:end]
        self.target = src.target.rows(start, end)
        self.z_target = src.z_target[start:end]
        self._state = None

    def logits_(self, out: torch.Tensor, ops, xb: torch.Tensor, c0: int) -> None:
        """``out`` ``(n, k)`` := the margin logits of classes ``[c0, c0 + k)``."""
        src, n, k = self.src, out.shape[0], out.shape[1]
        centers = src.spec.centers
        idx = None
        if centers == 1:
            ops.logits_(out, xb, c0, _PLAIN, False)
            if src.col is not None:
                out.mul_(src.col[c0:c0 + k])
        else:
            raw = src.raw_buffer(n, k * centers)
            ops.logits_(raw, xb, c0 * centers, _PLAIN, False)
            raw.mul_(src.col[c0 * centers:(c0 + k) * centers])
            values, idx = raw.view(n, k, centers).max(2)
            out.copy_(values)
        out.mul_(self.row.unsqueeze(1))
        local, in_tile = self.target._local(c0, k)
        _put_(out, local, in_tile, self.z_target)
        self._state = (c0, local, in_tile, idx)

    def add_tile(self, ops, sinks, g: torch.Tensor, xb: torch.Tensor, c0: int,
                 gx_acc: torch.Tensor | None) -> None:
        """``g`` ``(n, k)`` = dL/dz of the tile last built by :meth:`logits_` (consumed)."""
        src, n, k = self.src, g.shape[0], g.shape[1]
        start, end = self.start, self.end
        c_state, local, in_tile, idx = self._state
        assert c_state == c0, "add_tile must follow logits_ of the same tile"
        g_t = torch.where(in_tile, g.gather(1, local.unsqueeze(1)).squeeze(1), 0.0)
        src.grad_target[start:end] += g_t
        h_t = g_t * src.alpha[start:end]
        g.mul_(self.row.unsqueeze(1))
        centers = src.spec.centers
        if centers == 1:
            if src.col is not None:
                g.mul_(src.col[c0:c0 + k])
            _put_(g, local, in_tile, h_t)
            sinks.add_tile(ops, g, xb, c0, gx_acc)
            return
        _put_(g, local, in_tile, torch.zeros_like(h_t))  # the target goes to its own centre
        raw = src.raw_buffer(n, k * centers).zero_()
        raw.view(n, k, centers).scatter_(2, idx.unsqueeze(2), g.unsqueeze(2))
        raw.mul_(src.col[c0 * centers:(c0 + k) * centers])
        pos = local * centers + src.kstar[start:end]
        raw.scatter_add_(1, pos.unsqueeze(1), h_t.unsqueeze(1))
        sinks.add_tile(ops, raw, xb, c0 * centers, gx_acc)

    def finish_x_(self, gx_acc: torch.Tensor) -> None:
        """Complete the band's ``dx`` in place: the projection (normalised ``x``) or the
        ``beta`` terms (SphereFace, L-Softmax)."""
        src = self.src
        s, e = self.start, self.end
        x = src.x[s:e].to(gx_acc.dtype)
        if src.spec.normalize_x:
            coef = -_rowdot(x, gx_acc) / src.nx[s:e].square()
        else:
            coef = torch.where(src.active[s:e], src.beta[s:e] * src.grad_target[s:e], 0.0)
        gx_acc.addcmul_(x, coef.unsqueeze(1))
