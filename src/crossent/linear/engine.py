"""The engine of the fused linear cross-entropy: one forward, one backward, two wrappers.

For a :class:`~crossent.kernels.torch_chunked.LinearProblem` (scores ``z = softcap(
logit_scale * (x W^T + b))``, or a margin head's; a target ``t`` with row masses ``s``)
and its tile plan, :func:`forward` runs the backend over the tiles and gives::

    lse_i, dot_i = sum_c t_ic z_ic  (entropy_i, argmax_i)     streaming statistics
    loss_i = s_i lse_i - dot_i + z_loss lse_i^2               reduced: none / sum / mean

With a scalar reduction the gradients of ``x``, ``W`` and ``b`` are formed in the same pass
(whole rows: one matmul for statistics and gradients) for the row scale of
:func:`row_scale`, ``r_i = valid_i * (1 / denominator for 'mean', 1 for 'sum')``; the
backward (:func:`backward`) multiplies them by the upstream gradient, once. With
``reduction='none'`` the backward recomputes the tiles against the saved ``lse`` with
``r_i = grad_loss_i * valid_i`` (:func:`gradients`). A probability target ``q`` that
requires grad gets, from tiles recomputed in the backward::

    d loss / d q_ic = r_i (1 - eps) w_c (lse_i - z_ic)

(label smoothing ``eps``, class weight ``w``: PyTorch's ``cross_entropy``). The loss comes
back in :func:`crossent.core.reduction.loss_dtype` of the input.

With ``reduction='none'`` the per-row entropy ``H_i`` of the forward's statistics may be
differentiable too (``entropy_grad``, for :mod:`crossent.logprobs`): the same backward
recomputes the tiles against the saved ``lse`` and ``H`` and adds, for its upstream
gradient ``e_i``, ``-e_i p_ic (log p_ic + H_i)`` to ``dloss/dz``
(:class:`crossent.kernels.torch_chunked.EntropyGrad`).

Two autograd wrappers share this forward and backward:

- the ``torch.library`` custom op ``crossent::linear_cross_entropy`` here (one process;
  fake implementations let ``torch.compile(fullgraph=True)`` trace it, its 'none'
  backward is the custom op ``crossent::linear_cross_entropy_backward``);
- :class:`crossent.linear.sharded._ParallelLinearCE` (classes sharded across ranks), which
  passes :func:`forward` a ``merge`` hook: the shard's statistics merged across ranks
  before the loss and the gradients are formed against the global ``lse``.

Nothing here synchronises the host. Double backward (``create_graph=True``) raises
(:func:`crossent.core.backward.refuse_double_backward`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Sequence

import torch

from ..core.backward import refuse_double_backward
from ..core.reduction import accumulation_dtype, loss_dtype, mean_scale, reduce_rows
from ..core.statistics import ScoreTransform
from ..core.stats import cross_entropy_rows
from ..core.targets import ClassIndexTarget, ClassProbTarget
from ..core.tiles import TilePlan
from ..kernels import margin_scores
from ..kernels.dispatch import get_backend
from ..kernels.torch_chunked import EntropyGrad, LinearProblem, LinearResult

__all__ = ["Need", "Forward", "row_scale", "forward", "gradients", "backward", "linear_ce_op"]


class Need(NamedTuple):
    """Which gradients are wanted: input ``x``, weight, bias, probability target."""

    x: bool
    w: bool
    b: bool
    t: bool = False

    @property
    def params(self) -> bool:
        """Any of ``x``, weight, bias (what the backend forms)."""
        return self.x or self.w or self.b


class Forward(NamedTuple):
    """What :func:`forward` gives: the loss (in the output dtype), the per-row ``lse``
    (entropy, argmax: None unless asked), for a scalar reduction the gradients for a unit
    upstream gradient (weight and bias gradients in their parameters' dtypes; None where
    not wanted), the problem with the whole problem's masses and the 'mean' denominator
    (for the backward)."""

    loss: torch.Tensor
    lse: torch.Tensor
    entropy: torch.Tensor | None
    argmax: torch.Tensor | None
    grad_x: torch.Tensor | None
    grad_weight: torch.Tensor | None
    grad_bias: torch.Tensor | None
    problem: LinearProblem
    denominator: torch.Tensor


def row_scale(valid: torch.Tensor, reduction: str, denominator: torch.Tensor, all_ignored: str,
              dtype: torch.dtype, grad_loss: torch.Tensor | None = None) -> torch.Tensor:
    """``r_i``, the factor of row ``i``'s gradient ``dloss/dz_i``::

        r_i = valid_i * g * (1 / denominator if reduction == 'mean' else 1)

    ``g``: ``grad_loss`` (a scalar for 'mean'/'sum', ``(N,)`` for 'none'), or 1 when None
    (the forward's unit upstream gradient). ``all_ignored='zero'``: 0 where the 'mean'
    denominator is 0 (:func:`crossent.core.reduction.mean_scale`).
    """
    scale = valid.to(dtype)
    if reduction == "mean":
        scale = scale * mean_scale(denominator.to(dtype), all_ignored)
    if grad_loss is not None:
        scale = grad_loss.to(dtype) * scale
    return scale


def _cast(res: LinearResult, p: LinearProblem):
    """The backend's gradients with the weight's and bias' in their parameters' dtypes."""
    gw = None if res.grad_weight is None else res.grad_weight.to(p.weight.dtype)
    gb = None if res.grad_bias is None else res.grad_bias.to(p.bias.dtype)
    return res.grad_x, gw, gb


def forward(p: LinearProblem, plan: TilePlan, backend: str, *, reduction: str, all_ignored: str,
            stats: bool, need: Need,
            merge: Callable[[LinearProblem, LinearResult], object] | None = None,
            argmax: bool | None = None) -> Forward:
    """The loss (and for 'mean'/'sum' the gradients) of problem ``p`` (see the module).

    Args:
        p: the problem; its target holds this process' (shard's) masses.
        plan: the tile sizes. backend: a backend name of :mod:`crossent.kernels.dispatch`.
        reduction: 'none', 'sum' or 'mean'. all_ignored: 'nan' or 'zero'.
        stats: also the per-row entropy and argmax.
        argmax: with ``stats``, whether the argmax too (None: ``stats``).
        need: the gradients wanted (only ``x``, weight and bias are formed here).
        merge: None for one process (statistics and gradients in one pass); else a hook
            ``merge(p, local) -> m`` turning this shard's statistics into the whole
            problem's (``m.lse, m.lse_shifted, m.dot, m.shift, m.mass, m.denominator,
            m.entropy, m.argmax``, as :class:`crossent.core.sharded.Merged`: ``dot`` and
            ``lse_shifted`` relative to the row max ``shift``); the gradients are then formed in a
            second pass against the global ``lse``.
    """
    run = get_backend(backend).run
    best = stats if argmax is None else stats and argmax
    target = p.target
    grads = reduction != "none" and need.params
    if merge is None:
        denominator = target.mean_denominator()
        scale = row_scale(target.valid, reduction, denominator, all_ignored, p.acc) if grads else None
        res = run(p, plan, row_scale=scale, need_x=need.x, need_w=need.w, need_b=need.b,
                  entropy=stats, argmax=best)
        lse, mass, entropy, argmax = res.lse, target.mass, res.entropy, res.argmax
        lse_shifted, dot, shift = res.lse_shifted, res.dot, res.shift
    else:
        local = run(p, plan, entropy=stats, argmax=best)
        m = merge(p, local)
        lse, mass, entropy, argmax = m.lse, m.mass, m.entropy, m.argmax
        lse_shifted, dot, shift = m.lse_shifted, m.dot, m.shift
        denominator = m.denominator
        # the whole problem's masses: the gradient is (s_i + 2 z lse_i) softmax_i - t_i
        p = dataclasses.replace(p, target=dataclasses.replace(target, mass=mass))
        res = None
        if grads:
            scale = row_scale(target.valid, reduction, denominator, all_ignored, lse.dtype)
            res = run(p, plan, row_scale=scale, lse=lse, need_x=need.x, need_w=need.w,
                      need_b=need.b)
    # relative to the row max: a sum of non-negative terms at any magnitude (core.stats)
    row_loss = cross_entropy_rows(lse_shifted, dot, mass, target.valid, p.z_loss, shift=shift)
    loss = reduce_rows(row_loss, reduction, denominator, all_ignored=all_ignored)
    gx, gw, gb = _cast(res, p) if grads else (None, None, None)
    return Forward(loss.to(loss_dtype(p.x.dtype)), lse, entropy if stats else None,
                   argmax if best else None, gx, gw, gb, p, denominator)


def _target_gradient(p: LinearProblem, plan: TilePlan, lse: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """``r_i (1 - eps) w_c (lse_i - z_ic)`` for a probability target, in its dtype, from
    logit tiles recomputed band by band (:meth:`ClassProbTarget.grad_probs`)."""
    target = p.target
    acc = p.acc
    n, v = p.x.shape[0], p.num_classes
    out = torch.empty(target.probs.shape, dtype=target.probs.dtype, device=target.probs.device)
    r = scale.to(acc)
    for s in range(0, n, plan.rows):
        e = min(s + plan.rows, n)
        xb = p.x[s:e].to(acc)
        rows = target.rows(s, e)
        for c0 in range(0, v, plan.cols):
            c1 = min(c0 + plan.cols, v)
            z = xb @ p.weight[c0:c1].to(acc).T
            if p.bias is not None:
                z += p.bias[c0:c1].to(acc)
            z = p.transform.apply(z, acc)
            out[s:e, c0:c1] = rows.grad_probs(z, -r[s:e], r[s:e] * lse[s:e], c0)
    return out


def gradients(p: LinearProblem, plan: TilePlan, backend: str, *, lse: torch.Tensor,
              scale: torch.Tensor, need: Need, entropy_grad: EntropyGrad | None = None):
    """``(grad_x, grad_weight, grad_bias, grad_target)`` for row scale ``scale``
    (:func:`row_scale`), the tiles recomputed against the known ``lse``; None where not
    wanted. The backward of 'none', and of a probability target for every reduction.
    ``entropy_grad``: the per-row entropy's upstream gradient and value, whose share
    ``-e_i p_ic (log p_ic + H_i)`` joins ``dloss/dz`` ('none' only)."""
    gx = gw = gb = gt = None
    if need.params:
        res = get_backend(backend).run(p, plan, row_scale=scale, lse=lse, need_x=need.x,
                                       need_w=need.w, need_b=need.b, entropy_grad=entropy_grad)
        gx, gw, gb = _cast(res, p)
    if need.t:
        gt = _target_gradient(p, plan, lse, scale)
    return gx, gw, gb, gt


def save(ctx, reduction: str, need: Need, grads, context: str, instead: str) -> None:
    """Keep on ``ctx`` what :func:`backward` reads: the forward's gradients of a scalar
    reduction (consumed by the first backward), which are wanted, and the error texts."""
    ctx.reduction, ctx.need, ctx.context, ctx.instead = reduction, need, context, instead
    ctx.grads = None if reduction == "none" else list(grads)


def backward(ctx, grad_loss: torch.Tensor | None,
             recompute: Callable[[torch.Tensor, Need], tuple]) -> tuple:
    """The one backward of both wrappers: ``(grad_x, grad_weight, grad_bias, grad_target)``.

    'none': everything from ``recompute(grad_loss, need)`` (:func:`gradients` against
    the saved ``lse``). 'mean'/'sum': the forward's gradients times ``grad_loss``, scaled
    in place and handed over (a second backward, ``retain_graph=True``, raises), and a
    probability target's gradient from ``recompute``. Raises for ``create_graph=True``.
    """
    refuse_double_backward(ctx.context, ctx.instead)
    need = ctx.need
    if grad_loss is None:  # an undefined upstream gradient (set_materialize_grads(False))
        return None, None, None, None
    if ctx.reduction == "none":
        gx, gw, gb, gt = recompute(grad_loss, need)
    else:
        if ctx.grads is None:
            raise RuntimeError(
                f"{ctx.context}: backward through a 'mean'/'sum' loss twice "
                "(retain_graph=True) is not supported: its gradients are formed in the "
                "forward pass and consumed by the first backward"
            )
        gx, gw, gb = ctx.grads
        if torch.compiler.is_compiling():
            gx, gw, gb = (None if g is None else g * grad_loss for g in (gx, gw, gb))
        else:
            # Scale in place and hand the buffers over (no gradient-sized copy). detach():
            # a fresh TensorImpl over the same storage, which AccumulateGrad can adopt as
            # .grad instead of cloning a buffer the op's outputs still hold.
            ctx.grads = None
            gx, gw, gb = (None if g is None else g.mul_(grad_loss).detach() for g in (gx, gw, gb))
        gt = recompute(grad_loss, Need(False, False, False, True))[3] if need.t else None
    return (gx if need.x else None, gw if need.w else None, gb if need.b else None,
            gt if need.t else None)


# ------------------------------------------------------------- the single-process op

_EMPTY = (0,)

INSTEAD_LINEAR = ("For a gradient of the gradient, materialise the logits and use "
                   "torch.nn.functional.cross_entropy(F.linear(input, linear_weight, "
                   "linear_bias), target).")
INSTEAD_MARGIN = ("For a gradient of the gradient, compute the margin logits with plain "
                   "PyTorch operations and use torch.nn.functional.cross_entropy.")


def _context(margin: str) -> tuple[str, str]:
    """The public name and the double-backward advice of a call of the op."""
    if margin:
        return f"crossent's fused {margin} margin loss", INSTEAD_MARGIN
    return "crossent.linear_cross_entropy", INSTEAD_LINEAR


def _target(x, index, probs, class_weight, ignore_index, label_smoothing, num_classes):
    acc = accumulation_dtype(x.dtype)
    if probs is not None:
        return ClassProbTarget.build(probs, weight=class_weight, label_smoothing=label_smoothing, dtype=acc)
    return ClassIndexTarget.build(
        index, num_classes, weight=class_weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, dtype=acc,
    )


def _problem(x, weight, bias, index, probs, class_weight, ignore_index, label_smoothing, z_loss,
             softcap, logit_scale, margin, margin_args) -> LinearProblem:
    """The op's flat arguments as a problem; a margin head (:mod:`crossent.margin`) is
    another score source over the same weight."""
    num_classes = margin_scores.num_classes(margin, margin_args, weight)
    target = _target(x, index, probs, class_weight, ignore_index, label_smoothing, num_classes)
    scores = margin_scores.build(margin, margin_args, x, weight, target) if margin else None
    return LinearProblem(x, weight, bias, target, ScoreTransform(logit_scale, softcap), z_loss,
                         scores)


def _empty(like: torch.Tensor, dtype=None) -> torch.Tensor:
    return like.new_empty(_EMPTY, dtype=dtype or like.dtype)


def _or_empty(t: torch.Tensor | None, like: torch.Tensor, dtype=None) -> torch.Tensor:
    return _empty(like, dtype) if t is None else t


@torch.library.custom_op("crossent::linear_cross_entropy", mutates_args=())
def linear_ce_op(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    index: Optional[torch.Tensor], probs: Optional[torch.Tensor], class_weight: Optional[torch.Tensor],
    ignore_index: int, label_smoothing: float, reduction: str, z_loss: float,
    softcap: Optional[float], logit_scale: float, all_ignored: str, rows: int, cols: int,
    backend: str, stats: bool, need_x: bool, need_w: bool, need_b: bool, need_t: bool = False,
    margin: str = "", margin_args: Optional[Sequence[float]] = None, entropy_grad: bool = False,
    argmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One process' fused linear cross-entropy: :func:`forward` as a custom op.

    Returns ``(loss, lse, entropy, argmax, grad_x, grad_weight, grad_bias)``; the
    gradients (for a unit upstream gradient) only for scalar reductions, else empty, like
    entropy and argmax without ``stats``. ``need_t``: the probability target ``probs``
    gets a gradient (formed in the backward). ``margin``/``margin_args``: a margin head's
    spec (:mod:`crossent.margin`), or "" for none. ``entropy_grad`` (with ``stats`` and
    ``reduction='none'``): the entropy is differentiable too (per-token log-probabilities,
    :mod:`crossent.logprobs`); its gradient joins the loss' in the one recomputing backward.
    ``argmax=False``: with ``stats``, the entropy without the argmax (returned empty)."""
    p = _problem(x, weight, bias, index, probs, class_weight, ignore_index, label_smoothing,
                 z_loss, softcap, logit_scale, margin, margin_args)
    out = forward(p, TilePlan(rows, cols), backend, reduction=reduction, all_ignored=all_ignored,
                  stats=stats, need=Need(need_x, need_w, need_b), argmax=argmax)
    acc = accumulation_dtype(x.dtype)
    return (
        out.loss, out.lse,
        _or_empty(out.entropy, x, acc), _or_empty(out.argmax, x, torch.int64),
        _or_empty(out.grad_x, x), _or_empty(out.grad_weight, weight), _or_empty(out.grad_bias, x),
    )


