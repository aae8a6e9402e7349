"""Contrastive losses on one device against the published formulas and open_clip.

Expected values come from ``contrastive_reference.py`` (each paper's formula, written out
over the whole matrix in float64) and from open_clip's ``ClipLoss`` / ``SigLipLoss``.
Tiles are made small (and of odd shapes) so that statistics really are merged across
tiles of rows and of columns.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastive_reference as ref
import crossent as ce
from crossent import contrastive
from crossent.core import tiles
from crossent.kernels import similarity
from tensor_probe import LargestTensor

D = torch.float64
TILES = [dict(tile_rows=1, tile_cols=1), dict(tile_rows=2, tile_cols=3), dict(tile_rows=5, tile_cols=4), {}]
SIZES = [1, 2, 7, 13]


def _leaf(*shape, dtype=D, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=D) * scale).to(dtype).requires_grad_()


def _scalar(value, dtype=D):
    return torch.tensor(value, dtype=dtype, requires_grad=True)


def _check(loss, expected, inputs, *, rtol=1e-10, atol=1e-12, grad_rtol=None, grad_atol=None):
    """Value and every gradient of ``loss`` against ``expected`` (a float64 graph)."""
    torch.testing.assert_close(loss.double(), expected.double(), rtol=rtol, atol=atol)
    got = torch.autograd.grad(loss, inputs, allow_unused=True)
    want = torch.autograd.grad(expected, inputs, allow_unused=True)
    for x, g, w in zip(inputs, got, want):
        w = torch.zeros_like(x, dtype=D) if w is None else w.double()
        assert g is not None, "no gradient reached an input"
        assert g.dtype == x.dtype and g.shape == x.shape
        torch.testing.assert_close(g.double(), w, rtol=grad_rtol or rtol, atol=grad_atol or atol)


# ------------------------------------------------------------------ values and gradients


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_loss_matches_formula(n, tiles, with_bias):
    img, txt = _leaf(n, 6, seed=1), _leaf(n, 6, seed=2)
    scale = _scalar(2.5)
    bias = _scalar(-1.5) if with_bias else None
    loss = ce.clip_loss(img, txt, scale, logit_bias=bias, **tiles)
    inputs = (img, txt, scale) + ((bias,) if with_bias else ())
    _check(loss, ref.clip(img, txt, scale, bias), inputs)


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("num_neg", [None, 1, 5])
def test_info_nce_matches_formula(n, tiles, num_neg):
    q, k = _leaf(n, 4, seed=3), _leaf(n, 4, seed=4)
    neg = _leaf(num_neg, 4, seed=5) if num_neg else None
    t = _scalar(0.3)
    loss = ce.info_nce(q, k, neg, temperature=t, **tiles)
    inputs = (q, k, t) + ((neg,) if neg is not None else ())
    _check(loss, ref.info_nce(q, k, neg, temperature=t), inputs)


def test_info_nce_without_normalisation():
    q, k = _leaf(6, 3, seed=6), _leaf(6, 3, seed=7)
    loss = ce.info_nce(q, k, temperature=2.0, normalize=False, tile_rows=4, tile_cols=4)
    _check(loss, ref.info_nce(q, k, temperature=2.0, normalize=False), (q, k))


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("n", SIZES)
def test_nt_xent_matches_formula(n, tiles):
    z1, z2 = _leaf(n, 5, seed=8), _leaf(n, 5, seed=9)
    t = _scalar(0.5)
    loss = ce.nt_xent(z1, z2, temperature=t, **tiles)
    _check(loss, ref.nt_xent(z1, z2, temperature=t), (z1, z2, t))


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("views", [None, 1, 2, 3])
def test_supcon_matches_formula(tiles, views):
    n = 7
    shape = (n, 5) if views is None else (n, views, 5)
    f = _leaf(*shape, seed=10)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 3])  # label 2 and 3 alone: no positive with one view
    t = _scalar(0.1)
    loss = ce.supcon_loss(f, labels, temperature=t, base_temperature=0.07, **tiles)
    _check(loss, ref.supcon(f, labels, temperature=t, base_temperature=0.07), (f, t))


def test_supcon_flattens_trailing_dimensions():
    f = _leaf(5, 2, 3, 2, seed=37)
    labels = torch.tensor([0, 1, 0, 1, 2])
    flat = f.reshape(5, 2, 6)
    _check(ce.supcon_loss(f, labels, tile_rows=3, tile_cols=4), ref.supcon(flat, labels), (f,))


@pytest.mark.parametrize("n", [1, 4, 9])
def test_supcon_without_labels_is_simclr_positives(n):
    f = _leaf(n, 2, 3, seed=11)
    loss = ce.supcon_loss(f, temperature=0.2, base_temperature=0.2, tile_rows=3, tile_cols=2)
    _check(loss, ref.supcon(f, None, temperature=0.2, base_temperature=0.2), (f,))


def test_supcon_single_anchor_is_zero_not_nan():
    f = _leaf(1, 4, seed=12)
    loss = ce.supcon_loss(f, torch.tensor([3]))
    assert loss.item() == 0.0
    (g,) = torch.autograd.grad(loss, f)
    assert torch.equal(g, torch.zeros_like(f))


@pytest.mark.parametrize("tiles", TILES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_siglip_matches_formula(n, tiles, with_bias):
    img, txt = _leaf(n, 6, seed=13), _leaf(n, 6, seed=14)
    scale = _scalar(10.0)
    bias = _scalar(-10.0) if with_bias else None
    loss = ce.siglip_loss(img, txt, scale, bias, **tiles)
    expected = ref.siglip(img, txt, scale, bias if with_bias else 0.0)
    _check(loss, expected, (img, txt, scale) + ((bias,) if with_bias else ()))


# ------------------------------------------------------------------ hard inputs


def test_duplicate_embeddings():
    img, txt = _leaf(8, 5, seed=15), _leaf(8, 5, seed=16)
    with torch.no_grad():
        img[5] = img[2]
        txt[5] = txt[2]
        txt[7] = txt[0]
    s, b = _scalar(4.0), _scalar(-3.0)
    tiles = dict(tile_rows=3, tile_cols=2)
    _check(ce.clip_loss(img, txt, s, **tiles), ref.clip(img, txt, s), (img, txt, s))
    _check(ce.siglip_loss(img, txt, s, b, **tiles), ref.siglip(img, txt, s, b), (img, txt, s, b))
    _check(ce.nt_xent(img, img, temperature=0.5, **tiles), ref.nt_xent(img, img, 0.5), (img,))
    f = torch.stack([img, img], 1)
    labels = torch.tensor([0, 0, 1, 1, 2, 1, 3, 3])
    _check(ce.supcon_loss(f, labels, **tiles), ref.supcon(f, labels), (img,))


@pytest.mark.parametrize("scale", [1e-4, 100.0, 1e4])
def test_clip_and_siglip_extreme_scales(scale):
    # 1e4 on unit vectors gives scores of +-1e4: exp overflows anywhere but in a stable
    # log-sum-exp, and the softmax is (nearly) one-hot.
    img = F.normalize(_leaf(9, 4, seed=17), dim=1).detach().requires_grad_()
    txt = F.normalize(_leaf(9, 4, seed=18), dim=1).detach().requires_grad_()
    s = _scalar(scale)
    b = _scalar(-0.5 * scale)
    tiles = dict(tile_rows=4, tile_cols=3)
    loss = ce.clip_loss(img, txt, s, **tiles)
    assert torch.isfinite(loss)
    _check(loss, ref.clip(img, txt, s), (img, txt, s), rtol=1e-9, atol=1e-9)
    _check(ce.siglip_loss(img, txt, s, b, **tiles), ref.siglip(img, txt, s, b), (img, txt, s, b),
           rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("temperature", [1e-3, 0.07, 50.0])
def test_self_similarity_losses_extreme_temperatures(temperature):
    z1, z2 = _leaf(6, 4, seed=19), _leaf(6, 4, seed=20)
    tiles = dict(tile_rows=5, tile_cols=4)
    _check(ce.nt_xent(z1, z2, temperature=temperature, **tiles), ref.nt_xent(z1, z2, temperature),
           (z1, z2), rtol=1e-9, atol=1e-9)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    f = torch.stack([z1, z2], 1)
    _check(ce.supcon_loss(f, labels, temperature=temperature, **tiles),
           ref.supcon(f, labels, temperature), (z1, z2), rtol=1e-9, atol=1e-9)
    _check(ce.info_nce(z1, z2, temperature=temperature, **tiles),
           ref.info_nce(z1, z2, temperature=temperature), (z1, z2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_accumulates_in_float32(dtype):
    # Expected: the formula in float64 on the very same (rounded) inputs. With float32
    # accumulation the loss is good to ~1e-6 relative; gradients are rounded to the
    # input dtype once, at the end.
    n = 37
    img = F.normalize(_leaf(n, 16, seed=21), dim=1).to(dtype).detach().requires_grad_()
    txt = F.normalize(_leaf(n, 16, seed=22), dim=1).to(dtype).detach().requires_grad_()
    s = torch.tensor(30.0, requires_grad=True)
    b = torch.tensor(-5.0, requires_grad=True)
    grad_tol = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]
    tiles = dict(tile_rows=8, tile_cols=16)
    for got, want, inputs in [
        (ce.clip_loss(img, txt, s, **tiles), ref.clip(img, txt, s), (img, txt, s)),
        (ce.siglip_loss(img, txt, s, b, **tiles), ref.siglip(img, txt, s, b), (img, txt, s, b)),
        (ce.nt_xent(img, txt, temperature=0.1, **tiles), ref.nt_xent(img, txt, 0.1), (img, txt)),
    ]:
        assert got.dtype == torch.float32
        _check(got, want, inputs, rtol=2e-6, atol=1e-6, grad_rtol=grad_tol, grad_atol=grad_tol * 1e-1)


def test_caller_tensors_not_modified():
    img, txt = _leaf(7, 5, seed=23), _leaf(7, 5, seed=24)
    s = _scalar(3.0)
    before = [t.detach().clone() for t in (img, txt, s)]
    ce.clip_loss(img, txt, s, tile_rows=2, tile_cols=3).backward()
    ce.nt_xent(img, txt, tile_rows=2, tile_cols=3).backward()
    for t, b in zip((img, txt, s), before):
        assert torch.equal(t.detach(), b)


# ------------------------------------------------------------------ open_clip


@pytest.fixture(scope="module")
def open_clip_loss():
    module = ref.open_clip_loss_module()
    if module is None:
        pytest.skip("open_clip_torch is not installed (the README test command installs it with --no-deps)")
    return module


@pytest.mark.parametrize("n", [1, 5, 16])
@pytest.mark.parametrize("with_bias", [False, True])
def test_clip_loss_module_matches_open_clip(open_clip_loss, n, with_bias):
    img, txt = _leaf(n, 8, seed=25), _leaf(n, 8, seed=26)
    log_scale = _scalar(2.659)
    bias = _scalar(0.7) if with_bias else None
    theirs = open_clip_loss.ClipLoss()(img, txt, log_scale.exp(), bias)
    ours = contrastive.ClipLoss(tile_rows=3, tile_cols=2)(img, txt, log_scale.exp(), bias)
    inputs = (img, txt, log_scale) + ((bias,) if with_bias else ())
    _check(ours, theirs, inputs)
    out = contrastive.ClipLoss()(img, txt, log_scale.exp(), output_dict=True)
    assert set(out) == {"contrastive_loss"}


@pytest.mark.parametrize("n", [1, 5, 16])
def test_siglip_loss_module_matches_open_clip(open_clip_loss, n):
    img = F.normalize(_leaf(n, 8, seed=27), dim=1).detach().requires_grad_()
    txt = F.normalize(_leaf(n, 8, seed=28), dim=1).detach().requires_grad_()
    log_scale, bias = _scalar(2.302585), _scalar(-10.0)  # SigLIP's init: t' = log 10, b = -10
    theirs = open_clip_loss.SigLipLoss()(img, txt, log_scale.exp(), bias)
    ours = contrastive.SigLipLoss(tile_rows=4, tile_cols=3)(img, txt, log_scale.exp(), bias)
    _check(ours, theirs, (img, txt, log_scale, bias))


def test_open_clip_constructor_arguments():
    m = contrastive.ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=0,
                             world_size=1, use_horovod=False)
    assert m.design == "gather" and m.group is None
    assert contrastive.SigLipLoss(dist_impl="shift").design == "ring"
    assert contrastive.SigLipLoss(dist_impl="reduce").design == "gather"
    assert contrastive.SigLipLoss().design == "ring"  # open_clip's default 'bidir'
    with pytest.raises(ce.ArgumentError, match="use_horovod"):
        contrastive.ClipLoss(use_horovod=True)
    with pytest.raises(ce.ArgumentError, match="dist_impl"):
        contrastive.SigLipLoss(dist_impl="allreduce")
    with pytest.raises(ce.ArgumentError, match="world_size=2 needs torch.distributed"):
        contrastive.ClipLoss(world_size=2, rank=1, group=object())(torch.randn(2, 3), torch.randn(2, 3), 1.0)


def test_modules_equal_functions():
    z1, z2 = _leaf(6, 4, seed=29), _leaf(6, 4, seed=30)
    labels = torch.tensor([0, 1, 1, 0, 2, 2])
    f = torch.stack([z1, z2], 1)
    pairs = [
        (ce.InfoNCELoss(temperature=0.2)(z1, z2), ce.info_nce(z1, z2, temperature=0.2)),
        (ce.NTXentLoss(temperature=0.3)(z1, z2), ce.nt_xent(z1, z2, temperature=0.3)),
        (ce.SupConLoss(temperature=0.1)(f, labels), ce.supcon_loss(f, labels, temperature=0.1)),
        (ce.ClipLoss()(z1, z2, 5.0), ce.clip_loss(z1, z2, 5.0)),
        (ce.SigLipLoss()(z1, z2, 5.0, -2.0), ce.siglip_loss(z1, z2, 5.0, -2.0)),
    ]
    for a, b in pairs:
        assert torch.equal(a, b)
    assert "memory_budget" not in repr(ce.ClipLoss()) and "tile_rows=4" in repr(ce.NTXentLoss(tile_rows=4))


# ------------------------------------------------------------------ the tiles


@pytest.mark.parametrize("loss_fn", ["clip", "siglip", "nt_xent", "supcon", "info_nce"])
def test_never_forms_the_batch_by_batch_matrix(loss_fn):
    n, d = 384, 8
    img, txt = _leaf(n, d, dtype=torch.float32, seed=31), _leaf(n, d, dtype=torch.float32, seed=32)
    tiles = dict(tile_rows=32, tile_cols=48)
    run = {
        "clip": lambda: ce.clip_loss(img, txt, 10.0, **tiles),
        "siglip": lambda: ce.siglip_loss(img, txt, 10.0, -5.0, **tiles),
        "nt_xent": lambda: ce.nt_xent(img, txt, **tiles),
        "supcon": lambda: ce.supcon_loss(torch.stack([img, txt], 1), torch.arange(n) % 5, **tiles),
        "info_nce": lambda: ce.info_nce(img, txt, **tiles),
    }[loss_fn]
    probe = LargestTensor()
    with probe:
        run().backward()
    # Features (2n x d at most) and tiles (32 x 48) only; 2n x 2n would be 589824.
    assert probe.largest <= max(2 * n * d, 32 * 48)
    # The probe sees the matrix when it is formed: the written-out formula does.
    probe = LargestTensor()
    with probe:
        ref.siglip(img[:64], txt[:64], 10.0, -5.0)
    assert probe.largest >= 64 * 64


def test_clip_is_one_pass_over_the_tiles(monkeypatch):
    calls = []
    original = similarity._scores_

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(similarity, "_scores_", counting)
    img, txt = _leaf(10, 4, seed=33), _leaf(10, 4, seed=34)
    loss = ce.clip_loss(img, txt, 2.0, tile_rows=3, tile_cols=4)  # 4 x 3 tiles
    assert len(calls) == 12  # both directions from the same 12 tiles
    loss.backward()
    assert len(calls) == 24  # the backward recomputes each tile once


def test_memory_budget_sets_the_tiles():
    p = similarity.plan(32768, 32768, memory_budget=None)
    assert p.rows * p.cols * 4 * similarity.TILE_BUFFERS <= tiles.BUDGETS["similarity", "cpu"]
    small = similarity.plan(32768, 32768, memory_budget=1 << 20)
    assert small.rows * small.cols * 4 * similarity.TILE_BUFFERS <= 1 << 20
    img, txt = _leaf(50, 4, seed=35), _leaf(50, 4, seed=36)
    a = ce.clip_loss(img, txt, 3.0, memory_budget=4096)
    _check(a, ref.clip(img, txt, 3.0), (img, txt))


# ------------------------------------------------------------------ errors


def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ce.ArgumentError, match="same feature dimension"):
        ce.clip_loss(x, torch.randn(4, 5), 1.0)
    with pytest.raises(ce.ArgumentError, match="same batch size"):
        ce.clip_loss(x, torch.randn(5, 3), 1.0)
    with pytest.raises(ce.ArgumentTypeError, match="same dtype"):
        ce.siglip_loss(x, x.double(), 1.0, 0.0)
    with pytest.raises(ce.ArgumentError, match="image_features must be 2-D"):
        ce.clip_loss(torch.randn(4), x, 1.0)
    with pytest.raises(ce.ArgumentTypeError, match="floating point"):
        ce.nt_xent(torch.ones(4, 3, dtype=torch.long), x)
    with pytest.raises(ce.ArgumentError, match="temperature must be a positive number"):
        ce.nt_xent(x, x, temperature=0.0)
    with pytest.raises(ce.ArgumentError, match="logit_scale must hold one element"):
        ce.clip_loss(x, x, torch.ones(2))
    with pytest.raises(ce.ArgumentTypeError, match="logit_scale must be a number"):
        ce.clip_loss(x, x, None)
    with pytest.raises(ce.ArgumentError, match="design must be one of"):
        ce.clip_loss(x, x, 1.0, design="allgather")
    with pytest.raises(ce.ArgumentError, match="tile_rows must be a positive int"):
        ce.clip_loss(x, x, 1.0, tile_rows=0)
    with pytest.raises(ce.ArgumentError, match="at least one row"):
        ce.clip_loss(x[:0], x[:0], 1.0)
    with pytest.raises(ce.ArgumentError, match=r"labels must have shape \[4\]"):
        ce.supcon_loss(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ce.ArgumentTypeError, match="Long"):
        ce.supcon_loss(x, torch.zeros(4))
    with pytest.raises(ce.ArgumentError, match="features must be"):
        ce.supcon_loss(torch.randn(4))
    with pytest.raises(ce.ArgumentError, match="negative_keys"):
        ce.info_nce(x, x, torch.randn(2, 5))


def test_tour_clip_training_uses_clip_loss():
    # The tour's figure 07 trains two heads with ce.clip_loss; its first loss must be the
    # symmetric CLIP loss written with F.cross_entropy on the same logits.
    from crossent.tour import clip_demo

    hist = clip_demo.train(steps=2)
    img, txt = clip_demo.generate_pairs()
    g = torch.Generator().manual_seed(clip_demo.SEED + 1)
    w_img = torch.randn(img.shape[1], 16, generator=g, dtype=D) / img.shape[1] ** 0.5
    w_txt = torch.randn(txt.shape[1], 16, generator=g, dtype=D) / txt.shape[1] ** 0.5
    logits = 10.0 * F.normalize(img @ w_img, dim=1) @ F.normalize(txt @ w_txt, dim=1).T
    diag = torch.arange(logits.shape[0])
    expected = (F.cross_entropy(logits, diag) + F.cross_entropy(logits.T, diag)) / 2
    assert abs(hist.loss[0] - expected.item()) < 1e-12
    assert hist.loss[-1] < hist.loss[0]


# ------------------------------------------------------------------ first order only


def _every_loss(x, y, s, b):
    """Each contrastive loss (and module) on features ``x``, ``y`` with a learnable
    scale ``s`` (also used as a temperature) and bias ``b``."""
    labels = torch.tensor([0, 1, 0, 1, 2])
    return {
        "clip_loss": lambda: ce.clip_loss(x, y, s, tile_rows=2, tile_cols=3),
        "clip_loss(bias)": lambda: ce.clip_loss(x, y, s, logit_bias=b),
        "siglip_loss": lambda: ce.siglip_loss(x, y, s, b, tile_rows=2, tile_cols=3),
        "info_nce": lambda: ce.info_nce(x, y, y[:2], temperature=s),
        "nt_xent": lambda: ce.nt_xent(x, y, temperature=s),
        "supcon_loss": lambda: ce.supcon_loss(torch.stack([x, y], 1), labels, temperature=s),
        "ClipLoss": lambda: contrastive.ClipLoss()(x, y, s),
        "SigLipLoss": lambda: contrastive.SigLipLoss()(x, y, s, b),
    }


@pytest.mark.parametrize("name", list(_every_loss(None, None, None, None)))
def test_create_graph_raises_a_clear_error(name):
    """issue 20, defect 3: a gradient penalty through a contrastive loss must not get a
    graph-less gradient (siglip_loss did, silently) nor PyTorch's "functions with out=..."
    message (clip_loss); plain backward still works."""
    x, y = _leaf(5, 4, seed=60), _leaf(5, 4, seed=61)
    s, b = _scalar(0.5), _scalar(-1.0)
    loss = _every_loss(x, y, s, b)[name]
    with pytest.raises(ce.ArgumentError, match=r"double backward \(create_graph=True\) is not "
                                              r"supported for this loss"):
        torch.autograd.grad(loss(), (x, s), create_graph=True)
    g = torch.autograd.grad(loss(), (x, s))
    assert all(t is not None and torch.isfinite(t).all() for t in g)
    loss().backward()
    assert x.grad is not None and s.grad is not None


def test_create_graph_error_names_the_loss():
    x, y = _leaf(4, 3, seed=62), _leaf(4, 3, seed=63)
    with pytest.raises(ce.ArgumentError, match="crossent.siglip_loss: double backward"):
        torch.autograd.grad(ce.siglip_loss(x, y, 2.0, -1.0), x, create_graph=True)


# ------------------------------------------------------------------ the backend table


def test_similarity_backends_come_from_the_one_table():
    from crossent.contrastive import engine
    from crossent.kernels import dispatch

    assert dispatch.get_backend("torch", op="similarity") is similarity
    assert dispatch.get_backend("torch").__name__ == "crossent.kernels.torch_chunked"
    assert dispatch.get_backend("torch", op="linear").__name__ == "crossent.kernels.torch_chunked"
    assert engine.backend_module("torch") is similarity
    with pytest.raises(ce.ArgumentError, match="no backend 'cuda' for op 'similarity'"):
        dispatch.get_backend("cuda", op="similarity")
    with pytest.raises(ce.ArgumentError, match="op 'attention'"):
        dispatch.get_backend("torch", op="attention")


def test_the_engine_runs_the_backend_it_is_given(monkeypatch):
    """The autograd Function calls the table's backend module (not an if/else)."""
    calls = []
    forward, backward = similarity.block_forward, similarity.block_backward
    monkeypatch.setattr(similarity, "block_forward", lambda *a, **k: calls.append("f") or forward(*a, **k))
    monkeypatch.setattr(similarity, "block_backward", lambda *a, **k: calls.append("b") or backward(*a, **k))
    img, txt = _leaf(6, 4, seed=64), _leaf(6, 4, seed=65)
    scale = _scalar(3.0)
    loss = ce.clip_loss(img, txt, scale, backend="torch")
    _check(loss, ref.clip(img, txt, scale), (img, txt, scale))
    assert calls == ["f", "b"]


# ------------------------------------------------------------------ one-rank groups


def test_a_group_needs_torch_distributed():
    """A group given while torch.distributed is not initialised is an error, in every
    family (dist.group.WORLD is None then, and means one process)."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    x = _leaf(4, 3, seed=66)
    z, y = torch.randn(4, 5, dtype=D), torch.tensor([0, 1, 2, 3])
    w = torch.randn(5, 3, dtype=D)
    for call in (lambda: ce.clip_loss(x, x, 2.0, group=object()),
                 lambda: ce.cross_entropy(z, y, group=object()),
                 lambda: ce.linear_cross_entropy(x, w, y, group=object())):
        with pytest.raises(ce.ArgumentError, match="needs torch.distributed to be initialised"):
            call()
    torch.testing.assert_close(ce.clip_loss(x, x, 2.0, group=dist.group.WORLD),
                               ce.clip_loss(x, x, 2.0))
