"""The fused losses under ``torch.compile(fullgraph=True)`` with the default inductor backend.

Fused: the losses that never form their full score matrix — :func:`crossent.linear_cross_entropy`
(a ``torch.library`` custom op with a fake implementation), the margin heads
(:mod:`crossent.margin`, the same op with a margin score source) and the contrastive
losses (:mod:`crossent.contrastive`, a tiled ``autograd.Function``). ``fullgraph=True``
fails on any graph break, so each call is traced whole, its backward included.

Each case checks the compiled value and input gradients against eager crossent and,
where one is given, against a reference written here in plain PyTorch (full logits,
``F.cross_entropy``) or taken from ``contrastive_reference.py`` (the papers' formulas):
CPU in float64 (inductor's C++ backend); CUDA in float32 when a GPU is present.

The core family (``cross_entropy`` and friends) is in ``test_compile.py``. (This file
replaces ``test_compile_inductor.py``, whose linear and margin cases it holds, with more
options and independent references.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import contrastive_reference as ref
import crossent as ce
import oracle

pytestmark = pytest.mark.slow

N, H, V = 6, 5, 11


def _data(device, dtype):
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device, dtype)

    y = torch.randint(0, V, (N,), generator=g).to(device)
    y_ignored = y.clone()
    y_ignored[[1, 4]] = -100
    return {
        "x": r(N, H), "w": r(V, H), "b": r(V), "y": y, "y_ignored": y_ignored,
        "probs": torch.softmax(2 * r(N, V), 1),
        "f1": F.normalize(r(N, H), dim=1), "f2": F.normalize(r(N, H), dim=1),
        "views": F.normalize(r(N, 2, H), dim=2),
        "labels": torch.tensor([0, 1, 0, 2, 1, 0], device=device),
        "scale": torch.tensor(5.0, dtype=dtype, device=device),
        "bias": torch.tensor(-2.0, dtype=dtype, device=device),
        "temperature": torch.tensor(0.2, dtype=dtype, device=device),
    }


def _reference_linear(d, target, *, bias=False, **options):
    """Full logits in plain PyTorch (the shared oracle, in the inputs' dtype)."""
    return oracle.linear_cross_entropy(d["x"], d["w"], d["b"] if bias else None, target,
                                       float64=False, **options)


def _linear(target, **kwargs):
    """A linear cross-entropy case: (inputs with gradients, crossent call, reference)."""
    bias = kwargs.pop("bias", False)
    names = ("x", "w", "b") if bias else ("x", "w")

    def call(d):
        loss = ce.linear_cross_entropy(d["x"], d["w"], d[target], linear_bias=d["b"] if bias else None,
                                       **kwargs)
        return loss * torch.arange(1.0, N + 1, dtype=loss.dtype, device=loss.device) \
            if loss.dim() else loss  # 'none': a different upstream gradient per row

    def reference(d):
        options = {k: v for k, v in kwargs.items() if not k.endswith("chunk_size")}  # tiling
        loss = _reference_linear(d, d[target], bias=bias, **options)
        return loss * torch.arange(1.0, N + 1, dtype=loss.dtype, device=loss.device) \
            if loss.dim() else loss

    return names, call, reference


def _margin(fn, **kwargs):
    return ("x", "w"), lambda d: fn(d["x"], d["w"], d["y"], **kwargs), None


def _token_log_probs(**kwargs):
    """linear_token_log_probs, both outputs differentiable, against full logits here."""
    bias = kwargs.pop("bias", False)
    names = ("x", "w", "b") if bias else ("x", "w")
    temperature = kwargs.get("temperature", 1.0)

    def combine(lp, ent):  # a different upstream gradient per row and per output
        a = torch.arange(1.0, N + 1, dtype=lp.dtype, device=lp.device)
        return lp * a + ent * a.flip(0)

    def call(d):
        return combine(*ce.linear_token_log_probs(
            d["x"], d["w"], d["y_ignored"], linear_bias=d["b"] if bias else None,
            return_entropy=True, **kwargs))

    def reference(d):
        log_p = torch.log_softmax(F.linear(d["x"], d["w"], d["b"] if bias else None)
                                  / temperature, 1)
        valid = d["y_ignored"] != -100
        lp = log_p.gather(1, d["y_ignored"].clamp(min=0).unsqueeze(1)).squeeze(1)
        ent = -(log_p.exp() * log_p).sum(1)
        return combine(lp * valid, ent * valid)

    return names, call, reference


# name -> (the differentiable inputs, the crossent call, an independent reference or None)
CASES = {
    # linear_cross_entropy: class indices
    "linear_mean": _linear("y"),
    "linear_options": _linear("y_ignored", z_loss=1e-2, softcap=4.0, label_smoothing=0.1, bias=True),
    "linear_none": _linear("y_ignored", reduction="none", label_smoothing=0.1),
    "linear_sum": _linear("y_ignored", reduction="sum", z_loss=1e-2),
    # the two-pass path (vocabulary tiles merged), under the same op
    "linear_tiled": _linear("y_ignored", softcap=4.0, token_chunk_size=4, vocab_chunk_size=4),
    # probability targets
    "linear_probs": _linear("probs", label_smoothing=0.1, z_loss=1e-2),
    "linear_probs_none": _linear("probs", reduction="none", softcap=4.0),
    "linear_probs_sum": _linear("probs", reduction="sum", bias=True),
    # margin heads
    "arcface_loss": _margin(ce.arcface_loss, scale=8.0, margin=0.3),
    "cosface_loss": _margin(ce.cosface_loss, scale=8.0, reduction="sum"),
    "sphereface_loss": _margin(ce.sphereface_loss, margin=2),
    "large_margin_softmax_loss": _margin(ce.large_margin_softmax_loss, margin=2, reduction="none"),
    "combined_margin_loss": _margin(ce.combined_margin_loss, scale=8.0, m1=1.0, m2=0.3, m3=0.1),
    "subcenter_arcface_loss": (("x", "w"), lambda d: ce.subcenter_arcface_loss(
        d["x"], d["w"][:10], d["y"] % 5, centers=2, scale=8.0), None),
    # contrastive losses (a learnable scale / bias / temperature where the loss has one)
    "clip_loss": (("f1", "f2", "scale"), lambda d: ce.clip_loss(d["f1"], d["f2"], d["scale"]),
                  lambda d: ref.clip(d["f1"], d["f2"], d["scale"])),
    "info_nce": (("f1", "f2", "w", "temperature"), lambda d: ce.info_nce(
        d["f1"], d["f2"], d["w"][:3], temperature=d["temperature"]),
        lambda d: ref.info_nce(d["f1"], d["f2"], d["w"][:3], temperature=d["temperature"])),
    "nt_xent": (("f1", "f2"), lambda d: ce.nt_xent(d["f1"], d["f2"], temperature=0.5),
                lambda d: ref.nt_xent(d["f1"], d["f2"], temperature=0.5)),
    "supcon_loss": (("views",), lambda d: ce.supcon_loss(d["views"], d["labels"]),
                    lambda d: ref.supcon(d["views"], d["labels"])),
    "siglip_loss": (("f1", "f2", "scale", "bias"), lambda d: ce.siglip_loss(
        d["f1"], d["f2"], d["scale"], d["bias"]), lambda d: ref.siglip(d["f1"], d["f2"], d["scale"], d["bias"])),
    # retrieval: logQ correction, pool negatives, accidental hits (labels repeat as ids)
    "sampled_softmax_loss": (("f1", "f2", "w", "temperature"), lambda d: ce.sampled_softmax_loss(
        d["f1"], d["f2"], item_ids=d["labels"], item_log_q=d["b"][:N].detach(),
        negatives=d["w"][:3], negative_ids=d["labels"][:3], negative_log_q=d["b"][N:N + 3].detach(),
        temperature=d["temperature"]), None),
    # per-token log-probabilities and entropy (the entropy's gradient in the same backward)
    "linear_token_log_probs": _token_log_probs(temperature=0.7, bias=True),
}


@pytest.fixture(autouse=True)
def _in_process_compile():
    # compile_threads=1: inductor compiles in this process instead of starting a pool of
    # compile workers (on CI's 2 cores, already shared by two pytest-xdist workers)
    with torch._inductor.config.patch(compile_threads=1):
        yield


def _run(call, names, device, dtype, compiled):
    data = _data(device, dtype)
    for name in names:
        data[name] = data[name].clone().requires_grad_()
    fn = torch.compile(call, fullgraph=True) if compiled else call
    loss = fn(data)
    if loss.dim():
        loss = loss.sum()
    return loss.detach(), torch.autograd.grad(loss, [data[n] for n in names])


def _check(case, device, dtype, **tol):
    names, call, reference = CASES[case]
    torch._dynamo.reset()
    got, got_grads = _run(call, names, device, dtype, compiled=True)
    want, want_grads = _run(call, names, device, dtype, compiled=False)
    torch.testing.assert_close(got, want, **tol)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **tol)
    if reference is not None:
        ref_value, ref_grads = _run(reference, names, device, dtype, compiled=False)
        torch.testing.assert_close(got, ref_value.to(got.dtype), **tol)
        for g, w in zip(got_grads, ref_grads):
            torch.testing.assert_close(g, w.to(g.dtype), **tol)


def test_the_inputs_exercise_the_options():
    """The cases mean what they say: ignored rows present, soft-capping active."""
    d = _data("cpu", torch.float64)
    assert (d["y_ignored"] == -100).sum() == 2
    assert F.linear(d["x"], d["w"]).abs().max() > 4.0  # a cap of 4 changes some logits


@pytest.mark.parametrize("case", list(CASES))
def test_inductor_fullgraph_cpu(case):
    _check(case, "cpu", torch.float64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", list(CASES))
def test_inductor_fullgraph_cuda(case):
    _check(case, "cuda", torch.float32, rtol=1e-4, atol=1e-5)
