"""``crossent bench retrieval``: the sampled softmax of two-tower retrieval, tiled.

Every implementation runs forward + backward on the same ``B`` query and item embeddings
(L2-normalised) and a shared pool of ``M`` sampled negatives, with the logQ correction
(``item_log_q``, ``negative_log_q``, Zipf-like) and item ids that repeat (accidental hits
between the batch and the pool), at temperature 0.05:

- ``crossent``: :func:`crossent.sampled_softmax_loss` (tiles of the ``B x (B + M)``
  scores, never the whole matrix);
- ``torch``: the formula in plain PyTorch, what a user writes: the ``B x (B + M)`` logits,
  minus ``log Q``, accidental hits masked to ``-inf``, ``F.cross_entropy``.

The peak extra memory includes the embeddings' gradients (``(2B + M) x D``), which both
need.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DESCRIPTION = "sampled softmax with logQ correction: in-batch + pool negatives, tiled"

CASES: dict[str, dict] = {
    "default": {},
    "in_batch": {"pool": False},
    "no_ids": {"ids": False},
    # the memory budget as a time/memory dial (crossent only; torch ignores it)
    "budget_16mib": {"memory_budget": 16 << 20},
    "budget_128mib": {"memory_budget": 128 << 20},
}
IMPLS = ("crossent", "torch")
BASELINE = "torch"
FLOOR = None

PRESETS = {
    # the judged shape
    "default": dict(b=8192, m=16384, d=256, dtype="float32", device="cpu", cases=["default"]),
    "cpu-all": dict(b=8192, m=16384, d=256, dtype="float32", device="cpu",
                    cases=["default", "in_batch", "no_ids"]),
    "gpu": dict(b=32768, m=65536, d=256, dtype="bfloat16", device="cuda", cases=["default"]),
}

TEMPERATURE = 0.05


def available(impl: str, cfg: dict) -> bool:
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        return False
    return impl in IMPLS


def _columns(cfg: dict, case: dict) -> int:
    return cfg["b"] + (cfg["m"] if case.get("pool", True) else 0)


def flops(cfg: dict, case: dict) -> float:
    """The three ``B x (B + M) x D`` matmuls of forward + backward."""
    return 6.0 * cfg["b"] * _columns(cfg, case) * cfg["d"]


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    b, m, d, device = cfg["b"], cfg["m"], cfg["d"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(seed)
    catalogue = 4 * (b + m)
    # Zipf-like popularity: id k drawn with probability ~ 1 / (k + 1)
    popularity = 1.0 / torch.arange(1, catalogue + 1, dtype=torch.float64)
    popularity /= popularity.sum()
    ids = torch.multinomial(popularity, b + m, replacement=True, generator=g)
    log_q = torch.log(popularity[ids]).to(torch.promote_types(dtype, torch.float32))

    def embed(n):
        return F.normalize(torch.randn(n, d, generator=g), dim=1)

    query = embed(b)
    item = F.normalize(query + 0.7 * embed(b), dim=1)
    out = {"query": query, "item": item, "item_ids": ids[:b], "item_log_q": log_q[:b]}
    if case.get("pool", True):
        out.update(negatives=embed(m), negative_ids=ids[b:], negative_log_q=log_q[b:])
    for k, v in out.items():
        out[k] = v.to(device=device, dtype=dtype if v.is_floating_point() and v.dim() == 2 else v.dtype)
        if v.dim() == 2:
            out[k].requires_grad_()
    if not case.get("ids", True):
        out.pop("item_ids")
        out.pop("negative_ids", None)
    return out


def _torch(query, item, item_ids=None, item_log_q=None, negatives=None, negative_ids=None,
           negative_log_q=None):
    b = query.shape[0]
    cols = item if negatives is None else torch.cat([item, negatives])
    log_q = item_log_q if negatives is None else torch.cat([item_log_q, negative_log_q])
    acc = torch.promote_types(query.dtype, torch.float32)  # float32 logits for half inputs
    z = (query @ cols.T).to(acc) / TEMPERATURE - log_q
    if item_ids is not None:
        col_ids = item_ids if negatives is None else torch.cat([item_ids, negative_ids])
        rows = torch.arange(b, device=query.device)
        hit = (item_ids[:, None] == col_ids[None, :])
        hit[rows, rows] = False
        z = z.masked_fill(hit, -math.inf)
    return F.cross_entropy(z, torch.arange(b, device=query.device))


def step(impl: str, inputs, cfg: dict, case: dict):
    if impl == "crossent":
        import crossent

        return crossent.sampled_softmax_loss(**inputs, temperature=TEMPERATURE,
                                             memory_budget=case.get("memory_budget"))
    if impl == "torch":
        return _torch(**inputs)
    raise ValueError(f"unknown implementation {impl!r}")
