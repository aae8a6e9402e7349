"""linear_distillation_loss(group=...) on 2 and 4 Gloo ranks vs one float64 process.

The classes of the student's and the dense teacher's heads are sharded unevenly; a top-k
teacher's indices are global. Expected values and gradients (input, each rank's slice of
the weight and bias) come from the float64 formulas of ``distill_reference`` on the
materialised logits of one process holding every class.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import crossent as ce
from distill_reference import IGNORE, reference

pytestmark = pytest.mark.slow

SPLITS = {2: [4, 7], 4: [3, 6, 1, 5]}  # uneven class shards; V = 11 and 15
N, H, HT, K = 9, 5, 3, 4


def _cases(world_size):
    v = sum(SPLITS[world_size])
    g = torch.Generator().manual_seed(world_size)
    f64 = dict(dtype=torch.float64)
    cases = []

    def add(name, teacher, bias=True, target=True, **options):
        xt, wt, bt = (torch.randn(N, HT, generator=g, **f64), torch.randn(v, HT, generator=g, **f64),
                      torch.randn(v, generator=g, **f64))
        y = torch.randint(0, v, (N,), generator=g)
        y[3] = IGNORE
        lq, idx = torch.log_softmax(xt @ wt.T + bt, 1).topk(K, 1)
        cases.append(dict(name=name, teacher=teacher, options=options,
                          x=torch.randn(N, H, generator=g, **f64),
                          w=torch.randn(v, H, generator=g, **f64),
                          b=torch.randn(v, generator=g, **f64) if bias else None,
                          xt=xt, wt=wt, bt=bt, idx=idx, lq=lq, y=y if target else None,
                          upstream=torch.randn(N, generator=g, **f64)))

    add("forward_kl_target", "dense", temperature=2.0, alpha=0.3)
    add("jsd_sum_no_bias", "dense", bias=False, divergence="jsd", beta=0.3, reduction="sum")
    add("reverse_kl_none_no_target", "dense", target=False, divergence="reverse_kl",
        reduction="none", temperature=1.5)
    add("jsd_mean", "dense", divergence="jsd")
    add("topk_bucket_target", "bucket", divergence="jsd", temperature=2.0, alpha=0.6)
    add("topk_renormalize_none", "renormalize", divergence="reverse_kl", reduction="none")
    add("topk_forward_no_target", "bucket", target=False)
    return cases


def _shard(t, rank, split):
    return None if t is None else t.narrow(0, sum(split[:rank]), split[rank])


def _kwargs(case, w, b, wt, bt):
    if case["teacher"] == "dense":
        teacher = dict(teacher_input=case["xt"], teacher_weight=wt, teacher_bias=bt)
    else:
        teacher = dict(teacher_topk_indices=case["idx"], teacher_topk_log_probs=case["lq"],
                       tail=case["teacher"])
    return dict(linear_bias=b, **teacher, **case["options"])


def _upstream(loss, g):
    return loss if loss.dim() == 0 else (loss * g).sum()


def _job(rank, world_size, cases):
    split = SPLITS[world_size]
    out = {}
    for case in cases:
        x = case["x"].clone().requires_grad_()
        w = _shard(case["w"], rank, split).clone().requires_grad_()
        b = _shard(case["b"], rank, split)
        b = None if b is None else b.clone().requires_grad_()
        loss = ce.linear_distillation_loss(
            x, w, case["y"], group=dist.group.WORLD,
            **_kwargs(case, w, b, _shard(case["wt"], rank, split), _shard(case["bt"], rank, split)))
        _upstream(loss, case["upstream"]).backward()
        out[case["name"]] = (loss.detach(), x.grad, w.grad, None if b is None else b.grad)
    return out


def _expected(case):
    x = case["x"].clone().requires_grad_()
    w = case["w"].clone().requires_grad_()
    b = None if case["b"] is None else case["b"].clone().requires_grad_()
    z = x @ w.T + (0 if b is None else b)
    opts = {k: v for k, v in case["options"].items() if k != "memory_budget"}
    if case["teacher"] == "dense":
        loss = reference(z, case["xt"] @ case["wt"].T + case["bt"], case["y"], **opts)
    else:
        loss = reference(z, None, case["y"], idx=case["idx"], lq=case["lq"], tail=case["teacher"],
                         **opts)
    _upstream(loss, case["upstream"]).backward()
    return loss.detach(), x.grad, w.grad, None if b is None else b.grad


@pytest.mark.parametrize("world_size", [2, 4])
def test_matches_one_float64_process(rank_pool, world_size):
    cases = _cases(world_size)
    results = rank_pool(world_size).run(_job, cases)
    split = SPLITS[world_size]
    for case in cases:
        loss, gx, gw, gb = _expected(case)
        for rank in range(world_size):
            got = results[rank][case["name"]]
            msg = f"{case['name']} on rank {rank} of {world_size}"
            torch.testing.assert_close(got[0], loss, msg=msg)
            assert torch.equal(got[0], results[0][case["name"]][0]), msg  # same bits everywhere
            torch.testing.assert_close(got[1], gx, msg=msg + ": input")
            torch.testing.assert_close(got[2], _shard(gw, rank, split), msg=msg + ": weight")
            if gb is None:
                assert got[3] is None
            else:
                torch.testing.assert_close(got[3], _shard(gb, rank, split), msg=msg + ": bias")


def _disagree_job(rank, world_size, _):
    v = sum(SPLITS[world_size])
    split = SPLITS[world_size]
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(N, H, generator=g), torch.randn(v, H, generator=g)
    xt, wt = torch.randn(N, HT, generator=g), torch.randn(v, HT, generator=g)
    errors = []
    for kwargs in (dict(temperature=1.0 + rank),  # options differ across ranks
                   dict(divergence="kl") if rank == 1 else {},  # one rank's local error
                   dict(teacher_weight=wt[:2]) if rank == 0 else {}):
        opts = dict(teacher_input=xt, teacher_weight=_shard(wt, rank, split))
        opts.update(kwargs)
        try:
            ce.linear_distillation_loss(x, _shard(w, rank, split), group=dist.group.WORLD, **opts)
        except ce.ArgumentError as exc:
            errors.append(str(exc))
    return errors


def test_disagreement_and_local_errors_raise_on_every_rank(rank_pool):
    results = rank_pool(2).run(_disagree_job, None)
    for errors in results:
        assert len(errors) == 3
        assert "temperature" in errors[0]
        assert "rank 1" in errors[1] and "divergence" in errors[1]
        assert "rank 0" in errors[2] and "teacher_weight" in errors[2]
