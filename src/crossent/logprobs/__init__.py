"""Per-token log-probabilities and entropy, for RL and preference training.

- :mod:`~crossent.logprobs.front`: :func:`token_log_probs` (validation, one call of the
  softmax statistics engine, :func:`crossent.core.statistics.softmax_statistics`).
"""

from .front import token_log_probs

__all__ = ["token_log_probs"]
