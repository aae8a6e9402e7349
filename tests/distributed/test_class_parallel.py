"""Class-parallel (vocabulary-parallel) cross-entropy on 2 and 4 Gloo ranks vs one process.

Every option of ``cross_entropy(group=...)`` and ``linear_cross_entropy(group=...)`` is one
case; all cases of a world size run in one job (spawning costs seconds). The expected
values come from one float64 process holding all classes, written with plain PyTorch:
``F.linear`` + ``F.cross_entropy`` (+ the z-loss, soft-cap and statistics formulas).
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import crossent as ce
import oracle

pytestmark = pytest.mark.slow

SPLITS = {2: [4, 7], 4: [3, 6, 1, 5]}  # uneven class shards; C = 11 and 15
N, H, IGNORE = 9, 5, -100


# ------------------------------------------------------------------ the oracle


_ORACLE_OPTIONS = ("reduction", "ignore_index", "label_smoothing", "z_loss", "softcap",
                   "logit_scale", "all_ignored")


def reference(logits, target, case, weight=None):
    """Loss (and statistics) of one process holding every class, in plain PyTorch."""
    options = {k: case[k] for k in _ORACLE_OPTIONS if k in case}
    options.setdefault("ignore_index", IGNORE)
    loss = oracle.cross_entropy(logits, target, weight=weight, float64=False, **options)
    return loss, oracle.statistics(logits, logit_scale=case.get("logit_scale", 1.0),
                                   softcap=case.get("softcap"))


def _upstream(loss, g):
    """A scalar to backpropagate: ``loss`` itself, or a fixed weighting of per-row losses."""
    return loss if loss.dim() == 0 else (loss * g[: loss.numel()].reshape(loss.shape)).sum()


def _shard(t, rank, split, dim):
    start = sum(split[:rank])
    return t.narrow(dim, start, split[rank])


# ------------------------------------------------------------------ the cases


def _targets(g, total, shape=(N,)):
    y = torch.randint(0, total, shape, generator=g)
    flat = y.view(-1)
    flat[1] = IGNORE
    flat[-2] = IGNORE
    return y


def _cases(world_size):
    """(name, kind, data, options) for every option, at this world size."""
    g = torch.Generator().manual_seed(100 + world_size)
    total = sum(SPLITS[world_size])
    f64 = dict(dtype=torch.float64)

    def logits(*shape):
        return torch.randn(*shape, generator=g, **f64) * 2

    def probs(*shape, dim=1):
        return torch.softmax(torch.randn(*shape, generator=g, **f64) * 2, dim)

    def weight():
        return torch.rand(total, generator=g, **f64) + 0.5

    upstream = torch.randn(N * 3, generator=g, **f64)
    cases = []

    def add(name, kind, options, **data):
        cases.append({"name": name, "kind": kind, "options": options, "upstream": upstream,
                      **data})

    # -- given logits: cross_entropy(group=...)
    add("ce_default", "ce", {}, logits=logits(N, total), target=_targets(g, total))
    add("ce_weight_smoothing", "ce", {"label_smoothing": 0.1}, logits=logits(N, total),
        target=_targets(g, total), weight=weight())
    add("ce_sum_zloss_softcap_scale", "ce",
        {"reduction": "sum", "z_loss": 0.01, "softcap": 3.0, "logit_scale": 1.5},
        logits=logits(N, total), target=_targets(g, total))
    add("ce_none_weight_smoothing", "ce", {"reduction": "none", "label_smoothing": 0.2},
        logits=logits(N, total), target=_targets(g, total), weight=weight())
    add("ce_probs_weight_smoothing", "ce", {"label_smoothing": 0.1}, logits=logits(N, total),
        target=probs(N, total), weight=weight())
    add("ce_probs_none_zloss", "ce", {"reduction": "none", "z_loss": 0.05},
        logits=logits(N, total), target=probs(N, total))
    add("ce_stats_softcap", "ce", {"return_stats": True, "softcap": 2.5}, logits=logits(N, total),
        target=_targets(g, total))
    ties = logits(N, total)
    ties[0, :] = 1.0  # every class ties: the argmax is global class 0
    ties[2, [0, total - 1]] = ties[2].max() + 1  # first and last shard tie
    add("ce_stats_ties", "ce", {"return_stats": True}, logits=ties, target=_targets(g, total))
    add("ce_kdim_weight", "ce", {"label_smoothing": 0.05}, logits=logits(N, total, 3),
        target=_targets(g, total, (N, 3)), weight=weight())
    add("ce_1d", "ce", {"z_loss": 0.1}, logits=logits(total), target=torch.tensor(total - 1))
    add("ce_ignore_index_is_a_class", "ce", {"ignore_index": 2, "reduction": "sum"},
        logits=logits(N, total), target=torch.randint(0, total, (N,), generator=g))
    add("ce_all_ignored_zero", "ce", {"all_ignored": "zero", "label_smoothing": 0.1},
        logits=logits(N, total), target=torch.full((N,), IGNORE))
    add("ce_module_weight", "ce", {"module": True, "label_smoothing": 0.1, "z_loss": 0.01},
        logits=logits(N, total), target=_targets(g, total), weight=weight())
    add("ce_all_ignored_nan", "ce", {}, logits=logits(N, total), target=torch.full((N,), IGNORE))

    # -- fused linear: linear_cross_entropy(group=...)
    def lin(name, options, *, bias=True, target=None, weight_=None, x=None, **extra):
        add(name, "linear", options, x=x if x is not None else torch.randn(N, H, generator=g, **f64),
            w=torch.randn(total, H, generator=g, **f64),
            b=torch.randn(total, generator=g, **f64) if bias else None,
            target=target if target is not None else _targets(g, total), weight=weight_, **extra)

    lin("lin_default_bias", {})
    lin("lin_weight_smoothing_zloss_softcap",
        {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 4.0}, weight_=weight())
    lin("lin_sum_scale", {"reduction": "sum", "logit_scale": 0.7}, bias=False)
    lin("lin_none", {"reduction": "none", "label_smoothing": 0.1}, weight_=weight())
    lin("lin_probs_weight_smoothing", {"label_smoothing": 0.1}, target=probs(N, total),
        weight_=weight())
    lin("lin_probs_none_zloss", {"reduction": "none", "z_loss": 0.02}, target=probs(N, total))
    lin("lin_stats", {"return_stats": True, "softcap": 3.0})
    lin("lin_tiled", {"token_chunk_size": 4, "vocab_chunk_size": 2, "label_smoothing": 0.1,
                      "z_loss": 0.01}, weight_=weight())
    lin("lin_tiled_none", {"reduction": "none", "token_chunk_size": 2, "vocab_chunk_size": 3})
    lin("lin_all_ignored_zero", {"all_ignored": "zero"}, target=torch.full((N,), IGNORE))
    lin("lin_1d", {"z_loss": 0.1}, x=torch.randn(H, generator=g, **f64),
        target=torch.tensor(3))
    lin("lin_no_input_grad", {"label_smoothing": 0.3}, x_grad=False)
    # float32 through the Triton backend (its CPU interpreter here: slow, so on 2 ranks)
    if world_size == 2:
        lin("lin_triton_float32", {"backend": "triton", "label_smoothing": 0.1,
                                   "z_loss": 0.01, "softcap": 5.0, "return_stats": True},
            weight_=weight(), float32=True)
    for case in cases:  # float32 cases: the oracle sees the same (rounded) values
        if case.get("float32"):
            for key in ("x", "w", "b", "weight"):
                if case.get(key) is not None:
                    case[key] = case[key].float().double()
    return cases


# ------------------------------------------------------------ the rank side


def _run_case(rank, world_size, case):
    split = SPLITS[world_size]
    opts = dict(case["options"])
    opts["group"] = dist.group.WORLD
    target = case["target"]
    weight = _shard(case["weight"], rank, split, 0) if case.get("weight") is not None else None
    out = {}
    if case["kind"] == "ce":
        c_dim = 0 if case["logits"].dim() == 1 else 1
        logits = _shard(case["logits"], rank, split, c_dim).clone().requires_grad_()
        if target.is_floating_point():
            target = _shard(target, rank, split, c_dim).clone().requires_grad_()
        if opts.pop("module", False):
            res = ce.CrossEntropyLoss(weight=weight, **opts)(logits, target)
        else:
            res = ce.cross_entropy(logits, target, weight=weight, **opts)
        loss, stats = res if opts.get("return_stats") else (res, None)
        _upstream(loss, case["upstream"]).backward()
        out["grads"] = {"logits": logits.grad}
        if target.is_floating_point():
            out["grads"]["target"] = target.grad
    else:
        dtype = torch.float32 if case.get("float32") else torch.float64
        x = case["x"].to(dtype).requires_grad_(case.get("x_grad", True))
        w = _shard(case["w"], rank, split, 0).to(dtype).requires_grad_()
        b = _shard(case["b"], rank, split, 0).to(dtype).requires_grad_() if case["b"] is not None else None
        weight = weight.to(dtype) if weight is not None else None
        if target.is_floating_point():
            target = _shard(target, rank, split, target.dim() - 1)
        res = ce.linear_cross_entropy(x, w, target, linear_bias=b, weight=weight, **opts)
        loss, stats = res if opts.get("return_stats") else (res, None)
        _upstream(loss, case["upstream"]).backward()
        out["grads"] = {"x": x.grad, "w": w.grad, "b": b.grad if b is not None else None}
    out["loss"] = loss.detach()
    out["stats"] = tuple(stats) if stats is not None else None
    return out


def _cases_job(rank, world_size, cases):
    results = {}
    for case in cases:
        results[case["name"]] = _run_case(rank, world_size, case)
    return results


def _expected(case, world_size):
    """Loss, statistics and every gradient from one process holding all classes."""
    split = SPLITS[world_size]
    opts = case["options"]
    weight = case.get("weight")
    target = case["target"]
    if case["kind"] == "ce":
        logits = case["logits"].clone().requires_grad_()
        if target.is_floating_point():
            target = target.clone().requires_grad_()
        loss, stats = reference(logits, target, opts, weight)
        _upstream(loss, case["upstream"]).backward()
        c_dim = 0 if logits.dim() == 1 else 1
        grads = [{"logits": _shard(logits.grad, r, split, c_dim)} for r in range(world_size)]
        if target.is_floating_point():
            for r in range(world_size):
                grads[r]["target"] = _shard(target.grad, r, split, c_dim)
    else:
        x = case["x"].clone().requires_grad_(case.get("x_grad", True))
        w = case["w"].clone().requires_grad_()
        b = case["b"].clone().requires_grad_() if case["b"] is not None else None
        loss, stats = reference(F.linear(x, w, b), target, opts, weight)
        _upstream(loss, case["upstream"]).backward()
        grads = [{"x": x.grad, "w": _shard(w.grad, r, split, 0),
                  "b": _shard(b.grad, r, split, 0) if b is not None else None}
                 for r in range(world_size)]
    return loss.detach(), stats, grads


@pytest.mark.parametrize("world_size", [2, 4])
def test_every_option_matches_one_process(rank_pool, world_size):
    cases = _cases(world_size)
    results = rank_pool(world_size).run(_cases_job, cases)
    checked = 0
    for case in cases:
        loss, stats, grads = _expected(case, world_size)
        tol = dict(rtol=2e-5, atol=2e-5) if case.get("float32") else {}

        def close(a, b, msg):
            torch.testing.assert_close(a.double(), b, msg=msg, **tol)

        for rank in range(world_size):
            got = results[rank][case["name"]]
            msg = f"{case['name']} on rank {rank} of {world_size}"
            if case["name"].endswith("all_ignored_nan"):
                assert math.isnan(got["loss"]) and math.isnan(loss), msg
            else:
                close(got["loss"], loss, msg)
            if case["options"].get("return_stats"):
                close(got["stats"][0], stats[0], msg)
                close(got["stats"][1], stats[1], msg)
                assert torch.equal(got["stats"][2], stats[2]), msg
            for key, expect in grads[rank].items():
                if case["name"].endswith("all_ignored_nan"):
                    continue
                if expect is None:
                    assert got["grads"][key] is None, (msg, key)
                    continue
                close(got["grads"][key], expect, f"{msg}: grad {key}")
                checked += 1
            # the same value on every rank, bit for bit
            assert torch.equal(got["loss"], results[0][case["name"]]["loss"]) or math.isnan(loss)
    assert checked > 3 * len(cases)


def test_tie_case_really_ties():
    """The tie case is what it claims: row 0 ties everywhere, row 2 across first/last shard."""
    for world_size in (2, 4):
        case = next(c for c in _cases(world_size) if c["name"] == "ce_stats_ties")
        z = case["logits"]
        assert (z[0] == z[0, 0]).all()
        assert z[2, 0] == z[2, -1] == z[2].max()


# ------------------------------------------------------------- disagreements


def _mismatch_job(rank, world_size, scenario):
    split = SPLITS[world_size]
    total = sum(split)
    group = dist.group.WORLD
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, H, generator=g, dtype=torch.float64)
    w_full = torch.randn(total, H, generator=g, dtype=torch.float64)
    z_full = torch.randn(N, total, generator=g, dtype=torch.float64)
    y = torch.randint(0, total, (N,), generator=g)
    w = _shard(w_full, rank, split, 0).clone().requires_grad_()
    z = _shard(z_full, rank, split, 1).clone().requires_grad_()
    last = rank == world_size - 1
    start = time.perf_counter()
    try:
        if scenario == "ce_rows":
            ce.cross_entropy(z[: N - 1] if last else z, y[: N - 1] if last else y, group=group)
        elif scenario == "ce_dtype":
            ce.cross_entropy(z.float() if last else z, y, group=group)
        elif scenario == "ce_smoothing":
            ce.cross_entropy(z, y, label_smoothing=0.1 if last else 0.0, group=group)
        elif scenario == "ce_targets":
            ce.cross_entropy(z, (y + 1) % total if last else y, group=group)
        elif scenario == "ce_local_error":
            ce.cross_entropy(z, y, label_smoothing=2.0 if last else 0.0, group=group)
        elif scenario == "ce_bad_weight":
            weight = torch.ones(split[rank] + (1 if last else 0), dtype=torch.float64)
            ce.cross_entropy(z, y, weight=weight, group=group)
        elif scenario == "ce_out_of_bounds":
            ce.cross_entropy(z, torch.full((N,), total), group=group)
        elif scenario == "ce_empty_shard":
            ce.cross_entropy(z[:, :0] if last else z, y, group=group)
        elif scenario == "lin_hidden":
            ce.linear_cross_entropy(x[:, :-1] if last else x, w[:, :-1] if last else w, y,
                                    group=group)
        elif scenario == "lin_input_grad":
            ce.linear_cross_entropy(x.requires_grad_(not last), w, y, group=group)
        elif scenario == "lin_targets":
            yy = y.clone()
            if last:
                yy[4] = IGNORE
            ce.linear_cross_entropy(x, w, yy, group=group)
        elif scenario == "lin_tile_budget":  # a local option checked before any collective
            ce.linear_cross_entropy(x, w, y, memory_budget=-5 if last else None, group=group)
        elif scenario == "ok_after_errors":
            loss = ce.linear_cross_entropy(x, w, y, group=group)
            return ("ok", float(loss), time.perf_counter() - start)
    except Exception as exc:
        return (type(exc).__name__, str(exc), time.perf_counter() - start)
    return ("no error", "", time.perf_counter() - start)


MISMATCHES = {
    "ce_rows": ("ArgumentError", "disagree on rows (rank 0: [9]"),
    "ce_dtype": ("ArgumentError", "dtype (rank 0: 'torch.float64'"),
    "ce_smoothing": ("ArgumentError", "label_smoothing (rank 0: 0.0"),
    "ce_targets": ("ArgumentError", "target must be the same on every rank"),
    "ce_local_error": ("ArgumentError", "label_smoothing must be between 0.0 and 1.0"),
    "ce_bad_weight": ("ArgumentError", "weight tensor should be defined"),
    "ce_out_of_bounds": ("TargetIndexError", "out of bounds"),
    "ce_empty_shard": ("ArgumentError", "every rank must hold at least one class"),
    "lin_hidden": ("ArgumentError", "hidden (rank 0: 5"),
    "lin_input_grad": ("ArgumentError", "input_grad (rank 0: True"),
    "lin_targets": ("ArgumentError", "1 of 9 elements differ (first at flat index 4"),
    "lin_tile_budget": ("ArgumentError", "memory_budget must be a positive int or None, got -5"),
}


@pytest.mark.parametrize("world_size", [2, 4])
def test_mismatched_calls_fail_on_every_rank_within_seconds(rank_pool, world_size):
    pool = rank_pool(world_size)
    for scenario, (kind, text) in MISMATCHES.items():
        out = pool.run(_mismatch_job, scenario, timeout=60)
        assert len({(k, m) for k, m, _ in out}) == 1, (scenario, out)  # the same everywhere
        got_kind, message, _ = out[0]
        assert got_kind == kind and text in message, (scenario, message)
        assert all(seconds < 5 for _, _, seconds in out), (scenario, out)
    (kind, value, _), *_ = pool.run(_mismatch_job, "ok_after_errors")
    assert kind == "ok" and math.isfinite(value)


def test_group_none_is_the_single_process_path():
    """Without a group nothing distributed runs (no process group exists here)."""
    assert not dist.is_initialized()
    z = torch.randn(4, 6, dtype=torch.float64)
    y = torch.tensor([0, 5, IGNORE, 2])
    torch.testing.assert_close(ce.cross_entropy(z, y, group=None), F.cross_entropy(z, y))
