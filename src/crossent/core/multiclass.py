"""Multi-class losses on logits: softmax, log-softmax, NLL and cross-entropy.

Signatures and semantics are those of ``torch.nn.functional``; the cross-entropy runs
on the shared softmax-statistics core (:mod:`crossent.core.statistics`), so its backward keeps no
``N x C`` buffer, and it adds what PyTorch lacks: z-loss, logit soft-capping, a logit
scale (inverse temperature), per-row statistics, and a NaN-free 'mean' when every
target is ignored.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.nn import _reduction as _legacy

from . import checks as _checks
from .collectives import spans_ranks
from .reduction import ALL_IGNORED_CHOICES, accumulation_dtype, loss_dtype, reduce_rows
from .sharded import parallel_cross_entropy
from .statistics import ScoreTransform, softmax_statistics, to_rows
from .stats import cross_entropy_rows
from .targets import ClassIndexTarget

__all__ = [
    "softmax",
    "log_softmax",
    "nll_loss",
    "cross_entropy",
    "CrossEntropyStats",
]


def softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax along ``dim``; as ``F.softmax``.

    ::

        softmax(x)_i = exp(x_i) / sum_j exp(x_j)

    Delegates to PyTorch's fused kernel (which already subtracts the row max); kept here
    so the whole family is one import. See :func:`crossent.reference.softmax`.

    Args:
        input: floating-point tensor (an integer one needs ``dtype``).
        dim: the dimension to normalise over (``None``: PyTorch's legacy choice, with
            its warning).
        dtype: cast ``input`` to this dtype first (as ``F.softmax``).
    Shape:
        any; the output has ``input``'s shape.
    Returns:
        The probabilities, summing to 1 along ``dim``.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
        >>> ce.softmax(x, dim=1)
        tensor([[0.2312, 0.6285, 0.1402],
                [0.0466, 0.0171, 0.9362]])
        >>> torch.allclose(ce.softmax(x, dim=1), torch.nn.functional.softmax(x, dim=1))
        True

    References:
        Bridle, "Probabilistic Interpretation of Feedforward Classification Network
        Outputs, with Relationships to Statistical Pattern Recognition", 1990.
    """
    if dtype is None:
        _checks.check_floating("input", input)
    return F.softmax(input, dim=dim, _stacklevel=_stacklevel + 1, dtype=dtype)


def log_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int = 3,
                dtype: torch.dtype | None = None) -> torch.Tensor:
    """Log-softmax along ``dim``; as ``F.log_softmax``.

    ::

        log_softmax(x)_i = x_i - logsumexp(x)

    The log-sum-exp form never overflows, unlike ``log(softmax(x))`` which gives
    ``-inf``/NaN once a logit difference passes ~88 (float32) or ~709 (float64).

    Args:
        input: floating-point tensor (an integer one needs ``dtype``).
        dim: the dimension to normalise over.
        dtype: cast ``input`` to this dtype first (as ``F.log_softmax``).
    Shape:
        any; the output has ``input``'s shape.
    Returns:
        The log-probabilities along ``dim``.
    Example:
        >>> import torch, crossent as ce
        >>> ce.log_softmax(torch.tensor([1000.0, 0.0]), dim=0)  # log(softmax) would be -inf
        tensor([    0., -1000.])

    References:
        See :func:`crossent.reference.log_softmax` for the float64 definition.
    """
    if dtype is None:
        _checks.check_floating("input", input)
    return F.log_softmax(input, dim=dim, _stacklevel=_stacklevel + 1, dtype=dtype)


def _legacy_reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return _legacy.legacy_get_string(size_average, reduce)
    return reduction


def _check_input(input: torch.Tensor) -> None:
    _checks.check_floating("input", input)
    if input.dim() == 0:
        raise _checks.ArgumentError(
            "input must have at least one dimension (the classes), got a 0-D tensor"
        )


def _check_index_target(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
) -> int:
    """Validate class-index ``target`` against ``input`` (all but the index bounds);
    returns ``ignore_index`` as an int."""
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    _checks.check_index_target_dtype(target)
    _checks.check_index_target_shape(input, target)
    _checks.check_class_weight(weight, _num_classes(input), input)
    return ignore_index


def _num_classes(input: torch.Tensor) -> int:
    return input.shape[0] if input.dim() == 1 else input.shape[1]


