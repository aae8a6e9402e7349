"""The fused linear engine's autograd contract (:mod:`crossent.linear.engine`).

- A probability target that requires grad gets PyTorch's gradient: the expected values are
  ``torch.autograd.grad`` of ``F.cross_entropy(F.linear(x, W, b), q)`` in float64 (issue 20,
  defect 8), on one process and on 2 Gloo ranks with the classes sharded.
- ``create_graph=True`` raises a clear error (double backward is not supported) for the fused
  linear loss, the fused margin heads and the losses on given logits, instead of returning a
  gradient without a graph (issue 20, defect 3).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import crossent as ce

N, H, V = 7, 5, 11
DOUBLE_BACKWARD = "double backward .*create_graph=True.* is not supported"


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    return {
        "x": torch.randn(N, H, generator=g, **f64),
        "w": torch.randn(V, H, generator=g, **f64),
        "b": torch.randn(V, generator=g, **f64),
        "q": torch.softmax(2 * torch.randn(N, V, generator=g, **f64), 1),
        "cw": torch.rand(V, generator=g, **f64) + 0.5,
        "y": torch.randint(0, V, (N,), generator=g),
        "up": torch.randn(N, generator=g, **f64),
    }


def _upstream(loss, up):
    """A non-trivial upstream gradient: 1.7 for a scalar loss, ``up`` per row for 'none'."""
    return up[: loss.numel()].reshape(loss.shape) if loss.dim() else torch.tensor(1.7, dtype=loss.dtype)


# ------------------------------------------------------------ probability-target gradient

OPTIONS = {
    "plain": {},
    "smoothing_weight": {"label_smoothing": 0.2, "weight": True},
    "softcap_scale": {"softcap": 3.0, "logit_scale": 0.7},
    "tiled": {"token_chunk_size": 3, "vocab_chunk_size": 4, "label_smoothing": 0.1},
}


def _reference_logits(x, w, b, opts):
    z = F.linear(x, w, b) * opts.get("logit_scale", 1.0)
    if opts.get("softcap"):
        z = opts["softcap"] * torch.tanh(z / opts["softcap"])
    return z


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_probability_target_gets_pytorch_gradient(reduction, name):
    d = _data()
    opts = dict(OPTIONS[name])
    cw = d["cw"] if opts.pop("weight", False) else None

    def grads(fn):
        x, w, b, q = (d[k].clone().requires_grad_() for k in ("x", "w", "b", "q"))
        loss = fn(x, w, b, q)
        return loss.detach(), torch.autograd.grad(loss, (x, w, b, q), _upstream(loss, d["up"]))

    got_loss, got = grads(lambda x, w, b, q: ce.linear_cross_entropy(
        x, w, q, linear_bias=b, weight=cw, reduction=reduction, **opts))
    ref_opts = {k: v for k, v in opts.items() if k == "label_smoothing"}
    want_loss, want = grads(lambda x, w, b, q: F.cross_entropy(
        _reference_logits(x, w, b, opts), q, weight=cw, reduction=reduction, **ref_opts))
    torch.testing.assert_close(got_loss, want_loss)
    for name_, a, e in zip(("x", "w", "b", "q"), got, want):
        torch.testing.assert_close(a, e, msg=lambda m: f"grad {name_}: {m}")


def test_probability_target_gradient_one_row_and_dtype():
    """A 1-D input with a (V,) target; a float32 problem gives the target's gradient in the
    target's dtype."""
    d = _data()
    x, w = d["x"][0].clone().requires_grad_(), d["w"]
    q = d["q"][0].clone().requires_grad_()
    got = torch.autograd.grad(ce.linear_cross_entropy(x, w, q), (x, q))
    want = torch.autograd.grad(F.cross_entropy(F.linear(x, w), q), (x, q))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    q32 = d["q"].float().requires_grad_()
    (g,) = torch.autograd.grad(ce.linear_cross_entropy(d["x"].float(), d["w"].float(), q32), q32)
    qq = d["q"].clone().requires_grad_()
    (e,) = torch.autograd.grad(F.cross_entropy(F.linear(d["x"], d["w"]), qq), qq)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g.double(), e, rtol=1e-5, atol=1e-6)


def test_target_without_grad_still_gets_none():
    d = _data()
    x = d["x"].clone().requires_grad_()
    loss = ce.linear_cross_entropy(x, d["w"], d["q"])
    loss.backward()
    assert d["q"].grad is None and x.grad is not None


