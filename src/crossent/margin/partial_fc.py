"""Partial FC across ranks: margin heads with the classes sharded and the batch gathered.

InsightFace's layout (An et al., "Partial FC: Training 10 Million Identities on a Single
Machine", 2021; "Killing Two Birds with One Stone", 2022): each of the ``W`` ranks of
``group`` holds its own batch ``x_r`` ``(N_r, D)`` with labels ``y_r`` (the ``N_r`` may
differ) and its own *class shard*: of ``C`` classes, shard ``r`` holds the contiguous
classes ``[o_r, o_r + C_r)`` with ``C_r = C // W`` plus one on the first ``C % W`` ranks
(:func:`shard_range`); the head's weight is that shard, ``(C_r * K, D)``.

One step, on every rank:

1. the ranks agree on the call (embedding size, dtype, ``C``, the head and its margins,
   options); a disagreement raises the same :class:`~crossent.ArgumentError` everywhere;
2. embeddings and labels are gathered into the global batch ``X`` ``(N, D)``,
   ``N = sum_r N_r``, gradients flowing back to their owners;
3. with ``sample_rate < 1``, the shard keeps ``max(int(sample_rate * C_r), 1, P_r)`` class
   centres: its ``P_r`` positives of the global batch and random others
   (:func:`crossent.partial_fc_sample`); the sampled classes of all ranks,
   in rank order, are the step's classes;
4. the margin logits ``X W_r^T`` (the target column with its margin) are seen tile by
   tile on the fused path; per-row statistics of the shards merge exactly across ranks
   (:func:`crossent.core.sharded.merge_shards`), so the value is the loss of the global
   batch over all (sampled) classes, the same on every rank.

Gradients. The shard's weight gets exactly its slice of the single-process weight
gradient (it is not replicated, nothing averages it); classes not sampled get zero.
Each rank forms its shard's part of ``dL/dX``; the gather's backward (a reduce-scatter)
sums the parts of each owner's rows, ``dL/dx_r``, and multiplies by ``W``
(:func:`crossent.distributed.scale_grad`), so that after DDP *averages* the encoder's
gradients over the ``W`` ranks they equal the single-process global-batch gradients.
The embeddings' own ``.grad`` is therefore ``W dL/dx_r`` (the data-parallel convention
of :mod:`crossent.distributed`).

Communication per step and rank: the agreement check (a few hundred bytes), the batch
sizes, an all-gather of ``N x D`` embeddings and ``N`` labels, one all-gather of
``4 N`` per-row statistics, with sampling one all-reduce of ``N + W`` int64 (the labels
in the sampled class list, and each rank's verdict on its sampled weights' norms), and in
the backward a reduce-scatter of ``N x D``. Never logits, never class weights.

Errors never hang: every argument (tile options and backend included) is checked before
the first collective and reported on every rank by the agreement check; a class weight
with a zero or non-finite norm is found before the agreement (without sampling, from the
norms the fused path needs anyway) or, with sampling, among the sampled rows and shared
through the label all-reduce. Not supported with ``group``: ``reduction='none'`` (the
rows would be the global batch's on every rank).

Weights. ``shard_rows(C, r, W, K)`` are the rows of a full ``(C K, D)`` weight that rank
``r`` holds; the head modules' ``load_global_weight`` / ``global_weight`` copy a full
weight in and gather it out (for checkpoints written by one process, or evaluation).
"""

from __future__ import annotations

import torch

from ..core import checks as _checks
from ..core import collectives as D
from ..core.reduction import accumulation_dtype
from ..core.sharded import Shards, agree, agreement_fields
from ..core.statistics import ScoreTransform
from ..core.targets import ClassIndexTarget
from ..kernels import margin_scores
from ..kernels.dispatch import resolve_backend
from ..kernels.margin_spec import MarginSpec
from ..linear.sharded import _LinearSpec, sharded_linear_cross_entropy
from .losses import _check_inputs, margin_plan

