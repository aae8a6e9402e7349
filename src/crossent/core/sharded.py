"""Cross-entropy over classes sharded across ranks (vocabulary / tensor parallel).

``ce.cross_entropy(..., group=g)`` and ``ce.linear_cross_entropy(..., group=g)`` land here.
The layout is Megatron-LM's vocabulary-parallel cross-entropy (Shoeybi et al.,
"Megatron-LM", 2019): the rows (tokens) are the same on every rank of ``g``; rank ``r``
holds a contiguous slice of the ``C`` classes, global columns ``[o_r, o_r + C_r)`` in rank
order (the ``C_r`` may differ): local logits ``(N, C_r)``, or the local output weight
``(C_r, H)`` and bias ``(C_r,)``. Targets are global class indices, the same on every rank;
probability targets and the class ``weight`` are sharded like the logits.

Each rank sees its shard as columns ``[o_r, o_r + C_r)`` of the global problem and
computes the streaming statistics of :mod:`crossent.core.stats` over them: the row max /
log-sum-exp ``lse_r``, its part of the target dot ``dot_r = sum_{c in r} t_ic z_ic`` and of
the target mass ``s_r = sum_{c in r} t_ic`` (label smoothing spreads ``eps / C`` with the
global ``C``), and for ``return_stats`` the entropy term and argmax. One all-gather of
these ``(N,)`` vectors (:func:`crossent.distributed.merge_row_stats`) gives every rank the
whole problem's statistics, folded in rank order with :func:`crossent.core.stats.merge`, the
same bits on every rank::

    lse = log sum_r exp(lse_r),   dot = sum_r dot_r,   s = sum_r s_r
    loss_i = s_i lse_i - dot_i + z_loss lse_i^2          (reduced as without group)

(carried relative to the row maxima, each shard's then the global one, so that the loss
keeps its digits at any magnitude of the logits: :mod:`crossent.core.stats`).

Gradients (tensor-parallel convention, see :mod:`crossent.distributed`): the objective is
``L`` once. ``d lse / d lse_r = exp(lse_r - lse)``, so the local logits get
``dL/dlse * softmax_global - dL/ddot * t`` on their own columns, no communication. For the
fused linear path the backend recomputes the local logit tiles against the *global*
``lse`` (its gradient pass), giving the weight and bias their slice of the global gradient
and ``x`` the shard's part of ``dL/dx``; ``x`` enters through
:func:`crossent.distributed.replicated_input`, whose backward all-reduces those parts.

Communication per call (``W`` ranks, ``N`` rows): the agreement check (two all-gathers of
a few hundred bytes), for class-index targets one all-reduce of ``2N`` int64 (the targets
must agree), one all-gather of ``k N`` numbers (``k`` = 4 to 7 statistics); and for the
linear path's backward one all-reduce of the ``N x H`` input gradient, which is inherent
to a replicated input. Never logits, never weights.

Checks: the ranks agree on every option, the row count and row shape, the dtype, the
hidden size, whether the input needs a gradient (its backward all-reduces), and the class
targets themselves; any disagreement or local argument error raises the same error on
every rank (:func:`crossent.distributed.check_agreement`). Each rank must hold at least
one class. The replicated ``input`` of the linear path is not compared (that would cost
``N x H``); it must be the same on every rank.

No ``torch.compile`` support in this mode (collectives inside the loss).
"""

from __future__ import annotations

import dataclasses

import torch

from . import checks as _checks
from . import collectives as D
from . import stats as _stats
from .reduction import accumulation_dtype
from .statistics import SoftmaxStatistics, softmax_statistics
from .targets import ClassIndexTarget

__all__ = ["parallel_cross_entropy"]


@dataclasses.dataclass(frozen=True)
class Shards:
    """Where this rank's classes sit among everyone's."""

    rank: int
    sizes: tuple[int, ...]

    @property
    def offset(self) -> int:
        """The global index of this rank's first class (:func:`crossent.core.collectives.offsets`)."""
        return D.offsets(self.sizes)[self.rank]

    @property
    def total(self) -> int:
        return sum(self.sizes)


def agree(context: str, group, same: dict, classes: int | None,
          error: BaseException | None) -> Shards:
    """The agreement check of a class-sharded call; every rank's class count."""
    each = D.check_agreement(context, group, same=same, each={"classes": classes}, error=error)
    sizes = tuple(int(e["classes"]) for e in each)
    if min(sizes) < 1:
        raise _checks.ArgumentError(
            f"{context}: every rank must hold at least one class, got class counts {list(sizes)}"
        )
    return Shards(D.rank_and_size(group)[0], sizes)


def agreement_fields(**kwargs) -> dict:
    """The options every rank must agree on, JSON-able (dtypes and devices as strings)."""
    return {k: (str(v) if isinstance(v, (torch.dtype, torch.device)) else v)
            for k, v in kwargs.items()}


