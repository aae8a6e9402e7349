"""CLIP's contrastive loss at work: a few gradient steps on generated image/text embeddings.

No model is downloaded. The "image" and "text" features are generated deterministically
(fixed seed): ``n`` shared latent vectors ``u_k``, seen through two different random linear
maps with independent noise, ``img_k = u_k A + e``, ``txt_k = u_k B + e'``. Pair ``k`` is
the matched (positive) pair. Two linear projection heads ``W_img``, ``W_txt`` (the part of
CLIP that maps each modality into the shared space) are trained by plain gradient descent on
CLIP's symmetric loss

    S = s * normalize(img W_img) normalize(txt W_txt)^T          (s = logit scale)
    L = ( CE(S, diag) + CE(S^T, diag) ) / 2,

computed by ``crossent.clip_loss`` from the two batches of features (both directions in
one pass over the similarity tiles). The figure follows the row softmax
``P(text j | image i)``: the diagonal (positive pairs) rises, the off-diagonal (negatives)
falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import crossent as ce

F64 = torch.float64
SEED = 0
CAPTION = ("Embeddings generated deterministically (seed 0): matched image/text features are "
           "noisy linear views of shared latent vectors, not outputs of a real CLIP model.")


@dataclass
class History:
    probs: np.ndarray   # (steps + 1, n, n) row softmax after each step (index 0: before)
    loss: np.ndarray    # (steps + 1,) symmetric CLIP loss


def generate_pairs(n: int = 6, latent: int = 8, d_img: int = 32, d_txt: int = 24,
                   noise: float = 0.5, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` matched (image, text) feature pairs: two noisy linear views of shared latents."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, latent, generator=g, dtype=F64)
    a = torch.randn(latent, d_img, generator=g, dtype=F64) / math.sqrt(latent)
    b = torch.randn(latent, d_txt, generator=g, dtype=F64) / math.sqrt(latent)
    img = u @ a + noise * torch.randn(n, d_img, generator=g, dtype=F64)
    txt = u @ b + noise * torch.randn(n, d_txt, generator=g, dtype=F64)
    return img, txt


def clip_features(img: torch.Tensor, txt: torch.Tensor, w_img: torch.Tensor,
                  w_txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``normalize(img W_img)``, ``normalize(txt W_txt)``: the two heads' unit embeddings."""
    ei = torch.nn.functional.normalize(img @ w_img, dim=1)
    et = torch.nn.functional.normalize(txt @ w_txt, dim=1)
    return ei, et


def clip_loss(ei: torch.Tensor, et: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric CLIP loss with crossent: mean of image->text and text->image CE."""
    return ce.clip_loss(ei, et, scale)


def train(steps: int, dim: int = 16, scale: float = 10.0, lr: float = 0.005,
          seed: int = SEED) -> History:
    """Gradient descent on the two projection heads; records the row softmax each step."""
    img, txt = generate_pairs(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    w_img = (torch.randn(img.shape[1], dim, generator=g, dtype=F64)
             / math.sqrt(img.shape[1])).requires_grad_(True)
    w_txt = (torch.randn(txt.shape[1], dim, generator=g, dtype=F64)
             / math.sqrt(txt.shape[1])).requires_grad_(True)
    probs, losses = [], []
    for step in range(steps + 1):
        ei, et = clip_features(img, txt, w_img, w_txt)
        loss = clip_loss(ei, et, scale)
        with torch.no_grad():  # the figure's n x n row softmax (n = 6)
            probs.append(ce.softmax(scale * ei @ et.T, dim=1).numpy())
        losses.append(loss.item())
        if step == steps:
            break
        w_img.grad = w_txt.grad = None
        loss.backward()
        with torch.no_grad():
            w_img -= lr * w_img.grad
            w_txt -= lr * w_txt.grad
    return History(np.stack(probs), np.array(losses))


def _matrix(ax, m: np.ndarray, title: str, fig: Figure) -> None:
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    n = m.shape[0]
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > 0.5 else "black")
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#2ca02c", lw=2))
    ax.set_xticks(range(n), [f"t{j + 1}" for j in range(n)])
    ax.set_yticks(range(n), [f"i{i + 1}" for i in range(n)])
    ax.set_xlabel("text j")
    ax.set_ylabel("image i")
    ax.set_title(title + "  (positives boxed)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def plot(out: Path, dpi: int, quick: bool = False) -> Path:
    """Draw the training run: probabilities over steps, row softmax before and after."""
    steps = 20 if quick else 80
    hist = train(steps)
    n = hist.probs.shape[1]
    eye = np.eye(n, dtype=bool)
    pos = hist.probs[:, eye]                       # (steps + 1, n)
    neg = hist.probs[:, ~eye].reshape(len(hist.loss), n, n - 1)
    x = np.arange(len(hist.loss))
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.3, 1, 1]})
    for k in range(n):
        ax1.plot(x, pos[:, k], color="#1f77b4", lw=0.8, alpha=0.5)
    ax1.plot(x, pos.mean(1), color="#1f77b4", lw=3, label="positive pair P(text i | image i)"
             " (thin: each pair)")
    ax1.plot(x, neg.mean((1, 2)), color="#d62728", lw=3, label="negatives, mean")
    ax1.plot(x, neg.max(2).mean(1), color="#d62728", lw=1.5, ls="--",
             label="hardest negative per row, mean")
    ax1.axhline(1 / n, color="#7f7f7f", ls=":", label=f"chance 1/{n}")
    ax1.set_xlabel("gradient step")
    ax1.set_ylabel("row-softmax probability")
    ax1.set_ylim(0, 1)
    ax1.set_title(f"(a) symmetric CLIP loss {hist.loss[0]:.3f} → {hist.loss[-1]:.3f}")
    ax1.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    ax1.grid(True, alpha=0.3)
    _matrix(ax2, hist.probs[0], "(b) P(text j | image i), step 0", fig)
    _matrix(ax3, hist.probs[-1], f"(c) after {steps} steps", fig)
    fig.suptitle(f"CLIP loss pulls the {n} positive pairs together and pushes negatives apart "
                 f"(logit scale 10, two linear heads)\n{CAPTION}", fontsize=10)
    path = Path(out) / "07_clip_training.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
