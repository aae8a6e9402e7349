"""Margin softmax heads: L-Softmax, SphereFace, CosFace/AM-Softmax, ArcFace, combined, sub-centre.

For embeddings ``x`` ``(N, D)``, class weights ``W`` ``(C, D)`` (``nn.Linear``'s layout) and
``theta_ic`` the angle between ``x_i`` and ``W_c``, every head is a cross-entropy over logits
whose target column carries a margin::

    head                       other logits z_ic            target logit z_iy
    L-Softmax  (Liu 2016)      ||W_c|| ||x|| cos theta      ||W_y|| ||x|| psi(theta)      times s
    SphereFace (Liu 2017)      ||x|| cos theta              ||x|| psi(theta)              times s
    CosFace    (Wang 2018)     s cos theta                  s (cos theta - m)
    ArcFace    (Deng 2019)     s cos theta                  s cos(theta + m)
    combined   (InsightFace)   s cos theta                  s (cos(m1 theta + m2) - m3)

with ``psi(theta) = (-1)^k cos(m theta) - 2k`` on ``[k pi/m, (k+1) pi/m]`` (integer ``m``).
The margin functions, their continuations past pi and their slopes at theta = 0 and pi
are in :mod:`crossent.kernels.margin_spec`. Sub-centre ArcFace (Deng et al. 2020) takes the class
cosine as the max over ``K`` centres (weight ``(C*K, D)``, row ``c*K + k``).

**Fused.** Every loss runs on the tiled path of :func:`crossent.linear_cross_entropy`
(:mod:`crossent.kernels.margin_scores`): the class norms are a ``(C,)`` vector applied to
each logit tile, the margin replaces only the target column, and the gradient flows back
through the normalisation tile by tile. Memory beyond the weight gradient: the logit tiles
(``memory_budget``), a ``(C,)`` norm vector and ``(N, K, D)`` gathered target rows; never
``N x C`` logits, never a normalised copy of ``W``.

Arguments shared by every loss: ``reduction``, ``ignore_index``, ``label_smoothing`` and
``all_ignored`` as in :func:`crossent.cross_entropy` (label smoothing spreads over the
margin-adjusted logits; an empty batch, ``N = 0``, gives what cross_entropy gives: NaN for
'mean' unless ``all_ignored='zero'``, 0 for 'sum', an empty tensor for 'none'; ``scale``
and the margins must be finite; ``torch.func`` transforms raise a clear error: use
:func:`margin_logits` and :func:`crossent.cross_entropy` under them), and the tiling controls of :func:`crossent.linear_cross_entropy`
(``memory_budget``, default 128 MiB here, 2 GiB on CUDA: :data:`crossent.core.tiles.BUDGETS`;
``token_chunk_size``, ``vocab_chunk_size``, ``backend``; the Triton
backend has no margin kernels, so margin heads always run on the PyTorch backend).
Zero-norm embeddings (on rows that are not ignored) and zero-norm class weights raise
:class:`crossent.ArgumentError`: they have no angle.

:func:`margin_logits` gives the margin-adjusted ``N x C`` logits themselves (plots,
evaluation), differentiably, for problems where they fit.
"""

from __future__ import annotations

import math

import torch

from ..core import checks as _checks
from ..core.reduction import ALL_IGNORED_CHOICES
from ..core.tiles import plan_tiles
from ..kernels import margin_scores
from ..kernels.dispatch import resolve_backend
from ..kernels.margin_spec import MarginSpec, anneal_lambda
from ..linear.engine import linear_ce_op

__all__ = [
    "arcface_loss",
    "cosface_loss",
    "sphereface_loss",
    "large_margin_softmax_loss",
    "combined_margin_loss",
    "subcenter_arcface_loss",
    "margin_logits",
    "margin_spec",
    "anneal_lambda",
    "HEADS",
]

GRADIENTS = ("exact", "straight_through")

# ----------------------------------------------------------------------------- specs


def _in_range(name: str, value, low: float, high: float, high_open: bool = True) -> float:
    value = _checks.check_number(name, value)
    ok = low <= value < high if high_open else low <= value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise _checks.ArgumentError(f"{name} must be in [{low}, {high:.6g}{bracket}, got {value}")
    return value


