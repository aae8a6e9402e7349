"""The sampled softmax of two-tower retrieval, on the contrastive engine.

Row ``r`` (a query) scores every column ``c`` — the batch's items and a shared pool of
sampled negatives — with ``(q_r . c) / T - log Q(c)``, and its loss is the cross-entropy of
its own item. That is the in-batch softmax of :func:`crossent.info_nce` with a per-column
bias and id-masked columns, so it is one :class:`crossent.contrastive.problem.Problem`
(``col_bias``, ``row_ids`` / ``col_ids``) run by the contrastive engine: tiled, never
``B x (B + M)``, one pass forward and one backward; across ranks the gather and ring
designs of :mod:`crossent.contrastive.sharded`, the columns' bias and ids travelling with
their features.
"""

from __future__ import annotations

import torch

from ..contrastive.front import _check_pair, _finish, _global_sum, _run, _temperature
from ..contrastive.problem import Options, Problem
from ..core import checks as _checks
from ..core.reduction import accumulation_dtype

__all__ = ["sampled_softmax_loss"]

CONTEXT = "crossent.sampled_softmax_loss"


def sampled_softmax_loss(query: torch.Tensor, item: torch.Tensor, *,
                         item_ids: torch.Tensor | None = None,
                         item_log_q: torch.Tensor | None = None,
                         negatives: torch.Tensor | None = None,
                         negative_ids: torch.Tensor | None = None,
                         negative_log_q: torch.Tensor | None = None,
                         temperature=1.0, remove_accidental_hits: bool = True,
                         reduction: str = "mean", memory_budget: int | None = None,
                         group=None, design: str = "gather") -> torch.Tensor:
    """Sampled softmax with logQ correction: in-batch and mixed negatives, tiled.

    ::

        columns  c in [item ; negatives]                                 (B + M, D)
        z_rc   = <query_r, c> / temperature - log Q(c)     (-inf: accidental hits)
        loss_r = logsumexp_c z_rc - z_rr

    Row ``r``'s positive is ``item[r]``; every other item of the batch and every row of
    the shared pool ``negatives`` (mixed negative sampling) is a negative. ``log Q(c)`` is
    ``item_log_q`` / ``negative_log_q`` where given (0 otherwise), the log of the
    probability that ``c`` was sampled; it corrects the positive column too (Yi et al.).
    With ``remove_accidental_hits`` and ids given, a column carrying the id of row ``r``'s
    positive, other than the positive itself, is left out of row ``r``. The log sampling
    probabilities are an estimate of the sampler, not of the model: no gradient flows to
    them (they are detached); ``query``, ``item``, ``negatives`` and a tensor
    ``temperature`` receive gradients. The ``B x (B + M)`` scores are formed tile by tile
    (:mod:`crossent.kernels.similarity`), never whole.

    Across ranks (``group=``), every rank's items and pool are columns for every row (the
    ids are global); every rank returns the loss of the global batch ('mean', 'sum'), and
    after DDP averages the gradients they equal those of one process holding the global
    batch and all pools; local batch and pool sizes may differ. ``reduction='none'``
    returns this rank's rows.

    Args:
        query: the query tower's embeddings, used as given (normalise them first for
            cosine scores).
        item: the item tower's embeddings of each row's positive.
        item_ids: int64 ids of the items (for accidental hits).
        item_log_q: log sampling probability of each item (finite), e.g. from
            :class:`crossent.retrieval.FrequencyEstimator`.
        negatives: a pool of sampled negatives shared by every row.
        negative_ids: int64 ids of the pool (needed with ``item_ids`` while
            ``remove_accidental_hits``).
        negative_log_q: log sampling probability of each pool item (finite).
        temperature: a finite number > 0 or a one-element tensor holding one (learnable).
        remove_accidental_hits: leave out the columns sharing the row's positive id.
        reduction: ``'mean'`` (over the global batch), ``'sum'`` or ``'none'``.
        memory_budget: bytes of score tiles (default
            :data:`crossent.core.tiles.BUDGETS`; small budgets tile finely).
        group: a ``torch.distributed`` process group (``None``: one process).
        design: across ranks, ``'gather'`` (every rank's columns are all-gathered) or
            ``'ring'`` (they pass around a ring; memory per rank does not grow with the
            number of ranks), see :mod:`crossent.contrastive.sharded`.
    Shape:
        query and item ``(B, D)``, item_ids and item_log_q ``(B,)``, negatives ``(M, D)``,
        negative_ids and negative_log_q ``(M,)``; the output a scalar, or ``(B,)`` for
        ``reduction='none'``.
    Returns:
        The loss (float32 for half-precision embeddings).
    Example:
        >>> import torch, crossent as ce
        >>> import torch.nn.functional as F
        >>> _ = torch.manual_seed(0)
        >>> q, items, pool = torch.randn(4, 8), torch.randn(4, 8), torch.randn(3, 8)
        >>> log_q, pool_log_q = torch.log(torch.rand(4)), torch.log(torch.rand(3))
        >>> z = q @ torch.cat([items, pool]).T / 0.5 - torch.cat([log_q, pool_log_q])
        >>> loss = ce.sampled_softmax_loss(q, items, item_log_q=log_q, negatives=pool,
        ...                                negative_log_q=pool_log_q, temperature=0.5)
        >>> torch.allclose(loss, F.cross_entropy(z, torch.arange(4)))
        True

    References:
        Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
        Recommendations", RecSys 2019; Yang et al., "Mixed Negative Sampling for Learning
        Two-tower Neural Networks in Recommendations", WWW 2020; Bengio & Senécal,
        "Adaptive Importance Sampling to Accelerate Training of a Neural Probabilistic
        Language Model", 2008.
    """
    _checks.check_reduction(reduction)
    opts = Options(memory_budget=memory_budget, group=group, design=design)

    def build():
        _check_pair("query", query, "item", item, same_rows=True, opts=opts)
        keys, n, dev = item, query.shape[0], query.device
        m = 0
        if negatives is not None:
            _check_pair("query", query, "negatives", negatives, same_rows=False,
                        opts=Options(group=group))
            keys, m = torch.cat([item, negatives]), negatives.shape[0]
        else:
            for name, value in (("negative_ids", negative_ids), ("negative_log_q", negative_log_q)):
                if value is not None:
                    raise _checks.ArgumentError(f"{name} was given without negatives")
        t = _temperature(temperature, query)
        _checks.check_bool("remove_accidental_hits", remove_accidental_hits)
        row_ids = col_ids = None
        if item_ids is not None:
            _checks.check_id_vector("item_ids", item_ids, n, dev)
        if negative_ids is not None:
            _checks.check_id_vector("negative_ids", negative_ids, m, dev)
            if item_ids is None:
                raise _checks.ArgumentError(
                    "negative_ids was given without item_ids: accidental hits are found "
                    "by comparing them with each row's item id")
        if remove_accidental_hits and item_ids is not None:
            if m and negative_ids is None:
                raise _checks.ArgumentError(
                    f"negative_ids is None while item_ids is given: with "
                    f"remove_accidental_hits=True the {m} negatives need ids too (or pass "
                    f"remove_accidental_hits=False)")
            row_ids = item_ids
            col_ids = item_ids if negative_ids is None else torch.cat([item_ids, negative_ids])
        acc = accumulation_dtype(query.dtype)
        col_bias = None
        if item_log_q is not None or negative_log_q is not None:
            parts = []
            for name, log_q, k in (("item_log_q", item_log_q, n), ("negative_log_q", negative_log_q, m)):
                if log_q is not None:
                    _checks.check_finite_vector(name, log_q, k, dev)
                    parts.append(-log_q.detach().to(acc))
                else:
                    parts.append(torch.zeros(k, dtype=acc, device=dev))
            col_bias = torch.cat(parts)
        positive = torch.arange(n, device=dev)
        prob = Problem("softmax", query, keys, positive=positive, col_bias=col_bias,
                       row_ids=row_ids, col_ids=col_ids)
        return prob, 1.0 / t, None, {"temperature": t, "reduction": reduction}

    res = _run(CONTEXT, opts, build)
    rows = res.stats.row_agg - res.stats.row_dot
    if reduction == "none":
        return _finish(rows, query)
    total = _global_sum(rows.sum(), opts)
    if reduction == "mean":
        total = total / res.total_rows
    return _finish(total, query)
