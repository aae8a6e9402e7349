"""The fused distillation's autograd: one engine call per loss, over
:mod:`crossent.kernels.two_heads` (the student's and a dense teacher's heads, tile by tile).

- Dense teacher (:func:`dense_loss`): the kernel gives per row ``D_i`` (and ``S_i``), the
  student's log-sum-exps and its target logit; the loss is
  ``sum_i soft_i D_i + hard_i CE_i`` (``'none'``: the rows). Its gradient with respect
  to the student's logits is the kernel's tile with ``a = soft``, ``c = hard`` (on the
  raw log-sum-exp, or on that of ``z / T`` when ``T = 1``) and ``E = -hard`` at the
  target: for ``'sum'``/``'batchmean'`` formed in the forward pass (scaled by the upstream
  gradient in the backward), for ``'none'`` recomputed in the backward.
- Top-k teacher (:func:`gather_lse`): the student's log-sum-exp(s) and its raw logits at
  the teacher's ``k`` classes and the target, as an autograd function whose backward is the
  kernel's tile with ``A``, ``c`` and ``E`` the upstream gradients; the ``k + 1``-bucket
  divergence and the hard term are then ordinary autograd on ``(N, k + 1)`` tensors, the
  code of the loss on given logits (:func:`crossent.core.divergence.topk_divergence_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.backward import refuse_double_backward
from ..core.divergence import distillation_rows, reduce_distillation, topk_divergence_rows
from ..core.reduction import loss_dtype
from ..core.tiles import TilePlan
from ..kernels import two_heads as _kernel

_CONTEXT = "crossent.linear_distillation_loss"
_INSTEAD = ("For a gradient of the gradient, materialise the logits and use "
            "crossent.distillation_loss.")


@dataclass
class Options:
    """The checked options of one call."""

    kind: str
    beta: float
    tail: str
    temperature: float
    alpha: float
    reduction: str
    plan: TilePlan
    hooks: object = None  # a class-sharded caller's merges (crossent.distill.sharded)


def _row_weights(valid: torch.Tensor | None, n: int, o: Options, dtype, device):
    """``(soft_i, hard_i)`` with ``loss = sum_i soft_i D_i + hard_i CE_i`` (scalar
    reductions) or ``rows_i = soft_i D_i + hard_i CE_i`` (``'none'``): the loss is linear in
    ``D`` and ``CE``, so these are its gradients, taken through the one definition
    (:func:`crossent.core.divergence.distillation_rows` and ``reduce_distillation``)."""
    with torch.enable_grad():
        div = torch.zeros(n, dtype=dtype, device=device, requires_grad=True)
        ce = None if valid is None else torch.zeros_like(div, requires_grad=True)
        rows = distillation_rows(div, ce, valid, o.temperature, o.alpha)
        loss = reduce_distillation(rows, valid, o.reduction).sum()  # 'none': rows_i alone
        inputs = (div,) if ce is None else (div, ce)
        weights = torch.autograd.grad(loss, inputs)
    return weights[0], None if ce is None else weights[1]


def _coefs(p: _kernel.TwoHeads, soft, hard, has_target: bool) -> _kernel.Coefs:
    """The kernel's gradient coefficients of ``sum soft_i D_i + hard_i CE_i``."""
    if not has_target:
        return _kernel.Coefs(soft=soft)
    gathered = -hard.unsqueeze(1)
    if p.raw:
        return _kernel.Coefs(soft=soft, raw=hard, gathered=gathered)
    return _kernel.Coefs(soft=soft, lse=hard, gathered=gathered)


def _run(p, o: Options, st=None, coefs=None, need=(True, True, True)):
    """One kernel call, or the class-sharded caller's passes with merges between them."""
    if o.hooks is not None:
        return o.hooks.run(p, o, st=st, coefs=coefs, need=need)
    return _kernel.run(p, o.plan, st=st, coefs=coefs, need_x=need[0], need_w=need[1],
                       need_b=need[2])


