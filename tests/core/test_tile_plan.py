"""The one tile planner (crossent.core.tiles) keeps working sets in their budgets.

Working set of a fused linear pass (see ``crossent.kernels.torch_chunked``): ``buffers``
float32 tiles of ``rows x cols``, plus, when the vocabulary is tiled (``cols < V``), a
``rows x H`` float32 accumulator for ``dx``. It must fit ``memory_budget`` whatever the
vocabulary size, which is what lets ``V = 256000`` run in a few MiB beyond the outputs.

The expected tile sizes below are worked out by hand from the budget formula
``elements = budget // (buffers * 4)`` (and the rules in ``plan_tiles``' docstring), with
the budgets written out in bytes, not read from the table.
"""

import pytest
import torch
import torch.nn.functional as F

import contrastive_reference as ref
import crossent as ce
from crossent.core import tiles
from crossent.core.tiles import chunk_rows, plan_tiles, row_chunks
from crossent.kernels import similarity
from crossent.margin.losses import margin_plan, margin_spec

MiB = 1 << 20


def _working_set(plan, vocab, hidden, buffers):
    tiles_ = buffers * plan.rows * plan.cols * 4
    accumulator = 0 if plan.fused(vocab) else plan.rows * hidden * 4
    return tiles_ + accumulator


@pytest.mark.parametrize("vocab", [32000, 128256, 256000])
@pytest.mark.parametrize("hidden", [1024, 4096])
@pytest.mark.parametrize("tokens", [1, 300, 8192])
@pytest.mark.parametrize("budget", [4 * MiB, 8 * MiB, 32 * MiB])
@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_working_set_within_budget(vocab, hidden, tokens, budget, buffers):
    plan = plan_tiles(tokens, vocab, kind="linear", buffers=buffers, memory_budget=budget,
                      accumulator_width=hidden)
    assert 1 <= plan.rows <= tokens and 1 <= plan.cols <= vocab
    assert _working_set(plan, vocab, hidden, buffers) <= budget


@pytest.mark.parametrize("kind, budget", [("linear", 32 * MiB), ("linear_recompute", 8 * MiB)])
def test_default_budget_by_path(kind, budget):
    plan = plan_tiles(8192, 256000, kind=kind, buffers=1, accumulator_width=4096)
    assert _working_set(plan, 256000, 4096, 1) <= budget
    # and the plan uses most of it rather than a token amount
    assert _working_set(plan, 256000, 4096, 1) > budget // 2


def test_whole_rows_when_they_fit():
    plan = plan_tiles(4096, 32000, kind="linear", buffers=1, memory_budget=32 * MiB,
                      accumulator_width=1024)
    assert plan.fused(32000) and plan.rows == (32 * MiB) // (32000 * 4)


def test_explicit_chunk_sizes_override_the_budget():
    plan = plan_tiles(4096, 32000, kind="linear", memory_budget=MiB, tile_rows=64,
                      tile_cols=1000)
    assert (plan.rows, plan.cols) == (64, 1000)


# ------------------------------------------------------------ today's choices, pinned


# (kind, device, N, C, buffers, accumulator width) -> (rows, cols), by hand:
PINNED = {
    # 32 MiB / 4 = 8388608 floats; // 32000 = 262 whole rows >= 128
    ("linear", "cpu", 4096, 32000, 1, 1024): (262, 32000),
    # 8 MiB / 4 = 2097152; // 32000 = 65 < 128 whole rows: rows = min(128, 2097152 // 1280);
    # cols = (2097152 - 128 * 1024) // 128 = 15360
    ("linear_recompute", "cpu", 4096, 32000, 1, 1024): (128, 15360),
    # 256 MiB / 4 = 67108864; // 128256 = 523 whole rows
    ("linear", "cuda", 8192, 128256, 1, 4096): (523, 128256),
    # 64 MiB / 4 = 16777216; // 128256 = 130 whole rows
    ("linear_recompute", "cuda", 8192, 128256, 1, 4096): (130, 128256),
    # two buffers: 32 MiB / 8 = 4194304; // 256000 = 16 < 128: rows = min(128, 4194304 //
    # (256 + 4096)) = 128; cols = (4194304 - 128 * 4096 // 2) // 128 = 30720
    ("linear", "cpu", 8192, 256000, 2, 4096): (128, 30720),
    # 128 MiB / 4 = 33554432; // 100000 = 335 whole rows of a 512-row batch
    ("margin", "cpu", 512, 100000, 1, 512): (335, 100000),
    # 2 GiB / 4 = 536870912; // 1000000 = 536 >= 512: the whole batch in one pass
    ("margin", "cuda", 512, 1000000, 1, 512): (512, 1000000),
}


