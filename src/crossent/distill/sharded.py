"""``linear_distillation_loss(group=...)``: both heads' classes sharded across ranks.

The layout of :mod:`crossent.core.sharded` (Megatron-LM's vocabulary parallelism): every
rank holds the same tokens (``input``, ``teacher_input``, ``target``, a top-k teacher with
*global* class indices) and a contiguous slice of the classes of both heads, in rank order
(``linear_weight``, ``teacher_weight`` and the biases; the slices may differ in size).

The passes of :mod:`crossent.kernels.two_heads` run over the local classes with the
``(N,)`` results merged in between, never logits: the log-sum-exps of each head by
:func:`crossent.core.collectives.merge_row_stats` (the exact merge of ``core.stats``,
the same bits on every rank), the gathered logits (each global class lives on one rank)
summed with them; for a dense teacher then the local parts of ``D_i`` and ``S_i`` summed
(one all-reduce). The gradient pass recomputes the local tiles against those global
values: the weight and bias get their slice of the global gradient, and ``input``, which
enters through :func:`crossent.core.collectives.replicated_input`, the sum of every
rank's part (the tensor-parallel convention). The loss is the whole problem's, the same on
every rank. Any local argument error, or ranks that disagree on the options or shapes,
raise the same error on every rank.
"""

from __future__ import annotations

import dataclasses

import torch

from ..core import checks as _checks
from ..core import collectives as D
from ..core import stats as _stats
from ..core.sharded import Shards, agree, agreement_fields
from ..kernels import two_heads as _kernel
from . import engine

_CONTEXT = "crossent.linear_distillation_loss(group=...)"


def _as_state(lse: torch.Tensor) -> _stats.RowStats:
    """A part known by its log-sum-exp alone, as a merge state."""
    zero = torch.zeros_like(lse)
    finite = lse > -torch.inf
    return _stats.state_from_lse(torch.where(finite, lse, zero),
                                 torch.where(finite, zero, -torch.inf), zero)


@dataclasses.dataclass
class Hooks:
    """The engine's passes with the cross-rank merges between them (see the module)."""

    group: object
    shards: Shards

    def _merge(self, local: _kernel.HeadStats) -> _kernel.HeadStats:
        sums = [] if local.gathered is None else [local.gathered]
        merged, totals = D.merge_row_stats(_as_state(local.lse), self.group, sums=sums)
        out = {"lse": _stats.logsumexp(merged), "gathered": totals[0] if sums else None}
        for name in ("lse_raw", "teacher_lse"):
            part = getattr(local, name)
            if part is not None:
                out[name] = _stats.logsumexp(D.merge_row_stats(_as_state(part), self.group)[0])
        return local._replace(**out)

    def run(self, p, o, st=None, coefs=None, need=(True, True, True)):
        p = dataclasses.replace(p, col_offset=self.shards.offset)
        if st is None:
            st = self._merge(_kernel.stats(p, o.plan))
            if p.kind is not None and p.teacher_x is not None:
                part = _kernel.divergence(p, o.plan, st)
                both = D.all_reduce(torch.stack([part.div, part.score]), self.group)
                st = st._replace(div=both[0], score=both[1])
        if coefs is None:
            return st, None, None, None
        _, gx, gw, gb = _kernel.run(p, o.plan, st=st, coefs=coefs, need_x=need[0],
                                    need_w=need[1], need_b=need[2])
        return st, gx, gw, gb


def linear_distillation_loss(validate, input, linear_weight, linear_bias, target, teacher_input,
                             teacher_weight, teacher_bias, topk_indices, topk_log_probs, group):
    """The class-sharded loss; ``validate(bounds=False)`` runs the front's local checks
    (what it raises, every rank raises)."""
    a, error, same = None, None, {}
    try:
        a = validate(bounds=False)
        o = a.options
        same = agreement_fields(
            rows=int(input.shape[0]), hidden=int(input.shape[1]), dtype=input.dtype,
            device_type=input.device.type, divergence=o.kind, beta=o.beta, tail=o.tail,
            temperature=o.temperature, alpha=o.alpha, reduction=o.reduction,
            ignore_index=a.ignore_index, target=target is not None, bias=linear_bias is not None,
            teacher="top-k" if a.topk else "dense",
            teacher_hidden=None if a.topk else int(teacher_input.shape[1]),
            teacher_bias=teacher_bias is not None,
            k=int(topk_indices.shape[1]) if a.topk else None,
            input_grad=bool(torch.is_grad_enabled() and input.requires_grad),
        )
    except D.LOCAL_ERRORS as exc:
        error = exc
    shards = agree(_CONTEXT, group, same, linear_weight.shape[0] if a else None, error)
    indices = None
    if a.target is not None:
        D.check_replicated(_CONTEXT, "target", a.target, group)
        _checks.check_index_bounds(a.target, shards.total, a.ignore_index)
    if a.topk:
        D.check_replicated(_CONTEXT, "teacher_topk_indices", topk_indices.long(), group)
        indices = _checks.check_topk_teacher(topk_indices, topk_log_probs, input.shape[0],
                                             shards.total, input.device)
    o = dataclasses.replace(a.options, hooks=Hooks(group, shards))
    x = D.replicated_input(input, group)
    if a.topk:
        return engine.topk_loss(x, linear_weight, linear_bias, indices, topk_log_probs,
                                a.target, a.valid, o)
    return engine.dense_loss(x, linear_weight, linear_bias, teacher_input, teacher_weight,
                             teacher_bias, a.target, a.valid, o)
