"""Contrastive losses: InfoNCE, CLIP, NT-Xent (SimCLR), SupCon and SigLIP, in tiles.

- :mod:`~crossent.contrastive.front`: the losses and their modules (``ClipLoss`` and
  ``SigLipLoss`` are drop-ins for open_clip's);
- :mod:`~crossent.contrastive.problem`: the problem, options and result they share;
- :mod:`~crossent.contrastive.sharded`: the global batch across ranks (``group=``,
  gather and ring designs).
"""

from .front import (
    ClipLoss,
    InfoNCELoss,
    NTXentLoss,
    SigLipLoss,
    SupConLoss,
    clip_loss,
    info_nce,
    nt_xent,
    siglip_loss,
    supcon_loss,
)

__all__ = [
    "clip_loss",
    "info_nce",
    "nt_xent",
    "supcon_loss",
    "siglip_loss",
    "ClipLoss",
    "SigLipLoss",
    "InfoNCELoss",
    "NTXentLoss",
    "SupConLoss",
]