@pytest.mark.parametrize("key", list(PINNED), ids=lambda k: f"{k[0]}-{k[1]}-{k[3]}-b{k[4]}")
def test_pinned_whole_rows_plans(key):
    kind, device, n, c, buffers, width = key
    plan = plan_tiles(n, c, kind=kind, device=device, buffers=buffers, accumulator_width=width)
    assert (plan.rows, plan.cols) == PINNED[key]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_pinned_similarity_plans(device):
    # 48 MiB / (3 buffers * 4) = 4194304 floats; rows = isqrt(4194304 // 4) = 1024; cols = 4096
    p = similarity.plan(32768, 32768, device=device)
    assert (p.rows, p.cols) == (1024, 4096)
    # 1 MiB / 12 = 87381; rows = isqrt(87381 // 4) = isqrt(21845) = 147; cols = 87381 // 147
    p = similarity.plan(32768, 32768, memory_budget=MiB, device=device)
    assert (p.rows, p.cols) == (147, 594)
    # clipped to a small problem; the columns still follow from the clipped rows
    p = similarity.plan(50, 70, memory_budget=4096)  # 341 floats: rows isqrt(85)=9, cols 37
    assert (p.rows, p.cols) == (9, 37)
    p = similarity.plan(5, 70, memory_budget=4096)  # rows 5, cols min(70, 341 // 5)
    assert (p.rows, p.cols) == (5, 68)
    # one explicit side: the other from the default budget
    assert similarity.plan(32768, 32768, tile_rows=2048) == tiles.TilePlan(2048, 2048)


def test_pinned_margin_plans():
    x = torch.zeros(512, 64)
    arc = margin_spec("arcface")
    # scalar reductions: the margin budget, 128 MiB: 33554432 // 100000 = 335 rows
    assert margin_plan(arc, x, 100000, "mean", True) == tiles.TilePlan(335, 100000)
    # reduction='none' recomputes: the linear recompute budget, 8 MiB: 2097152 // 100000 = 20
    # < 128 whole rows; rows = min(128, 2097152 // (256 + 64)) = 128;
    # cols = (2097152 - 128 * 64) // 128 = 16320
    assert margin_plan(arc, x, 100000, "none", True) == tiles.TilePlan(128, 16320)
    # sub-centres (K=3) keep K + 3 = 6 more tile buffers: 7 buffers, 33554432 // 7 = 4793490
    # floats, // 100000 = 47 < 128 whole rows: rows = min(128, 4793490 // (256 + 64)) = 128,
    # cols = (4793490 - 128 * 64 // 7) // 128 = 4792320 // 128 = 37440
    sub = margin_spec("subcenter_arcface", centers=3)
    assert margin_plan(sub, x, 100000, "mean", True) == tiles.TilePlan(128, 37440)


def test_pinned_row_chunks():
    # given logits: 1 << 20 floats per chunk on CPU, 1 << 26 on CUDA
    assert chunk_rows(4096, 32000, "rows", "cpu") == 32  # 1048576 // 32000
    assert chunk_rows(4096, 32000, "rows", "cuda") == 2097  # 67108864 // 32000
    assert chunk_rows(10, 32000, "rows", "cuda") == 10
    assert chunk_rows(4096, 1 << 21, "rows", "cpu") == 1  # a row wider than the budget
    assert chunk_rows(4096, 32000, "rows", torch.device("meta")) == 32  # not CUDA: CPU's
    # weight-norm passes: 65536 rows whatever D
    assert chunk_rows(200000, 1, "weight_norms", "cuda") == 65536
    assert list(row_chunks(10, 3, "rows")) == [(0, 10)]
    assert list(row_chunks(150000, 1, "weight_norms")) == [(0, 65536), (65536, 131072),
                                                          (131072, 150000)]
    assert list(row_chunks(0, 5, "rows")) == []


