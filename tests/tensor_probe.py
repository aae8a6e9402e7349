"""A dispatch-mode probe for memory tests: the largest tensor any ATen op produces.

::

    with LargestTensor() as probe:
        loss_fn(...).backward()
    assert probe.largest < limit          # in elements
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestTensor(TorchDispatchMode):
    """Largest number of elements of any tensor an ATen op produces while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
