"""Fused linear cross-entropy: the output layer and the loss, without the logits.

``linear_cross_entropy(x, W, y)`` equals ``cross_entropy(x @ W.T + b, y)`` (and
``F.linear_cross_entropy``), with the extras of :func:`crossent.cross_entropy`, but the
``N x V`` logits are only ever seen as tiles that fit a memory budget::

    z_i    = softcap(logit_scale * (W x_i + b))
    loss_i = sum_c t_ic (logsumexp(z_i) - z_ic) + z_loss * logsumexp(z_i)^2

With a scalar reduction ('mean'/'sum') the gradients for ``x``, ``W`` and ``b`` are
formed during the forward pass tile by tile (the upstream gradient only scales them);
with ``reduction='none'`` the forward keeps the per-row log-sum-exp and the backward
recomputes the tiles for exact per-token gradients. Accumulation is float32 (float64 for
float64 input) whatever the input dtype.

The op is registered with ``torch.library.custom_op`` (with fake implementations), so
``torch.compile(fullgraph=True)`` traces through it without graph breaks; nothing on
the hot path synchronises the host.

References: Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models"
(2024, CCE); Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training"
(2024); PyTorch's ``F.linear_cross_entropy`` (chunked over the batch).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from ..core import checks as _checks
from ..core import collectives as D
from ..core.multiclass import CrossEntropyStats
from ..core.reduction import ALL_IGNORED_CHOICES, accumulation_dtype, mean_scale, reduce_rows
from ..core.statistics import ScoreTransform
from ..core.stats import cross_entropy_rows
from ..core.targets import ClassIndexTarget, ClassProbTarget
from ..core.tiles import TilePlan, plan_tiles
from ..kernels import margin_scores
from ..kernels.dispatch import get_backend, resolve_backend
from ..kernels.torch_chunked import LinearProblem, tile_buffers
from .sharded import parallel_linear_cross_entropy

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

_EMPTY = (0,)


# --------------------------------------------------------------------------- the op


def _target(x, index, probs, class_weight, ignore_index, label_smoothing, num_classes):
    acc = accumulation_dtype(x.dtype)
    if probs is not None:
        return ClassProbTarget.build(probs, weight=class_weight, label_smoothing=label_smoothing, dtype=acc)
    return ClassIndexTarget.build(
        index, num_classes, weight=class_weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, dtype=acc,
    )


def _problem(x, weight, bias, target, z_loss, softcap, logit_scale, margin="",
             margin_args=None) -> LinearProblem:
    scores = None
    if margin:  # a margin head (crossent.margin): another score source over the same weight
        scores = margin_scores.build(margin, margin_args, x, weight, target)
    return LinearProblem(x, weight, bias, target, ScoreTransform(logit_scale, softcap), z_loss,
                         scores)


def _empty(like: torch.Tensor, dtype=None) -> torch.Tensor:
    return like.new_empty(_EMPTY, dtype=dtype or like.dtype)


@torch.library.custom_op("crossent::linear_cross_entropy", mutates_args=())
def _linear_ce_op(
    x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    index: Optional[torch.Tensor], probs: Optional[torch.Tensor], class_weight: Optional[torch.Tensor],
    ignore_index: int, label_smoothing: float, reduction: str, z_loss: float,
    softcap: Optional[float], logit_scale: float, all_ignored: str, rows: int, cols: int,
    backend: str, stats: bool, need_x: bool, need_w: bool, need_b: bool,
    margin: str = "", margin_args: Optional[Sequence[float]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``(loss, lse, entropy, argmax, grad_x, grad_weight, grad_bias)``; the
    gradients (for a unit upstream gradient) only for scalar reductions, else empty.
    ``margin``/``margin_args``: a margin head's spec (:mod:`crossent.margin`), or "" for none."""
    num_classes = margin_scores.num_classes(margin, margin_args, weight)
    target = _target(x, index, probs, class_weight, ignore_index, label_smoothing, num_classes)
    acc = accumulation_dtype(x.dtype)
    row_scale = None
    if reduction != "none" and (need_x or need_w or need_b):
        scale = torch.ones((), dtype=acc, device=x.device)
        if reduction == "mean":
            scale = mean_scale(target.mean_denominator().to(acc), all_ignored)
        row_scale = target.valid.to(acc) * scale
    res = get_backend(backend).run(
        _problem(x, weight, bias, target, z_loss, softcap, logit_scale, margin, margin_args),
        TilePlan(rows, cols), row_scale=row_scale, need_x=need_x, need_w=need_w, need_b=need_b,
        entropy=stats, argmax=stats,
    )
    row_loss = cross_entropy_rows(res.lse, res.dot, target.mass, target.valid, z_loss)
    loss = reduce_rows(row_loss, reduction, target.mean_denominator(), all_ignored=all_ignored)
    out_dtype = acc if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    gx = res.grad_x if res.grad_x is not None else _empty(x)
    gw = res.grad_weight.to(weight.dtype) if res.grad_weight is not None else _empty(weight)
    gb = res.grad_bias.to(bias.dtype) if res.grad_bias is not None else _empty(x)
    return (
        loss.to(out_dtype),
        res.lse,
        res.entropy if stats else _empty(x, acc),
        res.argmax if stats else _empty(x, torch.int64),
        gx, gw, gb,
    )


