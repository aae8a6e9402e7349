"""``crossent bench logprobs``: per-token log-probabilities and entropy from hidden states
and the output layer (RL fine-tuning), against TRL's and verl's kernels and full logits.

Every implementation runs forward + backward through both outputs::

    loss = (log_probs * g1).sum() + (entropy * g2).sum()      g1, g2 fixed and random

- ``crossent``: :func:`crossent.linear_token_log_probs` (``return_entropy=True``);
- ``trl``: TRL's ``ChunkedLogProbFunction`` (``trl/kernels/chunked_logprob.py``, the kernel
  of its ``add_fused_lm_head``) with the vocabulary chunk its trainers use;
- ``verl``: verl's PyTorch ``FusedLinearForPPOFunction``
  (``verl/utils/experimental/torch_functional.py``, loaded by its file path: verl's package
  ``__init__`` imports ray) with its default chunk of 512 tokens;
- ``torch_logits`` (the baseline): full logits, ``F.linear`` + ``log_softmax`` + gather +
  ``-sum p log p``, what a PyTorch user would write;
- ``crossent_lce``: :func:`crossent.linear_cross_entropy` with ``reduction='none'`` (the
  log-probabilities alone, as the negated loss) at the same shape, as the floor: issue 17
  bounds ``crossent`` by 1.15x its time, the ``time/floor`` column.

A peer that is not installed is skipped with a line saying so (:func:`why_unavailable`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import torch
import torch.nn.functional as F

CASES: dict[str, dict] = {
    "fp32": {"dtype": "float32"},
    "bf16": {"dtype": "bfloat16"},
}

DESCRIPTION = ("per-token log-probabilities and entropy (RL): hidden states x output weight, "
               "backward through both")
IMPLS = ("crossent", "trl", "verl", "torch_logits", "crossent_lce")
BASELINE = "torch_logits"
FLOOR = "crossent_lce"

PRESETS = {
    "default": dict(n=4096, h=1024, v=151936, temperature=1.0, dtype="float32", device="cpu",
                    cases=["fp32", "bf16"]),
    "cuda": dict(n=4096, h=1024, v=151936, temperature=1.0, dtype="float32", device="cuda",
                 cases=["fp32", "bf16"]),
}

VERL_CHUNK = 512  # FusedLinearForPPO's default chunk of tokens
TRL_CHUNK = 32768  # trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE in TRL 1.16


def _verl_path() -> str | None:
    spec = importlib.util.find_spec("verl")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "utils", "experimental",
                        "torch_functional.py")
    return path if os.path.exists(path) else None


def why_unavailable(impl: str, cfg: dict) -> str | None:
    """Why ``impl`` cannot run here (a line for the table), or None when it can."""
    if impl == "trl" and importlib.util.find_spec("trl") is None:
        return "TRL is not installed (pip install trl)"
    if impl == "verl" and _verl_path() is None:
        return "verl (with utils/experimental/torch_functional.py) is not installed"
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        return "needs CUDA"
    return None


def available(impl: str, cfg: dict) -> bool:
    return why_unavailable(impl, cfg) is None


def flops(cfg: dict, case: dict) -> float:
    """The three matmuls of forward + backward: ``x W^T``, ``G W`` and ``G^T x``."""
    return 6.0 * cfg["n"] * cfg["h"] * cfg["v"]


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    n, h, v, device = cfg["n"], cfg["h"], cfg["v"], cfg["device"]
    dtype = getattr(torch, case.get("dtype", cfg["dtype"]))
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(v, h, generator=g) * h ** -0.5).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g).to(device)
    g1 = torch.randn(n, generator=g).to(device)
    g2 = torch.randn(n, generator=g).to(device)
    return x, w, y, g1, g2


def _trl_function():
    """TRL's ``ChunkedLogProbFunction``. Its backward imports a ZeRO-3 helper from
    ``trl.trainer.utils``, which needs pandas and datasets; where those are missing, that
    one name (a null context without DeepSpeed) is stood in, nothing of the math."""
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    try:
        import trl.trainer.utils  # noqa: F401
    except ImportError:
        stub = types.ModuleType("trl.trainer.utils")
        stub.maybe_gather_lm_head_ctx = lambda *params: contextlib.nullcontext()
        sys.modules["trl.trainer.utils"] = stub
    return ChunkedLogProbFunction


_VERL: dict = {}


def _verl_function():
    if "fn" not in _VERL:
        spec = importlib.util.spec_from_file_location("_verl_torch_functional", _verl_path())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _VERL["fn"] = module.FusedLinearForPPOFunction
    return _VERL["fn"]


def log_probs_and_entropy(impl: str, x, w, y, temperature: float):
    """``(log_probs, entropy)`` of one implementation (``entropy`` None for ``crossent_lce``)."""
    if impl == "crossent":
        from crossent.logprobs.linear import linear_token_log_probs

        return linear_token_log_probs(x, w, y, temperature=temperature, return_entropy=True)
    if impl == "crossent_lce":
        from crossent.linear.front import linear_cross_entropy

        return -linear_cross_entropy(x, w, y, reduction="none", logit_scale=1.0 / temperature), None
    if impl == "trl":
        lp, ent, *_ = _trl_function().apply(x, w, None, y, temperature, TRL_CHUNK, None, 1.0,
                                            ("entropy",))
        return lp, ent
    if impl == "verl":
        return _verl_function().apply(x, w, y, temperature, VERL_CHUNK)
    if impl == "torch_logits":
        log_p = torch.log_softmax(F.linear(x, w).float() / temperature, -1)
        lp = log_p.gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return lp, -(log_p.exp() * log_p).sum(-1)
    raise ValueError(f"unknown implementation {impl!r}")


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    """One forward; returns the scalar to backpropagate through both outputs."""
    x, w, y, g1, g2 = inputs
    lp, ent = log_probs_and_entropy(impl, x, w, y, cfg.get("temperature", 1.0))
    loss = (lp.float() * g1).sum()
    return loss if ent is None else loss + (ent.float() * g2).sum()
