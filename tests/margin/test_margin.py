"""Margin heads against the papers' formulas (float64, written here with acos/cos, independent
of crossent.kernels.margin_spec), against pytorch-metric-learning, at theta = 0 and pi, and on bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import crossent as ce

F64 = torch.float64

# ------------------------------------------------------------------ the reference


def _cos(x, w):
    return (x @ w.T) / (x.norm(dim=1, keepdim=True) * w.norm(dim=1).unsqueeze(0))


def _arcface_phi(theta, m, easy=False):
    if easy:
        return torch.where(torch.cos(theta) > 0, torch.cos(theta + m), torch.cos(theta))
    return torch.where(theta <= math.pi - m, torch.cos(theta + m),
                       torch.cos(theta) - m * math.sin(m))


def _psi(theta, m):
    k = torch.floor(theta * m / math.pi).detach()
    return (-1.0) ** k * torch.cos(m * theta) - 2 * k


def _combined_phi(theta, m1, m2, m3):
    star = (math.pi - m2) / m1
    inside = m1 * theta + m2 <= math.pi
    past = torch.cos(theta) - math.cos(min(star, math.pi)) - 1.0
    return torch.where(inside, torch.cos(m1 * theta + m2), past) - m3


def reference_logits(head, x, w, y, *, scale=None, margin=None, easy_margin=False, m1=1.0,
                     m2=0.5, m3=0.0, centers=1, annealing=0.0, straight_through=False):
    """The papers' logits in float64 with plain autograd (acos and all)."""
    cos = _cos(x, w)
    if centers > 1:
        cos = cos.view(x.shape[0], -1, centers).amax(2)
    cos_y = cos.gather(1, y[:, None]).squeeze(1)
    theta = torch.acos(cos_y.clamp(-1, 1))
    nx = x.norm(dim=1, keepdim=True)
    nw = w.norm(dim=1).unsqueeze(0)
    if head in ("arcface", "subcenter_arcface"):
        s, rho, phi = scale, 1.0, _arcface_phi(theta, margin, easy_margin)
    elif head == "cosface":
        s, rho, phi = scale, 1.0, cos_y - margin
    elif head == "combined":
        s, rho, phi = scale, 1.0, _combined_phi(theta, m1, m2, m3)
    else:  # sphereface / lsoftmax
        s = scale
        rho = nx if head == "sphereface" else nx * nw
        phi = (annealing * cos_y + _psi(theta, margin)) / (1 + annealing)
    logits = s * rho * cos
    rho_y = rho if isinstance(rho, float) else rho.expand_as(cos).gather(1, y[:, None]).squeeze(1)
    target = s * rho_y * phi
    if straight_through:  # InsightFace arcface_torch: margin in the forward only
        plain = logits.gather(1, y[:, None]).squeeze(1)
        target = plain + (target - plain).detach()
    return logits.scatter(1, y[:, None], target[:, None])


HEADS = {
    "arcface": (ce.arcface_loss, dict(scale=16.0, margin=0.5)),
    "arcface_easy": (ce.arcface_loss, dict(scale=16.0, margin=0.5, easy_margin=True)),
    "arcface_st": (ce.arcface_loss, dict(scale=16.0, margin=0.5, gradient="straight_through")),
    "cosface": (ce.cosface_loss, dict(scale=16.0, margin=0.35)),
    "sphereface": (ce.sphereface_loss, dict(margin=4, scale=1.0)),
    "sphereface_annealed": (ce.sphereface_loss, dict(margin=3, scale=1.5, annealing=5.0)),
    "lsoftmax": (ce.large_margin_softmax_loss, dict(margin=4, scale=1.0)),
    "lsoftmax_m2": (ce.large_margin_softmax_loss, dict(margin=2, scale=0.5, annealing=1.0)),
    "combined": (ce.combined_margin_loss, dict(scale=16.0, m1=1.2, m2=0.3, m3=0.1)),
    "combined_arc": (ce.combined_margin_loss, dict(scale=16.0, m1=1.0, m2=0.4, m3=0.05)),
    "subcenter": (ce.subcenter_arcface_loss, dict(centers=3, scale=16.0, margin=0.5)),
}


def _ref_kwargs(name, kw):
    head = {"arcface_easy": "arcface", "arcface_st": "arcface", "sphereface_annealed": "sphereface",
            "lsoftmax_m2": "lsoftmax", "combined_arc": "combined", "subcenter": "subcenter_arcface"}.get(name, name)
    r = dict(kw)
    r.pop("gradient", None)
    if name == "arcface_st":
        r["straight_through"] = True
    return head, r


