"""Variants of softmax cross-entropy that reshape the per-row loss: focal and poly-1.

Both are functions of ``log p_t`` (the log-probability of the target class) computed on
the shared core, so they inherit its lean backward, ``ignore_index`` and class weights:

- focal (Lin et al., "Focal Loss for Dense Object Detection", 2017)::

      loss_i = -alpha_{y_i} * (1 - p_t)^gamma * log p_t

- poly-1 (Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification
  Loss Functions", 2022)::

      loss_i = CE_i + epsilon * (1 - p_t),   p_t = sum_c t_c p_c

Class weights ``w`` multiply each row's loss by ``w[y_i]`` and 'mean' divides by
``sum_i w[y_i]`` over non-ignored rows, exactly like ``F.cross_entropy``.
"""

from __future__ import annotations

import torch

from . import checks as _checks
from .binary import focal_modulation
from .multiclass import _check_input, _index_target
from .reduction import reduce_rows
from .statistics import softmax_statistics, to_rows
from .stats import cross_entropy_rows
from .targets import ClassIndexTarget

__all__ = ["focal_loss", "poly1_cross_entropy"]


def _zero(like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=like.dtype, device=like.device)


def focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float | torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax focal loss on logits and class indices.

    With ``p_t`` the softmax probability of the target class::

        loss_i = -alpha_{y_i} * w[y_i] * (1 - p_t)^gamma * log p_t

    'mean' divides by ``sum_i w[y_i]`` over non-ignored rows, as ``F.cross_entropy``.
    ``gamma = 0`` with no alpha is cross-entropy. (For the sigmoid form see
    :func:`crossent.sigmoid_focal_loss`.)

    Args:
        input: logits.
        target: class indices (int64/uint8).
        gamma: focusing exponent, ``>= 0``.
        alpha: None (no balancing), a float applied to every class, or a ``(C,)`` tensor
            indexed by the target.
        weight: optional ``(C,)`` class weights ``w``.
        ignore_index: target value whose rows contribute nothing.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
    Shape:
        input ``(N, C[, d...])`` (or ``(C,)``), target ``(N[, d...])`` (or ``()``); the
        output target-shaped for ``'none'``, a scalar otherwise.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.3, 0.1, -0.2]])
        >>> y = torch.tensor([0, 1])
        >>> torch.allclose(ce.focal_loss(x, y, gamma=0.0), torch.nn.functional.cross_entropy(x, y))
        True
        >>> p_t = x.softmax(1)[torch.arange(2), y]
        >>> torch.allclose(ce.focal_loss(x, y, reduction="none"), -(1 - p_t) ** 2 * p_t.log())
        True

    References:
        Lin et al., "Focal Loss for Dense Object Detection", 2017.
    """
    reduction = _checks.check_reduction(reduction)
    gamma = _checks.check_non_negative("gamma", gamma)
    _check_input(input)
    spec = _index_target(input, target, weight, ignore_index, 0.0)
    # The statistics use the unweighted one-hot target, so dot - lse = log p_t; the class
    # weight multiplies the row afterwards (spec.target_weight).
    plain = ClassIndexTarget.build(
        target, spec.num_classes, weight=None, ignore_index=ignore_index, label_smoothing=0.0,
        dtype=spec.mass.dtype,
    )
    stats = softmax_statistics(input, plain)
    log_pt = stats.dot_shifted - stats.lse_shifted  # (z_y - m) - (lse - m): no cancellation
    # 1 - p_t = -expm1(log p_t): exact near p_t = 1; the factor's gradient is finite
    # where it rounds to 0 (focal_modulation)
    modulating = focal_modulation((-torch.expm1(log_pt)).clamp_min(0.0), gamma) if gamma else 1.0
    row_loss = -modulating * log_pt * spec.target_weight
    if alpha is not None:
        if isinstance(alpha, torch.Tensor):
            num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
            if alpha.shape != (num_classes,):
                raise _checks.ArgumentError(
                    f"alpha must be a float or a ({num_classes},) tensor, got shape {list(alpha.shape)}"
                )
            row_loss = row_loss * alpha.to(row_loss.dtype).gather(0, spec.index)
        else:
            row_loss = row_loss * _checks.check_finite("alpha", alpha)
    row_loss = torch.where(spec.valid, row_loss, _zero(row_loss)).reshape(target.shape)
    return reduce_rows(row_loss, reduction, spec.mean_denominator())


def poly1_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    epsilon: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Poly-1 cross-entropy on logits and class indices.

    ::

        loss_i = CE_i + epsilon * w[y_i] * (1 - p_t)

    ``CE_i`` is ``F.cross_entropy``'s per-row term (weights, smoothing); ``p_t`` uses the
    smoothed one-hot target, ``p_t = (1 - eps_ls) p_{y_i} + eps_ls / C``, and the poly
    term is scaled by ``w[y_i]`` like the rest of the row.

    Args:
        input: logits.
        target: class indices (int64/uint8).
        epsilon: coefficient of the poly-1 term (0: cross-entropy), any finite number
            (the paper uses -1 to 2).
        weight: optional ``(C,)`` class weights ``w``.
        ignore_index: target value whose rows contribute nothing.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        label_smoothing: ``eps_ls`` in ``[0, 1]``.
    Shape:
        input ``(N, C[, d...])`` (or ``(C,)``), target ``(N[, d...])`` (or ``()``); the
        output target-shaped for ``'none'``, a scalar otherwise.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.3, 0.1, -0.2]])
        >>> y = torch.tensor([0, 1])
        >>> p_t = x.softmax(1)[torch.arange(2), y]
        >>> torch.allclose(ce.poly1_cross_entropy(x, y, reduction="none"),
        ...                F.cross_entropy(x, y, reduction="none") + 1.0 * (1 - p_t))
        True

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
        Functions", 2022.
    """
    reduction = _checks.check_reduction(reduction)
    epsilon = _checks.check_finite("epsilon", epsilon)
    label_smoothing = _checks.check_unit_interval("label_smoothing", label_smoothing)
    _check_input(input)
    spec = _index_target(input, target, weight, ignore_index, label_smoothing)
    stats = softmax_statistics(input, spec)
    ce_row = cross_entropy_rows(stats.lse_shifted, stats.dot_shifted, stats.mass)
    rows = to_rows(input)
    picked = spec.scores(rows)[0].to(stats.mass.dtype)
    p_y = torch.exp((picked - stats.shift) - stats.lse_shifted)
    num_classes = rows.shape[1]
    p_t = (1.0 - label_smoothing) * p_y + label_smoothing / num_classes
    row_loss = ce_row + epsilon * (1.0 - p_t) * spec.target_weight
    row_loss = torch.where(spec.valid, row_loss, _zero(row_loss)).reshape(target.shape)
    return reduce_rows(row_loss, reduction, spec.mean_denominator())
