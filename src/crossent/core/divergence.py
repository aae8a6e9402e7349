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

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
TAILS = ("bucket", "renormalize")

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


# ------------------------------------------------------------------ distillation
#
# One definition of the per-token divergences on (N, K) log-probabilities (the K classes,
# or the k + 1 buckets of a top-k teacher), with autograd: the loss on given logits and the
# fused heads' top-k path (crossent.distill). The fused dense path (crossent.kernels.
# two_heads) evaluates the same formulas in place, tile by tile, with the weighted scores
# p_v g_v (g_v = dD/dp_v) that give dD/ds_v = p_v (g_v - sum_u p_u g_u) for s = logits / T.


def divergence_kind(divergence: str, beta: float) -> str:
    """``'jsd'`` at ``beta = 0`` is the forward KL and at ``beta = 1`` the reverse KL (the
    generalised JSD's limits as TRL's ``generalized_jsd_loss`` takes them)."""
    if divergence == "jsd" and beta in (0.0, 1.0):
        return "forward_kl" if beta == 0.0 else "reverse_kl"
    return divergence


def _relative_entropy_terms(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """``a (log a - log b)`` elementwise, 0 where ``a = 0`` (``log a = -inf``); the branches
    ``where`` does not select stay finite, so their zero gradients do not become NaN."""
    live = log_a > -torch.inf
    zero = torch.zeros((), dtype=log_a.dtype, device=log_a.device)
    la = torch.where(live, log_a, zero)
    return torch.where(live, la.exp() * (la - torch.where(live, log_b, zero)), zero)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """``log m`` with ``m = beta q + (1 - beta) p`` (0 < beta < 1); ``-inf`` where both are 0."""
    some = (log_p > -torch.inf) | (log_q > -torch.inf)
    zero = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    log_m = torch.logaddexp(torch.where(some, log_p, zero) + math.log1p(-beta),
                            torch.where(some, log_q, zero) + math.log(beta))
    return torch.where(some, log_m, -torch.inf)


def divergence_rows(log_p: torch.Tensor, log_q: torch.Tensor, kind: str,
                    beta: float) -> torch.Tensor:
    """Per-row divergence (summed over the last dimension) of the student ``p`` from the
    teacher ``q``, both given as log-probabilities (``kind`` from :func:`divergence_kind`)::

        forward_kl: KL(q || p) = sum q (log q - log p)
        reverse_kl: KL(p || q) = sum p (log p - log q)
        jsd:        beta KL(q || m) + (1 - beta) KL(p || m),   m = beta q + (1 - beta) p
    """
    if kind == "forward_kl":
        return _relative_entropy_terms(log_q, log_p).sum(-1)
    if kind == "reverse_kl":
        return _relative_entropy_terms(log_p, log_q).sum(-1)
    log_m = _log_mixture(log_p, log_q, beta)
    return (beta * _relative_entropy_terms(log_q, log_m)
            + (1.0 - beta) * _relative_entropy_terms(log_p, log_m)).sum(-1)


def _log1m_total(log_probs: torch.Tensor) -> torch.Tensor:
    """``log(1 - sum exp(log_probs))`` over the last dimension, ``(..., 1)``: the log-mass
    outside the given classes, ``-inf`` when they hold it all (sums above 1 by rounding
    count as 1). Finite gradients where the result is finite."""
    total = torch.logsumexp(log_probs, -1, keepdim=True)
    inside = total < 0
    safe = torch.where(inside, total, torch.full_like(total, -1.0))
    return torch.where(inside, torch.log(-torch.expm1(safe)), -torch.inf)


def topk_divergence_rows(student_scores: torch.Tensor, student_lse: torch.Tensor,
                         teacher_log_probs: torch.Tensor, tail: str, kind: str,
                         beta: float) -> torch.Tensor:
    """Per-row divergence against a top-k teacher, from the student's scores ``s = z / T`` at
    the teacher's ``k`` classes ``(N, k)`` and its log-sum-exp over every class ``(N,)``::

        bucket:      p = (p_1..p_k, 1 - sum p_j),  q = (q_1..q_k, 1 - sum q_j)   (k + 1 entries)
        renormalize: p_j / sum p,  q_j / sum q                                     (k entries)

    with ``p_j = exp(s_j - lse)`` and ``q_j`` the teacher's; then :func:`divergence_rows`.
    Ordinary autograd on ``(N, k + 1)`` tensors: the gradient reaches ``student_scores`` and
    ``student_lse`` (the fused path turns the latter into ``softmax(s)`` over the tiles)."""
    log_q = teacher_log_probs.to(student_scores.dtype)
    if tail == "renormalize":
        log_p = student_scores - torch.logsumexp(student_scores, -1, keepdim=True)
        log_q = log_q - torch.logsumexp(log_q, -1, keepdim=True)
    else:
        log_p = student_scores - student_lse.unsqueeze(-1)
        log_p = torch.cat([log_p, _log1m_total(log_p)], -1)
        log_q = torch.cat([log_q, _log1m_total(log_q)], -1)
    return divergence_rows(log_p, log_q, kind, beta)


def distillation_rows(soft: torch.Tensor, hard: torch.Tensor | None, valid: torch.Tensor | None,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Per-token loss: ``alpha T^2 D + (1 - alpha) CE`` with a target, ``T^2 D`` without;
    0 at tokens not ``valid`` (target ``ignore_index``), which count in neither term."""
    soft = temperature**2 * soft
    rows = soft if hard is None else alpha * soft + (1.0 - alpha) * hard
    if valid is None:
        return rows
    return torch.where(valid, rows, torch.zeros((), dtype=rows.dtype, device=rows.device))


def reduce_distillation(rows: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """'none': the rows; 'sum': their sum; 'batchmean': the sum over the number of counted
    tokens (every token without a target; 0/0 = NaN when all are ignored, as PyTorch's
    cross-entropy)."""
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    count = rows.shape[0] if valid is None else valid.sum().to(rows.dtype)
    return rows.sum() / count


def check_distillation_options(divergence, beta, tail, temperature, alpha, reduction,
                               ignore_index, dtype: torch.dtype) -> tuple:
    """The distillation options of both fronts, checked: ``(kind, beta, tail, temperature,
    alpha, ignore_index)`` with ``kind`` from :func:`divergence_kind`."""
    _checks.check_reduction(reduction, ("none", "sum", "batchmean"))
    _checks.check_choice("divergence", divergence, DIVERGENCES)
    _checks.check_choice("tail", tail, TAILS)
    beta = _checks.check_unit_interval("beta", beta)
    temperature = _checks.check_temperature("temperature", temperature, dtype)
    if temperature > math.sqrt(torch.finfo(dtype).max):  # the soft term is scaled by T^2
        raise _checks.ArgumentError(
            f"temperature must be at most {math.sqrt(torch.finfo(dtype).max):.3g} (its square "
            f"scales the soft term and must be finite in {dtype}), got {temperature}")
    alpha = _checks.check_unit_interval("alpha", alpha)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    return divergence_kind(divergence, beta), beta, tail, temperature, alpha, ignore_index


def check_teacher_choice(dense_name: str, dense, indices, log_probs) -> bool:
    """Exactly one teacher: ``dense`` (``dense_name``), or the top-k pair of
    ``teacher_topk_indices`` and ``teacher_topk_log_probs``. Returns whether it is top-k."""
    topk = indices is not None or log_probs is not None
    if topk and (indices is None or log_probs is None):
        raise _checks.ArgumentError(
            "teacher_topk_indices and teacher_topk_log_probs must be given together, got "
            f"{'teacher_topk_indices' if indices is not None else 'teacher_topk_log_probs'} alone")
    if topk == (dense is not None):
        raise _checks.ArgumentError(
            f"give exactly one teacher: {dense_name}, or teacher_topk_indices with "
            f"teacher_topk_log_probs; got {'both' if topk else 'neither'}")
    return topk


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    *,
    teacher_topk_indices: torch.Tensor | None = None,
    teacher_topk_log_probs: torch.Tensor | None = None,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    tail: str = "bucket",
    temperature: float = 1.0,
    alpha: float = 0.5,
    reduction: str = "batchmean",
    ignore_index: int = -100,
) -> torch.Tensor:
    """Knowledge distillation: a divergence to a teacher at a temperature, plus optional hard-label CE.

    With ``p = softmax(student / T)`` and ``q = softmax(teacher / T)`` per token (no
    gradient to the teacher)::

        forward_kl: D = KL(q || p)                         (Hinton et al.)
        reverse_kl: D = KL(p || q)                         (MiniLLM)
        jsd:        D = beta KL(q || m) + (1 - beta) KL(p || m),  m = beta q + (1 - beta) p
                    (GKD; beta = 0 is the forward KL, beta = 1 the reverse KL, as TRL)
        loss_i = alpha T^2 D_i + (1 - alpha) cross_entropy(student_i, target_i)  (with target)
        loss_i = T^2 D_i                                                          (without)

    A top-k teacher gives per token ``k`` class indices (none twice) and their
    log-probabilities, taken as given (``temperature`` then divides the student's logits
    alone). ``tail='bucket'``: both distributions over the ``k`` classes plus one bucket
    with the rest of each one's mass (``1 - sum``, as TRL's server distillation);
    ``tail='renormalize'``: both restricted to the ``k`` classes and renormalised.

    Tokens whose target is ``ignore_index`` count in neither term (0 for ``'none'``);
    ``'batchmean'`` divides the sum by the number of counted tokens (every token without a
    target), ``'sum'`` sums. The dense forward KL runs on the cross-entropy core (no
    ``N x C`` log-softmax kept for the backward); the other divergences through autograd
    on the log-probabilities; a top-k teacher needs the student's log-sum-exp and its
    logits at the ``k`` classes only.

    Args:
        student_logits: the student's logits (gets the gradient).
        teacher_logits: a dense teacher's logits (detached), or None with a top-k teacher.
        target: optional ``(N,)`` class indices for the hard term.
        teacher_topk_indices: ``(N, k)`` integer class indices, distinct within a row.
        teacher_topk_log_probs: ``(N, k)`` their log-probabilities (``<= 0``, summing to at
            most 1; ``-inf`` is probability 0).
        divergence: ``'forward_kl'`` | ``'reverse_kl'`` | ``'jsd'``.
        beta: the JSD's mixture weight in ``[0, 1]`` (only for ``'jsd'``).
        tail: ``'bucket'`` | ``'renormalize'`` (only for a top-k teacher).
        temperature: ``T > 0``.
        alpha: weight of the soft term in ``[0, 1]`` (used only with ``target``).
        reduction: ``'none'`` | ``'sum'`` | ``'batchmean'``.
        ignore_index: target value of tokens that count in neither term.
    Shape:
        logits ``(N, C)``, target ``(N,)``, top-k ``(N, k)`` with ``1 <= k <= C``; the
        output ``(N,)`` for ``'none'``, a scalar otherwise.
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
        >>> log_q, idx = torch.log_softmax(teacher, 1).topk(2, 1)   # a top-2 teacher
        >>> ce.distillation_loss(student, teacher_topk_indices=idx, teacher_topk_log_probs=log_q,
        ...                      divergence="jsd", tail="renormalize")
        tensor(0.0666)

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
        Gu et al., "MiniLLM: Knowledge Distillation of Large Language Models", 2024.
        Agarwal et al., "On-Policy Distillation of Language Models: Learning from
        Self-Generated Mistakes" (GKD), 2024.
    """
    _checks.check_floating("student_logits", student_logits)
    acc = accumulation_dtype(student_logits.dtype)
    kind, beta, tail, temperature, alpha, ignore_index = check_distillation_options(
        divergence, beta, tail, temperature, alpha, reduction, ignore_index, acc)
    topk = check_teacher_choice("teacher_logits", teacher_logits, teacher_topk_indices,
                                teacher_topk_log_probs)
    if student_logits.dim() != 2:
        raise _checks.ArgumentError(
            f"student_logits must be (N, C), got {list(student_logits.shape)}")
    n, num_classes = student_logits.shape
    if topk:
        index = _checks.check_topk_teacher(teacher_topk_indices, teacher_topk_log_probs, n,
                                           num_classes, student_logits.device)
    else:
        _checks.check_floating("teacher_logits", teacher_logits)
        if teacher_logits.shape != student_logits.shape:
            raise _checks.ArgumentError(
                f"student_logits and teacher_logits must both be (N, C); got "
                f"{list(student_logits.shape)} and {list(teacher_logits.shape)}")
    valid = hard = None
    if target is not None:
        hard = cross_entropy(student_logits, target, reduction="none", ignore_index=ignore_index)
        valid = target != ignore_index
    scores = student_logits.to(acc) / temperature
    if topk:
        soft = topk_divergence_rows(scores.gather(1, index), torch.logsumexp(scores, 1),
                                    teacher_topk_log_probs.detach(), tail, kind, beta)
    elif kind == "forward_kl":
        log_q = torch.log_softmax(teacher_logits.detach().to(acc) / temperature, dim=1)
        # KL(q || p) = cross-entropy(p; q) - H(q); 0 log 0 = 0 at a masked teacher class
        teacher_entropy = -_relative_entropy_terms(log_q, torch.zeros_like(log_q)).sum(1)
        cross = cross_entropy(student_logits, log_q.exp(), reduction="none",
                              logit_scale=1.0 / temperature)
        soft = cross - teacher_entropy
    else:
        log_q = torch.log_softmax(teacher_logits.detach().to(acc) / temperature, dim=1)
        soft = divergence_rows(torch.log_softmax(scores, 1), log_q, kind, beta)
    rows = distillation_rows(soft, hard, valid, temperature, alpha)
    return reduce_distillation(rows, valid, reduction)
