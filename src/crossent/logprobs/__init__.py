"""Per-token log-probabilities and entropy, for RL and preference training.

- :mod:`~crossent.logprobs.front`: :func:`token_log_probs` (validation, one call of the
  softmax statistics engine, :func:`crossent.core.statistics.softmax_statistics`).
- :mod:`~crossent.logprobs.linear`: :func:`linear_token_log_probs` (the same fused with
  the output layer: validation, one call of the fused linear engine, or its sharded path).
"""

from .front import token_log_probs
from .linear import EXTRAS, TokenLogProbs, linear_token_log_probs

__all__ = ["token_log_probs", "linear_token_log_probs", "TokenLogProbs", "EXTRAS"]
