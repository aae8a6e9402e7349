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
import functools

import torch

from ..core import collectives as D
from ..core.reduction import accumulation_dtype
from ..core.sharded import Merged, Shards, agree, agreement_fields, merge_shards, shard_index_target
from ..core.statistics import ScoreTransform
from ..core.targets import ClassIndexTarget, ClassProbTarget
from ..core.tiles import TilePlan
from ..kernels import margin_scores
from ..kernels.torch_chunked import EntropyGrad, LinearProblem, LinearResult
from . import engine

__all__ = ["parallel_linear_cross_entropy", "sharded_linear_cross_entropy"]


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
    margin: object = None  # a crossent.kernels.margin_spec.MarginSpec: margin-head scores (Partial FC)
    weight_norms: torch.Tensor | None = None  # the margin head's class norms, if checked already
    entropy_grad: bool = False  # the merged entropy is differentiable ('none', return_stats)
    argmax: bool = True  # with return_stats, the argmax too


def _merge(spec: _LinearSpec, p: LinearProblem, local: LinearResult) -> Merged:
    """The engine's merge hook: this shard's statistics merged across ranks (one
    all-gather), with the 'mean' denominator (the row count for probability targets)."""
    extra = dict(entropy=local.entropy, argmax=local.argmax) if spec.return_stats else {}
    target = p.target
    denominator = None if isinstance(target, ClassProbTarget) else target.mean_denominator()
    m = merge_shards(spec.group, spec.shards, shift=local.shift, lse=local.lse_shifted,
                     dot=local.dot, mass=target.mass, denominator=denominator, **extra)
    if denominator is None:
        m.denominator = torch.tensor(float(p.x.shape[0]), dtype=m.lse.dtype, device=p.x.device)
    return m


class _ParallelLinearCE(torch.autograd.Function):
    """The engine (:mod:`crossent.linear.engine`) over a class shard: its forward with the
    cross-rank merge hook, its backward with the tiles recomputed here against the global
    ``lse``. ``probs``: the shard's probability target (None for class indices), an input
    only so that it can receive its gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, probs, spec: _LinearSpec):
        need_x, need_w, need_b, need_t = ctx.needs_input_grad[:4]
        need = engine.Need(need_x, need_w, need_b and bias is not None,
                           need_t and probs is not None)
        scores = None
        if spec.margin is not None:  # per class and per row only: shards compose (see there)
            scores = margin_scores.MarginScores(spec.margin, x, weight, spec.target,
                                                spec.weight_norms)
        problem = LinearProblem(x, weight, bias, spec.target, spec.transform, spec.z_loss, scores)
        out = engine.forward(problem, TilePlan(spec.rows, spec.cols), spec.backend,
                             reduction=spec.reduction, all_ignored=spec.all_ignored,
                             stats=spec.return_stats, need=need,
                             merge=functools.partial(_merge, spec), argmax=spec.argmax)
        ctx.spec = spec
        entropy = out.entropy if out.entropy is not None else out.lse.new_empty(0)
        if spec.reduction == "none" or need.t:  # the backward recomputes tiles
            ctx.problem, ctx.denominator = out.problem, out.denominator
            ctx.save_for_backward(out.lse, entropy)
        context = ("crossent Partial FC" if spec.margin is not None
                   else "crossent.linear_cross_entropy(group=...)")
        engine.save(ctx, spec.reduction, need, out[4:7], context,
                    engine.INSTEAD_MARGIN if spec.margin is not None else engine.INSTEAD_LINEAR)
        argmax = out.argmax if out.argmax is not None else out.lse.new_empty(0, dtype=torch.int64)
        lse = out.lse.clone()
        ctx.entropy_grad = spec.entropy_grad and spec.reduction == "none" and out.entropy is not None
        if ctx.entropy_grad:
            entropy = entropy.clone()  # an output, not the saved tensor
            ctx.mark_non_differentiable(lse, argmax)
            ctx.set_materialize_grads(False)  # an unused output's gradient is None
        else:
            ctx.mark_non_differentiable(lse, entropy, argmax)
        return out.loss, lse, entropy, argmax

    @staticmethod
    def backward(ctx, grad_loss, _lse, grad_entropy, _argmax):
        spec = ctx.spec
        grad_entropy = grad_entropy if ctx.entropy_grad else None

        def recompute(grad, need: engine.Need):
            lse, entropy = ctx.saved_tensors
            p = ctx.problem
            scale = engine.row_scale(p.target.valid, spec.reduction, ctx.denominator,
                                     spec.all_ignored, lse.dtype, grad)
            ent = None
            if grad_entropy is not None:  # the global entropy's share, on this shard's tiles
                ent = EntropyGrad(grad_entropy.to(lse.dtype) * p.target.valid, entropy)
            return engine.gradients(p, TilePlan(spec.rows, spec.cols), spec.backend, lse=lse,
                                    scale=scale, need=need, entropy_grad=ent)

        if grad_loss is None and grad_entropy is not None:  # only the entropy is used
            grad_loss = torch.zeros_like(ctx.saved_tensors[0])
        return engine.backward(ctx, grad_loss, recompute) + (None,)


def sharded_linear_cross_entropy(x, weight, bias, probs, spec: _LinearSpec):
    """``(loss, lse, entropy, argmax)`` of the class-sharded problem ``spec`` (the
    differentiable entry of this module, also Partial FC's)."""
    return _ParallelLinearCE.apply(x, weight, bias, probs, spec)


def parallel_linear_cross_entropy(input, linear_weight, linear_bias, weight, validate, *,
                                  return_stats: bool, all_ignored: str, group,
                                  entropy_grad: bool = False, argmax: bool = True,
                                  agree_on: dict | None = None):
    """:func:`crossent.linear_cross_entropy` with the output layer's classes sharded:
    ``(loss, lse, entropy, argmax, args)`` for the front to finish. ``validate()`` checks
    the local arguments (not the class-index bounds, which need the global class count)
    and returns the front's ``(args, tile plan)``; what it raises, it raises on every rank.
    ``entropy_grad`` (``reduction='none'``, ``return_stats``): the merged entropy is
    differentiable (:mod:`crossent.logprobs`); ``argmax=False``: the statistics without
    the argmax. ``agree_on``: more options every rank must agree on (the caller's)."""
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
            **(agree_on or {}),
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
                       shards, entropy_grad=entropy_grad, argmax=argmax)
    x = D.replicated_input(a.x, group) if a.need_x else a.x.detach()
    w = linear_weight if a.need_w else linear_weight.detach()
    b = None if linear_bias is None else (linear_bias if a.need_b else linear_bias.detach())
    loss, lse, ent, best = sharded_linear_cross_entropy(x, w, b, a.probs, spec)
    return loss, lse, ent, best, a