def _problem(n=9, d=6, c=13, centers=1, dtype=F64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(c * centers, d, generator=g, dtype=F64)
    y = torch.randint(0, c, (n,), generator=g)
    return x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_(), y


def _at_angle(w_row, theta, norm, g):
    """An embedding at angle ``theta`` from ``w_row`` (float64), of norm ``norm``."""
    u = w_row / w_row.norm()
    v = torch.randn(w_row.shape, generator=g, dtype=F64)
    v = v - (v @ u) * u
    v = v / v.norm()
    return norm * (math.cos(theta) * u + math.sin(theta) * v)


def _loss_and_grads(fn, x, w, y, **kw):
    loss = fn(x, w, y, **kw)
    gx, gw = torch.autograd.grad(loss.sum(), (x, w))
    return loss.detach(), gx, gw


def _reference(name, kw, x, w, y, reduction="mean", label_smoothing=0.0, ignore_index=-100):
    head, rkw = _ref_kwargs(name, kw)
    xr, wr = x.detach().to(F64).requires_grad_(), w.detach().to(F64).requires_grad_()
    valid = y != ignore_index
    ys = torch.where(valid, y, torch.zeros_like(y))
    logits = reference_logits(head, xr, wr, ys, **rkw)
    loss = F.cross_entropy(logits, y, reduction=reduction, label_smoothing=label_smoothing,
                           ignore_index=ignore_index)
    gx, gw = torch.autograd.grad(loss.sum(), (xr, wr))
    return loss.detach(), gx, gw


def _close(got, want, rtol=1e-9, atol=1e-10):
    for a, b in zip(got, want):
        torch.testing.assert_close(a.to(F64), b, rtol=rtol, atol=atol)


# ----------------------------------------------------------- the formulas, float64


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("tiling", [{}, {"vocab_chunk_size": 4, "token_chunk_size": 4},
                                    {"vocab_chunk_size": 5, "token_chunk_size": 2}])
def test_head_equals_paper_formula(name, tiling):
    fn, kw = HEADS[name]
    x, w, y = _problem(centers=kw.get("centers", 1))
    _close(_loss_and_grads(fn, x, w, y, **kw, **tiling), _reference(name, kw, x, w, y))


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("options", [
    dict(reduction="none"), dict(reduction="sum", label_smoothing=0.2),
    dict(reduction="mean", label_smoothing=0.1, ignore_index=3),
    dict(reduction="none", ignore_index=3, vocab_chunk_size=4),
])
def test_reductions_ignore_index_smoothing(name, options):
    fn, kw = HEADS[name]
    x, w, y = _problem(centers=kw.get("centers", 1))
    y = y.clone()
    y[::3] = 3 if "ignore_index" in options else y[::3]
    ref_opts = {k: v for k, v in options.items() if k != "vocab_chunk_size"}
    _close(_loss_and_grads(fn, x, w, y, **kw, **options), _reference(name, kw, x, w, y, **ref_opts))


ANGLES = [1e-4, 1e-2, 0.3, 1.0, 1.5, 2.0, 2.4, 2.62, 2.66, 2.9, 3.1, math.pi - 1e-3]


@pytest.mark.parametrize("name", sorted(HEADS))
def test_target_angles_from_zero_to_pi(name):
    """Each row's target angle set by construction: near 0, through pi - m (the ArcFace
    continuation starts at 2.64), and near pi; the continuation's jump is included."""
    fn, kw = HEADS[name]
    k = kw.get("centers", 1)
    g = torch.Generator().manual_seed(1)
    c, d = len(ANGLES), 5
    w = torch.randn(c * k, d, generator=g, dtype=F64)
    y = torch.randperm(c, generator=g)
    x = torch.stack([_at_angle(w[int(t) * k], a, 0.5 + i / 4, g)
                     for i, (t, a) in enumerate(zip(y, ANGLES))])
    for i, (t, a) in enumerate(zip(y, ANGLES)):  # other centres: strictly larger angles
        for j in range(1, k):
            w[int(t) * k + j] = _at_angle(x[i], a + (math.pi - a) * j / k, 1.0 + j, g)
    x, w = x.requires_grad_(), w.requires_grad_()
    got = _loss_and_grads(fn, x, w, y, reduction="none", **kw)
    _close(got, _reference(name, kw, x, w, y, reduction="none"), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_theta_zero_and_pi_are_finite(name, dtype):
    """An embedding equal to its class centre (theta = 0) and opposite to it (pi)."""
    fn, kw = HEADS[name]
    k = kw.get("centers", 1)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4 * k, 6, generator=g, dtype=F64)
    x = torch.stack([w[0] * 2.0, -w[k] * 0.7, w[2 * k].clone(), -w[3 * k]])
    y = torch.arange(4)
    x, w = x.to(dtype).requires_grad_(), w.to(dtype).requires_grad_()
    loss, gx, gw = _loss_and_grads(fn, x, w, y, reduction="none", **kw)
    assert torch.isfinite(loss).all() and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    # the values themselves: the reference is exact there (only its acos gradient is not)
    want, _, _ = _reference(name, kw, x.detach().double().requires_grad_(), w, y, reduction="none")
    tol = 1e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(loss.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["arcface", "sphereface", "lsoftmax", "combined", "cosface"])
def test_gradcheck(name):
    fn, kw = HEADS[name]
    x, w, y = _problem(n=4, d=3, c=5)
    # 'none' recomputes in its backward; 'mean'/'sum' form gradients once, in the forward,
    # and gradcheck backpropagates one output many times (covered by the tests above)
    assert torch.autograd.gradcheck(
        lambda a, b: fn(a, b, y, reduction="none", vocab_chunk_size=2, **kw), (x, w))


@pytest.mark.parametrize("name", ["arcface", "sphereface", "subcenter"])
def test_float32_and_bfloat16_follow_float64(name):
    fn, kw = HEADS[name]
    x, w, y = _problem(n=16, d=8, c=20, centers=kw.get("centers", 1))
    want = _reference(name, kw, x, w, y)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    _close(_loss_and_grads(fn, x32, w32, y, **kw), want, rtol=1e-4, atol=1e-5)
    xb, wb = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    loss, gx, gw = _loss_and_grads(fn, xb, wb, y, **kw)
    assert loss.dtype == torch.float32 and gx.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), want[0], rtol=0.05, atol=0.05)


