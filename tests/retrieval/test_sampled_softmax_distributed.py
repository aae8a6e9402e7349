"""sampled_softmax_loss across 2 and 4 Gloo ranks against one process holding everything.

Each rank encodes its local queries, items and pool with replicated linear towers inside
``DistributedDataParallel`` (which averages the towers' and the learnable temperature's
gradients); local batch and pool sizes differ, ids are global and repeat across ranks
(accidental hits between ranks), one case corrects only some ranks' columns. Compared, in
float64, with the float64 formula of ``test_sampled_softmax.reference`` on the global batch
and the concatenated pools, computed by one process with the same parameters:

- the loss value on every rank ('mean', 'sum'), and this rank's rows ('none');
- the DDP-averaged parameter gradients on every rank;
- the gradient each rank's graph hands its features, ``W`` times the global one (DDP's
  division by ``W`` makes the towers exact), for 'mean' and 'sum'.
"""

from __future__ import annotations

import pytest
import torch
from test_sampled_softmax import reference

pytestmark = pytest.mark.slow

D = torch.float64
DIN, DIM = 5, 4
SIZES = {2: ([3, 3], [4, 1]), 4: ([2, 2, 2, 2], [3, 1, 4, 2], [3, 0, 4, 2])}
POOLS = {2: [2, 0], 4: [1, 3, 0, 2]}
CASES = ("full", "no_ids", "no_logq", "partial_logq", "sum", "none")


