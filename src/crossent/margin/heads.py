"""Margin heads that own their class weights, and Partial-FC class-centre sampling.

``head = ce.ArcFace(num_classes, embedding_dim, scale=64.0, margin=0.5)``;
``loss = head(embeddings, target)`` runs the fused loss of :mod:`crossent.margin` on the
head's weight ``(num_classes [* centers], embedding_dim)``; ``head.logits(embeddings)``
gives evaluation logits (:func:`crossent.margin_logits`).

Weight initialisation follows each method's reference code:

- ArcFace, combined margin, sub-centre ArcFace: ``N(0, 0.01^2)`` (InsightFace's arcface_torch
  Partial FC);
- CosFace / AM-Softmax and SphereFace: Caffe's ``xavier`` filler,
  ``U(-sqrt(3/D), sqrt(3/D))`` (happynear/AMSoftmax and wy1iu/sphereface prototxts);
- L-Softmax: Caffe's ``msra`` filler, ``N(0, 2/D)`` (wy1iu/LargeMargin_Softmax_Loss).

**Partial FC** (An et al., "Partial FC: Training 10 Million Identities on a Single
Machine", 2021): with ``sample_rate < 1`` each training step uses the positive classes
of the batch plus random negatives, ``int(sample_rate * C)`` classes in all (only the
positives when they are more; at least one), and remaps the labels to the sampled, sorted class list;
the weight's gradient is zero outside the sampled rows. The sampled rows are gathered
(``sample_rate * C x D`` and its gradient), the logits stay fused. ``generator`` makes the
sampling reproducible. In ``eval()`` mode every class is used.

**Across ranks** (every head here): ``group=`` builds only this rank's class shard
(:func:`crossent.partial_fc.shard_range`) and runs :func:`crossent.partial_fc.partial_fc_loss`
(the global batch gathered, ``sample_rate`` per shard); options ``reduction`` ('mean',
'sum'), ``ignore_index``, ``label_smoothing``. Keep the head out of DDP (its weight is a
shard, not a replica); ``load_global_weight`` / ``global_weight`` convert from and to a
full weight. A group of one rank is no group (the one-process head).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core import checks as _checks
from ..core import collectives as distributed
from . import losses as margin
from .partial_fc import check_sample_rate, partial_fc_loss, partial_fc_sample, shard_range

__all__ = ["ArcFace", "CosFace", "SphereFace", "LargeMarginSoftmax", "CombinedMargin",
           "SubCenterArcFace", "partial_fc_sample"]


class _MarginHead(nn.Module):
    """Shared body: the weight, Partial FC, forward through a fused margin loss."""

    head: str = ""
    centers: int = 1

    def __init__(self, num_classes: int, embedding_dim: int, *, sample_rate: float = 1.0,
                 generator: torch.Generator | None = None, group=None, device=None, dtype=None,
                 **params):
        super().__init__()
        self.num_classes = _checks.check_int("num_classes", num_classes)
        self.embedding_dim = _checks.check_int("embedding_dim", embedding_dim)
        if self.num_classes < 1 or self.embedding_dim < 1:
            raise _checks.ArgumentError(
                f"num_classes and embedding_dim must be >= 1, got {num_classes} and {embedding_dim}")
        loss_keys = ("reduction", "ignore_index", "label_smoothing", "all_ignored",
                     "memory_budget", "token_chunk_size", "vocab_chunk_size", "backend")
        self.loss_kwargs = {k: params.pop(k) for k in loss_keys if k in params}
        self.params = params
        self.spec = margin.margin_spec(self.head, **params)  # validates the margin now
        self.centers = self.spec.centers
        self.sample_rate = check_sample_rate(sample_rate)
        self.generator = generator
        self.group = group
        # a group of one rank is no group (collectives.spans_ranks): the one-process path
        self._sharded = distributed.spans_ranks(group)
        #: with ``group``: this shard's classes (global ids) used by the last training step
        self.sampled_classes = None
        self.class_start, self.class_end = 0, self.num_classes
        if self._sharded:  # Partial FC across ranks: this rank's class shard
            rank, world = distributed.rank_and_size(group)
            if self.num_classes < world:
                raise _checks.ArgumentError(
                    f"num_classes ({self.num_classes}) must be at least the group's size ({world}): "
                    f"every rank holds a shard of at least one class")
            self.class_start, self.class_end = shard_range(self.num_classes, rank, world)
        local = self.class_end - self.class_start
        self.weight = nn.Parameter(torch.empty(local * self.centers, self.embedding_dim,
                                               device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, 0.01)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._sharded:
            loss, self.sampled_classes = partial_fc_loss(
                self.spec, embeddings, self.weight, target, group=self.group,
                num_classes=self.num_classes,
                sample_rate=self.sample_rate if self.training else 1.0,
                generator=self.generator, context=f"crossent.{type(self).__name__}(group=...)",
                **self.loss_kwargs)
            return loss
        weight = self.weight
        if self.training and self.sample_rate < 1.0:
            ignore = self.loss_kwargs.get("ignore_index", -100)
            classes, target = partial_fc_sample(target, self.num_classes, self.sample_rate,
                                                ignore_index=ignore, generator=self.generator)
            rows = (classes.unsqueeze(1) * self.centers
                    + torch.arange(self.centers, device=classes.device)).reshape(-1)
            weight = weight.index_select(0, rows)
        return margin._fused_loss(self.spec, embeddings, weight, target, **self.loss_kwargs)

    def load_global_weight(self, weight: torch.Tensor) -> None:
        """Copy this head's rows of a full ``(num_classes * centers, embedding_dim)`` weight
        (e.g. from a single-process checkpoint) into ``self.weight``; without ``group``, all
        of it. ``weight`` is not modified."""
        full = (self.num_classes * self.centers, self.embedding_dim)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != full:
            raise _checks.ArgumentError(
                f"weight must be the full weight of shape {list(full)} (num_classes * centers, "
                f"embedding_dim), got {getattr(weight, 'shape', type(weight).__name__)}")
        rows = slice(self.class_start * self.centers, self.class_end * self.centers)
        with torch.no_grad():
            self.weight.copy_(weight[rows])

    def global_weight(self) -> torch.Tensor:
        """The full ``(num_classes * centers, embedding_dim)`` weight, detached: with
        ``group``, every rank's shard gathered in rank order (a collective: every rank
        calls it; it holds all ``num_classes`` rows on every rank)."""
        if not self._sharded:
            return self.weight.detach().clone()
        return torch.cat(distributed.gather_uneven(self.weight.detach(), self.group))

    def logits(self, embeddings: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, num_classes)`` logits; with ``target``, margin-adjusted on the target class.
        With ``group``: this rank's classes ``[class_start, class_end)``, no target."""
        if self._sharded and target is not None:
            raise _checks.ArgumentError(
                "logits(target=...) is not available with group= (the target class may live "
                "on another rank); call logits(embeddings) for this shard's plain logits")
        return margin.margin_logits(embeddings, self.weight, target, head=self.head, **self.params)

    def extra_repr(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        shard = (f", classes [{self.class_start}, {self.class_end}) of the group's"
                 if self._sharded else "")
        return (f"num_classes={self.num_classes}{shard}, embedding_dim={self.embedding_dim}"
                + (f", {params}" if params else "")
                + (f", sample_rate={self.sample_rate}" if self.sample_rate < 1 else ""))


def _xavier_caffe_(w: torch.Tensor) -> None:
    bound = math.sqrt(3.0 / w.shape[1])
    nn.init.uniform_(w, -bound, bound)


class ArcFace(_MarginHead):
    """:func:`crossent.arcface_loss` with its own weight, ``N(0, 0.01^2)`` initialised.

    ::

        z_ic = s cos theta_ic,    z_iy = s cos(theta_iy + m)

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        scale, margin, easy_margin, gradient: as :func:`crossent.arcface_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.arcface_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.ArcFace(10, 8, scale=16.0, margin=0.3)
        >>> head
        ArcFace(num_classes=10, embedding_dim=8, scale=16.0, margin=0.3)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.arcface_loss(x, head.weight, y, scale=16.0, margin=0.3))
        True
        >>> head.logits(x).shape
        torch.Size([4, 10])

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", 2019.
        An et al., "Partial FC: Training 10 Million Identities on a Single Machine", 2021.
    """

    head = "arcface"


class CosFace(_MarginHead):
    """:func:`crossent.cosface_loss` (AM-Softmax) with its own weight, Caffe xavier.

    ::

        z_ic = s cos theta_ic,    z_iy = s (cos theta_iy - m)

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        scale, margin: as :func:`crossent.cosface_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.cosface_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.CosFace(10, 8, scale=16.0, margin=0.3)
        >>> head
        CosFace(num_classes=10, embedding_dim=8, scale=16.0, margin=0.3)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.cosface_loss(x, head.weight, y, scale=16.0, margin=0.3))
        True

    References:
        Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", 2018.
    """

    head = "cosface"

    def reset_parameters(self) -> None:
        with torch.no_grad():
            _xavier_caffe_(self.weight)


class SphereFace(_MarginHead):
    """:func:`crossent.sphereface_loss` with its own weight, Caffe xavier.

    ::

        z_ic = s ||x_i|| cos theta_ic,    z_iy = s ||x_i|| psi(theta_iy)

    Call :meth:`set_annealing` per step (or rebuild) for the paper's schedule.

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        margin, scale, annealing: as :func:`crossent.sphereface_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.sphereface_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.SphereFace(10, 8, margin=2)
        >>> head
        SphereFace(num_classes=10, embedding_dim=8, margin=2)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.sphereface_loss(x, head.weight, y, margin=2))
        True
        >>> head.set_annealing(ce.anneal_lambda(100))
        >>> round(head.params["annealing"], 4)
        76.9231

    References:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", 2017.
    """

    head = "sphereface"

    def reset_parameters(self) -> None:
        with torch.no_grad():
            _xavier_caffe_(self.weight)

    def set_annealing(self, value: float) -> None:
        """Set the papers' ``lambda`` for the next steps (see :func:`crossent.anneal_lambda`)."""
        self.params["annealing"] = value
        self.spec = margin.margin_spec(self.head, **self.params)


class LargeMarginSoftmax(SphereFace):
    """:func:`crossent.large_margin_softmax_loss` with its own weight, Caffe msra ``N(0, 2/D)``.

    ::

        z_ic = s W_c . x_i,    z_iy = s ||W_y|| ||x_i|| psi(theta_iy)

    :meth:`set_annealing` sets the schedule it needs to train.

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        margin, scale, annealing: as :func:`crossent.large_margin_softmax_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.large_margin_softmax_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.LargeMarginSoftmax(10, 8, margin=2, annealing=5.0)
        >>> head
        LargeMarginSoftmax(num_classes=10, embedding_dim=8, margin=2, annealing=5.0)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.large_margin_softmax_loss(x, head.weight, y, margin=2, annealing=5.0))
        True

    References:
        Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", 2016.
    """

    head = "lsoftmax"

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / self.embedding_dim))


