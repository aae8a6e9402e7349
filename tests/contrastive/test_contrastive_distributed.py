"""Contrastive losses across 2 and 4 Gloo ranks against one process holding the global batch.

What is compared (float64), for every loss, both designs, equal and uneven local batches:

- the loss **value on every rank** against the float64 formula on the global batch
  (``contrastive_reference``, written from the papers);
- **DDP-averaged parameter gradients**: each rank encodes its local inputs with replicated
  linear encoders inside ``torch.nn.parallel.DistributedDataParallel`` (which averages the
  gradients of the encoders, ``log_scale`` and ``bias`` over the ranks); after backward
  every rank's parameter gradients must equal those of one process computing the
  reference loss of the global batch with the same parameters;
- the **local feature gradients**: what each rank's graph hands its encoder. Under the
  contract they are ``W`` times the global gradient of those rows (DDP's division by
  ``W`` then makes the encoder exact), so ``grad / W`` is compared with the rows' slice of
  the single-process feature gradient.

One spawned job per world size runs all the cases, to stay within CI's time.
"""

from __future__ import annotations

import pytest
import torch

import contrastive_reference as ref

pytestmark = pytest.mark.slow

D = torch.float64
DIN, DIM = 6, 4
LOSSES = ("clip", "clip_bias", "siglip", "info_nce", "nt_xent", "supcon")
BIASED = ("clip_bias", "siglip")
# equal, uneven, and (4 ranks) a rank with an empty local batch
SIZES = {2: ([3, 3], [4, 1]), 4: ([2, 2, 2, 2], [3, 1, 4, 2], [3, 0, 4, 2])}


def _global_inputs(total: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(total, DIN, generator=g, dtype=D)
    x2 = torch.randn(total, DIN, generator=g, dtype=D)
    neg = torch.randn(total + 1, DIN, generator=g, dtype=D)  # per-sample-ish extra negatives
    labels = torch.randint(0, 3, (total,), generator=g)
    return x1, x2, neg, labels


class _Model(torch.nn.Module):
    """Two replicated linear encoders and the learnable scale and bias."""

    def __init__(self, with_bias: bool):
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.enc1 = torch.nn.Parameter(torch.randn(DIN, DIM, generator=g, dtype=D) / DIN ** 0.5)
        self.enc2 = torch.nn.Parameter(torch.randn(DIN, DIM, generator=g, dtype=D) / DIN ** 0.5)
        self.log_scale = torch.nn.Parameter(torch.tensor(1.2, dtype=D))
        self.bias = torch.nn.Parameter(torch.tensor(-1.5, dtype=D)) if with_bias else None

    def forward(self, x1, x2, xneg):
        """Features, extra negatives' features, the scale and the bias (as open_clip's
        models return ``logit_scale.exp()`` from ``forward``, so DDP sees them used)."""
        bias = None if self.bias is None else self.bias * 1.0
        return x1 @ self.enc1, x2 @ self.enc2, xneg @ self.enc2, self.log_scale.exp(), bias


def _loss(name, f1, f2, neg, labels, scale, bias, **kw):
    """crossent's loss (``kw``: group, design, tiles) or the reference (``kw`` empty)."""
    import crossent as ce

    if not kw:
        return {
            "clip": lambda: ref.clip(f1, f2, scale),
            "clip_bias": lambda: ref.clip(f1, f2, scale, bias),
            "siglip": lambda: ref.siglip(f1, f2, scale, bias),
            "info_nce": lambda: ref.info_nce(f1, f2, neg, temperature=1 / scale),
            "nt_xent": lambda: ref.nt_xent(f1, f2, temperature=1 / scale),
            "supcon": lambda: ref.supcon(torch.stack([f1, f2], 1), labels, temperature=1 / scale),
        }[name]()
    return {
        "clip": lambda: ce.clip_loss(f1, f2, scale, **kw),
        "clip_bias": lambda: ce.clip_loss(f1, f2, scale, logit_bias=bias, **kw),
        "siglip": lambda: ce.siglip_loss(f1, f2, scale, bias, **kw),
        "info_nce": lambda: ce.info_nce(f1, f2, neg, temperature=1 / scale, **kw),
        "nt_xent": lambda: ce.nt_xent(f1, f2, temperature=1 / scale, **kw),
        "supcon": lambda: ce.supcon_loss(torch.stack([f1, f2], 1), labels, temperature=1 / scale, **kw),
    }[name]()


def _neg_slices(sizes):
    """Rank r's extra negatives: ``sizes[r] + (r == 0)`` rows (uneven on purpose)."""
    out, start = [], 0
    for r, n in enumerate(sizes):
        k = n + (1 if r == 0 else 0)
        out.append((start, start + k))
        start += k
    return out


def _rank_job(rank, world_size, cases):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    results = []
    for name, design, sizes, seed in cases:
        total = sum(sizes)
        x1, x2, neg, labels = _global_inputs(total, seed)
        start = sum(sizes[:rank])
        sl = slice(start, start + sizes[rank])
        lo, hi = _neg_slices(sizes)[rank]
        model = DDP(_Model(name in BIASED))
        f1, f2, fneg, scale, bias = model(x1[sl], x2[sl], neg[lo:hi])
        f1.retain_grad()
        f2.retain_grad()
        loss = _loss(name, f1, f2, fneg, labels[sl], scale, bias,
                     group=dist.group.WORLD, design=design, tile_rows=2, tile_cols=3)
        loss.backward()
        results.append({
            "loss": loss.detach(),
            "params": {k: p.grad.detach().clone() for k, p in model.module.named_parameters()},
            "f1": f1.grad.detach().clone(), "f2": f2.grad.detach().clone(),
        })
    return results


def _single_process(name, sizes, seed):
    total = sum(sizes)
    x1, x2, neg, labels = _global_inputs(total, seed)
    model = _Model(name in BIASED)
    f1, f2, fneg, scale, bias = model(x1, x2, neg[: _neg_slices(sizes)[-1][1]])
    f1.retain_grad()
    f2.retain_grad()
    loss = _loss(name, f1, f2, fneg, labels, scale, bias)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}, f1.grad, f2.grad


