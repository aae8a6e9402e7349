"""Errors: crossent rejects what PyTorch rejects, with the same exception class, naming the arg.

The cases reconstruct the error tests of PyTorch's test/test_nn.py (``test_nll_loss_*``,
``test_cross_entropy_*``, ``test_bce_*``...). The oracle is PyTorch itself: each case is first
run through torch inside ``pytest.raises(Exception)``; crossent must then raise an instance of
the very class torch raised (a subclass is fine: crossent's ``ValueError``-style exceptions
subclass torch's ``RuntimeError`` where torch raises that), and its message must name the
offending argument.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

import crossent as ce


def x35():
    return torch.randn(3, 5)


def idx(*values):
    return torch.tensor(values)


@dataclass
class Case:
    id: str
    fn: str  # name in both torch.nn.functional and crossent
    make: Callable[[], tuple]  # -> positional args
    kwargs: dict = field(default_factory=dict)
    names: tuple = ()  # the message must contain one of these (case-insensitive)


CASES = [
    # --- cross_entropy ----------------------------------------------------------------
    Case("ce-batch_size_mismatch", "cross_entropy", lambda: (x35(), idx(0, 1)),
         names=("target", "batch")),
    Case("ce-target_2d_for_2d_input", "cross_entropy",
         lambda: (x35(), torch.zeros(3, 1, dtype=torch.long)), names=("target",)),
    Case("ce-target_out_of_bounds", "cross_entropy", lambda: (x35(), idx(0, 1, 5)),
         names=("target",)),
    Case("ce-target_negative", "cross_entropy", lambda: (x35(), idx(0, 1, -1)),
         names=("target",)),
    Case("ce-target_out_of_bounds-none", "cross_entropy", lambda: (x35(), idx(0, 1, 5)),
         dict(reduction="none"), names=("target",)),
    Case("ce-target_out_of_bounds-sum-weight", "cross_entropy", lambda: (x35(), idx(9, 1, 2)),
         dict(reduction="sum", weight=torch.ones(5)), names=("target",)),
    Case("ce-target_out_of_bounds-label_smoothing", "cross_entropy",
         lambda: (x35(), idx(0, 5, 2)), dict(label_smoothing=0.1), names=("target",)),
    Case("ce-target_out_of_bounds-kdim", "cross_entropy",
         lambda: (torch.randn(2, 3, 4), torch.full((2, 4), 3)), names=("target",)),
    Case("ce-invalid_reduction", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(reduction="bogus"), names=("reduction",)),
    Case("ce-invalid_reduction-prob", "cross_entropy", lambda: (x35(), torch.rand(3, 5)),
         dict(reduction="avg"), names=("reduction",)),
    Case("ce-label_smoothing_above_1", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(label_smoothing=1.5), names=("label_smoothing",)),
    Case("ce-label_smoothing_above_1-prob", "cross_entropy", lambda: (x35(), torch.rand(3, 5)),
         dict(label_smoothing=1.01), names=("label_smoothing",)),
    Case("ce-label_smoothing_not_a_number", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(label_smoothing="a"), names=("label_smoothing",)),
    Case("ce-prob_target_wrong_classes", "cross_entropy", lambda: (x35(), torch.rand(3, 4)),
         names=("target",)),
    Case("ce-prob_target_wrong_batch", "cross_entropy", lambda: (x35(), torch.rand(2, 5)),
         names=("target", "batch")),
    Case("ce-prob_target_kdim_mismatch", "cross_entropy",
         lambda: (torch.randn(2, 3, 4), torch.rand(2, 3, 5)), names=("target",)),
    Case("ce-prob_target_with_ignore_index", "cross_entropy",
         lambda: (x35(), torch.rand(3, 5)), dict(ignore_index=2), names=("ignore_index",)),
    Case("ce-weight_wrong_size", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(weight=torch.ones(4)), names=("weight",)),
    Case("ce-weight_wrong_size-prob", "cross_entropy", lambda: (x35(), torch.rand(3, 5)),
         dict(weight=torch.ones(4)), names=("weight",)),
    Case("ce-weight_2d", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(weight=torch.ones(1, 5)), names=("weight",)),
    Case("ce-weight_dtype_mismatch", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(weight=torch.ones(5, dtype=torch.float64)), names=("weight",)),
    Case("ce-float_class_target", "cross_entropy", lambda: (x35(), torch.tensor([0.0, 1, 2])),
         names=("target",)),
    Case("ce-int32_target", "cross_entropy",
         lambda: (x35(), torch.tensor([0, 1, 2], dtype=torch.int32)), names=("target",)),
    Case("ce-bool_target", "cross_entropy",
         lambda: (x35(), torch.tensor([0, 1, 1], dtype=torch.bool)), names=("target",)),
    Case("ce-kdim_target_size_mismatch", "cross_entropy",
         lambda: (torch.randn(2, 3, 4), torch.zeros(2, 5, dtype=torch.long)), names=("target",)),
    Case("ce-kdim_target_missing_dim", "cross_entropy",
         lambda: (torch.randn(2, 3, 4), torch.zeros(2, dtype=torch.long)), names=("target",)),
    Case("ce-0d_input", "cross_entropy", lambda: (torch.tensor(1.0), torch.tensor(0)),
         names=("input", "target")),
    Case("ce-ignore_index_float", "cross_entropy", lambda: (x35(), idx(0, 1, 2)),
         dict(ignore_index=1.5), names=("ignore_index",)),
    Case("ce-integer_input", "cross_entropy",
         lambda: (torch.ones(3, 5, dtype=torch.long), idx(0, 1, 2)), names=("input",)),
    # --- nll_loss ---------------------------------------------------------------------
    Case("nll-float_target", "nll_loss", lambda: (x35(), torch.tensor([0.0, 1, 2])),
         names=("target",)),
    Case("nll-batch_size_mismatch", "nll_loss", lambda: (x35(), idx(0, 1)),
         names=("target", "batch")),
    Case("nll-target_out_of_bounds", "nll_loss", lambda: (x35(), idx(0, 1, 7)),
         names=("target",)),
    Case("nll-target_negative-none", "nll_loss", lambda: (x35(), idx(0, -2, 1)),
         dict(reduction="none"), names=("target",)),
    Case("nll-target_2d_for_2d_input", "nll_loss",
         lambda: (x35(), torch.zeros(3, 5, dtype=torch.long)), names=("target",)),
    Case("nll-weight_wrong_size", "nll_loss", lambda: (x35(), idx(0, 1, 2)),
         dict(weight=torch.ones(3)), names=("weight",)),
    Case("nll-invalid_reduction", "nll_loss", lambda: (x35(), idx(0, 1, 2)),
         dict(reduction="avg"), names=("reduction",)),
    Case("nll-0d_input", "nll_loss", lambda: (torch.tensor(1.0), torch.tensor(0)),
         names=("input",)),
    Case("nll-4d_target_size_mismatch", "nll_loss",
         lambda: (torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long)),
         names=("target",)),
    Case("nll-4d_target_out_of_bounds", "nll_loss",
         lambda: (torch.randn(2, 3, 4, 4), torch.full((2, 4, 4), 3)), names=("target",)),
    Case("nll-empty_input_batch_mismatch", "nll_loss",
         lambda: (torch.randn(0, 3), torch.zeros(1, dtype=torch.long)),
         names=("target", "batch")),
    Case("nll-integer_input", "nll_loss",
         lambda: (torch.ones(3, 5, dtype=torch.long), idx(0, 1, 2)), names=("input",)),
    # --- binary_cross_entropy -----------------------------------------------------------
    Case("bce-input_above_1", "binary_cross_entropy",
         lambda: (torch.tensor([0.5, 1.5]), torch.tensor([0.0, 1.0])), names=("input",)),
    Case("bce-input_negative", "binary_cross_entropy",
         lambda: (torch.tensor([0.5, -0.5]), torch.tensor([0.0, 1.0])), names=("input",)),
    Case("bce-input_nan", "binary_cross_entropy",
         lambda: (torch.tensor([0.5, float("nan")]), torch.tensor([0.0, 1.0])),
         names=("input",)),
    Case("bce-target_above_1", "binary_cross_entropy",
         lambda: (torch.tensor([0.2, 0.5, 0.7]), torch.tensor([0.0, 1.0, 2.0])),
         names=("target",)),
    Case("bce-size_mismatch", "binary_cross_entropy",
         lambda: (torch.rand(3), torch.rand(4)), names=("target", "size")),
    Case("bce-size_mismatch_broadcastable", "binary_cross_entropy",
         lambda: (torch.rand(3, 1), torch.rand(3)), names=("target", "size")),
    Case("bce-weight_not_broadcastable", "binary_cross_entropy",
         lambda: (torch.rand(3, 4), torch.rand(3, 4)), dict(weight=torch.ones(5)),
         names=("weight",)),
    Case("bce-invalid_reduction", "binary_cross_entropy",
         lambda: (torch.rand(3), torch.rand(3)), dict(reduction="x"), names=("reduction",)),
    Case("bce-long_target", "binary_cross_entropy",
         lambda: (torch.rand(3), torch.tensor([0, 1, 1])), names=("target",)),
    # --- binary_cross_entropy_with_logits -------------------------------------------------
    Case("bce_logits-size_mismatch", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3), torch.rand(4)), names=("target", "size")),
    Case("bce_logits-size_mismatch_broadcastable", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3, 1), torch.rand(3)), names=("target", "size")),
    Case("bce_logits-weight_not_broadcastable", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3, 4), torch.rand(3, 4)), dict(weight=torch.ones(5)),
         names=("weight",)),
    Case("bce_logits-pos_weight_not_broadcastable", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3, 4), torch.rand(3, 4)), dict(pos_weight=torch.ones(5)),
         names=("pos_weight",)),
    Case("bce_logits-invalid_reduction", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3), torch.rand(3)), dict(reduction="x"), names=("reduction",)),
    Case("bce_logits-long_target", "binary_cross_entropy_with_logits",
         lambda: (torch.randn(3), torch.tensor([0, 1, 1])), names=("target",)),
    # --- kl_div, softmax, log_softmax -------------------------------------------------
    Case("kl_div-invalid_reduction", "kl_div", lambda: (torch.randn(3), torch.rand(3)),
         dict(reduction="x"), names=("reduction",)),
    Case("kl_div-shape_mismatch", "kl_div", lambda: (torch.randn(3, 4), torch.rand(3, 5)),
         dict(reduction="sum"), names=("target", "size", "shape")),
    Case("softmax-dim_out_of_range", "softmax", lambda: (x35(),), dict(dim=2), names=("dim",)),
    Case("log_softmax-dim_out_of_range", "log_softmax", lambda: (x35(),), dict(dim=-3),
         names=("dim",)),
    Case("log_softmax-integer_input", "log_softmax",
         lambda: (torch.ones(3, dtype=torch.long),), dict(dim=0), names=("input",)),
]


def _clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_error_matches_torch(case: Case):
    args = case.make()
    with pytest.raises(Exception) as torch_exc:
        getattr(F, case.fn)(*_clone(args), **case.kwargs)
    with pytest.raises(type(torch_exc.value)) as ce_exc:
        getattr(ce, case.fn)(*_clone(args), **case.kwargs)
    msg = str(ce_exc.value).lower()
    assert any(n.lower() in msg for n in case.names), (
        f"message {str(ce_exc.value)!r} names none of {case.names}"
    )


def test_case_ids_are_unique():
    assert len({c.id for c in CASES}) == len(CASES)


def test_negative_label_smoothing_like_torch():
    # torch only checks label_smoothing <= 1: a negative value is accepted and computed.
    # crossent must either compute the very same value, or reject it naming the argument.
    x, y = torch.randn(3, 5, dtype=torch.float64), idx(0, 1, 2)
    expected = F.cross_entropy(x, y, label_smoothing=-0.1)
    try:
        got = ce.cross_entropy(x.clone(), y.clone(), label_smoothing=-0.1)
    except ValueError as exc:
        assert "label_smoothing" in str(exc)
    else:
        torch.testing.assert_close(got, expected)


# --- nn modules raise the same way ----------------------------------------------------------

MODULE_CASES = [
    ("CrossEntropyLoss-invalid_reduction", "CrossEntropyLoss", dict(reduction="bogus"),
     lambda: (x35(), idx(0, 1, 2)), ("reduction",)),
    ("CrossEntropyLoss-weight_wrong_size", "CrossEntropyLoss", dict(weight=torch.ones(4)),
     lambda: (x35(), idx(0, 1, 2)), ("weight",)),
    ("CrossEntropyLoss-label_smoothing_above_1", "CrossEntropyLoss",
     dict(label_smoothing=2.0), lambda: (x35(), idx(0, 1, 2)), ("label_smoothing",)),
    ("NLLLoss-target_out_of_bounds", "NLLLoss", {}, lambda: (x35(), idx(0, 1, 5)),
     ("target",)),
    ("BCELoss-input_out_of_range", "BCELoss", {},
     lambda: (torch.tensor([1.2]), torch.tensor([1.0])), ("input",)),
    ("BCEWithLogitsLoss-size_mismatch", "BCEWithLogitsLoss", {},
     lambda: (torch.randn(3), torch.rand(2)), ("target", "size")),
    ("KLDivLoss-invalid_reduction", "KLDivLoss", dict(reduction="x"),
     lambda: (torch.randn(3), torch.rand(3)), ("reduction",)),
]


@pytest.mark.parametrize("cid, cls, ctor, make, names", MODULE_CASES,
                         ids=[c[0] for c in MODULE_CASES])
def test_module_error_matches_torch(cid, cls, ctor, make, names):
    args = make()
    with pytest.raises(Exception) as torch_exc:
        getattr(torch.nn, cls)(**ctor)(*_clone(args))
    with pytest.raises(type(torch_exc.value)) as ce_exc:
        getattr(ce, cls)(**ctor)(*_clone(args))
    msg = str(ce_exc.value).lower()
    assert any(n in msg for n in names), str(ce_exc.value)


# --- extras: the oracle is the torch function they build on ---------------------------------


def _focal(x, y, **kw):
    return ce.focal_loss(x, y, **kw)


def _poly1(x, y, **kw):
    return ce.poly1_cross_entropy(x, y, **kw)


def _ce_extra(x, y, **kw):
    return ce.cross_entropy(x, y, z_loss=1e-4, **kw)


EXTRA_CE_CASES = [
    ("batch_size_mismatch", lambda: (x35(), idx(0, 1)), {}, ("target", "batch")),
    ("target_out_of_bounds", lambda: (x35(), idx(0, 1, 5)), {}, ("target",)),
    ("invalid_reduction", lambda: (x35(), idx(0, 1, 2)), dict(reduction="bogus"),
     ("reduction",)),
    ("weight_wrong_size", lambda: (x35(), idx(0, 1, 2)), dict(weight=torch.ones(4)),
     ("weight",)),
    ("float_class_target", lambda: (x35(), torch.tensor([0.0, 1, 2])), {}, ("target",)),
]


@pytest.mark.parametrize("extra", [_focal, _poly1, _ce_extra], ids=["focal_loss",
                                                                   "poly1_cross_entropy",
                                                                   "cross_entropy_z_loss"])
@pytest.mark.parametrize("cid, make, kwargs, names", EXTRA_CE_CASES,
                         ids=[c[0] for c in EXTRA_CE_CASES])
def test_extra_error_matches_torch_cross_entropy(extra, cid, make, kwargs, names):
    args = make()
    with pytest.raises(Exception) as torch_exc:
        F.cross_entropy(*_clone(args), **kwargs)
    with pytest.raises(type(torch_exc.value)) as ce_exc:
        extra(*_clone(args), **kwargs)
    msg = str(ce_exc.value).lower()
    assert any(n in msg for n in names), str(ce_exc.value)


def test_poly1_label_smoothing_above_1():
    with pytest.raises(RuntimeError, match="label_smoothing"):
        ce.poly1_cross_entropy(x35(), idx(0, 1, 2), label_smoothing=1.5)


def test_all_ignored_invalid_value():
    with pytest.raises(ValueError, match="all_ignored"):
        ce.cross_entropy(x35(), idx(0, 1, 2), all_ignored="bogus")


@pytest.mark.parametrize(
    "call",
    [
        lambda: ce.js_div(torch.randn(3, 4).log_softmax(-1), torch.rand(3, 4), reduction="x"),
        lambda: ce.focal_loss(x35(), idx(0, 1, 2), reduction="x"),
        lambda: ce.sigmoid_focal_loss(torch.randn(3), torch.rand(3), reduction="x"),
        lambda: ce.poly1_cross_entropy(x35(), idx(0, 1, 2), reduction="x"),
        lambda: ce.distillation_loss(x35(), x35(), reduction="x"),
    ],
    ids=["js_div", "focal_loss", "sigmoid_focal_loss", "poly1_cross_entropy",
         "distillation_loss"],
)
def test_extra_invalid_reduction(call):
    with pytest.raises(ValueError, match="reduction"):
        call()


def test_js_div_shape_mismatch_like_kl_div():
    a, b = torch.randn(3, 4).log_softmax(-1), torch.rand(3, 5)
    with pytest.raises(Exception) as torch_exc:
        F.kl_div(a, b, reduction="sum")
    with pytest.raises(type(torch_exc.value)) as ce_exc:
        ce.js_div(a, b)
    assert any(n in str(ce_exc.value).lower() for n in ("target", "size", "shape"))


def test_sigmoid_focal_size_mismatch_like_bce_with_logits():
    # torchvision's sigmoid_focal_loss raises through binary_cross_entropy_with_logits
    with pytest.raises(ValueError, match="(?i)target|size"):
        ce.sigmoid_focal_loss(torch.randn(3), torch.rand(4))
