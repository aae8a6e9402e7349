"""``token_log_probs``: the log-probability of each target token and the entropy of its
distribution, from given logits.

Both are statistics of one streaming pass over each row (:mod:`crossent.core.statistics`):
``log p_y = dot_shifted - lse_shifted = (z_y - m) - log sum_c exp(z_c - m)`` with ``m``
the row max, and the entropy from the same pass, with its gradient on request.
"""

from __future__ import annotations

import torch

from ..core.checks import (
    ArgumentError,
    ArgumentTypeError,
    check_bool,
    check_class_index_target,
    check_floating,
    check_int,
    check_temperature,
)
from ..core.reduction import accumulation_dtype
from ..core.statistics import ScoreTransform, softmax_statistics
from ..core.targets import ClassIndexTarget


def _check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ArgumentTypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    check_floating("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ArgumentError(f"logits must have shape (..., V) with V >= 1 classes, got "
                            f"{list(logits.shape)}")


def token_log_probs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token, and optionally its distribution's entropy.

    At a temperature, without keeping an ``N x V`` buffer for the backward. With ``z = logits / temperature``, ``m = max_v z_v`` and ``p = softmax(z)``::

        log_probs = log p_y = (z_y - m) - log sum_v exp(z_v - m)        (<= 0 by construction)
        entropy   = -sum_v p_v log p_v
        d log p_y / d logits_v = (delta_vy - p_v) / temperature
        d entropy / d logits_v = -p_v (log p_v + entropy) / temperature

    and 0 (with no gradient) at positions whose target is ``ignore_index``. These are the
    per-token quantities of policy-gradient and preference losses (PPO, GRPO, RLOO, DPO):
    ``log_probs = -cross_entropy(logits / temperature, target, reduction='none')``.
    Rows are processed in chunks in float32 (float64 for float64 logits); the backward
    recomputes the softmax from the caller's logits.

    Args:
        logits: the unnormalised scores, floating point.
        target: class indices (int64 or uint8) in ``[0, V)`` or ``ignore_index``.
        temperature: a finite number ``> 0`` the logits are divided by.
        ignore_index: the target value of positions to ignore (outputs 0, no gradient).
        return_entropy: also return the entropy of each position's distribution
            (differentiable).
    Shape:
        - logits: ``(..., V)``, e.g. ``(B, T, V)``.
        - target: ``logits.shape[:-1]``, e.g. ``(B, T)``.
        - log_probs, entropy: the target's shape.
    Returns:
        ``log_probs``, or ``(log_probs, entropy)`` with ``return_entropy=True``; float32
        for half-precision logits, else the logits' dtype.
    Example:
        >>> import torch, crossent as ce
        >>> logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        >>> target = torch.tensor([[0, -100]])
        >>> log_probs, entropy = ce.token_log_probs(logits, target, return_entropy=True)
        >>> log_probs
        tensor([[-0.2395,  0.0000]])
        >>> torch.allclose(log_probs[0, 0], torch.log_softmax(logits[0, 0], -1)[0])
        True
        >>> entropy
        tensor([[0.6656, 0.0000]])

    References:
        Schulman et al., "Proximal Policy Optimization Algorithms", 2017.
        Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
        Language Models" (GRPO), 2024.
    """
    _check_logits(logits)
    temperature = check_temperature("temperature", temperature, accumulation_dtype(logits.dtype))
    ignore_index = check_int("ignore_index", ignore_index)
    check_bool("return_entropy", return_entropy)
    num_classes = logits.shape[-1]
    target = check_class_index_target(target, logits.shape[:-1], num_classes, ignore_index,
                                      logits.device, shape_hint=" (logits.shape[:-1])")

    acc = accumulation_dtype(logits.dtype)
    index = ClassIndexTarget.build(target, num_classes, weight=None, ignore_index=ignore_index,
                                   label_smoothing=0.0, dtype=acc)
    stats = softmax_statistics(
        logits.reshape(-1, num_classes), index,
        transform=ScoreTransform(logit_scale=1.0 / temperature),
        entropy=return_entropy, entropy_grad=return_entropy,
    )
    zero = torch.zeros((), dtype=acc, device=logits.device)
    log_probs = torch.where(index.valid, stats.dot_shifted - stats.lse_shifted, zero)
    log_probs = log_probs.reshape(target.shape)
    if not return_entropy:
        return log_probs
    entropy = torch.where(index.valid, stats.entropy, zero).reshape(target.shape)
    return log_probs, entropy