def _index_target(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> ClassIndexTarget:
    """Validate class-index ``target`` against ``input`` and build it in row order."""
    ignore_index = _check_index_target(input, target, weight, ignore_index)
    num_classes = _num_classes(input)
    _checks.check_index_bounds(target, num_classes, ignore_index)
    return ClassIndexTarget.build(
        target,
        num_classes,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        dtype=accumulation_dtype(input.dtype),
    )


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    all_ignored: str = "nan",
) -> torch.Tensor:
    """Negative log-likelihood of class indices given log-probabilities; as ``F.nll_loss``.

    ::

        loss_i = -w[y_i] * input[i, y_i]        (0 where y_i == ignore_index)

    'mean' divides by ``sum_i w[y_i]`` over non-ignored rows.

    Args:
        input: log-probabilities (e.g. from :func:`log_softmax`).
        target: class indices (int64 or uint8).
        weight: optional ``(C,)`` class weights ``w``.
        size_average, reduce: PyTorch's deprecated reduction flags (mapped to
            ``reduction``).
        ignore_index: target value whose rows contribute nothing (nor to the mean).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        all_ignored: ``'nan'`` (PyTorch's 0/0 when every target is ignored) or ``'zero'``.
    Shape:
        input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; target ``()``, ``(N,)`` or
        ``(N, d1, ..., dK)``; the output is a scalar, or target-shaped for ``'none'``.
    Returns:
        The loss, in the accumulation dtype (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
        >>> y = torch.tensor([1, 2])
        >>> round(ce.nll_loss(ce.log_softmax(x, dim=1), y).item(), 4)
        0.2651
        >>> torch.allclose(ce.nll_loss(x.log_softmax(1), y),
        ...                torch.nn.functional.nll_loss(x.log_softmax(1), y))
        True

    References:
        PyTorch, ``torch.nn.functional.nll_loss``.
    """
    reduction = _checks.check_reduction(_legacy_reduction(size_average, reduce, reduction))
    _check_input(input)
    spec = _index_target(input, target, weight, ignore_index, 0.0)
    # Pick the target's log-probability along the class dimension without moving the
    # input (no copy of a K-dimensional input): gather saves only the index.
    acc = accumulation_dtype(input.dtype)
    if input.dim() == 1:
        picked = input.to(acc).gather(0, spec.index)
    else:
        index = spec.index.reshape((input.shape[0],) + tuple(input.shape[2:])).unsqueeze(1)
        picked = input.gather(1, index).squeeze(1).to(acc).reshape(-1)
    zero = torch.zeros((), dtype=acc, device=input.device)
    row_loss = torch.where(spec.valid, -spec.target_weight * picked, zero)
    row_loss = row_loss.reshape(target.shape)
    return reduce_rows(row_loss, reduction, spec.mean_denominator(), all_ignored=all_ignored)


