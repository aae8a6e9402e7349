"""Backends of the fused linear cross-entropy, behind one small contract.

A backend is a module with ``run(problem, plan, *, row_scale, lse, need_x, need_w,
need_b, entropy, argmax) -> LinearResult`` (see :mod:`crossent.kernels.torch_chunked`
for the contract in full; ``plan`` is a :class:`crossent.core.tiles.TilePlan`).
:mod:`crossent.kernels.dispatch` picks one by name or by device.

- ``"torch"``: plain PyTorch, tiles over tokens and vocabulary; any device.
- ``"triton"``: Triton kernels that form logit tiles on chip (CUDA, or the CPU under
  ``TRITON_INTERPRET=1``).

Contrastive losses use the same two backends for similarity tiles:
:mod:`crossent.kernels.similarity` (row and column statistics of ``scale a b^T + bias``
tile by tile, the autograd Function, the tile plan) and
:mod:`crossent.kernels.triton_similarity` (its kernels).
"""

from .dispatch import BACKENDS, get_backend

__all__ = ["BACKENDS", "get_backend"]
