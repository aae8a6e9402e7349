"""Collectives for losses whose problem spans ranks, on ``torch.distributed`` only.

The losses of crossent that take ``group=`` (vocabulary/class-parallel cross-entropy,
distributed contrastive losses, Partial-FC margin heads) share this small layer:

- :func:`check_agreement` / :func:`check_replicated`: before any work, the ranks exchange
  a small metadata record (and, for replicated integer tensors such as targets, one
  all-reduce) and raise the *same* :class:`~crossent.ArgumentError` on every rank when they
  disagree, naming the field and each rank's value. A local argument error on one rank is
  reported on every rank the same way, so nothing waits forever in a collective.
- :func:`gather_sizes`, :func:`gather_uneven`, :func:`all_gather`: gathers of tensors whose
  first dimension differs by rank (Gloo's ``all_gather`` wants equal shapes: the sizes are
  exchanged first, tensors padded to the largest, gathered, trimmed).
- :func:`all_gather`, :func:`all_reduce`, :func:`replicated_input`, :func:`scale_grad`:
  autograd-aware collectives under two conventions (below).
- :func:`merge_row_stats`: per-row softmax statistics of class shards combined across
  ranks exactly as :func:`crossent.core.stats.merge` combines tiles, from one all-gather of
  ``(N,)`` vectors, with the same bits on every rank; :func:`with_merge_gradient` is its
  chain rule (``d lse / d lse_r = exp(lse_r - lse)``), under either convention below.
- :func:`spans_ranks` (does a ``group=`` take the across-ranks path: a one-rank group
  behaves as no group) and :func:`offsets` (where each rank's part starts).
- :func:`ring_exchange`, :func:`ring_blocks`: point-to-point ring passes (send to the next
  rank, receive from the previous) with uneven block sizes, asynchronous so the caller
  overlaps them with compute.
- :func:`count_traffic`: bytes each rank sends, for benchmarks.

Only ``torch.distributed`` collectives and point-to-point calls are used; everything
works with Gloo on CPU tensors and NCCL on CUDA tensors (metadata travels on the device
the group's backend wants: CUDA for NCCL, CPU otherwise). ``group`` is a process group
(``torch.distributed.group.WORLD`` for all ranks); ranks are ranks *within* the group.

Two autograd conventions
------------------------

**Data parallel** (``convention="data_parallel"``, the default of :func:`all_gather` and
:func:`all_reduce`): each of the ``W`` ranks holds its own slice ``x_r`` of the global
batch, computes the *same* global loss ``L`` from gathered or reduced tensors, and calls
``L.backward()``; DDP then *averages* the gradients of replicated parameters
(the encoders, ``logit_scale``) over the ``W`` ranks. A collective's backward on rank
``r`` receives the cotangent that rank ``r``'s graph computed. Together, the ``W``
backward passes differentiate the sum of the ``W`` graphs, i.e. the objective ``W * L``
(every rank's copy of ``L`` depends on every ``x_k`` through the collectives). The true
adjoints of that objective are:

- ``y = all_gather(x)``: ``x_r`` appears in every rank's ``y``, so
  ``d(W L)/dx_r = sum_k gbar_k[slice r]``: a **reduce-scatter** (each owner receives the
  sum of the gradients all ranks computed for its slice), ``= W * dL/dx_r``;
- ``y = all_reduce_sum(x)``: ``d(W L)/dx_r = sum_k gbar_k``: an **all-reduce-sum**.

Why that is exactly what DDP needs: a replicated parameter ``theta`` of the encoder gets,
on rank ``r``, ``J_r^T (W dL/dx_r)`` (``J_r = dx_r/dtheta``); DDP's average is
``(1/W) sum_r J_r^T W dL/dx_r = sum_r J_r^T dL/dx_r = dL/dtheta``, the single-process
gradient. A replicated parameter that enters ``L`` directly (``logit_scale``) gets
``dL/ds`` on every rank and the average keeps it. Using the identity (or "own slice
only") as the backward of the gather instead gives ``dL/dtheta / W`` after averaging, the
factor-of-``W`` error of open_clip's default ``local_loss=False, gather_with_grad=False``
mode and of Inf-CL's scale gradient.

**Tensor parallel** (``convention="tensor_parallel"``; Megatron-LM's
``copy_to/reduce_from/gather_from_tensor_model_parallel_region``): the ranks of the group
together form *one* computation over rows that are the same on every rank (hidden states
replicated, classes sharded); nothing is averaged across the group. The objective is
``L`` once; every rank's copy of a replicated tensor is the same logical variable and its
cotangent is the same on every rank. The pairs are:

- ``y = all_reduce(x, convention="tensor_parallel")`` (sum of per-shard partial results,
  e.g. partial statistics): forward all-reduce, backward **identity**;
- ``y = replicated_input(x)`` (a replicated input consumed by sharded work, e.g. the
  hidden states of a vocabulary-parallel output layer): forward identity, backward
  **all-reduce-sum** of the shards' partial gradients;
- ``y = all_gather(x, convention="tensor_parallel")`` (shards made whole): backward keeps
  this rank's **slice** of the (replicated) cotangent.

Use *data parallel* when every rank computes the loss of a global batch it assembled
from every rank's slice and DDP averages the replicated parameters (distributed
CLIP/SigLIP, gathered embeddings). Use *tensor parallel* when the ranks share the rows
and split the work (vocabulary-parallel cross-entropy): there, sharded parameters get
exactly their slice of ``dL/dW`` and replicated inputs the full ``dL/dx``.

**Mixing them** (class shards inside a data-parallel job, InsightFace's Partial FC):
embeddings are gathered data-parallel (DDP averages the encoder) while each rank
differentiates the loss only through its own class shard (the statistics merge is
tensor-parallel, so the shard's gradient is exact and not averaged). The reduce-scatter
of the gathered embeddings then sums the shards' contributions once, ``dL/dx_k``, not
``W dL/dx_k``; multiply by ``W`` before DDP divides: ``all_gather(scale_grad(x, W))``.

Traffic
-------

:func:`count_traffic` records, per call, the bytes this rank sends under the
bandwidth-optimal ring algorithms (NCCL's for large messages): an all-gather of ``b``
bytes per rank sends ``(W-1) b``; an all-reduce of ``b`` bytes ``2 (W-1)/W b``; a
reduce-scatter of ``b`` bytes in total ``(W-1)/W b``; a point-to-point send its size.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist

from . import stats as _stats
from .checks import ArgumentError, ArgumentTypeError, TargetIndexError

__all__ = [
    "DATA_PARALLEL",
    "TENSOR_PARALLEL",
    "LOCAL_ERRORS",
    "rank_and_size",
    "spans_ranks",
    "offsets",
    "comm_device",
    "check_agreement",
    "check_replicated",
    "gather_sizes",
    "gather_uneven",
    "all_gather",
    "all_reduce",
    "replicated_input",
    "scale_grad",
    "merge_row_stats",
    "with_merge_gradient",
    "ring_exchange",
    "ring_blocks",
    "count_traffic",
    "Traffic",
]

DATA_PARALLEL = "data_parallel"
TENSOR_PARALLEL = "tensor_parallel"
_CONVENTIONS = (DATA_PARALLEL, TENSOR_PARALLEL)

#: Local argument errors that :func:`check_agreement` turns into one error on every rank.
LOCAL_ERRORS = (ArgumentError, ArgumentTypeError, TargetIndexError, TypeError, ValueError,
                IndexError)


# ------------------------------------------------------------------------ basics


def rank_and_size(group) -> tuple[int, int]:
    """This process's rank within ``group`` and the group's size.

    ::

        (rank, size) = (dist.get_rank(group), dist.get_world_size(group))

    Args:
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
    Returns:
        ``(rank, size)``, two ints.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.rank_and_size(g)
        (0, 1)
        >>> dist.destroy_process_group()

    References:
        PyTorch, ``torch.distributed``.
    """
    return dist.get_rank(group), dist.get_world_size(group)


def spans_ranks(group) -> bool:
    """Whether a loss's ``group=`` argument takes its across-ranks path.

    ``None`` and a group of one rank do not: a one-rank group behaves exactly as no group
    (the single-process path, its checks, its ``torch.compile`` support, no collectives),
    in every family.

    Args:
        group: a ``torch.distributed`` process group, or ``None``.
    Returns:
        ``True`` when ``group`` has more than one rank.
    Raises:
        ArgumentError: a group given while ``torch.distributed`` is not initialised
        (``torch.distributed.group.WORLD`` is ``None`` then, so code written for
        ``group=dist.group.WORLD`` still runs on one process).
    Example:
        >>> import torch.distributed as dist
        >>> from crossent import distributed as D
        >>> D.spans_ranks(None)
        False
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> D.spans_ranks(dist.group.WORLD)
        False
        >>> dist.destroy_process_group()
    """
    if group is None:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        raise ArgumentError(f"group={group!r} needs torch.distributed to be initialised "
                            "(torch.distributed.init_process_group); pass group=None for one process")
    return dist.get_world_size(group) > 1


def comm_device(group) -> torch.device:
    """Where small metadata tensors travel for ``group``: CUDA for NCCL-only, else the CPU.

    ::

        comm_device(group) = cuda:current   if the backend is NCCL only
                             cpu            otherwise (Gloo, or ``cpu:gloo,cuda:nccl``)

    Args:
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
    Returns:
        A ``torch.device``.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.comm_device(g)
        device(type='cpu')
        >>> dist.destroy_process_group()

    References:
        PyTorch, ``torch.distributed`` backends.
    """
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank(group, rank: int) -> int:
    if group is None or group is dist.group.WORLD:
        return rank
    return dist.get_global_rank(group, rank)


# ---------------------------------------------------------------------- traffic


@dataclass
class Traffic:
    """Calls and bytes this rank sent inside :func:`count_traffic` (ring model).

    ::

        bytes_sent = sum of the bytes of every recorded call
        all_gather: (W - 1) * bytes,  all_reduce: 2 (W - 1) / W * bytes,  send: bytes

    Attributes:
        calls: ``(operation, bytes sent)`` per collective, in order.
        bytes_sent: their total (a property); ``by_op()`` sums them per operation.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> with D.count_traffic() as traffic:
        ...     _ = D.all_reduce(torch.ones(4), g)
        >>> traffic.by_op()  # one rank sends nothing
        {'all_reduce': 0}
        >>> dist.destroy_process_group()

    References:
        Patarasuk & Yuan, "Bandwidth Optimal All-reduce Algorithms for Clusters of
        Workstations", 2009 (the ring model's byte counts).
    """

    calls: list[tuple[str, int]] = field(default_factory=list)  # (operation, bytes sent)

    @property
    def bytes_sent(self) -> int:
        return sum(b for _, b in self.calls)

    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for op, b in self.calls:
            out[op] = out.get(op, 0) + b
        return out


_TRAFFIC: list[Traffic] = []


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Record the bytes this rank sends through this module's collectives.

    ::

        with distributed.count_traffic() as t:
            loss = ce.linear_cross_entropy(x, w, y, group=g); loss.backward()
        t.bytes_sent, t.by_op()

    Args:
        (none): a context manager; nesting records in every open one.
    Returns:
        A :class:`Traffic` that fills while the block runs.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> with D.count_traffic() as traffic:
        ...     _ = D.all_gather(torch.ones(2, 3), g)
        >>> [op for op, _ in traffic.calls], traffic.bytes_sent
        (['all_gather', 'all_gather'], 0)
        >>> dist.destroy_process_group()

    References:
        Patarasuk & Yuan, "Bandwidth Optimal All-reduce Algorithms for Clusters of
        Workstations", 2009 (the ring model's byte counts).
    """
    t = Traffic()
    _TRAFFIC.append(t)
    try:
        yield t
    finally:
        _TRAFFIC.remove(t)


