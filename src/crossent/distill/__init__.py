"""Distillation fused with the output layer: the student's (and a dense teacher's) head
walked in vocabulary tiles, against a dense or a top-k teacher.

- :mod:`~crossent.distill.front`: :func:`linear_distillation_loss` (validation, the tile
  plan, one engine call).
- :mod:`~crossent.distill.engine`: the autograd functions over
  :mod:`crossent.kernels.two_heads`.
"""

from .front import linear_distillation_loss

__all__ = ["linear_distillation_loss"]
