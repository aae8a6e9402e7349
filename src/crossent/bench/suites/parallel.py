"""``crossent bench parallel``: the vocabulary-parallel linear cross-entropy on ``W`` ranks.

``crossent_tp`` runs ``linear_cross_entropy(..., group=...)`` on ``world_size`` ranks
(Gloo processes on CPU, one GPU each with NCCL), rank ``r`` holding ``V // W`` classes
(one more on the first ``V % W`` ranks) of the output layer and the same ``N x H``
hidden states; ``crossent`` (the baseline) holds the whole ``V x H`` layer in one process.
(PyTorch's chunked ``F.linear_cross_entropy`` against ``crossent`` at this vocabulary is
the ``linear`` suite's business; on this CPU it takes minutes per step.) Reported per rank: the slowest rank's
time, the largest per-rank peak extra memory, and the bytes each rank sends per step
(ring-algorithm model, :func:`crossent.distributed.count_traffic`). On a CPU the ranks
share the cores (each gets ``threads // W``), so times show the overhead, not a speed-up.
"""

from __future__ import annotations

import torch

DESCRIPTION = "vocabulary-parallel linear cross-entropy: classes over world_size ranks"

CASES: dict[str, dict] = {
    "default": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "none": {"reduction": "none"},
}
IMPLS = ("crossent", "crossent_tp")
BASELINE = "crossent"  # one process holding every class: what the split is compared with
FLOOR = None

PRESETS = {
    "default": dict(n=1024, h=256, v=256000, world_size=2, dtype="float32", device="cpu",
                    cases=["default"]),
    "gemma2-2b": dict(n=8192, h=2304, v=256000, world_size=8, dtype="bfloat16", device="cuda",
                      cases=["default"]),
}


def world_size(impl: str, cfg: dict) -> int | None:
    """``crossent_tp`` runs on ``world_size`` ranks (1 included: a one-rank group)."""
    return int(cfg.get("world_size", 1)) if impl == "crossent_tp" else None


def available(impl: str, cfg: dict) -> bool:
    if cfg["device"] == "cuda":
        need = world_size(impl, cfg) or 1
        return torch.cuda.is_available() and torch.cuda.device_count() >= need
    return impl in IMPLS


def flops(cfg: dict, case: dict) -> float:
    """The three matmuls of one process holding every class (the useful work)."""
    return 6.0 * cfg["n"] * cfg["h"] * cfg["v"]


def shard(v: int, world: int, rank: int) -> tuple[int, int]:
    """``(start, size)`` of rank ``rank``'s classes: ``v // world``, +1 on the first ranks
    (:func:`crossent.partial_fc.shard_range`, the split the margin heads use too)."""
    from crossent.margin.partial_fc import shard_range

    start, end = shard_range(v, rank, world)
    return start, end - start


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    """Hidden states and targets (the same on every rank), this rank's weight rows.

    One process holds all ``V`` rows; on ``W`` ranks each makes only its shard (each shard
    from its own seed, so no rank ever holds the whole layer)."""
    import torch.distributed as dist

    n, h, v, device = cfg["n"], cfg["h"], cfg["v"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g).to(device)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world, rank = 1, 0
    start, size = shard(v, world, rank)
    gw = torch.Generator().manual_seed(seed + 1 + start)
    w = (torch.randn(size, h, generator=gw) * h ** -0.5).to(device=device, dtype=dtype)
    return x, w.requires_grad_(), y


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    x, w, y = inputs
    reduction = case.get("reduction", "mean")
    smoothing = case.get("label_smoothing", 0.0)
    if impl in IMPLS:
        import torch.distributed as dist

        from crossent import linear_cross_entropy

        group = dist.group.WORLD if impl == "crossent_tp" else None
        loss = linear_cross_entropy(x, w, y, reduction=reduction, label_smoothing=smoothing,
                                    group=group)
    else:
        raise ValueError(f"unknown implementation {impl!r}")
    return loss.sum() if loss.dim() else loss