class CrossEntropyStats(NamedTuple):
    """Per-row statistics from the same pass as the loss (no gradient), target-shaped.

    ::

        lse_i     = logsumexp_c z_ic
        entropy_i = -sum_c p_ic log p_ic,   p_i = softmax(z_i)
        argmax_i  = argmax_c z_ic

    Returned by :func:`cross_entropy` with ``return_stats=True`` (``z`` is the transformed
    logits: scale and soft-cap applied).

    Attributes:
        lse: log-sum-exp of the (transformed) logits.
        entropy: entropy of the predicted distribution, in nats.
        argmax: predicted class (int64), so accuracy is
            ``(stats.argmax == target)[target != ignore_index].float().mean()``.
    Shape:
        each field has the target's shape (the per-row shape of ``'none'``).
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        >>> loss, stats = ce.cross_entropy(x, torch.tensor([0, 1]), return_stats=True)
        >>> stats.argmax
        tensor([0, 0])
        >>> torch.allclose(stats.entropy[1], torch.log(torch.tensor(3.0)))
        True
    """

    lse: torch.Tensor
    entropy: torch.Tensor
    argmax: torch.Tensor


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    logit_scale: float = 1.0,
    return_stats: bool = False,
    all_ignored: str = "nan",
    group=None,
):
    """Cross-entropy between logits and class indices or class probabilities.

    As ``F.cross_entropy``: with ``z = softcap(logit_scale * input)`` and the target
    distribution ``t`` (one-hot of ``y`` times ``w[y]``, mixed with ``eps/C * w`` by label
    smoothing; or ``w * ((1-eps) q + eps/C)`` for probabilities ``q``)::

        loss_i = sum_c t_ic * (logsumexp(z_i) - z_ic) + z_loss * logsumexp(z_i)^2

    'mean' divides by ``sum_i w[y_i]`` over non-ignored rows for class indices (PyTorch's
    weighted mean, shared by the smoothing term), by the number of rows for probabilities.
    The backward keeps no ``N x C`` buffer beyond the input itself.

    Args:
        input: logits (floating point).
        target: class indices (int64/uint8) or class probabilities of ``input``'s shape.
        weight: optional ``(C,)`` class weights ``w``.
        size_average, reduce: PyTorch's deprecated reduction flags.
        ignore_index: class-index target value whose rows contribute nothing.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        label_smoothing: ``eps`` in ``[0, 1]``.
        z_loss: coefficient of the PaLM auxiliary loss ``log^2 Z`` (Chowdhery et al. 2022,
            sec. 5), which keeps the softmax normaliser near 1; applied to non-ignored rows
            and reduced like the main term.
        softcap: Gemma 2 logit soft-capping ``cap * tanh(z / cap)`` (Gemma Team 2024), a
            finite number > 0; ``None`` or ``math.inf`` mean no cap (as the cap grows,
            ``cap * tanh(z / cap)`` tends to ``z``).
        logit_scale: multiplies the logits first (``1/T`` for a temperature ``T``), a
            finite number > 0.
        return_stats: also return :class:`CrossEntropyStats` from the same pass.
        all_ignored: ``'nan'`` (PyTorch's 0/0 when every target is ignored) or ``'zero'``.
        group: a ``torch.distributed`` process group over which the *classes* are sharded
            (vocabulary/tensor parallel, Megatron-LM's layout): ``input`` holds this rank's
            contiguous slice of the classes (rank order, sizes may differ), ``target`` has
            global class indices (the same on every rank) or this rank's slice of the
            probabilities, ``weight`` this rank's slice. Every rank returns the global loss
            and ``input`` gets its slice of the global gradient. See
            :mod:`crossent.core.sharded`. ``None`` or a group of one rank: one process.
    Shape:
        input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; target ``()``, ``(N,)``,
        ``(N, d1, ..., dK)`` class indices or probabilities of input's shape; the output is
        a scalar, or the per-row shape (``target``'s, for indices) for ``'none'``.
    Returns:
        The loss, in float32 for float16/bfloat16 input (input dtype otherwise; with a
        probability target of a wider dtype, in the promoted dtype, as PyTorch: float32
        input, float64 target: float64); with ``return_stats=True`` the pair
        ``(loss, CrossEntropyStats)``. NaN or infinite hyperparameters (but
        ``softcap=math.inf``) raise :class:`crossent.ArgumentError` naming the argument.
        Supports ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ``jacfwd``,
        ``jvp``, ``hessian``) and forward-mode AD without ``group``: under them the
        statistics are computed with plain differentiable PyTorch operations
        (``F.cross_entropy``'s memory).
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> x = torch.randn(4, 5)
        >>> y = torch.tensor([0, 3, 1, 4])
        >>> loss = ce.cross_entropy(x, y, label_smoothing=0.1)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(x, y, label_smoothing=0.1))
        True
        >>> loss, stats = ce.cross_entropy(x, y, z_loss=1e-4, return_stats=True)
        >>> stats.argmax
        tensor([4, 2, 3, 3])
        >>> ce.cross_entropy(x, torch.full((4,), -100), all_ignored="zero")
        tensor(0.)

    References:
        Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", 2022 (z-loss).
        Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024
        (soft-capping). Szegedy et al., "Rethinking the Inception Architecture for
        Computer Vision", 2016 (label smoothing).
    """
    def validate() -> CrossEntropyArgs:
        return _cross_entropy_args(input, target, weight, size_average, ignore_index, reduce,
                                   reduction, label_smoothing, z_loss, softcap, logit_scale,
                                   all_ignored)

    if spans_ranks(group):  # a one-rank group is no group
        _checks.check_no_transform("crossent.cross_entropy(group=...)")
        stats, valid, denominator, args = parallel_cross_entropy(
            input, target, weight, validate, return_stats=return_stats,
            all_ignored=all_ignored, group=group)
    else:
        args = validate()
        stats, valid, denominator = _local_statistics(input, target, weight, args, return_stats)
    return finish_cross_entropy(stats, valid, denominator, args, all_ignored, return_stats)