class _Dense(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, target, valid, p, o):
        has_target = target is not None
        soft, hard = _row_weights(valid, x.shape[0], o, p.acc, x.device)
        need = ctx.needs_input_grad[:3]
        scalar = o.reduction != "none"
        coefs = _coefs(p, soft, hard, has_target) if scalar and any(need) else None
        st, gx, gw, gb = _run(p, o, coefs=coefs, need=need)
        ce = None
        if has_target:
            lse = st.lse_raw if p.raw else st.lse
            ce = lse - st.gathered[:, 0]
        rows = distillation_rows(st.div, ce, valid, o.temperature, o.alpha)
        loss = reduce_distillation(rows, valid, o.reduction)
        ctx.p, ctx.o, ctx.has_target = p, o, has_target
        ctx.grads = (gx, gw, gb) if scalar else None
        if not scalar:
            ctx.st, ctx.weights = st, (soft, hard)
        ctx.set_materialize_grads(False)
        return loss.to(loss_dtype(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward(_CONTEXT, _INSTEAD)
        if grad is None:
            return (None,) * 7
        need = ctx.needs_input_grad[:3]
        if ctx.o.reduction != "none":
            if ctx.grads is None:
                raise RuntimeError(f"{_CONTEXT}: backward through a 'sum'/'batchmean' loss twice "
                                   "(retain_graph=True) is not supported: its gradients are "
                                   "formed in the forward pass")
            gx, gw, gb = (None if g is None else g.mul_(grad.to(g.dtype)) for g in ctx.grads)
            ctx.grads = None
        else:
            soft, hard = ctx.weights
            r = grad.to(soft.dtype)
            coefs = _coefs(ctx.p, soft * r, None if hard is None else hard * r, ctx.has_target)
            _, gx, gw, gb = _run(ctx.p, ctx.o, st=ctx.st, coefs=coefs, need=need)
        return _cast(gx, gw, gb, ctx.p, need) + (None,) * 4


def _cast(gx, gw, gb, p, need):
    return (gx if need[0] else None,
            None if gw is None or not need[1] else gw.to(p.weight.dtype),
            None if gb is None or not need[2] else gb.to(p.bias.dtype))


class _GatherLse(torch.autograd.Function):
    """``(lse of z / T, lse of z or empty, z at index)`` from ``x, W, b``."""

    @staticmethod
    def forward(ctx, x, weight, bias, p, o):
        st, _, _, _ = _run(p, o)
        ctx.p, ctx.o, ctx.st = p, o, st
        ctx.set_materialize_grads(False)
        raw = st.lse_raw if p.raw else st.lse.new_empty(0)
        return st.lse, raw, st.gathered

    @staticmethod
    def backward(ctx, g_lse, g_raw, g_gathered):
        refuse_double_backward(_CONTEXT, _INSTEAD)
        p = ctx.p
        coefs = _kernel.Coefs(lse=g_lse, raw=g_raw if p.raw else None, gathered=g_gathered)
        if all(c is None for c in coefs):
            return None, None, None, None, None
        need = ctx.needs_input_grad[:3]
        _, gx, gw, gb = _run(p, ctx.o, st=ctx.st, coefs=coefs, need=need)
        return _cast(gx, gw, gb, p, need) + (None, None)


def dense_loss(x, weight, bias, tx, tweight, tbias, target, valid, o: Options):
    """The loss with a dense teacher head (module docstring)."""
    index = None if target is None else torch.where(valid, target, 0).unsqueeze(1)
    p = _kernel.TwoHeads(x, weight, bias, tx.detach(), tweight.detach(),
                         None if tbias is None else tbias.detach(), 1.0 / o.temperature,
                         raw=target is not None and o.temperature != 1.0, index=index,
                         kind=o.kind, beta=o.beta)
    return _Dense.apply(x, weight, bias, target, valid, p, o)


def topk_loss(x, weight, bias, indices, log_probs, target, valid, o: Options):
    """The loss with a top-k teacher: the gathered statistics, then the formula on them."""
    k = indices.shape[1]
    index = indices if target is None else torch.cat(
        [indices, torch.where(valid, target, 0).unsqueeze(1)], 1)
    p = _kernel.TwoHeads(x, weight, bias, inv_t=1.0 / o.temperature,
                         raw=target is not None and o.temperature != 1.0, index=index)
    lse, lse_raw, z = _GatherLse.apply(x, weight, bias, p, o)
    soft = topk_divergence_rows(z[:, :k] / o.temperature, lse, log_probs.detach(), o.tail,
                                o.kind, o.beta)
    hard = None
    if target is not None:
        hard = (lse_raw if p.raw else lse) - z[:, k]
    rows = distillation_rows(soft, hard, valid, o.temperature, o.alpha)
    return reduce_distillation(rows, valid, o.reduction).to(loss_dtype(x.dtype))