def test_margin_logits_equal_reference_and_fused_loss():
    x, w, y = _problem()
    for name in ("arcface", "lsoftmax", "combined", "subcenter"):
        fn, kw = HEADS[name]
        if name == "subcenter":
            x, w, y = _problem(centers=3)
        head, rkw = _ref_kwargs(name, kw)
        got = ce.margin_logits(x, w, y, head=head, **{k: v for k, v in kw.items()})
        torch.testing.assert_close(got, reference_logits(head, x, w, y, **rkw))
        torch.testing.assert_close(F.cross_entropy(got, y), fn(x, w, y, **kw))
    plain = ce.margin_logits(x, w, head="subcenter_arcface", centers=3, scale=2.0)
    torch.testing.assert_close(plain, 2.0 * _cos(x, w).view(len(x), -1, 3).amax(2))


def test_combined_special_cases():
    x, w, y = _problem()
    torch.testing.assert_close(ce.combined_margin_loss(x, w, y, scale=8.0, m1=1.0, m2=0.0, m3=0.3),
                               ce.cosface_loss(x, w, y, scale=8.0, margin=0.3))
    # ArcFace where every target angle is below pi - m
    x2 = w[y].detach() + 0.3 * torch.randn_like(x)
    torch.testing.assert_close(ce.combined_margin_loss(x2, w, y, scale=8.0, m1=1.0, m2=0.5, m3=0.0),
                               ce.arcface_loss(x2, w, y, scale=8.0, margin=0.5))


def test_straight_through_gradient_is_that_of_scaled_cosines():
    """InsightFace's arcface_torch: margin logits forward, d(s cos theta) backward."""
    x, w, y = _problem()
    loss, gx, gw = _loss_and_grads(ce.arcface_loss, x, w, y, gradient="straight_through", scale=8.0)
    with torch.no_grad():
        margin = ce.margin_logits(x, w, y, head="arcface", scale=8.0)
    xr, wr = x.detach().requires_grad_(), w.detach().requires_grad_()
    plain = 8.0 * _cos(xr, wr)
    logits = plain + (margin - plain).detach()
    want = F.cross_entropy(logits, y)
    _close((loss, gx, gw), (want.detach(), *torch.autograd.grad(want, (xr, wr))))


