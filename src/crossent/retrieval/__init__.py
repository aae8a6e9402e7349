"""Retrieval and recommendation: two-tower models trained with a sampled softmax.

- :mod:`~crossent.retrieval.front`: :func:`sampled_softmax_loss` (in-batch and mixed
  negatives, logQ correction, accidental hits; tiled, and across ranks), built on the
  contrastive engine (:mod:`crossent.contrastive`);
- :mod:`~crossent.retrieval.frequency`: :class:`FrequencyEstimator`, the streaming
  estimate of each item's sampling probability (Yi et al., 2019), giving ``log_q``.
"""

from .frequency import FrequencyEstimator
from .front import sampled_softmax_loss

__all__ = ["sampled_softmax_loss", "FrequencyEstimator"]
