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
    """:func:`crossent.cross_entropy` as a module, with ``torch.nn.CrossEntropyLoss``'s arguments.

    ::

        loss_i = sum_c t_ic * (logsumexp(z_i) - z_ic) + z_loss * logsumexp(z_i)^2

    ``torch.nn.CrossEntropyLoss``'s arguments plus ``z_loss``, ``softcap``,
    ``logit_scale``, ``all_ignored`` and ``group`` (classes sharded across the ranks of a
    process group, see :mod:`crossent.core.sharded`). ``weight`` is a buffer.

    Args:
        weight, size_average, ignore_index, reduce, reduction, label_smoothing, z_loss,
            softcap, logit_scale, all_ignored, group: as :func:`crossent.cross_entropy`.
    Shape:
        input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; target class indices or
        probabilities, as :func:`crossent.cross_entropy`.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
        >>> y = torch.tensor([1, 2])
        >>> loss_fn = ce.CrossEntropyLoss(label_smoothing=0.1)
        >>> torch.allclose(loss_fn(x, y), torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, y))
        True

    References:
        PyTorch, ``torch.nn.CrossEntropyLoss``.
    """

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
    """:func:`crossent.nll_loss` as a module (``torch.nn.NLLLoss``'s arguments).

    ::

        loss_i = -w[y_i] * input[i, y_i]

    Args:
        weight, size_average, ignore_index, reduce, reduction: as
            :func:`crossent.nll_loss`.
    Shape:
        as :func:`crossent.nll_loss`.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
        >>> y = torch.tensor([1, 2])
        >>> w = torch.tensor([1.0, 2.0, 0.5])
        >>> torch.allclose(ce.NLLLoss(weight=w)(x.log_softmax(1), y),
        ...                torch.nn.NLLLoss(weight=w)(x.log_softmax(1), y))
        True

    References:
        PyTorch, ``torch.nn.NLLLoss``.
    """

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean") -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.ignore_index = ignore_index

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.nll_loss(input, target, weight=self.weight, ignore_index=self.ignore_index,
                          reduction=self.reduction)


