"""``crossent bench margin``: a margin-softmax head (ArcFace by default) over many classes.

crossent's fused head (:mod:`crossent.margin`) against the plain PyTorch formula a user
would write: normalised copies of the embeddings and of the ``C x D`` weight, the full
``N x C`` cosine matrix, the margin on the target column, ``F.cross_entropy``. The judged
shape is 1,000,000 classes, batch 512, dimension 512, fp32 (``--preset judged``; the
plain one needs ~10 GB there, so ``--preset judged-fit`` compares both at 100,000
classes, where it fits). Peak memory includes the ``C x D`` float32 weight gradient
(1953 MiB at the judged shape).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DESCRIPTION = "margin softmax heads (ArcFace, CosFace, SphereFace, sub-centre) over many classes"
# crossent_pfc: Partial FC over ``world_size`` ranks (crossent.partial_fc): rank r holds
# its slice of the batch and of the classes; "crossent" is one process holding both whole
IMPLS = ("crossent", "torch", "crossent_pfc")
BASELINE = "torch"
FLOOR = None

CASES: dict[str, dict] = {
    "arcface": {"head": "arcface", "scale": 64.0, "margin": 0.5},
    "cosface": {"head": "cosface", "scale": 64.0, "margin": 0.35},
    "sphereface": {"head": "sphereface", "scale": 1.0, "margin": 4},
    "subcenter": {"head": "subcenter_arcface", "scale": 64.0, "margin": 0.5, "centers": 3},
    # the tile budget as a time/memory dial (crossent only)
    "arcface_32mib": {"head": "arcface", "scale": 64.0, "margin": 0.5, "memory_budget": 32 << 20},
    # Partial FC's class-centre sampling (InsightFace's default rate): the positives and
    # random others, 10% of the classes; one process samples all classes, a rank its shard
    "arcface_sampled": {"head": "arcface", "scale": 64.0, "margin": 0.5, "sample_rate": 0.1},
}

PRESETS = {
    "default": dict(n=512, d=128, c=20000, dtype="float32", device="cpu", cases=["arcface"]),
    "judged": dict(n=512, d=512, c=1_000_000, dtype="float32", device="cpu", cases=["arcface"]),
    "judged-fit": dict(n=512, d=512, c=100_000, dtype="float32", device="cpu", cases=["arcface"]),
    "heads": dict(n=512, d=128, c=20000, dtype="float32", device="cpu",
                  cases=["arcface", "cosface", "sphereface", "subcenter"]),
    "judged-cuda": dict(n=512, d=512, c=1_000_000, dtype="float32", device="cuda",
                        cases=["arcface"]),
    # the judged shape split over Gloo ranks (--set world_size=4 for four)
    "partial-fc": dict(n=512, d=512, c=1_000_000, world_size=2, dtype="float32", device="cpu",
                       cases=["arcface"]),
    "partial-fc-sampled": dict(n=512, d=512, c=1_000_000, world_size=2, dtype="float32",
                               device="cpu", cases=["arcface_sampled"]),
}


def world_size(impl: str, cfg: dict) -> int | None:
    """``crossent_pfc`` runs on ``world_size`` ranks; the others in one process."""
    return int(cfg.get("world_size", 2)) if impl == "crossent_pfc" else None


def available(impl: str, cfg: dict) -> bool:
    if impl == "crossent_pfc" and cfg["device"] == "cuda":
        return torch.cuda.device_count() >= (world_size(impl, cfg) or 1)
    return impl in IMPLS and (cfg["device"] != "cuda" or torch.cuda.is_available())


def _rank() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def flops(cfg: dict, case: dict) -> float:
    """The three matmuls of forward + backward over every class centre."""
    return 6.0 * cfg["n"] * cfg["d"] * cfg["c"] * case.get("centers", 1)


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    """The batch and the class weights; on ``W`` ranks, this rank's slice of each (made
    from its own seed: no rank ever holds the whole weight)."""
    from crossent.margin.partial_fc import shard_range

    n, d, c, device = cfg["n"], cfg["d"], cfg["c"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    rank, world = _rank()
    rows, classes = shard_range(n, rank, world), shard_range(c, rank, world)
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, d, generator=g)[rows[0]:rows[1]]
    y = torch.randint(0, c, (n,), generator=g)[rows[0]:rows[1]]
    gw = torch.Generator(device="cpu").manual_seed(seed + 1 + classes[0])
    k = case.get("centers", 1)
    w = torch.empty((classes[1] - classes[0]) * k, d, dtype=dtype)
    w.normal_(0.0, 0.01, generator=gw)  # InsightFace's initialisation
    return (x.to(device=device, dtype=dtype).requires_grad_(), w.to(device).requires_grad_(),
            y.to(device))


def _plain_target(cos_y: torch.Tensor, case: dict) -> torch.Tensor:
    """The papers' target logit (before the scale), written plainly with acos."""
    head, m = case["head"], case["margin"]
    theta = torch.acos(cos_y.clamp(-1 + 1e-7, 1 - 1e-7))
    if head in ("arcface", "subcenter_arcface"):
        return torch.where(theta <= math.pi - m, torch.cos(theta + m), cos_y - m * math.sin(m))
    if head == "cosface":
        return cos_y - m
    k = torch.floor(theta * m / math.pi).detach()
    return (-1.0) ** k * torch.cos(m * theta) - 2 * k


