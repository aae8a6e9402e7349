"""Edge cases, one test each, with PyTorch as the oracle wherever PyTorch defines the answer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import crossent as ce

D = torch.float64


def close(a, b, **kw):
    torch.testing.assert_close(a, b, equal_nan=True, **kw)


def value_and_grad(fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    out = fn(x, *args, **kwargs)
    (g,) = torch.autograd.grad(out.sum(), x)
    return out.detach(), g


def assert_like_torch(ce_fn, torch_fn, x, *args, **kwargs):
    out_c, g_c = value_and_grad(ce_fn, x, *args, **kwargs)
    out_t, g_t = value_and_grad(torch_fn, x, *args, **kwargs)
    close(out_c, out_t)
    close(g_c, g_t)
    return out_c, g_c


# ----------------------------------------------------------------------------- all ignored


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_targets_ignored_like_torch(reduction):
    x = torch.randn(4, 5, dtype=D)
    y = torch.full((4,), -100)
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction=reduction)
    if reduction == "mean":
        assert torch.isnan(out)
    assert torch.all(torch.isfinite(g)) and torch.all(g == 0)


def test_all_targets_ignored_with_weight_and_smoothing_is_nan_with_zero_grad():
    x = torch.randn(4, 5, dtype=D)
    y = torch.full((4,), 3)
    kw = dict(ignore_index=3, weight=torch.rand(5, dtype=D), label_smoothing=0.1)
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, **kw)
    assert torch.isnan(out)
    assert torch.all(g == 0)


def test_all_targets_ignored_zero_mode():
    x = torch.randn(4, 5, dtype=D)
    y = torch.full((4,), -100)
    out, g = value_and_grad(ce.cross_entropy, x, y, all_ignored="zero")
    assert out.item() == 0.0
    assert torch.all(g == 0)


def test_all_targets_ignored_nll_loss_like_torch():
    x = torch.randn(3, 4, dtype=D).log_softmax(1)
    assert_like_torch(ce.nll_loss, F.nll_loss, x, torch.full((3,), -100))


# ----------------------------------------------------------------------------- empty batch


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("target", ["index", "prob"])
def test_empty_batch_like_torch(reduction, target):
    x = torch.randn(0, 5, dtype=D)
    y = torch.zeros(0, dtype=torch.long) if target == "index" else torch.rand(0, 5, dtype=D)
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction=reduction)
    assert g.shape == (0, 5)
    assert out.shape == F.cross_entropy(x, y, reduction=reduction).shape


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_nll_loss_like_torch(reduction):
    x = torch.randn(0, 3, dtype=D)
    assert_like_torch(ce.nll_loss, F.nll_loss, x, torch.zeros(0, dtype=torch.long),
                      reduction=reduction)


def test_empty_spatial_dims_like_torch():
    x = torch.randn(2, 3, 0, dtype=D)
    y = torch.zeros(2, 0, dtype=torch.long)
    for reduction in ("mean", "sum", "none"):
        assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction=reduction)


def test_empty_batch_bce_and_kl_like_torch():
    p = torch.rand(0, 3, dtype=D)
    close(ce.binary_cross_entropy(p, p.clone()), F.binary_cross_entropy(p, p.clone()))
    close(ce.binary_cross_entropy_with_logits(p, p.clone()),
          F.binary_cross_entropy_with_logits(p, p.clone()))
    close(ce.kl_div(p, p.clone(), reduction="sum"), F.kl_div(p, p.clone(), reduction="sum"))


# ----------------------------------------------------------------------------- one class


def test_one_class_loss_is_zero_like_torch():
    x = torch.randn(3, 1, dtype=D) * 10
    y = torch.zeros(3, dtype=torch.long)
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y)
    assert out.item() == 0.0 and torch.all(g == 0)


def test_one_class_with_smoothing_and_prob_target_like_torch():
    x = torch.randn(3, 1, dtype=D)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, torch.zeros(3, dtype=torch.long),
                      label_smoothing=0.3)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, torch.ones(3, 1, dtype=D))


# ----------------------------------------------------------------------------- extreme logits


HUGE = [[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4]]
HUGE_Y = torch.tensor([1, 2, 0])
HUGE_LOSS = [2e4, 0.0, math.log(2)]


def test_huge_logits_like_torch_float64():
    x = torch.tensor(HUGE, dtype=D)
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, HUGE_Y, reduction="none")
    close(out, torch.tensor(HUGE_LOSS, dtype=D))
    assert torch.all(torch.isfinite(g))


def test_huge_logits_float32_finite_and_within_logit_rounding():
    # In float32 a loss next to |logit| = 1e4 is only known to ~ulp(1e4) = 1e-3 in general
    # (torch happens to be exact when the target is the max logit); crossent must be finite,
    # within a few ulp of the logits' magnitude of the exact value, and have torch's gradient.
    x = torch.tensor(HUGE, dtype=torch.float32)
    out, g = value_and_grad(ce.cross_entropy, x, HUGE_Y, reduction="none")
    _, g_t = value_and_grad(F.cross_entropy, x, HUGE_Y, reduction="none")
    assert torch.all(torch.isfinite(out)) and torch.all(torch.isfinite(g))
    tol = 4 * torch.finfo(torch.float32).eps * 1e4
    close(out.double(), torch.tensor(HUGE_LOSS, dtype=D), rtol=0, atol=tol)
    close(g, g_t)


def test_huge_logits_with_smoothing_like_torch():
    x = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.float32)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, torch.tensor([0]),
                      label_smoothing=0.1)


def test_minus_inf_non_target_logit_is_finite_like_torch():
    inf = math.inf
    x = torch.tensor([[0.0, -inf, 1.0], [-inf, -inf, 2.0]], dtype=D)
    y = torch.tensor([0, 2])
    out, g = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction="none")
    assert torch.all(torch.isfinite(out)) and torch.all(torch.isfinite(g))


def test_minus_inf_target_logit_is_inf_like_torch():
    x = torch.tensor([[0.0, -math.inf, 1.0]], dtype=D)
    out, g = value_and_grad(ce.cross_entropy, x, torch.tensor([1]), reduction="none")
    assert out.item() == math.inf
    close(g, value_and_grad(F.cross_entropy, x, torch.tensor([1]), reduction="none")[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_minus_inf_or_nan_row_is_nan_like_torch(dtype):
    # every dtype's chunk path: float32 works on the caller's rows, half inputs on a float
    # copy that the softmax overwrites in place
    inf, nan = math.inf, math.nan
    x = torch.tensor([[-inf, -inf, -inf], [0.0, nan, 1.0], [0.5, -1.0, 2.0]], dtype=dtype)
    y = torch.tensor([0, 2, 1])
    out_c, g_c = value_and_grad(ce.cross_entropy, x, y, reduction="none")
    out_t, g_t = value_and_grad(F.cross_entropy, x, y, reduction="none")
    assert torch.isnan(out_c[:2]).all() and torch.isnan(g_c[:2]).all()
    close(out_c, out_t.float(), atol=2e-2, rtol=2e-2)
    close(g_c, g_t, atol=2e-2, rtol=2e-2)


def test_minus_inf_with_prob_target_finite_where_torch_is():
    # torch returns nan when a zero target meets a -inf logit (0 * -inf); where torch is
    # finite crossent must agree, and it must never be worse than torch
    inf = math.inf
    x = torch.tensor([[0.0, -inf, 1.0], [0.5, 0.1, 2.0]], dtype=D)
    t = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.3, 0.5]], dtype=D)
    got = ce.cross_entropy(x, t, reduction="none")
    want = F.cross_entropy(x, t, reduction="none")
    finite = torch.isfinite(want)
    close(got[finite], want[finite])
    assert torch.all(torch.isfinite(got[finite]))


def test_bce_log_clamp_like_torch():
    # torch clamps log at -100: BCE(0, 1) = 100, and the gradient uses eps = 1e-12
    p = torch.tensor([0.0, 1.0, 0.5], dtype=D)
    y = torch.tensor([1.0, 0.0, 1.0], dtype=D)
    out, _ = assert_like_torch(ce.binary_cross_entropy, F.binary_cross_entropy, p, y,
                               reduction="none")
    close(out[:2], torch.tensor([100.0, 100.0], dtype=D))


def test_bce_with_logits_huge_logits_like_torch():
    x = torch.tensor([1e4, -1e4, 50.0, -50.0], dtype=torch.float32)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    out, g = assert_like_torch(ce.binary_cross_entropy_with_logits,
                               F.binary_cross_entropy_with_logits, x, y, reduction="none")
    assert torch.all(torch.isfinite(out)) and torch.all(torch.isfinite(g))


# ----------------------------------------------------------------------------- ignore_index


def test_ignore_index_that_is_a_valid_class_like_torch():
    x = torch.randn(6, 4, dtype=D)
    y = torch.tensor([0, 2, 2, 1, 3, 2])
    for kw in ({}, dict(weight=torch.rand(4, dtype=D)), dict(label_smoothing=0.2)):
        for reduction in ("mean", "sum", "none"):
            assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, ignore_index=2,
                              reduction=reduction, **kw)


def test_ignore_index_out_of_class_range_like_torch():
    x = torch.randn(4, 5, dtype=D)
    y = torch.tensor([0, 10, 2, 10])
    out, _ = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, ignore_index=10)
    assert torch.isfinite(out)


def test_ignore_index_minus_one_like_torch():
    x = torch.randn(4, 5, dtype=D)
    y = torch.tensor([0, -1, 2, -1])
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, ignore_index=-1,
                      label_smoothing=0.1)
    assert_like_torch(ce.nll_loss, F.nll_loss, x, y, ignore_index=-1, reduction="none")


def test_default_ignore_index_in_kdim_target_like_torch():
    x = torch.randn(2, 3, 4, 4, dtype=D)
    y = torch.randint(0, 3, (2, 4, 4))
    y[0, 1:3, 2] = -100
    for reduction in ("mean", "sum", "none"):
        assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction=reduction,
                          weight=torch.rand(3, dtype=D))


# ----------------------------------------------------------------------------- layouts, dtypes


def test_transposed_logits_like_torch():
    base = torch.randn(5, 7, dtype=D)
    x = base.t()  # (7, 5), non-contiguous
    assert not x.is_contiguous()
    y = torch.randint(0, 5, (7,))
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, label_smoothing=0.1)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x,
                      torch.softmax(torch.randn(5, 7, dtype=D), 0).t())


def test_sliced_logits_and_target_like_torch():
    x = torch.randn(8, 12, dtype=D)[::2, 1::2]  # (4, 6), strided
    y = torch.randint(0, 6, (8,))[::2]
    assert not x.is_contiguous() and not y.is_contiguous()
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, weight=torch.rand(6, dtype=D))
    assert_like_torch(ce.nll_loss, F.nll_loss, x, y, reduction="none")


def test_channels_last_kdim_like_torch():
    x = torch.randn(2, 3, 4, 5, dtype=D).to(memory_format=torch.channels_last)
    y = torch.randint(0, 3, (2, 4, 5))
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, reduction="none")


def test_expanded_inputs_like_torch():
    x = torch.randn(1, 5, dtype=D).expand(4, 5)  # stride 0
    y = torch.tensor([0, 1, 2, 3])
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y)
    p = torch.rand(1, 5, dtype=D).expand(4, 5) * 0.9 + 0.05
    assert_like_torch(ce.binary_cross_entropy, F.binary_cross_entropy, p, torch.rand(4, 5,
                      dtype=D))


def test_non_contiguous_binary_and_kl_like_torch():
    x = torch.randn(6, 4, dtype=D).t()
    t = torch.rand(6, 4, dtype=D).t()
    assert_like_torch(ce.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits,
                      x, t, pos_weight=torch.rand(6, dtype=D))
    assert_like_torch(ce.kl_div, F.kl_div, x.log_softmax(1), t, reduction="batchmean")


def test_uint8_targets_like_torch():
    # torch accepts Long or Byte class targets
    x = torch.randn(4, 5, dtype=D)
    y = torch.tensor([0, 4, 2, 1], dtype=torch.uint8)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y)
    assert_like_torch(ce.nll_loss, F.nll_loss, x, y, reduction="none")


def test_uint8_targets_with_ignore_index_255_like_torch():
    x = torch.randn(4, 5, dtype=D)
    y = torch.tensor([0, 255, 2, 255], dtype=torch.uint8)
    assert_like_torch(ce.cross_entropy, F.cross_entropy, x, y, ignore_index=255)


def test_1d_input_0d_target_like_torch():
    x = torch.randn(5, dtype=D)
    for reduction in ("mean", "sum", "none"):
        out, _ = assert_like_torch(ce.cross_entropy, F.cross_entropy, x, torch.tensor(3),
                                   reduction=reduction)
        assert out.dim() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_dtype_follows_input_for_full_precision(dtype):
    x = torch.randn(3, 4, dtype=dtype)
    y = torch.tensor([0, 1, 3])
    assert ce.cross_entropy(x, y).dtype == dtype
    assert ce.nll_loss(x, y).dtype == dtype
    assert ce.focal_loss(x, y).dtype == dtype
    assert ce.binary_cross_entropy_with_logits(x, torch.rand(3, 4, dtype=dtype)).dtype == dtype


HALF_LOSSES = {
    "cross_entropy": lambda x, y, p: ce.cross_entropy(x, y),
    "cross_entropy-prob": lambda x, y, p: ce.cross_entropy(x, p),
    "cross_entropy-extras": lambda x, y, p: ce.cross_entropy(x, y, z_loss=1e-3, softcap=5.0,
                                                             label_smoothing=0.1),
    "nll_loss": lambda x, y, p: ce.nll_loss(x, y),
    "bce": lambda x, y, p: ce.binary_cross_entropy(torch.sigmoid(x), p),
    "bce_logits": lambda x, y, p: ce.binary_cross_entropy_with_logits(x, p),
    "kl_div": lambda x, y, p: ce.kl_div(x.log_softmax(1), p, reduction="batchmean"),
    "js_div": lambda x, y, p: ce.js_div(x.log_softmax(1), p),
    "focal_loss": lambda x, y, p: ce.focal_loss(x, y),
    "sigmoid_focal_loss": lambda x, y, p: ce.sigmoid_focal_loss(x, p, reduction="sum"),
    "poly1": lambda x, y, p: ce.poly1_cross_entropy(x, y),
    "distillation": lambda x, y, p: ce.distillation_loss(x, x.detach() * 0.5, y),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(HALF_LOSSES))
def test_half_precision_loss_is_float32_and_grad_keeps_dtype(name, dtype):
    x = torch.randn(4, 5).to(dtype).requires_grad_()
    y = torch.tensor([0, 4, 2, 1])
    p = torch.softmax(torch.randn(4, 5), 1).to(dtype)
    loss = HALF_LOSSES[name](x, y, p)
    assert loss.dtype == torch.float32
    loss.backward()
    assert x.grad.dtype == dtype
    assert torch.all(torch.isfinite(x.grad))
    # and the value is close to the float64 computation on the same half values (loose: some
    # of these lambdas round an intermediate, e.g. sigmoid or log_softmax, to ``dtype``)
    want = HALF_LOSSES[name](x.detach().double(), y, p.double())
    tol = 8 * torch.finfo(dtype).eps
    close(loss.double(), want, rtol=tol, atol=tol)


def test_half_precision_softmax_keeps_dtype_like_torch():
    x = torch.randn(3, 4, dtype=torch.bfloat16)
    assert ce.softmax(x, dim=1).dtype == torch.bfloat16
    assert ce.log_softmax(x, dim=1, dtype=torch.float32).dtype == torch.float32


# ----------------------------------------------------------------------------- purity, determinism


CALLS = {
    "cross_entropy-index": lambda x, y, t, w: ce.cross_entropy(x, y, weight=w,
                                                               label_smoothing=0.1),
    "cross_entropy-prob": lambda x, y, t, w: ce.cross_entropy(x, t, weight=w, z_loss=0.1),
    "cross_entropy-extras": lambda x, y, t, w: ce.cross_entropy(x, y, softcap=2.0,
                                                                logit_scale=2.0),
    "nll_loss": lambda x, y, t, w: ce.nll_loss(x, y, weight=w),
    "bce_logits": lambda x, y, t, w: ce.binary_cross_entropy_with_logits(x, t, pos_weight=w),
    "kl_div": lambda x, y, t, w: ce.kl_div(x, t, reduction="batchmean"),
    "js_div": lambda x, y, t, w: ce.js_div(x.log_softmax(1), t),
    "focal": lambda x, y, t, w: ce.focal_loss(x, y, alpha=w),
    "poly1": lambda x, y, t, w: ce.poly1_cross_entropy(x, y, weight=w),
    "distillation": lambda x, y, t, w: ce.distillation_loss(x, t * 3, y, temperature=2.0),
}


def _inputs():
    x = torch.randn(5, 4, requires_grad=True)
    y = torch.tensor([0, 3, -100, 1, 2])
    t = torch.softmax(torch.randn(5, 4), 1).requires_grad_()
    w = torch.rand(4) + 0.5
    return x, y, t, w


@pytest.mark.parametrize("name", list(CALLS))
def test_no_caller_tensor_is_modified(name):
    x, y, t, w = _inputs()
    if name in ("kl_div", "nll_loss"):
        x = x.detach().log_softmax(1).requires_grad_()
    if name == "distillation":
        t = t.detach()
    ytmp = y.clamp(min=0) if name in ("bce_logits", "kl_div", "js_div") else y
    before = [v.detach().clone() for v in (x, ytmp, t, w)]
    loss = CALLS[name](x, ytmp, t, w)
    loss.backward()
    for a, b in zip((x, ytmp, t, w), before):
        assert torch.equal(a.detach(), b)
        assert a.dtype == b.dtype and a.stride() == b.stride()


@pytest.mark.parametrize("name", list(CALLS))
def test_repeated_call_is_bitwise_identical(name):
    x, y, t, w = _inputs()
    if name in ("kl_div", "nll_loss"):
        x = x.detach().log_softmax(1).requires_grad_()
    if name == "distillation":
        t = t.detach()

    def run():
        xc = x.detach().clone().requires_grad_()
        loss = CALLS[name](xc, y, t.detach(), w)
        (g,) = torch.autograd.grad(loss, xc)
        return loss.detach(), g

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2) and torch.equal(g1, g2)


def test_module_does_not_modify_weight_buffer():
    w = torch.rand(4)
    m = ce.CrossEntropyLoss(weight=w)
    w0 = w.clone()
    m(torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 2])).backward()
    assert torch.equal(w, w0) and torch.equal(m.weight, w0)


# ----------------------------------------------------------------------------- return_stats


def _entropy(x, dim=1):
    logp = torch.log_softmax(x, dim)
    return -(logp.exp() * logp).sum(dim)


def test_return_stats_values():
    x = torch.randn(6, 5, dtype=D) * 3
    y = torch.tensor([0, 1, -100, 3, 4, 2])
    loss, stats = ce.cross_entropy(x, y, return_stats=True)
    close(loss, F.cross_entropy(x, y))
    close(stats.lse, torch.logsumexp(x, 1))
    close(stats.entropy, _entropy(x))
    assert stats.argmax.dtype == torch.int64
    assert torch.equal(stats.argmax, x.argmax(1))


def test_return_stats_shaped_like_target_rows():
    x = torch.randn(2, 4, 3, 5, dtype=D)
    y = torch.randint(0, 4, (2, 3, 5))
    loss, stats = ce.cross_entropy(x, y, reduction="none", return_stats=True)
    for field in (stats.lse, stats.entropy, stats.argmax):
        assert field.shape == y.shape
    close(stats.lse, torch.logsumexp(x, 1))
    close(stats.entropy, _entropy(x))
    assert torch.equal(stats.argmax, x.argmax(1))
    close(loss, F.cross_entropy(x, y, reduction="none"))


def test_return_stats_with_prob_target_and_extreme_logits():
    x = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]], dtype=D)
    t = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], dtype=D)
    _, stats = ce.cross_entropy(x, t, return_stats=True)
    close(stats.lse, torch.logsumexp(x, 1))
    close(stats.entropy, torch.tensor([0.0, math.log(3)], dtype=D))
    assert stats.argmax.tolist() == [0, 0]


def test_return_stats_are_not_differentiable_outputs_of_the_loss():
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    loss, _stats = ce.cross_entropy(x, torch.tensor([0, 1, 2]), return_stats=True)
    loss.backward()  # stats do not get in the way of the loss backward
    g_ref = value_and_grad(F.cross_entropy, x.detach(), torch.tensor([0, 1, 2]))[1]
    close(x.grad, g_ref)


def test_return_stats_false_returns_tensor():
    out = ce.cross_entropy(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert isinstance(out, torch.Tensor)
