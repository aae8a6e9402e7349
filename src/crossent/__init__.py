"""crossent: the cross-entropy family of losses for PyTorch.

``import crossent as ce`` gives the functional API (same signatures and semantics as
``torch.nn.functional`` where PyTorch has the function), the ``nn.Module`` wrappers and
the extras PyTorch lacks. ``crossent.reference`` holds the plain float64 definitions.
"""

from . import reference
from .contrastive import (
    ClipLoss,
    InfoNCELoss,
    NTXentLoss,
    SigLipLoss,
    SupConLoss,
    clip_loss,
    info_nce,
    nt_xent,
    siglip_loss,
    supcon_loss,
)
from .core.checks import ArgumentError, ArgumentTypeError, TargetIndexError
from .distill import linear_distillation_loss
from .linear import LinearCrossEntropyLoss, linear_cross_entropy
from .logprobs import linear_token_log_probs, token_log_probs
from .losses import (
    CrossEntropyStats,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    distillation_loss,
    focal_loss,
    js_div,
    kl_div,
    log_softmax,
    nll_loss,
    poly1_cross_entropy,
    sigmoid_focal_loss,
    softmax,
)

# margin softmax heads (issue 8)
from .margin import (
    ArcFace,
    CombinedMargin,
    CosFace,
    LargeMarginSoftmax,
    SphereFace,
    SubCenterArcFace,
    anneal_lambda,
    arcface_loss,
    combined_margin_loss,
    cosface_loss,
    large_margin_softmax_loss,
    margin_logits,
    partial_fc_sample,
    sphereface_loss,
    subcenter_arcface_loss,
)
# sampled softmax for retrieval (issue 19)
from .retrieval import sampled_softmax_loss
from .nn import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    DistillationLoss,
    FocalLoss,
    JSDivLoss,
    KLDivLoss,
    NLLLoss,
    Poly1CrossEntropyLoss,
)

__version__ = "0.1.0"

__all__ = [
    "reference",
    "ArgumentError",
    "ArgumentTypeError",
    "TargetIndexError",
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
    "linear_cross_entropy",
    "token_log_probs",
    "linear_token_log_probs",
    "linear_distillation_loss",
    "LinearCrossEntropyLoss",
    "CrossEntropyLoss",
    "NLLLoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "KLDivLoss",
    "JSDivLoss",
    "FocalLoss",
    "Poly1CrossEntropyLoss",
    "DistillationLoss",
    # contrastive (crossent.contrastive)
    "clip_loss",
    "info_nce",
    "nt_xent",
    "supcon_loss",
    "siglip_loss",
    "ClipLoss",
    "SigLipLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
    # margin softmax heads
    "arcface_loss",
    "cosface_loss",
    "sphereface_loss",
    "large_margin_softmax_loss",
    "combined_margin_loss",
    "subcenter_arcface_loss",
    "margin_logits",
    "anneal_lambda",
    "partial_fc_sample",
    "ArcFace",
    "CosFace",
    "SphereFace",
    "LargeMarginSoftmax",
    "CombinedMargin",
    "SubCenterArcFace",
    # retrieval (crossent.retrieval)
    "sampled_softmax_loss",
]