class CombinedMargin(_MarginHead):
    """:func:`crossent.combined_margin_loss` with its own weight, ``N(0, 0.01^2)``.

    ::

        z_ic = s cos theta_ic,    z_iy = s (cos(m1 theta_iy + m2) - m3)

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        scale, m1, m2, m3: as :func:`crossent.combined_margin_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.combined_margin_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.CombinedMargin(10, 8, scale=16.0, m2=0.3, m3=0.1)
        >>> head
        CombinedMargin(num_classes=10, embedding_dim=8, scale=16.0, m2=0.3, m3=0.1)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.combined_margin_loss(x, head.weight, y, scale=16.0, m2=0.3, m3=0.1))
        True

    References:
        Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", 2019.
    """

    head = "combined"


class SubCenterArcFace(_MarginHead):
    """:func:`crossent.subcenter_arcface_loss` with its own ``(C * centers, D)`` weight, ``N(0, 0.01^2)``.

    ::

        cos theta_ic = max_k cos(x_i, W_{c*K + k}),    then ArcFace

    Args:
        num_classes: ``C``, the number of classes (identities).
        embedding_dim: ``D``, the embedding size.
        centers, scale, margin, easy_margin, gradient: as
            :func:`crossent.subcenter_arcface_loss`.
        sample_rate: Partial FC's fraction of classes used per training step (1: all).
        generator: a ``torch.Generator`` for the Partial FC sampling.
        group: a ``torch.distributed`` process group: this rank builds and trains only its
            class shard (see the module docstring); ``None``: one process.
        device, dtype: of the weight.
        **params: also ``reduction``, ``ignore_index``, ``label_smoothing`` and the tiling
            controls of :func:`crossent.linear_cross_entropy`.
    Shape:
        embeddings ``(N, D)``, target ``(N,)``; the weight ``(C * centers, D)``; ``logits``
        ``(N, C)``.
    Returns:
        ``forward(embeddings, target)`` returns the loss, as :func:`crossent.subcenter_arcface_loss`.
    Example:
        >>> import torch, crossent as ce
        >>> _ = torch.manual_seed(0)
        >>> head = ce.SubCenterArcFace(10, 8, centers=3, scale=16.0)
        >>> head
        SubCenterArcFace(num_classes=10, embedding_dim=8, centers=3, scale=16.0)
        >>> x, y = torch.randn(4, 8), torch.tensor([1, 0, 9, 4])
        >>> torch.allclose(head(x, y), ce.subcenter_arcface_loss(x, head.weight, y, centers=3, scale=16.0))
        True
        >>> head.weight.shape
        torch.Size([30, 8])

    References:
        Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web
        Faces", 2020.
    """

    head = "subcenter_arcface"
