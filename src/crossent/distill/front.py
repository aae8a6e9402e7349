"""``linear_distillation_loss``: distillation fused with the student's (and a dense
teacher's) output layer; validation, the tile plan, one engine call."""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from ..core import checks as _checks
from ..core import collectives as _collectives
from ..core.divergence import check_distillation_options, check_teacher_choice
from ..core.reduction import accumulation_dtype
from ..core.tiles import plan_tiles
from . import engine, sharded

__all__ = ["linear_distillation_loss"]


def _check_head(prefix: str, x, weight, bias, like: torch.Tensor | None = None) -> None:
    """``x (N, H)``, ``weight (V, H)``, ``bias (V,)`` of one head."""
    names = ("input", "linear_weight", "linear_bias") if prefix == "" else (
        "teacher_input", "teacher_weight", "teacher_bias")
    _checks.check_matrix(names[0], x, "(N, in_features)")
    _checks.check_matrix(names[1], weight, "(num_classes, in_features)")
    _checks.check_same_features(names[0], x, names[1], weight, dim="last dimension (in_features)")
    if bias is not None:
        _checks.check_floating(names[2], bias)
        if tuple(bias.shape) != (weight.shape[0],) or bias.dtype != x.dtype or bias.device != x.device:
            raise _checks.ArgumentError(
                f"{names[2]} must be a ({weight.shape[0]},) tensor of {names[0]}'s dtype "
                f"{x.dtype} on {x.device}, got {list(bias.shape)} {bias.dtype} on {bias.device}")
    if like is not None:
        if x.shape[0] != like.shape[0] or x.device != like.device:
            raise _checks.ArgumentError(
                f"teacher_input must have input's {like.shape[0]} rows on {like.device}, got "
                f"{x.shape[0]} rows on {x.device}")


class Args(NamedTuple):
    """The validated arguments of one call."""

    topk: bool
    target: torch.Tensor | None  # (N,) int64
    valid: torch.Tensor | None  # (N,) bool
    indices: torch.Tensor | None  # (N, k) int64 (checked against the classes with bounds)
    ignore_index: int
    options: engine.Options


def _validate(input, linear_weight, target, teacher_input, teacher_weight, teacher_topk_indices,
              teacher_topk_log_probs, divergence, beta, tail, temperature, alpha, reduction,
              ignore_index, linear_bias, teacher_bias, memory_budget, *, bounds: bool) -> Args:
    """Every local check; with ``bounds`` also the class indices' values (without: a
    class-sharded caller checks them against the global class count)."""
    _check_head("", input, linear_weight, linear_bias)
    acc = accumulation_dtype(input.dtype)
    kind, beta, tail, temperature, alpha, ignore_index = check_distillation_options(
        divergence, beta, tail, temperature, alpha, reduction, ignore_index, acc)
    dense = None if teacher_input is None and teacher_weight is None else (teacher_input,
                                                                          teacher_weight)
    topk = check_teacher_choice("teacher_input and teacher_weight", dense, teacher_topk_indices,
                                teacher_topk_log_probs)
    n, classes = input.shape[0], linear_weight.shape[0]
    indices = None
    if not topk:
        if teacher_input is None or teacher_weight is None:
            raise _checks.ArgumentError(
                "a dense teacher needs both teacher_input and teacher_weight, got "
                f"{'teacher_input' if teacher_input is not None else 'teacher_weight'} alone")
        _check_head("teacher_", teacher_input, teacher_weight, teacher_bias, like=input)
        if teacher_weight.shape[0] != classes:
            raise _checks.ArgumentError(
                f"teacher_weight must have linear_weight's {classes} classes, got "
                f"{teacher_weight.shape[0]}")
    elif teacher_bias is not None:
        raise _checks.ArgumentError("teacher_bias is only used with a dense teacher head, got a "
                                    "top-k teacher")
    elif bounds:
        indices = _checks.check_topk_teacher(teacher_topk_indices, teacher_topk_log_probs, n,
                                             classes, input.device)
    valid = None
    if target is not None:
        target = _checks.check_class_index_target(target, (n,), classes, ignore_index,
                                                  input.device, bounds=bounds)
        valid = target != ignore_index
    plan = plan_tiles(n, classes, kind="distill", device=input.device,
                      buffers=3 if topk else 4, memory_budget=memory_budget,
                      accumulator_width=input.shape[1])
    return Args(topk, target, valid, indices, ignore_index,
                engine.Options(kind, beta, tail, temperature, alpha, reduction, plan))


