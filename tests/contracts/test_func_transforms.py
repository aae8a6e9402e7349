"""``torch.func`` transforms and forward-mode AD.

The losses on given logits (``cross_entropy`` and what is built on it, ``nll_loss``, the
binary losses, ``margin_logits``) support ``grad``, ``vmap``, ``jacrev``, ``jacfwd``,
``jvp``, ``hessian`` and ``torch.autograd.forward_ad``: checked against the same transform
applied to ``torch.nn.functional``, in float64. Value checks (class-index bounds,
probabilities in [0, 1]) still raise under ``vmap``. The fused and contrastive losses
raise a clear error that names the function and says the transforms are unsupported.
"""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vmap

import crossent as ce
from crossent.core.checks import UnsupportedTransformError

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)

# (id, crossent loss, PyTorch loss) on (logits, target)
CE_CASES = [
    ("index", lambda x, y: ce.cross_entropy(x, y), lambda x, y: F.cross_entropy(x, y)),
    ("index-weight-ignore-smoothing",
     lambda x, y: ce.cross_entropy(x, y, weight=torch.arange(1.0, 6.0, dtype=D), ignore_index=1,
                                   label_smoothing=0.2),
     lambda x, y: F.cross_entropy(x, y, weight=torch.arange(1.0, 6.0, dtype=D), ignore_index=1,
                                  label_smoothing=0.2)),
    ("index-sum", lambda x, y: ce.cross_entropy(x, y, reduction="sum"),
     lambda x, y: F.cross_entropy(x, y, reduction="sum")),
    ("nll", lambda x, y: ce.nll_loss(F.log_softmax(x, 1), y),
     lambda x, y: F.nll_loss(F.log_softmax(x, 1), y)),
]


def problem(n=4, c=5):
    return torch.randn(n, c, dtype=D), torch.tensor([0, 1, 4, 2])[:n]


@pytest.mark.parametrize("name, ours, theirs", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_grad_jacrev_jacfwd_hessian_match_pytorch(name, ours, theirs):
    x, y = problem()
    for transform in (grad, jacrev, jacfwd, hessian):
        got = transform(lambda z: ours(z, y))(x)
        want = transform(lambda z: theirs(z, y))(x)
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name, ours, theirs", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_vmap_over_a_batch_of_problems_matches_pytorch(name, ours, theirs):
    """Against PyTorch problem by problem (``vmap`` of ``F.cross_entropy`` itself fails
    with class weights, ignore_index and label smoothing together: masked_select)."""
    xs = torch.randn(3, 4, 5, dtype=D)
    ys = torch.randint(0, 5, (3, 4))
    got = vmap(ours)(xs, ys)
    torch.testing.assert_close(got, torch.stack([theirs(x, y) for x, y in zip(xs, ys)]), **TOL)
    # and the eager (lean autograd.Function) path, problem by problem
    torch.testing.assert_close(got, torch.stack([ours(x, y) for x, y in zip(xs, ys)]), **TOL)
    # per-problem gradients: vmap of grad
    g_got = vmap(grad(ours))(xs, ys)
    torch.testing.assert_close(g_got, torch.stack([grad(theirs)(x, y) for x, y in zip(xs, ys)]),
                               **TOL)


@pytest.mark.parametrize("name, ours, theirs", CE_CASES, ids=[c[0] for c in CE_CASES])
def test_jvp_and_forward_ad_match_pytorch(name, ours, theirs):
    x, y = problem()
    t = torch.randn_like(x)
    out_got, tan_got = jvp(lambda z: ours(z, y), (x,), (t,))
    out_want, tan_want = jvp(lambda z: theirs(z, y), (x,), (t,))
    torch.testing.assert_close(out_got, out_want, **TOL)
    torch.testing.assert_close(tan_got, tan_want, **TOL)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, t)
        tan = fwAD.unpack_dual(ours(dual, y)).tangent
    torch.testing.assert_close(tan, tan_want, **TOL)


def test_probability_targets_and_k_dimensional_inputs():
    x = torch.randn(2, 5, 3, dtype=D)
    q = torch.softmax(torch.randn(2, 5, 3, dtype=D), 1)
    for kw in ({}, {"label_smoothing": 0.1}, {"weight": torch.rand(5, dtype=D) + 0.5}):
        got = grad(lambda a, b: ce.cross_entropy(a, b, **kw), argnums=(0, 1))(x, q)
        want = grad(lambda a, b: F.cross_entropy(a, b, **kw), argnums=(0, 1))(x, q)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **TOL)
    y = torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(jacrev(lambda a: ce.cross_entropy(a, y, reduction="none"))(x),
                               jacrev(lambda a: F.cross_entropy(a, y, reduction="none"))(x), **TOL)