def _record(op: str, nbytes: float) -> None:
    for t in _TRAFFIC:
        t.calls.append((op, int(nbytes)))


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


def _raw_all_gather(x: torch.Tensor, group) -> list[torch.Tensor]:
    """``dist.all_gather`` of equal-shaped tensors, counted."""
    _, size = rank_and_size(group)
    x = x.contiguous()
    out = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(out, x, group=group)
    _record("all_gather", (size - 1) * _nbytes(x))
    return out


def _raw_all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """``dist.all_reduce`` on a contiguous copy (the caller's tensor is never written)."""
    _, size = rank_and_size(group)
    out = x.contiguous().clone()
    dist.all_reduce(out, op=op, group=group)
    _record("all_reduce", 2 * (size - 1) / size * _nbytes(out))
    return out


# ------------------------------------------------------------------ uneven gathers


def gather_sizes(n: int, group, device: torch.device | None = None) -> list[int]:
    """Every rank's ``n`` (e.g. its first dimension), in rank order; one small all-gather.

    ::

        gather_sizes(n_r) = [n_0, n_1, ..., n_{W-1}]     (on every rank)

    Args:
        n: this rank's number.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        device: where the exchange travels (default :func:`comm_device`).
    Returns:
        A list of ``W`` ints (a host synchronisation).
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.gather_sizes(3, g)
        [3]
        >>> dist.destroy_process_group()

    References:
        PyTorch, ``torch.distributed.all_gather``.
    """
    device = comm_device(group) if device is None else device
    mine = torch.tensor([int(n)], dtype=torch.int64, device=device)
    return [int(t.item()) for t in _raw_all_gather(mine, group)]


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    out = x.new_zeros((rows,) + tuple(x.shape[1:]))
    out[: x.shape[0]] = x
    return out


