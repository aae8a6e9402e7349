"""Partial FC (margin heads with ``group=``) on 2 and 4 Gloo ranks vs one float64 process.

Each rank holds its own batch (uneven sizes, some ranks with none) and its class shard
(``C // W``, one more on the first ``C % W`` ranks). The oracle is one process holding the
global batch and every (sampled) class, with the papers' logits written out in
``test_margin.reference_logits`` and ``F.cross_entropy``. Checked on every rank: the loss;
the shard's weight gradient against its rows of the oracle's (unsampled rows exactly 0);
the embeddings' gradient divided by ``W`` (what DDP's average makes of it) against the
oracle's rows of this rank; and, with a real DDP encoder, the encoder's gradients after
DDP's average against the oracle's.
"""

from __future__ import annotations

import math
import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from test_margin import reference_logits

import crossent as ce

pytestmark = pytest.mark.slow

F64 = torch.float64
BATCHES = {2: [5, 3], 4: [4, 1, 6, 2]}
EMPTY = {2: [6, 0], 4: [0, 5, 0, 2]}  # ranks without rows (the last batch of an epoch)
CLASSES = {2: 11, 4: 13}  # shards 6+5 and 4+3+3+3
D = 6

CASES = [
    ("ArcFace", dict(scale=16.0, margin=0.5), {}),
    ("ArcFace", dict(scale=16.0, margin=0.5), dict(ignore_index=-1, label_smoothing=0.1)),
    ("CosFace", dict(scale=16.0, margin=0.35), dict(reduction="sum")),
    ("CosFace", dict(scale=16.0, margin=0.35), dict(ignore_index=-100)),  # the default index
    ("SphereFace", dict(margin=3, scale=1.5), {}),
    ("LargeMarginSoftmax", dict(margin=2, scale=0.5, annealing=1.0), {}),
    ("CombinedMargin", dict(scale=16.0, m1=1.2, m2=0.3, m3=0.1), {}),
    ("SubCenterArcFace", dict(centers=2, scale=16.0, margin=0.5), {}),
    ("ArcFace", dict(scale=16.0, margin=0.5, sample_rate=0.5), {}),
    ("ArcFace", dict(scale=16.0, margin=0.5, sample_rate=0.5),
     dict(ignore_index=-1, label_smoothing=0.2, reduction="sum")),
    ("SubCenterArcFace", dict(centers=2, scale=16.0, margin=0.5, sample_rate=0.4),
     dict(ignore_index=-1)),
    # int(0.1 * C_r) = 0 and every label on the first shard: the others keep one class each
    ("CosFace", dict(scale=16.0, margin=0.35, sample_rate=0.1), {}),
]
FIRST_SHARD_LABELS = {len(CASES) - 1}
REF_HEAD = {"ArcFace": "arcface", "CosFace": "cosface", "SphereFace": "sphereface",
            "LargeMarginSoftmax": "lsoftmax", "CombinedMargin": "combined",
            "SubCenterArcFace": "subcenter_arcface"}
SAMPLED = [i for i, (_, p, _) in enumerate(CASES) if p.get("sample_rate", 1.0) < 1.0]


def _data(n, world, case_id):
    """The global batch ``(n, D)``, labels and the full ``(C K, D)`` weight."""
    g = torch.Generator().manual_seed(100 + case_id)
    c = CLASSES[world]
    _, params, opts = CASES[case_id]
    k = params.get("centers", 1)
    x = torch.randn(n, D, generator=g, dtype=F64)
    w = torch.randn(c * k, D, generator=g, dtype=F64)
    y = torch.randint(0, 2 if case_id in FIRST_SHARD_LABELS else c, (n,), generator=g)
    if "ignore_index" in opts:
        y[1] = y[-1] = opts["ignore_index"]
    return x, w, y