def test_extras_under_transforms_match_the_eager_path():
    """z-loss, soft cap, logit scale and return_stats: the composite path of the
    transforms equals the lean autograd function of ordinary autograd."""
    x, y = problem()
    kw = dict(z_loss=0.01, softcap=3.0, logit_scale=1.7, label_smoothing=0.1)
    xe = x.clone().requires_grad_()
    eager = ce.cross_entropy(xe, y, **kw)
    g_eager, = torch.autograd.grad(eager, xe)
    torch.testing.assert_close(grad(lambda z: ce.cross_entropy(z, y, **kw))(x), g_eager, **TOL)
    _, stats_eager = ce.cross_entropy(x, y, return_stats=True, **kw)
    _, stats = vmap(lambda z: ce.cross_entropy(z, y, return_stats=True, **kw))(x[None])
    torch.testing.assert_close(stats.lse[0], stats_eager.lse, **TOL)
    torch.testing.assert_close(stats.entropy[0], stats_eager.entropy, **TOL)
    assert torch.equal(stats.argmax[0], stats_eager.argmax)


def test_losses_built_on_cross_entropy_under_transforms():
    x, y = problem()
    for loss in (lambda z: ce.focal_loss(z, y, gamma=2.0),
                 lambda z: ce.poly1_cross_entropy(z, y, epsilon=0.5),
                 lambda z: ce.distillation_loss(z, z.detach() * 2, y, temperature=2.0)):
        xe = x.clone().requires_grad_()
        g_eager, = torch.autograd.grad(loss(xe), xe)
        torch.testing.assert_close(grad(loss)(x), g_eager, **TOL)


def test_binary_losses_under_transforms_match_pytorch():
    p = torch.rand(3, 4, dtype=D) * 0.98 + 0.01
    t = torch.rand(3, 4, dtype=D)
    for transform in (grad, jacrev, jacfwd):
        torch.testing.assert_close(
            transform(lambda a: ce.binary_cross_entropy(a, t))(p),
            transform(lambda a: F.binary_cross_entropy(a, t))(p), **TOL)
    torch.testing.assert_close(vmap(ce.binary_cross_entropy)(p, t),
                               vmap(F.binary_cross_entropy)(p, t), **TOL)
    torch.testing.assert_close(
        jvp(lambda a, b: ce.binary_cross_entropy(a, b), (p, t), (p, t))[1],
        jvp(lambda a, b: F.binary_cross_entropy(a, b), (p, t), (p, t))[1], **TOL)
    x = torch.randn(3, 4, dtype=D)
    torch.testing.assert_close(
        vmap(grad(lambda a, b: ce.binary_cross_entropy_with_logits(a, b)))(x, t),
        vmap(grad(lambda a, b: F.binary_cross_entropy_with_logits(a, b)))(x, t), **TOL)


@pytest.mark.parametrize("head, params", [("arcface", {}), ("sphereface", {"margin": 3}),
                                          ("combined", {"m1": 1.5})])
def test_margin_logits_under_transforms_match_eager_autograd(head, params):
    x = torch.randn(4, 6, dtype=D)
    w = torch.randn(5, 6, dtype=D)
    y = torch.tensor([0, 1, 4, 2])

    def loss(e):
        return ce.cross_entropy(ce.margin_logits(e, w, y, head=head, **params), y)

    xe = x.clone().requires_grad_()
    g_eager, = torch.autograd.grad(loss(xe), xe)
    torch.testing.assert_close(grad(loss)(x), g_eager, **TOL)
    torch.testing.assert_close(jacfwd(loss)(x), g_eager, **TOL)
    xs = torch.randn(3, 4, 6, dtype=D)
    torch.testing.assert_close(vmap(loss)(xs), torch.stack([loss(e) for e in xs]), **TOL)


# ------------------------------------------------------------ value checks under vmap


def test_out_of_bounds_target_raises_under_transforms():
    xs = torch.randn(2, 3, 5, dtype=D)
    ys = torch.tensor([[0, 1, 2], [0, 5, 1]])  # 5 is out of [0, 5), in the second problem
    with pytest.raises(ce.TargetIndexError, match="Target 5 is out of bounds"):
        vmap(lambda x, y: ce.cross_entropy(x, y))(xs, ys)
    with pytest.raises(IndexError, match="Target 5"):
        grad(lambda x: ce.cross_entropy(x, ys[1]))(xs[1])
    with pytest.raises(IndexError, match="Target 5"):
        vmap(lambda x, y: ce.nll_loss(x, y))(xs, ys)
    # ignore_index values are fine
    ys_ok = torch.tensor([[0, -100, 2], [0, 4, 1]])
    torch.testing.assert_close(vmap(lambda x, y: ce.cross_entropy(x, y))(xs, ys_ok),
                               vmap(lambda x, y: F.cross_entropy(x, y))(xs, ys_ok), **TOL)