def test_caller_tensors_are_not_modified():
    x, w, y = _problem(centers=3)
    copies = [t.detach().clone() for t in (x, w, y)]
    ce.subcenter_arcface_loss(x, w, y, vocab_chunk_size=3).backward()
    for t, c in zip((x, w, y), copies):
        assert torch.equal(t.detach(), c)


def test_triton_backend_request_falls_back_to_torch():
    pytest.importorskip("triton")
    x, w, y = _problem(dtype=torch.float32)
    _close(_loss_and_grads(ce.arcface_loss, x, w, y, backend="triton"),
           [t.double() for t in _loss_and_grads(ce.arcface_loss, x, w, y, backend="torch")])


# ------------------------------------------------------ pytorch-metric-learning (peer)

pml = pytest.importorskip("pytorch_metric_learning.losses")


@pytest.mark.parametrize("name", ["arcface", "cosface", "sphereface", "lsoftmax", "subcenter"])
def test_equals_pytorch_metric_learning(name):
    n, d, c = 12, 6, 9
    fn, kw = {
        "arcface": (ce.arcface_loss, dict(scale=20.0, margin=0.5)),
        "cosface": (ce.cosface_loss, dict(scale=20.0, margin=0.35)),
        "sphereface": (ce.sphereface_loss, dict(margin=3, scale=1.0)),
        "lsoftmax": (ce.large_margin_softmax_loss, dict(margin=4, scale=1.0)),
        "subcenter": (ce.subcenter_arcface_loss, dict(centers=3, scale=20.0, margin=0.5)),
    }[name]
    k = kw.get("centers", 1)
    peer_kw = {"scale": kw["scale"]}
    if name in ("arcface", "subcenter"):
        peer_kw["margin"] = math.degrees(kw["margin"])  # degrees in pytorch-metric-learning
    else:
        peer_kw["margin"] = kw["margin"]
    peer_cls = {"arcface": pml.ArcFaceLoss, "cosface": pml.CosFaceLoss,
                "sphereface": pml.SphereFaceLoss, "lsoftmax": pml.LargeMarginSoftmaxLoss,
                "subcenter": pml.SubCenterArcFaceLoss}[name]
    if name == "subcenter":
        peer = peer_cls(num_classes=c, embedding_size=d, sub_centers=k, **peer_kw).double()
    else:
        peer = peer_cls(c, d, **peer_kw).double()
    x, w, y = _problem(n=n, d=d, c=c, centers=k, seed=3)
    with torch.no_grad():
        peer.W.copy_(w.T)  # its weight is (D, C)
    xp = x.detach().clone().requires_grad_()
    want = peer(xp, y)
    want.backward()
    got = _loss_and_grads(fn, x, w, y, **kw)
    _close(got, (want.detach(), xp.grad, peer.W.grad.T), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------- errors and zero norms


def test_zero_norm_embedding_and_weight_are_errors_not_nan():
    x, w, y = _problem()
    with torch.no_grad():
        x[2] = 0
    with pytest.raises(ce.ArgumentError, match="embeddings row 2"):
        ce.arcface_loss(x, w, y)
    # an ignored row may be zero: it has no loss and no gradient
    y2 = y.clone()
    y2[2] = -100
    loss, gx, gw = _loss_and_grads(ce.arcface_loss, x, w, y2)
    assert torch.isfinite(loss) and torch.isfinite(gx).all() and torch.isfinite(gw).all()
    assert torch.equal(gx[2], torch.zeros_like(gx[2]))
    x, w, y = _problem()
    with torch.no_grad():
        w[5] = 0
    for fn in (ce.arcface_loss, ce.sphereface_loss, ce.large_margin_softmax_loss):
        with pytest.raises(ce.ArgumentError, match="weight row 5"):
            fn(x, w, y)
    with pytest.raises(ce.ArgumentError, match="weight row 5"):
        ce.margin_logits(x, w, head="cosface")


@pytest.mark.parametrize("call, error, message", [
    (lambda x, w, y: ce.arcface_loss(x, w, y + 13), ce.TargetIndexError, "out of bounds"),
    (lambda x, w, y: ce.arcface_loss(x[:, :4], w, y), ce.ArgumentError, "embedding_dim"),
    (lambda x, w, y: ce.arcface_loss(x, w.float(), y), ce.ArgumentTypeError, "same dtype"),
    (lambda x, w, y: ce.arcface_loss(x, w, y.float()), ce.ArgumentTypeError, "target dtype"),
    (lambda x, w, y: ce.arcface_loss(x, w, y[:3]), ce.ArgumentError, "target must have shape"),
    (lambda x, w, y: ce.arcface_loss(x[0], w, y), ce.ArgumentError, "embeddings must be 2-D"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, margin=3.5), ce.ArgumentError, "margin must be in"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, margin=-0.1), ce.ArgumentError, "margin"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, scale=0.0), ce.ArgumentError, "scale"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, gradient="approx"), ce.ArgumentError, "gradient"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, easy_margin=1), ce.ArgumentTypeError, "easy_margin"),
    (lambda x, w, y: ce.cosface_loss(x, w, y, margin=2.5), ce.ArgumentError, "margin"),
    (lambda x, w, y: ce.sphereface_loss(x, w, y, margin=2.5), ce.ArgumentError, "integer"),
    (lambda x, w, y: ce.sphereface_loss(x, w, y, margin="4"), ce.ArgumentTypeError, "margin"),
    (lambda x, w, y: ce.large_margin_softmax_loss(x, w, y, margin=0), ce.ArgumentError, ">= 1"),
    (lambda x, w, y: ce.large_margin_softmax_loss(x, w, y, annealing=-1.0), ce.ArgumentError,
     "annealing"),
    (lambda x, w, y: ce.combined_margin_loss(x, w, y, m1=0.5), ce.ArgumentError, "m1"),
    (lambda x, w, y: ce.combined_margin_loss(x, w, y, m3=-1), ce.ArgumentError, "m3"),
    (lambda x, w, y: ce.subcenter_arcface_loss(x, w, y, centers=2), ce.ArgumentError, "centers"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, reduction="avg"), ce.ArgumentError, "reduction"),
    (lambda x, w, y: ce.arcface_loss(x, w, y, label_smoothing=1.5), ce.ArgumentError,
     "label_smoothing"),
    (lambda x, w, y: ce.margin_logits(x, w, head="normface"), ce.ArgumentError, "head"),
    (lambda x, w, y: ce.margin_logits(x, w, head="arcface", m1=2.0), ce.ArgumentTypeError,
     "arcface"),
    (lambda x, w, y: ce.ArcFace(10, 6, sample_rate=0.0), ce.ArgumentError, "sample_rate"),
    (lambda x, w, y: ce.SphereFace(10, 6, margin=1.5), ce.ArgumentError, "integer"),
])
def test_bad_input_names_the_argument(call, error, message):
    x, w, y = _problem()
    with pytest.raises(error, match=message):
        call(x, w, y)