def _cases_job(rank, world, job):
    batches, case_ids = job
    out = []
    start = sum(batches[:rank])
    rows = slice(start, start + batches[rank])
    for case_id in case_ids:
        head_name, params, opts = CASES[case_id]
        x, w, y = _data(sum(batches), world, case_id)
        head = getattr(ce, head_name)(CLASSES[world], D, group=dist.group.WORLD, dtype=F64,
                                      generator=torch.Generator().manual_seed(7 + rank),
                                      **params, **opts)
        head.load_global_weight(w)
        xr = x[rows].clone().requires_grad_()
        loss = head(xr, y[rows])
        loss.backward()
        out.append(dict(loss=loss.detach(), gx=xr.grad, gw=head.weight.grad,
                        classes=head.sampled_classes, start=head.class_start, end=head.class_end,
                        full=head.global_weight()))
    return out


def _oracle(x, w, y, case_id, classes):
    """Loss and gradients of one float64 process: the global batch over ``classes``."""
    head_name, params, opts = CASES[case_id]
    k = params.get("centers", 1)
    rows = (classes[:, None] * k + torch.arange(k)).reshape(-1)
    xr = x.clone().requires_grad_()
    wr = w.clone().requires_grad_()
    ignore = opts.get("ignore_index", -100)
    valid = y != ignore
    y_step = torch.where(valid, torch.searchsorted(classes, y.clamp(min=0)), y)
    ref = {kk: v for kk, v in params.items() if kk != "sample_rate"}
    logits = reference_logits(REF_HEAD[head_name], xr, wr[rows], torch.where(valid, y_step, 0),
                              **ref)
    loss = F.cross_entropy(logits, y_step, ignore_index=ignore,
                           reduction=opts.get("reduction", "mean"),
                           label_smoothing=opts.get("label_smoothing", 0.0))
    gx, gw = torch.autograd.grad(loss, (xr, wr))
    return loss.detach(), gx, gw


def _check_against_oracle(world, batches, case_ids, results):
    starts = [sum(batches[:r]) for r in range(world)]
    for i, case_id in enumerate(case_ids):
        head_name, params, _ = CASES[case_id]
        k = params.get("centers", 1)
        per_rank = [r[i] for r in results]
        x, w, y = _data(sum(batches), world, case_id)
        # the shards: contiguous, in rank order, C // W and one more on the first C % W ranks
        base, extra = divmod(CLASSES[world], world)
        assert [r["end"] - r["start"] for r in per_rank] == \
            [base + (rank < extra) for rank in range(world)]
        assert [r["start"] for r in per_rank[1:]] == [r["end"] for r in per_rank[:-1]]
        for r in per_rank:
            torch.testing.assert_close(r["full"], w, rtol=0, atol=0)  # global_weight()
        classes = torch.cat([r["classes"] for r in per_rank])
        assert torch.equal(classes, classes.sort().values)  # rank order = class order
        positives = y[(y >= 0)].unique()
        assert torch.isin(positives, classes).all(), "every positive is sampled"
        if params.get("sample_rate", 1.0) == 1.0:
            assert torch.equal(classes, torch.arange(CLASSES[world]))
        else:
            assert classes.numel() < CLASSES[world]
            assert all(r["classes"].numel() >= 1 for r in per_rank), "every shard takes part"
        loss, gx, gw = _oracle(x, w, y, case_id, classes)
        for rank, r in enumerate(per_rank):
            where = f"{head_name} case {case_id}, rank {rank} of {world}, batches {batches}"
            torch.testing.assert_close(r["loss"], loss, rtol=1e-10, atol=1e-12, msg=where)
            n_r = batches[rank]
            torch.testing.assert_close(r["gx"] / world, gx[starts[rank]:starts[rank] + n_r],
                                       rtol=1e-9, atol=1e-12, msg=where)
            shard = gw[r["start"] * k:r["end"] * k]
            torch.testing.assert_close(r["gw"], shard, rtol=1e-9, atol=1e-12, msg=where)
            sampled = torch.zeros(r["end"] - r["start"], dtype=torch.bool)
            sampled[r["classes"] - r["start"]] = True
            unsampled_rows = (~sampled).repeat_interleave(k)
            assert (r["gw"][unsampled_rows] == 0).all(), where
            assert (r["gw"][~unsampled_rows].abs().sum(1) > 0).any(), where


