"""Backend choice: one ``(op, backend)`` table.

Tile sizes are planned in :mod:`crossent.core.tiles` (one planner, one budget table).
"""

from __future__ import annotations

import importlib
import os
import sys

import torch

from ..core.checks import ArgumentError

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