@_linear_ce_op.register_fake
def _(x, weight, bias, index, probs, class_weight, ignore_index, label_smoothing, reduction,
      z_loss, softcap, logit_scale, all_ignored, rows, cols, backend, stats, need_x, need_w, need_b,
      margin="", margin_args=None):
    acc = accumulation_dtype(x.dtype)
    n = x.shape[0]
    out_dtype = acc if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    loss = x.new_empty((n,) if reduction == "none" else (), dtype=out_dtype)
    scalar_grads = reduction != "none"
    return (
        loss,
        x.new_empty((n,), dtype=acc),
        x.new_empty((n,) if stats else _EMPTY, dtype=acc),
        x.new_empty((n,) if stats else _EMPTY, dtype=torch.int64),
        torch.empty_like(x) if scalar_grads and need_x else _empty(x),
        torch.empty_like(weight) if scalar_grads and need_w else _empty(weight),
        torch.empty_like(bias) if scalar_grads and need_b and bias is not None else _empty(x),
    )


@torch.library.custom_op("crossent::linear_cross_entropy_backward", mutates_args=())
def _linear_ce_backward_op(
    grad_loss: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
    index: Optional[torch.Tensor], probs: Optional[torch.Tensor], class_weight: Optional[torch.Tensor],
    lse: torch.Tensor, ignore_index: int, label_smoothing: float, z_loss: float,
    softcap: Optional[float], logit_scale: float, rows: int, cols: int, backend: str,
    need_x: bool, need_w: bool, need_b: bool,
    margin: str = "", margin_args: Optional[Sequence[float]] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact per-row gradients of ``reduction='none'``: tiles recomputed against ``lse``."""
    num_classes = margin_scores.num_classes(margin, margin_args, weight)
    target = _target(x, index, probs, class_weight, ignore_index, label_smoothing, num_classes)
    row_scale = grad_loss.to(lse.dtype) * target.valid
    res = get_backend(backend).run(
        _problem(x, weight, bias, target, z_loss, softcap, logit_scale, margin, margin_args),
        TilePlan(rows, cols),
        row_scale=row_scale, lse=lse, need_x=need_x, need_w=need_w, need_b=need_b,
    )
    gx = res.grad_x if res.grad_x is not None else _empty(x)
    gw = res.grad_weight.to(weight.dtype) if res.grad_weight is not None else _empty(weight)
    gb = res.grad_bias.to(bias.dtype) if res.grad_bias is not None else _empty(x)
    return gx, gw, gb


@_linear_ce_backward_op.register_fake
def _(grad_loss, x, weight, bias, index, probs, class_weight, lse, ignore_index, label_smoothing,
      z_loss, softcap, logit_scale, rows, cols, backend, need_x, need_w, need_b, margin="",
      margin_args=None):
    return (
        torch.empty_like(x) if need_x else _empty(x),
        torch.empty_like(weight) if need_w else _empty(weight),
        torch.empty_like(bias) if need_b and bias is not None else _empty(x),
    )


_ARGS = ("x", "weight", "bias", "index", "probs", "class_weight", "ignore_index",
         "label_smoothing", "reduction", "z_loss", "softcap", "logit_scale", "all_ignored",
         "rows", "cols", "backend", "stats", "need_x", "need_w", "need_b", "margin", "margin_args")


def _setup_context(ctx, inputs, output):
    a = {"margin": "", "margin_args": None, **dict(zip(_ARGS, inputs))}
    ctx.args = {k: a[k] for k in ("ignore_index", "label_smoothing", "z_loss", "softcap",
                                  "logit_scale", "rows", "cols", "backend", "margin",
                                  "margin_args")}
    ctx.reduction = a["reduction"]
    ctx.need = (a["need_x"], a["need_w"], a["need_b"] and a["bias"] is not None)
    _, lse, ent, best, gx, gw, gb = output
    # Only the loss is differentiable. Without this, autograd would materialise zero
    # gradients for the other outputs, among them a dW-sized and a dX-sized buffer.
    ctx.mark_non_differentiable(lse, ent, best, gx, gw, gb)
    ctx.set_materialize_grads(False)
    if ctx.reduction == "none":
        ctx.save_for_backward(a["x"], a["weight"], a["bias"], a["index"], a["probs"],
                              a["class_weight"], lse)
        ctx.grads = None
    else:
        ctx.grads = [gx, gw, gb]


def _backward(ctx, grad_loss, _lse, _ent, _arg, _gx, _gw, _gb):
    need_x, need_w, need_b = ctx.need
    if grad_loss is None:  # an undefined upstream gradient (set_materialize_grads(False))
        return (None,) * 22
    if ctx.reduction == "none":
        x, weight, bias, index, probs, class_weight, lse = ctx.saved_tensors
        gx, gw, gb = _linear_ce_backward_op(
            grad_loss, x, weight, bias, index, probs, class_weight, lse, need_x=need_x,
            need_w=need_w, need_b=need_b, **ctx.args,
        )
    else:
        if ctx.grads is None:
            raise RuntimeError(
                "crossent.linear_cross_entropy: backward through a 'mean'/'sum' loss twice "
                "(retain_graph=True) is not supported: its gradients are formed in the "
                "forward pass and consumed by the first backward"
            )
        gx, gw, gb = ctx.grads
        if torch.compiler.is_compiling():
            gx, gw, gb = gx * grad_loss, gw * grad_loss, gb * grad_loss
        else:
            # Scale in place and hand the buffers over (no gradient-sized copy).
            ctx.grads = None
            # detach(): a fresh TensorImpl over the same storage, which AccumulateGrad
            # can adopt as .grad instead of cloning a buffer the op's outputs still hold.
            gx, gw, gb = gx.mul_(grad_loss).detach(), gw.mul_(grad_loss).detach(), gb.mul_(grad_loss).detach()
    return (gx if need_x else None, gw if need_w else None, gb if need_b else None) + (None,) * 19


_linear_ce_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------- validation + API


def _check_shapes(input, linear_weight, linear_bias):
    _checks.check_floating("input", input)
    _checks.check_floating("linear_weight", linear_weight)
    if input.dim() not in (1, 2):
        raise _checks.ArgumentError(
            f"input must be 1-D (in_features,) or 2-D (N, in_features), got shape {list(input.shape)}"
        )
    if linear_weight.dim() < 2:
        raise _checks.ArgumentError(
            f"linear_weight must be 2-D (num_classes, in_features), got shape {list(linear_weight.shape)}"
        )
    if linear_weight.dim() > 2:
        raise _checks.ArgumentError(
            f"linear_weight of shape {list(linear_weight.shape)} asks for a K-dimensional loss, "
            "which crossent.linear_cross_entropy does not support; use "
            "crossent.cross_entropy(F.linear(input, linear_weight), ...) for it"
        )
    _checks.check_same_features("input", input, "linear_weight", linear_weight,
                                dim="last dimension (in_features)")
    if linear_bias is not None:
        _checks.check_floating("linear_bias", linear_bias)
        if tuple(linear_bias.shape) != (linear_weight.shape[0],):
            raise _checks.ArgumentError(
                f"linear_bias must have shape {[linear_weight.shape[0]]}, got {list(linear_bias.shape)}"
            )
        if linear_bias.device != input.device:
            raise _checks.ArgumentError(f"linear_bias is on {linear_bias.device}, expected {input.device}")


def _split_target(input, target, num_classes, weight, ignore_index, check_bounds=True):
    """``(index, probs, ignore_index)`` in 2-D row form, validated (the class-index bounds
    only with ``check_bounds``)."""
    if not isinstance(target, torch.Tensor):
        raise _checks.ArgumentTypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    logits_shape = tuple(input.shape[:-1]) + (num_classes,)
    _checks.check_class_weight(weight, num_classes, input)
    if target.is_floating_point():
        if ignore_index is not None:
            raise _checks.ArgumentError(
                f"ignore_index cannot be specified when target contains probabilities (got {ignore_index})"
            )
        if tuple(target.shape) != logits_shape:
            raise _checks.ArgumentError(
                f"target with class probabilities must have shape {list(logits_shape)}, got {list(target.shape)}"
            )
        if target.device != input.device:
            raise _checks.ArgumentError(f"target is on {target.device}, expected {input.device}")
        return None, target.reshape(-1, num_classes), -100
    ignore_index = -100 if ignore_index is None else int(ignore_index)
    _checks.check_index_target_dtype(target)
    expected = tuple(input.shape[:-1])
    if tuple(target.shape) != expected:
        raise _checks.ArgumentError(
            f"target with class indices must have shape {list(expected)} for input of shape "
            f"{list(input.shape)}, got {list(target.shape)}"
        )
    if check_bounds and not torch.compiler.is_compiling():  # a value check: eager only
        _checks.check_index_bounds(target, num_classes, ignore_index)
    return target.reshape(-1).long(), None, ignore_index


class LinearArgs(NamedTuple):
    """The validated arguments of :func:`linear_cross_entropy` (shared with the
    class-parallel path)."""

    x: torch.Tensor  # (N, H)
    index: torch.Tensor | None  # (N,) int64 class indices
    probs: torch.Tensor | None  # (N, V) probabilities
    ignore_index: int
    reduction: str
    label_smoothing: float
    z_loss: float
    softcap: float | None
    logit_scale: float
    backend: str
    need_x: bool
    need_w: bool
    need_b: bool


def _linear_args(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                 label_smoothing, z_loss, softcap, logit_scale, all_ignored, backend,
                 check_bounds=True) -> LinearArgs:
    reduction = _checks.check_reduction(reduction)
    _check_shapes(input, linear_weight, linear_bias)
    label_smoothing = _checks.check_unit_interval("label_smoothing", label_smoothing)
    z_loss = _checks.check_non_negative("z_loss", z_loss)
    softcap = _checks.check_positive("softcap", softcap)
    logit_scale = _checks.check_positive("logit_scale", logit_scale, allow_none=False)
    _checks.check_choice("all_ignored", all_ignored, ALL_IGNORED_CHOICES)
    backend = resolve_backend(backend, input.device)
    index, probs, ignore_index = _split_target(input, target, linear_weight.shape[0], weight,
                                               ignore_index, check_bounds)
    grad_on = torch.is_grad_enabled()
    return LinearArgs(
        input.unsqueeze(0) if input.dim() == 1 else input, index, probs, ignore_index,
        reduction, label_smoothing, z_loss, softcap, logit_scale, backend,
        grad_on and input.requires_grad, grad_on and linear_weight.requires_grad,
        grad_on and linear_bias is not None and linear_bias.requires_grad,
    )


def _plan(a: LinearArgs, num_classes: int, return_stats: bool, memory_budget, token_chunk_size,
          vocab_chunk_size, recompute: bool, weighted: bool = False):
    transform = ScoreTransform(a.logit_scale, a.softcap)
    # A probability target's tile is a view of the caller's tensor unless it must be
    # converted, smoothed or class-weighted (ClassProbTarget.tile); only then a buffer.
    probs_buffer = a.probs is not None and (
        a.probs.dtype != accumulation_dtype(a.x.dtype) or a.label_smoothing > 0 or weighted)
    buffers = tile_buffers(transform, grads=a.need_x or a.need_w or a.need_b,
                           entropy=return_stats, probs=probs_buffer)
    return plan_tiles(a.x.shape[0], num_classes,
                      kind="linear_recompute" if recompute else "linear", device=a.x.device,
                      buffers=buffers, memory_budget=memory_budget, tile_rows=token_chunk_size,
                      tile_cols=vocab_chunk_size,
                      accumulator_width=a.x.shape[1] if a.need_x else 0)


def _with_stats(loss, lse, ent, best, input, return_stats: bool):
    """The public return value: the loss, or ``(loss, CrossEntropyStats)``."""
    if not return_stats:
        return loss
    shape = tuple(input.shape[:-1])
    return loss, CrossEntropyStats(lse.detach().reshape(shape), ent.reshape(shape), best.reshape(shape))


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    return_stats: bool = False,
    all_ignored: str = "nan",
    memory_budget: int | None = None,
    token_chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    backend: str = "auto",
    options=None,
    group=None,
):
    """Cross-entropy of ``input @ linear_weight.T + linear_bias`` without the logits.

    With ``z = softcap(logit_scale * (x @ W.T + b))``, computed tile by tile and never
    held whole, and the target distribution ``t`` of :func:`crossent.cross_entropy`::

        loss_i = sum_c t_ic * (logsumexp(z_i) - z_ic) + z_loss * logsumexp(z_i)^2

    Same arguments and semantics as ``torch.nn.functional.linear_cross_entropy``
    (``ignore_index=None`` means -100 for class indices and is an error with
    probability targets), plus those of :func:`crossent.cross_entropy`: ``z_loss``,
    ``softcap``, ``logit_scale``, ``return_stats`` (per-row log-sum-exp, entropy and
    argmax, as :class:`crossent.CrossEntropyStats`) and ``all_ignored``.

    Args:
        input: hidden states ``x``.
        linear_weight: the output layer's weight ``W``.
        target: class indices (int64/uint8) or class probabilities.
        linear_bias: optional output-layer bias ``b``.
        weight: optional ``(V,)`` class weights.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        ignore_index: class-index target value whose rows contribute nothing (``None``:
            -100 for class indices; an error with probability targets).
        label_smoothing, z_loss, softcap, logit_scale, all_ignored: as
            :func:`crossent.cross_entropy`.
        return_stats: also return per-row log-sum-exp, entropy and argmax, as
            :class:`crossent.CrossEntropyStats`.
        memory_budget: bytes bounding the float32 logit tiles (default 32 MiB, 8 MiB for
            ``reduction='none'``, whose backward recomputes them; 256 / 64 MiB on CUDA; at
            least :func:`crossent.core.tiles.min_memory_budget`, about 1 KiB per tile
            buffer plus ``4 H`` bytes; see :mod:`crossent.core.tiles`).
        token_chunk_size, vocab_chunk_size: override the chosen tile sizes.
        backend: ``'auto'`` (Triton on CUDA, PyTorch elsewhere), ``'torch'`` or
            ``'triton'``.
        options: a ``torch.nn.LinearCrossEntropyOptions``, accepted for drop-in
            compatibility and ignored.
        group: a ``torch.distributed`` process group over which the *classes* are sharded
            (vocabulary parallel, Megatron-LM's layout): ``input`` is the same on every
            rank, ``linear_weight``/``linear_bias``/``weight`` are this rank's contiguous
            slice of the classes (rank order, sizes may differ), ``target`` has global class
            indices (the same on every rank) or this rank's slice of the probabilities.
            Every rank returns the global loss; the weight and bias get their slice of the
            global gradient, ``input`` the full gradient (all-reduced in the backward). See
            :mod:`crossent.linear.sharded`. ``None`` or a group of one rank: one process.
    Shape:
        input ``(H,)`` or ``(N, H)``; linear_weight ``(V, H)``; linear_bias ``(V,)``;
        target ``()``/``(N,)`` class indices or ``(V,)``/``(N, V)`` probabilities; weight
        ``(V,)``; the output a scalar, or ``(N,)``/``()`` for ``'none'``.
    Returns:
        The loss, in float32 for half inputs (with ``return_stats=True`` the pair
        ``(loss, CrossEntropyStats)``). Gradients flow to input, linear_weight and
        linear_bias (not to probability targets), in their dtypes.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> hidden, W = torch.randn(6, 8), torch.randn(10, 8)
        >>> y = torch.tensor([1, 0, 9, 4, 4, 7])
        >>> loss = ce.linear_cross_entropy(hidden, W, y)
        >>> torch.allclose(loss, F.cross_entropy(hidden @ W.T, y))
        True
        >>> _, stats = ce.linear_cross_entropy(hidden, W, y, return_stats=True)
        >>> torch.equal(stats.argmax, (hidden @ W.T).argmax(1))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024
        (the logits never materialised). PyTorch,
        ``torch.nn.functional.linear_cross_entropy``.
    """
    del options
    parallel = D.spans_ranks(group)  # a one-rank group is no group

    def validate():
        # everything but the class-index bounds with group= (they need the global count);
        # the tile options too, before any collective (they may differ by rank)
        a = _linear_args(input, linear_weight, target, linear_bias, weight, reduction,
                         ignore_index, label_smoothing, z_loss, softcap, logit_scale,
                         all_ignored, backend, check_bounds=not parallel)
        plan = _plan(a, linear_weight.shape[0], return_stats, memory_budget, token_chunk_size,
                     vocab_chunk_size, recompute=a.reduction == "none",
                     weighted=weight is not None)
        return a, plan

    if parallel:
        loss, lse, ent, best, a = parallel_linear_cross_entropy(
            input, linear_weight, linear_bias, weight, validate, return_stats=return_stats,
            all_ignored=all_ignored, group=group)
    else:
        a, plan = validate()
        loss, lse, ent, best, _, _, _ = _linear_ce_op(
            a.x, linear_weight, linear_bias, a.index, a.probs, weight, a.ignore_index,
            a.label_smoothing, a.reduction, a.z_loss, a.softcap, a.logit_scale, all_ignored,
            plan.rows, plan.cols, a.backend, bool(return_stats), a.need_x, a.need_w, a.need_b,
        )
    if a.reduction == "none" and input.dim() == 1:
        loss = loss.reshape(())
    return _with_stats(loss, lse, ent, best, input, return_stats)


class LinearCrossEntropyLoss(nn.Module):
    """An output layer ``Linear(in_features, num_classes)`` fused with its cross-entropy.

    ::

        forward(hidden, target) = linear_cross_entropy(hidden, self.weight, target,
                                                       linear_bias=self.bias, **kwargs)

    with the keyword arguments given at construction (``forward``'s own keyword arguments
    override them); ``logits(hidden)`` gives the full logits when they are wanted
    (generation, evaluation). Initialised as ``nn.Linear``.

    Args:
        in_features: ``H``, the hidden size.
        num_classes: ``V``, the number of classes (vocabulary size).
        bias: whether the layer has a bias.
        device, dtype: of the parameters.
        **loss_kwargs: keyword arguments of :func:`crossent.linear_cross_entropy`.
    Shape:
        hidden ``(N, H)`` or ``(H,)``; target as :func:`crossent.linear_cross_entropy`.
    Returns:
        ``forward`` returns the loss, as :func:`crossent.linear_cross_entropy`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.LinearCrossEntropyLoss(8, 10, bias=True, label_smoothing=0.1)
        >>> head
        LinearCrossEntropyLoss(in_features=8, num_classes=10, bias=True)
        >>> hidden, y = torch.randn(6, 8), torch.tensor([1, 0, 9, 4, 4, 7])
        >>> torch.allclose(head(hidden, y),
        ...                torch.nn.functional.cross_entropy(head.logits(hidden), y,
        ...                                                  label_smoothing=0.1))
        True

    References:
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
    """

    def __init__(self, in_features: int, num_classes: int, bias: bool = False, *,
                 device=None, dtype=None, **loss_kwargs):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(num_classes, device=device, dtype=dtype)) if bias else None
        self.loss_kwargs = loss_kwargs
        self.reset_parameters()

    def reset_parameters(self) -> None:
        ref = nn.Linear(self.in_features, self.num_classes, bias=self.bias is not None)
        with torch.no_grad():
            self.weight.copy_(ref.weight)
            if self.bias is not None:
                self.bias.copy_(ref.bias)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor, **overrides):
        kwargs = {**self.loss_kwargs, **overrides}
        return linear_cross_entropy(hidden, self.weight, target, linear_bias=self.bias, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}, bias={self.bias is not None}"