@linear_ce_op.register_fake
def _(x, weight, bias, index, probs, class_weight, ignore_index, label_smoothing, reduction,
      z_loss, softcap, logit_scale, all_ignored, rows, cols, backend, stats, need_x, need_w, need_b,
      need_t=False, margin="", margin_args=None, entropy_grad=False, argmax=True):
    acc = accumulation_dtype(x.dtype)
    n = x.shape[0]
    loss = x.new_empty((n,) if reduction == "none" else (), dtype=loss_dtype(x.dtype))
    scalar_grads = reduction != "none"
    return (
        loss,
        x.new_empty((n,), dtype=acc),
        x.new_empty((n,) if stats else _EMPTY, dtype=acc),
        x.new_empty((n,) if stats and argmax else _EMPTY, dtype=torch.int64),
        torch.empty_like(x) if scalar_grads and need_x else _empty(x),
        torch.empty_like(weight) if scalar_grads and need_w else _empty(weight),
        torch.empty_like(bias) if scalar_grads and need_b and bias is not None else _empty(x),
    )


@torch.library.custom_op("crossent::linear_cross_entropy_backward", mutates_args=())
def _linear_ce_backward_op(
    grad_loss: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    index: Optional[torch.Tensor], probs: Optional[torch.Tensor], class_weight: Optional[torch.Tensor],
    lse: torch.Tensor, ignore_index: int, label_smoothing: float, reduction: str, z_loss: float,
    softcap: Optional[float], logit_scale: float, all_ignored: str, rows: int, cols: int,
    backend: str, need_x: bool, need_w: bool, need_b: bool, need_t: bool,
    margin: str = "", margin_args: Optional[Sequence[float]] = None,
    grad_entropy: Optional[torch.Tensor] = None, entropy: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`gradients` as a custom op: ``(grad_x, grad_weight, grad_bias, grad_probs)``
    (empty where not wanted), tiles recomputed against ``lse`` for the upstream
    ``grad_loss`` (per row for 'none', a scalar otherwise) and, when given, the upstream
    ``grad_entropy`` of the forward's per-row ``entropy`` ('none')."""
    p = _problem(x, weight, bias, index, probs, class_weight, ignore_index, label_smoothing,
                 z_loss, softcap, logit_scale, margin, margin_args)
    target = p.target
    scale = row_scale(target.valid, reduction, target.mean_denominator(), all_ignored, lse.dtype,
                      grad_loss)
    ent = None
    if grad_entropy is not None:
        ent = EntropyGrad(grad_entropy.to(lse.dtype) * target.valid, entropy)
    gx, gw, gb, gt = gradients(p, TilePlan(rows, cols), backend, lse=lse, scale=scale,
                               need=Need(need_x, need_w, need_b, need_t), entropy_grad=ent)
    return _or_empty(gx, x), _or_empty(gw, weight), _or_empty(gb, x), _or_empty(gt, x)


@_linear_ce_backward_op.register_fake
def _(grad_loss, x, weight, bias, index, probs, class_weight, lse, ignore_index, label_smoothing,
      reduction, z_loss, softcap, logit_scale, all_ignored, rows, cols, backend, need_x, need_w,
      need_b, need_t, margin="", margin_args=None, grad_entropy=None, entropy=None):
    return (
        torch.empty_like(x) if need_x else _empty(x),
        torch.empty_like(weight) if need_w else _empty(weight),
        torch.empty_like(bias) if need_b and bias is not None else _empty(x),
        torch.empty_like(probs) if need_t and probs is not None else _empty(x),
    )


_ARGS = ("x", "weight", "bias", "index", "probs", "class_weight", "ignore_index",
         "label_smoothing", "reduction", "z_loss", "softcap", "logit_scale", "all_ignored",
         "rows", "cols", "backend", "stats", "need_x", "need_w", "need_b", "need_t", "margin",
         "margin_args", "entropy_grad", "argmax")
_TENSORS = ("x", "weight", "bias", "index", "probs", "class_weight")


def _setup_context(ctx, inputs, output):
    a = {"need_t": False, "margin": "", "margin_args": None, "entropy_grad": False,
         **dict(zip(_ARGS, inputs))}
    ctx.args = {k: a[k] for k in ("ignore_index", "label_smoothing", "reduction", "z_loss",
                                  "softcap", "logit_scale", "all_ignored", "rows", "cols",
                                  "backend", "margin", "margin_args")}
    need = Need(a["need_x"], a["need_w"], a["need_b"] and a["bias"] is not None,
                a["need_t"] and a["probs"] is not None)
    _, lse, ent, best, gx, gw, gb = output
    # Only the loss is differentiable (and the entropy with entropy_grad). Without this,
    # autograd would materialise zero gradients for the other outputs, among them a
    # dW-sized and a dX-sized buffer.
    ctx.entropy_grad = bool(a["entropy_grad"] and a["stats"] and a["reduction"] == "none")
    ctx.mark_non_differentiable(lse, best, gx, gw, gb, *(() if ctx.entropy_grad else (ent,)))
    ctx.set_materialize_grads(False)
    if a["reduction"] == "none" or need.t:  # the backward recomputes tiles
        ctx.save_for_backward(*(a[k] for k in _TENSORS), lse, ent)
    save(ctx, a["reduction"], need, (gx, gw, gb), *_context(a["margin"]))


def _backward(ctx, grad_loss, _lse, grad_ent, _arg, _gx, _gw, _gb):
    grad_ent = grad_ent if ctx.entropy_grad else None

    def recompute(grad, need: Need):
        *tensors, lse, ent = ctx.saved_tensors
        extra = {} if grad_ent is None else dict(grad_entropy=grad_ent, entropy=ent)
        return _linear_ce_backward_op(grad, *tensors, lse, **ctx.args, need_x=need.x,
                                      need_w=need.w, need_b=need.b, need_t=need.t, **extra)

    if grad_loss is None and grad_ent is not None:  # only the entropy is used downstream
        grad_loss = torch.zeros_like(ctx.saved_tensors[-2])
    gx, gw, gb, gt = backward(ctx, grad_loss, recompute)
    return (gx, gw, gb, None, gt) + (None,) * (len(_ARGS) - 5)


linear_ce_op.register_autograd(_backward, setup_context=_setup_context)