@pytest.mark.parametrize("world", [2, 4])
def test_partial_fc_equals_one_process(rank_pool, world):
    case_ids = list(range(len(CASES)))
    results = rank_pool(world).run(_cases_job, (BATCHES[world], case_ids))
    _check_against_oracle(world, BATCHES[world], case_ids, results)


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_without_rows(rank_pool, world):
    case_ids = [0, 7] + SAMPLED
    results = rank_pool(world).run(_cases_job, (EMPTY[world], case_ids))
    _check_against_oracle(world, EMPTY[world], case_ids, results)


# ------------------------------------------------------------- DDP end to end

ENC_IN = 5


def _encoder_data(world):
    g = torch.Generator().manual_seed(31)
    n, c = sum(BATCHES[world]), CLASSES[world]
    inputs = torch.randn(n, ENC_IN, generator=g, dtype=F64)
    enc_w = torch.randn(D, ENC_IN, generator=g, dtype=F64)
    enc_b = torch.randn(D, generator=g, dtype=F64)
    w = torch.randn(c, D, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    return inputs, enc_w, enc_b, w, y


def _encoder(enc_w, enc_b):
    enc = torch.nn.Linear(ENC_IN, D, dtype=F64)
    with torch.no_grad():
        enc.weight.copy_(enc_w)
        enc.bias.copy_(enc_b)
    return enc


def _ddp_job(rank, world, sample_rate):
    from torch.nn.parallel import DistributedDataParallel as DDP

    inputs, enc_w, enc_b, w, y = _encoder_data(world)
    model = DDP(_encoder(enc_w, enc_b))  # averages the encoder's gradients over the ranks
    head = ce.ArcFace(CLASSES[world], D, group=dist.group.WORLD, dtype=F64, scale=16.0,
                      margin=0.5, sample_rate=sample_rate,
                      generator=torch.Generator().manual_seed(3 + rank))  # not under DDP
    head.load_global_weight(w)
    start = sum(BATCHES[world][:rank])
    rows = slice(start, start + BATCHES[world][rank])
    loss = head(model(inputs[rows]), y[rows])
    loss.backward()
    return dict(loss=loss.detach(), enc_w=model.module.weight.grad, enc_b=model.module.bias.grad,
                gw=head.weight.grad, classes=head.sampled_classes, start=head.class_start,
                end=head.class_end)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_ddp_encoder_gradients_equal_one_process(rank_pool, world, sample_rate):
    results = rank_pool(world).run(_ddp_job, sample_rate)
    inputs, enc_w, enc_b, w, y = _encoder_data(world)
    classes = torch.cat([r["classes"] for r in results])
    enc = _encoder(enc_w, enc_b)
    wr = w.clone().requires_grad_()
    y_step = torch.searchsorted(classes, y)
    logits = reference_logits("arcface", enc(inputs), wr[classes], y_step, scale=16.0,
                              margin=0.5)
    loss = F.cross_entropy(logits, y_step)
    loss.backward()
    for rank, r in enumerate(results):
        where = f"rank {rank} of {world}, sample_rate {sample_rate}"
        torch.testing.assert_close(r["loss"], loss.detach(), rtol=1e-10, atol=1e-12, msg=where)
        torch.testing.assert_close(r["enc_w"], enc.weight.grad, rtol=1e-9, atol=1e-12, msg=where)
        torch.testing.assert_close(r["enc_b"], enc.bias.grad, rtol=1e-9, atol=1e-12, msg=where)
        torch.testing.assert_close(r["gw"], wr.grad[r["start"]:r["end"]], rtol=1e-9, atol=1e-12,
                                   msg=where)


# -------------------------------------------------------------- helpers


def test_shards_follow_the_documented_split():
    from crossent.partial_fc import shard_range, shard_rows

    assert [shard_range(13, r, 4) for r in range(4)] == [(0, 4), (4, 7), (7, 10), (10, 13)]
    assert [shard_range(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]
    assert [shard_rows(11, r, 2, centers=3) for r in range(2)] == [slice(0, 18), slice(18, 33)]


def test_load_global_weight_checks_the_shape_and_copies():
    head = ce.SubCenterArcFace(4, 3, centers=2, dtype=F64)
    full = torch.randn(8, 3, dtype=F64)
    before = full.clone()
    head.load_global_weight(full)
    assert torch.equal(head.weight.detach(), full) and torch.equal(full, before)
    assert torch.equal(head.global_weight(), full)
    with pytest.raises(ce.ArgumentError, match=r"full weight of shape \[8, 3\]"):
        head.load_global_weight(torch.randn(4, 3, dtype=F64))


# ------------------------------------------------------------- disagreements


CLASSES_9_LAST = {2: 5, 4: 7}  # the first class of the last shard of 9 classes


def _mismatch_job(rank, world, scenario):
    c, d, dtype, kind = 9, D, F64, ce.ArcFace
    last = rank == world - 1
    opts = {}
    if scenario == "dim" and last:
        d = D + 1
    if scenario == "classes" and rank == 0:
        c = 10
    if scenario == "dtype" and rank == 1:
        dtype = torch.float32
    if scenario == "head" and rank == 0:
        kind = ce.CosFace
    if scenario == "scale" and last:
        opts = dict(scale=32.0)
    if scenario == "sample_rate" and last:
        opts = dict(sample_rate=0.5)
    if scenario == "budget" and last:
        opts = dict(memory_budget=-5)
    if scenario == "zero_norm_sampled":
        opts = dict(sample_rate=0.5)
    head = kind(c, d, group=dist.group.WORLD, dtype=dtype, **opts)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(3 + rank, d, dtype=dtype, generator=g, requires_grad=True)
    y = torch.randint(0, 9, (3 + rank,), generator=g)
    if scenario == "target" and rank == 0:
        y[0] = 9  # out of range
    if scenario.startswith("zero_norm") and last:
        with torch.no_grad():
            head.weight[0] = 0  # class head.class_start
    if scenario == "zero_norm_sampled" and rank == 0:
        y[0] = CLASSES_9_LAST[world]  # a positive, hence sampled
    t0 = time.monotonic()
    try:
        loss = head(x, y)
        loss.backward()
    except Exception as exc:  # noqa: BLE001 - the error type and message are checked
        return type(exc).__name__, str(exc), time.monotonic() - t0
    return "ok", float(loss.detach()), time.monotonic() - t0


MISMATCHES = {
    "dim": "embedding_dim",
    "classes": "num_classes",
    "dtype": "dtype",
    "head": "disagree on head (rank 0: 'cosface'",
    "scale": "disagree on margins",
    "sample_rate": "disagree on sample_rate",
    "target": "out of bounds",
    "budget": "memory_budget must be a positive int",
    "zero_norm": "has norm 0.0",
    "zero_norm_sampled": "sampled class weights with a zero or non-finite norm (rank",
}


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("scenario", list(MISMATCHES))
def test_mismatched_calls_fail_on_every_rank(rank_pool, world, scenario):
    pool = rank_pool(world)
    results = pool.run(_mismatch_job, scenario, timeout=60)
    # the same error everywhere (after the context, which names each rank's own head class)
    assert len({(k, m.split("): ", 1)[-1]) for k, m, _ in results}) == 1, results
    kind, message, _ = results[0]
    assert kind == "ArgumentError", (kind, message)
    assert MISMATCHES[scenario] in message, message
    assert all(seconds < 10 for _, _, seconds in results), results
    if scenario == "zero_norm":
        assert f"class {CLASSES_9_LAST[world]}" in message, message
    if scenario == "zero_norm_sampled":
        assert f"rank {world - 1}: class {CLASSES_9_LAST[world]})" in message, message
    # the group is still usable: the collectives stayed in step
    (kind, value, _), *_ = pool.run(_mismatch_job, "ok", timeout=60)
    assert kind == "ok" and math.isfinite(value)


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