class CrossEntropyArgs(NamedTuple):
    """The validated arguments of :func:`cross_entropy` (what the class-parallel path
    shares with the single-process one)."""

    reduction: str
    label_smoothing: float
    z_loss: float
    transform: ScoreTransform
    probs: bool  # class-probability target
    num_classes: int  # the input's class count (a shard's, with group=)
    ignore_index: int
    row_shape: tuple  # shape of the per-row losses ('none')
    out_dtype: torch.dtype | None = None  # the loss's dtype when promoted by a float target


def _cross_entropy_args(input, target, weight, size_average, ignore_index, reduce, reduction,
                        label_smoothing, z_loss, softcap, logit_scale,
                        all_ignored) -> CrossEntropyArgs:
    """Validate everything but the class-index bounds (which need the total class count)."""
    reduction = _checks.check_reduction(_legacy_reduction(size_average, reduce, reduction))
    _check_input(input)
    if not isinstance(target, torch.Tensor):
        raise _checks.ArgumentTypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    label_smoothing, z_loss, softcap, logit_scale = _checks.check_logit_options(
        label_smoothing, z_loss, softcap, logit_scale)
    _checks.check_choice("all_ignored", all_ignored, ALL_IGNORED_CHOICES)
    transform = ScoreTransform(logit_scale=logit_scale, softcap=softcap)
    num_classes = _num_classes(input)

    if target.is_floating_point():
        if ignore_index != -100:
            raise _checks.ArgumentError(
                f"ignore_index is not supported for floating point target (got ignore_index="
                f"{ignore_index}); class-probability targets cannot be ignored"
            )
        if target.dim() != input.dim():
            raise _checks.ArgumentTypeError(
                f"expected target dtype to be Long or Byte for class indices, but got "
                f"{target.dtype}; a float target holds class probabilities and must have "
                f"the input's shape {list(input.shape)}, got {list(target.shape)}"
            )
        _checks.check_prob_target_shape(input, target)
        _checks.check_class_weight(weight, num_classes, input)
        row_shape = tuple(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else ()
        # PyTorch promotes the loss to a wider probability target's dtype
        out_dtype = torch.promote_types(loss_dtype(input.dtype), target.dtype)
        return CrossEntropyArgs(reduction, label_smoothing, z_loss, transform, True,
                                num_classes, -100, row_shape, out_dtype)
    ignore_index = _check_index_target(input, target, weight, ignore_index)
    return CrossEntropyArgs(reduction, label_smoothing, z_loss, transform, False, num_classes,
                            ignore_index, tuple(target.shape))


def _local_statistics(input, target, weight, args: CrossEntropyArgs, return_stats: bool):
    """``(stats, valid, denominator)`` of :func:`cross_entropy` on one process."""
    if args.probs:
        stats = softmax_statistics(
            input, target, weight=weight, label_smoothing=args.label_smoothing,
            transform=args.transform, entropy=return_stats, argmax=return_stats,
        )
        denominator = torch.tensor(
            float(to_rows(input).shape[0]), dtype=stats.mass.dtype, device=input.device
        )
        return stats, None, denominator
    _checks.check_index_bounds(target, args.num_classes, args.ignore_index)
    spec = ClassIndexTarget.build(
        target, args.num_classes, weight=weight, ignore_index=args.ignore_index,
        label_smoothing=args.label_smoothing, dtype=accumulation_dtype(input.dtype),
    )
    stats = softmax_statistics(
        input, spec, transform=args.transform, entropy=return_stats, argmax=return_stats
    )
    return stats, spec.valid, spec.mean_denominator()


def finish_cross_entropy(stats, valid, denominator, args: CrossEntropyArgs, all_ignored: str,
                         return_stats: bool):
    """Loss (and :class:`CrossEntropyStats`) from per-row statistics relative to their
    shift (:class:`crossent.core.statistics.SoftmaxStatistics`)."""
    row_loss = cross_entropy_rows(stats.lse_shifted, stats.dot_shifted, stats.mass, valid,
                                  args.z_loss, shift=stats.shift)
    loss = reduce_rows(row_loss.reshape(args.row_shape), args.reduction, denominator,
                       all_ignored=all_ignored)
    if args.out_dtype is not None and loss.dtype != args.out_dtype:
        loss = loss.to(args.out_dtype)
    if not return_stats:
        return loss
    extra = CrossEntropyStats(
        stats.lse.detach().reshape(args.row_shape),
        stats.entropy.reshape(args.row_shape),
        stats.argmax.reshape(args.row_shape),
    )
    return loss, extra
