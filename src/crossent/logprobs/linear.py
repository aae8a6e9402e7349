"""``linear_token_log_probs``: per-token log-probabilities and entropy of an output layer's
scores at a temperature, without the ``tokens x vocab`` logits.

The fused linear engine (:mod:`crossent.linear.engine`) runs with ``reduction='none'``
and the logit scale ``1 / temperature``: ``log p_y = -loss`` (the per-row cross-entropy,
a sum of non-negative terms relative to the row max, so never positive) and the entropy
is a statistic of the same streaming pass. The backward recomputes the tiles against the
saved log-sum-exp and entropy and takes both upstream gradients at once::

    dL/dz_iv = a_i (delta_{v y_i} - p_iv) - e_i p_iv (log p_iv + H_i)

(``a``, ``e``: the upstream gradients of ``log_probs`` and ``entropy``; ``z = logits / T``,
then ``1 / T`` into the logits). With ``group=`` the classes are sharded over ranks, with
the contract of ``linear_cross_entropy(group=)`` (:mod:`crossent.linear.sharded`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..core import checks as _checks
from ..core import collectives as D
from ..core.reduction import accumulation_dtype
from ..core.tiles import default_budget
from ..linear.engine import linear_ce_op
from ..linear.front import _linear_args, _plan
from ..linear.sharded import parallel_linear_cross_entropy

__all__ = ["linear_token_log_probs", "TokenLogProbs", "EXTRAS"]

_CONTEXT = "crossent.linear_token_log_probs"

#: the per-token monitoring values ``extras=`` may ask for (TRL's names; no gradient)
EXTRAS = ("mean_logits", "is_top1", "log_sum_sq_probs")


class TokenLogProbs(NamedTuple):
    """What :func:`linear_token_log_probs` returns with ``extras``: each a tensor of the
    target's shape, or None when not asked for (``entropy`` without ``return_entropy``)."""

    log_probs: torch.Tensor
    entropy: torch.Tensor | None
    mean_logits: torch.Tensor | None
    is_top1: torch.Tensor | None
    log_sum_sq_probs: torch.Tensor | None = None


def _check_extras(extras) -> tuple[str, ...]:
    if not isinstance(extras, (tuple, list)) or not all(isinstance(e, str) for e in extras):
        raise _checks.ArgumentTypeError(
            f"extras must be a tuple of names from {EXTRAS}, got {extras!r}")
    unknown = [e for e in extras if e not in EXTRAS]
    if unknown:
        raise _checks.ArgumentError(f"extras must be names from {EXTRAS}, got {unknown}")
    return tuple(extras)


def _mean_logits(x, weight, bias, scale: float, group) -> torch.Tensor:
    """``mean_v z_v = scale * (x . mean_v W_v + mean_v b_v)``: one matrix-vector product
    (the class sums all-reduced over a class-sharded weight), no pass over the logits."""
    acc = accumulation_dtype(x.dtype)
    with torch.no_grad():
        sums = torch.cat([weight.sum(0, dtype=acc),
                          (bias.sum(0, dtype=acc) if bias is not None
                           else weight.new_zeros((), dtype=acc)).reshape(1),
                          torch.tensor([float(weight.shape[0])], dtype=acc, device=x.device)])
        if D.spans_ranks(group):
            sums = D.all_reduce(sums, group)
        w_sum, b_sum, count = sums[:-2], sums[-2], sums[-1]
        return (x.to(acc) @ w_sum + b_sum) * (scale / count)


