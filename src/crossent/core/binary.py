"""Binary cross-entropy on probabilities and on logits, and the sigmoid focal loss.

A binary label is the two-class case of the family: ``sigmoid(x)`` is the softmax of
the logits ``(0, x)``. PyTorch's semantics are kept exactly, including its clamp of
``log`` at ``-100`` in :func:`binary_cross_entropy` and the gradient it uses there,
``(p - y) / max(p (1 - p), 1e-12)``. Half inputs are computed in float32 and the loss is
returned in float32.
"""

from __future__ import annotations

import torch
from torch.nn import _reduction as _legacy

from . import checks as _checks
from .reduction import accumulation_dtype, reduce_rows

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss"]

_LOG_FLOOR = -100.0  # PyTorch clamps log(p) and log(1 - p) here
_GRAD_EPS = 1e-12  # PyTorch's floor on p (1 - p) in the backward


def _reduction_of(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        reduction = _legacy.legacy_get_string(size_average, reduce)
    return _checks.check_reduction(reduction)


def _bce(p, y, w):
    """``-w (y max(log p, -100) + (1 - y) max(log(1 - p), -100))`` in the accumulation dtype."""
    acc = accumulation_dtype(p.dtype)
    pa, ya = p.to(acc), y.to(acc)
    log_p = torch.log(pa).clamp_min(_LOG_FLOOR)
    log_q = torch.log1p(-pa).clamp_min(_LOG_FLOOR)
    loss = -(ya * log_p + (1.0 - ya) * log_q)
    if w is not None:
        loss = loss * w.to(acc)
    return loss


class _BinaryCrossEntropyFunction(torch.autograd.Function):
    """Elementwise ``-w (y log p + (1 - y) log(1 - p))`` with PyTorch's clamps."""

    @staticmethod
    def forward(ctx, p, y, w):
        ctx.save_for_backward(p, y, w)
        return _bce(p, y, w)

    @staticmethod
    def backward(ctx, grad):
        p, y, w = ctx.saved_tensors
        acc = grad.dtype
        pa, ya = p.to(acc), y.to(acc)
        scale = grad if w is None else grad * w.to(acc)
        grad_p = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_p = (scale * (pa - ya) / (pa * (1.0 - pa)).clamp_min(_GRAD_EPS)).to(p.dtype)
        if ctx.needs_input_grad[1]:
            grad_y = (-scale * (torch.log(pa) - torch.log1p(-pa))).to(y.dtype)
        return grad_p, grad_y, None


class _BinaryCrossEntropyTransformFunction(torch.autograd.Function):
    """:class:`_BinaryCrossEntropyFunction` for ``torch.func`` transforms and forward-mode
    AD: ``setup_context``, a generated vmap rule and ``jvp`` (the same derivatives). Used
    only under them: Dynamo cannot trace an autograd function with a custom ``jvp``, so
    eager and compiled code keep the plain one."""

    generate_vmap_rule = True

    @staticmethod
    def forward(p, y, w):
        return _bce(p, y, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def _slopes(p, y, w, acc, need_p: bool, need_y: bool):
        """``dloss/dp`` (PyTorch's clamped form) and ``dloss/dy``, weighted (None where
        not needed)."""
        pa = p.to(acc)
        d_p = d_y = None
        if need_p:
            d_p = (pa - y.to(acc)) / (pa * (1.0 - pa)).clamp_min(_GRAD_EPS)
        if need_y:
            d_y = -(torch.log(pa) - torch.log1p(-pa))
        if w is not None:
            d_p = None if d_p is None else d_p * w.to(acc)
            d_y = None if d_y is None else d_y * w.to(acc)
        return d_p, d_y

    @staticmethod
    def backward(ctx, grad):
        p, y, w = ctx.saved_tensors
        need_p, need_y = ctx.needs_input_grad[:2]
        d_p, d_y = _BinaryCrossEntropyTransformFunction._slopes(p, y, w, grad.dtype, need_p,
                                                                need_y)
        return ((grad * d_p).to(p.dtype) if need_p else None,
                (grad * d_y).to(y.dtype) if need_y else None, None)

    @staticmethod
    def jvp(ctx, tangent_p, tangent_y, _tangent_w):
        p, y, w = ctx.saved_tensors
        acc = accumulation_dtype(p.dtype)
        d_p, d_y = _BinaryCrossEntropyTransformFunction._slopes(
            p, y, w, acc, tangent_p is not None, tangent_y is not None)
        terms = [d * t.to(acc) for d, t in ((d_p, tangent_p), (d_y, tangent_y)) if t is not None]
        return sum(terms[1:], terms[0])


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross-entropy of probabilities ``p = input`` for labels ``y = target``.

    Elementwise, then reduced ('mean' over all elements); same as
    ``F.binary_cross_entropy``, clamp of ``log`` at -100 included::

        loss = -w * (y * max(log p, -100) + (1 - y) * max(log(1 - p), -100))

    Args:
        input: probabilities ``p`` in ``[0, 1]``.
        target: labels ``y`` in ``[0, 1]`` (soft labels allowed), floating point.
        weight: optional weight ``w``, broadcastable to ``input``.
        size_average, reduce: PyTorch's deprecated reduction flags.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
    Shape:
        input and target identical, any shape; the output is a scalar, or input-shaped
        for ``'none'``.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> p = torch.tensor([0.9, 0.2, 0.6])
        >>> y = torch.tensor([1.0, 0.0, 1.0])
        >>> round(ce.binary_cross_entropy(p, y).item(), 4)
        0.2798
        >>> torch.allclose(ce.binary_cross_entropy(p, y),
        ...                torch.nn.functional.binary_cross_entropy(p, y))
        True
        >>> ce.binary_cross_entropy(torch.tensor([0.0]), torch.tensor([1.0]))  # the clamp
        tensor(100.)

    References:
        PyTorch, ``torch.nn.functional.binary_cross_entropy``.
    """
    reduction = _reduction_of(size_average, reduce, reduction)
    _checks.check_floating("input", input)
    _checks.check_floating("target", target)
    if target.dtype != input.dtype:  # F.binary_cross_entropy raises too
        raise _checks.ArgumentTypeError(
            f"target must have the input's dtype {input.dtype}, got {target.dtype} (Found dtype "
            f"{target.dtype} but expected {input.dtype})")
    if target.shape != input.shape:
        raise _checks.ArgumentError(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}) is deprecated. Please ensure target has the same size as input."
        )
    _checks.check_broadcastable("weight", weight, input.shape)
    _checks.check_in_unit_interval_values("input", input.detach())
    _checks.check_in_unit_interval_values("target", target.detach())
    w = weight.expand(input.shape) if weight is not None else None
    if _checks.functorch_active():
        loss = _BinaryCrossEntropyTransformFunction.apply(input, target, w)
    else:
        loss = _BinaryCrossEntropyFunction.apply(input, target, w)
    return reduce_rows(loss, reduction)


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy on logits (the sigmoid fused in); as PyTorch's.

    ::

        loss = w * ((1 - y) x + (1 + (pw - 1) y) * softplus(-x))
             = -w * (pw * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))

    Never overflows: ``softplus(-x)`` is computed as ``log1p(exp(-|x|)) + max(-x, 0)``.

    Args:
        input: logits ``x``.
        target: labels ``y`` in ``[0, 1]``, floating point, ``input``'s size.
        weight: optional weight ``w``, broadcastable to ``input``.
        size_average, reduce: PyTorch's deprecated reduction flags.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``.
        pos_weight: optional weight ``pw`` of the positive term; broadcasts along the last
            (class) dimension for multi-label problems.
    Shape:
        input and target the same size, any shape; the output is a scalar, or
        input-shaped for ``'none'``.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> pw = torch.tensor([2.0, 1.0])
        >>> torch.allclose(ce.binary_cross_entropy_with_logits(x, y, pos_weight=pw),
        ...                torch.nn.functional.binary_cross_entropy_with_logits(x, y, pos_weight=pw))
        True
        >>> ce.binary_cross_entropy_with_logits(torch.tensor([-200.0]), torch.tensor([1.0]))
        tensor(200.)

    References:
        PyTorch, ``torch.nn.functional.binary_cross_entropy_with_logits``.
    """
    reduction = _reduction_of(size_average, reduce, reduction)
    _checks.check_floating("input", input)
    _checks.check_floating("target", target)
    _checks.check_same_size(input, target)
    _checks.check_broadcastable("weight", weight, input.shape)
    _checks.check_broadcastable("pos_weight", pos_weight, input.shape)
    # a wider target promotes the loss, as PyTorch (float32 input, float64 target: float64)
    acc = accumulation_dtype(torch.promote_types(input.dtype, target.dtype))
    x, y = input.to(acc), target.to(acc)
    # softplus(-x) = max(-x, 0) + log1p(exp(-|x|)), its large part added to (1 - y) x
    # first: for a confident, right element the two cancel exactly and the small
    # log1p(e^-|x|) survives (added last it would be lost in ulp(|x|))
    large, small = torch.clamp_min(-x, 0.0), torch.log1p(torch.exp(-x.abs()))
    if pos_weight is not None:
        log_weight = 1.0 + (pos_weight.to(acc) - 1.0) * y
        loss = ((1.0 - y) * x + log_weight * large) + log_weight * small
    else:
        loss = ((1.0 - y) * x + large) + small
    if weight is not None:
        loss = loss * weight.to(acc)
    return reduce_rows(loss, reduction)


def focal_modulation(q: torch.Tensor, gamma: float) -> torch.Tensor:
    """The focal factor ``q^gamma`` of ``q = 1 - p_t >= 0``, with a gradient that is finite
    where ``q`` is 0.

    For ``0 < gamma < 1`` the slope ``gamma q^(gamma - 1)`` is infinite at ``q = 0`` (a
    confidently right example, ``p_t`` rounded to 1) and meets a factor that is 0 there
    (``log p_t``, or the binary cross-entropy), so autograd's product is ``inf * 0 = NaN``.
    The whole focal term's gradient tends to 0 as ``q -> 0`` (it is ``O(q^gamma)``), so
    below the smallest normal number (where the slope could overflow) the factor is held
    constant: its value is still ``q^gamma``, its gradient path is 0, the exact limit.
    """
    tiny = torch.finfo(q.dtype).tiny
    live = q > tiny
    safe = torch.where(live, q, torch.ones((), dtype=q.dtype, device=q.device))
    return torch.where(live, safe ** gamma, q.detach().clamp_min(0.0) ** gamma)


def sigmoid_focal_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
) -> torch.Tensor:
    """Sigmoid focal loss on logits, as ``torchvision.ops.sigmoid_focal_loss``.

    With ``p = sigmoid(x)``, ``p_t = p y + (1 - p)(1 - y)`` and
    ``alpha_t = alpha y + (1 - alpha)(1 - y)`` (no alpha term when ``alpha < 0``)::

        loss = alpha_t * (1 - p_t)^gamma * BCEWithLogits(x, y)

    Same defaults and semantics as ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        input: logits ``x``.
        target: labels ``y`` in ``[0, 1]``, ``input``'s size.
        alpha: balance of positives against negatives; ``< 0``: no alpha term.
        gamma: focusing exponent, ``>= 0`` (0 with ``alpha < 0`` is plain BCE).
        reduction: ``'none'`` (the default, as torchvision) | ``'mean'`` | ``'sum'``.
    Shape:
        input and target the same size, any shape; the output input-shaped for
        ``'none'``, a scalar otherwise.
    Returns:
        The loss (float32 for half input).
    Example:
        >>> import torch, crossent as ce
        >>> x = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
        >>> y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> round(ce.sigmoid_focal_loss(x, y, reduction="sum").item(), 4)
        0.3005
        >>> torch.allclose(ce.sigmoid_focal_loss(x, y, alpha=-1, gamma=0),
        ...                torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none"))
        True

    References:
        Lin et al., "Focal Loss for Dense Object Detection", 2017.
    """
    reduction = _checks.check_reduction(reduction)
    gamma = _checks.check_non_negative("gamma", gamma)
    alpha = _checks.check_finite("alpha", alpha)
    ce = binary_cross_entropy_with_logits(input, target, reduction="none")
    acc = ce.dtype
    x = input.to(acc)
    y = target.to(acc)
    # 1 - p_t = y (1 - p) + (1 - y) p, with 1 - p = sigmoid(-x): no 1 - p rounded to 0 at
    # x >= 17 (float32), where the confident example's factor and gradient would be lost
    q = y * torch.sigmoid(-x) + (1.0 - y) * torch.sigmoid(x)
    loss = ce * focal_modulation(q, gamma) if gamma else ce
    if alpha >= 0:
        loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return reduce_rows(loss, reduction)
