"""``crossent bench contrastive``: tiled contrastive losses against the full matrix.

Every implementation runs forward + backward on the same ``N x D`` feature pairs
(L2-normalised, float32 by default) with a learnable log-scale (and bias for SigLIP):

- ``crossent``: :func:`crossent.clip_loss` / :func:`crossent.siglip_loss` /
  :func:`crossent.nt_xent` (tiles, ``batch x tile`` memory);
- ``torch``: the formula in plain PyTorch over the whole ``N x N`` matrix (what a user
  writes: ``F.cross_entropy`` on the logits and their transpose, ``F.logsigmoid``);
- ``open_clip``: open_clip's ``ClipLoss`` / ``SigLipLoss`` (CLIP and SigLIP cases), when
  ``open_clip_torch`` is installed (its ``loss.py`` is loaded alone, see
  :func:`open_clip_loss_module`).

The peak extra memory includes the features' gradients (``2 x N x D``), which all need.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

DESCRIPTION = "contrastive losses (CLIP, SigLIP, NT-Xent): tiles against the N x N matrix"

CASES: dict[str, dict] = {
    "clip": {"loss": "clip"},
    "siglip": {"loss": "siglip"},
    "nt_xent": {"loss": "nt_xent"},
    # the tile shape as a time/memory dial (crossent only; the others ignore it)
    "clip_tiles_256x1024": {"loss": "clip", "tile_rows": 256, "tile_cols": 1024},
    "clip_tiles_512x2048": {"loss": "clip", "tile_rows": 512, "tile_cols": 2048},
    "clip_tiles_2048x8192": {"loss": "clip", "tile_rows": 2048, "tile_cols": 8192},
}
IMPLS = ("crossent", "torch", "open_clip")
BASELINE = "torch"
FLOOR = None

PRESETS = {
    "default": dict(n=4096, d=256, dtype="float32", device="cpu", cases=["clip", "siglip", "nt_xent"]),
    # the judged shape: the plain implementation would need ~4 GiB per N x N
    # float32 matrix, so only crossent runs it; compare times at cpu-both
    "cpu-judged": dict(n=32768, d=256, dtype="float32", device="cpu", cases=["clip"]),
    "cpu-both": dict(n=8192, d=256, dtype="float32", device="cpu", cases=["clip", "siglip"]),
    "gpu": dict(n=65536, d=768, dtype="bfloat16", device="cuda", cases=["clip", "siglip"]),
}


@lru_cache(maxsize=1)
def open_clip_loss_module():
    """open_clip's ``loss.py`` loaded by path, or None when open_clip is not installed.

    ``import open_clip`` runs the package's ``__init__``, which imports torchvision; the
    PyPI torchvision wheel is linked against CUDA builds of torch and fails to load
    against a CPU torch. ``loss.py`` itself imports only torch.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "loss.py"
    mod_spec = importlib.util.spec_from_file_location("_crossent_open_clip_loss", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def available(impl: str, cfg: dict) -> bool:
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        return False
    if impl == "open_clip":
        return open_clip_loss_module() is not None
    return impl in IMPLS


def flops(cfg: dict, case: dict) -> float:
    """The three ``N x N x D`` matmuls a full-matrix forward + backward needs."""
    return 6.0 * cfg["n"] ** 2 * cfg["d"]


def make_inputs(cfg: dict, case: dict, seed: int = 0):
    n, d, device = cfg["n"], cfg["d"], cfg["device"]
    dtype = getattr(torch, cfg["dtype"])
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=g), dim=1).to(device=device, dtype=dtype)
    img = img.to(device=device, dtype=dtype)
    log_scale = torch.tensor(2.659 if case["loss"] == "clip" else 2.303, device=device)
    bias = torch.tensor(-10.0, device=device)
    return {"img": img.requires_grad_(), "txt": txt.requires_grad_(),
            "log_scale": log_scale.requires_grad_(), "bias": bias.requires_grad_()}


def _torch(loss: str, img, txt, scale, bias):
    if loss == "clip":
        logits = scale * img @ txt.T
        labels = torch.arange(img.shape[0], device=img.device)
        return (F.cross_entropy(logits.float(), labels) + F.cross_entropy(logits.T.float(), labels)) / 2
    if loss == "siglip":
        logits = (scale * img @ txt.T + bias).float()
        y = 2 * torch.eye(img.shape[0], device=img.device) - 1
        return -F.logsigmoid(y * logits).sum() / img.shape[0]
    v = F.normalize(torch.cat([img, txt]).float(), dim=1)
    n2 = v.shape[0]
    logits = (v @ v.T / 0.5).fill_diagonal_(float("-inf"))
    return F.cross_entropy(logits, (torch.arange(n2, device=v.device) + n2 // 2) % n2)


def step(impl: str, inputs, cfg: dict, case: dict):
    img, txt, bias = inputs["img"], inputs["txt"], inputs["bias"]
    scale = inputs["log_scale"].exp()
    loss = case["loss"]
    if impl == "crossent":
        import crossent

        opts = {k: case.get(k) for k in ("memory_budget", "tile_rows", "tile_cols")}
        if loss == "clip":
            return crossent.clip_loss(img, txt, scale, **opts)
        if loss == "siglip":
            return crossent.siglip_loss(img, txt, scale, bias, **opts)
        return crossent.nt_xent(img, txt, temperature=0.5, **opts)
    if impl == "torch":
        return _torch(loss, img, txt, scale, bias)
    if impl == "open_clip":
        module = open_clip_loss_module()
        if loss == "clip":
            return module.ClipLoss()(img, txt, scale)
        if loss == "siglip":
            return module.SigLipLoss()(img, txt, scale, bias)
        raise ValueError("open_clip has no NT-Xent loss")
    raise ValueError(f"unknown implementation {impl!r}")