def test_given_logit_chunks_follow_the_rows_budget(monkeypatch):
    """cross_entropy walks its rows in chunks of chunk_rows(N, C, "rows"): a 2-row budget
    cuts 7 rows in 4 chunks, and the result does not change."""
    from crossent.core import statistics

    z = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    want = F.cross_entropy(z, y)
    monkeypatch.setitem(tiles.BUDGETS, ("rows", "cpu"), 2 * 5 * 4)
    assert list(row_chunks(7, 5, "rows")) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    seen = []

    def recording(*args):
        for chunk in row_chunks(*args):
            seen.append(chunk)
            yield chunk

    monkeypatch.setattr(statistics, "row_chunks", recording)
    got = ce.cross_entropy(z, y)
    assert seen == [(0, 2), (2, 4), (4, 6), (6, 7)]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    (g,) = torch.autograd.grad(got, z)
    (gw,) = torch.autograd.grad(want, z)
    torch.testing.assert_close(g, gw, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------ the smallest budget (issue 20)


def test_min_memory_budget_formula():
    # one tile of 256 floats per buffer, 4 bytes each, plus one accumulator row
    assert tiles.min_memory_budget(1) == 1024
    assert tiles.min_memory_budget(3) == 3072
    assert tiles.min_memory_budget(2, accumulator_width=100) == 4 * (512 + 100)


@pytest.mark.parametrize("buffers", [1, 2, 4])
@pytest.mark.parametrize("width", [0, 12, 300, 4096])
@pytest.mark.parametrize("vocab", [37, 256, 300, 256000])
def test_the_minimum_budget_makes_one_row_tiles_of_at_least_256_columns(buffers, width, vocab):
    least = 4 * (buffers * 256 + width)
    plan = plan_tiles(100, vocab, kind="linear", buffers=buffers, memory_budget=least,
                      accumulator_width=width)
    assert plan.cols == min(vocab, 256) and plan.rows >= 1
    assert _working_set(plan, vocab, width, buffers) <= least
    with pytest.raises(ce.ArgumentError, match=f"memory_budget must be at least {least} bytes"):
        plan_tiles(100, vocab, kind="linear", buffers=buffers, memory_budget=least - 1,
                   accumulator_width=width)


def _linear_data(n=64, h=32, v=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, h, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, v, (n,), generator=g)
    return x, w, y


def test_linear_cross_entropy_rejects_a_budget_below_one_tile():
    x, w, y = _linear_data()
    least = 4 * (256 + 32)  # one buffer (index target, gradients), dx's row of H = 32
    with pytest.raises(ce.ArgumentError,
                       match=rf"memory_budget must be at least {least} bytes.*got 1$"):
        ce.linear_cross_entropy(x, w, y, memory_budget=1)
    with pytest.raises(ce.ArgumentError, match=f"at least {least} bytes.*got {least - 1}"):
        ce.linear_cross_entropy(x, w, y, memory_budget=least - 1)
    # the minimum itself is accepted: one-row bands of the whole 256-class row, exact
    loss = ce.linear_cross_entropy(x, w, y, memory_budget=least)
    want = F.cross_entropy(x @ w.T, y)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    got = torch.autograd.grad(loss, (x, w))
    ref = torch.autograd.grad(want, (x, w))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


def test_linear_cross_entropy_at_the_minimum_tiles_the_vocabulary():
    """V = 300 > 256: the smallest budget gives 1 x 256 tiles and a second vocabulary tile
    of 44 columns (two passes, merged statistics), still exact to float64 PyTorch."""
    x, w, y = _linear_data(n=9, h=4, v=300, seed=1)
    b = torch.randn(300, dtype=torch.float64, requires_grad=True)
    least = 4 * (256 + 4)
    for reduction in ("mean", "none"):
        loss = ce.linear_cross_entropy(x, w, y, linear_bias=b, memory_budget=least,
                                       reduction=reduction)
        want = F.cross_entropy(F.linear(x, w, b), y, reduction=reduction)
        torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
        up = torch.linspace(0.5, 1.5, loss.numel(), dtype=torch.float64).reshape(loss.shape)
        got = torch.autograd.grad(loss, (x, w, b), up)
        ref = torch.autograd.grad(want, (x, w, b), up)
        for a, r in zip(got, ref):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-13)


