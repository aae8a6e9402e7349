"""crossent.distributed on real Gloo processes (2 and 4 ranks) against one float64 process.

Each job runs many checks in one round trip (spawning costs seconds); the expected values
are computed here, in the parent, from the full tensors with plain PyTorch autograd.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist

from crossent import ArgumentError, TargetIndexError
from crossent import distributed as D
from crossent.core import stats as _stats

pytestmark = pytest.mark.slow

SIZES = {2: [5, 3], 4: [4, 0, 6, 3]}  # uneven first dimensions, one empty rank
CLASSES = {2: [7, 4], 4: [3, 6, 1, 5]}  # uneven class shards


def _data(world_size: int):
    g = torch.Generator().manual_seed(1234 + world_size)
    n = sum(SIZES[world_size])
    return {
        "inputs": torch.randn(n, 4, generator=g, dtype=torch.float64),
        "theta": torch.randn(4, 3, generator=g, dtype=torch.float64),
        "coef": torch.randn(n, 3, generator=g, dtype=torch.float64),
        "vec": torch.randn(world_size, 6, generator=g, dtype=torch.float64),
        "h": torch.randn(6, generator=g, dtype=torch.float64),
        "logits": torch.randn(9, sum(CLASSES[world_size]), generator=g, dtype=torch.float64),
        "target": torch.randint(0, sum(CLASSES[world_size]), (9,), generator=g),
    }


def _loss(y: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """A nonlinear function of the whole gathered batch (every row matters)."""
    return (torch.sin(y) * coef).sum() + y.sum(0).square().sum() / 7


def _slice(rank, sizes):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _collectives_job(rank, world_size, data):
    group = dist.group.WORLD
    sizes = SIZES[world_size]
    mine = _slice(rank, sizes)
    out = {"sizes": D.gather_sizes(sizes[rank], group)}

    # data parallel: a replicated encoder theta, each rank encodes its own slice
    for conv in (D.DATA_PARALLEL, D.TENSOR_PARALLEL):
        theta = data["theta"].clone().requires_grad_()
        x = (data["inputs"][mine] @ theta)
        x.retain_grad()
        with D.count_traffic() as traffic:
            y = D.all_gather(x, group, sizes=sizes, convention=conv)
            _loss(y, data["coef"]).backward()
        out[conv] = {"y": y.detach(), "x_grad": x.grad, "theta_grad": theta.grad.clone(),
                     "traffic": traffic.by_op()}
        avg = theta.grad.clone()
        dist.all_reduce(avg)  # what DDP does: average the replicated parameter's gradient
        out[conv]["theta_grad_avg"] = avg / world_size

    # all_reduce, both conventions: y = sum_k a_k, L = sum(sin(y) * h)
    for conv in (D.DATA_PARALLEL, D.TENSOR_PARALLEL):
        a = data["vec"][rank].clone().requires_grad_()
        y = D.all_reduce(a, group, convention=conv)
        (torch.sin(y) * data["h"]).sum().backward()
        out["reduce_" + conv] = {"y": y.detach(), "grad": a.grad}

    # replicated input of sharded work: rank r uses h * vec[r]; the total is all-reduced
    h = data["h"].clone().requires_grad_()
    part = (torch.cos(D.replicated_input(h, group)) * data["vec"][rank]).sum()
    total = D.all_reduce(part, group, convention=D.TENSOR_PARALLEL)
    total.backward()
    out["replicated"] = {"total": total.detach(), "grad": h.grad}

    s = data["h"].clone().requires_grad_()
    (D.scale_grad(s, 3.0) * 2).sum().backward()
    out["scale_grad"] = s.grad

    # without autograd (no grad required / no_grad): plain gathers
    with torch.no_grad():
        out["gather_nograd"] = D.all_gather(data["inputs"][mine], group, convention=D.TENSOR_PARALLEL)
    out["gather_list"] = D.gather_uneven(data["inputs"][mine], group)
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_collectives_against_one_process(rank_pool, world_size):
    data = _data(world_size)
    results = rank_pool(world_size).run(_collectives_job, data)
    sizes = SIZES[world_size]

    theta = data["theta"].clone().requires_grad_()
    x = data["inputs"] @ theta
    x.retain_grad()
    _loss(x, data["coef"]).backward()
    a = data["vec"].clone().requires_grad_()
    y_red = a.sum(0)
    (torch.sin(y_red) * data["h"]).sum().backward()
    h = data["h"].clone().requires_grad_()
    ref_total = (torch.cos(h) * data["vec"]).sum()
    ref_total.backward()

    for rank, out in enumerate(results):
        assert out["sizes"] == sizes
        mine = _slice(rank, sizes)
        dp, tp = out[D.DATA_PARALLEL], out[D.TENSOR_PARALLEL]
        for r in (dp, tp):
            torch.testing.assert_close(r["y"], x.detach(), rtol=0, atol=0)
        # data parallel: the true adjoint of the W ranks' objective W * L ...
        torch.testing.assert_close(dp["x_grad"], world_size * x.grad[mine])
        # ... so that DDP's average gives exactly the single-process gradient
        torch.testing.assert_close(dp["theta_grad_avg"], theta.grad)
        # tensor parallel: this rank's slice of dL/dy, nothing summed
        torch.testing.assert_close(tp["x_grad"], x.grad[mine])
        assert tp["traffic"] == {"all_gather": (world_size - 1) * max(sizes) * 3 * 8}
        assert set(dp["traffic"]) == {"all_gather", "reduce_scatter"}
        assert dp["traffic"]["reduce_scatter"] == (world_size - 1) * max(sizes) * 3 * 8

        rd, rt = out["reduce_" + D.DATA_PARALLEL], out["reduce_" + D.TENSOR_PARALLEL]
        torch.testing.assert_close(rd["y"], y_red.detach())
        torch.testing.assert_close(rd["grad"], world_size * a.grad[rank])
        torch.testing.assert_close(rt["grad"], a.grad[rank])

        torch.testing.assert_close(out["replicated"]["total"], ref_total.detach())
        torch.testing.assert_close(out["replicated"]["grad"], h.grad)
        torch.testing.assert_close(out["scale_grad"], torch.full_like(data["h"], 6.0))
        torch.testing.assert_close(out["gather_nograd"], data["inputs"], rtol=0, atol=0)
        for k, part in enumerate(out["gather_list"]):
            torch.testing.assert_close(part, data["inputs"][_slice(k, sizes)], rtol=0, atol=0)


def _stats_job(rank, world_size, data, ties):
    classes = CLASSES[world_size]
    start = sum(classes[:rank])
    z = data["logits"].clone()
    for row, cols in ties:  # equal maxima in several shards: the first global index wins
        z[row, cols] = z[row].max() + 1.0
    local = z[:, start:start + classes[rank]].clone()
    # this shard's part of the target score: z[y] where the target class is here
    mine = (data["target"] >= start) & (data["target"] < start + classes[rank])
    onehot_dot = torch.where(mine, z.gather(1, data["target"][:, None]).squeeze(1),
                             torch.zeros((), dtype=z.dtype))
    stats = _stats.tile_stats_(local, None, entropy=True, argmax=True)
    stats = stats._replace(dot=onehot_dot)
    extra = torch.full((3,), float(rank + 1), dtype=torch.float64)
    with D.count_traffic() as traffic:
        merged, (summed,) = D.merge_row_stats(stats, dist.group.WORLD, col_offset=start,
                                              sums=[extra])
    lse = _stats.logsumexp(merged)
    return {"lse": lse, "entropy": _stats.entropy(merged, lse), "argmax": merged.argmax,
            "dot": merged.dot, "sum": summed, "z": z, "traffic": traffic.bytes_sent}


@pytest.mark.parametrize("world_size", [2, 4])
def test_merge_row_stats_is_the_tile_merge_across_ranks(rank_pool, world_size):
    data = _data(world_size)
    classes = CLASSES[world_size]
    starts = [sum(classes[:k]) for k in range(world_size)]
    # row 0: the first column of the last shard ties with the first column of the first;
    # row 1: the last column of the next-to-last shard ties with the first of the others
    ties = [(0, [starts[-1], starts[0]]), (1, [starts[-1] - 1] + starts[1:])]
    results = rank_pool(world_size).run(_stats_job, data, ties)
    z = results[0]["z"]
    logp = torch.log_softmax(z, 1)
    for out in results:
        torch.testing.assert_close(out["lse"], torch.logsumexp(z, 1))
        torch.testing.assert_close(out["entropy"], -(logp.exp() * logp).sum(1))
        torch.testing.assert_close(out["dot"], z.gather(1, data["target"][:, None]).squeeze(1))
        assert torch.equal(out["argmax"], z.argmax(1))  # torch: first index on ties
        assert [int(out["argmax"][row]) for row, _ in ties] == [min(cols) for _, cols in ties]
        torch.testing.assert_close(out["sum"], torch.full((3,), world_size * (world_size + 1) / 2,
                                                          dtype=torch.float64))
        # one all-gather of (max, sumexp, dot, zexp, argmax) x 9 rows + 3 sums, 8 bytes each
        assert out["traffic"] == (world_size - 1) * (5 * 9 + 3) * 8
        for key in ("lse", "entropy", "dot", "argmax", "sum"):  # the same bits everywhere
            assert torch.equal(out[key], results[0][key]), key


def _ring_job(rank, world_size, data, direction):
    sizes = SIZES[world_size]
    x = data["inputs"][_slice(rank, sizes)] * (rank + 1)
    seen = []
    with D.count_traffic() as traffic:
        for source, block in D.ring_blocks(x, dist.group.WORLD, sizes=sizes, direction=direction):
            seen.append((source, block.clone()))
    return seen, traffic.bytes_sent


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("direction", [1, -1])
def test_ring_blocks_visit_every_rank_with_uneven_sizes(rank_pool, world_size, direction):
    data = _data(world_size)
    sizes = SIZES[world_size]
    results = rank_pool(world_size).run(_ring_job, data, direction)
    for rank, (seen, sent) in enumerate(results):
        sources = [s for s, _ in seen]
        assert sources == [(rank - step * direction) % world_size for step in range(world_size)]
        for source, block in seen:
            expect = data["inputs"][_slice(source, sizes)] * (source + 1)
            torch.testing.assert_close(block, expect, rtol=0, atol=0)
        # every block but the last one held is sent on: W - 1 sends
        held = sources[:-1]
        assert sent == sum(sizes[s] for s in held) * 4 * 8


def _agreement_job(rank, world_size, scenario):
    group = dist.group.WORLD
    start = time.perf_counter()
    try:
        if scenario == "fields":
            D.check_agreement("ctx(group=...)", group,
                              same={"rows": 8 if rank == 0 else 7, "dtype": "torch.float64",
                                    "label_smoothing": 0.1 * (rank % 2)},
                              each={"classes": rank})
        elif scenario == "one_rank_error":
            err = ArgumentError("label_smoothing must be in [0, 1]") if rank == 1 else None
            D.check_agreement("ctx(group=...)", group, same={"a": 1}, error=err)
        elif scenario == "all_same_error":
            D.check_agreement("ctx(group=...)", group, same={"a": 1},
                              error=TargetIndexError("Target 9 is out of bounds"))
        elif scenario == "replicated":
            t = torch.arange(10)
            if rank == world_size - 1:
                t[3] = 7
            D.check_replicated("ctx(group=...)", "target", t, group)
        elif scenario == "agree":
            return ("ok", D.check_agreement("ctx", group, same={"a": [1, 2], "b": None},
                                            each={"c": rank * 10}),
                    time.perf_counter() - start)
    except Exception as exc:
        return (type(exc).__name__, str(exc), time.perf_counter() - start)
    return ("no error", "", time.perf_counter() - start)


@pytest.mark.parametrize("world_size", [2, 4])
def test_disagreement_raises_the_same_error_on_every_rank_quickly(rank_pool, world_size):
    pool = rank_pool(world_size)
    out = pool.run(_agreement_job, "fields")
    assert len({(kind, msg) for kind, msg, _ in out}) == 1
    kind, msg, _ = out[0]
    assert kind == "ArgumentError"
    assert "rows (rank 0: 8, rank 1: 7" in msg and "label_smoothing" in msg and "dtype" not in msg
    assert all(seconds < 5 for _, _, seconds in out)

    out = pool.run(_agreement_job, "one_rank_error")
    assert len({(kind, msg) for kind, msg, _ in out}) == 1
    assert out[0][0] == "ArgumentError"
    assert "rank 1: ArgumentError: label_smoothing must be in [0, 1]" in out[0][1]

    out = pool.run(_agreement_job, "all_same_error")
    assert all(kind == "TargetIndexError" and msg == "Target 9 is out of bounds"
               for kind, msg, _ in out)

    out = pool.run(_agreement_job, "replicated")
    assert len({(kind, msg) for kind, msg, _ in out}) == 1
    assert out[0][0] == "ArgumentError"
    assert "1 of 10 elements differ (first at flat index 3: values from 3 to 7" in out[0][1]

    out = pool.run(_agreement_job, "agree")
    for kind, each, _ in out:
        assert kind == "ok" and each == [{"c": 10 * r} for r in range(world_size)]


def _hang_job(rank, world_size):
    if rank == 0:
        dist.all_reduce(torch.ones(1))  # rank 1 never joins


def test_harness_reports_a_hang_as_a_timeout():
    from distributed_harness import RankPool, RankTimeout

    with RankPool(2, timeout=60) as pool:
        with pytest.raises(RankTimeout, match=r"rank\(s\) \[0\] did not answer"):
            pool.outcomes(_hang_job, timeout=10)  # rank 1 answers at once; 10 s leaves room on a loaded CI machine
        assert not pool.running  # killed; the next job would start a fresh pool


def test_merge_row_stats_packs_odd_rows_and_strided_slices():
    """The packed all-gather of merge_row_stats: an int64 argmax after an odd number of
    float32 rows (byte offset 12 N, not a multiple of 8) and one-element column slices
    (stride 5) come back intact; expected values from torch.logsumexp / argmax."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for n in (1, 3, 5):
            z = torch.randn(n, 5)
            state = _stats.RowStats(z.amax(1), (z - z.amax(1, keepdim=True)).exp().sum(1),
                                    z[:, 0], None, z.argmax(1))
            merged, (mass,) = D.merge_row_stats(state, dist.group.WORLD, col_offset=2,
                                                sums=[z[:, 1]])
            torch.testing.assert_close(_stats.logsumexp(merged), torch.logsumexp(z, 1))
            assert torch.equal(merged.argmax, z.argmax(1) + 2)
            torch.testing.assert_close(merged.dot, z[:, 0])
            torch.testing.assert_close(mass, z[:, 1])
    finally:
        dist.destroy_process_group()
