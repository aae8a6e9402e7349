"""``crossent bench distill``: distillation fused with the heads against the logits-based loss.

A student head ``x @ W.T`` (gets gradients) against a dense teacher head ``x_t @ W_t.T``
(none), forward + backward. Implementations:

- ``crossent``: :func:`crossent.linear_distillation_loss`, neither head's logits formed;
- ``torch_logits`` (the baseline): ``F.linear`` twice, then the divergence written with
  ``log_softmax`` and ``F.kl_div`` as a PyTorch user would;
- ``crossent_logits``: ``F.linear`` twice, then :func:`crossent.distillation_loss`;
- ``trl``: ``F.linear`` twice, then TRL's ``GKDTrainer.generalized_jsd_loss``
  (``beta = 0`` for the forward KL).

Liger-Kernel's fused JSD (``LigerFusedLinearJSD``) is not installed here and not compared.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

CASES: dict[str, dict] = {
    "forward_kl": {"divergence": "forward_kl", "beta": 0.0},
    "jsd": {"divergence": "jsd", "beta": 0.5},
}

DESCRIPTION = "fused distillation: student and teacher heads, no N x V logits"
IMPLS = ("crossent", "torch_logits", "crossent_logits", "trl")
BASELINE = "torch_logits"
FLOOR = None

PRESETS = {
    "default": dict(n=1024, h=512, v=32000, dtype="float32", device="cpu",
                    cases=["forward_kl", "jsd"]),
    # the judged shape (Qwen's 151,936-token vocabulary)
    "cpu-judged": dict(n=4096, h=1024, v=151936, dtype="float32", device="cpu",
                       cases=["forward_kl", "jsd"]),
}


def available(impl: str, cfg: dict) -> bool:
    if impl == "trl":
        return importlib.util.find_spec("trl") is not None
    return True


def flops(cfg: dict, case: dict) -> float:
    """Four matmuls: both heads' logits, then ``dx`` and ``dW`` of the student."""
    return 8.0 * cfg["n"] * cfg["h"] * cfg["v"]


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    n, h, v, device = cfg["n"], cfg["h"], cfg["v"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator(device="cpu").manual_seed(seed)

    def make(*shape, scale=1.0, grad=False):
        t = (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)
        return t.requires_grad_() if grad else t

    x = make(n, h, grad=True)
    w = make(v, h, scale=h ** -0.5, grad=True)
    xt = make(n, h)
    wt = make(v, h, scale=2 * h ** -0.5)
    return x, w, xt, wt


def _formula(s: torch.Tensor, t: torch.Tensor, beta: float) -> torch.Tensor:
    """GKD's generalised JSD (``beta = 0``: KL(q || p)) per token, batch-averaged."""
    log_p, log_q = F.log_softmax(s, 1), F.log_softmax(t, 1)
    if beta == 0.0:
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)
    log_m = torch.logaddexp(log_p + math.log1p(-beta), log_q + math.log(beta))
    return (beta * F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
            + (1 - beta) * F.kl_div(log_m, log_p, reduction="batchmean", log_target=True))


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    """One forward; returns the scalar loss to backpropagate."""
    x, w, xt, wt = inputs
    divergence, beta = case["divergence"], case["beta"]
    if impl == "crossent":
        from crossent.distill import linear_distillation_loss

        return linear_distillation_loss(x, w, teacher_input=xt, teacher_weight=wt,
                                        divergence=divergence, beta=beta,
                                        memory_budget=case.get("memory_budget"))
    s = F.linear(x, w)
    with torch.no_grad():
        t = F.linear(xt, wt)
    if impl == "torch_logits":
        return _formula(s, t, beta)
    if impl == "crossent_logits":
        from crossent.core.divergence import distillation_loss

        return distillation_loss(s, t, divergence=divergence, beta=beta)
    if impl == "trl":
        import os

        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer

        return GKDTrainer.generalized_jsd_loss(s, t, beta=beta)
    raise ValueError(f"unknown implementation {impl!r}")
