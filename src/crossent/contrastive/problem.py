"""The contrastive problem: one rank's rows against its columns, the options, the result.

The data model shared by the fronts (:mod:`crossent.contrastive.front`) and the engine
across ranks (:mod:`crossent.contrastive.sharded`): a :class:`Problem` says what the
scores and targets of the local block are, :class:`Options` how to tile and where the
other ranks are, :class:`Result` the complete statistics that each loss turns into a
number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..core.reduction import accumulation_dtype
from ..core.targets import ClassIndexTarget, LabelSetTarget
from ..kernels import similarity as sim
from .engine import Statistics

DESIGNS = ("gather", "ring")


# ------------------------------------------------------------------ the problem


@dataclass
class Problem:
    """One rank's part of the matrix: local rows ``a`` against local columns ``b``.

    Row targets are given in local terms and made global by the engine, which knows
    where the local rows and columns sit in the global batch:

    - ``positive`` (``(n,)`` int64): the local column of each row's single positive
      (the diagonal, or the other view); the target is global column
      ``col_start_of_this_rank + positive``;
    - ``labels`` (``(n,)`` int64, SupCon, ``a is b``): the positives of a row are the
      other columns with its label (:class:`~crossent.core.targets.LabelSetTarget`).

    ``cols``: column statistics wanted (CLIP's text->image direction; column ``j``'s
    target is row ``j``, global indices of rows and columns coincide). ``self_offset``:
    exclude column ``row + self_offset`` (global), for self-similarity.

    Per-column terms (the sampled softmax, :mod:`crossent.retrieval`): ``col_bias``
    (``(m,)``, accumulation dtype, no gradient) is added to every score of its local
    column; ``row_ids`` (``(n,)``) and ``col_ids`` (``(m,)``, int64) exclude from row
    ``i`` every other column carrying the id of row ``i`` (accidental hits). Across ranks
    they travel with their columns (:mod:`crossent.contrastive.sharded`).
    """

    aggregate: str
    a: torch.Tensor
    b: torch.Tensor
    positive: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    cols: bool = False
    self_offset: int | None = None
    col_bias: torch.Tensor | None = None
    row_ids: torch.Tensor | None = None
    col_ids: torch.Tensor | None = None

    @property
    def acc(self) -> torch.dtype:
        return accumulation_dtype(self.a.dtype)

    def row_target(self, home_col_start: int, count: torch.Tensor | None = None):
        """The rows' target over global columns; ``count``: SupCon's positives per row."""
        if self.labels is None:
            return ClassIndexTarget.indices(self.positive + home_col_start, self.acc)
        index = torch.arange(self.a.shape[0], device=self.a.device) + home_col_start
        return LabelSetTarget(self.labels, index, count, self.labels, home_col_start)

    def block(self, row_target, row_start: int, col_start: int, num_cols: int,
              col_labels: torch.Tensor | None = None, col_bias: torch.Tensor | None = None,
              col_ids: torch.Tensor | None = None) -> sim.Block:
        """The :class:`~crossent.kernels.similarity.Block` of the local rows (global
        ``row_start``) against ``num_cols`` columns from global ``col_start``, whose
        ``col_bias`` / ``col_ids`` are given (another rank's, or all ranks' gathered) or
        else the problem's own (the local columns; across ranks the ranks agree on
        whether there are ids, and a bias is passed wherever any rank has one)."""
        if col_labels is not None:
            row_target = row_target.with_columns(col_labels, col_start)
        col_target = None
        if self.cols:
            index = torch.arange(col_start, col_start + num_cols, device=self.a.device)
            col_target = ClassIndexTarget.indices(index, self.acc)
        col_bias = self.col_bias if col_bias is None else col_bias
        col_ids = self.col_ids if col_ids is None else col_ids
        return sim.Block(self.aggregate, row_target, col_target, self.self_offset, row_start,
                         col_start, col_bias, self.row_ids if col_ids is not None else None, col_ids)


def positive_counts(labels: torch.Tensor, all_labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """SupCon's ``P_i``: columns of ``all_labels`` sharing row ``i``'s label, minus itself."""
    values, counts = torch.unique(all_labels, return_counts=True)
    where = torch.searchsorted(values, labels)
    return (counts[where] - 1).to(dtype)


@dataclass(frozen=True)
class Options:
    memory_budget: int | None = None
    tile_rows: int | None = None
    tile_cols: int | None = None
    backend: str = "auto"
    group: Any = None
    design: str = "gather"

    def plan(self, n: int, m: int):
        return sim.plan(n, m, memory_budget=self.memory_budget, tile_rows=self.tile_rows,
                        tile_cols=self.tile_cols)


@dataclass
class Result:
    """Complete (global) statistics of the local rows and, if asked, local columns."""

    stats: Statistics
    row_start: int  # global index of the first local row
    total_rows: int  # rows in the global batch
    total_cols: int  # columns in the global batch
    row_target: Any  # the rows' target (its ``mass`` for SupCon)
    scale: torch.Tensor | None = None  # the 0-d scale the statistics were taken with