def _global_inputs(total, pool_total, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(
        xq=torch.randn(total, DIN, generator=g, dtype=D),
        xi=torch.randn(total, DIN, generator=g, dtype=D),
        xp=torch.randn(pool_total, DIN, generator=g, dtype=D),
        ids=torch.randint(0, max(3, total // 2), (total,), generator=g),
        pool_ids=torch.randint(0, max(3, total // 2), (pool_total,), generator=g),
        lq=-torch.rand(total, generator=g, dtype=D) * 4,
        plq=-torch.rand(pool_total, generator=g, dtype=D) * 4,
    )


class _Towers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(321)
        self.query = torch.nn.Parameter(torch.randn(DIN, DIM, generator=g, dtype=D) / DIN ** 0.5)
        self.item = torch.nn.Parameter(torch.randn(DIN, DIM, generator=g, dtype=D) / DIN ** 0.5)
        self.log_t = torch.nn.Parameter(torch.tensor(-0.4, dtype=D))

    def forward(self, xq, xi, xp):
        return xq @ self.query, xi @ self.item, xp @ self.item, self.log_t.exp()


def _slices(sizes):
    starts = [sum(sizes[:r]) for r in range(len(sizes))]
    return [slice(s, s + n) for s, n in zip(starts, sizes)]


def _arguments(case, x, sl, psl, logq_here=True):
    """The loss's keyword arguments for the rows ``sl`` and the pool ``psl``."""
    kw = dict(item_ids=x["ids"][sl], negative_ids=x["pool_ids"][psl],
              item_log_q=x["lq"][sl], negative_log_q=x["plq"][psl])
    if case == "no_ids":
        kw.update(item_ids=None, negative_ids=None)
    if case == "no_logq" or (case == "partial_logq" and not logq_here):
        kw.update(item_log_q=None, negative_log_q=None)
    return kw


def _reduction(case):
    return {"sum": "sum", "none": "none"}.get(case, "mean")


def _rank_job(rank, world_size, cases):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import crossent as ce

    results = []
    for case, design, sizes, seed in cases:
        pools = POOLS[world_size]
        x = _global_inputs(sum(sizes), sum(pools), seed)
        sl, psl = _slices(sizes)[rank], _slices(pools)[rank]
        model = DDP(_Towers())
        q, it, pool, t = model(x["xq"][sl], x["xi"][sl], x["xp"][psl])
        for f in (q, it, pool):
            f.retain_grad()
        kw = _arguments(case, x, sl, psl, logq_here=rank == 0)
        loss = ce.sampled_softmax_loss(q, it, negatives=pool, temperature=t,
                                       reduction=_reduction(case), memory_budget=3 * 1024,
                                       group=dist.group.WORLD, design=design, **kw)
        (loss.sum() if case == "none" else loss).backward()
        results.append({
            "loss": loss.detach(),
            "params": {k: p.grad.detach().clone() for k, p in model.module.named_parameters()},
            "q": q.grad.clone(), "item": it.grad.clone(), "pool": pool.grad.clone(),
        })
    return results


def _single_process(case, sizes, pools, seed):
    x = _global_inputs(sum(sizes), sum(pools), seed)
    model = _Towers()
    q, it, pool, t = model(x["xq"], x["xi"], x["xp"])
    for f in (q, it, pool):
        f.retain_grad()
    kw = _arguments(case, x, slice(None), slice(None))
    if case == "partial_logq":  # only rank 0's columns are corrected
        lq, plq = torch.zeros_like(x["lq"]), torch.zeros_like(x["plq"])
        lq[_slices(sizes)[0]] = x["lq"][_slices(sizes)[0]]
        plq[_slices(pools)[0]] = x["plq"][_slices(pools)[0]]
        kw.update(item_log_q=lq, negative_log_q=plq)
    loss = reference(q, it, negatives=pool, temperature=t, reduction=_reduction(case), **kw)
    (loss.sum() if case == "none" else loss).backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}, q.grad, it.grad, pool.grad


@pytest.mark.parametrize("world_size", [2, 4])
def test_gather_and_ring_equal_one_process(rank_pool, world_size):
    cases = [(case, design, sizes, 11 + i) for i, sizes in enumerate(SIZES[world_size])
             for case in CASES for design in ("gather", "ring")]
    per_rank = rank_pool(world_size).run(_rank_job, cases, timeout=600)
    pools = POOLS[world_size]
    for c, (case, design, sizes, seed) in enumerate(cases):
        loss, params, gq, gi, gp = _single_process(case, sizes, pools, seed)
        where = f"{case}, design={design}, sizes={sizes}, pools={pools}"
        # 'none': each rank backpropagates the sum of its rows, a local loss: DDP's average
        # is the global sum's gradient / W, the features get the global gradient itself
        factor = 1 / world_size if case == "none" else 1.0
        feature_factor = 1.0 if case == "none" else world_size
        for rank in range(world_size):
            got = per_rank[rank][c]
            sl, psl = _slices(sizes)[rank], _slices(pools)[rank]
            want_loss = loss[sl] if case == "none" else loss
            torch.testing.assert_close(got["loss"], want_loss, rtol=1e-12, atol=1e-12,
                                       msg=lambda m: f"{where}, rank {rank} loss: {m}")
            for k, want in params.items():
                torch.testing.assert_close(got["params"][k], want * factor, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{where}, rank {rank} DDP grad {k}: {m}")
            for key, want in (("q", gq[sl]), ("item", gi[sl]), ("pool", gp[psl])):
                torch.testing.assert_close(got[key] / feature_factor, want, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{where}, rank {rank} {key} grad: {m}")


def _mismatch_job(rank, world_size, kind):
    import torch.distributed as dist

    import crossent as ce

    g = dist.group.WORLD
    x = torch.randn(3, 4, dtype=D)
    ids = torch.arange(3) + 3 * rank
    try:
        if kind == "ids":
            ce.sampled_softmax_loss(x, x, item_ids=ids if rank == 0 else None, group=g)
        elif kind == "reduction":
            ce.sampled_softmax_loss(x, x, reduction="sum" if rank else "mean", group=g)
        elif kind == "temperature":
            ce.sampled_softmax_loss(x, x, temperature=1.0 + rank, group=g)
        elif kind == "local":
            ce.sampled_softmax_loss(x, x, item_log_q=torch.zeros(2 if rank else 3, dtype=D), group=g)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.parametrize("kind, text", [("ids", "accidental_hits"), ("reduction", "reduction"),
                                        ("temperature", "temperature"),
                                        ("local", "item_log_q must have shape [3]")])
def test_mismatches_raise_on_every_rank(rank_pool, kind, text):
    out = rank_pool(2).run(_mismatch_job, kind, timeout=60)
    assert all(o.startswith("ArgumentError") for o in out), out
    assert out[0] == out[1]
    assert text in out[0], out[0]
