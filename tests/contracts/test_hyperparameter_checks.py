"""Float hyperparameters: NaN and infinities are errors naming the argument, never a NaN loss.

Every public function with a float hyperparameter routes it through one validator per kind
(:mod:`crossent.core.checks`: finite, positive, non-negative, unit interval, temperature, soft
cap); tensor scales and temperatures are checked by value too. Each case asserts the error
type, that the message names the argument, and that it shows the received value. The
fixed values (``softcap=inf``, tensors holding valid values) are compared with PyTorch.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

import crossent as ce
from crossent import reference as R

NAN, INF = math.nan, math.inf


def logits():
    return torch.randn(4, 5)


def labels():
    return torch.tensor([0, 1, 2, 4])


def feats():
    return torch.nn.functional.normalize(torch.randn(4, 8), dim=1)


def lin():
    return torch.randn(4, 8), torch.randn(5, 8), labels()


def emb():
    return torch.randn(4, 8), torch.randn(5, 8), labels()


def _ce(**kw):
    return lambda: ce.cross_entropy(logits(), labels(), **kw)


def _lce(**kw):
    return lambda: ce.linear_cross_entropy(*lin(), **kw)


# (id, call, argument name, received value as it must appear in the message)
CASES = []


def case(id, call, name, shown):
    CASES.append(pytest.param(call, name, shown, id=id))


for v, shown in ((NAN, "nan"), (INF, "inf"), (-INF, "-inf"), (0.0, "0.0"), (-2.0, "-2.0")):
    case(f"ce-logit_scale={shown}", _ce(logit_scale=v), "logit_scale", shown)
    case(f"lce-logit_scale={shown}", _lce(logit_scale=v), "logit_scale", shown)
    case(f"CrossEntropyLoss-logit_scale={shown}",
         lambda v=v: ce.CrossEntropyLoss(logit_scale=v)(logits(), labels()), "logit_scale", shown)
for v, shown in ((NAN, "nan"), (INF, "inf"), (-1.0, "-1.0")):
    case(f"ce-z_loss={shown}", _ce(z_loss=v), "z_loss", shown)
    case(f"lce-z_loss={shown}", _lce(z_loss=v), "z_loss", shown)
for v, shown in ((NAN, "nan"), (-INF, "-inf"), (0.0, "0.0"), (-3.0, "-3.0")):
    case(f"ce-softcap={shown}", _ce(softcap=v), "softcap", shown)
    case(f"lce-softcap={shown}", _lce(softcap=v), "softcap", shown)
for v, shown in ((NAN, "nan"), (INF, "inf")):
    case(f"ce-label_smoothing={shown}", _ce(label_smoothing=v), "label_smoothing", shown)
    case(f"lce-label_smoothing={shown}", _lce(label_smoothing=v), "label_smoothing", shown)
    case(f"focal-gamma={shown}", lambda v=v: ce.focal_loss(logits(), labels(), gamma=v),
         "gamma", shown)
    case(f"focal-alpha={shown}", lambda v=v: ce.focal_loss(logits(), labels(), alpha=v),
         "alpha", shown)
    case(f"sigmoid_focal-gamma={shown}",
         lambda v=v: ce.sigmoid_focal_loss(torch.randn(4), torch.rand(4), gamma=v), "gamma", shown)
    case(f"sigmoid_focal-alpha={shown}",
         lambda v=v: ce.sigmoid_focal_loss(torch.randn(4), torch.rand(4), alpha=v), "alpha", shown)
    case(f"FocalLoss-gamma={shown}", lambda v=v: ce.FocalLoss(gamma=v)(logits(), labels()),
         "gamma", shown)
    case(f"distillation-alpha={shown}",
         lambda v=v: ce.distillation_loss(logits(), logits(), labels(), alpha=v), "alpha", shown)
    case(f"arcface-margin={shown}", lambda v=v: ce.arcface_loss(*emb(), margin=v), "margin", shown)
    case(f"cosface-margin={shown}", lambda v=v: ce.cosface_loss(*emb(), margin=v), "margin", shown)
    case(f"combined-m1={shown}", lambda v=v: ce.combined_margin_loss(*emb(), m1=v), "m1", shown)
    case(f"combined-m2={shown}", lambda v=v: ce.combined_margin_loss(*emb(), m2=v), "m2", shown)
    case(f"combined-m3={shown}", lambda v=v: ce.combined_margin_loss(*emb(), m3=v), "m3", shown)
    case(f"partial_fc_sample-sample_rate={shown}",
         lambda v=v: ce.partial_fc_sample(labels(), 5, v), "sample_rate", shown)
    case(f"ArcFace-sample_rate={shown}", lambda v=v: ce.ArcFace(5, 8, sample_rate=v),
         "sample_rate", shown)
    for g in ("gamma", "base", "power", "minimum"):
        case(f"anneal_lambda-{g}={shown}", lambda v=v, g=g: ce.anneal_lambda(3, **{g: v}), g, shown)
for v, shown in ((NAN, "nan"), (INF, "inf"), (-INF, "-inf")):
    case(f"poly1-epsilon={shown}", lambda v=v: ce.poly1_cross_entropy(logits(), labels(), epsilon=v),
         "epsilon", shown)
    case(f"Poly1CrossEntropyLoss-epsilon={shown}",
         lambda v=v: ce.Poly1CrossEntropyLoss(epsilon=v)(logits(), labels()), "epsilon", shown)
    case(f"clip-logit_bias={shown}", lambda v=v: ce.clip_loss(feats(), feats(), 10.0, logit_bias=v),
         "logit_bias", shown)
    case(f"siglip-logit_bias={shown}", lambda v=v: ce.siglip_loss(feats(), feats(), 10.0, v),
         "logit_bias", shown)
    case(f"siglip-logit_bias=tensor({shown})",
         lambda v=v: ce.siglip_loss(feats(), feats(), 10.0, torch.tensor(v)), "logit_bias", shown)
for v, shown in ((NAN, "nan"), (INF, "inf"), (0.0, "0.0"), (-1.0, "-1.0")):
    case(f"distillation-temperature={shown}",
         lambda v=v: ce.distillation_loss(logits(), logits(), temperature=v), "temperature", shown)
    case(f"DistillationLoss-temperature={shown}",
         lambda v=v: ce.DistillationLoss(temperature=v)(logits(), logits()), "temperature", shown)
    case(f"arcface-scale={shown}", lambda v=v: ce.arcface_loss(*emb(), scale=v), "scale", shown)
    case(f"cosface-scale={shown}", lambda v=v: ce.cosface_loss(*emb(), scale=v), "scale", shown)
    case(f"sphereface-scale={shown}", lambda v=v: ce.sphereface_loss(*emb(), scale=v), "scale", shown)
    case(f"lsoftmax-scale={shown}",
         lambda v=v: ce.large_margin_softmax_loss(*emb(), scale=v), "scale", shown)
    case(f"subcenter-scale={shown}",
         lambda v=v: ce.subcenter_arcface_loss(torch.randn(4, 8), torch.randn(15, 8), labels(),
                                               scale=v), "scale", shown)
    case(f"ArcFace-scale={shown}", lambda v=v: ce.ArcFace(5, 8, scale=v), "scale", shown)
    case(f"margin_logits-scale={shown}",
         lambda v=v: ce.margin_logits(*emb(), head="cosface", scale=v), "scale", shown)
    for fn, extra in ((ce.clip_loss, {}), (ce.siglip_loss, {"logit_bias": -1.0})):
        case(f"{fn.__name__}-logit_scale={shown}",
             lambda v=v, fn=fn, extra=extra: fn(feats(), feats(), v, **extra), "logit_scale", shown)
        case(f"{fn.__name__}-logit_scale=tensor({shown})",
             lambda v=v, fn=fn, extra=extra: fn(feats(), feats(), torch.tensor(v), **extra),
             "logit_scale", shown)
    case(f"ClipLoss-logit_scale=tensor({shown})",
         lambda v=v: ce.contrastive.ClipLoss()(feats(), feats(), torch.tensor(v)), "logit_scale", shown)
    case(f"info_nce-temperature={shown}",
         lambda v=v: ce.info_nce(feats(), feats(), temperature=v), "temperature", shown)
    case(f"info_nce-temperature=tensor({shown})",
         lambda v=v: ce.info_nce(feats(), feats(), temperature=torch.tensor(v)), "temperature", shown)
    case(f"nt_xent-temperature=tensor({shown})",
         lambda v=v: ce.nt_xent(feats(), feats(), temperature=torch.tensor(v)), "temperature", shown)
    case(f"supcon-temperature=tensor({shown})",
         lambda v=v: ce.supcon_loss(feats(), labels(), temperature=torch.tensor(v)), "temperature", shown)
    case(f"supcon-base_temperature={shown}",
         lambda v=v: ce.supcon_loss(feats(), labels(), base_temperature=v), "base_temperature", shown)
    case(f"InfoNCELoss-temperature=tensor({shown})",
         lambda v=v: ce.InfoNCELoss(temperature=torch.tensor(v))(feats(), feats()), "temperature", shown)
for v, shown in ((NAN, "nan"), (INF, "inf"), (-1.0, "-1.0")):
    case(f"sphereface-annealing={shown}", lambda v=v: ce.sphereface_loss(*emb(), annealing=v),
         "annealing", shown)
    case(f"lsoftmax-annealing={shown}",
         lambda v=v: ce.large_margin_softmax_loss(*emb(), annealing=v), "annealing", shown)
    case(f"SphereFace.set_annealing({shown})",
         lambda v=v: ce.SphereFace(5, 8).set_annealing(v), "annealing", shown)
# A temperature whose inverse (the scale the loss multiplies by) overflows.
case("distillation-temperature=1e-300", lambda: ce.distillation_loss(logits(), logits(), temperature=1e-300),
     "temperature", "1e-300")
case("distillation-temperature=1e30 (T^2 overflows)",
     lambda: ce.distillation_loss(logits(), logits(), temperature=1e30), "temperature", "1e+30")
case("info_nce-temperature=1e-40", lambda: ce.info_nce(feats(), feats(), temperature=1e-40),
     "temperature", "1e-40")


@pytest.mark.parametrize("call, name, shown", CASES)
def test_bad_hyperparameter_raises_naming_it(call, name, shown):
    with pytest.raises(ce.ArgumentError, match=rf"\b{name}\b") as info:
        call()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message.startswith(name) or f" {name} " in message, message
    assert shown in message, f"the received value {shown} is not in: {message}"
    assert "must" in message  # the expected range is stated


@pytest.mark.parametrize("temperature, shown", [(NAN, "nan"), (INF, "inf"), (0.0, "0.0"),
                                                (-1.0, "-1.0")])
def test_reference_softmax_checks_temperature(temperature, shown):
    for fn in (R.softmax, R.log_softmax):
        with pytest.raises(ValueError, match=rf"^temperature must .*got {re.escape(shown)}$"):
            fn([1.0, 2.0], temperature=temperature)


@pytest.mark.parametrize("base, shown", [(NAN, "nan"), (INF, "inf"), (1.0, "1.0"), (0.0, "0.0"),
                                         (-2.0, "-2.0")])
def test_reference_checks_the_logarithm_base(base, shown):
    with pytest.raises(ValueError, match=rf"^base must .*got {re.escape(shown)}$"):
        R.entropy([0.5, 0.5], base=base)
    assert R.entropy([0.5, 0.5], base=2) == pytest.approx(1.0)


def test_anneal_lambda_step_must_be_a_non_negative_int():
    with pytest.raises(ce.ArgumentError, match="step must be >= 0, got -1"):
        ce.anneal_lambda(-1)
    with pytest.raises(ce.ArgumentTypeError, match="step must be an int"):
        ce.anneal_lambda(2.5)


# ----------------------------------------------------------- what stays valid


def test_softcap_inf_is_no_cap():
    """``softcap=inf``: ``cap * tanh(z / cap) -> z``; the loss and gradient of no cap, as
    ``F.cross_entropy``."""
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (6,))
    for red in ("mean", "sum", "none"):
        got = ce.cross_entropy(x, y, reduction=red, softcap=INF)
        want = F.cross_entropy(x, y, reduction=red)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g_got, = torch.autograd.grad(got.sum(), x)
        g_want, = torch.autograd.grad(want.sum(), x)
        torch.testing.assert_close(g_got, g_want, rtol=1e-12, atol=1e-12)
    module = ce.CrossEntropyLoss(softcap=INF)
    torch.testing.assert_close(module(x, y), F.cross_entropy(x, y), rtol=1e-12, atol=1e-12)
    h, w = torch.randn(6, 4, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64)
    torch.testing.assert_close(ce.linear_cross_entropy(h, w, y, softcap=INF),
                               F.cross_entropy(h @ w.T, y), rtol=1e-12, atol=1e-12)
    # a finite cap still caps
    capped = ce.cross_entropy(x * 50, y, softcap=2.0)
    assert not torch.allclose(capped, F.cross_entropy(x * 50, y))


def test_valid_edge_values_are_accepted():
    x, y = logits(), labels()
    # PolyLoss's epsilon may be negative (the paper sweeps -1 to 2)
    torch.testing.assert_close(
        ce.poly1_cross_entropy(x, y, epsilon=-1.0),
        F.cross_entropy(x, y, reduction="none").add(-(1 - F.softmax(x, 1).gather(1, y[:, None])[:, 0])).mean())
    # a negative bias is a normal SigLIP setting; z_loss = 0, label_smoothing = 1 are in range
    assert torch.isfinite(ce.siglip_loss(feats(), feats(), 10.0, -10.0))
    torch.testing.assert_close(ce.cross_entropy(x, y, z_loss=0.0, label_smoothing=1.0),
                               F.cross_entropy(x, y, label_smoothing=1.0))


def test_tensor_hyperparameters_with_valid_values_match_numbers():
    a, b = feats(), feats()
    t = torch.tensor(0.2, requires_grad=True)
    loss = ce.info_nce(a, b, temperature=t)
    torch.testing.assert_close(loss, ce.info_nce(a, b, temperature=0.2))
    loss.backward()
    assert t.grad is not None and torch.isfinite(t.grad)
    s = torch.tensor(7.0, requires_grad=True)
    torch.testing.assert_close(ce.clip_loss(a, b, s), ce.clip_loss(a, b, 7.0))


def test_a_plain_tensor_number_is_read_but_one_requiring_grad_is_refused():
    """``cross_entropy``'s ``logit_scale`` is a number: a 0-d tensor is read as one (and
    validated like one); a tensor that requires grad would silently lose its gradient."""
    x, y = logits(), labels()
    torch.testing.assert_close(ce.cross_entropy(x, y, logit_scale=torch.tensor(2.0)),
                               F.cross_entropy(2.0 * x, y))
    with pytest.raises(ce.ArgumentError, match="logit_scale.*got inf"):
        ce.cross_entropy(x, y, logit_scale=torch.tensor(INF))
    with pytest.raises(ce.ArgumentTypeError, match="logit_scale must be a number.*requires grad"):
        ce.cross_entropy(x, y, logit_scale=torch.tensor(2.0, requires_grad=True))


def test_distillation_error_names_temperature_not_logit_scale():
    with pytest.raises(ce.ArgumentError) as info:
        ce.distillation_loss(logits(), logits(), temperature=INF)
    assert "temperature" in str(info.value) and "logit_scale" not in str(info.value)


def test_inputs_are_not_modified_by_the_checks():
    t = torch.tensor(-1.0)
    before = t.clone()
    with pytest.raises(ce.ArgumentError):
        ce.info_nce(feats(), feats(), temperature=t)
    assert torch.equal(t, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tensor_hyperparameter_check_does_not_sync_on_cuda():
    """On CUDA the value check of a tensor scale is a device-side assertion: no host sync."""
    a = torch.nn.functional.normalize(torch.randn(64, 32, device="cuda"), dim=1)
    scale = torch.tensor(10.0, device="cuda", requires_grad=True)
    ce.clip_loss(a, a, scale, backend="torch")  # warm-up (allocations, imports)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        from crossent import _checks

        _checks.check_scalar_tensor("logit_scale", scale, positive=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
