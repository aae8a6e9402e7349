"""Softmax statistics of given logits, with an analytic, lean backward.

:func:`softmax_statistics` turns logits and a target into per-row tensors::

    shift_i       = max_c z_ic (0 for a row of -inf)     no gradient (a constant)
    lse_shifted_i = logsumexp_c(z_ic) - shift_i            differentiable
    dot_shifted_i = sum_c t_ic (z_ic - shift_i)            differentiable
    mass_i        = sum_c t_ic                  differentiable (w.r.t. probability targets)
    entropy_i                                   monitoring, or differentiable on request
    argmax_i                                    monitoring only (no gradient)

where ``z = softcap(logit_scale * input)`` (``softcap(x) = cap * tanh(x / cap)``,
Gemma 2; identity when ``cap`` is None) and ``t`` is the target distribution of
:mod:`crossent.core.targets`. Every loss is then ordinary arithmetic on these ``(n,)``
vectors (``loss = mass * lse - dot`` for cross-entropy), so autograd handles the loss
formulas while this function supplies the ``N x C`` part of the chain rule::

    dL/dz_ic = dL/dlse_i * softmax(z_i)_c + dL/ddot_i * t_ic

(the same for the shifted statistics: the shift is held constant), and, when the entropy
``H_i = -sum_c p_ic log p_ic`` is asked for with its gradient (``entropy_grad=True``),
``+ dL/dH_i * dH_i/dz_ic`` with ``dH_i/dz_ic = -p_ic (log p_ic + H_i)`` (differentiate
``H = lse - sum_c p_c z_c`` with ``dlse/dz_k = p_k`` and ``dp_c/dz_k = p_c (delta_ck - p_k)``:
``dH/dz_k = p_k - (p_k + p_k z_k - p_k sum_c p_c z_c) = -p_k (z_k - lse + H)``, and
``z_k - lse = log p_k``), with ``log p_ic = (z_ic - shift_i) - lse_shifted_i``
relative to the row max. The loss is carried
relative to the shift, ``mass * lse_shifted - dot_shifted``, a sum of non-negative terms:
``lse`` and ``dot`` themselves grow with the scores and their difference would lose
``ulp(lse)`` (:mod:`crossent.core.stats`). :attr:`SoftmaxStatistics.lse` and
:attr:`~SoftmaxStatistics.dot` give the absolute values where they are wanted.

The backward keeps only the caller's logits (and probability target) and the ``(n,)``
shift (with the entropy's gradient, the ``(n,)`` ``lse_shifted`` and ``entropy`` too): no
``N x C`` buffer is saved, unlike PyTorch's ``log_softmax`` output.
Work is done in row chunks in float32 (float64 for float64 inputs), so half inputs
never accumulate in half precision and temporaries stay bounded (chunks of the ``"rows"``
budget of :data:`crossent.core.tiles.BUDGETS`: :func:`crossent.core.tiles.row_chunks`).

Layout: input ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``; rows are
``input.movedim(1, -1).reshape(-1, C)`` and results come back in that row order
(``target.reshape(-1)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from . import stats as _stats
from .backward import refuse_double_backward
from .checks import functorch_active
from .reduction import accumulation_dtype
from .targets import ClassIndexTarget, ClassProbTarget
from .tiles import chunk_rows, row_chunks


def to_rows(x: torch.Tensor) -> torch.Tensor:
    """``(C,) -> (1, C)``; ``(N, C) -> (N, C)``; ``(N, C, *d) -> (N * prod(d), C)``."""
    if x.dim() == 1:
        return x.unsqueeze(0)
    if x.dim() == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of :func:`to_rows` for a tensor of the original ``shape``."""
    if len(shape) == 1:
        return rows.reshape(shape)
    if len(shape) == 2:
        return rows
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return rows.reshape(moved).movedim(-1, 1)


