"""Partial FC (margin heads with ``group=``) on 2 and 4 Gloo ranks vs one float64 process.

Each rank holds its own batch (uneven sizes) and its class shard (``C // W``, one more on
the first ``C % W`` ranks). The oracle is one process holding the global batch and every
(sampled) class, with the papers' logits written out in ``test_margin.reference_logits``
and ``F.cross_entropy``. Checked on every rank: the loss; the shard's weight gradient
against its rows of the oracle's; the embeddings' gradient divided by ``W`` (what DDP's
average makes of it) against the oracle's rows of this rank.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import crossent as ce
from test_margin import reference_logits

F64 = torch.float64
BATCHES = {2: [5, 3], 4: [4, 1, 6, 2]}
CLASSES = {2: 11, 4: 13}  # shards 6+5 and 4+3+3+3
D = 6

CASES = [
    ("ArcFace", dict(scale=16.0, margin=0.5), {}),
    ("ArcFace", dict(scale=16.0, margin=0.5), dict(ignore_index=-1, label_smoothing=0.1)),
    ("CosFace", dict(scale=16.0, margin=0.35), dict(reduction="sum")),
    ("SphereFace", dict(margin=3, scale=1.5), {}),
    ("CombinedMargin", dict(scale=16.0, m1=1.2, m2=0.3, m3=0.1), {}),
    ("SubCenterArcFace", dict(centers=2, scale=16.0, margin=0.5), {}),
    ("ArcFace", dict(scale=16.0, margin=0.5, sample_rate=0.5), {}),
    ("SubCenterArcFace", dict(centers=2, scale=16.0, margin=0.5, sample_rate=0.4),
     dict(ignore_index=-1)),
]
REF_HEAD = {"ArcFace": "arcface", "CosFace": "cosface", "SphereFace": "sphereface",
            "CombinedMargin": "combined", "SubCenterArcFace": "subcenter_arcface"}


def _data(world, case_id):
    g = torch.Generator().manual_seed(100 + case_id)
    n, c = sum(BATCHES[world]), CLASSES[world]
    head, params, opts = CASES[case_id]
    k = params.get("centers", 1)
    x = torch.randn(n, D, generator=g, dtype=F64)
    w = torch.randn(c * k, D, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    if "ignore_index" in opts:
        y[1] = y[-1] = opts["ignore_index"]
    return x, w, y


def _cases_job(rank, world, _):
    out = []
    starts = [sum(BATCHES[world][:r]) for r in range(world)]
    for case_id, (head_name, params, opts) in enumerate(CASES):
        x, w, y = _data(world, case_id)
        k = params.get("centers", 1)
        head = getattr(ce, head_name)(CLASSES[world], D, group=dist.group.WORLD, dtype=F64,
                                      generator=torch.Generator().manual_seed(7 + rank),
                                      **params, **opts)
        with torch.no_grad():
            head.weight.copy_(w[head.class_start * k:head.class_end * k])
        rows = slice(starts[rank], starts[rank] + BATCHES[world][rank])
        xr = x[rows].clone().requires_grad_()
        loss = head(xr, y[rows])
        loss.backward()
        out.append(dict(loss=loss.detach(), gx=xr.grad, gw=head.weight.grad,
                        classes=head.sampled_classes, start=head.class_start, end=head.class_end))
    return out


def _oracle(world, case_id, classes):
    """Loss and gradients of one float64 process: the global batch over ``classes``."""
    head_name, params, opts = CASES[case_id]
    x, w, y = _data(world, case_id)
    k = params.get("centers", 1)
    rows = (classes[:, None] * k + torch.arange(k)).reshape(-1)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    ignore = opts.get("ignore_index", -100)
    valid = y != ignore
    y_step = torch.where(valid, torch.searchsorted(classes, y.clamp(min=0)), y)
    ref = {kk: v for kk, v in params.items() if kk not in ("sample_rate",)}
    logits = reference_logits(REF_HEAD[head_name], xr, wr[rows], torch.where(valid, y_step, 0),
                              **ref)
    loss = F.cross_entropy(logits, y_step, ignore_index=ignore,
                           reduction=opts.get("reduction", "mean"),
                           label_smoothing=opts.get("label_smoothing", 0.0))
    gx, gw = torch.autograd.grad(loss, (xr, wr))
    return loss.detach(), gx, gw


@pytest.mark.parametrize("world", [2, 4])
def test_partial_fc_equals_one_process(rank_pool, world):
    results = rank_pool(world).run(_cases_job, None)
    starts = [sum(BATCHES[world][:r]) for r in range(world)]
    for case_id, (head_name, params, _) in enumerate(CASES):
        k = params.get("centers", 1)
        per_rank = [r[case_id] for r in results]
        classes = torch.cat([r["classes"] for r in per_rank])
        assert torch.equal(classes, classes.sort().values)  # rank order = class order
        x, w, y = _data(world, case_id)
        positives = y[(y >= 0)].unique()
        assert torch.isin(positives, classes).all(), "every positive is sampled"
        if params.get("sample_rate", 1.0) == 1.0:
            assert torch.equal(classes, torch.arange(CLASSES[world]))
        else:
            assert classes.numel() < CLASSES[world]
        loss, gx, gw = _oracle(world, case_id, classes)
        for rank, r in enumerate(per_rank):
            where = f"{head_name} case {case_id}, rank {rank} of {world}"
            torch.testing.assert_close(r["loss"], loss, rtol=1e-10, atol=1e-12, msg=where)
            n_r = BATCHES[world][rank]
            torch.testing.assert_close(r["gx"] / world, gx[starts[rank]:starts[rank] + n_r],
                                       rtol=1e-9, atol=1e-12, msg=where)
            shard = gw[r["start"] * k:r["end"] * k]
            torch.testing.assert_close(r["gw"], shard, rtol=1e-9, atol=1e-12, msg=where)
            sampled = torch.zeros(r["end"] - r["start"], dtype=torch.bool)
            sampled[r["classes"] - r["start"]] = True
            unsampled_rows = (~sampled).repeat_interleave(k)
            assert (r["gw"][unsampled_rows] == 0).all(), where


def test_shards_follow_the_documented_split():
    from crossent.partial_fc import shard_range

    assert [shard_range(13, r, 4) for r in range(4)] == [(0, 4), (4, 7), (7, 10), (10, 13)]
    assert [shard_range(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]


def _mismatch_job(rank, world, scenario):
    c, d, dtype = 9, D, F64
    if scenario == "dim" and rank == world - 1:
        d = D + 1
    if scenario == "classes" and rank == 0:
        c = 10
    if scenario == "dtype" and rank == 1:
        dtype = torch.float32
    head = ce.ArcFace(c, d, group=dist.group.WORLD, dtype=dtype)
    x = torch.randn(3 + rank, d, dtype=dtype, requires_grad=True)
    y = torch.randint(0, 9, (3 + rank,))
    if scenario == "target" and rank == 0:
        y[0] = 9  # out of range
    t0 = time.monotonic()
    try:
        head(x, y)
    except Exception as exc:  # noqa: BLE001 - the error type and message are checked
        return type(exc).__name__, str(exc), time.monotonic() - t0
    return "no error", "", time.monotonic() - t0


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("scenario,expected", [
    ("dim", "embedding_dim"), ("classes", "num_classes"), ("dtype", "dtype"),
    ("target", "out of bounds"),
])
def test_mismatched_calls_fail_on_every_rank(rank_pool, world, scenario, expected):
    results = rank_pool(world).run(_mismatch_job, scenario, timeout=60)
    for rank, (kind, message, seconds) in enumerate(results):
        assert kind == "ArgumentError", (rank, kind, message)
        assert expected in message, (rank, message)
        assert seconds < 10, (rank, seconds)


def _reduction_none_job(rank, world, _):
    head = ce.ArcFace(8, D, group=dist.group.WORLD, dtype=F64, reduction="none")
    try:
        head(torch.randn(2, D, dtype=F64), torch.tensor([0, 1]))
    except ce.ArgumentError as exc:
        return str(exc)
    return ""


def test_reduction_none_is_refused_on_every_rank(rank_pool):
    for message in rank_pool(2).run(_reduction_none_job, None):
        assert "reduction='none'" in message
