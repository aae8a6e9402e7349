"""Divergences between distributions: KL (as ``F.kl_div``), Jensen-Shannon, distillation.

Conventions follow ``F.kl_div``: ``input`` holds log-probabilities of the model ``p``;
``target`` holds probabilities ``q`` (log-probabilities with ``log_target=True``)::

    kl_div(input, target) = sum q (log q - input) = KL(q || p)     (0 log 0 = 0)

'batchmean' divides the sum by the batch size (the mathematical KL per example); 'mean'
divides by the number of elements, as PyTorch does.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.nn import _reduction as _legacy

from . import checks as _checks
from .multiclass import cross_entropy
from .reduction import accumulation_dtype, reduce_rows

__all__ = ["kl_div", "js_div", "distillation_loss"]

_KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


def _batchmean_or(reduction: str, loss: torch.Tensor, batch: int) -> torch.Tensor:
    if reduction == "batchmean":
        total = loss.sum()
        return total / batch if loss.dim() else total
    return reduce_rows(loss, reduction)


def kl_div(
    input: torch.Tensor,
    target: torch.Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> torch.Tensor:
    """Kullback-Leibler divergence ``KL(target || exp(input))``; as ``F.kl_div``.

    ::

        loss = target * (log(target) - input)            (0 log 0 = 0)
        loss = exp(target) * (target - input)            (log_target=True)

    'batchmean' divides the sum by the batch size (the KL per example); 'mean' divides by
    the number of elements and warns, as PyTorch does.

    Args:
        input: log-probabilities of the model ``p``.
        target: probabilities ``q`` (log-probabilities with ``log_target=True``).
        size_average, reduce: PyTorch's deprecated reduction flags.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` | ``'batchmean'``.
        log_target: whether ``target`` holds log-probabilities.
    Shape:
        input and target broadcast (as in PyTorch), any shape; the output is a scalar, or
        the broadcast shape for ``'none'``.
    Returns:
        The divergence (float32 for half inputs).
    Example:
        >>> import torch, crossent as ce
        >>> log_p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
        >>> q = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
        >>> round(ce.kl_div(log_p, q, reduction="batchmean").item(), 4)
        0.0652
        >>> torch.allclose(ce.kl_div(log_p, q, reduction="batchmean"),
        ...                torch.nn.functional.kl_div(log_p, q, reduction="batchmean"))
        True

    References:
        Kullback & Leibler, "On Information and Sufficiency", 1951.
    """
    if size_average is not None or reduce is not None:
        reduction = _legacy.legacy_get_string(size_average, reduce)
    _checks.check_reduction(reduction, _KL_REDUCTIONS)
    _checks.check_floating("input", input)
    _checks.check_floating("target", target)
    # Dynamo cannot trace warnings.warn (a graph break): compiled code skips the warning.
    if reduction == "mean" and not torch.compiler.is_compiling():
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support "
            "size. 'batchmean' divides only by the batch size, and aligns with the KL div math "
            "definition.",
            UserWarning,
            stacklevel=2,
        )
    acc = accumulation_dtype(torch.promote_types(input.dtype, target.dtype))
    x, t = input.to(acc), target.to(acc)
    if log_target:
        loss = torch.exp(t) * (t - x)
    else:
        loss = torch.xlogy(t, t) - t * x
    return _batchmean_or(reduction, loss, input.shape[0] if input.dim() else 1)


def js_div(
    input: torch.Tensor,
    target: torch.Tensor,
    reduction: str = "batchmean",
    log_target: bool = False,
) -> torch.Tensor:
    """Jensen-Shannon divergence between ``p = exp(input)`` and the target ``q``.

    ::

        JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2,    m = (p + q) / 2

    Elementwise terms then reduced like :func:`kl_div` (summed over the last dimension
    for 'none'). Symmetric, finite, at most ``log 2`` per distribution (Lin 1991).

    Args:
        input: log-probabilities of ``p``.
        target: probabilities ``q`` (log-probabilities with ``log_target=True``).
        reduction: ``'none'`` | ``'mean'`` | ``'sum'`` | ``'batchmean'`` (the default).
        log_target: whether ``target`` holds log-probabilities.
    Shape:
        input and target ``(..., C)``, the distributions along the last dimension; the
        output ``(...)`` for ``'none'``, a scalar otherwise.
    Returns:
        The divergence in nats (float32 for half inputs).
    Example:
        >>> import torch, crossent as ce
        >>> log_p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
        >>> q = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
        >>> ce.js_div(log_p, q, reduction="none")
        tensor([0.0064, 0.0242])
        >>> ce.js_div(torch.tensor([[0.0, -float("inf")]]), torch.tensor([[0.0, 1.0]]))  # log 2
        tensor(0.6931)

    References:
        Lin, "Divergence Measures Based on the Shannon Entropy", 1991.
    """
    _checks.check_reduction(reduction, _KL_REDUCTIONS)
    _checks.check_floating("input", input)
    _checks.check_floating("target", target)
    acc = accumulation_dtype(torch.promote_types(input.dtype, target.dtype))
    # Terms p log(p / m) with 0 log 0 = 0, and their exact gradients where p or q is 0
    # (disjoint supports): every branch that where() does not select is finite, as its
    # gradient is multiplied by 0, and 0 * inf is NaN. d/dlog p of p log(p / m) is
    # p log(p / m) -> 0 as p -> 0; d/dq of q log(q / m) is log(q / m), -inf as q -> 0
    # while p > 0 (the one-sided derivative), log 2 where p = 0 (then the term is q log 2).
    zero = torch.zeros((), dtype=acc, device=input.device)
    log_p = input.to(acc)
    live_p = log_p > -torch.inf
    p = torch.exp(log_p)
    if log_target:
        log_q = target.to(acc)
        live_q = log_q > -torch.inf
        q = torch.exp(log_q)
    else:
        q = target.to(acc)
        live_q = q > 0
        log_q = torch.where(live_q, torch.log(torch.where(live_q, q, 1.0)), -torch.inf)
    some = live_p | live_q  # m > 0: log m is finite, logaddexp's gradient too
    log_m = torch.logaddexp(torch.where(some, log_p, zero), torch.where(some, log_q, zero)) \
        - math.log(2.0)
    term_p = torch.where(live_p, p * (torch.where(live_p, log_p, zero) - log_m), zero)
    if log_target:
        term_q = torch.where(live_q, q * (torch.where(live_q, log_q, zero) - log_m), zero)
    else:  # q log q as -entr(q): its gradient log q + 1 is -inf at q = 0
        q_p = torch.where(live_p, q, 1.0)  # the unselected branch stays finite
        term_q = torch.where(live_p, -torch.special.entr(q_p) - q_p * log_m, q * math.log(2.0))
    loss = 0.5 * (term_p + term_q)
    if reduction == "none":
        return loss.sum(-1) if loss.dim() else loss
    return _batchmean_or(reduction, loss, input.shape[0] if input.dim() > 1 else 1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
) -> torch.Tensor:
    """Knowledge distillation: temperature-softened KL to a teacher, plus optional hard-label CE.

    With ``q = softmax(teacher / T)`` (no gradient to the teacher) and
    ``p = softmax(student / T)``::

        soft_i = T^2 * KL(q_i || p_i)                  (T^2 keeps gradient scale)
        loss   = alpha * soft + (1 - alpha) * cross_entropy(student, target)

    ``temperature``: a finite number > 0; ``alpha`` in ``[0, 1]``.
    Without ``target`` the loss is ``soft`` alone. Shapes: logits ``(N, C)``; target
    ``(N,)`` class indices. 'batchmean' averages over rows (the hard term uses
    cross-entropy's 'mean'), 'sum' sums, 'none' returns per-row losses.
    The soft term runs on the cross-entropy core (``logit_scale = 1/T`` and a probability
    target), so no ``N x C`` log-softmax is kept for the backward.

    Args:
        student_logits: the student's logits (gets the gradient).
        teacher_logits: the teacher's logits (detached).
        target: optional ``(N,)`` class indices for the hard term.
        temperature: ``T > 0``.
        alpha: weight of the soft term in ``[0, 1]`` (used only with ``target``).
        reduction: ``'none'`` | ``'sum'`` | ``'batchmean'``.
        ignore_index: target value whose rows the hard term ignores.
    Shape:
        logits ``(N, C)``, target ``(N,)``; the output ``(N,)`` for ``'none'``, a scalar
        otherwise.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> student, teacher = torch.randn(4, 5), torch.randn(4, 5)
        >>> soft = 2.0**2 * F.kl_div(F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1),
        ...                          reduction="batchmean")
        >>> torch.allclose(ce.distillation_loss(student, teacher, temperature=2.0), soft)
        True
        >>> y = torch.tensor([0, 3, 1, 4])
        >>> torch.allclose(ce.distillation_loss(student, teacher, y, temperature=2.0, alpha=0.7),
        ...                0.7 * soft + 0.3 * F.cross_entropy(student, y))
        True

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """
    _checks.check_reduction(reduction, ("none", "sum", "batchmean"))
    _checks.check_floating("student_logits", student_logits)
    _checks.check_floating("teacher_logits", teacher_logits)
    acc = accumulation_dtype(student_logits.dtype)
    temperature = _checks.check_temperature("temperature", temperature, acc)
    if temperature > math.sqrt(torch.finfo(acc).max):  # the soft term is scaled by T^2
        raise _checks.ArgumentError(
            f"temperature must be at most {math.sqrt(torch.finfo(acc).max):.3g} (its square "
            f"scales the soft term and must be finite in {acc}), got {temperature}")
    alpha = _checks.check_unit_interval("alpha", alpha)
    if teacher_logits.shape != student_logits.shape or student_logits.dim() != 2:
        raise _checks.ArgumentError(
            f"student_logits and teacher_logits must both be (N, C); got "
            f"{list(student_logits.shape)} and {list(teacher_logits.shape)}"
        )
    log_q = torch.log_softmax(teacher_logits.detach().to(acc) / temperature, dim=1)
    q = log_q.exp()
    # 0 log 0 = 0: a teacher logit of -inf (a masked class) has q = 0 and log q = -inf
    teacher_entropy = -torch.where(q > 0, q * log_q, torch.zeros((), dtype=acc,
                                                                  device=q.device)).sum(1)
    cross = cross_entropy(student_logits, q, reduction="none", logit_scale=1.0 / temperature)
    soft = temperature**2 * (cross - teacher_entropy)
    if target is None:
        per_row = soft
        hard = None
    else:
        hard = cross_entropy(student_logits, target, reduction="none", ignore_index=ignore_index)
        per_row = alpha * soft + (1.0 - alpha) * hard
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if hard is None:
        return soft.mean()
    valid = (target != ignore_index).sum().to(acc)
    return alpha * soft.mean() + (1.0 - alpha) * hard.sum() / valid