@dataclass(frozen=True)
class ScoreTransform:
    """``z = softcap(logit_scale * x)``, and the chain rule back through it."""

    logit_scale: float = 1.0
    softcap: float | None = None

    @property
    def identity(self) -> bool:
        return self.logit_scale == 1.0 and self.softcap is None

    def apply(self, x: torch.Tensor, dtype: torch.dtype,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """``z`` in ``dtype``: ``x`` itself when nothing is to be done, else written into
        ``out`` (a reusable buffer of at least ``x``'s rows) or a new tensor."""
        if self.identity and x.dtype == dtype:
            return x
        z = torch.empty(x.shape, dtype=dtype, device=x.device) if out is None else out[: x.shape[0]]
        z.copy_(x)
        if self.logit_scale != 1.0:
            z.mul_(self.logit_scale)
        if self.softcap is not None:
            z.div_(self.softcap).tanh_().mul_(self.softcap)
        return z

    def backward_(self, grad_z: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``dL/dx`` from ``dL/dz`` and the transformed scores ``z``, in place."""
        if self.softcap is not None:
            grad_z.mul_(1.0 - (z / self.softcap) ** 2)
        if self.logit_scale != 1.0:
            grad_z.mul_(self.logit_scale)
        return grad_z


class SoftmaxStatistics(NamedTuple):
    lse_shifted: torch.Tensor  # logsumexp - shift
    dot_shifted: torch.Tensor  # sum_c t_c (z_c - shift)
    mass: torch.Tensor
    entropy: torch.Tensor | None
    argmax: torch.Tensor | None
    shift: torch.Tensor  # the row max (0 where -inf), no gradient

    @property
    def lse(self) -> torch.Tensor:
        """The log-sum-exp itself (rounded to ``ulp(lse)``)."""
        return self.lse_shifted + self.shift

    @property
    def dot(self) -> torch.Tensor:
        """``sum_c t_c z_c`` itself (rounded to its magnitude)."""
        return self.dot_shifted + self.mass * self.shift


def _softmax_into(z: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``softmax(z, 1)``, written into ``out`` when given (PyTorch's fused kernel)."""
    if out is None:
        return torch.softmax(z, 1)
    return torch._softmax(z, 1, False, out=out)


def _chunk_buffer(rows: torch.Tensor, dtype: torch.dtype, needed: bool) -> torch.Tensor | None:
    """One reusable ``chunk x C`` buffer (allocating per chunk costs page faults)."""
    if not needed:
        return None
    return torch.empty(chunk_rows(*rows.shape, "rows", rows.device), rows.shape[1], dtype=dtype,
                       device=rows.device)


def _resolve_target(index_target: ClassIndexTarget | None, probs_rows, spec, dtype):
    """The index target as given, or the probability target built on the rows view."""
    if index_target is not None:
        return index_target
    return ClassProbTarget.build(
        probs_rows, weight=spec.weight, label_smoothing=spec.label_smoothing, dtype=dtype,
        num_classes=spec.num_classes,
    )


@dataclass(frozen=True)
class _ProbSpec:
    weight: torch.Tensor | None
    label_smoothing: float
    num_classes: int | None = None


class _SoftmaxStatisticsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, probs, index_target, prob_spec, transform, want_entropy, want_argmax,
                entropy_grad=False):
        rows = to_rows(input)
        num_rows, num_classes = rows.shape
        acc = accumulation_dtype(input.dtype)
        probs_rows = to_rows(probs) if probs is not None else None
        target = _resolve_target(index_target, probs_rows, prob_spec, acc)

        lse = torch.empty(num_rows, dtype=acc, device=input.device)
        dot = torch.empty_like(lse)
        shift = torch.empty_like(lse)
        entropy = torch.empty_like(lse) if want_entropy else lse.new_empty(0)
        argmax = torch.empty(num_rows if want_argmax else 0, dtype=torch.int64, device=input.device)
        copied = not (transform.identity and rows.dtype == acc)
        scores = _chunk_buffer(rows, acc, copied)
        plain = not (want_entropy or want_argmax)
        # The lse alone: softmax overwrites the float copy of the chunk when there is one
        # (half inputs, a transform), else it needs a scratch buffer (never the caller's).
        scratch = _chunk_buffer(rows, acc, plain and not copied)
        for start, end in row_chunks(*rows.shape, "rows", rows.device):
            z = transform.apply(rows[start:end], acc, out=scores)
            if plain:
                stats = _stats.row_stats_(z, target.rows(start, end),
                                          z if copied else scratch[: end - start])
            else:
                stats = _stats.tile_stats(
                    z, target.rows(start, end), entropy=want_entropy, argmax=want_argmax
                )
            lse[start:end] = _stats.shifted_logsumexp(stats)
            dot[start:end] = stats.dot
            shift[start:end] = _stats.reference(stats)
            if want_entropy:
                entropy[start:end] = _stats.entropy(stats)
            if want_argmax:
                argmax[start:end] = stats.argmax
        mass = target.mass.clone()

        entropy_grad = bool(entropy_grad and want_entropy)
        if entropy_grad:  # dH/dz = -p (log p + H), log p = (z - shift) - lse_shifted
            ctx.save_for_backward(input, probs, shift, lse, entropy)
        else:
            ctx.save_for_backward(input, probs, shift)
            ctx.mark_non_differentiable(entropy)
        ctx.entropy_grad = entropy_grad
        # an output not used downstream gets None, not zeros: no entropy term computed for
        # an entropy that is only logged (the backward reads None as 0 for every output)
        ctx.set_materialize_grads(False)
        ctx.index_target = index_target
        ctx.prob_spec = prob_spec
        ctx.transform = transform
        ctx.mark_non_differentiable(argmax, shift)
        return lse, dot, mass, entropy, argmax, shift

    @staticmethod
    def backward(ctx, grad_lse, grad_dot, grad_mass, grad_entropy, _grad_argmax, _grad_shift):
        refuse_double_backward(
            "crossent.cross_entropy (and focal_loss, poly1_cross_entropy and the other losses "
            "built on its softmax statistics)",
            "For a gradient of the gradient, use torch.nn.functional.cross_entropy / "
            "log_softmax on the logits.")
        input, probs, shift, *entropy_terms = ctx.saved_tensors
        need_input, need_probs = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        rows = to_rows(input)
        num_rows, num_classes = rows.shape
        acc = shift.dtype
        zeros = torch.zeros_like(shift)
        grad_lse = zeros if grad_lse is None else grad_lse.to(acc)
        grad_dot = zeros if grad_dot is None else grad_dot.to(acc)
        grad_mass = zeros if grad_mass is None else grad_mass.to(acc)
        if ctx.entropy_grad and grad_entropy is not None:
            lse_shifted, entropy = entropy_terms
            grad_entropy = grad_entropy.to(acc)
            # dL/dz_c = p_c (grad_lse - grad_H (z_c - offset)), log p_c + H = z_c - offset
            entropy_offset = shift + lse_shifted - entropy
        else:
            grad_entropy = None
        probs_rows = to_rows(probs) if probs is not None else None
        target = _resolve_target(ctx.index_target, probs_rows, ctx.prob_spec, acc)
        transform: ScoreTransform = ctx.transform

        grad_rows = torch.empty_like(rows, memory_format=torch.contiguous_format) if need_input else None
        grad_probs_rows = (
            torch.empty(probs_rows.shape, dtype=probs.dtype, device=probs.device) if need_probs else None
        )
        scores = _chunk_buffer(rows, acc, not (transform.identity and rows.dtype == acc))
        # Softmax goes straight into the gradient buffer when dtypes allow. Else (half
        # inputs) it is computed in float and cast into it once: in place over the float
        # copy of the chunk when nothing reads z afterwards (no transform, no probability
        # gradient), else into one more reusable float buffer.
        direct = need_input and grad_rows.dtype == acc
        in_place = need_input and not direct and transform.identity and not need_probs
        staging = _chunk_buffer(rows, acc, need_input and not (direct or in_place))
        for start, end in row_chunks(*rows.shape, "rows", rows.device):
            z = transform.apply(rows[start:end], acc, out=scores)
            if need_input:
                out = grad_rows[start:end] if direct else z if in_place else staging[: end - start]
                coef = None
                if grad_entropy is not None:  # before the softmax may overwrite z
                    coef = _entropy_coefficient(z, entropy_offset[start:end],
                                                grad_entropy[start:end], grad_lse[start:end])
                grad_z = _softmax_into(z, out)
                grad_z.mul_(grad_lse[start:end].unsqueeze(1) if coef is None else coef)
                target.rows(start, end).add_scaled_(grad_z, grad_dot[start:end])
                transform.backward_(grad_z, z)
                if not direct:
                    grad_rows[start:end].copy_(grad_z)
            if need_probs:
                grad_probs_rows[start:end] = target.rows(start, end).grad_probs(
                    z, grad_dot[start:end], grad_mass[start:end], shift=shift[start:end]
                )
        grad_input = from_rows(grad_rows, input.shape) if need_input else None
        grad_probs = from_rows(grad_probs_rows, probs.shape) if need_probs else None
        return grad_input, grad_probs, None, None, None, None, None, None


def _entropy_coefficient(z: torch.Tensor, offset: torch.Tensor, grad_entropy: torch.Tensor,
                         grad_lse: torch.Tensor) -> torch.Tensor:
    """``grad_lse - grad_H (z - offset)`` per element (``z - offset = log p + H``), the
    factor that multiplies ``p`` in the gradient; 0 where ``z = -inf`` (``p = 0``, whose
    ``p log p`` term is 0, not ``0 * inf``). One chunk-sized temporary."""
    coef = torch.sub(z, offset.unsqueeze(1))
    coef.mul_(grad_entropy.neg().unsqueeze(1)).add_(grad_lse.unsqueeze(1))
    return coef.masked_fill_(z == -torch.inf, 0.0)


def softmax_statistics(
    input: torch.Tensor,
    target: ClassIndexTarget | torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    transform: ScoreTransform = ScoreTransform(),
    entropy: bool = False,
    argmax: bool = False,
    num_classes: int | None = None,
    entropy_grad: bool = False,
) -> SoftmaxStatistics:
    """Per-row ``lse_shifted``, ``dot_shifted``, ``mass``, ``shift`` (and optionally
    ``entropy``, ``argmax``): see the module docstring.

    ``entropy_grad=True`` (with ``entropy=True``) makes the entropy differentiable
    (``dH/dz_c = -p_c (log p_c + H)``, through the score transform); otherwise it is a
    monitoring value without gradient.

    ``target`` is a built :class:`ClassIndexTarget` (rows order) or a probability
    tensor of the input's shape (then ``weight`` and ``label_smoothing`` apply to it, and
    ``num_classes``, when the input is a class shard, is the total class count).
    Arguments are assumed validated by the caller.

    Under ``torch.func`` transforms (``grad``, ``vmap``, ``jacrev``, ``jvp``, ...) and
    forward-mode AD the statistics come from plain differentiable PyTorch operations
    (:func:`_composite_statistics`), which every transform composes with; the lean
    autograd function (no ``N x C`` buffer saved) serves ordinary autograd.
    """
    if functorch_active():
        return _composite_statistics(input, target, weight, label_smoothing, transform,
                                     entropy, argmax, num_classes, entropy_grad)
    if isinstance(target, ClassIndexTarget):
        out = _SoftmaxStatisticsFunction.apply(
            input, None, target, None, transform, entropy, argmax, entropy_grad
        )
    else:
        spec = _ProbSpec(weight, label_smoothing, num_classes)
        out = _SoftmaxStatisticsFunction.apply(input, target, None, spec, transform, entropy, argmax,
                                               entropy_grad)
    lse, dot, mass, ent, best, shift = out
    return SoftmaxStatistics(lse, dot, mass, ent if entropy else None, best if argmax else None,
                             shift)


def _composite_statistics(input, target, weight, label_smoothing, transform: ScoreTransform,
                          entropy: bool, argmax: bool, num_classes,
                          entropy_grad: bool = False) -> SoftmaxStatistics:
    """:func:`softmax_statistics` in differentiable PyTorch operations, for ``torch.func``
    transforms and forward-mode AD (no data-dependent control flow; higher derivatives
    too). Memory as ``F.cross_entropy``: autograd saves the ``N x C`` scores."""
    rows = to_rows(input)
    acc = accumulation_dtype(input.dtype)
    z = rows.to(acc)
    if transform.logit_scale != 1.0:
        z = z * transform.logit_scale
    if transform.softcap is not None:
        z = torch.tanh(z / transform.softcap) * transform.softcap
    # relative to the row max (a constant: the loss is invariant to it), as the lean path
    m = z.detach().amax(1)
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    z = z - shift.unsqueeze(1)
    lse = torch.logsumexp(z, 1)
    if isinstance(target, ClassIndexTarget):
        dot, mass = target.dot(z), target.mass.clone()
    else:
        q = to_rows(target).to(acc)
        total = q.shape[1] if num_classes is None else int(num_classes)
        t = q * (1.0 - label_smoothing) + label_smoothing / total if label_smoothing else q
        if weight is not None:
            t = t * weight.to(acc)
        dot = (t * z).sum(1)
        mass = t.sum(1)
    ent = best = None
    if entropy:
        zd = z if entropy_grad else z.detach()
        p = torch.softmax(zd, 1)
        zero = torch.zeros((), dtype=acc, device=z.device)
        # z where p > 0 before the product: no 0 * -inf, in the value or in its gradient
        pz = p * torch.where(p > 0, zd, zero)
        ent = (lse if entropy_grad else lse.detach()) - pz.sum(1)
    if argmax:
        best = z.detach().argmax(1)
    return SoftmaxStatistics(lse, dot, mass, ent, best, shift)
