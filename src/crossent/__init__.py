"""crossent: the cross-entropy family of losses for PyTorch.

``import crossent as ce`` gives the functional API (same signatures and semantics as
``torch.nn.functional`` where PyTorch has the function), the ``nn.Module`` wrappers and
the extras PyTorch lacks. ``crossent.reference`` holds the plain float64 definitions.
"""

from . import reference
from .multiclass import CrossEntropyStats, cross_entropy, log_softmax, nll_loss, softmax

__version__ = "0.1.0"

__all__ = [
    "reference",
    "softmax",
    "log_softmax",
    "nll_loss",
    "cross_entropy",
    "CrossEntropyStats",
]
