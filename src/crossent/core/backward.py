"""Rules shared by crossent's hand-written backward passes.

Fused losses form their gradients analytically (softmax minus target, tile by tile, often
in place); those gradients are not themselves differentiable. Asked for a graph of the
gradient (``torch.autograd.grad(..., create_graph=True)``, e.g. for a gradient penalty),
such a backward must say so instead of returning a gradient without a graph, which would
make the penalty silently contribute nothing.
"""

from __future__ import annotations

import torch

from .checks import ArgumentError

__all__ = ["DoubleBackwardError", "refuse_double_backward"]


class DoubleBackwardError(ArgumentError, NotImplementedError):
    """``create_graph=True`` through a loss whose backward is hand-written (an
    :class:`~crossent.ArgumentError` and a ``NotImplementedError``)."""


def refuse_double_backward(function: str, instead: str) -> None:
    """Raise :class:`DoubleBackwardError` when called inside a backward asked to create a
    graph: the one check of every hand-written backward (given logits, fused linear,
    margin heads, contrastive tiles, the ring across ranks).

    In an autograd backward, grad mode is on exactly when the caller passed
    ``create_graph=True``. (Under ``torch.compile`` tracing this is not checked: AOTAutograd
    refuses double backward through compiled graphs itself.)

    Args:
        function: the public name of the loss, e.g. ``"crossent.linear_cross_entropy"``.
        instead: what to use for double backward (a sentence).
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise DoubleBackwardError(
            f"{function}: double backward (create_graph=True) is not supported for this loss "
            f"(e.g. for a gradient penalty): its gradient is formed analytically and is not "
            f"itself differentiable. {instead}"
        )