def linear_distillation_loss(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    teacher_input: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    teacher_topk_indices: torch.Tensor | None = None,
    teacher_topk_log_probs: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    tail: str = "bucket",
    temperature: float = 1.0,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
    linear_bias: torch.Tensor | None = None,
    teacher_bias: torch.Tensor | None = None,
    memory_budget: int | None = None,
    group=None,
) -> torch.Tensor:
    """Distillation fused with the output layers: neither head's logits are formed whole.

    :func:`crossent.distillation_loss` of the student's logits ``input @ linear_weight.T +
    linear_bias`` against a dense teacher head ``teacher_input @ teacher_weight.T +
    teacher_bias`` or a top-k teacher.

    With ``p = softmax(z / T)``, ``q = softmax(t / T)`` (a dense teacher) or the top-k
    teacher's buckets (as :func:`crossent.distillation_loss`)::

        loss_i = alpha T^2 D(p_i, q_i) + (1 - alpha) CE(z_i, target_i)   (T^2 D_i without target)
        D:  KL(q || p) | KL(p || q) | beta KL(q || m) + (1 - beta) KL(p || m),  m = beta q + (1 - beta) p

    The vocabulary is walked in tiles of both heads at once: the log-sum-exps, then ``D_i``
    and ``S_i = sum_v p_v dD/dp_v``, and the gradient tile
    ``dD/dz_v = p_v (dD/dp_v - S_i) / T`` (:mod:`crossent.kernels.two_heads`); for a top-k
    teacher only the student's log-sum-exp and its logits at the ``k`` classes (and the
    target) are formed, then the bucket formula of the given-logits loss. The teacher gets
    no gradient; ``input``, ``linear_weight`` and ``linear_bias`` do (float32 accumulation).

    Args:
        input: the student's hidden states ``(N, H)``.
        linear_weight: the student's output layer ``(V, H)``.
        target: optional ``(N,)`` class indices for the hard term (``ignore_index``: the
            token counts in neither term).
        teacher_input, teacher_weight, teacher_bias: a dense teacher's head ``(N, H_t)``,
            ``(V, H_t)``, ``(V,)`` (any ``H_t``; no gradient).
        teacher_topk_indices, teacher_topk_log_probs: a top-k teacher ``(N, k)``, instead.
        divergence, beta, tail, temperature, alpha, reduction, ignore_index: as
            :func:`crossent.distillation_loss`.
        linear_bias: the student's bias ``(V,)``.
        memory_budget: bytes for the float32 tiles (default 320 MiB on CPU, 1 GiB on
            CUDA: whole rows of 128 tokens at a 152k vocabulary).
        group: a ``torch.distributed`` group over which the classes of both heads are
            sharded (``linear_weight``, ``teacher_weight`` and the biases hold this rank's
            classes, in rank order; ``input``, ``teacher_input`` and ``target`` are
            replicated, top-k indices are global); None: one process.
    Shape:
        ``input (N, H)``, ``target (N,)``; the output ``(N,)`` for ``'none'``, else a scalar.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> x, w = torch.randn(6, 8), torch.randn(20, 8)
        >>> xt, wt = torch.randn(6, 4), torch.randn(20, 4)
        >>> y = torch.tensor([1, 0, 5, -100, 19, 3])
        >>> fused = ce.linear_distillation_loss(x, w, y, teacher_input=xt, teacher_weight=wt,
        ...                                     divergence="jsd", temperature=2.0)
        >>> torch.allclose(fused, ce.distillation_loss(x @ w.T, xt @ wt.T, y, divergence="jsd",
        ...                                            temperature=2.0))
        True

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        Agarwal et al., "On-Policy Distillation of Language Models" (GKD), 2024.
        Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models", 2024.
    """
    args = functools.partial(_validate, input, linear_weight, target, teacher_input,
                             teacher_weight, teacher_topk_indices, teacher_topk_log_probs,
                             divergence, beta, tail, temperature, alpha, reduction, ignore_index,
                             linear_bias, teacher_bias, memory_budget)
    if _collectives.spans_ranks(group):
        return sharded.linear_distillation_loss(
            args, input, linear_weight, linear_bias, target, teacher_input, teacher_weight,
            teacher_bias, teacher_topk_indices, teacher_topk_log_probs, group)
    a = args(bounds=True)
    if a.topk:
        return engine.topk_loss(input, linear_weight, linear_bias, a.indices,
                                teacher_topk_log_probs, a.target, a.valid, a.options)
    return engine.dense_loss(input, linear_weight, linear_bias, teacher_input, teacher_weight,
                             teacher_bias, a.target, a.valid, a.options)