# ------------------------------------------------------------------ modules, Partial FC


def test_module_initialisations_follow_the_reference_code():
    d = 256
    torch.manual_seed(0)
    assert ce.ArcFace(2000, d).weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert ce.CombinedMargin(2000, d).weight.std().item() == pytest.approx(0.01, rel=0.02)
    sub = ce.SubCenterArcFace(500, d, centers=3)
    assert sub.weight.shape == (1500, d) and sub.weight.std().item() == pytest.approx(0.01, rel=0.02)
    for cls in (ce.CosFace, ce.SphereFace):
        w = cls(2000, d).weight
        bound = math.sqrt(3 / d)
        assert w.abs().max().item() <= bound and w.abs().max().item() > 0.99 * bound
    assert ce.LargeMarginSoftmax(2000, d).weight.std().item() == pytest.approx(math.sqrt(2 / d), rel=0.02)


def test_module_forward_is_the_functional_loss():
    head = ce.SphereFace(13, 6, margin=3, label_smoothing=0.1)
    x, _, y = _problem(dtype=torch.float32)
    want = ce.sphereface_loss(x, head.weight, y, margin=3, label_smoothing=0.1)
    torch.testing.assert_close(head(x, y), want)
    head.set_annealing(ce.anneal_lambda(0))
    assert head.params["annealing"] == 1000.0
    assert head.logits(x.float()).shape == (9, 13)


def test_anneal_lambda_schedules():
    assert ce.anneal_lambda(0) == 1000.0
    assert ce.anneal_lambda(10) == pytest.approx(1000 / 2.2)
    assert ce.anneal_lambda(10 ** 6) == 5.0
    assert ce.anneal_lambda(10 ** 6, gamma=2.5e-5, power=35, minimum=0) == pytest.approx(
        1000 * (1 + 25) ** -35)


