"""Figure 09: margin heads on scikit-learn's handwritten digits, with their decision margins.

Article 003 ends on the weakness of plain softmax cross-entropy (features that separate but
do not cluster) and names the margin heads that fix it. With ``W_c`` the class weights and
``theta_c`` the angle between a feature ``x`` and ``W_c``, the target logit becomes

    L-Softmax   ||W_y|| ||x|| psi(theta_y), psi ~ cos(m theta)    (Liu et al. 2016)
    AM-Softmax  s (cos theta_y - m)                              (Wang et al. 2018; CosFace)
    ArcFace     s cos(theta_y + m)                               (Deng et al. 2019)

A small network (64 pixels -> 64 -> 2) is trained on the digits bundled with scikit-learn
(1797 8x8 images, 10 classes, no download) with each head of :mod:`crossent.margin`
(the modules :class:`crossent.ArcFace` etc.), and plain softmax for reference. Each panel
shows the held-out embeddings on the unit circle, the class directions, and the decision
regions *with the margin*: the arc where class ``c`` beats every other class even with its
margin applied (:func:`crossent.margin_logits` with target ``c``) is drawn in ``c``'s
colour; the grey gaps between them are the margins. Titles give the test accuracy
(argmax of the margin-free logits).

``python examples/margin_digits.py`` runs every head (SphereFace, combined and sub-centre
too) and prints the accuracies.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure

import crossent as ce

FILENAME = "09_margins.png"
CLASSES = 10


@dataclass(frozen=True)
class HeadSpec:
    label: str
    make: Callable[[], torch.nn.Module]  # a head over (CLASSES, 2)-dim embeddings
    head: str | None  # crossent.margin head name for margin_logits; None: plain softmax
    params: dict
    anneal: bool = False  # L-Softmax / SphereFace: the papers' lambda schedule


def _spec(label, cls, head, anneal=False, **params) -> HeadSpec:
    return HeadSpec(label, lambda: cls(CLASSES, 2, **params), head, params, anneal)


#: the figure's panels (the articles' three heads and plain softmax)
FIGURE_HEADS: tuple[HeadSpec, ...] = (
    HeadSpec("softmax", lambda: ce.LinearCrossEntropyLoss(2, CLASSES, bias=True), None, {}),
    _spec("L-Softmax (m = 2)", ce.LargeMarginSoftmax, "lsoftmax", True, margin=2),
    # cos(0) - m must beat cos(36 deg) = 0.81 of the neighbouring class on a 10-class circle
    _spec("AM-Softmax (s = 10, m = 0.1)", ce.CosFace, "cosface", scale=10.0, margin=0.1),
    _spec("ArcFace (s = 10, m = 0.2)", ce.ArcFace, "arcface", scale=10.0, margin=0.2),
)

#: every head of crossent, for the example
ALL_HEADS: tuple[HeadSpec, ...] = FIGURE_HEADS + (
    _spec("SphereFace (m = 2)", ce.SphereFace, "sphereface", True, margin=2),
    _spec("combined (s = 10, 1, 0.1, 0.05)", ce.CombinedMargin, "combined", scale=10.0, m1=1.0,
          m2=0.1, m3=0.05),
    _spec("sub-centre ArcFace (K = 2)", ce.SubCenterArcFace, "subcenter_arcface", centers=2,
          scale=10.0, margin=0.2),
)


def status() -> tuple[tuple[HeadSpec, ...] | None, str]:
    """``(heads, "ok")``, or ``(None, "missing: ...")`` without scikit-learn's digits."""
    if importlib.util.find_spec("sklearn") is None:
        return None, ("missing: scikit-learn (its bundled digits data set) is not installed; "
                      "pip install scikit-learn")
    return FIGURE_HEADS, "ok"


