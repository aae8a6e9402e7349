"""Margin softmax heads for face and speaker recognition, and Partial FC.

- :mod:`~crossent.margin.losses`: the fused losses (ArcFace, CosFace/AM-Softmax,
  SphereFace, L-Softmax, combined, sub-centre) and :func:`margin_logits`;
- :mod:`~crossent.margin.heads`: modules owning their class weights;
- :mod:`~crossent.margin.partial_fc`: the classes sharded across ranks, with sampling.

Every head is a score source of the fused linear engine (:mod:`crossent.linear`).
"""

from .heads import (
    ArcFace,
    CombinedMargin,
    CosFace,
    LargeMarginSoftmax,
    SphereFace,
    SubCenterArcFace,
)
from .losses import (
    HEADS,
    anneal_lambda,
    arcface_loss,
    combined_margin_loss,
    cosface_loss,
    large_margin_softmax_loss,
    margin_logits,
    margin_spec,
    sphereface_loss,
    subcenter_arcface_loss,
)
from .partial_fc import partial_fc_loss, partial_fc_sample, shard_range, shard_rows

__all__ = [
    "arcface_loss",
    "cosface_loss",
    "sphereface_loss",
    "large_margin_softmax_loss",
    "combined_margin_loss",
    "subcenter_arcface_loss",
    "margin_logits",
    "margin_spec",
    "anneal_lambda",
    "HEADS",
    "ArcFace",
    "CosFace",
    "SphereFace",
    "LargeMarginSoftmax",
    "CombinedMargin",
    "SubCenterArcFace",
    "partial_fc_loss",
    "partial_fc_sample",
    "shard_range",
    "shard_rows",
]
