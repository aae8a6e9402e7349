"""linear_token_log_probs(group=...): the classes sharded over 2 and 4 Gloo ranks (uneven
splits), against one float64 process holding every class (full logits written here:
``F.linear``, ``log_softmax``, gather, ``-sum p log p``).

The contract of ``linear_cross_entropy(group=)``: ``input`` and ``target`` the same on every
rank, each rank a contiguous slice of the classes of the weight and bias; every rank
returns the global log-probabilities and entropy (the same bits), the weight and bias get
their slice of the global gradient and ``input`` the full one, for upstream gradients on
either output or both.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import crossent as ce
from crossent.core.tiles import plan_tiles

pytestmark = pytest.mark.slow

IGNORE = -100
SPLITS = {2: [30, 47], 4: [20, 9, 31, 17]}  # uneven class shards, V = 77
TILED = {2: [600, 700], 4: [600, 530, 700, 560]}  # shards of two vocabulary tiles and more
USES = {"both": (1.0, 1.0), "log_probs": (1.0, 0.0), "entropy": (0.0, 1.0)}


def _shard(t, rank, split):
    return t.narrow(0, sum(split[:rank]), split[rank])


def _case(name, split, *, shape=(2, 5), hidden=6, temperature=0.7, use="both", bias=True,
          entropy=True, seed=0, top1_hits=0, **options):
    g = torch.Generator().manual_seed(seed)
    vocab = sum(split)
    x = torch.randn(*shape, hidden, generator=g, dtype=torch.float64)
    w = torch.randn(vocab, hidden, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(vocab, generator=g, dtype=torch.float64) if bias else None
    target = torch.randint(0, vocab, shape, generator=g)
    flat = target.view(-1)
    flat[2:2 + top1_hits] = F.linear(x, w, b).reshape(-1, vocab)[2:2 + top1_hits].argmax(-1)
    flat[1] = IGNORE
    return dict(
        name=name, split=split, temperature=temperature, use=use, entropy=entropy,
        options=options, x=x, w=w, b=b, target=target,
        g1=torch.randn(shape, generator=g, dtype=torch.float64),
        g2=torch.randn(shape, generator=g, dtype=torch.float64),
    )


def _cases(world_size):
    split, tiled = SPLITS[world_size], TILED[world_size]
    return [
        _case("both", split),
        _case("log_probs_only", split, use="log_probs", seed=1, temperature=1.0),
        _case("entropy_only", split, use="entropy", seed=2, temperature=2.5),
        _case("no_entropy", split, entropy=False, use="log_probs", seed=3, bias=False),
        _case("tokens_2d", split, shape=(11,), seed=4),
        _case("tiled_vocab", tiled, seed=5, hidden=8, memory_budget=4000),
        _case("extras", split, seed=6, top1_hits=4, extras=("mean_logits", "is_top1")),
        _case("softcap_scale", split, seed=7, softcap=2.0, logit_scale=1.4),
        _case("extras_capped", split, seed=8, top1_hits=4, softcap=3.0,
              extras=("mean_logits", "is_top1", "log_sum_sq_probs")),
    ]


def _loss(lp, ent, case):
    a, e = USES[case["use"]]
    out = (lp * case["g1"]).sum() * a
    return out if ent is None else out + (ent * case["g2"]).sum() * e


def _job(rank, world_size, cases):
    results = {}
    for case in cases:
        split = case["split"]
        x = case["x"].clone().requires_grad_()
        w = _shard(case["w"], rank, split).clone().requires_grad_()
        b = None if case["b"] is None else _shard(case["b"], rank, split).clone().requires_grad_()
        out = ce.linear_token_log_probs(x, w, case["target"], linear_bias=b,
                                        temperature=case["temperature"],
                                        return_entropy=case["entropy"], group=dist.group.WORLD,
                                        **case["options"])
        extras = {}
        if "extras" in case["options"]:
            extras = dict(mean=out.mean_logits, top1=out.is_top1)
            if out.log_sum_sq_probs is not None:
                extras["sq"] = out.log_sum_sq_probs
            out = out[:2]
        lp, ent = out if case["entropy"] else (out, None)
        _loss(lp, ent, case).backward()
        results[case["name"]] = dict(
            lp=lp.detach(), ent=None if ent is None else ent.detach(), x=x.grad, w=w.grad,
            b=None if b is None else b.grad, **extras)
    return results


def _expected(case):
    x = case["x"].clone().requires_grad_()
    w = case["w"].clone().requires_grad_()
    b = None if case["b"] is None else case["b"].clone().requires_grad_()
    y = F.linear(x, w, b) * case["options"].get("logit_scale", 1.0)
    cap = case["options"].get("softcap")
    z = (y if cap is None else cap * torch.tanh(y / cap)) / case["temperature"]
    log_p = torch.log_softmax(z, -1)
    target = case["target"]
    valid = target != IGNORE
    extras = dict(mean=z.detach().mean(-1) * valid, top1=(z.argmax(-1) == target) & valid,
                  sq=torch.logsumexp(2 * log_p.detach(), -1) * valid)
    lp = log_p.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * valid
    ent = -(log_p.exp() * log_p).sum(-1) * valid if case["entropy"] else None
    _loss(lp, ent, case).backward()
    return dict(lp=lp.detach(), ent=None if ent is None else ent.detach(), x=x.grad, w=w.grad,
                b=None if b is None else b.grad, **extras)


def test_the_tiled_case_tiles_every_shard():
    for split in TILED.values():
        for v in split:  # 3 tile buffers with the entropy (see crossent.kernels.torch_chunked)
            plan = plan_tiles(10, v, kind="linear_recompute", device=torch.device("cpu"),
                              buffers=3, memory_budget=4000, accumulator_width=8)
            assert plan.cols < v


@pytest.mark.parametrize("world_size", [2, 4])
def test_sharded_classes_match_one_float64_process(rank_pool, world_size):
    cases = _cases(world_size)
    results = rank_pool(world_size).run(_job, cases)
    for case in cases:
        want = _expected(case)
        split = case["split"]
        for rank in range(world_size):
            got = results[rank][case["name"]]
            msg = f"{case['name']} on rank {rank} of {world_size}"
            torch.testing.assert_close(got["lp"], want["lp"], msg=msg)
            assert (got["lp"] <= 0).all(), msg
            assert torch.equal(got["lp"], results[0][case["name"]]["lp"]), msg  # same bits
            if case["entropy"]:
                torch.testing.assert_close(got["ent"], want["ent"], msg=msg)
                assert torch.equal(got["ent"], results[0][case["name"]]["ent"]), msg
            if "mean" in got:
                torch.testing.assert_close(got["mean"], want["mean"], msg=msg)
                assert torch.equal(got["top1"], want["top1"]) and want["top1"].sum() >= 3, msg
            if "sq" in got:
                torch.testing.assert_close(got["sq"], want["sq"], msg=msg)
            torch.testing.assert_close(got["x"], want["x"], msg=f"{msg}: grad x")
            torch.testing.assert_close(got["w"], _shard(want["w"], rank, split),
                                       msg=f"{msg}: grad w")
            if case["b"] is not None:
                torch.testing.assert_close(got["b"], _shard(want["b"], rank, split),
                                           msg=f"{msg}: grad b")