__all__ = ["shard_range", "shard_rows", "partial_fc_loss", "partial_fc_sample"]


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, end)`` of rank ``rank``'s classes, contiguous in rank order.

    ::

        C_r = C // W + (1 if r < C % W else 0),    start_r = sum_{k < r} C_k

    Args:
        num_classes: ``C``.
        rank: ``r``, in ``[0, W)``.
        world_size: ``W``.
    Returns:
        ``(start, end)``, two ints.
    Example:
        >>> from crossent import partial_fc
        >>> [partial_fc.shard_range(10, r, 3) for r in range(3)]
        [(0, 4), (4, 7), (7, 10)]

    References:
        An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021.
    """
    base, extra = divmod(int(num_classes), int(world_size))
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_rows(num_classes: int, rank: int, world_size: int, centers: int = 1) -> slice:
    """The rows of a full ``(num_classes * centers, D)`` weight that shard ``rank`` holds.

    ::

        shard_rows = slice(start * K, end * K),   (start, end) = shard_range(C, r, W)

    ``full[shard_rows(...)]`` is its ``head.weight``; class ``c``'s centres are rows
    ``c * centers ... c * centers + centers - 1``.

    Args:
        num_classes, rank, world_size: as :func:`shard_range`.
        centers: ``K``, the centres per class.
    Returns:
        A ``slice`` of rows.
    Example:
        >>> from crossent import partial_fc
        >>> partial_fc.shard_rows(10, 1, 3, centers=2)
        slice(8, 14, None)

    References:
        An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021.
    """
    start, end = shard_range(num_classes, rank, world_size)
    return slice(start * centers, end * centers)


def check_sample_rate(value) -> float:
    rate = _checks.check_number("sample_rate", value)
    if not 0.0 < rate <= 1.0:
        raise _checks.ArgumentError(f"sample_rate must be in (0, 1], got {value}")
    return rate


def partial_fc_sample(target: torch.Tensor, num_classes: int, sample_rate: float, *,
                      ignore_index: int = -100, generator: torch.Generator | None = None):
    """Partial FC's class sampling: every positive class plus random negatives, labels remapped.

    ::

        S = max(int(sample_rate * num_classes), 1, #positives)
        classes = sorted(positives + random others),   classes[remapped[i]] = target[i]

    At least one class, so that a small class shard without positives still takes part.

    Args:
        target: class indices.
        num_classes: ``C``.
        sample_rate: in ``(0, 1]``.
        ignore_index: target value left unchanged (and not a positive).
        generator: a ``torch.Generator`` for reproducible sampling (on the CPU).
    Shape:
        target ``(N,)``; classes ``(S,)``; remapped ``(N,)``.
    Returns:
        ``(classes, remapped_target)``: the sorted sampled class indices and ``target``
        re-indexed into them (``ignore_index`` rows unchanged).
    Example:
        >>> import torch, crossent as ce
        >>> y = torch.tensor([7, 2, 7, -100])
        >>> classes, remapped = ce.partial_fc_sample(y, 10, 0.5, generator=torch.Generator().manual_seed(0))
        >>> classes.numel(), bool(torch.isin(torch.tensor([2, 7]), classes).all())
        (5, True)
        >>> torch.equal(classes[remapped[:3]], y[:3]), remapped[3].item()
        (True, -100)

    References:
        An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021.
    """
    rate = check_sample_rate(sample_rate)
    valid = target != ignore_index
    positives = torch.unique(target[valid])
    num_sample = max(int(rate * num_classes), 1)
    if num_sample > positives.numel():
        score = torch.rand(num_classes, generator=generator, device="cpu").to(target.device)
        score[positives] = 2.0  # positives first
        classes = torch.topk(score, num_sample).indices.sort().values
    else:
        classes = positives
    remapped = torch.where(valid, torch.searchsorted(classes, target.clamp_min(0)), target)
    return classes, remapped


def _sample_shard(y: torch.Tensor, valid: torch.Tensor, start: int, end: int, rate: float,
                  generator):
    """This shard's sampled classes (global ids, sorted): its positives in ``y`` and
    random others, ``max(int(rate * C_r), 1, #positives)`` in all (never none: every
    shard takes part in the merge)."""
    mine = valid & (y >= start) & (y < end)
    local = torch.where(mine, y - start, torch.full_like(y, -1))
    classes, _ = partial_fc_sample(local, end - start, rate, ignore_index=-1, generator=generator)
    return classes + start


def _step_target(y, valid, ignore_index, shards: Shards, classes, start, end, group,
                 bad_class: int, context: str):
    """Labels in the step's class list: the sampled classes of every rank in rank order.
    Each rank knows the position of its own classes; one all-reduce shares them, and with
    them each rank's first sampled class whose weight has a zero or non-finite norm
    (``bad_class``, -1 if none), so that such a weight raises on every rank."""
    rank, world = shards.rank, len(shards.sizes)
    mine = valid & (y >= start) & (y < end)  # every such label was sampled (a positive)
    pos = torch.searchsorted(classes, y)
    part = torch.where(mine, pos + shards.offset, torch.zeros_like(y))
    flags = torch.zeros(world, dtype=part.dtype, device=part.device)
    flags[rank] = bad_class + 1
    total = D.all_reduce(torch.cat([part, flags]), group)  # integers: no autograd, exact
    bad = total[part.numel():].tolist()
    if any(bad):
        where = ", ".join(f"rank {r}: class {b - 1}" for r, b in enumerate(bad) if b)
        raise _checks.ArgumentError(
            f"{context}: sampled class weights with a zero or non-finite norm ({where}); a "
            f"margin head needs a finite, non-zero norm for every class it uses")
    return torch.where(valid, total[:part.numel()], torch.full_like(y, ignore_index))


def partial_fc_loss(spec: MarginSpec, embeddings: torch.Tensor, weight: torch.Tensor,
                    target: torch.Tensor, *, group, num_classes: int, sample_rate: float = 1.0,
                    generator: torch.Generator | None = None, reduction: str = "mean",
                    ignore_index: int = -100, label_smoothing: float = 0.0,
                    all_ignored: str = "nan", memory_budget=None, token_chunk_size=None,
                    vocab_chunk_size=None,
                    backend: str = "auto", context: str = "crossent Partial FC"):
    """The margin loss of the global batch over classes sharded across ranks (Partial FC).

    ::

        X = all_gather(x_r),   Y = all_gather(y_r)
        loss = margin cross-entropy of X over the sampled classes of every shard W_r

    Every argument is checked before the first collective, and the class weights' norms
    with them (all of the shard without sampling; with sampling, the sampled rows, their
    verdict travelling with the label all-reduce): whatever one rank finds wrong raises
    on every rank.

    Args:
        spec: the head's margin, :func:`crossent.margin.margin_spec`.
        embeddings: this rank's batch ``x_r``.
        weight: this rank's class shard of ``num_classes`` classes.
        target: this rank's labels (global class ids).
        group: the ``torch.distributed`` process group.
        num_classes: ``C``, over all shards.
        sample_rate, generator: Partial FC's sampling, per shard (1: every class).
        reduction: ``'mean'`` or ``'sum'`` (not ``'none'``).
        ignore_index, label_smoothing, memory_budget, token_chunk_size, vocab_chunk_size,
            backend: as :func:`crossent.arcface_loss`.
        context: names the call in error messages.
    Shape:
        embeddings ``(N_r, D)``, target ``(N_r,)``, weight ``(C_r * K, D)``.
    Returns:
        ``(loss, classes)``: the loss of the global batch (the same on every rank) and this
        shard's classes used in the step (global ids, sorted; all of the shard without
        sampling).
    Example:
        >>> import torch, torch.distributed as dist, crossent as ce
        >>> from crossent import partial_fc
        >>> from crossent.margin import margin_spec
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> _ = torch.manual_seed(0)
        >>> x, W, y = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([1, 0, 9, 4])
        >>> spec = margin_spec("arcface", scale=16.0, margin=0.3)
        >>> loss, classes = partial_fc.partial_fc_loss(spec, x, W, y, group=dist.group.WORLD,
        ...                                            num_classes=10)
        >>> torch.allclose(loss, ce.arcface_loss(x, W, y, scale=16.0, margin=0.3))
        True
        >>> dist.destroy_process_group()

    References:
        An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021.
        An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face
        Recognition CNNs by Partial FC", 2022.
    """
    rank, world = D.rank_and_size(group)
    k = spec.centers
    sampling = sample_rate < 1.0
    error, same, local_classes, norms = None, {}, None, None
    try:
        reduction = _checks.check_reduction(reduction)
        if reduction == "none":
            raise _checks.ArgumentError(
                f"{context}: reduction='none' is not supported with group= (the rows would be "
                f"the global batch's on every rank); use 'mean' or 'sum'")
        ignore_index = _checks.check_int("ignore_index", ignore_index)
        label_smoothing = _checks.check_unit_interval("label_smoothing", label_smoothing)
        all_ignored = _checks.check_choice("all_ignored", all_ignored, ("nan", "zero"))
        _checks.check_no_transform(context)
        local_classes = _check_inputs(embeddings, weight, k)
        start, end = shard_range(num_classes, rank, world)
        if local_classes != end - start:
            raise _checks.ArgumentError(
                f"weight holds {local_classes} classes, expected {end - start}: shard {rank} of "
                f"{num_classes} classes over {world} ranks (num_classes // world_size, plus one "
                f"on the first num_classes % world_size ranks)")
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != (embeddings.shape[0],):
            raise _checks.ArgumentError(
                f"target must be a tensor of shape [{embeddings.shape[0]}] (one class index per "
                f"embedding), got {getattr(target, 'shape', type(target).__name__)}")
        _checks.check_index_target_dtype(target)
        _checks.check_index_bounds(target, num_classes, ignore_index)
        backend = resolve_backend(backend, embeddings.device)
        # checks the tile options (the budget's minimum counts dx's accumulator row)
        margin_plan(spec, embeddings, local_classes, reduction,
                    torch.is_grad_enabled() and embeddings.requires_grad, memory_budget,
                    token_chunk_size, vocab_chunk_size)
        if sampling and generator is not None and generator.device.type != "cpu":
            raise _checks.ArgumentError(
                f"generator must be a CPU torch.Generator (the sampling draws on the CPU), got "
                f"one on {generator.device}")
        if not sampling:  # every row is used: check them now (MarginScores reuses the norms)
            norms, bad = margin_scores.weight_norms(weight)
            if bad >= 0:
                raise _checks.ArgumentError(
                    f"the class weight of class {start + bad // k} (row {bad} of this rank's "
                    f"weight) has norm {float(norms[bad])}: a margin head needs a finite, "
                    f"non-zero norm for every class it uses")
        same = agreement_fields(head=spec.kind, margins=spec.to_args(), embedding_dim=int(weight.shape[1]),
                        dtype=embeddings.dtype, device_type=embeddings.device.type,
                        num_classes=int(num_classes), sample_rate=float(sample_rate),
                        reduction=reduction, ignore_index=ignore_index,
                        label_smoothing=label_smoothing, all_ignored=all_ignored,
                        embeddings_grad=bool(embeddings.requires_grad))
    except D.LOCAL_ERRORS as exc:
        error = exc
    agree(context, group, same, local_classes, error)

    sizes = D.gather_sizes(embeddings.shape[0], group)
    need_x = torch.is_grad_enabled() and embeddings.requires_grad
    x = D.all_gather(D.scale_grad(embeddings, world) if need_x else embeddings.detach(), group,
                     sizes=sizes)
    y = torch.cat(D.gather_uneven(target.long(), group, sizes))
    valid = y != ignore_index
    w = weight
    if sampling:
        classes = _sample_shard(y, valid, start, end, sample_rate, generator)
        rows = (classes.unsqueeze(1) * k - start * k
                + torch.arange(k, device=classes.device)).reshape(-1)
        w = weight.index_select(0, rows)
        norms, bad = margin_scores.weight_norms(w)
        shards = Shards(rank, tuple(D.gather_sizes(classes.numel(), group)))
        y = _step_target(y, valid, ignore_index, shards, classes, start, end, group,
                         int(classes[bad // k]) if bad >= 0 else -1, context)
    else:
        classes = torch.arange(start, end, device=y.device)
        shards = Shards(rank, tuple(hi - lo for lo, hi in
                                    (shard_range(num_classes, r, world) for r in range(world))))

    acc = accumulation_dtype(embeddings.dtype)
    tgt = ClassIndexTarget.build(y, shards.sizes[rank], weight=None, ignore_index=ignore_index,
                                 label_smoothing=label_smoothing, dtype=acc,
                                 col_offset=shards.offset, total_classes=shards.total)
    plan = margin_plan(spec, x, shards.sizes[rank], reduction, need_x, memory_budget,
                       token_chunk_size, vocab_chunk_size)
    lspec = _LinearSpec(tgt, ScoreTransform(), 0.0, reduction, all_ignored, plan.rows, plan.cols,
                        backend, False, group, shards, margin=spec, weight_norms=norms)
    loss, _, _, _ = sharded_linear_cross_entropy(x, w, None, None, lspec)
    return loss, classes