def test_partial_fc_sample_keeps_positives_and_remaps():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([5, 17, 5, -100, 93, 2])
    classes, remapped = ce.partial_fc_sample(y, 100, 0.1, generator=g)
    assert classes.numel() == 10 and torch.equal(classes, classes.sort().values)
    assert torch.unique(classes).numel() == 10
    valid = y != -100
    assert torch.equal(classes[remapped[valid]], y[valid]) and remapped[3] == -100
    classes, remapped = ce.partial_fc_sample(y, 100, 0.01)  # fewer slots than positives
    assert classes.tolist() == [2, 5, 17, 93]


def test_partial_fc_head_equals_loss_on_sampled_rows():
    head = ce.SubCenterArcFace(50, 8, centers=2, sample_rate=0.2, scale=10.0,
                               generator=torch.Generator().manual_seed(4)).double()
    x = torch.randn(12, 8, dtype=F64, requires_grad=True)
    y = torch.randint(0, 50, (12,))
    loss = head(x, y)
    loss.backward()
    classes, remapped = ce.partial_fc_sample(y, 50, 0.2, generator=torch.Generator().manual_seed(4))
    rows = (classes[:, None] * 2 + torch.arange(2)).reshape(-1)
    w = head.weight.detach()[rows].requires_grad_()
    xr = x.detach().requires_grad_()
    want, gx, gw = _reference("subcenter", dict(centers=2, scale=10.0, margin=0.5), xr, w, remapped)
    _close((loss.detach(), x.grad, head.weight.grad[rows]), (want, gx, gw))
    others = torch.ones(100, dtype=torch.bool)
    others[rows] = False
    assert torch.equal(head.weight.grad[others], torch.zeros_like(head.weight.grad[others]))
    head.eval()  # every class in evaluation
    torch.testing.assert_close(head(x, y), ce.subcenter_arcface_loss(x, head.weight, y, centers=2,
                                                                     scale=10.0))


# -------------------------------------------------------------------------- memory


class _NewStorages(TorchDispatchMode):
    """Sizes in bytes of every storage an op creates (views of existing storage excluded)."""

    def __init__(self, known):
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.sizes = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                if st.data_ptr() not in self.known:
                    self.sizes[st.data_ptr()] = max(self.sizes.get(st.data_ptr(), 0), st.nbytes())
        return out


def test_no_batch_by_class_tensor_and_no_second_weight_sized_tensor():
    n, d, c = 64, 8, 20000
    x = torch.randn(n, d, requires_grad=True)
    w = torch.randn(c, d, requires_grad=True)
    y = torch.randint(0, c, (n,))
    with _NewStorages([x, w, y]) as probe:
        ce.arcface_loss(x, w, y, memory_budget=1 << 20).backward()
    sizes = sorted(probe.sizes.values(), reverse=True)
    assert sizes[0] == c * d * 4  # the weight gradient
    assert sizes[1] < n * c * 4 // 2 and sizes[1] <= 1 << 20  # then the tiles (the budget)


@pytest.mark.slow
def test_runs_under_torch_compile_fullgraph():
    x, w, y = _problem(dtype=torch.float32)
    compiled = torch.compile(lambda a, b, t: ce.arcface_loss(a, b, t, scale=8.0), fullgraph=True)
    got = _loss_and_grads(compiled, x, w, y)
    want = _loss_and_grads(lambda a, b, t: ce.arcface_loss(a, b, t, scale=8.0), x, w, y)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("head,kw", [("arcface", dict(scale=16.0, margin=0.5)),
                                     ("combined", dict(scale=16.0, m1=1.2, m2=0.3, m3=0.1)),
                                     ("sphereface", dict(margin=3, scale=1.5))])
def test_margin_logits_double_backward_matches_the_papers_formula(head, kw):
    """issue 20, defect 3: a gradient penalty through margin_logits gets the full second
    derivative (the margin function's curvature too), equal to plain autograd through the
    papers' formulas in float64."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 5, 1, 2])

    def penalty(logits_fn):
        z = logits_fn(x)
        loss = torch.nn.functional.cross_entropy(z, y)
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        (ggx,) = torch.autograd.grad(gx.square().sum(), x)
        return ggx

    ours = penalty(lambda v: ce.margin_logits(v, w, y, head=head, **kw))
    ref = penalty(lambda v: reference_logits(head, v, w, y, **kw))
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)