def test_probability_outside_unit_interval_raises_under_vmap():
    p = torch.rand(2, 4, dtype=D)
    p[1, 2] = 1.5
    with pytest.raises(ce.ArgumentError, match="input"):
        vmap(lambda a: ce.binary_cross_entropy(a, torch.full((4,), 0.5, dtype=D)))(p)


def test_margin_logits_zero_norm_raises_under_vmap():
    xs = torch.randn(2, 3, 6, dtype=D)
    xs[1, 2] = 0.0
    w = torch.randn(5, 6, dtype=D)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ce.ArgumentError, match="embeddings .*norm 0.0"):
        vmap(lambda e: ce.margin_logits(e, w, y))(xs)


# ------------------------------------------------------ unsupported: a clear error


def _lin(x):
    return ce.linear_cross_entropy(x, torch.ones(5, 4, dtype=D), torch.tensor([0, 1, 2]))


UNSUPPORTED = [
    ("linear_cross_entropy", "crossent.linear_cross_entropy", _lin),
    ("LinearCrossEntropyLoss", "crossent.linear_cross_entropy",
     lambda x, m=ce.LinearCrossEntropyLoss(4, 5, dtype=D): m(x, torch.tensor([0, 1, 2]))),
    ("arcface_loss", "margin loss", lambda x: ce.arcface_loss(x, torch.ones(5, 4, dtype=D),
                                                               torch.tensor([0, 1, 2]))),
    ("subcenter_arcface_loss", "margin loss",
     lambda x: ce.subcenter_arcface_loss(x, torch.ones(10, 4, dtype=D), torch.tensor([0, 1, 2]),
                                         centers=2)),
    ("clip_loss", "crossent.clip_loss", lambda x: ce.clip_loss(x, x + 1, 10.0)),
    ("siglip_loss", "crossent.siglip_loss", lambda x: ce.siglip_loss(x, x + 1, 10.0, -1.0)),
    ("info_nce", "crossent.info_nce", lambda x: ce.info_nce(x, x + 1)),
    ("nt_xent", "crossent.nt_xent", lambda x: ce.nt_xent(x, x + 1)),
    ("supcon_loss", "crossent.supcon_loss", lambda x: ce.supcon_loss(x, torch.tensor([0, 0, 1]))),
    ("sampled_softmax_loss", "crossent.sampled_softmax_loss",
     lambda x: ce.sampled_softmax_loss(x, x + 1, item_log_q=torch.zeros(3, dtype=D))),
    ("cross_entropy-group", "crossent.cross_entropy\\(group=",
     lambda x: ce.cross_entropy(x, torch.tensor([0, 1, 2]), group=object())),
]


def _transforms(fn, x):
    yield "grad", lambda: grad(fn)(x)
    yield "vmap", lambda: vmap(fn)(x[None])
    yield "jacrev", lambda: jacrev(fn)(x)
    yield "jvp", lambda: jvp(fn, (x,), (torch.ones_like(x),))

    def forward_ad():
        with fwAD.dual_level():
            fn(fwAD.make_dual(x, torch.ones_like(x)))
    yield "forward_ad", forward_ad


@pytest.mark.parametrize("name, context, fn", UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_fused_and_contrastive_losses_raise_a_clear_error(name, context, fn, monkeypatch):
    x = torch.randn(3, 4, dtype=D)
    if name == "cross_entropy-group":
        # a group of several ranks (a one-rank group is no group and supports transforms):
        # the transform error must come before any collective
        import crossent.core.multiclass as multiclass

        monkeypatch.setattr(multiclass, "spans_ranks", lambda group: True)
    else:  # it works outside the transforms
        fn(x.clone().requires_grad_()).backward()
    for transform, call in _transforms(fn, x):
        with pytest.raises(UnsupportedTransformError,
                           match=rf"{context}.*does not support torch.func transforms") as info:
            call()
        assert isinstance(info.value, ce.ArgumentError), transform
        assert isinstance(info.value, NotImplementedError), transform


def test_margin_head_module_error_points_to_margin_logits():
    head = ce.ArcFace(5, 4, dtype=D)
    with pytest.raises(UnsupportedTransformError, match="margin_logits"):
        grad(lambda x: head(x, torch.tensor([0, 1, 2])))(torch.randn(3, 4, dtype=D))


def test_eager_path_is_unchanged_outside_transforms():
    """Outside transforms the lean autograd function runs (its node in the graph)."""
    x = torch.randn(4, 5, requires_grad=True)
    loss = ce.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
    names = set()
    stack = [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    assert "_SoftmaxStatisticsFunctionBackward" in names
