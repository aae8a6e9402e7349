"""Tile sizes and row chunks: one planner under one table of memory budgets.

Every streaming pass of crossent walks a ``rows x cols`` score matrix it never holds
whole: the logits of the fused linear cross-entropy and of the margin heads, the
similarity scores of the contrastive losses, the given logits of
:func:`crossent.cross_entropy`, the rows of a weight. The pieces it holds at once are
sized from a budget in bytes, looked up in :data:`BUDGETS` by *what is tiled* and the
device type (or given by the caller as ``memory_budget``)::

    elements = budget // (buffers * element_size)       floats in one tile

- :func:`plan_tiles`: ``rows x cols`` tiles of which ``buffers`` float buffers are alive
  at once (plus, when the columns are split, a ``rows x accumulator_width`` accumulator
  paid from the same budget). Two shapes: *whole rows first* (the fused linear
  cross-entropy and the margin heads: one pass when at least :data:`MIN_BAND_ROWS` whole
  rows fit, else bands of at most :data:`MIN_BAND_ROWS` rows over column tiles of at least
  about :data:`MIN_VOCAB_TILE`), or *wide tiles* (``aspect=k``, the similarity tiles:
  ``k`` times wider than tall, at most :data:`WIDE_MAX_ROWS` rows). Explicit tile sizes
  override the budget.
- :func:`chunk_rows` / :func:`row_chunks`: row chunks of ``row_elements`` float32 values
  each, as many rows as the budget holds (the given-logits statistics, the target scores
  recomputed by the class-parallel linear path, the weight-norm passes of the margin heads).

A budget below :func:`min_memory_budget` (one tile of :data:`MIN_VOCAB_TILE` floats per
buffer, plus one accumulator row) raises :class:`~crossent.core.checks.ArgumentError`:
smaller tiles cost a dozen kernel launches for a handful of products each (1 x 1 tiles
made a 64 x 256 fused backward take 10 s instead of 2 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from .checks import ArgumentError

__all__ = [
    "BUDGETS",
    "MIN_BAND_ROWS",
    "MIN_VOCAB_TILE",
    "WIDE_MAX_ROWS",
    "TilePlan",
    "default_budget",
    "min_memory_budget",
    "plan_tiles",
    "chunk_rows",
    "row_chunks",
]

# Bytes, by (what is tiled, device type); devices other than CUDA use the "cpu" entries.
BUDGETS: dict[tuple[str, str], int] = {
    # Fused linear cross-entropy, scalar reductions ('mean'/'sum'): dX and dW are formed in
    # the forward pass, band by band; each band re-reads and re-writes the whole V x H
    # float32 weight gradient, so taller bands buy time: at N=4096, H=1024, V=32000 fp32 on
    # a 2-core CPU, 5.2 s at 32 MiB against 8.5 s at 8 MiB (BENCHMARKS.md).
    ("linear", "cpu"): 32 << 20,
    # On CUDA a band's fixed cost is kernel launches, so bands are taller: 256 MiB holds
    # about 256 rows of a 128k vocabulary in float32, where the matmuls run at full rate
    # (Liger-Kernel sizes its chunks alike). Still ~1/40 of the logits at 8192 x 128256.
    ("linear", "cuda"): 256 << 20,
    # reduction='none' (fused linear and margin heads alike) recomputes the tiles in the
    # backward pass, when the rest of the model's activations are alive too; its tiles
    # stay small (8 MiB keeps its peak at the level of PyTorch's own chunked path).
    ("linear_recompute", "cpu"): 8 << 20,
    ("linear_recompute", "cuda"): 64 << 20,
    # Margin heads, scalar reductions: small batches and very many classes. 128 MiB lets a
    # 512-row batch over 100,000 classes take whole rows (one pass, three matmuls instead
    # of four); at 1,000,000 classes the peak stays about 134 MiB above the weight
    # gradient (BENCHMARKS.md).
    ("margin", "cpu"): 128 << 20,
    # on CUDA: whole rows of a million classes for a 512-row batch in one pass (2 GiB)
    ("margin", "cuda"): 2 << 30,
    # Similarity tiles of the contrastive losses: 1024 x 4096 float32 tiles, three buffers.
    # Smaller tiles (256 x 1024) keep the exponentials in cache and ran a little faster on
    # an idle 2-core CPU, but every tile costs a dozen multi-threaded kernel launches, and
    # when the cores are shared each launch's thread barrier can wait for a descheduled
    # thread: at batch 8192 small tiles then ran 5x slower than the full-matrix formula
    # (BENCHMARKS.md). Fewer, larger tiles are robust to that; memory stays batch x tile
    # (under 0.3 GiB at batch 32768, dim 256). Not tuned separately on CUDA.
    ("similarity", "cpu"): 48 << 20,
    ("similarity", "cuda"): 48 << 20,
    # Row chunks of given logits (crossent.cross_entropy and the losses on logits), 1 << 20
    # float32 elements on CPU: a few MiB that stay in cache between the passes over a chunk
    # (4 MiB measured best at N=4096, C=32000); on GPUs large chunks (1 << 26 elements),
    # so that launches are few.
    ("rows", "cpu"): 4 << 20,
    ("rows", "cuda"): 256 << 20,
    # Weight-norm passes of the margin heads (the norms of a half W, and the projection
    # of dW onto the sphere): 65,536 rows of W per chunk whatever their width, counted
    # as one float32 (the norm) per row, i.e. chunk_rows(C, 1, "weight_norms", device).
    ("weight_norms", "cpu"): (1 << 16) * 4,
    ("weight_norms", "cuda"): (1 << 16) * 4,
    # Per-token log-probabilities and entropy fused with the output layer
    # (crossent.linear_token_log_probs): tiles recomputed in the backward like
    # 'linear_recompute', two buffers with the entropy, and taller bands pay: at N=512,
    # H=1024, V=32000 fp32 on a busy 2-core CPU, forward + backward through both outputs
    # took 4.9 s at 16 MiB, 3.9 s at 64 MiB, 3.1 s at 256 MiB (whole rows: 220 of a 152k
    # vocabulary). At N=4096, H=1024, V=151936 (an otherwise idle 2-core Xeon) the four
    # matmuls dominate, and taller bands make them faster: the logits' matmul took 6.0 s in
    # bands of 220 rows (256 MiB), 4.8 s in bands of 880 (1 GiB); forward + backward
    # through both outputs, medians 24.7 s at 256 MiB and 22.6 s at 1 GiB. 1 GiB is 0.09x of
    # those logits (11.9 GB with their log-softmax); TRL's buffer is 512 MiB.
    ("logprobs", "cpu"): 1 << 30,
    ("logprobs", "cuda"): 128 << 20,
    # Fused distillation (crossent.distill): both heads' tiles and two scratch tiles (4
    # buffers with a dense teacher). Whole rows of 128 tokens at a 152k vocabulary fit
    # (one pair of matmuls per band, no recompute): 320 MiB, about 0.03x of the two heads'
    # logits with their log-softmaxes at 4096 tokens (10 GB).
    ("distill", "cpu"): 320 << 20,
    ("distill", "cuda"): 1 << 30,
}

#: Whole rows are tiled only when at least this many fit (else bands of this many rows,
#: at most, over column tiles): tall bands matter on CPU, where each band re-reads and
#: re-writes the whole ``V x H`` weight gradient.
MIN_BAND_ROWS = 128
#: Columns of a tile at least (when the budget holds one accumulator row besides); also
#: the floats per buffer of the smallest tile a budget must hold (:func:`min_memory_budget`).
MIN_VOCAB_TILE = 256
#: Rows of a wide (similarity) tile at most: 1024 x 4096 at the similarity budget.
WIDE_MAX_ROWS = 1024


@dataclass(frozen=True)
class TilePlan:
    """``rows`` tokens by ``cols`` classes per tile."""

    rows: int
    cols: int

    def fused(self, num_classes: int) -> bool:
        """Whole rows per tile: statistics and gradients come from one matmul."""
        return self.cols >= num_classes


def _device_type(device: torch.device | str) -> str:
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return "cuda" if kind == "cuda" else "cpu"


def default_budget(kind: str, device: torch.device | str = "cpu") -> int:
    """Bytes of :data:`BUDGETS` for ``kind`` on ``device`` (CUDA's entry on CUDA, else CPU's)."""
    return BUDGETS[kind, _device_type(device)]


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"{name} must be a positive int or None, got {value!r}")
    return value


def min_memory_budget(buffers: int = 1, *, element_size: int = 4,
                      accumulator_width: int = 0) -> int:
    """The smallest ``memory_budget`` accepted: one tile of :data:`MIN_VOCAB_TILE` floats
    in each of the ``buffers`` buffers, plus one row of the accumulator::

        min_memory_budget = element_size * (buffers * MIN_VOCAB_TILE + accumulator_width)

    At that budget the whole-rows planner makes one-row tiles of ``min(C, 256)`` columns
    and the wide planner 8 x 32 tiles; below it tiles shrink towards 1 x 1, and each
    costs a dozen kernel launches for a handful of products. The rule does not depend on
    the problem's size, so ranks with different shards agree on it.
    """
    return element_size * (buffers * MIN_VOCAB_TILE + accumulator_width)


def plan_tiles(
    num_rows: int,
    num_cols: int,
    *,
    kind: str,
    device: torch.device | str = "cpu",
    buffers: int = 1,
    element_size: int = 4,
    memory_budget: int | None = None,
    tile_rows: int | None = None,
    tile_cols: int | None = None,
    accumulator_width: int = 0,
    aspect: int | None = None,
    names: tuple[str, str] = ("token_chunk_size", "vocab_chunk_size"),
) -> TilePlan:
    """Tile sizes whose ``buffers`` float tiles (and accumulator) fit ``memory_budget`` bytes.

    With ``elements = budget // (buffers * element_size)`` floats per tile:

    - explicit ``tile_rows`` and/or ``tile_cols`` win (clipped to the problem); the other
      side takes what the budget leaves (``elements // side``, at least 1);
    - whole rows first (``aspect=None``): ``min(N, elements // C)`` whole rows when at least
      ``min(N, MIN_BAND_ROWS)`` fit; else ``rows = min(N, MIN_BAND_ROWS, elements //
      (MIN_VOCAB_TILE + A))`` (at least 1) and ``cols = min(C, (elements - rows * A //
      buffers) // rows)``, the ``rows x A`` float accumulator (``A = accumulator_width``,
      ``H`` when the fused linear path forms ``dx`` over column tiles) paid from the budget;
    - wide tiles (``aspect=k``, similarity): ``rows = min(WIDE_MAX_ROWS, isqrt(elements //
      k))`` (at least 1), ``cols = elements // rows``, both clipped to the problem.

    Args:
        num_rows, num_cols: the ``N x C`` score matrix (zero is treated as one).
        kind: the :data:`BUDGETS` entry used when ``memory_budget`` is None.
        device: picks the CUDA or the CPU entry.
        buffers: tile-sized float buffers a pass keeps alive.
        element_size: bytes per float (4: tiles are float32 whatever the input dtype).
        memory_budget: bytes; at least :func:`min_memory_budget` ``(buffers, element_size,
            accumulator_width)``, else :class:`~crossent.core.checks.ArgumentError`.
        tile_rows, tile_cols: explicit tile sizes, positive ints (small ones are legal).
        accumulator_width: floats per row of an accumulator kept while columns are split.
        aspect: None for whole rows first, ``k`` for tiles ``k`` times wider than tall.
        names: the caller's names of ``tile_rows`` / ``tile_cols``, for error messages.

    Returns:
        A :class:`TilePlan` with ``1 <= rows <= max(N, 1)`` and ``1 <= cols <= max(C, 1)``.
    """
    budget = _positive("memory_budget", memory_budget)
    rows = _positive(names[0], tile_rows)
    cols = _positive(names[1], tile_cols)
    if budget is None:
        budget = default_budget(kind, device)
    else:
        least = min_memory_budget(buffers, element_size=element_size,
                                  accumulator_width=accumulator_width)
        if budget < least:
            raise ArgumentError(
                f"memory_budget must be at least {least} bytes (one tile of {MIN_VOCAB_TILE} "
                f"floats in each of {buffers} buffer(s), {element_size} bytes each"
                + (f", plus a {accumulator_width}-float accumulator row" if accumulator_width
                   else "")
                + f"), got {budget}")
    n, c = max(num_rows, 1), max(num_cols, 1)
    elements = max(1, budget // (buffers * element_size))
    if aspect is not None and rows is None and cols is None:
        rows = max(1, min(WIDE_MAX_ROWS, math.isqrt(elements // aspect)))
    if rows is not None and cols is not None:
        return TilePlan(min(rows, n), min(cols, c))
    if cols is not None:
        cols = min(cols, c)
        return TilePlan(min(n, max(1, elements // cols)), cols)
    if rows is not None:
        rows = min(rows, n)
        return TilePlan(rows, min(c, max(1, elements // rows)))
    whole = elements // c
    if whole >= min(n, MIN_BAND_ROWS):
        return TilePlan(min(n, whole), c)
    per_row = max(1, elements // (MIN_VOCAB_TILE + accumulator_width))
    rows = min(n, MIN_BAND_ROWS, per_row)
    tile_elements = elements - rows * accumulator_width // buffers
    return TilePlan(rows, min(c, max(1, tile_elements // rows)))


def chunk_rows(num_rows: int, row_elements: int, kind: str,
               device: torch.device | str = "cpu") -> int:
    """Rows per chunk: as many rows of ``row_elements`` float32 values as fit the
    :data:`BUDGETS` entry ``kind``::

        chunk_rows = max(1, min(num_rows, (budget // 4) // max(row_elements, 1)))

    (counted in float32 elements whatever the dtype, so float64 chunks take twice the bytes).
    """
    elements = default_budget(kind, device) // 4
    return max(1, min(num_rows, elements // max(row_elements, 1)))


def row_chunks(num_rows: int, row_elements: int, kind: str,
               device: torch.device | str = "cpu") -> Iterator[tuple[int, int]]:
    """``(start, end)`` of consecutive chunks of :func:`chunk_rows` rows covering ``num_rows``."""
    step = chunk_rows(num_rows, row_elements, kind, device)
    for start in range(0, num_rows, step):
        yield start, min(start + step, num_rows)
