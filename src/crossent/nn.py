"""``nn.Module`` wrappers with ``torch.nn``'s constructor arguments.

Each module stores its options and calls the functional form; class weights and
``pos_weight`` are registered as buffers (they move with ``.to(device)`` and are saved in
the state dict), as in ``torch.nn``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import _reduction as _legacy

from . import losses as F

__all__ = [
    "CrossEntropyLoss",
    "NLLLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "KLDivLoss",
    "JSDivLoss",
    "FocalLoss",
    "Poly1CrossEntropyLoss",
    "DistillationLoss",
]


class _Loss(nn.Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        if size_average is not None or reduce is not None:
            reduction = _legacy.legacy_get_string(size_average, reduce)
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class _WeightedLoss(_Loss):
    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.weight: torch.Tensor | None


class CrossEntropyLoss(_WeightedLoss):
    """:func:`crossent.cross_entropy` as a module; ``torch.nn.CrossEntropyLoss``'s
    arguments plus ``z_loss``, ``softcap``, ``logit_scale``, ``all_ignored`` and ``group``
    (classes sharded across the ranks of a process group, see :mod:`crossent.class_parallel`)."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0, *, z_loss: float = 0.0,
                 softcap: float | None = None, logit_scale: float = 1.0,
                 all_ignored: str = "nan", group=None) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.group = group
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.logit_scale = logit_scale
        self.all_ignored = all_ignored

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            input, target, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
            softcap=self.softcap, logit_scale=self.logit_scale, all_ignored=self.all_ignored,
            group=self.group,
        )


class NLLLoss(_WeightedLoss):
    """:func:`crossent.nll_loss` as a module (``torch.nn.NLLLoss``'s arguments)."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """:func:`crossent.binary_cross_entropy` as a module (``torch.nn.BCELoss``)."""

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """:func:`crossent.binary_cross_entropy_with_logits` as a module
    (``torch.nn.BCEWithLogitsLoss``)."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean",
                 pos_weight=None) -> None:
        super().__init__(size_average, reduce, reduction)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction, pos_weight=self.pos_weight
        )


class KLDivLoss(_Loss):
    """:func:`crossent.kl_div` as a module (``torch.nn.KLDivLoss``)."""

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class JSDivLoss(_Loss):
    """:func:`crossent.js_div` as a module."""

    def __init__(self, reduction: str = "batchmean", log_target: bool = False) -> None:
        super().__init__(reduction=reduction)
        self.log_target = log_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.js_div(input, target, reduction=self.reduction, log_target=self.log_target)


class FocalLoss(_WeightedLoss):
    """Focal loss as a module: ``form='softmax'`` (:func:`crossent.focal_loss`, class
    indices) or ``form='sigmoid'`` (:func:`crossent.sigmoid_focal_loss`, binary labels)."""

    def __init__(self, gamma: float = 2.0, alpha=None, weight=None, ignore_index: int = -100,
                 reduction: str = "mean", form: str = "softmax") -> None:
        super().__init__(weight, reduction=reduction)
        if form not in ("softmax", "sigmoid"):
            from .core.checks import ArgumentError

            raise ArgumentError(f"form must be 'softmax' or 'sigmoid', got {form!r}")
        self.gamma = gamma
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.form = form

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.form == "sigmoid":
            alpha = 0.25 if self.alpha is None else self.alpha
            return F.sigmoid_focal_loss(input, target, alpha=alpha, gamma=self.gamma,
                                        reduction=self.reduction)
        return F.focal_loss(input, target, gamma=self.gamma, alpha=self.alpha, weight=self.weight,
                            ignore_index=self.ignore_index, reduction=self.reduction)


class Poly1CrossEntropyLoss(_WeightedLoss):
    """:func:`crossent.poly1_cross_entropy` as a module."""

    def __init__(self, epsilon: float = 1.0, weight=None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0) -> None:
        super().__init__(weight, reduction=reduction)
        self.epsilon = epsilon
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.poly1_cross_entropy(input, target, epsilon=self.epsilon, weight=self.weight,
                                     ignore_index=self.ignore_index, reduction=self.reduction,
                                     label_smoothing=self.label_smoothing)


class DistillationLoss(_Loss):
    """:func:`crossent.distillation_loss` as a module: ``forward(student, teacher, target=None)``."""

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5,
                 reduction: str = "batchmean", ignore_index: int = -100) -> None:
        super().__init__(reduction=reduction)
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = ignore_index

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                target: torch.Tensor | None = None) -> torch.Tensor:
        return F.distillation_loss(student_logits, teacher_logits, target,
                                   temperature=self.temperature, alpha=self.alpha,
                                   reduction=self.reduction, ignore_index=self.ignore_index)
