"""Rules shared by crossent's hand-written backward passes.

Fused losses form their gradients analytically (softmax minus target, tile by tile, often
in place); those gradients are not themselves differentiable. Asked for a graph of the
gradient (``torch.autograd.grad(..., create_graph=True)``, e.g. for a gradient penalty),
such a backward must say so instead of returning a gradient without a graph, which would
make the penalty silently contribute nothing.
"""

from __future__ import annotations

import torch

__all__ = ["refuse_double_backward"]


def refuse_double_backward(function: str, instead: str) -> None:
    """Raise :class:`NotImplementedError` when called inside a backward asked to create a
    graph.

    In an autograd backward, grad mode is on exactly when the caller passed
    ``create_graph=True``. (Under ``torch.compile`` tracing this is not checked: AOTAutograd
    refuses double backward through compiled graphs itself.)

    Args:
        function: the public name of the loss, e.g. ``"crossent.linear_cross_entropy"``.
        instead: what to use for double backward (a sentence).
    """
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise NotImplementedError(
            f"{function}: double backward (create_graph=True, e.g. for a gradient penalty) is "
            f"not supported for this function: its gradient is formed analytically and is not "
            f"itself differentiable. {instead}"
        )