@pytest.mark.parametrize("world_size", [2, 4])
def test_every_loss_and_design_equals_one_process(rank_pool, world_size):
    cases = [(name, design, sizes, 7 + i)
             for i, sizes in enumerate(SIZES[world_size])
             for name in LOSSES for design in ("gather", "ring")]
    per_rank = rank_pool(world_size).run(_rank_job, cases, timeout=600)
    for c, (name, design, sizes, seed) in enumerate(cases):
        loss, params, g1, g2 = _single_process(name, sizes, seed)
        where = f"{name}, design={design}, sizes={sizes}"
        starts = [sum(sizes[:r]) for r in range(world_size)]
        for rank in range(world_size):
            got = per_rank[rank][c]
            torch.testing.assert_close(got["loss"], loss, rtol=1e-12, atol=1e-12,
                                       msg=lambda m: f"{where}, rank {rank} loss: {m}")
            for k, want in params.items():
                torch.testing.assert_close(got["params"][k], want, rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{where}, rank {rank} DDP grad {k}: {m}")
            sl = slice(starts[rank], starts[rank] + sizes[rank])
            for key, want in (("f1", g1), ("f2", g2)):
                torch.testing.assert_close(got[key] / world_size, want[sl], rtol=1e-10, atol=1e-12,
                                           msg=lambda m: f"{where}, rank {rank} {key} grad / W: {m}")


def _mismatch_job(rank, world_size, kind):
    import torch.distributed as dist

    import crossent as ce

    g = dist.group.WORLD
    x = torch.randn(3, 4, dtype=D)
    try:
        if kind == "dim":
            y = torch.randn(3, 4 + rank, dtype=D)
            ce.clip_loss(y, y, 2.0, group=g)
        elif kind == "dtype":
            y = x if rank == 0 else x.float()
            ce.siglip_loss(y, y, 2.0, -1.0, group=g, design="ring")
        elif kind == "local":  # only rank 1's arguments are wrong
            ce.nt_xent(x, x[:2] if rank == 1 else x, group=g)
        elif kind == "design":
            ce.clip_loss(x, x, 2.0, group=g, design="ring" if rank else "gather")
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.parametrize("kind", ["dim", "dtype", "local", "design"])
def test_mismatches_raise_on_every_rank(rank_pool, kind):
    out = rank_pool(2).run(_mismatch_job, kind, timeout=60)
    assert all(o.startswith("ArgumentError") for o in out), out
    assert out[0] == out[1]
    expected = {"dim": "dim", "dtype": "dtype", "local": "same batch size", "design": "design"}[kind]
    assert expected in out[0]
    assert "rank 0" in out[0] and "rank 1" in out[0] or kind == "local"


def _open_clip_drop_in_job(rank, world_size):
    import torch.distributed as dist

    from crossent import contrastive

    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(8, 4, generator=g, dtype=D), torch.randn(8, 4, generator=g, dtype=D)
    sl = slice(4 * rank, 4 * rank + 4)
    out = {}
    for name, module in {
        "clip": contrastive.ClipLoss(local_loss=True, gather_with_grad=True, rank=rank, world_size=world_size),
        "siglip": contrastive.SigLipLoss(rank=rank, world_size=world_size, dist_impl="bidir"),
    }.items():
        a, b = img[sl].clone().requires_grad_(), txt[sl].clone().requires_grad_()
        args = (a, b, torch.tensor(3.0, dtype=D)) + ((torch.tensor(-1.0, dtype=D),) if name == "siglip" else ())
        out[name] = module(*args).detach()
    out["group_is_world"] = module.group is dist.group.WORLD
    return out


def test_open_clip_drop_ins_use_the_default_group(rank_pool):
    out = rank_pool(2).run(_open_clip_drop_in_job, timeout=60)
    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(8, 4, generator=g, dtype=D), torch.randn(8, 4, generator=g, dtype=D)
    for o in out:
        assert o["group_is_world"]
        torch.testing.assert_close(o["clip"], ref.clip(img, txt, 3.0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(o["siglip"], ref.siglip(img, txt, 3.0, -1.0), rtol=1e-12, atol=1e-12)


def _saved_bytes_job(rank, world_size, design):
    """Bytes saved for backward on this rank (features of 8 rows x 16 per rank), and the
    bytes it sent, for a CLIP loss."""
    import torch.distributed as dist

    import crossent as ce
    from crossent import distributed

    img = torch.randn(8, 16, dtype=D, requires_grad=True)
    txt = torch.randn(8, 16, dtype=D, requires_grad=True)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with distributed.count_traffic() as traffic:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = ce.clip_loss(img, txt, 2.0, group=dist.group.WORLD, design=design)
        loss.backward()
    return {"saved": sum(seen.values()), "sent": traffic.by_op()}


def test_ring_saves_the_same_memory_whatever_the_world_size(rank_pool):
    saved = {w: {d: rank_pool(w).run(_saved_bytes_job, d, timeout=60)[0] for d in ("ring", "gather")}
             for w in (2, 4)}
    # ring: the local features and (n + m) statistics, whatever W
    assert saved[2]["ring"]["saved"] == saved[4]["ring"]["saved"]
    assert saved[2]["ring"]["saved"] < 2 * 8 * 16 * 8 + 4096
    # gather: holds every rank's columns for the backward, so it grows with W
    assert saved[4]["gather"]["saved"] > saved[2]["gather"]["saved"]
    # the ring moves features point to point only: W - 1 blocks forward, W - 1 backward
    # (features, columns' statistics and their gradients) plus the gradients' way home
    ring_sent = saved[4]["ring"]["sent"]
    assert ring_sent.get("all_gather", 0) < 2048  # only the agreement's metadata
    assert ring_sent["send"] >= 2 * 3 * 8 * 16 * 8  # W - 1 blocks forward and backward


def _feature_grads_job(rank, world_size, which):
    """Gradient each rank's graph hands its (image) features: crossent's ClipLoss or
    open_clip's in its default mode (``local_loss=False, gather_with_grad=False``)."""
    from crossent import contrastive

    g = torch.Generator().manual_seed(9)
    img, txt = torch.randn(8, 4, generator=g, dtype=D), torch.randn(8, 4, generator=g, dtype=D)
    sl = slice(4 * rank, 4 * rank + 4)
    a, b = img[sl].clone().requires_grad_(), txt[sl].clone().requires_grad_()
    if which == "open_clip":
        module = ref.open_clip_loss_module().ClipLoss(rank=rank, world_size=world_size)
    else:
        module = contrastive.ClipLoss(rank=rank, world_size=world_size)
    module(a, b, torch.tensor(3.0, dtype=D)).backward()
    return a.grad


def test_open_clip_default_mode_loses_a_factor_of_world_size(rank_pool):
    # Under DDP, what an encoder receives is (1/W) sum_r J_r^T grad_r. One process holding
    # the global batch gives J^T dL/dx. So each rank's features must receive W * dL/dx_r.
    # open_clip's default mode hands W times too little; crossent hands the right amount.
    if ref.open_clip_loss_module() is None:
        pytest.skip("open_clip_torch is not installed (the README test command installs it with --no-deps)")
    g = torch.Generator().manual_seed(9)
    img = torch.randn(8, 4, generator=g, dtype=D).requires_grad_()
    txt = torch.randn(8, 4, generator=g, dtype=D)
    (want,) = torch.autograd.grad(ref.clip(img, txt, 3.0), img)
    ours = rank_pool(2).run(_feature_grads_job, "crossent", timeout=60)
    theirs = rank_pool(2).run(_feature_grads_job, "open_clip", timeout=60)
    for rank in range(2):
        sl = slice(4 * rank, 4 * rank + 4)
        torch.testing.assert_close(ours[rank], 2 * want[sl], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(theirs[rank], want[sl], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ hyperparameters agree


HYPER_CASES = [
    # (loss, argument, rank 0's value, rank 1's value, form)
    ("clip", "logit_scale", 10.0, 20.0, "float"),
    ("clip", "logit_scale", 10.0, 20.0, "tensor"),
    ("clip", "logit_bias", -1.0, -2.0, "float"),
    ("siglip", "logit_scale", 10.0, 20.0, "float"),
    ("siglip", "logit_scale", 10.0, 20.0, "tensor"),
    ("siglip", "logit_bias", -1.0, -2.0, "float"),
    ("siglip", "logit_bias", -1.0, -2.0, "tensor"),
    ("info_nce", "temperature", 0.1, 0.2, "float"),
    ("info_nce", "temperature", 0.1, 0.2, "tensor"),
    ("nt_xent", "temperature", 0.5, 0.25, "float"),
    ("nt_xent", "temperature", 0.5, 0.25, "tensor"),
    ("supcon", "temperature", 0.07, 0.1, "float"),
    ("supcon", "temperature", 0.07, 0.1, "tensor"),
    ("supcon", "base_temperature", 0.07, 0.1, "float"),
]


def _hyper_loss(name, arg, value, form, rank, design):
    """``name`` on this rank's 3 of 6 rows with hyperparameter ``arg`` set to ``value``
    (the others at fixed defaults); returns the loss and the leaves."""
    import torch.distributed as dist

    import crossent as ce

    g = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(6, DIM, generator=g, dtype=D), torch.randn(6, DIM, generator=g, dtype=D)
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    sl = slice(3 * rank, 3 * rank + 3)
    a, b = x1[sl].clone().requires_grad_(), x2[sl].clone().requires_grad_()
    hp = {"logit_scale": 3.0, "logit_bias": -1.0, "temperature": 0.3, "base_temperature": 0.07}
    hp[arg] = torch.tensor(value, dtype=D, requires_grad=True) if form == "tensor" else value
    kw = dict(group=dist.group.WORLD, design=design)
    if name == "clip":
        loss = ce.clip_loss(a, b, hp["logit_scale"], logit_bias=hp["logit_bias"], **kw)
    elif name == "siglip":
        loss = ce.siglip_loss(a, b, hp["logit_scale"], hp["logit_bias"], **kw)
    elif name == "info_nce":
        loss = ce.info_nce(a, b, temperature=hp["temperature"], **kw)
    elif name == "nt_xent":
        loss = ce.nt_xent(a, b, temperature=hp["temperature"], **kw)
    else:
        loss = ce.supcon_loss(torch.stack([a, b], 1), labels[sl], temperature=hp["temperature"],
                              base_temperature=hp["base_temperature"], **kw)
    return loss, (a, b)


def _hyper_job(rank, world_size, cases):
    out = []
    for name, arg, v0, v1, form, design in cases:
        try:
            loss, _ = _hyper_loss(name, arg, v0 if rank == 0 else v1, form, rank, design)
            same, (a, _b) = _hyper_loss(name, arg, v0, form, rank, design)  # equal values
            same.backward()
            out.append(("no error", loss.detach(), same.detach(), a.grad))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            try:  # equal values still work after the error
                same, (a, _b) = _hyper_loss(name, arg, v0, form, rank, design)
                same.backward()
                out.append((f"{type(exc).__name__}: {exc}", None, same.detach(), a.grad))
            except Exception as exc2:  # noqa: BLE001
                out.append((f"{type(exc).__name__}: {exc}", None, f"then {exc2!r}", None))
    return out


def _hyper_reference(name, arg, value):
    g = torch.Generator().manual_seed(11)
    x1, x2 = torch.randn(6, DIM, generator=g, dtype=D), torch.randn(6, DIM, generator=g, dtype=D)
    x1.requires_grad_()
    labels = torch.tensor([0, 1, 0, 2, 1, 2])
    hp = {"logit_scale": 3.0, "logit_bias": -1.0, "temperature": 0.3, "base_temperature": 0.07}
    hp[arg] = value
    if name == "clip":
        loss = ref.clip(x1, x2, hp["logit_scale"], hp["logit_bias"])
    elif name == "siglip":
        loss = ref.siglip(x1, x2, hp["logit_scale"], hp["logit_bias"])
    elif name == "info_nce":
        loss = ref.info_nce(x1, x2, temperature=hp["temperature"])
    elif name == "nt_xent":
        loss = ref.nt_xent(x1, x2, temperature=hp["temperature"])
    else:  # the reference's anchors are view-major, like ours; rows of both ranks in order
        feats = torch.stack([x1, x2], 1)
        loss = ref.supcon(feats, labels, temperature=hp["temperature"],
                          base_temperature=hp["base_temperature"])
    return loss.detach(), torch.autograd.grad(loss, x1)[0]


@pytest.mark.parametrize("design", ["gather", "ring"])
def test_ranks_must_agree_on_hyperparameters(rank_pool, design):
    """issue 20, defect 4: clip_loss(a, b, 10. if rank == 0 else 20., group=WORLD) trained a
    mixed objective silently; every rank now raises the same ArgumentError naming the
    argument and each rank's value (numbers and tensors alike), and equal values work."""
    cases = [c + (design,) for c in HYPER_CASES]
    out = rank_pool(2).run(_hyper_job, cases, timeout=300)
    for i, (name, arg, v0, v1, form) in enumerate(HYPER_CASES):
        r0, r1 = out[0][i], out[1][i]
        where = f"{name} {arg} {form} {design}"
        assert r0[0] == r1[0], where  # the same error on every rank
        assert r0[0].startswith("ArgumentError: "), (where, r0[0])
        assert "disagree on" in r0[0] and f"{arg} (rank 0: {v0!r}, rank 1: {v1!r})" in r0[0], \
            (where, r0[0])
        want, want_grad = _hyper_reference(name, arg, v0)
        for rank, r in enumerate((r0, r1)):
            assert isinstance(r[2], torch.Tensor), (where, r[2])
            torch.testing.assert_close(r[2], want, rtol=1e-10, atol=1e-12)
            if name != "supcon":  # supcon's anchors of a rank are not one slice of x1
                torch.testing.assert_close(r[3] / 2, want_grad[3 * rank:3 * rank + 3],
                                           rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ one-rank groups


def _one_rank_group_job(rank, world_size):
    """Each rank alone in a one-rank group: every family behaves as without a group."""
    import torch.distributed as dist

    import crossent as ce
    from crossent.core import collectives

    groups = [dist.new_group([r]) for r in range(world_size)]  # every rank creates each
    mine = groups[rank]
    g = torch.Generator().manual_seed(20 + rank)
    x, y = torch.randn(5, DIM, generator=g, dtype=D), torch.randn(5, DIM, generator=g, dtype=D)
    z, w = torch.randn(5, 7, generator=g, dtype=D), torch.randn(7, DIM, generator=g, dtype=D)
    t = torch.tensor([0, 3, 6, 1, 2])
    calls = {
        "clip_loss": lambda grp: ce.clip_loss(x, y, 2.0, group=grp),
        "siglip_loss": lambda grp: ce.siglip_loss(x, y, 2.0, -1.0, group=grp, design="ring"),
        "supcon_no_labels": lambda grp: ce.supcon_loss(x, group=grp),  # no labels: fine alone
        "cross_entropy": lambda grp: ce.cross_entropy(z, t, group=grp),
        "linear_cross_entropy": lambda grp: ce.linear_cross_entropy(x, w, t, group=grp),
        "ArcFace(reduction='none')": lambda grp: _head(grp)(x, t),  # 'none': no-group only
    }

    def _head(grp):
        torch.manual_seed(3)
        return ce.ArcFace(7, DIM, group=grp, reduction="none").double()

    out = {"spans": collectives.spans_ranks(mine)}
    for name, call in calls.items():
        with collectives.count_traffic() as traffic:
            got = call(mine)
        out[name] = (got, call(None), traffic.bytes_sent)
    try:  # the single-process checks: an empty batch is an error, as without a group
        ce.clip_loss(x[:0], y[:0], 2.0, group=mine)
        out["empty"] = "no error"
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        out["empty"] = f"{type(exc).__name__}: {exc}"
    return out


def test_a_one_rank_group_is_no_group(rank_pool):
    """core/sharded (cross_entropy, linear_cross_entropy) and the margin heads ran their
    collectives on a one-rank group (Partial FC refused reduction='none') while the
    contrastive losses ran on one device; all now run the one-process path: the same
    value, no traffic, the same checks."""
    for rank, out in enumerate(rank_pool(2).run(_one_rank_group_job, timeout=60)):
        assert out["spans"] is False
        for name in ("clip_loss", "siglip_loss", "supcon_no_labels", "cross_entropy",
                     "linear_cross_entropy", "ArcFace(reduction='none')"):
            got, alone, sent = out[name]
            assert sent == 0, (rank, name, sent)
            assert torch.equal(got, alone), (rank, name)
        assert out["empty"].startswith("ArgumentError") and "at least one row" in out["empty"]


# ------------------------------------------------------------------ first order only


def _create_graph_job(rank, world_size, design):
    import torch.distributed as dist

    import crossent as ce

    g = torch.Generator().manual_seed(30 + rank)
    a = torch.randn(3, DIM, generator=g, dtype=D, requires_grad=True)
    b = torch.randn(3, DIM, generator=g, dtype=D, requires_grad=True)
    out = []
    for loss in (lambda: ce.clip_loss(a, b, 2.0, group=dist.group.WORLD, design=design),
                 lambda: ce.siglip_loss(a, b, 2.0, -1.0, group=dist.group.WORLD, design=design)):
        try:
            torch.autograd.grad(loss(), a, create_graph=True)
            out.append("no error")
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            out.append(f"{type(exc).__name__}: {exc}")
        loss().backward()  # plain backward still works, and nothing hangs
    return out


@pytest.mark.parametrize("design", ["gather", "ring"])
def test_create_graph_raises_on_every_rank(rank_pool, design):
    out = rank_pool(2).run(_create_graph_job, design, timeout=60)
    assert out[0] == out[1]
    for msg in out[0]:
        assert msg.startswith("DoubleBackwardError") and "double backward (create_graph=True)" in msg, msg