def gather_uneven(x: torch.Tensor, group, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Every rank's ``x``, first dimensions possibly different, in rank order, without autograd.

    ::

        gather_uneven(x_r) = [x_0, x_1, ..., x_{W-1}]   (padded to the largest, trimmed)

    Args:
        x: this rank's tensor.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        sizes: every rank's ``x.shape[0]`` (from :func:`gather_sizes`), saving one exchange.
    Shape:
        ``x`` ``(n_r, *rest)``, ``rest`` equal on every rank; part ``k`` ``(n_k, *rest)``.
    Returns:
        A list of ``W`` detached tensors.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> [part.shape for part in D.gather_uneven(torch.zeros(3, 2), g)]
        [torch.Size([3, 2])]
        >>> dist.destroy_process_group()

    References:
        PyTorch, ``torch.distributed.all_gather``.
    """
    sizes = list(sizes) if sizes is not None else gather_sizes(x.shape[0], group, x.device)
    parts = _raw_all_gather(_pad_rows(x.detach(), max(sizes)), group)
    return [p[:n] for p, n in zip(parts, sizes)]


def offsets(sizes: Sequence[int]) -> list[int]:
    """Where each rank's part starts when the parts are concatenated in rank order.

    ::

        offsets(sizes)[r] = sizes[0] + ... + sizes[r - 1]      (exclusive prefix sums)

    The one place rank offsets are computed (rows, columns, class shards).

    Args:
        sizes: every rank's part size, in rank order.
    Returns:
        A list of ``len(sizes)`` ints; the total is ``sum(sizes)``.
    Example:
        >>> from crossent import distributed as D
        >>> D.offsets([4, 7, 0, 2])
        [0, 4, 11, 11]
    """
    out, total = [], 0
    for n in sizes:
        out.append(total)
        total += int(n)
    return out


def _reduce_scatter_rows(g: torch.Tensor, sizes: Sequence[int], group) -> torch.Tensor:
    """This rank's rows of ``sum_k g_k``, where every rank holds a full ``g`` of
    ``sum(sizes)`` rows split by ``sizes`` (a reduce-scatter, padded to the largest)."""
    rank, size = rank_and_size(group)
    width = max(sizes)
    chunks = [_pad_rows(c, width) for c in torch.split(g, list(sizes))]
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter(out, chunks, group=group)
    _record("reduce_scatter", (size - 1) * _nbytes(out))
    return out[: sizes[rank]]


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, sizes, convention):
        ctx.group, ctx.sizes, ctx.convention = group, sizes, convention
        return torch.cat(gather_uneven(x, group, sizes))

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        rank, _ = rank_and_size(ctx.group)
        if ctx.convention == TENSOR_PARALLEL:
            start = offsets(ctx.sizes)[rank]
            return grad[start:start + ctx.sizes[rank]], None, None, None
        return _reduce_scatter_rows(grad, ctx.sizes, ctx.group), None, None, None


def _check_convention(convention: str) -> None:
    if convention not in _CONVENTIONS:
        raise ArgumentError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")


def all_gather(x: torch.Tensor, group, *, sizes: Sequence[int] | None = None,
               convention: str = DATA_PARALLEL) -> torch.Tensor:
    """Concatenation (dim 0, rank order) of every rank's ``x``; first dimensions may differ.

    ::

        all_gather(x_r) = cat([x_0, ..., x_{W-1}])
        backward, data_parallel:   g_r = sum_k (dL_k / dX)[rows of r]   (reduce-scatter)
        backward, tensor_parallel: g_r = (dL_r / dX)[rows of r]

    Differentiable: with ``convention='data_parallel'`` the backward is the true adjoint,
    a reduce-scatter (rank ``r`` receives the sum over ranks of the gradient of its rows);
    with ``'tensor_parallel'`` it keeps this rank's rows of its own gradient. See the
    module docstring for which to use.

    Args:
        x: this rank's tensor.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        sizes: every rank's ``x.shape[0]`` when known.
        convention: ``'data_parallel'`` (:data:`DATA_PARALLEL`) or ``'tensor_parallel'``.
    Shape:
        ``x`` ``(n_r, *rest)``; the output ``(sum_k n_k, *rest)``.
    Returns:
        The concatenation (a new tensor).
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> x = torch.ones(3, 2, requires_grad=True)
        >>> D.all_gather(x, g).sum().backward()
        >>> x.grad.shape
        torch.Size([3, 2])
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models
        Using Model Parallelism", 2019.
    """
    _check_convention(convention)
    sizes = list(sizes) if sizes is not None else gather_sizes(x.shape[0], group, x.device)
    if torch.is_grad_enabled() and x.requires_grad:
        return _AllGather.apply(x, group, sizes, convention)
    return torch.cat(gather_uneven(x, group, sizes))


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, convention):
        ctx.group, ctx.convention = group, convention
        return _raw_all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.convention == TENSOR_PARALLEL:
            return grad, None, None
        return _raw_all_reduce(grad, ctx.group), None, None


def all_reduce(x: torch.Tensor, group, *, convention: str = DATA_PARALLEL) -> torch.Tensor:
    """The sum over ranks of ``x``, on every rank (a new tensor; ``x`` is not modified).

    ::

        all_reduce(x_r) = sum_k x_k

    Backward: all-reduce-sum (``'data_parallel'``, the true adjoint) or the identity
    (``'tensor_parallel'``, Megatron's ``reduce_from_tensor_model_parallel_region``).

    Args:
        x: this rank's tensor (the same shape on every rank).
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        convention: ``'data_parallel'`` or ``'tensor_parallel'``.
    Shape:
        the output has ``x``'s shape.
    Returns:
        The sum.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.all_reduce(torch.tensor([1.0, 2.0]), g)
        tensor([1., 2.])
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models
        Using Model Parallelism", 2019.
    """
    _check_convention(convention)
    if torch.is_grad_enabled() and x.requires_grad:
        return _AllReduce.apply(x, group, convention)
    return _raw_all_reduce(x.detach(), group)


class _ReplicatedInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _raw_all_reduce(grad, ctx.group), None


def replicated_input(x: torch.Tensor, group) -> torch.Tensor:
    """Tensor parallel: ``x`` (the same on every rank) as the input of sharded work.

    ::

        forward: y = x;    backward: g_x = sum_k g_k

    Forward: identity. Backward: the sum over ranks of the partial gradients each rank's
    shard produced (an all-reduce), so every rank's ``x`` gets the full gradient
    (Megatron's ``copy_to_tensor_model_parallel_region``).

    Args:
        x: the replicated tensor.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
    Returns:
        ``x`` itself in the forward (a new autograd node when it requires grad).
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> x = torch.ones(2, requires_grad=True)
        >>> D.replicated_input(x, g).sum().backward()
        >>> x.grad
        tensor([1., 1.])
        >>> dist.destroy_process_group()

    References:
        Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models
        Using Model Parallelism", 2019.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReplicatedInput.apply(x, group)
    return x


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity forward; the gradient times ``factor`` backward (see "Mixing them").

    ::

        forward: y = x;    backward: g_x = factor * g_y

    Args:
        x: any tensor.
        factor: the gradient's multiplier.
    Returns:
        ``x`` (a new autograd node when it requires grad).
    Example:
        >>> import torch
        >>> from crossent import distributed as D
        >>> x = torch.ones(2, requires_grad=True)
        >>> D.scale_grad(x, 0.5).sum().backward()
        >>> x.grad
        tensor([0.5000, 0.5000])

    References:
        See the module docstring ("Two autograd conventions").
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _ScaleGrad.apply(x, float(factor))
    return x


def unshard_parameter(t: torch.Tensor | None) -> torch.Tensor | None:
    """A parameter sharded by FSDP2 (a ``DTensor`` after ``fully_shard``) gathered whole,
    its gradient averaged over the mesh as FSDP2 averages every other gradient; a plain
    tensor (or None) as it is.

    ::

        forward:  w = all_gather(shards)          backward: g_shard = reduce_scatter(g) / ranks

    ``DTensor.full_tensor()`` alone is not enough: its backward treats the gathered
    tensor as replicated (the same gradient on every rank) and hands each rank the slice
    of its own gradient, so with different tokens per rank the other ranks' tokens are
    lost. The gathered tensor's gradient is declared ``Partial("avg")`` instead, which
    the backward reduce-scatters into the shard (on every mesh dimension, so HSDP too).

    Args:
        t: a tensor, a ``DTensor`` or None.
    Returns:
        A plain tensor (or None).
    Example:
        >>> import torch
        >>> from crossent.core.collectives import unshard_parameter
        >>> w = torch.ones(3, 2)
        >>> unshard_parameter(w) is w, unshard_parameter(None)
        (True, None)

    References:
        Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
        2023 (FSDP2's ``fully_shard`` averages gradients over the data-parallel ranks).
    """
    if t is None:
        return None
    try:
        from torch.distributed.tensor import DTensor, Partial, Replicate
    except ImportError:  # pragma: no cover - a torch without DTensor
        return t
    if not isinstance(t, DTensor):
        return t
    ndim = t.device_mesh.ndim
    return t.redistribute(placements=[Replicate()] * ndim).to_local(
        grad_placements=[Partial("avg")] * ndim)


# ------------------------------------------------------------------- agreement


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _all_gather_bytes(payload: bytes, group) -> list[bytes]:
    device = comm_device(group)
    data = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    return [p.cpu().numpy().tobytes() for p in gather_uneven(data, group)]


def _same_value(x, y) -> bool:
    """Equality of agreement fields, with NaN equal to NaN (a NaN hyperparameter is the
    same value on every rank, not a disagreement)."""
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    return x == y


def check_agreement(context: str, group, *, same: Mapping[str, Any],
                    each: Mapping[str, Any] | None = None,
                    error: BaseException | None = None) -> list[dict]:
    """Exchange a metadata record; raise the same error on every rank unless all agree.

    ::

        records = all_gather({same, each, error})
        raise if any error, or if same_r != same_0 for some rank r; else [each_0, ...]

    Args:
        context: names the call in messages, e.g. ``"crossent.cross_entropy(group=...)"``.
        same: JSON-able fields that must be equal on every rank (shapes' fixed dims,
            dtype as a string, options, ...).
        each: JSON-able fields that may differ (e.g. this rank's class count); returned.
        error: the exception this rank's own argument checks raised, if any.
        group: a ``torch.distributed`` process group.
    Returns:
        Every rank's ``each`` record, in rank order.

    Raises, on every rank: if every rank reported the *same* local error, that error
    (its own type, as without ``group``); if some ranks reported errors, an
    :class:`~crossent.ArgumentError` naming each failing rank and its error; if ``same``
    differs, an ``ArgumentError`` naming each field and every rank's value.

    Cost: two small all-gathers (sizes, then the JSON bytes) and a host synchronisation.

    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.check_agreement("demo", g, same={"dim": 8}, each={"classes": 5})
        [{'classes': 5}]
        >>> dist.destroy_process_group()

    References:
        See the module docstring.
    """
    rank, size = rank_and_size(group)
    record = {"same": dict(same), "each": dict(each or {}),
              "error": None if error is None else _describe(error)}
    try:
        payload = json.dumps(record, sort_keys=True).encode()
    except TypeError as exc:  # a programming error: fields must be JSON-able
        raise ArgumentTypeError(f"{context}: metadata is not JSON-able: {exc}") from exc
    records = [json.loads(b) for b in _all_gather_bytes(payload, group)]
    errors = [(r, rec["error"]) for r, rec in enumerate(records) if rec["error"] is not None]
    if errors:
        if len(errors) == size and len({e for _, e in errors}) == 1 and error is not None:
            raise error
        lines = "; ".join(f"rank {r}: {e}" for r, e in errors)
        raise ArgumentError(f"{context}: invalid arguments on {len(errors)} of {size} ranks "
                            f"({lines})") from error
    missing = object()
    problems = []
    keys = sorted(set().union(*(rec["same"].keys() for rec in records)))
    for key in keys:
        values = [rec["same"].get(key, missing) for rec in records]
        if any(not _same_value(v, values[0]) for v in values[1:]):
            shown = ", ".join(
                f"rank {r}: {'<missing>' if v is missing else repr(v)}" for r, v in enumerate(values)
            )
            problems.append(f"{key} ({shown})")
    if problems:
        raise ArgumentError(f"{context}: the ranks of the group disagree on "
                            f"{'; '.join(problems)}; every rank must pass the same value")
    return [rec["each"] for rec in records]


def check_replicated(context: str, name: str, tensor: torch.Tensor, group) -> None:
    """Raise the same :class:`~crossent.ArgumentError` on every rank unless an integer tensor is replicated.

    ::

        max_k t_k == -max_k (-t_k)   elementwise   (one all-reduce of [t, -t])

    One all-reduce (MAX) of ``2 * numel`` int64 values; a host synchronisation.

    Args:
        context: names the call in messages.
        name: the argument's name in messages.
        tensor: an integer tensor, the same shape on every rank (e.g. class-index targets).
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
    Returns:
        None; raises :class:`~crossent.ArgumentError` on every rank when values differ.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.check_replicated("demo", "target", torch.tensor([1, 2]), g)  # agrees: no error
        >>> dist.destroy_process_group()

    References:
        See the module docstring.
    """
    flat = tensor.reshape(-1).to(torch.int64)
    both = _raw_all_reduce(torch.cat([flat, -flat]), group, op=dist.ReduceOp.MAX)
    high, low = both[: flat.numel()], -both[flat.numel():]
    differs = high != low
    if bool(differs.any()):
        where = int(differs.nonzero()[0, 0])
        count = int(differs.sum())
        raise ArgumentError(
            f"{context}: {name} must be the same on every rank of the group, but "
            f"{count} of {flat.numel()} elements differ (first at flat index {where}: values "
            f"from {int(low[where])} to {int(high[where])} across ranks)"
        )


# ------------------------------------------------------------------- statistics


def _as_bytes(p: torch.Tensor) -> torch.Tensor:
    """``p``'s elements as bytes, in order (a copy only where ``p`` has no unit stride: a
    one-element column slice counts as contiguous yet cannot be viewed as bytes)."""
    flat = p.detach().reshape(-1)
    if flat.numel() and flat.stride(0) != 1:
        flat = torch.empty(flat.shape, dtype=flat.dtype, device=flat.device).copy_(flat)
    return flat.view(torch.uint8)


def _pack(pieces: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([_as_bytes(p) for p in pieces])


def _unpack(buf: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The pieces of :func:`_pack` back, typed like ``like``. A piece whose byte offset is
    not a multiple of its element size (an int64 after an odd count of float32s) is
    copied first: a dtype view needs an aligned start."""
    out, start = [], 0
    for p in like:
        n = _nbytes(p)
        piece = buf[start:start + n]
        if start % p.element_size():
            piece = piece.clone()
        out.append(piece.view(p.dtype).reshape(p.shape))
        start += n
    return out


def merge_row_stats(stats: _stats.RowStats, group, *, col_offset: int = 0,
                    sums: Sequence[torch.Tensor] = ()) -> tuple[_stats.RowStats, list[torch.Tensor]]:
    """Per-row statistics of every rank's class shard, merged: the statistics of all classes.

    ::

        m = max_r m_r,   s = sum_r s_r exp(m_r - m),   dot = sum_r dot_r
        lse = m + log s

    ``stats`` (:class:`crossent.core.stats.RowStats`, ``(N,)`` each, the same ``N`` and the
    same optional fields on every rank) describes this rank's classes, global columns
    ``[col_offset, col_offset + C_r)`` (shards contiguous in rank order); its ``argmax``
    is local (``col_offset`` is added). ``sums``: more tensors (any shape, the same on
    every rank) to be summed across ranks, e.g. partial target masses.

    With ``stats.mass`` (``dot`` and ``zexp`` relative to the max, :mod:`crossent.core.stats`)
    the masses travel too and the merged state has the total mass.

    One all-gather of the packed bytes (about ``(3 + 3 + len(sums)) * N`` numbers); then
    every rank folds the ``W`` states in rank order with :func:`crossent.core.stats.merge`,
    exactly as tiles are merged, so the result has the same bits on every rank and the
    argmax ties go to the lowest global index. No autograd (the chain rule of the merge,
    ``d lse / d lse_r = exp(lse_r - lse)``, is the caller's).

    Args:
        stats: this shard's ``RowStats``.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        col_offset: this shard's first global column.
        sums: more tensors to sum across ranks.
    Shape:
        each field of ``stats`` ``(N,)``; the merged fields ``(N,)``.
    Returns:
        ``(merged RowStats, summed sums)``.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> from crossent.core.stats import RowStats, logsumexp
        >>> z = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]])
        >>> m = z.amax(1)
        >>> target_score = z.gather(1, torch.tensor([[0], [1]])).squeeze(1)
        >>> mine = RowStats(m, (z - m[:, None]).exp().sum(1), target_score, None, z.argmax(1))
        >>> merged, _ = D.merge_row_stats(mine, g, col_offset=4)
        >>> torch.allclose(logsumexp(merged), torch.logsumexp(z, 1)), merged.argmax
        (True, tensor([6, 4]))
        >>> dist.destroy_process_group()

    References:
        Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018 (the
        merge).
    """
    local = [stats.max, stats.sumexp, stats.dot]
    if stats.zexp is not None:
        local.append(stats.zexp)
    if stats.argmax is not None:
        local.append(stats.argmax.to(torch.int64) + col_offset)
    if stats.mass is not None:  # the dot relative to the max moves with the merged max
        local.append(stats.mass)
    local.extend(sums)
    parts = _raw_all_gather(_pack(local), group)
    merged, totals = None, None
    for buf in parts:
        vals = _unpack(buf, local)
        row_max, sumexp, dot = vals[:3]
        rest = vals[3:]
        zexp = rest.pop(0) if stats.zexp is not None else None
        best = rest.pop(0) if stats.argmax is not None else None
        mass = rest.pop(0) if stats.mass is not None else None
        state = _stats.RowStats(row_max, sumexp, dot, zexp, best, mass)
        merged = state if merged is None else _stats.merge(merged, state)
        totals = rest if totals is None else [t + r for t, r in zip(totals, rest)]
    return merged, list(totals)


def _lse_share(lse_local: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """``d lse / d lse_r = exp(lse_r - lse)`` (0 where the merged row is empty)."""
    finite = torch.isfinite(lse)
    zero = torch.zeros((), dtype=lse.dtype, device=lse.device)
    return torch.where(finite, torch.exp(lse_local - torch.where(finite, lse, zero)), zero)


class _MergeGradient(torch.autograd.Function):
    """The merged ``(lse, *sums)`` (values given), differentiable w.r.t. this rank's
    ``(lse_r, *parts)``."""

    @staticmethod
    def forward(ctx, group, convention, lse_r, lse, delta, *pairs):
        k = len(pairs) // 2
        ctx.group, ctx.convention, ctx.k = group, convention, k
        ctx.save_for_backward(lse_r, lse, delta)
        return (lse.clone(),) + tuple(t.clone() for t in pairs[k:])

    @staticmethod
    def backward(ctx, *grads):
        lse_r, lse, delta = ctx.saved_tensors
        grads = list(grads)
        if ctx.convention == DATA_PARALLEL:  # sum over ranks of every rank's cotangent
            flat = _raw_all_reduce(torch.cat([g.reshape(-1) for g in grads]), ctx.group)
            grads = [part.view_as(g) for part, g in
                     zip(torch.split(flat, [g.numel() for g in grads]), grads)]
        g_parts = grads[1:]
        if delta is None:
            g_lse = grads[0] * _lse_share(lse_r, lse)
        else:  # relative statistics: lse_r + delta_r on the merged reference, dot moved
            g_lse = grads[0] * _lse_share(lse_r + delta, lse)
            if len(g_parts) > 1:  # d dot / d mass_r = delta_r
                g_parts[1] = g_parts[1] + g_parts[0] * delta
        return (None, None, g_lse, None, None) + tuple(g_parts) + (None,) * ctx.k


def with_merge_gradient(lse_local: torch.Tensor, lse: torch.Tensor, group, *,
                        parts: Sequence[torch.Tensor] = (), sums: Sequence[torch.Tensor] = (),
                        delta: torch.Tensor | None = None,
                        convention: str = DATA_PARALLEL) -> tuple[torch.Tensor, ...]:
    """The cross-rank log-sum-exp merge, differentiable (the chain rule of merge_row_stats).

    The values are given (``lse``, ``sums``: the merged results, computed without autograd,
    the same bits on every rank); the gradients flow back to this rank's parts::

        lse = log sum_r exp(lse_r)       d lse / d lse_r = exp(lse_r - lse)   (0 if lse = -inf)
        s   = sum_r s_r                  d s / d s_r = 1

    With ``delta`` the statistics are relative (:mod:`crossent.core.stats`): ``lse_local``
    and ``parts[0]`` (a target dot) to this rank's reference ``r_r``, ``lse`` and
    ``sums[0]`` to the merged one ``R``, ``delta = r_r - R`` (a constant), and
    ``parts[1]``, when given, is the mass that moves the dot::

        lse = log sum_r exp(lse_r + delta_r)     d lse / d lse_r = exp(lse_r + delta_r - lse)
        dot = sum_r dot_r + mass_r delta_r       d dot / d mass_r = delta_r

    Args:
        lse_local: ``(N,)`` this rank's log-sum-exp ``lse_r``; ``lse``: the merged one.
        parts / sums: tensors summed across ranks (e.g. the target dot, the target mass):
            this rank's parts and the merged sums, pairwise of equal shapes.
        delta: ``(N,)`` ``r_r - R`` for relative statistics (see above), or None.
        convention: ``'data_parallel'`` (each rank's graph holds its own copy of the loss:
            the cotangents are all-reduced, one all-reduce in the backward) or
            ``'tensor_parallel'`` (the loss once, the same cotangent on every rank: no
            communication). See the module docstring.

    Returns:
        ``(lse, *sums)``, new tensors carrying the gradient.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> lse_r = torch.tensor([0.5, -1.0], requires_grad=True)
        >>> lse, = D.with_merge_gradient(lse_r, lse_r.detach(), dist.group.WORLD,
        ...                              convention="tensor_parallel")
        >>> lse.sum().backward()
        >>> lse_r.grad  # exp(lse_r - lse) = 1 when this rank holds every class
        tensor([1., 1.])
        >>> dist.destroy_process_group()

    References:
        Milakov & Gimelshein, "Online normalizer calculation for softmax", 2018.
    """
    _check_convention(convention)
    if len(parts) != len(sums):
        raise ArgumentError(f"parts and sums must pair up, got {len(parts)} and {len(sums)}")
    if delta is not None:
        delta = delta.detach()
    return _MergeGradient.apply(group, convention, lse_local, lse, delta, *parts, *sums)


# ------------------------------------------------------------------------ ring


def ring_exchange(send: torch.Tensor, recv: torch.Tensor, group, *, direction: int = 1) -> list:
    """Start one ring step: send ``send`` to the next rank, receive ``recv`` from the previous.

    Sends to rank ``r + direction`` and receives from rank
    ``r - direction`` (mod ``W``); returns the works, ``.wait()`` them before using
    ``recv`` (and before writing ``send``). One ``batch_isend_irecv``, so NCCL's paired
    send/receive cannot deadlock; on Gloo, two asynchronous point-to-point calls.

    ::

        rank r:  send -> rank (r + direction) mod W,   recv <- rank (r - direction) mod W

    Args:
        send: the contiguous tensor to send.
        recv: the contiguous tensor to receive into (the peer's ``send``'s shape).
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        direction: 1 or -1.
    Returns:
        The list of works to ``.wait()``.
    Example:
        Two or more ranks exchange (one rank has no peer); the arguments are checked first:

        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> D.ring_exchange(torch.ones(1), torch.empty(1), g, direction=2)
        Traceback (most recent call last):
            ...
        crossent.core.checks.ArgumentError: direction must be 1 or -1, got 2
        >>> dist.destroy_process_group()

    References:
        Liu et al., "Ring Attention with Blockwise Transformers for Near-Infinite
        Context", 2023 (the ring pass).
    """
    rank, size = rank_and_size(group)
    if direction not in (1, -1):
        raise ArgumentError(f"direction must be 1 or -1, got {direction!r}")
    if not (send.is_contiguous() and recv.is_contiguous()):
        raise ArgumentError("ring_exchange needs contiguous send and recv tensors (the "
                            "transfer runs after this call returns)")
    peer_out = _global_rank(group, (rank + direction) % size)
    peer_in = _global_rank(group, (rank - direction) % size)
    ops = [dist.P2POp(dist.isend, send, peer_out, group),
           dist.P2POp(dist.irecv, recv, peer_in, group)]
    _record("send", _nbytes(send))
    return dist.batch_isend_irecv(ops)


def ring_blocks(x: torch.Tensor, group, *, sizes: Sequence[int] | None = None,
                direction: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
    """Every rank's block, one per step, passed around the ring; yields ``(source, block)``.

    Step 0 yields this rank's ``x``; step ``s`` the block of rank ``r - s * direction``.
    While the caller works on a block, the next one is already in flight. Blocks may
    differ in their first dimension (``sizes``: every rank's, from :func:`gather_sizes`,
    exchanged here when omitted); the other dimensions must agree. No autograd: a
    differentiable ring (Inf-CL style) passes gradients back with the same helpers.
    The caller must consume all ``W`` steps on every rank.

    ::

        step s yields (source, x_source),   source = (r - s * direction) mod W

    Args:
        x: this rank's block.
        group: a ``torch.distributed`` process group (``dist.group.WORLD``: all ranks).
        sizes: every rank's ``x.shape[0]``.
        direction: 1 or -1.
    Returns:
        An iterator of ``(source rank, block)``.
    Example:
        >>> import torch, torch.distributed as dist
        >>> from crossent import distributed as D
        >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        >>> g = dist.group.WORLD  # a one-rank group; every rank runs the same lines
        >>> [(source, block.tolist()) for source, block in D.ring_blocks(torch.tensor([[1.0, 2.0]]), g)]
        [(0, [[1.0, 2.0]])]
        >>> dist.destroy_process_group()

    References:
        Chen et al., "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for
        Contrastive Loss" (Inf-CL), 2024.
    """
    rank, size = rank_and_size(group)
    sizes = list(sizes) if sizes is not None else gather_sizes(x.shape[0], group, x.device)
    current = x.detach().contiguous()
    for step in range(size):
        source = (rank - step * direction) % size
        works, incoming = [], None
        if step + 1 < size:
            nxt = (rank - (step + 1) * direction) % size
            incoming = current.new_empty((sizes[nxt],) + tuple(current.shape[1:]))
            works = ring_exchange(current, incoming, group, direction=direction)
        yield source, current
        for w in works:
            w.wait()
        current = incoming
