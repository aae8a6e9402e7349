"""``crossent bench ce``: ``crossent.cross_entropy`` against ``F.cross_entropy`` on given logits.

Every implementation runs forward + backward on the same ``N x C`` logits. The peak extra
memory includes the logits' gradient (``N x C`` in the input's dtype), which both need.
A case may override the preset's dtype (``bf16``, ``fp16``: the logits in half precision;
losses accumulate in float32). ``floor`` is the hardware's limit at the same shape and
dtype (see :class:`_Floor`), run in the same command so that ``time/floor`` is measured,
not modelled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DESCRIPTION = "cross-entropy on given logits (the core), against F.cross_entropy"

CASES: dict[str, dict] = {
    "default": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "ignore_half": {"ignore_half": True},
    "bf16": {"dtype": "bfloat16"},
    "fp16": {"dtype": "float16"},
}
IMPLS = ("crossent", "torch", "floor")
BASELINE = "torch"
FLOOR = "floor"

PRESETS = {
    "default": dict(n=4096, c=32000, dtype="float32", device="cpu", cases=list(CASES)),
    "small": dict(n=1024, c=8000, dtype="float32", device="cpu", cases=["default"]),
}


def available(impl: str, cfg: dict) -> bool:
    return impl in IMPLS and (cfg["device"] != "cuda" or torch.cuda.is_available())


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    n, c = cfg["n"], cfg["c"]
    dtype = getattr(torch, case.get("dtype", cfg["dtype"]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g).to(device=cfg["device"], dtype=dtype).requires_grad_()
    y = torch.randint(0, c, (n,), generator=g)
    if case.get("ignore_half"):
        y[::2] = -100
    return x, y.to(cfg["device"])


class _Floor(torch.autograd.Function):
    """The least work a cross-entropy on given logits can do, as one forward + backward.

    For a loss that keeps no ``N x C`` tensor between the passes (crossent's memory
    contract), each pass must read every logit and take one exponential of it; the backward
    must also write the gradient, a fresh ``N x C`` tensor of the logits' dtype (autograd
    gives every implementation a new one, page faults included). So:

    - forward: ``torch.exp2`` of each cache-sized row chunk (4 MiB of float32) into one
      reused buffer: the logits are read from memory once, the writes stay in cache;
    - backward: ``torch.exp2(x)`` into a fresh tensor: read, exponential, write.

    ``exp2`` is the fastest elementwise exponential PyTorch has on this CPU (float32,
    one thread, 4096 x 32000 in 4 MiB chunks: 40 ms, ``torch.exp`` 110 ms, a whole
    ``softmax`` 78 ms); ``exp(x) = exp2(x log2 e)``, the multiply is free in a fused
    multiply-add. No max, sum, division or target: a lower bound on time (memory traffic
    and exponential throughput), not a loss, and nothing crossent itself runs.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        step = max(1, (1 << 20) // max(x.shape[1], 1))
        buf = torch.empty(min(step, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
        for s in range(0, x.shape[0], step):
            chunk = x[s:s + step]
            torch.exp2(chunk, out=buf[: chunk.shape[0]])
        return buf[0, 0].float().clone()

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return torch.exp2(x)


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    x, y = inputs
    if impl == "floor":
        return _Floor.apply(x)
    kwargs = {"label_smoothing": case.get("label_smoothing", 0.0)}
    if impl == "crossent":
        import crossent

        return crossent.cross_entropy(x, y, **kwargs)
    if impl == "torch":
        return F.cross_entropy(x, y, **kwargs)
    raise ValueError(f"unknown implementation {impl!r}")