# ------------------------------------------------------------------- double backward


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_create_graph_raises_for_linear_cross_entropy(reduction):
    d = _data()
    x, w = d["x"].clone().requires_grad_(), d["w"].clone().requires_grad_()
    for target in (d["y"], d["q"]):
        loss = ce.linear_cross_entropy(x, w, target, linear_bias=d["b"], reduction=reduction)
        with pytest.raises(NotImplementedError, match="crossent.linear_cross_entropy: " + DOUBLE_BACKWARD):
            torch.autograd.grad(loss.sum(), x, create_graph=True)
    # without create_graph the same call works
    loss = ce.linear_cross_entropy(x, w, d["y"], reduction=reduction)
    assert torch.autograd.grad(loss.sum(), x)[0].grad_fn is None


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("head", [ce.arcface_loss, ce.cosface_loss, ce.sphereface_loss])
def test_create_graph_raises_for_margin_heads(head, reduction):
    d = _data()
    e = d["x"].clone().requires_grad_()
    loss = head(e, d["w"], d["y"], reduction=reduction)
    with pytest.raises(NotImplementedError, match="margin loss: " + DOUBLE_BACKWARD):
        torch.autograd.grad(loss.sum(), e, create_graph=True)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("loss_fn", [ce.cross_entropy, ce.focal_loss], ids=["cross_entropy", "focal"])
def test_create_graph_raises_for_losses_on_logits(loss_fn, reduction):
    d = _data()
    z = F.linear(d["x"], d["w"]).requires_grad_()
    loss = loss_fn(z, d["y"], reduction=reduction)
    with pytest.raises(NotImplementedError, match="crossent.cross_entropy .*" + DOUBLE_BACKWARD):
        torch.autograd.grad(loss.sum(), z, create_graph=True)


# ------------------------------------------------------------------- 2 Gloo ranks

SPLIT = [4, 7]


def _sharded_job(rank, world_size, d):
    start, size = sum(SPLIT[:rank]), SPLIT[rank]
    out = {}
    for reduction in ("mean", "sum", "none"):
        x = d["x"].clone().requires_grad_()
        w = d["w"][start:start + size].clone().requires_grad_()
        b = d["b"][start:start + size].clone().requires_grad_()
        q = d["q"][:, start:start + size].clone().requires_grad_()
        loss = ce.linear_cross_entropy(x, w, q, linear_bias=b, reduction=reduction,
                                       label_smoothing=0.1, group=dist.group.WORLD)
        grads = torch.autograd.grad(loss, (x, w, b, q), _upstream(loss, d["up"]))
        try:
            again = ce.linear_cross_entropy(x, w, d["y"], reduction=reduction,
                                            group=dist.group.WORLD)
            torch.autograd.grad(again.sum(), x, create_graph=True)
            error = None
        except NotImplementedError as exc:
            error = str(exc)
        out[reduction] = {"loss": loss.detach(), "grads": grads, "error": error}
    return out


@pytest.mark.slow
def test_sharded_probability_gradient_and_create_graph(rank_pool):
    d = _data(1)
    results = rank_pool(2).run(_sharded_job, d)
    for reduction in ("mean", "sum", "none"):
        x, w, b, q = (d[k].clone().requires_grad_() for k in ("x", "w", "b", "q"))
        loss = F.cross_entropy(F.linear(x, w, b), q, reduction=reduction, label_smoothing=0.1)
        want = torch.autograd.grad(loss, (x, w, b, q), _upstream(loss, d["up"]))
        for rank in range(2):
            start, size = sum(SPLIT[:rank]), SPLIT[rank]
            got = results[rank][reduction]
            msg = f"{reduction} on rank {rank}"
            torch.testing.assert_close(got["loss"], loss.detach(), msg=msg)
            gx, gw, gb, gq = got["grads"]
            torch.testing.assert_close(gx, want[0], msg=msg)
            torch.testing.assert_close(gw, want[1][start:start + size], msg=msg)
            torch.testing.assert_close(gb, want[2][start:start + size], msg=msg)
            torch.testing.assert_close(gq, want[3][:, start:start + size], msg=msg)
            assert got["error"] is not None, msg
            assert "crossent.linear_cross_entropy(group=...): double backward" in got["error"], msg


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_probability_target_gradient_under_compile(reduction):
    """The target's gradient through the custom ops under torch.compile(fullgraph=True)."""
    d = _data()

    def grads(fn):
        x, w, q = (d[k].clone().requires_grad_() for k in ("x", "w", "q"))
        loss = fn(x, w, q)
        return torch.autograd.grad(loss, (x, w, q), _upstream(loss, d["up"]))

    got = grads(torch.compile(lambda x, w, q: ce.linear_cross_entropy(
        x, w, q, reduction=reduction, label_smoothing=0.1), fullgraph=True))
    want = grads(lambda x, w, q: F.cross_entropy(F.linear(x, w), q, reduction=reduction,
                                                 label_smoothing=0.1))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