def linear_token_log_probs(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    memory_budget: int | None = None,
    backend: str = "auto",
    group=None,
    extras: tuple[str, ...] = (),
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | TokenLogProbs:
    """Per-token log-probabilities (and entropy) of an output layer, without its logits.

    The log-probability of each target token under ``input @ linear_weight.T +
    linear_bias`` at a temperature, and optionally each position's entropy. With
    ``z = softcap(logit_scale * (x @ W.T + b)) / temperature`` computed tile by tile
    (never held whole; ``softcap(y) = cap * tanh(y / cap)``, TRL's order of the three),
    ``p = softmax(z)`` and ``m`` the row max::

        log_probs = log p_y = (z_y - m) - log sum_v exp(z_v - m)        (<= 0 by construction)
        entropy   = -sum_v p_v log p_v
        d log p_y / d z_v = delta_vy - p_v          d entropy / d z_v = -p_v (log p_v + H)

    chained through ``1 / temperature`` (and the cap and scale) into ``x``, ``W`` and
    ``b``; 0, with no gradient,
    at positions whose target is ``ignore_index``. This is
    :func:`crossent.token_log_probs` of ``F.linear(input, linear_weight, linear_bias)``,
    the per-token quantities of PPO, GRPO, RLOO and DPO, with the memory of
    :func:`crossent.linear_cross_entropy` (``reduction='none'``): tiles within
    ``memory_budget``, recomputed in the backward against the saved per-row log-sum-exp
    (and entropy). Accumulation is float32 (float64 for float64 input).

    Args:
        input: hidden states ``x``, floating point.
        linear_weight: the output layer's weight ``W``, the input's dtype; a ``DTensor``
            sharded by FSDP2's ``fully_shard`` is gathered, its gradient averaged over the
            ranks as FSDP2 averages the others (:func:`crossent.core.collectives.unshard_parameter`).
        target: class indices (int64 or uint8) in ``[0, V)`` or ``ignore_index``.
        linear_bias: optional output-layer bias ``b``.
        temperature: a finite number ``> 0`` the logits are divided by.
        ignore_index: the target value of positions to ignore (outputs 0, no gradient).
        return_entropy: also return the entropy of each position's distribution
            (differentiable).
        memory_budget: bytes bounding the float32 logit tiles (two tile-sized buffers
            with the entropy: its terms, its gradient's coefficients). Default 1 GiB on
            the CPU, 128 MiB on CUDA (:data:`crossent.core.tiles.BUDGETS` ``"logprobs"``):
            tall bands (880 whole rows of a 152k vocabulary on the CPU), whose matmuls run
            faster, still a tenth of the logits at 4096 tokens.
        backend: ``'auto'`` (Triton on CUDA, PyTorch elsewhere), ``'torch'`` or ``'triton'``.
        group: a ``torch.distributed`` process group over which the *classes* are sharded,
            as :func:`crossent.linear_cross_entropy`: ``input`` and ``target`` (global
            class indices) the same on every rank, ``linear_weight``/``linear_bias`` this
            rank's contiguous slice of the classes (rank order, sizes may differ). Every
            rank returns the global values; the weight and bias get their slice of the
            global gradient, ``input`` the full one.
        extras: per-token monitoring values of TRL's ``add_fused_lm_head``, without
            gradient, 0 / False at ignored positions: ``'mean_logits'`` (``mean_v z_v``:
            one matrix-vector product; with ``softcap``, one more forward pass, as
            ``lse - (the cross-entropy of the uniform target)``), ``'is_top1'`` (whether
            the target is the first argmax: the argmax statistic of the same pass) and
            ``'log_sum_sq_probs'`` (``log sum_v p_v^2 = lse(2 z) - 2 lse(z)``: one more
            forward pass, over the scores ``2 z``).
        logit_scale: a finite number ``> 0`` the scores are multiplied by first (e.g.
            Cohere's ``logit_scale``).
        softcap: ``cap > 0`` for Gemma 2's final-logit soft-capping, None (or ``math.inf``)
            for none; applied before the temperature.
    Shape:
        - input: ``(..., H)``, e.g. ``(B, T, H)``; linear_weight ``(V, H)``; linear_bias ``(V,)``.
        - target: ``input.shape[:-1]``.
        - log_probs, entropy: the target's shape.
    Returns:
        ``log_probs``, or ``(log_probs, entropy)`` with ``return_entropy=True``; float32
        for half-precision input, else the input's dtype. With ``extras``, a
        :class:`TokenLogProbs` ``(log_probs, entropy, mean_logits, is_top1,
        log_sum_sq_probs)``, None where
        not asked for. Gradients reach ``input``,
        ``linear_weight`` and ``linear_bias`` from any upstream gradient of either output.
        Double backward is not supported and raises.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> hidden, W = torch.randn(2, 3, 8), torch.randn(10, 8)
        >>> target = torch.tensor([[1, 0, 9], [4, -100, 7]])
        >>> log_probs, entropy = ce.linear_token_log_probs(hidden, W, target, temperature=0.7,
        ...                                                return_entropy=True)
        >>> log_probs.shape, bool((log_probs <= 0).all()), float(log_probs[1, 1])
        (torch.Size([2, 3]), True, 0.0)
        >>> torch.allclose(log_probs, ce.token_log_probs(hidden @ W.T, target, temperature=0.7))
        True

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
    """
    _checks.check_no_transform(_CONTEXT)
    parallel = D.spans_ranks(group)  # a one-rank group is no group
    # an FSDP2-sharded output layer (DTensor) gathered, its gradient averaged as FSDP2's
    linear_weight, linear_bias = D.unshard_parameter(linear_weight), D.unshard_parameter(linear_bias)

    def validate(factor: float = 1.0, smoothing: float = 0.0):
        """The checked arguments and tile plan; ``factor`` scales the scores ``z`` (the
        extras' passes over ``2 z``), ``smoothing`` the label smoothing (1: the uniform
        target, whose loss is ``lse - mean z``)."""
        _checks.check_floating("input", input)
        if input.dim() < 1:
            raise _checks.ArgumentError("input must have shape (..., H), got a 0-d tensor")
        inv_t = 1.0 / _checks.check_temperature("temperature", temperature,
                                                accumulation_dtype(input.dtype))
        _, _, cap, ls = _checks.check_logit_options(0.0, 0.0, softcap, logit_scale)
        # softcap(ls y) / T = (cap / T) tanh((ls / T) y / (cap / T)): one score transform
        scale, cap = ls * inv_t * factor, None if cap is None else cap * inv_t * factor
        index = _checks.check_int("ignore_index", ignore_index)
        _checks.check_bool("return_entropy", return_entropy)
        _check_extras(extras)
        flat = _checks.check_class_index_target(
            target, input.shape[:-1], 0, index, input.device,
            shape_hint=" (input.shape[:-1])", bounds=False).reshape(-1)
        a = _linear_args(input.reshape(-1, input.shape[-1]), linear_weight, flat, linear_bias,
                         None, "none", index, smoothing, 0.0, cap, scale, "zero", backend,
                         check_bounds=not parallel)
        budget = default_budget("logprobs", input.device) if memory_budget is None \
            else memory_budget
        plan = _plan(a, linear_weight.shape[0], stats, budget, None, None, recompute=True)
        return a, plan

    # (a bad extras argument raises in validate(), on every rank)
    top1 = isinstance(extras, (tuple, list)) and "is_top1" in extras
    stats = bool(return_entropy is True or top1)  # the op's entropy (and argmax) statistics
    def run(factor=1.0, smoothing=0.0, stats=False, entropy_grad=False, argmax=False):
        """``(loss, lse, entropy, argmax, args)`` of one pass of the engine (or its group=
        path) over the scores ``factor * z``."""
        if parallel:
            return parallel_linear_cross_entropy(
                input.reshape(-1, input.shape[-1]), linear_weight, linear_bias, None, lambda: validate(factor, smoothing),
                return_stats=stats, all_ignored="zero", group=group, entropy_grad=entropy_grad,
                argmax=argmax, agree_on={"extras": sorted(extras)})
        a, plan = validate(factor, smoothing)
        loss, lse, ent, best, _, _, _ = linear_ce_op(
            a.x, linear_weight, linear_bias, a.index, None, None, a.ignore_index, a.label_smoothing,
            "none", 0.0, a.softcap, a.logit_scale, "zero", plan.rows, plan.cols, a.backend,
            stats, a.need_x, a.need_w, a.need_b, entropy_grad=entropy_grad, argmax=argmax,
        )
        return loss, lse, ent, best, a

    # (a bad extras argument raises in validate(), on every rank)
    top1 = isinstance(extras, (tuple, list)) and "is_top1" in extras
    stats = bool(return_entropy is True or top1)  # the op's entropy (and argmax) statistics
    loss, lse, ent, best, a = run(stats=stats, entropy_grad=return_entropy, argmax=top1)
    shape = target.shape
    log_probs = (0.0 - loss).reshape(shape)  # 0 - 0 = +0 at ignored positions
    if not (return_entropy or extras):
        return log_probs
    valid = a.index != a.ignore_index
    zero = torch.zeros((), dtype=log_probs.dtype, device=log_probs.device)
    entropy = torch.where(valid, ent, zero).reshape(shape) if return_entropy else None
    if not extras:
        return log_probs, entropy
    mean = square = None
    if "mean_logits" in extras:
        if a.softcap is None:  # linear in the hidden states: no pass over the classes
            mean = _mean_logits(a.x, linear_weight, linear_bias, a.logit_scale, group)
        else:  # the uniform target's cross-entropy is lse - mean z: one forward pass
            with torch.no_grad():
                uniform, lse_z = run(smoothing=1.0)[:2]
            mean = lse_z - uniform
        mean = torch.where(valid, mean, zero).reshape(shape)
    if "log_sum_sq_probs" in extras:  # log sum p^2 = lse(2 z) - 2 lse(z): one forward pass
        with torch.no_grad():
            lse_2z = run(factor=2.0)[1]
        square = torch.where(valid, lse_2z - 2 * lse.detach(), zero).reshape(shape)
    is_top1 = ((best == a.index) & valid).reshape(shape) if top1 else None
    return TokenLogProbs(log_probs, entropy, mean, is_top1, square)
