"""Fused linear cross-entropy with the output layer's classes sharded across ranks.

``crossent.linear_cross_entropy(..., group=g)`` lands here (Megatron-LM's vocabulary-parallel
layout; the merge of the shards' statistics and the gradient convention are those of
:mod:`crossent.core.sharded`, whose docstring explains them). Each rank runs the fused
backend over its class shard, the ``(N,)`` statistics are merged across ranks, and the
backend recomputes the local tiles against the *global* log-sum-exp for the gradients:
the weight and bias get their slice of the global gradient and ``x`` (entering through
:func:`crossent.core.collectives.replicated_input`) the full one.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import collectives as D
from ..core.reduction import accumulation_dtype, mean_scale, reduce_rows
from ..core.sharded import Shards, agree, agreement_fields, merge_shards, shard_index_target
from ..core.statistics import ScoreTransform
from ..core.stats import cross_entropy_rows
from ..core.targets import ClassIndexTarget, ClassProbTarget
from ..core.tiles import TilePlan, row_chunks
from ..kernels import margin_scores
from ..kernels.dispatch import get_backend
from ..kernels.torch_chunked import LinearProblem

__all__ = ["parallel_linear_cross_entropy"]


def _linear_scores_at(p: LinearProblem, index: torch.Tensor) -> torch.Tensor:
    """``z_i[index_i]`` recomputed from ``x``, ``W`` and ``b`` in row chunks (the
    ``"target_scores"`` budget of :data:`crossent.core.tiles.BUDGETS`, for the argmax
    comparison across shards): ``N x H`` work, no ``N x C`` tile."""
    acc = p.acc
    n, h = p.x.shape
    out = torch.empty(n, dtype=acc, device=p.x.device)
    for s, e in row_chunks(n, h, "target_scores", p.x.device):
        w = p.weight[index[s:e]].to(acc)
        v = torch.bmm(w.unsqueeze(1), p.x[s:e].to(acc).unsqueeze(2)).reshape(-1)
        if p.bias is not None:
            v = v + p.bias[index[s:e]].to(acc)
        out[s:e] = v
    return p.transform.apply(out, acc)


@dataclasses.dataclass
class _LinearSpec:
    """What the autograd function needs besides its tensor inputs."""

    target: ClassIndexTarget | ClassProbTarget  # this shard's, with its partial masses
    transform: ScoreTransform
    z_loss: float
    reduction: str
    all_ignored: str
    rows: int
    cols: int
    backend: str
    return_stats: bool
    group: object
    shards: Shards
    margin: object = None  # a crossent._margins.MarginSpec: margin-head scores (Partial FC)
    weight_norms: torch.Tensor | None = None  # the margin head's class norms, if checked already


class _ParallelLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, spec: _LinearSpec):
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and bias is not None
        backend = get_backend(spec.backend)
        plan = TilePlan(spec.rows, spec.cols)
        target = spec.target
        scores = None
        if spec.margin is not None:  # per class and per row only: shards compose (see there)
            scores = margin_scores.MarginScores(spec.margin, x, weight, target, spec.weight_norms)
        problem = LinearProblem(x, weight, bias, target, spec.transform, spec.z_loss, scores)
        local = backend.run(problem, plan, entropy=spec.return_stats, argmax=spec.return_stats)
        extra = {}
        if spec.return_stats:
            extra = dict(entropy=local.entropy, argmax=local.argmax,
                         best_score=_linear_scores_at(problem, local.argmax))
        denominator = None if isinstance(target, ClassProbTarget) else target.mean_denominator()
        m = merge_shards(spec.group, spec.shards, lse=local.lse, dot=local.dot,
                         mass=target.mass, denominator=denominator, **extra)
        if denominator is None:
            m.denominator = torch.tensor(float(x.shape[0]), dtype=m.lse.dtype, device=x.device)
        row_loss = cross_entropy_rows(m.lse, m.dot, m.mass, target.valid, spec.z_loss)
        loss = reduce_rows(row_loss, spec.reduction, m.denominator, all_ignored=spec.all_ignored)
        # the whole problem's masses: the gradient is (s_i + 2 z lse_i) softmax_i - t_i
        whole = LinearProblem(x, weight, bias, dataclasses.replace(target, mass=m.mass),
                              spec.transform, spec.z_loss, scores)
        ctx.spec, ctx.need = spec, (need_x, need_w, need_b)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        ctx.grads = None
        if spec.reduction != "none":
            if need_x or need_w or need_b:
                scale = torch.ones((), dtype=m.lse.dtype, device=x.device)
                if spec.reduction == "mean":
                    scale = mean_scale(m.denominator, spec.all_ignored)
                g = backend.run(whole, plan, row_scale=target.valid.to(m.lse.dtype) * scale,
                                lse=m.lse, need_x=need_x, need_w=need_w, need_b=need_b)
                ctx.grads = (g.grad_x, g.grad_weight, g.grad_bias)
        else:
            ctx.whole = whole
            ctx.save_for_backward(m.lse)
        out_dtype = m.lse.dtype if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        entropy = m.entropy if m.entropy is not None else m.lse.new_empty(0)
        argmax = m.argmax if m.argmax is not None else m.lse.new_empty(0, dtype=torch.int64)
        lse = m.lse.clone()
        ctx.mark_non_differentiable(lse, entropy, argmax)
        return loss.to(out_dtype), lse, entropy, argmax

    @staticmethod
    def backward(ctx, grad_loss, _lse, _entropy, _argmax):
        need_x, need_w, need_b = ctx.need
        spec = ctx.spec
        if spec.reduction == "none":
            (lse,) = ctx.saved_tensors
            whole = ctx.whole
            g = get_backend(spec.backend).run(
                whole, TilePlan(spec.rows, spec.cols),
                row_scale=grad_loss.to(lse.dtype) * whole.target.valid, lse=lse,
                need_x=need_x, need_w=need_w, need_b=need_b,
            )
            gx, gw, gb = g.grad_x, g.grad_weight, g.grad_bias
        else:
            if ctx.grads is None:
                raise RuntimeError(
                    "crossent.linear_cross_entropy(group=...): backward through a 'mean'/'sum' "
                    "loss twice (retain_graph=True) is not supported"
                )
            gx, gw, gb = ctx.grads
            ctx.grads = None
            gx = gx.mul_(grad_loss) if gx is not None else None
            gw = gw.mul_(grad_loss) if gw is not None else None
            gb = gb.mul_(grad_loss) if gb is not None else None
        return (gx if need_x else None,
                gw.to(ctx.dtypes[0]) if need_w else None,
                gb.to(ctx.dtypes[1]) if need_b else None, None)


def parallel_linear_cross_entropy(input, linear_weight, linear_bias, weight, validate, *,
                                  return_stats: bool, all_ignored: str, group):
    """:func:`crossent.linear_cross_entropy` with the output layer's classes sharded:
    ``(loss, lse, entropy, argmax, args)`` for the front to finish. ``validate()`` checks
    the local arguments (not the class-index bounds, which need the global class count)
    and returns the front's ``(args, tile plan)``; what it raises, it raises on every rank."""
    context = "crossent.linear_cross_entropy(group=...)"
    a, error, same = None, None, {}
    try:
        a, plan = validate()
        same = agreement_fields(
            target=("probabilities" if a.probs is not None else "class indices"),
            rows=list(input.shape[:-1]), hidden=int(input.shape[-1]), dtype=input.dtype,
            device_type=input.device.type, reduction=a.reduction, ignore_index=a.ignore_index,
            label_smoothing=a.label_smoothing, z_loss=a.z_loss, softcap=a.softcap,
            logit_scale=a.logit_scale, return_stats=bool(return_stats), all_ignored=all_ignored,
            weight=weight is not None, bias=linear_bias is not None, input_grad=a.need_x,
        )
    except D.LOCAL_ERRORS as exc:
        error = exc
    shards = agree(context, group, same, linear_weight.shape[0] if a else None, error)

    acc = accumulation_dtype(input.dtype)
    if a.probs is not None:
        tgt = ClassProbTarget.build(a.probs, weight=weight, label_smoothing=a.label_smoothing,
                                    dtype=acc, num_classes=shards.total)
    else:
        tgt = shard_index_target(context, a.index, shards, group, weight=weight,
                                 ignore_index=a.ignore_index,
                                 label_smoothing=a.label_smoothing, dtype=acc)
    spec = _LinearSpec(tgt, ScoreTransform(a.logit_scale, a.softcap), a.z_loss, a.reduction,
                       all_ignored, plan.rows, plan.cols, a.backend, bool(return_stats), group,
                       shards)
    x = D.replicated_input(a.x, group) if a.need_x else a.x.detach()
    w = linear_weight if a.need_w else linear_weight.detach()
    b = None if linear_bias is None else (linear_bias if a.need_b else linear_bias.detach())
    loss, lse, ent, best = _ParallelLinearCE.apply(x, w, b, spec)
    return loss, lse, ent, best, a