class BCELoss(_WeightedLoss):
    """:func:`crossent.binary_cross_entropy` as a module (``torch.nn.BCELoss``).

    ::

        loss = -w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))

    Args:
        weight, size_average, reduce, reduction: as :func:`crossent.binary_cross_entropy`.
    Shape:
        input and target identical, any shape.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> p, y = torch.tensor([0.9, 0.2, 0.6]), torch.tensor([1.0, 0.0, 1.0])
        >>> torch.allclose(ce.BCELoss()(p, y), torch.nn.BCELoss()(p, y))
        True

    References:
        PyTorch, ``torch.nn.BCELoss``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(input, target, weight=self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """:func:`crossent.binary_cross_entropy_with_logits` as a module (``torch.nn.BCEWithLogitsLoss``).

    ::

        loss = -w * (pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))

    Args:
        weight, size_average, reduce, reduction, pos_weight: as
            :func:`crossent.binary_cross_entropy_with_logits` (``weight`` and
            ``pos_weight`` are buffers).
    Shape:
        input and target the same size, any shape.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> pw = torch.tensor([2.0, 1.0])
        >>> torch.allclose(ce.BCEWithLogitsLoss(pos_weight=pw)(x, y),
        ...                torch.nn.BCEWithLogitsLoss(pos_weight=pw)(x, y))
        True

    References:
        PyTorch, ``torch.nn.BCEWithLogitsLoss``.
    """

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
    """:func:`crossent.kl_div` as a module (``torch.nn.KLDivLoss``).

    ::

        loss = target * (log(target) - input)

    Args:
        size_average, reduce, reduction, log_target: as :func:`crossent.kl_div`.
    Shape:
        input and target broadcast, any shape.
    Returns:
        ``forward(input, target)`` returns the divergence.
    Example:
        >>> import torch, crossent as ce
        >>> log_p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
        >>> q = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
        >>> torch.allclose(ce.KLDivLoss(reduction="batchmean")(log_p, q),
        ...                torch.nn.KLDivLoss(reduction="batchmean")(log_p, q))
        True

    References:
        Kullback & Leibler, "On Information and Sufficiency", 1951.
    """

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean",
                 log_target: bool = False) -> None:
        super().__init__(size_average, reduce, reduction)
        self.log_target = log_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class JSDivLoss(_Loss):
    """:func:`crossent.js_div` as a module.

    ::

        JS(p, q) = KL(p || m) / 2 + KL(q || m) / 2,    m = (p + q) / 2

    Args:
        reduction, log_target: as :func:`crossent.js_div`.
    Shape:
        input and target ``(..., C)``.
    Returns:
        ``forward(input, target)`` returns the divergence.
    Example:
        >>> import torch, crossent as ce
        >>> log_p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]).log()
        >>> q = torch.tensor([[0.4, 0.4, 0.2], [0.2, 0.2, 0.6]])
        >>> ce.JSDivLoss(reduction="none")(log_p, q)
        tensor([0.0064, 0.0242])

    References:
        Lin, "Divergence Measures Based on the Shannon Entropy", 1991.
    """

    def __init__(self, reduction: str = "batchmean", log_target: bool = False) -> None:
        super().__init__(reduction=reduction)
        self.log_target = log_target

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.js_div(input, target, reduction=self.reduction, log_target=self.log_target)


class FocalLoss(_WeightedLoss):
    """Focal loss as a module, softmax (class indices) or sigmoid (binary labels).

    ::

        loss_i = -alpha_{y_i} * (1 - p_t)^gamma * log p_t

    ``form='softmax'`` is :func:`crossent.focal_loss`, ``form='sigmoid'``
    :func:`crossent.sigmoid_focal_loss` (with ``alpha`` 0.25 when None).

    Args:
        gamma, alpha, weight, ignore_index, reduction: as :func:`crossent.focal_loss`
            (the sigmoid form uses ``gamma``, ``alpha`` and ``reduction``).
        form: ``'softmax'`` or ``'sigmoid'``.
    Shape:
        as the chosen function.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.3, 0.1, -0.2]])
        >>> y = torch.tensor([0, 1])
        >>> torch.allclose(ce.FocalLoss(gamma=0.0)(x, y), torch.nn.functional.cross_entropy(x, y))
        True

    References:
        Lin et al., "Focal Loss for Dense Object Detection", 2017.
    """

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
    """:func:`crossent.poly1_cross_entropy` as a module.

    ::

        loss_i = CE_i + epsilon * w[y_i] * (1 - p_t)

    Args:
        epsilon, weight, ignore_index, reduction, label_smoothing: as
            :func:`crossent.poly1_cross_entropy`.
    Shape:
        as :func:`crossent.poly1_cross_entropy`.
    Returns:
        ``forward(input, target)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[3.0, 0.0, 0.0], [0.3, 0.1, -0.2]])
        >>> y = torch.tensor([0, 1])
        >>> torch.allclose(ce.Poly1CrossEntropyLoss(epsilon=0.0)(x, y),
        ...                torch.nn.functional.cross_entropy(x, y))
        True

    References:
        Leng et al., "PolyLoss: A Polynomial Expansion Perspective of Classification Loss
        Functions", 2022.
    """

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
    """:func:`crossent.distillation_loss` as a module: ``forward(student, teacher, target=None)``.

    ::

        loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))
               + (1 - alpha) * cross_entropy(student, target)

    Args:
        temperature, alpha, reduction, ignore_index, divergence, beta, tail: as
            :func:`crossent.distillation_loss`.
    Shape:
        logits ``(N, C)``, target ``(N,)``.
    Returns:
        ``forward(student_logits, teacher_logits, target=None)`` returns the loss.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> student, teacher = torch.randn(4, 5), torch.randn(4, 5)
        >>> torch.allclose(ce.DistillationLoss(temperature=2.0)(student, teacher),
        ...                ce.distillation_loss(student, teacher, temperature=2.0))
        True

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015.
    """

    def __init__(self, temperature: float = 1.0, alpha: float = 0.5,
                 reduction: str = "batchmean", ignore_index: int = -100, *,
                 divergence: str = "forward_kl", beta: float = 0.5, tail: str = "bucket") -> None:
        super().__init__(reduction=reduction)
        self.temperature = temperature
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.divergence = divergence
        self.beta = beta
        self.tail = tail

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                target: torch.Tensor | None = None, **topk_teacher) -> torch.Tensor:
        """``topk_teacher``: ``teacher_topk_indices`` and ``teacher_topk_log_probs`` instead
        of ``teacher_logits``."""
        return F.distillation_loss(student_logits, teacher_logits, target,
                                   temperature=self.temperature, alpha=self.alpha,
                                   reduction=self.reduction, ignore_index=self.ignore_index,
                                   divergence=self.divergence, beta=self.beta, tail=self.tail,
                                   **topk_teacher)
