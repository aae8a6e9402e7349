"""The float64 oracle of the test suite: the losses written with plain PyTorch on full logits.

Every expected value of a cross-entropy-shaped loss comes from here (the contrastive
formulas are in :mod:`contrastive_reference`, the margin heads' paper formulas in
``test_margin.py``). Nothing here calls crossent: the definitions are PyTorch's own
``F.cross_entropy`` on materialised logits plus the extras written out::

    z      = softcap * tanh(logit_scale * logits / softcap)      (no cap: logit_scale * logits)
    loss_i = F.cross_entropy(z, target)_i + z_loss * logsumexp(z_i)^2 * [row i counts]

reduced as PyTorch reduces: 'mean' over rows for probability targets, divided by
``sum_i w[y_i]`` over the non-ignored rows for class indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def transform(z, *, logit_scale=1.0, softcap=None):
    """``softcap(logit_scale * z)``."""
    z = z * logit_scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z


def cross_entropy(logits, target, *, weight=None, reduction="mean", ignore_index=-100,
                  label_smoothing=0.0, z_loss=0.0, softcap=None, logit_scale=1.0,
                  all_ignored="nan", float64=True):
    """Cross-entropy with crossent's extras on full logits (classes on dim 1, or dim 0 for a
    1-D input); computed in float64 unless ``float64=False`` (then in the inputs' dtype)."""
    if float64:
        logits = logits.double()
        weight = None if weight is None else weight.double()
        target = target.double() if target.is_floating_point() else target
    ignore_index = -100 if ignore_index is None else ignore_index
    c_dim = 0 if logits.dim() == 1 else 1
    z = transform(logits, logit_scale=logit_scale, softcap=softcap)
    rows = F.cross_entropy(z, target, weight=weight, ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none")
    lse = torch.logsumexp(z, c_dim)
    if target.is_floating_point():
        valid = torch.ones_like(lse, dtype=torch.bool)
        denominator = torch.tensor(float(lse.numel()), dtype=lse.dtype)
    else:
        valid = target != ignore_index
        w_y = weight[target.clamp(min=0)] if weight is not None else torch.ones_like(lse)
        denominator = (w_y * valid).sum()
    if z_loss:
        rows = rows + z_loss * torch.where(valid, lse.square(), torch.zeros_like(lse))
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    if all_ignored == "zero" and float(denominator) == 0:
        return (z * 0).sum()  # crossent's documented choice: 0 and a zero gradient
    return rows.sum() / denominator


def linear_cross_entropy(x, w, b, target, **options):
    """:func:`cross_entropy` of ``F.linear(x, w, b)`` (full logits)."""
    if options.get("float64", True):
        x, w = x.double(), w.double()
        b = None if b is None else b.double()
    return cross_entropy(F.linear(x, w, b), target, **options)


def statistics(logits, *, logit_scale=1.0, softcap=None):
    """Per-row ``(logsumexp, entropy, argmax)`` of the transformed logits (no gradient)."""
    c_dim = 0 if logits.dim() == 1 else 1
    z = transform(logits, logit_scale=logit_scale, softcap=softcap)
    logp = torch.log_softmax(z, c_dim)
    return (torch.logsumexp(z, c_dim).detach(), -(logp.exp() * logp).sum(c_dim).detach(),
            z.argmax(c_dim))


def token_log_probs(logits, target, temperature=1.0, ignore_index=-100):
    """float64 ``log p[target]`` and entropy of ``softmax(logits / temperature)`` via
    ``torch.log_softmax``; 0 at ignored positions."""
    log_p = torch.log_softmax(logits.double() / temperature, -1)
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target))
    lp = log_p.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    ent = -(log_p.exp() * log_p).sum(-1)
    zero = torch.zeros((), dtype=torch.float64)
    return torch.where(valid, lp, zero), torch.where(valid, ent, zero)
