"""Integrations of crossent's losses into training frameworks.

Each submodule is optional and imports its framework only when used:

- :mod:`crossent.integrations.transformers`: ``apply(model)`` makes a Hugging Face causal
  LM compute its training loss with :func:`crossent.linear_cross_entropy`, from the final
  hidden states and the output-layer weight, without the ``tokens x vocab`` logits.
- :mod:`crossent.integrations.trl`: ``add_fused_lm_head(model, ...)`` with the contract of
  TRL's function of that name (per-token log-probabilities and entropies from
  :func:`crossent.linear_token_log_probs`), and ``apply()``, which makes TRL's trainers
  (GRPO, RLOO, DPO, KTO, SFT) use it.
"""
