"""The distillation losses in float64, written out with explicit probabilities: the oracle
of crossent.distillation_loss and crossent.linear_distillation_loss (values; gradients by
autograd through it)."""

from __future__ import annotations

import torch

IGNORE = -100


def row_divergence(p, q, divergence, beta):
    """float64 divergence per row from probabilities (0 log 0 = 0)."""
    def kl(a, b):
        return torch.where(a > 0, a * (a.clamp_min(1e-300).log() - b.log()), 0.0).sum(-1)
    if divergence == "jsd" and beta == 0.0:
        divergence = "forward_kl"
    if divergence == "jsd" and beta == 1.0:
        divergence = "reverse_kl"
    if divergence == "forward_kl":
        return kl(q, p)
    if divergence == "reverse_kl":
        return kl(p, q)
    m = beta * q + (1 - beta) * p
    return beta * kl(q, m) + (1 - beta) * kl(p, m)


def reference(s, t, y, *, idx=None, lq=None, divergence="forward_kl", beta=0.5, tail="bucket",
               temperature=1.0, alpha=0.5, reduction="batchmean"):
    p = torch.softmax(s.double() / temperature, 1)
    if idx is None:
        q = torch.softmax(t.double() / temperature, 1)
    else:
        pk, qk = p.gather(1, idx), lq.double().exp()
        if tail == "bucket":
            p = torch.cat([pk, 1 - pk.sum(1, keepdim=True)], 1)
            q = torch.cat([qk, (1 - qk.sum(1, keepdim=True)).clamp_min(0)], 1)
        else:
            p, q = pk / pk.sum(1, keepdim=True), qk / qk.sum(1, keepdim=True)
    soft = temperature**2 * row_divergence(p, q, divergence, beta)
    if y is None:
        rows = soft
        count = s.shape[0]
    else:
        valid = y != IGNORE
        ce_rows = -torch.log_softmax(s.double(), 1).gather(1, y.clamp_min(0)[:, None])[:, 0]
        rows = torch.where(valid, alpha * soft + (1 - alpha) * ce_rows, 0.0)
        count = valid.sum()
    if reduction == "none":
        return rows
    return rows.sum() if reduction == "sum" else rows.sum() / count