def test_clip_loss_rejects_a_budget_below_one_tile():
    g = torch.Generator().manual_seed(2)
    img = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    txt = F.normalize(torch.randn(40, 8, generator=g, dtype=torch.float64), dim=1)
    least = 3 * 256 * 4  # three tile buffers of 256 floats
    with pytest.raises(ce.ArgumentError,
                       match=rf"memory_budget must be at least {least} bytes.*got 1$"):
        ce.clip_loss(img, txt, 10.0, memory_budget=1)
    with pytest.raises(ce.ArgumentError, match=f"at least {least} bytes"):
        ce.clip_loss(img, txt, 10.0, memory_budget=least - 1)
    img.requires_grad_()
    loss = ce.clip_loss(img, txt, 10.0, memory_budget=least)  # 8 x 32 tiles
    want = ref.clip(img, txt, 10.0)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.autograd.grad(loss, img)[0],
                               torch.autograd.grad(want, img)[0], rtol=1e-10, atol=1e-13)


def test_arcface_loss_rejects_a_budget_below_one_tile():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(300, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 300, (8,), generator=g)
    least = 4 * (256 + 16)  # one tile buffer, dx's accumulator row of D = 16
    with pytest.raises(ce.ArgumentError,
                       match=rf"memory_budget must be at least {least} bytes.*got 1$"):
        ce.arcface_loss(x, w, y, memory_budget=1)
    with pytest.raises(ce.ArgumentError, match=f"at least {least} bytes"):
        ce.arcface_loss(x, w, y, memory_budget=least - 1)
    # without an embedding gradient there is no accumulator: 1024 bytes suffice
    ce.arcface_loss(x.detach(), w, y, memory_budget=1024)
    # arcface by hand: s * cos(theta + m) at the target, s * cos(theta) elsewhere
    s, m = 64.0, 0.5
    cos = F.normalize(x, dim=1) @ F.normalize(w, dim=1).T
    theta = torch.acos(cos.gather(1, y[:, None]).clamp(-1, 1))
    z = (s * cos).scatter(1, y[:, None], s * torch.cos(theta + m))
    want = F.cross_entropy(z, y)
    loss = ce.arcface_loss(x, w, y, memory_budget=least)  # 1 x 256 tiles, then 44 columns
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(loss, (x, w))
    ref = torch.autograd.grad(want, (x, w))
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name, value", [("token_chunk_size", 0), ("vocab_chunk_size", -1),
                                         ("token_chunk_size", 2.0), ("vocab_chunk_size", True),
                                         ("memory_budget", 0), ("memory_budget", 1e6)])
def test_linear_tile_options_must_be_positive_ints(name, value):
    x, w, y = _linear_data(n=4, h=3, v=5)
    with pytest.raises(ce.ArgumentError, match=f"{name} must be a positive int or None, got"):
        ce.linear_cross_entropy(x, w, y, **{name: value})


@pytest.mark.parametrize("name, value", [("tile_rows", 0), ("tile_cols", -2), ("tile_rows", 1.5),
                                         ("tile_cols", False), ("memory_budget", -1)])
def test_similarity_tile_options_must_be_positive_ints(name, value):
    x = torch.randn(4, 3)
    with pytest.raises(ce.ArgumentError, match=f"{name} must be a positive int or None, got"):
        ce.clip_loss(x, x, 1.0, **{name: value})
    with pytest.raises(ce.ArgumentError, match=f"{name} must be a positive int or None, got"):
        similarity.plan(4, 4, **{name: value})


def test_tiny_explicit_tiles_stay_legal():
    """1 x 1 tiles on purpose (they exercise the merge): explicit sizes have no minimum."""
    x, w, y = _linear_data(n=5, h=3, v=7)
    loss = ce.linear_cross_entropy(x, w, y, token_chunk_size=1, vocab_chunk_size=1)
    torch.testing.assert_close(loss, F.cross_entropy(x @ w.T, y), rtol=1e-12, atol=0)
    a = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    torch.testing.assert_close(ce.clip_loss(a, b, 3.0, tile_rows=1, tile_cols=1),
                               ref.clip(a, b, 3.0), rtol=1e-12, atol=0)
    assert plan_tiles(10, 10, kind="similarity", tile_rows=1, tile_cols=1) == tiles.TilePlan(1, 1)
    assert plan_tiles(0, 0, kind="linear") == tiles.TilePlan(1, 1)  # empty problems: one tile