def _integer_margin(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__index__"):
        raise _checks.ArgumentTypeError(f"margin must be an int, got {type(value).__name__} {value!r}")
    if isinstance(value, float):
        if not value.is_integer():
            raise _checks.ArgumentError(
                f"margin must be an integer (the multiplicative angular margin m of "
                f"cos(m theta)), got {value}"
            )
    value = int(value)
    if value < 1:
        raise _checks.ArgumentError(f"margin must be an integer >= 1, got {value}")
    return value


def _scale(value) -> float:
    return _checks.check_positive("scale", value, allow_none=False)


def _gradient(value: str) -> bool:
    return _checks.check_choice("gradient", value, GRADIENTS) == "straight_through"


def _centers(value) -> int:
    value = _checks.check_int("centers", value)
    if value < 1:
        raise _checks.ArgumentError(f"centers must be >= 1, got {value}")
    return value


def _arcface(scale=64.0, margin=0.5, easy_margin=False, gradient="exact", centers=1):
    return MarginSpec("arcface", _scale(scale), m2=_in_range("margin", margin, 0.0, math.pi),
                      easy_margin=_checks.check_bool("easy_margin", easy_margin),
                      straight_through=_gradient(gradient), centers=_centers(centers))


def _cosface(scale=64.0, margin=0.35):
    return MarginSpec("cosface", _scale(scale), m3=_in_range("margin", margin, 0.0, 2.0))


def _multiplicative(kind):
    def spec(margin=4, scale=1.0, annealing=0.0):
        return MarginSpec(kind, _scale(scale), m1=float(_integer_margin(margin)),
                          annealing=_checks.check_non_negative("annealing", annealing))
    return spec


def _combined(scale=64.0, m1=1.0, m2=0.5, m3=0.0):
    return MarginSpec("combined", _scale(scale), m1=_in_range("m1", m1, 1.0, math.inf),
                      m2=_in_range("m2", m2, 0.0, math.pi), m3=_in_range("m3", m3, 0.0, 2.0))


def _subcenter(centers=3, scale=64.0, margin=0.5, easy_margin=False, gradient="exact"):
    return _arcface(scale, margin, easy_margin, gradient, centers)


#: head name -> builder of its :class:`~crossent.kernels.margin_spec.MarginSpec` from keyword arguments
HEADS = {
    "arcface": _arcface,
    "cosface": _cosface,
    "sphereface": _multiplicative("sphereface"),
    "lsoftmax": _multiplicative("lsoftmax"),
    "combined": _combined,
    "subcenter_arcface": _subcenter,
}


def margin_spec(head: str, **params) -> MarginSpec:
    """The validated spec of ``head`` (a key of :data:`HEADS`) with its keyword arguments."""
    _checks.check_choice("head", head, tuple(HEADS))
    try:
        return HEADS[head](**params)
    except TypeError as exc:
        if isinstance(exc, _checks.ArgumentTypeError):
            raise
        raise _checks.ArgumentTypeError(f"{head}: {exc}") from None


# ------------------------------------------------------------------------ validation


def _check_inputs(embeddings, weight, centers: int) -> int:
    """Shapes, dtypes and devices; returns the number of classes."""
    _checks.check_matrix("embeddings", embeddings, "(N, embedding_dim)")
    _checks.check_matrix("weight", weight, "(num_classes * centers, embedding_dim)")
    _checks.check_same_features("embeddings", embeddings, "weight", weight,
                                dim="last dimension (embedding_dim)")
    if weight.shape[0] == 0 or weight.shape[0] % centers:
        raise _checks.ArgumentError(
            f"weight must have num_classes * centers rows (centers={centers}), got {weight.shape[0]} rows")
    return weight.shape[0] // centers


def _check_target(target, n: int, num_classes: int, ignore_index: int, device) -> torch.Tensor:
    return _checks.check_class_index_target(
        target, (n,), num_classes, ignore_index, device,
        shape_hint=" (one class index per embedding)")


# ------------------------------------------------------------------------ the fused loss


def margin_plan(spec: MarginSpec, embeddings: torch.Tensor, num_classes: int, reduction: str,
                need_x: bool, memory_budget=None, token_chunk_size=None, vocab_chunk_size=None):
    """Tile plan of a margin loss over ``embeddings``' rows and ``num_classes`` classes
    (:func:`crossent.core.tiles.plan_tiles`, whole rows first): budget ``"margin"`` of
    :data:`crossent.core.tiles.BUDGETS` for scalar reductions, ``"linear_recompute"`` for
    ``reduction='none'`` (its backward recomputes the tiles, as the linear path's does);
    the centre tile of sub-centre heads counts as extra buffers, ``dx``'s accumulator as
    ``D`` floats per row when ``need_x``."""
    return plan_tiles(embeddings.shape[0], num_classes,
                      kind="linear_recompute" if reduction == "none" else "margin",
                      device=embeddings.device,
                      buffers=1 + margin_scores.extra_tile_buffers(spec.centers),
                      memory_budget=memory_budget, tile_rows=token_chunk_size,
                      tile_cols=vocab_chunk_size,
                      accumulator_width=embeddings.shape[1] if need_x else 0)


def _fused_loss(spec: MarginSpec, embeddings, weight, target, *, reduction="mean",
                ignore_index=-100, label_smoothing=0.0, all_ignored="nan", memory_budget=None,
                token_chunk_size=None, vocab_chunk_size=None, backend="auto"):
    _checks.check_no_transform(
        f"the fused margin loss ({spec.kind})",
        "crossent.cross_entropy(crossent.margin_logits(embeddings, weight, target, head=...), "
        "target)")
    reduction = _checks.check_reduction(reduction)
    all_ignored = _checks.check_choice("all_ignored", all_ignored, ALL_IGNORED_CHOICES)
    num_classes = _check_inputs(embeddings, weight, spec.centers)
    ignore_index = _checks.check_int("ignore_index", ignore_index)
    label_smoothing = _checks.check_unit_interval("label_smoothing", label_smoothing)
    index = _check_target(target, embeddings.shape[0], num_classes, ignore_index, embeddings.device)
    backend = resolve_backend(backend, embeddings.device)
    grad_on = torch.is_grad_enabled()
    need_x = grad_on and embeddings.requires_grad
    need_w = grad_on and weight.requires_grad
    plan = margin_plan(spec, embeddings, num_classes, reduction, need_x, memory_budget,
                       token_chunk_size, vocab_chunk_size)
    out = linear_ce_op(
        embeddings, weight, None, index, None, None, ignore_index, label_smoothing, reduction,
        0.0, None, 1.0, all_ignored, plan.rows, plan.cols, backend, False, need_x, need_w, False,
        False, margin=spec.kind, margin_args=spec.to_args(),
    )
    return out[0]


def arcface_loss(embeddings, weight, target, *, scale=64.0, margin=0.5, easy_margin=False,
                 gradient="exact", **kwargs):
    """ArcFace: cross-entropy with an additive angular margin on the target class.

    ::

        z_ic = s cos theta_ic,    z_iy = s cos(theta_iy + m)

    Past ``theta > pi - m`` the target logit continues as ``s (cos theta - m sin m)``
    (InsightFace's classic code, pytorch-metric-learning). ``easy_margin=True`` applies the
    margin only where ``cos theta > 0``. ``gradient='straight_through'`` keeps the forward
    and backpropagates as if the target logit were ``s cos theta`` (InsightFace's current
    arcface_torch, which takes ``acos`` under ``no_grad``; its forward has no continuation
    past ``pi - m``, so values agree for ``theta <= pi - m``).

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        scale: ``s``.
        margin: ``m`` in radians, in ``[0, pi)``.
        easy_margin: apply the margin only where ``cos theta > 0``.
        gradient: ``'exact'`` or ``'straight_through'``.
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
        >>> theta = cos.gather(1, y[:, None]).acos()
        >>> z = 16.0 * cos.scatter(1, y[:, None], torch.cos(theta + 0.3))
        >>> torch.allclose(ce.arcface_loss(x, W, y, scale=16.0, margin=0.3), F.cross_entropy(z, y))
        True

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", 2019.
    """
    return _fused_loss(_arcface(scale, margin, easy_margin, gradient), embeddings, weight,
                       target, **kwargs)


def cosface_loss(embeddings, weight, target, *, scale=64.0, margin=0.35, **kwargs):
    """CosFace / AM-Softmax: cross-entropy with an additive cosine margin on the target class.

    ::

        z_ic = s cos theta_ic,    z_iy = s (cos theta_iy - m)

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        scale: ``s``.
        margin: ``m`` in ``[0, 2)``.
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
        >>> z = 16.0 * (cos - 0.3 * F.one_hot(y, 10))
        >>> torch.allclose(ce.cosface_loss(x, W, y, scale=16.0, margin=0.3), F.cross_entropy(z, y))
        True

    References:
        Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", 2018.
        Wang et al., "Additive Margin Softmax for Face Verification", 2018.
    """
    return _fused_loss(_cosface(scale, margin), embeddings, weight, target, **kwargs)


def sphereface_loss(embeddings, weight, target, *, margin=4, scale=1.0, annealing=0.0, **kwargs):
    """SphereFace / A-Softmax: normalised class weights, a multiplicative angular margin.

    ::

        z_ic = s ||x_i|| cos theta_ic,    z_iy = s ||x_i|| psi(theta_iy)
        psi(theta) = (-1)^k cos(m theta) - 2k,    theta in [k pi/m, (k+1) pi/m]

    With annealing ``lambda`` the target logit becomes
    ``s ||x|| (lambda cos theta + psi) / (1 + lambda)`` (see :func:`anneal_lambda`).

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        margin: the integer ``m >= 1``.
        scale: ``s``.
        annealing: the paper's ``lambda`` (0: the full margin).
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
        >>> theta = cos.gather(1, y[:, None]).acos()
        >>> k = torch.floor(theta * 2 / torch.pi)
        >>> psi = (-1) ** k * torch.cos(2 * theta) - 2 * k
        >>> norm = x.norm(dim=1, keepdim=True)
        >>> z = (norm * cos).scatter(1, y[:, None], norm * psi)
        >>> torch.allclose(ce.sphereface_loss(x, W, y, margin=2), F.cross_entropy(z, y))
        True

    References:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", 2017.
    """
    return _fused_loss(HEADS["sphereface"](margin, scale, annealing), embeddings, weight,
                       target, **kwargs)


def large_margin_softmax_loss(embeddings, weight, target, *, margin=4, scale=1.0, annealing=0.0,
                              **kwargs):
    """L-Softmax: a multiplicative angular margin on unnormalised logits.

    ::

        z_ic = s ||W_c|| ||x_i|| cos theta_ic = s W_c . x_i
        z_iy = s ||W_y|| ||x_i|| psi(theta_iy),    psi = (-1)^k cos(m theta) - 2k

    The method trains only with its annealing ``lambda`` (``annealing``; the target logit
    becomes ``s ||W_y|| ||x|| (lambda cos theta + psi) / (1 + lambda)``), decayed by a
    schedule such as :func:`anneal_lambda`.

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        margin: the integer ``m >= 1``.
        scale: ``s``.
        annealing: the paper's ``lambda`` (0: the full margin).
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
        >>> theta = cos.gather(1, y[:, None]).acos()
        >>> k = torch.floor(theta * 2 / torch.pi)
        >>> psi = (-1) ** k * torch.cos(2 * theta) - 2 * k
        >>> rho = x.norm(dim=1) * W.norm(dim=1)[y]
        >>> z = (x @ W.T).scatter(1, y[:, None], rho[:, None] * psi)
        >>> torch.allclose(ce.large_margin_softmax_loss(x, W, y, margin=2), F.cross_entropy(z, y))
        True

    References:
        Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", 2016.
    """
    return _fused_loss(HEADS["lsoftmax"](margin, scale, annealing), embeddings, weight,
                       target, **kwargs)


def combined_margin_loss(embeddings, weight, target, *, scale=64.0, m1=1.0, m2=0.5, m3=0.0,
                         **kwargs):
    """The combined margin of InsightFace (SphereFace, ArcFace and CosFace margins at once).

    ::

        z_ic = s cos theta_ic,    z_iy = s (cos(m1 theta_iy + m2) - m3)

    Past ``theta* = (pi - m2) / m1``, where ``m1 theta + m2`` reaches pi, the target logit
    continues as ``s (cos theta - cos theta* - 1 - m3)``: continuous and decreasing in
    theta (a CosFace margin equal to the penalty at ``theta*``). ``m1=1, m2=0`` is CosFace;
    ``m1=1, m3=0`` is ArcFace up to ``theta = pi - m2``.

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        scale: ``s``.
        m1: multiplicative angular margin, ``>= 1``.
        m2: additive angular margin, in ``[0, pi)``.
        m3: additive cosine margin, in ``[0, 2)``.
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = F.normalize(x, dim=1) @ F.normalize(W, dim=1).T
        >>> theta = cos.gather(1, y[:, None]).acos()
        >>> z = 16.0 * cos.scatter(1, y[:, None], torch.cos(theta + 0.3) - 0.1)
        >>> loss = ce.combined_margin_loss(x, W, y, scale=16.0, m1=1.0, m2=0.3, m3=0.1)
        >>> torch.allclose(loss, F.cross_entropy(z, y))
        True

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", 2019
        (sec. 3.3, the combined margin); InsightFace, ``CombinedMarginLoss``.
    """
    return _fused_loss(_combined(scale, m1, m2, m3), embeddings, weight, target, **kwargs)


def subcenter_arcface_loss(embeddings, weight, target, *, centers=3, scale=64.0, margin=0.5,
                           easy_margin=False, gradient="exact", **kwargs):
    """Sub-centre ArcFace: ArcFace on each class's closest of ``K`` centres.

    ::

        cos theta_ic = max_k cos(x_i, W_{c*K + k}),    then ArcFace as :func:`arcface_loss`

    ``weight`` is ``(C*K, D)`` with row ``c*K + k`` the centre ``k`` of class ``c``. The
    gradient of a class logit goes to its arg-max centre.

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``nn.Linear``'s layout).
        target: int64 class indices.
        centers: ``K``, the centres per class.
        scale, margin, easy_margin, gradient: as :func:`arcface_loss`.
        reduction, ignore_index, label_smoothing: as :func:`crossent.cross_entropy`
            (label smoothing spreads over the margin-adjusted logits).
        memory_budget, token_chunk_size, vocab_chunk_size, backend: the tiling controls of
            :func:`crossent.linear_cross_entropy` (``memory_budget`` defaults to
            :data:`DEFAULT_MEMORY_BUDGET`; margin heads always run on the PyTorch backend).
    Shape:
        embeddings ``(N, D)``, weight ``(C*K, D)``, target ``(N,)``; the output a scalar, or
        ``(N,)`` for ``'none'``.
    Returns:
        The loss, float32 for half inputs. Zero-norm embeddings (on rows that are not
        ignored) and zero-norm class weights raise :class:`crossent.ArgumentError`.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(30, 8), torch.tensor([1, 0, 9, 4])
        >>> cos = (F.normalize(x, dim=1) @ F.normalize(W, dim=1).T).view(4, 10, 3).amax(2)
        >>> theta = cos.gather(1, y[:, None]).acos()
        >>> z = 16.0 * cos.scatter(1, y[:, None], torch.cos(theta + 0.3))
        >>> loss = ce.subcenter_arcface_loss(x, W, y, centers=3, scale=16.0, margin=0.3)
        >>> torch.allclose(loss, F.cross_entropy(z, y))
        True

    References:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web
        Faces", 2020.
    """
    return _fused_loss(_subcenter(centers, scale, margin, easy_margin, gradient), embeddings,
                       weight, target, **kwargs)


# ------------------------------------------------------------------- explicit logits


class _Phi(torch.autograd.Function):
    """``phi(c)`` with the slope of :meth:`MarginSpec.phi` as its derivative.

    Asked for a graph of the gradient (``create_graph=True``), the slope is recomputed
    from ``c`` with differentiable operations, so that double backward includes
    ``d slope / dc`` (a saved slope would be a constant and drop that term silently)."""

    @staticmethod
    def forward(ctx, c, spec):
        value, slope = spec.phi(c)
        ctx.save_for_backward(c, slope)
        ctx.spec = spec
        return value

    @staticmethod
    def backward(ctx, grad):
        c, slope = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            _, slope = ctx.spec.phi(c)
        return grad * slope, None


class _PhiTransform(torch.autograd.Function):
    """:class:`_Phi` for ``torch.func`` transforms and forward-mode AD (``setup_context``,
    a generated vmap rule, ``jvp``); only under them, as Dynamo cannot trace a custom
    ``jvp``. Returns ``(phi, slope)``, the slope non-differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(c, spec):
        return spec.phi(c)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, slope = output
        ctx.mark_non_differentiable(slope)
        ctx.save_for_backward(slope)
        ctx.save_for_forward(slope)

    @staticmethod
    def backward(ctx, grad, _grad_slope):
        (slope,) = ctx.saved_tensors
        return grad * slope, None

    @staticmethod
    def jvp(ctx, tangent, _spec):
        (slope,) = ctx.saved_tensors
        return tangent * slope, None


def margin_logits(embeddings, weight, target=None, *, head: str = "arcface", ignore_index=-100,
                  **params) -> torch.Tensor:
    """The margin-adjusted ``(N, C)`` logits of a margin head, formed explicitly.

    ::

        z_ic = s * rho_ic * cos theta_ic,    z_iy = s * rho_iy * phi(cos theta_iy)

    with ``rho`` the head's magnitude (1, ``||x||`` or ``||x|| ||W_c||``) and ``phi`` its
    margin function. Without ``target`` (or on rows equal to ``ignore_index``) no margin:
    the evaluation logits ``s * rho * cos theta``.

    Differentiable with plain autograd (and under ``torch.func`` transforms); it forms ``N x C`` logits (and normalised copies of
    the inputs), so it is for plots, evaluation and small problems. ``cross_entropy`` of
    these logits equals the head's fused loss.

    Args:
        embeddings: the features ``x``.
        weight: the class weights ``W`` (``(C*K, D)`` for sub-centre heads).
        target: optional int64 class indices (``None``: no margin anywhere).
        head: a key of :data:`HEADS` (``'arcface'``, ``'cosface'``, ``'sphereface'``,
            ``'lsoftmax'``, ``'combined'``, ``'subcenter_arcface'``).
        ignore_index: target value whose rows get no margin.
        **params: the head's keyword arguments (``scale``, ``margin``, ...).
    Shape:
        embeddings ``(N, D)``, weight ``(C, D)``, target ``(N,)``; the output ``(N, C)``.
    Returns:
        The logits, differentiable with plain autograd.
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> z = ce.margin_logits(x, W, y, head="arcface", scale=16.0, margin=0.3)
        >>> z.shape
        torch.Size([4, 10])
        >>> torch.allclose(F.cross_entropy(z, y), ce.arcface_loss(x, W, y, scale=16.0, margin=0.3))
        True

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", 2019.
    """
    spec = margin_spec(head, **params)
    num_classes = _check_inputs(embeddings, weight, spec.centers)
    nx = torch.linalg.vector_norm(embeddings, dim=1)
    nw = torch.linalg.vector_norm(weight, dim=1)
    valid = torch.ones(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
    if target is not None:
        ignore_index = _checks.check_int("ignore_index", ignore_index)
        index = _check_target(target, embeddings.shape[0], num_classes, ignore_index,
                              embeddings.device)
        valid = index != ignore_index
    margin_scores._check_nonzero("embeddings", nx.detach(), valid)
    margin_scores._check_nonzero("weight", nw.detach())
    cos = (embeddings @ weight.T) / (nx.unsqueeze(1) * nw.unsqueeze(0))
    k = spec.centers
    if k > 1:
        cos = cos.view(-1, num_classes, k).amax(2)
    rho = torch.ones_like(cos)
    if not spec.normalize_x:
        rho = rho * nx.unsqueeze(1)
    if not spec.normalize_w:  # L-Softmax (one centre)
        rho = rho * nw.unsqueeze(0)
    logits = spec.scale * rho * cos
    if target is None:
        return logits
    safe = torch.where(valid, index, torch.zeros_like(index)).unsqueeze(1)
    c = cos.gather(1, safe).squeeze(1).clamp(-1.0, 1.0)
    phi = _PhiTransform.apply(c, spec)[0] if _checks.functorch_active() else _Phi.apply(c, spec)
    z_t = spec.scale * rho.gather(1, safe).squeeze(1) * phi
    z_t = torch.where(valid, z_t, logits.gather(1, safe).squeeze(1))
    return logits.scatter(1, safe, z_t.unsqueeze(1))
