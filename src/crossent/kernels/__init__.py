"""Backends only: one contract per score source, its PyTorch engine, its Triton twin.

One ``(op, backend)`` table in :mod:`crossent.kernels.dispatch`:
``get_backend(name, op)`` returns the module, ``resolve_backend`` turns ``'auto'`` into a
name (Triton on CUDA when installed, else plain PyTorch). Tile sizes come from the one
planner, :mod:`crossent.core.tiles`.

- op ``"linear"`` (``hidden @ W.T (+ b)`` tiles, the fused linear cross-entropy):
  ``run(problem, plan, *, row_scale, lse, need_x, need_w, need_b, entropy, argmax) ->
  LinearResult``; :mod:`crossent.kernels.torch_chunked` (the contract in full) and
  :mod:`crossent.kernels.triton_linear`.
- op ``"similarity"`` (``scale a b^T + bias`` tiles, the contrastive losses):
  ``block_forward`` / ``block_backward`` with running row and column statistics;
  :mod:`crossent.kernels.similarity` (the contract and its data types) and
  :mod:`crossent.kernels.triton_similarity` (which imports the PyTorch one's types).

The autograd Functions of both ops live in their families (:mod:`crossent.linear`,
:mod:`crossent.contrastive`).
"""

from .dispatch import BACKENDS, get_backend

__all__ = ["BACKENDS", "get_backend"]
