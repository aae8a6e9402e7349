"""Reductions of per-row losses: ``none`` / ``sum`` / ``mean``, in one place.

PyTorch's 'mean' for class-index cross-entropy and NLL is a *weighted* mean::

    loss = sum_i loss_i / sum_i w[y_i] * [y_i != ignore_index]

(the plain count of non-ignored rows when there is no class weight), and the label
smoothing term shares that denominator. For probability targets the denominator is the
number of rows. Every crossent loss reduces through :func:`reduce_rows`, which takes the
denominator from its caller so that this rule lives with the target that defines it.

When every row is ignored the denominator is 0: PyTorch returns ``0/0 = NaN``. crossent
keeps that default (``all_ignored="nan"``) and offers ``all_ignored="zero"``, which
returns 0 (and a zero gradient) instead. Both avoid a host synchronisation.
"""

from __future__ import annotations

import torch

from .checks import check_choice, check_reduction

ALL_IGNORED_CHOICES = ("nan", "zero")


def reduce_rows(
    row_loss: torch.Tensor,
    reduction: str,
    denominator: torch.Tensor | float | None = None,
    *,
    all_ignored: str = "nan",
) -> torch.Tensor:
    """Reduce per-row losses.

    Args:
        row_loss: per-row losses, any shape (already zero on ignored rows).
        reduction: ``'none'`` returns ``row_loss``; ``'sum'`` its sum; ``'mean'`` its sum
            divided by ``denominator`` (default: the number of elements).
        denominator: the 'mean' denominator, a 0-d tensor or a number.
        all_ignored: ``'nan'`` (PyTorch: 0/0) or ``'zero'`` for a zero denominator.
    """
    check_reduction(reduction)
    check_choice("all_ignored", all_ignored, ALL_IGNORED_CHOICES)
    if reduction == "none":
        return row_loss
    total = row_loss.sum()
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = row_loss.numel()
    if not isinstance(denominator, torch.Tensor):
        denominator = torch.tensor(float(denominator), dtype=total.dtype, device=total.device)
    denominator = denominator.to(total.dtype)
    if all_ignored == "zero":
        return total * mean_scale(denominator, all_ignored)
    return total / denominator


def mean_scale(denominator: torch.Tensor, all_ignored: str = "nan") -> torch.Tensor:
    """``1 / denominator``, the factor 'mean' applies to every row (and to its gradient);
    with ``all_ignored='zero'``, 0 where the denominator is 0. No host synchronisation."""
    if all_ignored == "zero":
        empty = denominator == 0
        return torch.where(empty, torch.zeros_like(denominator),
                           1.0 / torch.where(empty, torch.ones_like(denominator), denominator))
    return 1.0 / denominator


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half inputs and float32, float64 for float64: never accumulate narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def loss_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """The dtype a loss is returned in: float32 for half inputs (float16, bfloat16), else
    the input's own dtype (float32, float64). The one output rule of every fused loss."""
    if input_dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return input_dtype