def digits(seed: int = 0):
    """scikit-learn's 8x8 digits, scaled to [0, 1]; a stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=0.25, stratify=data.target, random_state=seed)
    return x[train], y[train], x[test], y[test]


@dataclass
class Trained:
    spec: HeadSpec
    head: torch.nn.Module
    test_embeddings: torch.Tensor
    test_target: torch.Tensor
    accuracy: float


def _logits(spec: HeadSpec, head: torch.nn.Module, emb: torch.Tensor, target=None):
    if spec.head is None:
        return head.logits(emb)
    return head.logits(emb, target)


def train(spec: HeadSpec, steps: int, seed: int = 0, data=None) -> Trained:
    """Full-batch Adam on the training digits; accuracy on the held-out quarter."""
    x, y, xt, yt = digits(seed) if data is None else data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 64-wide layers: more threads only add overhead (5x on 2 CPUs)
    try:
        return _train(spec, steps, seed, x, y, xt, yt)
    finally:
        torch.set_num_threads(threads)


def _train(spec, steps, seed, x, y, xt, yt) -> Trained:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    head = spec.make()
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=0.01)
    for step in range(steps):
        if spec.anneal:  # lambda from 100 down to 0 over the first half (the papers' idea)
            head.set_annealing(max(0.0, 100.0 * (1 - 2 * step / steps)))
        opt.zero_grad()
        head(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        emb = net(xt)
        acc = (_logits(spec, head, emb).argmax(1) == yt).float().mean().item()
    return Trained(spec, head, emb, yt, acc)


def margin_regions(trained: Trained, angles: np.ndarray) -> np.ndarray:
    """For points at ``angles`` (at the median norm of the held-out embeddings, which
    matters for softmax, L-Softmax and SphereFace): the class that wins *with its margin*
    applied (``-1`` where none does: the margin gap); plain softmax: the argmax."""
    spec, head = trained.spec, trained.head
    radius = trained.test_embeddings.norm(dim=1).median().item()
    pts = radius * torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1), dtype=torch.float32)
    with torch.no_grad():
        if spec.head is None:
            return _logits(spec, head, pts).argmax(1).numpy()
        won = np.full(len(angles), -1)
        for c in range(CLASSES):
            z = _logits(spec, head, pts, torch.full((len(pts),), c))
            others = torch.cat([z[:, :c], z[:, c + 1:]], 1).amax(1)
            won[(z[:, c] > others).numpy()] = c
        return won


def class_directions(trained: Trained) -> np.ndarray:
    """Unit class directions ``(C, 2)`` (sub-centres: every centre, ``(C*K, 2)``)."""
    w = trained.head.weight.detach().numpy()
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def draw(heads, out: Path, dpi: int, quick: bool = False, steps: int | None = None) -> Path:
    """One panel per head: test embeddings, class directions, margin regions."""
    if steps is None:
        steps = 150 if quick else 500
    data = digits()
    results = [train(spec, steps, data=data) for spec in heads]
    return plot(results, Path(out) / FILENAME, dpi)


def plot(results: list[Trained], path: Path, dpi: int) -> Path:
    import matplotlib

    colors = matplotlib.colormaps["tab10"].colors
    cols = min(len(results), 4)
    rows = -(-len(results) // cols)
    fig = Figure(figsize=(4.0 * cols, 4.3 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax in axes[len(results):]:
        ax.set_axis_off()
    angles = np.linspace(-math.pi, math.pi, 1441)
    rng = np.random.default_rng(0)
    for ax, r in zip(axes, results):
        u = r.test_embeddings.numpy()
        u = u / np.linalg.norm(u, axis=1, keepdims=True)
        radius = 0.8 + 0.08 * rng.standard_normal(len(u))
        yt = r.test_target.numpy()
        for c in range(CLASSES):
            sel = yt == c
            ax.scatter(u[sel, 0] * radius[sel], u[sel, 1] * radius[sel], s=6, alpha=0.6,
                       color=colors[c], label=str(c))
        won = margin_regions(r, angles)
        for c in range(-1, CLASSES):
            arc = np.where(won == c, 1.0, np.nan)
            ax.plot(1.08 * np.cos(angles) * arc, 1.08 * np.sin(angles) * arc, lw=5,
                    color="#b0b0b0" if c < 0 else colors[c], solid_capstyle="butt")
        k = getattr(r.head, "centers", 1)
        for i, d in enumerate(class_directions(r)):
            ax.plot([0, 1.25 * d[0]], [0, 1.25 * d[1]], color=colors[i // k], lw=1.2)
        ax.set_aspect("equal")
        ax.set_xlim(-1.35, 1.35)
        ax.set_ylim(-1.35, 1.35)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{r.spec.label}\ntest accuracy {100 * r.accuracy:.1f}%", fontsize=10)
    axes[0].legend(loc="lower left", fontsize=6, ncol=5, markerscale=2)
    fig.suptitle("Digits (scikit-learn) embedded in 2-D: held-out embeddings / ||x||, class "
                 "directions;\nouter ring: the class that wins with its margin applied, at the median "
                 "embedding norm (grey: the margin gap)", fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