def shard_index_target(context: str, target: torch.Tensor, shards: Shards, group, *,
                       weight, ignore_index: int, label_smoothing: float,
                       dtype: torch.dtype) -> ClassIndexTarget:
    """Class-index targets checked (the same on every rank, within ``[0, C)``) and built
    for this rank's shard (see :meth:`ClassIndexTarget.build`)."""
    D.check_replicated(context, "target", target, group)
    _checks.check_index_bounds(target, shards.total, ignore_index)  # same outcome everywhere
    return ClassIndexTarget.build(
        target, shards.sizes[shards.rank], weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, dtype=dtype, col_offset=shards.offset,
        total_classes=shards.total,
    )


# ----------------------------------------------------------------- the merge


@dataclasses.dataclass
class Merged:
    """The whole problem's per-row statistics (and the 'mean' denominator); ``lse_shifted``
    and ``dot`` are relative to ``shift``, the global row max (:mod:`crossent.core.stats`)."""

    lse: torch.Tensor
    lse_shifted: torch.Tensor
    dot: torch.Tensor
    shift: torch.Tensor
    mass: torch.Tensor
    denominator: torch.Tensor | None
    entropy: torch.Tensor | None
    argmax: torch.Tensor | None


def merge_shards(group, shards: Shards, *, shift, lse, dot, mass, denominator=None, entropy=None,
                 argmax=None) -> Merged:
    """Every rank's shard statistics merged (no autograd): one all-gather.

    ``lse`` and ``dot`` are relative to this shard's row max ``shift``; ``mass`` (and
    ``denominator`` when given) are this shard's parts, summed across ranks.
    """
    state = _stats.state_from_lse(shift.detach(), lse.detach(), dot.detach(), mass.detach(),
                                  entropy, argmax)
    sums = [denominator.detach().reshape(1)] if denominator is not None else []
    merged, totals = D.merge_row_stats(state, group, col_offset=shards.offset, sums=sums)
    return Merged(
        _stats.logsumexp(merged), _stats.shifted_logsumexp(merged), merged.dot,
        _stats.reference(merged), merged.mass,
        totals[0].reshape(()) if denominator is not None else None,
        _stats.entropy(merged) if entropy is not None else None, merged.argmax,
    )


# ---------------------------------------------------------- given logits


def parallel_cross_entropy(input, target, weight, validate, *, return_stats: bool,
                           all_ignored: str, group):
    """The merged statistics of :func:`crossent.cross_entropy` with ``input`` this rank's
    class shard (see the module): ``(stats, valid, denominator, args)``, ready for the
    front's loss formula. ``validate()`` checks the local arguments and returns the
    front's validated arguments; what it raises, it raises on every rank."""
    context = "crossent.cross_entropy(group=...)"
    args, error, same = None, None, {}
    try:
        args = validate()
        rows_shape = list(input.shape[:1] + input.shape[2:]) if input.dim() > 1 else []
        same = agreement_fields(
            target=("probabilities" if args.probs else "class indices"), rows=rows_shape,
            dtype=input.dtype, device_type=input.device.type, reduction=args.reduction,
            ignore_index=args.ignore_index, label_smoothing=args.label_smoothing,
            z_loss=args.z_loss, softcap=args.transform.softcap,
            logit_scale=args.transform.logit_scale, return_stats=bool(return_stats),
            all_ignored=all_ignored, weight=weight is not None,
        )
    except D.LOCAL_ERRORS as exc:
        error = exc
    shards = agree(context, group, same, args.num_classes if args else None, error)

    acc = accumulation_dtype(input.dtype)
    if args.probs:
        stats = softmax_statistics(
            input, target, weight=weight, label_smoothing=args.label_smoothing,
            transform=args.transform, entropy=return_stats, argmax=return_stats,
            num_classes=shards.total,
        )
        valid, denominator = None, None
    else:
        spec = shard_index_target(context, target, shards, group, weight=weight,
                                  ignore_index=args.ignore_index,
                                  label_smoothing=args.label_smoothing, dtype=acc)
        stats = softmax_statistics(input, spec, transform=args.transform, entropy=return_stats,
                                   argmax=return_stats)
        valid, denominator = spec.valid, spec.mean_denominator()
    extra = dict(entropy=stats.entropy, argmax=stats.argmax) if return_stats else {}
    m = merge_shards(group, shards, shift=stats.shift, lse=stats.lse_shifted,
                     dot=stats.dot_shifted, mass=stats.mass, denominator=denominator, **extra)
    lse, dot, mass = D.with_merge_gradient(
        stats.lse_shifted, m.lse_shifted, group, parts=(stats.dot_shifted, stats.mass),
        sums=(m.dot, m.mass), delta=stats.shift - m.shift, convention=D.TENSOR_PARALLEL)
    if args.probs:  # 'mean' over rows, as without group
        m.denominator = torch.tensor(float(lse.shape[0]), dtype=lse.dtype, device=lse.device)
    merged = SoftmaxStatistics(lse, dot, mass, m.entropy, m.argmax, m.shift)
    return merged, valid, m.denominator, args