def plain_loss(x, w, y, case: dict) -> torch.Tensor:
    """What a PyTorch user writes: normalise, full cosine matrix, margin, cross-entropy."""
    cos = F.normalize(x) @ F.normalize(w).T
    if case.get("centers", 1) > 1:
        cos = cos.view(x.shape[0], -1, case["centers"]).amax(2)
    target = _plain_target(cos.gather(1, y[:, None]).squeeze(1), case)
    logits = cos.scatter(1, y[:, None], target[:, None])
    if case["head"] == "sphereface":
        logits = logits * x.norm(dim=1, keepdim=True)
    return F.cross_entropy(case["scale"] * logits, y)


def _generator() -> torch.Generator:
    """The sampling's generator: a fixed seed per rank (each shard samples its own)."""
    return torch.Generator().manual_seed(1234 + _rank()[0])


def step(impl: str, inputs, cfg: dict, case: dict) -> torch.Tensor:
    x, w, y = inputs
    rate = case.get("sample_rate", 1.0)
    if rate < 1.0 and impl != "crossent_pfc":  # one process: what the head modules do
        from crossent.margin.heads import partial_fc_sample

        classes, y = partial_fc_sample(y, cfg["c"], rate, generator=_generator())
        w = w.index_select(0, classes)  # centers == 1 in the sampled cases
    if impl == "torch":
        return plain_loss(x, w, y, case)
    import crossent as ce

    params = {k: v for k, v in case.items() if k not in ("head", "memory_budget", "sample_rate")}
    if impl == "crossent_pfc":
        import torch.distributed as dist

        from crossent.margin import losses as margin
        from crossent.margin.partial_fc import partial_fc_loss

        spec = margin.margin_spec(case["head"], **params)
        loss, _ = partial_fc_loss(spec, x, w, y, group=dist.group.WORLD, num_classes=cfg["c"],
                                  sample_rate=rate, generator=_generator(),
                                  memory_budget=case.get("memory_budget"))
        return loss
    if impl != "crossent":
        raise ValueError(f"unknown implementation {impl!r}")
    fn = {"arcface": ce.arcface_loss, "cosface": ce.cosface_loss,
          "sphereface": ce.sphereface_loss, "subcenter_arcface": ce.subcenter_arcface_loss}
    return fn[case["head"]](x, w, y, memory_budget=case.get("memory_budget"), **params)
