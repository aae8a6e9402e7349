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

This module validates the arguments, plans the tiles and makes one call of the engine
(:mod:`crossent.linear.engine`: a ``torch.library`` custom op with fake implementations,
so ``torch.compile(fullgraph=True)`` traces through it without graph breaks; nothing on
the hot path synchronises the host), or with ``group=`` of its sharded wrapper
(:mod:`crossent.linear.sharded`).

References: Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models"
(2024, CCE); Hsu et al., "Liger Kernel: Efficient Triton Kernels for LLM Training"
(2024); PyTorch's ``F.linear_cross_entropy`` (chunked over the batch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..core import checks as _checks
from ..core import collectives as D
from ..core.multiclass import CrossEntropyStats
from ..core.reduction import ALL_IGNORED_CHOICES, accumulation_dtype
from ..core.statistics import ScoreTransform
from ..core.tiles import plan_tiles
from ..kernels.dispatch import resolve_backend
from ..kernels.torch_chunked import tile_buffers
from .engine import linear_ce_op
from .sharded import parallel_linear_cross_entropy

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]


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
        if linear_bias.dtype != input.dtype:  # F.linear raises too
            raise _checks.ArgumentTypeError(
                f"linear_bias must have the input's dtype {input.dtype}, got {linear_bias.dtype}")


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
    index = _checks.check_class_index_target(
        target, input.shape[:-1], num_classes, ignore_index, input.device,
        shape_hint=f" (class indices for input of shape {list(input.shape)})", bounds=check_bounds)
    return index.reshape(-1), None, ignore_index


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
    need_t: bool = False  # a probability target that requires grad


def _linear_args(input, linear_weight, target, linear_bias, weight, reduction, ignore_index,
                 label_smoothing, z_loss, softcap, logit_scale, all_ignored, backend,
                 check_bounds=True) -> LinearArgs:
    reduction = _checks.check_reduction(reduction)
    _check_shapes(input, linear_weight, linear_bias)
    label_smoothing, z_loss, softcap, logit_scale = _checks.check_logit_options(
        label_smoothing, z_loss, softcap, logit_scale)
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
        grad_on and probs is not None and probs.requires_grad,
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
        The loss, in float32 for half inputs (promoted to a wider probability target's
        dtype, as PyTorch; with ``return_stats=True`` the pair ``(loss,
        CrossEntropyStats)``). ``softcap``: ``None`` or ``math.inf`` mean no cap;
        ``logit_scale``, ``z_loss``, ``label_smoothing`` must be finite. ``torch.func``
        transforms and forward-mode AD are not supported: they raise
        ``crossent.core.checks.UnsupportedTransformError`` (a :class:`crossent.ArgumentError`
        and a ``NotImplementedError``). Gradients flow to input, linear_weight,
        linear_bias and a probability target that requires grad (``d loss_i / d q_ic =
        (1 - eps) w_c (lse_i - z_ic)`` times the reduction's scale, formed in the backward
        from recomputed tiles), in their dtypes. Double backward (``create_graph=True``)
        is not supported and raises.
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
    _checks.check_no_transform("crossent.linear_cross_entropy")
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
        loss, lse, ent, best, _, _, _ = linear_ce_op(
            a.x, linear_weight, linear_bias, a.index, a.probs, weight, a.ignore_index,
            a.label_smoothing, a.reduction, a.z_loss, a.softcap, a.logit_scale, all_ignored,
            plan.rows, plan.cols, a.backend, bool(return_stats), a.need_x, a.need_w, a.need_b,
            a.need_t,
        )
    if a.reduction == "none" and input.dim() == 1:
        loss = loss.reshape(())
    if a.probs is not None:  # PyTorch promotes the loss to a wider target's dtype
        loss = loss.to(torch.promote_types(loss.dtype, a.probs.dtype))
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
