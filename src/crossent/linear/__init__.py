"""Fused linear cross-entropy: the output layer and its loss without the logits.

- :mod:`~crossent.linear.front`: :func:`linear_cross_entropy` and
  :class:`LinearCrossEntropyLoss` (validation, the tile plan, one engine call);
- :mod:`~crossent.linear.engine`: the one forward and backward (row scale, output dtype,
  the backward's rules), as the ``torch.library`` custom op of one process (also the
  margin heads' engine, :mod:`crossent.margin`);
- :mod:`~crossent.linear.sharded`: the same engine with the classes sharded across ranks
  (``group=``; also Partial FC's).

The tile loops themselves are backends in :mod:`crossent.kernels`.
"""

from .front import LinearCrossEntropyLoss, linear_cross_entropy

__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]
