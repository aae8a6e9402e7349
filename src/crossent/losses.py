"""The functional API in one place: every loss of the family, re-exported.

Each function lives in the module of its kind (:mod:`crossent.core.multiclass`,
:mod:`crossent.core.binary`, :mod:`crossent.core.divergence`, :mod:`crossent.core.variants`); this module
only gathers them for ``from crossent.losses import *``-style use.
"""

from .core.binary import binary_cross_entropy, binary_cross_entropy_with_logits, sigmoid_focal_loss
from .core.divergence import distillation_loss, js_div, kl_div
from .core.multiclass import CrossEntropyStats, cross_entropy, log_softmax, nll_loss, softmax
from .core.variants import focal_loss, poly1_cross_entropy

__all__ = [
    "softmax",
    "log_softmax",
    "nll_loss",
    "cross_entropy",
    "CrossEntropyStats",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
    "kl_div",
    "js_div",
    "distillation_loss",
    "focal_loss",
    "poly1_cross_entropy",
]
