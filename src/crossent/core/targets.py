"""Targets as (unnormalised) target distributions over classes, seen tile by tile.

Every member of the family scores a row ``z_i`` (``C`` classes) against a target
distribution ``t_i``; the loss and its gradient are::

    loss_i     = s_i * logsumexp(z_i) - sum_c t_ic z_ic         with  s_i = sum_c t_ic
    dloss_i/dz = s_i * softmax(z_i) - t_i

A target object knows ``t`` without ever materialising it as an ``N x C`` tensor; it
answers, for a tile of rows and a range of columns ``[col_start, col_start + k)``:

- ``mass``                      the row masses ``s_i``                     ``(n,)``
- ``dot(z_tile, col_start, shift)``  the partial sums ``sum_c t_ic (z_ic - shift_i)``  ``(n,)``
- ``tile_mass(col_start, k)``   the partial masses ``sum_c t_ic`` over the tile  ``(n,)``
- ``add_scaled_(g, coef, col)`` ``g += coef[:, None] * t[:, tile]``      in place
- ``rows(start, end)``          the same target for a slice of rows
- ``mean_denominator()``        PyTorch's 'mean' denominator for this kind of target

The per-row ``shift`` (a reference near the row's scores, e.g. its max; None: 0) is
subtracted before the products are summed: the statistics are carried relative to it,
so that ``loss_i = s_i (lse_i - shift_i) - sum_c t_ic (z_ic - shift_i)`` never subtracts
two large numbers (:mod:`crossent.core.stats`).

Two kinds (PyTorch's ``cross_entropy`` semantics, label smoothing ``eps`` over ``C``
classes, class weight ``w`` (all ones when absent), ``W = sum_c w_c``):

- :class:`ClassIndexTarget`: ``t_ic = [y_i != ignore] * ((1-eps) w_{y_i} [c = y_i] + eps/C w_c)``;
  'mean' divides by ``sum_i [y_i != ignore] w_{y_i}``.
- :class:`ClassProbTarget`: ``t_ic = w_c ((1-eps) q_ic + eps/C)``; 'mean' divides by the
  number of rows.

Contrastive losses (:mod:`crossent.contrastive`) see the columns of a similarity matrix as
the classes: their targets are :meth:`ClassIndexTarget.indices` (the diagonal, or the
other view, one column per row) and :class:`LabelSetTarget` (SupCon's same-label columns).

Szegedy et al., "Rethinking the Inception Architecture for Computer Vision" (2016), for
label smoothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClassIndexTarget:
    """Class-index targets ``y`` (``(n,)`` int64), one row of ``t`` per index."""

    index: torch.Tensor  # (n,) int64, ignore_index replaced by 0 (a shard: local, or -1)
    valid: torch.Tensor  # (n,) bool, y != ignore_index
    target_weight: torch.Tensor  # (n,) acc dtype, w[y] on valid rows, 0 elsewhere
    mass: torch.Tensor  # (n,) acc dtype, s_i
    weight: torch.Tensor | None  # (C,) acc dtype or None (a shard: its slice)
    num_classes: int  # C, all classes (label smoothing spreads eps / C)
    label_smoothing: float

    @classmethod
    def build(
        cls,
        target: torch.Tensor,
        num_classes: int,
        *,
        weight: torch.Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        dtype: torch.dtype,
        col_offset: int = 0,
        total_classes: int | None = None,
    ) -> "ClassIndexTarget":
        """The target of ``num_classes`` classes, or of one *class shard*.

        A shard (``col_offset``/``total_classes`` given, as in vocabulary-parallel
        cross-entropy) holds columns ``[col_offset, col_offset + num_classes)`` of
        ``total_classes``; ``target`` has global class indices and ``weight`` the shard's
        slice. Then ``index`` is shard-local (-1, never a column, where the class lives in
        another shard or the row is ignored), ``target_weight``, ``mass`` and ``mean_denominator()`` are
        this shard's parts (their sums over the shards are the whole problem's), and label
        smoothing spreads ``eps / total_classes`` per class.
        """
        index = target.reshape(-1).long()
        valid = index != ignore_index
        total = num_classes if total_classes is None else int(total_classes)
        if col_offset == 0 and total == num_classes:
            safe = torch.where(valid, index, torch.zeros_like(index))
            here, gather_at = valid, safe
        else:  # -1 (never a column) where the class is elsewhere or the row is ignored
            local = index - col_offset
            here = valid & (local >= 0) & (local < num_classes)
            safe = torch.where(here, local, torch.full_like(local, -1))
            gather_at = safe.clamp(0, max(num_classes - 1, 0))
        if weight is not None:
            weight = weight.to(dtype)
            target_weight = weight.gather(0, gather_at) * here
            total_weight = weight.sum()
        else:
            target_weight = here.to(dtype)
            total_weight = float(num_classes)
        eps = float(label_smoothing)
        mass = (1.0 - eps) * target_weight
        if eps:
            mass = mass + valid.to(dtype) * (eps / total * total_weight)
        return cls(safe, valid, target_weight, mass, weight, total, eps)

    @classmethod
    def indices(cls, index: torch.Tensor, dtype: torch.dtype) -> "ClassIndexTarget":
        """One target column per row, no weight, no smoothing, none ignored: ``t_ic =
        [c = index_i]``. Indices may lie outside any given tile or block of columns (a
        contrastive row's positive on another rank); they are then simply not seen there."""
        index = index.reshape(-1).long()
        ones = torch.ones(index.shape, dtype=dtype, device=index.device)
        valid = torch.ones(index.shape, dtype=torch.bool, device=index.device)
        return cls(index, valid, ones, ones, None, 0, 0.0)

    def rows(self, start: int, end: int) -> "ClassIndexTarget":
        return ClassIndexTarget(
            self.index[start:end],
            self.valid[start:end],
            self.target_weight[start:end],
            self.mass[start:end],
            self.weight,
            self.num_classes,
            self.label_smoothing,
        )

    def _local(self, col_start: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of each row's class inside the tile, and whether it falls in the tile."""
        local = self.index - col_start
        in_tile = self.valid & (local >= 0) & (local < width)
        return local.clamp(0, max(width - 1, 0)), in_tile

    def scores(self, z: torch.Tensor, col_start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z_i[y_i], in_tile_i)``: each row's score at its target column of a tile ``z``
        ``(n, k)`` of columns ``[col_start, col_start + k)``, and whether the column is in
        the tile (and the row not ignored); the score is arbitrary where it is not. The one
        place the target column is gathered."""
        local, in_tile = self._local(col_start, z.shape[1])
        return z.gather(1, local.unsqueeze(1)).squeeze(1), in_tile

    def dot(self, z: torch.Tensor, col_start: int = 0,
            shift: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_{c in tile} t_ic (z_ic - shift_i)`` for a tile ``z`` of shape ``(n, k)``.

        Without label smoothing the shift costs nothing (one picked score per row); with
        it, pass a tile already shifted (``shift=None``) where one is at hand: here the
        smoothing share forms ``z - shift`` in a temporary."""
        width = z.shape[1]
        picked, in_tile = self.scores(z, col_start)
        if shift is not None:
            picked = picked - shift
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        out = torch.where(in_tile, (1.0 - self.label_smoothing) * self.target_weight * picked, zero)
        if self.label_smoothing:
            if shift is not None:
                z = z - shift.unsqueeze(1)
            if self.weight is None:
                spread = z.sum(1)
            else:
                spread = z @ self.weight[col_start:col_start + width].to(z.dtype)
            out = out + torch.where(
                self.valid, (self.label_smoothing / self.num_classes) * spread, zero
            )
        return out

    def tile_mass(self, col_start: int, width: int) -> torch.Tensor:
        """``sum_{c in tile} t_ic`` for columns ``[col_start, col_start + width)``: ``(n,)``
        work (the tile's share of the class weights is one sum over ``width`` classes)."""
        local, in_tile = self._local(col_start, width)
        out = in_tile * ((1.0 - self.label_smoothing) * self.target_weight)
        if self.label_smoothing:
            if self.weight is None:
                share = float(width)
            else:
                share = self.weight[col_start:col_start + width].sum()
            out = out + self.valid.to(out.dtype) * (self.label_smoothing / self.num_classes * share)
        return out

    def add_scaled_(self, grad: torch.Tensor, coef: torch.Tensor, col_start: int = 0,
                    grad_scale: torch.Tensor | None = None) -> None:
        """``grad += coef[:, None] * t[:, col_start:col_start + k]`` in place; with
        ``grad_scale`` (``(n,)``) ``grad = grad_scale[:, None] * grad + coef[:, None] * t``
        (unweighted label smoothing: one pass over ``grad`` for both)."""
        width = grad.shape[1]
        local, in_tile = self._local(col_start, width)
        spread = None
        if self.label_smoothing:
            spread = (coef * self.valid * (self.label_smoothing / self.num_classes)).to(grad.dtype)
        if grad_scale is not None:
            scale = grad_scale.to(grad.dtype).unsqueeze(1)
            if spread is not None and self.weight is None:
                torch.addcmul(spread.unsqueeze(1), grad, scale, out=grad)
                spread = None
            else:
                grad.mul_(scale)
        scaled = torch.where(
            in_tile, coef * ((1.0 - self.label_smoothing) * self.target_weight), 0.0
        ).to(grad.dtype)
        grad.scatter_add_(1, local.unsqueeze(1), scaled.unsqueeze(1))
        if spread is not None:
            if self.weight is None:
                grad.add_(spread.unsqueeze(1))
            else:
                w = self.weight[col_start:col_start + width].to(grad.dtype)
                grad.addcmul_(spread.unsqueeze(1), w.unsqueeze(0))

    # Products with the whole target matrix (all classes), without forming it: the
    # fused linear path multiplies t into the matmuls' operands rather than into a tile.
    def _picked(self, coef: torch.Tensor) -> torch.Tensor:
        """``coef_i`` times row ``i``'s one-hot weight, ``(1 - eps) w_{y_i}`` (0 when ignored)."""
        return coef * ((1.0 - self.label_smoothing) * self.target_weight)

    def _spread(self, coef: torch.Tensor) -> torch.Tensor | None:
        """``coef_i`` times row ``i``'s smoothing share per class weight, ``eps / C``."""
        if not self.label_smoothing:
            return None
        return coef * self.valid * (self.label_smoothing / self.num_classes)

    def rows_mm(self, coef: torch.Tensor, mat: torch.Tensor,
                class_mix: torch.Tensor | None) -> torch.Tensor:
        """``(coef[:, None] * t) @ mat`` for ``mat`` ``(C, H)``, one row per class:
        ``mat``'s target rows, plus with label smoothing ``class_mix = w^T mat`` (the
        column sums of ``mat`` when unweighted) spread over the row. ``(n, H)``."""
        out = mat.index_select(0, self.index.clamp(min=0)).mul_(self._picked(coef).to(mat.dtype).unsqueeze(1))
        spread = self._spread(coef)
        if spread is not None:
            out.addr_(spread.to(mat.dtype), class_mix)
        return out

    def cols_mm_(self, out: torch.Tensor, coef: torch.Tensor, mat: torch.Tensor) -> torch.Tensor | None:
        """``out += (coef[:, None] * t)^T @ mat`` for ``mat`` ``(n, H)`` and ``out``
        ``(C, H)``, except for label smoothing's share, which is ``w (x) u`` (every class
        row at once): ``u`` ``(H,)`` is returned to be added once for many calls (None
        without smoothing)."""
        out.index_add_(0, self.index.clamp(min=0), mat * self._picked(coef).to(mat.dtype).unsqueeze(1))
        spread = self._spread(coef)
        return None if spread is None else spread.to(mat.dtype) @ mat

    def mean_denominator(self) -> torch.Tensor:
        return self.target_weight.sum()


@dataclass
class ClassProbTarget:
    """Class-probability targets ``q`` (``(n, C)``), PyTorch's soft-label semantics."""

    probs: torch.Tensor  # (n, C), the caller's dtype (a view of the caller's tensor)
    weight: torch.Tensor | None  # (C,) acc dtype or None
    mass: torch.Tensor  # (n,) acc dtype
    label_smoothing: float
    dtype: torch.dtype
    num_classes: int | None = None  # a class shard's total class count (None: probs' width)

    @classmethod
    def build(
        cls,
        probs: torch.Tensor,
        *,
        weight: torch.Tensor | None,
        label_smoothing: float,
        dtype: torch.dtype,
        num_classes: int | None = None,
    ) -> "ClassProbTarget":
        """``num_classes``: for a class shard (``probs`` and ``weight`` its columns), the
        total number of classes; ``mass`` is then the shard's part of the row masses."""
        width = probs.shape[1]
        total = width if num_classes is None else int(num_classes)
        eps = float(label_smoothing)
        q = probs.detach().to(dtype)
        if weight is not None:
            weight = weight.to(dtype)
            mass = (1.0 - eps) * (q @ weight) + eps / total * weight.sum()
        elif total == width:
            mass = (1.0 - eps) * q.sum(1) + eps
        else:
            mass = (1.0 - eps) * q.sum(1) + eps * width / total
        return cls(probs.detach(), weight, mass, eps, dtype, None if total == width else total)

    @property
    def valid(self) -> torch.Tensor:
        return torch.ones(self.probs.shape[0], dtype=torch.bool, device=self.probs.device)

    def rows(self, start: int, end: int) -> "ClassProbTarget":
        return ClassProbTarget(
            self.probs[start:end], self.weight, self.mass[start:end], self.label_smoothing,
            self.dtype, self.num_classes,
        )

    def tile(self, col_start: int, width: int) -> torch.Tensor:
        """``t[:, col_start:col_start + width]`` in the accumulation dtype."""
        num_classes = self.num_classes or self.probs.shape[1]
        eps = self.label_smoothing
        t = self.probs[:, col_start:col_start + width].to(self.dtype)
        if eps:
            t = (1.0 - eps) * t + eps / num_classes
        if self.weight is not None:
            t = t * self.weight[col_start:col_start + width]
        return t

    def dot(self, z: torch.Tensor, col_start: int = 0,
            shift: torch.Tensor | None = None) -> torch.Tensor:
        """Row-wise ``sum_c t_ic (z_ic - shift_i)`` as a batched ``(1 x k) @ (k x 1)``
        product: no ``n x k`` product tensor is formed (``z - shift`` is, when a shift is
        given: pass a shifted tile where one is at hand)."""
        t = self.tile(col_start, z.shape[1]).to(z.dtype)
        if shift is not None:
            z = z - shift.unsqueeze(1)
        return torch.bmm(t.unsqueeze(1), z.unsqueeze(2)).reshape(-1)

    def tile_mass(self, col_start: int, width: int) -> torch.Tensor:
        """``sum_{c in tile} t_ic``: the row masses for the whole width, else one pass over
        the tile of the target."""
        if col_start == 0 and width == self.probs.shape[1]:
            return self.mass
        return self.tile(col_start, width).sum(1)

    def add_scaled_(self, grad: torch.Tensor, coef: torch.Tensor, col_start: int = 0,
                    grad_scale: torch.Tensor | None = None) -> None:
        """``grad = grad_scale[:, None] * grad + coef[:, None] * t`` (``grad_scale`` None: 1)."""
        if grad_scale is not None:
            grad.mul_(grad_scale.to(grad.dtype).unsqueeze(1))
        t = self.tile(col_start, grad.shape[1]).to(grad.dtype)
        grad.addcmul_(coef.to(grad.dtype).unsqueeze(1), t)

    def grad_probs(
        self, z: torch.Tensor, grad_dot: torch.Tensor, grad_mass: torch.Tensor, col_start: int = 0,
        shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gradient w.r.t. ``q`` of ``grad_dot . dot + grad_mass . mass`` on a tile, for
        ``dot = sum_c t_ic (z_ic - shift_i)``.

        ``d t_ic / d q_ic = (1 - eps) w_c``, so the result is
        ``(1 - eps) w_c (grad_dot_i (z_ic - shift_i) + grad_mass_i)``.
        """
        width = z.shape[1]
        if shift is not None:
            z = z - shift.unsqueeze(1)
        g = grad_dot.unsqueeze(1) * z + grad_mass.unsqueeze(1)
        g = g * (1.0 - self.label_smoothing)
        if self.weight is not None:
            g = g * self.weight[col_start:col_start + width]
        return g

    def mean_denominator(self) -> torch.Tensor:
        return torch.tensor(float(self.probs.shape[0]), dtype=self.dtype, device=self.probs.device)


@dataclass
class LabelSetTarget:
    """Supervised-contrastive targets: row ``i`` puts equal weight on every column ``j``
    with the same label, except its own column (Khosla et al., "Supervised Contrastive
    Learning", 2020)::

        t_ij = [label_i = label_j] [j != self_i] / max(P_i, 1),    P_i = number of such j

    so ``mass_i = [P_i > 0]`` (an anchor without positives has an all-zero target).
    Columns are addressed by global index: ``col_labels`` are the labels of columns
    ``[col_labels_start, col_labels_start + len(col_labels))`` (a block of a larger set),
    and ``P_i`` (over all columns) is computed by the caller and given as ``count``.
    """

    labels: torch.Tensor  # (n,) int64, the rows' labels
    self_index: torch.Tensor  # (n,) int64, global column index of each row itself (-1: none)
    count: torch.Tensor  # (n,) acc dtype, P_i over all columns
    col_labels: torch.Tensor  # (m,) int64, labels of a block of columns
    col_labels_start: int = 0

    @property
    def mass(self) -> torch.Tensor:
        return (self.count > 0).to(self.count.dtype)

    @property
    def coef(self) -> torch.Tensor:
        return 1.0 / self.count.clamp(min=1.0)

    def rows(self, start: int, end: int) -> "LabelSetTarget":
        return LabelSetTarget(self.labels[start:end], self.self_index[start:end],
                              self.count[start:end], self.col_labels, self.col_labels_start)

    def with_columns(self, col_labels: torch.Tensor, col_labels_start: int) -> "LabelSetTarget":
        """The same rows against another block of columns."""
        return LabelSetTarget(self.labels, self.self_index, self.count, col_labels, col_labels_start)

    def _mask(self, col_start: int, width: int) -> torch.Tensor:
        """``(n, width)`` bool: column ``col_start + c`` is a positive of row ``i``."""
        lo = col_start - self.col_labels_start
        cols = self.col_labels[lo:lo + width]
        index = torch.arange(col_start, col_start + width, device=cols.device)
        return (self.labels.unsqueeze(1) == cols.unsqueeze(0)) & (
            index.unsqueeze(0) != self.self_index.unsqueeze(1))

    def dot(self, z: torch.Tensor, col_start: int = 0,
            shift: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._mask(col_start, z.shape[1])
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        if shift is not None:
            z = z - shift.unsqueeze(1)
        # where, not a product: an excluded self column holds -inf, and 0 * -inf is NaN.
        return torch.where(mask, z, zero).sum(1) * self.coef.to(z.dtype)

    def tile_mass(self, col_start: int, width: int) -> torch.Tensor:
        """``sum_{c in tile} t_ic``: the positives among the tile's columns, times ``1 / P_i``."""
        mask = self._mask(col_start, width)
        return mask.sum(1).to(self.count.dtype) * self.coef

    def add_scaled_(self, grad: torch.Tensor, coef: torch.Tensor, col_start: int = 0) -> None:
        mask = self._mask(col_start, grad.shape[1])
        grad.addcmul_(mask, (coef * self.coef).to(grad.dtype).unsqueeze(1))

    def mean_denominator(self) -> torch.Tensor:
        return torch.tensor(float(self.labels.shape[0]), dtype=self.count.dtype,
                            device=self.count.device)


Target = ClassIndexTarget | ClassProbTarget | LabelSetTarget
