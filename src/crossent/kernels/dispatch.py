"""Backend choice for the fused linear cross-entropy: one ``name -> module`` table.

Tile sizes are planned in :mod:`crossent.core.tiles` (one planner, one budget table).
"""

from __future__ import annotations

import importlib
import os

import torch

from ..core.checks import ArgumentError

BACKENDS = ("torch", "triton")
_MODULES = {"torch": "crossent.kernels.torch_chunked", "triton": "crossent.kernels.triton_linear"}


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


def get_backend(name: str):
    """The backend module for a resolved name."""
    return importlib.import_module(_MODULES[name])
