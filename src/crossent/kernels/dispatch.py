"""Backend choice (one ``(op, backend)`` table) and tile sizes.

Tile sizes follow a memory budget: the ``rows x cols`` logit tiles (float32, times the
number of tile-sized buffers a pass keeps alive) must fit in ``memory_budget`` bytes.
Whole vocabulary rows are preferred (one pass: stats and gradients from one matmul);
when fewer than :data:`MIN_BAND_ROWS` whole rows fit, the vocabulary is tiled as well
(two passes: statistics merged over tiles, then gradients from the log-sum-exp). Tall
row bands matter on CPU, where each band re-reads and re-writes the whole ``V x H``
weight gradient.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import torch

from ..core.checks import ArgumentError

# Default bytes of logit tiles, by how the gradients are formed.
# - Scalar reductions ('mean'/'sum') form dX and dW in the forward pass, band by band; each
#   band re-reads and re-writes the whole V x H float32 weight gradient, so taller bands
#   buy time: at N=4096, H=1024, V=32000 fp32 on a 2-core CPU, 5.2 s at 32 MiB against
#   8.5 s at 8 MiB (BENCHMARKS.md).
# - reduction='none' recomputes the tiles in the backward pass, when the rest of the
#   model's activations are alive too; its tiles stay small (8 MiB keeps its peak at the
#   level of PyTorch's own chunked path).
DEFAULT_MEMORY_BUDGET = 32 << 20
DEFAULT_RECOMPUTE_MEMORY_BUDGET = 8 << 20
# On CUDA a band's fixed cost is kernel launches, so bands are taller: 256 MiB holds
# about 256 rows of a 128k vocabulary in float32, where the matmuls run at full rate
# (Liger-Kernel sizes its chunks alike). Still ~1/40 of the logits at 8192 x 128256.
CUDA_DEFAULT_MEMORY_BUDGET = 256 << 20
CUDA_DEFAULT_RECOMPUTE_MEMORY_BUDGET = 64 << 20


def default_memory_budget(device: torch.device | str, recompute: bool) -> int:
    """The tile budget used when the caller gives none (see the constants above)."""
    if torch.device(device).type == "cuda":
        return CUDA_DEFAULT_RECOMPUTE_MEMORY_BUDGET if recompute else CUDA_DEFAULT_MEMORY_BUDGET
    return DEFAULT_RECOMPUTE_MEMORY_BUDGET if recompute else DEFAULT_MEMORY_BUDGET
MIN_BAND_ROWS = 128
MIN_VOCAB_TILE = 256

BACKENDS = ("torch", "triton")
OPS = ("linear", "similarity")
# The one (op, backend) table: every score source's PyTorch engine and its Triton twin.
# - "linear": ``run(problem, plan, ...)`` (the contract of :mod:`.torch_chunked`);
# - "similarity": ``block_forward`` / ``block_backward`` (the contract of :mod:`.similarity`).
_MODULES = {
    ("linear", "torch"): "crossent.kernels.torch_chunked",
    ("linear", "triton"): "crossent.kernels.triton_linear",
    ("similarity", "torch"): "crossent.kernels.similarity",
    ("similarity", "triton"): "crossent.kernels.triton_similarity",
}


@dataclass(frozen=True)
class TilePlan:
    """``rows`` tokens by ``cols`` classes per logit tile."""

    rows: int
    cols: int

    def fused(self, num_classes: int) -> bool:
        """Whole rows per tile: statistics and gradients come from one matmul."""
        return self.cols >= num_classes


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ArgumentError(f"{name} must be a positive int or None, got {value!r}")
    return value


def plan_tiles(
    num_rows: int,
    num_classes: int,
    *,
    buffers: int = 1,
    element_size: int = 4,
    memory_budget: int | None = None,
    token_chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    recompute: bool = False,
    accumulator_width: int = 0,
    device: torch.device | str = "cpu",
) -> TilePlan:
    """Tile sizes whose ``buffers`` float tiles fit ``memory_budget`` bytes.

    Explicit ``token_chunk_size`` / ``vocab_chunk_size`` override the budget. Without a
    budget: :data:`DEFAULT_MEMORY_BUDGET`, or :data:`DEFAULT_RECOMPUTE_MEMORY_BUDGET` when
    the backward recomputes the tiles (``recompute``, i.e. ``reduction='none'``); their
    ``CUDA_`` counterparts for tensors on ``device`` CUDA.
    When the vocabulary is tiled, the ``rows x accumulator_width`` float accumulator of
    ``dx`` (``accumulator_width = H`` when ``dx`` is formed) is paid from the budget too.
    """
    budget = _positive("memory_budget", memory_budget) or default_memory_budget(device, recompute)
    token = _positive("token_chunk_size", token_chunk_size)
    vocab = _positive("vocab_chunk_size", vocab_chunk_size)
    n, v = max(num_rows, 1), max(num_classes, 1)
    elements = max(1, budget // (buffers * element_size))
    if token is not None and vocab is not None:
        return TilePlan(min(token, n), min(vocab, v))
    if vocab is not None:
        cols = min(vocab, v)
        return TilePlan(min(n, max(1, elements // cols)), cols)
    if token is not None:
        rows = min(token, n)
        return TilePlan(rows, min(v, max(1, elements // rows)))
    whole = elements // v
    if whole >= min(n, MIN_BAND_ROWS):
        return TilePlan(min(n, whole), v)
    per_row = max(1, elements // (MIN_VOCAB_TILE + accumulator_width))
    rows = min(n, MIN_BAND_ROWS, per_row)
    tile_elements = elements - rows * accumulator_width // buffers
    return TilePlan(rows, min(v, max(1, tile_elements // rows)))


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def resolve_backend(name: str, device: torch.device) -> str:
    """``'auto'``: Triton on CUDA when installed, plain PyTorch elsewhere."""
    if name == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if name not in BACKENDS:
        raise ArgumentError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    if name == "triton":
        interpreted = os.environ.get("TRITON_INTERPRET") == "1"
        if not triton_available():
            raise ArgumentError("backend='triton' needs the triton package (pip install triton)")
        if device.type != "cuda" and not interpreted:
            raise ArgumentError(
                f"backend='triton' runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1); "
                f"got tensors on {device}"
            )
    return name


def get_backend(name: str, op: str = "linear"):
    """The backend module of ``op`` (one of :data:`OPS`) for a resolved backend ``name``
    (from :func:`resolve_backend`), imported on first use (Triton only when asked for)."""
    if (op, name) not in _MODULES:
        raise ArgumentError(f"no backend {name!r} for op {op!r}: expected op in {OPS} and "
                            f"backend in {BACKENDS}")
    path = _MODULES[(op, name)]
    # an imported module from sys.modules: torch.compile traces that lookup (it refuses
    # to trace importlib), and every call after the first finds it there
    module = sys.modules.get(path)
    return module if module is not None else importlib.import_module(path)
