"""Fused linear cross-entropy: the output layer and its loss without the logits.

- :mod:`~crossent.linear.front`: :func:`linear_cross_entropy` and
  :class:`LinearCrossEntropyLoss` (validation, the tile plan, one engine call);
- :mod:`~crossent.linear.sharded`: the same with the classes sharded across ranks
  (``group=``).

The tile loops themselves are backends in :mod:`crossent.kernels`.
"""

from .front import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]
