"""Conformance of crossent's core with PyTorch, driven by PyTorch's own OpInfo samples.

For every ``sample_inputs('cpu', dtype, requires_grad=True)`` of the OpInfo entries below,
torch and crossent are called with the same positional args and kwargs (each on its own
clones, so nothing is shared) and we compare

* the values (and the output dtype / shape), and
* the gradients w.r.t. every floating tensor that requires grad: the input and, where the
  sample makes it require grad, the probability target of cross_entropy, the target of
  binary_cross_entropy(_with_logits) and kl_div. The same random cotangent is used on both
  sides (rounded through bfloat16 so it is exact in every dtype).

float64 / float32: ``torch.testing.assert_close`` with its default tolerances for the dtype.

bfloat16: crossent returns the LOSS in float32 (a deliberate difference), so both results are
compared with torch evaluated in float64 on the very same bf16 values; crossent's max error
must not exceed torch's own bf16 max error plus a small slack.

Skips: samples that use the deprecated ``size_average`` / ``reduce`` arguments are skipped
(crossent does not implement the legacy arguments). With torch 2.13 *no* sample of these
OpInfos uses them, so nothing is skipped; ``test_no_sample_is_skipped_silently`` pins the
count so a future torch that adds such samples shows up here instead of disappearing.

A few supplementary samples (label smoothing, ignore_index with weights, K-dim targets...)
that op_db does not contain follow the OpInfo samples, and the nn modules are compared with
their torch.nn counterparts at the end.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.opinfo.core import SampleInput

import crossent as ce

# (op_db name, variant_test_name) -> (crossent function name, short id, returns a loss)
OPS = {
    ("nn.functional.cross_entropy", ""): ("cross_entropy", "cross_entropy", True),
    ("nn.functional.nll_loss", ""): ("nll_loss", "nll_loss", True),
    ("nn.functional.binary_cross_entropy", ""): ("binary_cross_entropy", "bce", True),
    ("nn.functional.binary_cross_entropy_with_logits", ""): (
        "binary_cross_entropy_with_logits",
        "bce_logits",
        True,
    ),
    ("nn.functional.kl_div", ""): ("kl_div", "kl_div", True),
    ("log_softmax", ""): ("log_softmax", "log_softmax", False),
    ("log_softmax", "with_dtype"): ("log_softmax", "log_softmax_with_dtype", False),
    ("softmax", ""): ("softmax", "softmax", False),
    ("softmax", "with_dtype"): ("softmax", "softmax_with_dtype", False),
}
DTYPES = (torch.float64, torch.float32, torch.bfloat16)
LEGACY_KWARGS = ("size_average", "reduce")

_OPINFOS = {
    (op.name, op.variant_test_name): op for op in op_db if (op.name, op.variant_test_name) in OPS
}


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        shape = "x".join(map(str, v.shape)) or "scalar"
        kind = "f" if v.is_floating_point() else "i"
        return f"{shape}{kind}{'g' if v.requires_grad else ''}"
    if isinstance(v, torch.dtype):
        return str(v).replace("torch.", "")
    return str(v)


def _sample_id(sample: SampleInput) -> str:
    parts = ["in" + _describe(sample.input)]
    parts += ["arg" + _describe(a) for a in sample.args]
    parts += [f"{k}={_describe(v)}" for k, v in sample.kwargs.items()]
    return "-".join(parts)


def _collect():
    params, skipped, counts = [], 0, {}
    for key, (ce_name, short, is_loss) in OPS.items():
        opinfo = _OPINFOS[key]
        for dtype in DTYPES:
            if dtype not in opinfo.supported_dtypes("cpu"):
                continue
            with torch.random.fork_rng():
                torch.manual_seed(1234)
                samples = list(opinfo.sample_inputs("cpu", dtype, requires_grad=True))
            counts[(short, dtype)] = len(samples)
            for i, sample in enumerate(samples):
                if any(k in sample.kwargs for k in LEGACY_KWARGS):
                    skipped += 1  # deprecated legacy reduction args: not part of crossent
                    continue
                dname = str(dtype).replace("torch.", "")
                params.append(
                    pytest.param(
                        opinfo,
                        ce_name,
                        is_loss,
                        dtype,
                        sample,
                        id=f"{short}-{dname}-{i:02d}-{_sample_id(sample)}",
                    )
                )
    return params, skipped, counts


OPINFO_PARAMS, SKIPPED_LEGACY, SAMPLE_COUNTS = _collect()


def test_all_requested_opinfos_exist():
    assert set(_OPINFOS) == set(OPS)


def test_no_sample_is_skipped_silently():
    # With torch 2.13 no sample of these OpInfos uses size_average/reduce: 0 skips.
    assert SKIPPED_LEGACY == 0
    for (short, dtype), n in SAMPLE_COUNTS.items():
        assert n > 0, (short, dtype)
    # every op is exercised in all three dtypes
    assert {d for (_, d) in SAMPLE_COUNTS} == set(DTYPES)
    assert len(OPINFO_PARAMS) == sum(SAMPLE_COUNTS.values()) - SKIPPED_LEGACY


# ----------------------------------------------------------------------------- helpers


def _clone(v, dtype=None):
    """Deep-clone tensors (keeping requires_grad); cast floating tensors to ``dtype``."""
    if isinstance(v, torch.Tensor):
        c = v.detach().clone()
        if dtype is not None and c.is_floating_point():
            c = c.to(dtype)
        return c.requires_grad_(v.requires_grad)
    if isinstance(v, (list, tuple)):
        return type(v)(_clone(a, dtype) for a in v)
    if isinstance(v, dict):
        return {k: _clone(a, dtype) for k, a in v.items()}
    return v


def _diff_inputs(inp, args, kwargs):
    found = [inp, *args, *kwargs.values()]
    return [t for t in found if isinstance(t, torch.Tensor) and t.requires_grad]


def _cotangent(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return g.to(torch.bfloat16).to(torch.float64)  # exactly representable in every dtype


def _run(fn, inp, args, kwargs):
    """Call ``fn`` on the given (already cloned) arguments; return (output, grads)."""
    out = fn(inp, *args, **kwargs)
    assert isinstance(out, torch.Tensor)
    diff = _diff_inputs(inp, args, kwargs)
    grads = []
    if diff:
        assert out.requires_grad, "output does not require grad although inputs do"
        grads = torch.autograd.grad(
            out,
            diff,
            _cotangent(out.shape).to(out.dtype),
            allow_unused=True,
            materialize_grads=True,
        )
    return out.detach(), [g.detach() for g in grads]


def _to64_kwargs(kwargs):
    out = _clone(kwargs, torch.float64)
    if "dtype" in out:  # with_dtype variants: the reference computes in float64 too
        out["dtype"] = torch.float64
    return out


def _maxerr(a: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    a, ref = a.double(), ref.double()
    both_nan = torch.isnan(a) & torch.isnan(ref)
    same_inf = torch.isinf(ref) & (a == ref)
    err = (a - ref).abs().masked_fill(both_nan | same_inf, 0.0)
    return float(err.max())


def _scale(ref: torch.Tensor) -> float:
    finite = ref[torch.isfinite(ref)]
    return float(finite.abs().max()) if finite.numel() else 0.0


def _check_conformance(torch_fn, ce_fn, is_loss, dtype, inp, args, kwargs):
    t_out, t_grads = _run(torch_fn, *_clone((inp, args, kwargs)))
    c_out, c_grads = _run(ce_fn, *_clone((inp, args, kwargs)))
    assert c_out.shape == t_out.shape
    assert len(c_grads) == len(t_grads)

    if dtype in (torch.float64, torch.float32):
        assert c_out.dtype == t_out.dtype
        torch.testing.assert_close(c_out, t_out, equal_nan=True)
        for k, (cg, tg) in enumerate(zip(c_grads, t_grads)):
            assert cg.dtype == tg.dtype, f"grad {k}"
            torch.testing.assert_close(cg, tg, equal_nan=True,
                                       msg=lambda m, k=k: f"grad {k}: {m}")
        return

    # bfloat16: compare both against torch in float64 on the same bf16 values
    r_out, r_grads = _run(
        torch_fn, _clone(inp, torch.float64), _clone(args, torch.float64), _to64_kwargs(kwargs)
    )
    if is_loss:
        assert c_out.dtype == torch.float32, "half-precision losses are returned in float32"
    else:
        assert c_out.dtype == t_out.dtype
    if c_out.dtype == torch.bfloat16:
        slack = 2.0**-8 * _scale(r_out) + 1e-6  # half a bf16 ulp: rounding may tie differently
    else:
        slack = 1e-5 * (1.0 + _scale(r_out))
    assert _maxerr(c_out, r_out) <= _maxerr(t_out, r_out) + slack, (
        f"value: crossent err {_maxerr(c_out, r_out):.3g} > torch bf16 err "
        f"{_maxerr(t_out, r_out):.3g} (+{slack:.1g})"
    )
    for k, (cg, tg, rg) in enumerate(zip(c_grads, t_grads, r_grads)):
        assert cg.dtype == tg.dtype == dtype, f"grad {k}: gradients keep the input's dtype"
        g_slack = 2.0**-7 * _scale(rg) + 1e-6  # one bf16 ulp at the largest magnitude
        assert _maxerr(cg, rg) <= _maxerr(tg, rg) + g_slack, (
            f"grad {k}: crossent err {_maxerr(cg, rg):.3g} > torch bf16 err "
            f"{_maxerr(tg, rg):.3g} (+{g_slack:.1g})"
        )


# ----------------------------------------------------------------------------- op_db


@pytest.mark.parametrize("opinfo, ce_name, is_loss, dtype, sample", OPINFO_PARAMS)
def test_opinfo_sample_matches_torch(opinfo, ce_name, is_loss, dtype, sample):
    _check_conformance(
        opinfo.op,
        getattr(ce, ce_name),
        is_loss,
        dtype,
        sample.input,
        tuple(sample.args),
        dict(sample.kwargs),
    )


# ----------------------------------------------------------------------------- supplementary


def _supplementary():
    """Cases op_db lacks: label smoothing, ignore_index + weight, K-dim, ... (float64 masters)."""
    g = torch.Generator().manual_seed(99)

    def x(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    def probs(*shape, dim=1, grad=True):
        p = torch.softmax(torch.randn(*shape, generator=g, dtype=torch.float64), dim)
        return p.requires_grad_(grad)

    def idx(c, *shape):
        return torch.randint(0, c, shape, generator=g)

    def w(c):
        return torch.rand(c, generator=g, dtype=torch.float64) + 0.1

    y_ign = torch.tensor([0, -100, 2, 3, -100, 1])
    cases = []
    for red in ("mean", "sum", "none"):
        cases += [
            ("cross_entropy", f"ls0.2-{red}", x(6, 4), (idx(4, 6),),
             dict(label_smoothing=0.2, reduction=red)),
            ("cross_entropy", f"ls0.3-weight-{red}", x(6, 4), (idx(4, 6),),
             dict(label_smoothing=0.3, weight=w(4), reduction=red)),
            ("cross_entropy", f"ls0.1-ignore-weight-{red}", x(6, 4), (y_ign,),
             dict(label_smoothing=0.1, weight=w(4), reduction=red)),
            ("cross_entropy", f"prob-ls0.25-{red}", x(6, 4), (probs(6, 4),),
             dict(label_smoothing=0.25, reduction=red)),
            ("cross_entropy", f"prob-ls0.25-weight-{red}", x(6, 4), (probs(6, 4),),
             dict(label_smoothing=0.25, weight=w(4), reduction=red)),
            ("cross_entropy", f"kdim-ls0.1-ignore2-weight-{red}", x(2, 3, 4, 2),
             (idx(3, 2, 4, 2),), dict(label_smoothing=0.1, ignore_index=2, weight=w(3),
                                      reduction=red)),
            ("cross_entropy", f"kdim-prob-weight-{red}", x(2, 3, 5), (probs(2, 3, 5),),
             dict(weight=w(3), reduction=red)),
            ("cross_entropy", f"1d-input-ls0.5-{red}", x(5), (torch.tensor(3),),
             dict(label_smoothing=0.5, reduction=red)),
            ("cross_entropy", f"ignore-weight-{red}", x(6, 4), (y_ign,),
             dict(weight=w(4), reduction=red)),
            ("nll_loss", f"kdim-ignore-weight-{red}", torch.log_softmax(x(2, 4, 3, 3), 1)
             .detach().requires_grad_(), (idx(4, 2, 3, 3),),
             dict(ignore_index=1, weight=w(4), reduction=red)),
            ("kl_div", f"3d-{red}", torch.log_softmax(x(2, 3, 4), -1).detach().requires_grad_(),
             (probs(2, 3, 4, dim=-1),), dict(reduction=red)),
            ("binary_cross_entropy_with_logits", f"pos_weight-bcast-weight-{red}", x(3, 2, 4),
             (torch.rand(3, 2, 4, generator=g, dtype=torch.float64),),
             dict(pos_weight=w(4), weight=w(4), reduction=red)),
        ]
    cases.append(("kl_div", "batchmean-3d", torch.log_softmax(x(2, 3, 4), -1).detach()
                  .requires_grad_(), (probs(2, 3, 4, dim=-1),), dict(reduction="batchmean")))
    cases.append(("cross_entropy", "ls1.0", x(4, 3), (idx(3, 4),), dict(label_smoothing=1.0)))
    params = []
    for name, cid, inp, args, kwargs in cases:
        for dtype in DTYPES:
            dname = str(dtype).replace("torch.", "")
            params.append(pytest.param(name, dtype, inp, args, kwargs, id=f"{name}-{cid}-{dname}"))
    return params


@pytest.mark.parametrize("name, dtype, inp, args, kwargs", _supplementary())
def test_supplementary_sample_matches_torch(name, dtype, inp, args, kwargs):
    inp, args, kwargs = _clone((inp, args, kwargs), dtype)
    _check_conformance(getattr(F, name), getattr(ce, name), True, dtype, inp, args, kwargs)


# ----------------------------------------------------------------------------- nn modules

W4 = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)

MODULE_CASES = [
    ("CrossEntropyLoss", {}, "idx"),
    ("CrossEntropyLoss", dict(weight=W4, ignore_index=1, reduction="sum", label_smoothing=0.1),
     "idx"),
    ("CrossEntropyLoss", dict(label_smoothing=0.2, reduction="none"), "prob"),
    ("NLLLoss", dict(weight=W4, reduction="mean"), "logp"),
    ("NLLLoss", dict(ignore_index=2, reduction="none"), "logp"),
    ("BCELoss", dict(weight=torch.rand(4, dtype=torch.float64)), "bce"),
    ("BCEWithLogitsLoss", dict(pos_weight=W4, reduction="sum"), "bcel"),
    ("KLDivLoss", dict(reduction="batchmean"), "kl"),
    ("KLDivLoss", dict(reduction="sum", log_target=True), "kl_log"),
]


def _module_inputs(kind):
    x = torch.randn(5, 4, dtype=torch.float64)
    if kind == "idx":
        return x, torch.tensor([0, 1, 2, 3, 1])
    if kind == "prob":
        return x, torch.softmax(torch.randn(5, 4, dtype=torch.float64), 1)
    if kind == "logp":
        return torch.log_softmax(x, 1), torch.tensor([0, 1, 2, 3, 2])
    if kind == "bce":
        return torch.rand(5, 4, dtype=torch.float64) * 0.9 + 0.05, torch.rand(5, 4).double()
    if kind == "bcel":
        return x, torch.rand(5, 4, dtype=torch.float64)
    if kind == "kl":
        return torch.log_softmax(x, 1), torch.softmax(torch.randn(5, 4).double(), 1)
    if kind == "kl_log":
        return torch.log_softmax(x, 1), torch.log_softmax(torch.randn(5, 4).double(), 1)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "cls, kwargs, kind", MODULE_CASES, ids=[f"{c}-{'-'.join(k) or 'default'}" for c, k, _ in
                                             MODULE_CASES]
)
def test_module_matches_torch_nn(cls, kwargs, kind):
    t_mod = getattr(torch.nn, cls)(**_clone(kwargs))
    c_mod = getattr(ce, cls)(**_clone(kwargs))
    assert isinstance(c_mod, torch.nn.Module)
    # same registered buffers (weight / pos_weight) so .to(), state_dict() behave like torch
    assert set(c_mod.state_dict()) == set(t_mod.state_dict())
    for k, v in t_mod.state_dict().items():
        torch.testing.assert_close(c_mod.state_dict()[k], v)
    x, y = _module_inputs(kind)
    xt, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    t_loss, c_loss = t_mod(xt, y.clone()), c_mod(xc, y.clone())
    torch.testing.assert_close(c_loss, t_loss)
    t_loss.sum().backward()
    c_loss.sum().backward()
    torch.testing.assert_close(xc.grad, xt.grad)


def test_module_reduction_attribute_like_torch():
    m = ce.CrossEntropyLoss(reduction="sum", label_smoothing=0.3, ignore_index=7)
    assert m.reduction == "sum"
    assert m.label_smoothing == 0.3
    assert m.ignore_index == 7


def test_module_moves_weight_with_to():
    m = ce.CrossEntropyLoss(weight=torch.ones(3)).to(torch.float64)
    assert m.weight.dtype == torch.float64
    assert math.isfinite(float(m(torch.randn(2, 3, dtype=torch.float64), torch.tensor([0, 2]))))
