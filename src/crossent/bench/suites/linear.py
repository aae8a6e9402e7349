"""``crossent bench linear``: the fused linear cross-entropy against PyTorch and peers.

Cases are option sets; every implementation runs forward + backward on the same
inputs. PyTorch's chunked ``F.linear_cross_entropy(options=LinearCrossEntropyOptions())``
is the reference; where it has no such option (z-loss, soft-capping) or falls back to
its unchunked path (label smoothing, probability targets) the "torch" entry is what a
PyTorch user would write: full logits ``F.linear`` then the loss.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

CASES: dict[str, dict] = {
    "default": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "none": {"reduction": "none"},
    "probs": {"probs": True},
    "z_loss": {"z_loss": 1e-4},
    "softcap": {"softcap": 30.0},
    # the memory budget as a time/memory dial (crossent only; the others ignore it)
    "budget_8mib": {"memory_budget": 8 << 20},
    "budget_16mib": {"memory_budget": 16 << 20},
    "budget_32mib": {"memory_budget": 32 << 20},
    "budget_64mib": {"memory_budget": 64 << 20},
    "budget_128mib": {"memory_budget": 128 << 20},
    "ls_64mib": {"label_smoothing": 0.1, "memory_budget": 64 << 20},
}

DESCRIPTION = "fused linear cross-entropy: hidden states x output weight, no N x V logits"
IMPLS = ("crossent", "crossent_torch", "crossent_triton", "torch_chunked", "torch_logits",
         "liger", "cce", "matmul_floor")
BASELINE = "torch_chunked"
FLOOR = "matmul_floor"

PRESETS = {
    "default": dict(n=2048, h=512, v=16000, dtype="float32", device="cpu", cases=["default"]),
    "cpu-judged": dict(n=4096, h=1024, v=32000, dtype="float32", device="cpu",
                       cases=["default", "label_smoothing", "none", "probs", "z_loss", "softcap"]),
    "llama3-8b": dict(n=8192, h=4096, v=128256, dtype="bfloat16", device="cuda", cases=["default"]),
    "gemma2-2b": dict(n=8192, h=2304, v=256000, dtype="bfloat16", device="cuda", cases=["softcap"]),
}


def available(impl: str, cfg: dict) -> bool:
    if impl == "torch_chunked":  # F.linear_cross_entropy: torch >= 2.12
        return hasattr(F, "linear_cross_entropy")
    if impl in ("crossent", "torch_logits", "matmul_floor"):
        return True
    if impl == "crossent_torch":  # the plain-PyTorch backend where 'auto' may pick Triton
        return cfg["device"] == "cuda"
    if impl == "crossent_triton":
        return cfg["device"] == "cuda" and torch.cuda.is_available() and \
            importlib.util.find_spec("triton") is not None
    if cfg["device"] != "cuda" or not torch.cuda.is_available():
        return False
    module = {"liger": "liger_kernel", "cce": "cut_cross_entropy"}[impl]
    return importlib.util.find_spec(module) is not None


def flops(cfg: dict, case: dict) -> float:
    """The three matmuls of forward + backward: ``x W^T``, ``G W`` and ``G^T x``."""
    return 6.0 * cfg["n"] * cfg["h"] * cfg["v"]


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    n, h, v, device = cfg["n"], cfg["h"], cfg["v"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    w = (torch.randn(v, h, generator=g) * h ** -0.5).to(device=device, dtype=dtype).requires_grad_()
    if case.get("probs"):
        y = torch.softmax(torch.randn(n, v, generator=g, dtype=torch.float32), 1).to(device=device, dtype=dtype)
    else:
        y = torch.randint(0, v, (n,), generator=g).to(device)
    return x, w, y


def _torch_logits_loss(x, w, y, case):
    z = F.linear(x, w).float()
    if case.get("softcap"):
        z = case["softcap"] * torch.tanh(z / case["softcap"])
    loss = F.cross_entropy(z, y.float() if y.is_floating_point() else y,
                           reduction=case.get("reduction", "mean"),
                           label_smoothing=case.get("label_smoothing", 0.0))
    if case.get("z_loss"):
        loss = loss + case["z_loss"] * torch.logsumexp(z, 1).square().mean()
    return loss


class _MatmulFloor(torch.autograd.Function):
    """The three matrix products of any linear cross-entropy, and nothing else: forward
    ``Z = x W^T`` (N x V), backward ``dx = Z W`` and ``dW = Z^T x`` (``Z`` standing in
    for the gradient of the logits). ``Z``'s buffer is kept between steps, so its page
    faults are not timed; the gradients are fresh tensors, as every implementation's are."""

    buffers: dict = {}

    @staticmethod
    def forward(ctx, x, w):
        key = (x.shape[0], w.shape[0], x.dtype, x.device)
        z = _MatmulFloor.buffers.get(key)
        if z is None:
            z = _MatmulFloor.buffers[key] = torch.empty(x.shape[0], w.shape[0], dtype=x.dtype,
                                                        device=x.device)
        torch.mm(x, w.T, out=z)
        ctx.save_for_backward(x, w, z)
        return z[0, 0].float().clone()

    @staticmethod
    def backward(ctx, grad):
        x, w, z = ctx.saved_tensors
        return z @ w, z.T @ x


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    """One forward; returns the (reduced to a scalar) loss to backpropagate."""
    x, w, y = inputs
    reduction = case.get("reduction", "mean")
    if impl == "matmul_floor":
        return _MatmulFloor.apply(x, w)
    if impl.startswith("crossent"):
        from crossent.linear.front import linear_cross_entropy

        loss = linear_cross_entropy(
            x, w, y, reduction=reduction, label_smoothing=case.get("label_smoothing", 0.0),
            z_loss=case.get("z_loss", 0.0), softcap=case.get("softcap"),
            memory_budget=case.get("memory_budget"),
            backend={"crossent": "auto", "crossent_torch": "torch",
                     "crossent_triton": "triton"}[impl],
        )
    elif impl == "torch_chunked":
        if case.get("z_loss") or case.get("softcap"):
            loss = _torch_logits_loss(x, w, y, case)  # PyTorch has no such option
        else:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = F.linear_cross_entropy(
                    x, w, y, reduction=reduction, label_smoothing=case.get("label_smoothing", 0.0),
                    options=torch.nn.LinearCrossEntropyOptions(),
                )
    elif impl == "torch_logits":
        loss = _torch_logits_loss(x, w, y, case)
    elif impl == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        loss = liger_fused_linear_cross_entropy(
            x, w, y, reduction=reduction, label_smoothing=case.get("label_smoothing", 0.0),
            softcap=case.get("softcap"),
        )
    elif impl == "cce":
        from cut_cross_entropy import linear_cross_entropy as cce

        loss = cce(x, w, y, reduction=reduction, softcap=case.get("softcap"))
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return loss.sum() if loss.dim() else loss
