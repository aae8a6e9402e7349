"""``crossent bench hf``: one training step of a Hugging Face causal LM, patched or not.

A tiny-depth model (one small decoder layer) with a real vocabulary: Llama-3's 128256
(untied embeddings) or Gemma-2's 256000 (tied, final-logit soft cap 30). A step is the
forward with ``labels`` (2 x 2048 tokens by default) and the backward through every
parameter; the optimizer is left out. ``transformers`` is the model as transformers
ships it (logits, then ``ForCausalLMLoss``); ``crossent`` is the same model after
``crossent.integrations.transformers.apply`` (no logits). The random model is built
from its config in the worker: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util

import torch

DESCRIPTION = "a Hugging Face causal LM's training step: patched by crossent vs as shipped"

#: option sets for ``apply``; the unpatched model has no options, so only the default
#: compares like with like.
CASES: dict[str, dict] = {"default": {}}

IMPLS = ("crossent", "transformers")
BASELINE = "transformers"
FLOOR = None

_ONE_LAYER = dict(h=256, intermediate=768, heads=4, layers=1, batch=2, seq=2048)
PRESETS = {
    # a light run for `crossent bench` on defaults (about 1 GiB, a minute on 2 cores)
    "default": dict(arch="llama", v=32000, **{**_ONE_LAYER, "batch": 1, "seq": 1024},
                    dtype="float32", device="cpu", cases=["default"]),
    # Llama-3's vocabulary at 2 x 2048 tokens (the table in BENCHMARKS.md; about 6 GiB)
    "llama3": dict(arch="llama", v=128256, **_ONE_LAYER, dtype="float32", device="cpu",
                   cases=["default"]),
    "gemma2": dict(arch="gemma2", v=256000, **_ONE_LAYER, dtype="float32", device="cpu",
                   cases=["default"]),
    "llama3-gpu": dict(arch="llama", v=128256, **_ONE_LAYER, dtype="bfloat16", device="cuda",
                       cases=["default"]),
    "gemma2-gpu": dict(arch="gemma2", v=256000, **_ONE_LAYER, dtype="bfloat16", device="cuda",
                       cases=["default"]),
}


def available(impl: str, cfg: dict) -> bool:
    if importlib.util.find_spec("transformers") is None:
        return False
    return cfg["device"] != "cuda" or torch.cuda.is_available()


def _config(cfg: dict):
    import transformers

    common = dict(vocab_size=cfg["v"], hidden_size=cfg["h"], intermediate_size=cfg["intermediate"],
                  num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                  num_key_value_heads=cfg["heads"], max_position_embeddings=max(cfg["seq"], 2048),
                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if cfg["arch"] == "llama":
        return transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    if cfg["arch"] == "gemma2":
        config = transformers.Gemma2Config(**common, head_dim=cfg["h"] // cfg["heads"],
                                           final_logit_softcapping=30.0)
        return config, transformers.Gemma2ForCausalLM  # eager attention (its soft cap)
    raise ValueError(f"unknown arch {cfg['arch']!r}; expected 'llama' or 'gemma2'")


def make_inputs(cfg: dict, case: dict, seed: int = 0) -> dict:
    config, cls = _config(cfg)
    torch.manual_seed(seed)
    model = cls(config).to(device=cfg["device"], dtype=getattr(torch, cfg["dtype"]))
    model.train()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, cfg["v"], (cfg["batch"], cfg["seq"]), generator=g).to(cfg["device"])
    return {"model": model, "params": list(model.parameters()), "input_ids": ids, "labels": ids}


def step(impl: str, inputs: dict, cfg: dict, case: dict) -> torch.Tensor:
    """One forward with labels; the loss to backpropagate."""
    model = inputs["model"]
    if impl == "crossent":
        from crossent.integrations import transformers as ce_hf

        if not ce_hf.is_applied(model):  # once, in the warm-up step
            ce_hf.apply(model, **case)
    elif impl != "transformers":
        raise ValueError(f"unknown implementation {impl!r}")
    return model(input_ids=inputs["input_ids"], labels=inputs["labels"], use_cache=False).loss


def flops(cfg: dict, case: dict) -> float:
    """The output layer's forward and backward matmuls, ``6 N H V`` (the rest is small)."""
    return 6.0 * cfg["batch"] * cfg["seq"] * cfg["h"] * cfg["v"]
