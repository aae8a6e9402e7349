"""Decision margins of L-Softmax, AM-Softmax and ArcFace on a 2-D toy problem (plug-in).

Article 003 ends on the weakness of plain softmax cross-entropy (features that separate but
do not cluster) and names the margin heads that fix it. With ``W_c`` the class weights and
``theta_c`` the angle between a feature ``x`` and ``W_c``, the target logit becomes

    L-Softmax   ||W_y|| ||x|| cos(m theta_y)        (Liu et al. 2016, m an integer)
    AM-Softmax  s (cos theta_y - m)                 (Wang et al. 2018; CosFace)
    ArcFace     s cos(theta_y + m)                  (Deng et al. 2019)

and the other logits stay ``||W_c|| ||x|| cos theta_c`` (L-Softmax) or ``s cos theta_c``.

**Status.** crossent's margin heads (``crossent.margin``) do not exist yet, so
:func:`status` reports the figure as missing and the tour draws nothing rather than a
stand-in. When the module lands, :data:`HEADS` names the callables this figure expects,
each used as ``logits = fn(features, weight, target)`` (features ``[N, 2]``, class weights
``[C, 2]``, int64 targets ``[N]``); adapt the names/keyword arguments here in one place if
the module's API differs. :func:`draw` then trains a tiny 2-D feature extractor with each
head (plus a no-margin cosine softmax for reference) and plots the learned features on the
unit circle with the class directions, where the margins show as empty angular gaps.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.figure import Figure

import crossent as ce

Head = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

#: figure label -> (attribute of crossent.margin, keyword arguments)
HEADS: dict[str, tuple[str, dict]] = {
    "L-Softmax (m = 2)": ("l_softmax_logits", {"margin": 2}),
    "AM-Softmax (s = 10, m = 0.35)": ("am_softmax_logits", {"scale": 10.0, "margin": 0.35}),
    "ArcFace (s = 10, m = 0.5)": ("arcface_logits", {"scale": 10.0, "margin": 0.5}),
}
FILENAME = "09_margins.png"


def status() -> tuple[dict[str, Head] | None, str]:
    """``(heads, message)``: the heads when ``crossent.margin`` provides them, else ``None``."""
    if importlib.util.find_spec("crossent.margin") is None:
        return None, ("missing: crossent.margin (L-Softmax, AM-Softmax, ArcFace) is not "
                      "implemented yet, so the decision-margin figure is not drawn.")
    module = importlib.import_module("crossent.margin")
    absent = [name for name, _ in HEADS.values() if not callable(getattr(module, name, None))]
    if absent:
        return None, ("missing: crossent.margin exists but lacks " + ", ".join(absent)
                      + "; wire its API into crossent/tour/margins.py HEADS.")
    heads = {label: _bind(getattr(module, name), kw) for label, (name, kw) in HEADS.items()}
    return heads, "ok"


def _bind(fn: Callable, kwargs: dict) -> Head:
    return lambda x, w, y: fn(x, w, y, **kwargs)


def cosine_head(scale: float = 10.0) -> Head:
    """No margin: ``s cos theta_c`` for every class (normalized softmax), the reference."""
    def head(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        del y
        nx = torch.nn.functional.normalize(x, dim=1)
        nw = torch.nn.functional.normalize(w, dim=1)
        return scale * nx @ nw.T
    return head


def toy_data(n_per_class: int = 100, classes: int = 3, seed: int = 0):
    """Overlapping Gaussian blobs around ``classes`` directions in the plane."""
    g = torch.Generator().manual_seed(seed)
    angles = torch.arange(classes, dtype=torch.float64) * (2 * math.pi / classes)
    centers = torch.stack([angles.cos(), angles.sin()], dim=1) * 3.0
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centers[y] + torch.randn(len(y), 2, generator=g, dtype=torch.float64)
    return x, y


def train_features(head: Head, steps: int, seed: int = 0):
    """Train a 2 -> 32 -> 2 feature extractor and class weights with ``head`` + crossent CE."""
    x, y = toy_data(seed=seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 2)).double()
    w = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opt = torch.optim.Adam([*net.parameters(), w], lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        ce.cross_entropy(head(net(x), w, y), y).backward()
        opt.step()
    with torch.no_grad():
        return net(x).numpy(), w.detach().numpy(), y.numpy()


def draw(heads: dict[str, Head], out: Path, dpi: int, quick: bool = False,
         steps: int | None = None) -> Path:
    """One panel per head: normalized features by class, class directions as arrows."""
    if steps is None:
        steps = 150 if quick else 600
    panels = {"no margin (cosine softmax)": cosine_head(), **heads}
    fig = Figure(figsize=(4.2 * len(panels), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c"]
    for ax, (label, head) in zip(axes, panels.items()):
        feats, w, y = train_features(head, steps=steps)
        u = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        r = 1 + 0.04 * np.random.default_rng(0).standard_normal(len(u))
        for c in range(3):
            ax.scatter(u[y == c, 0] * r[y == c], u[y == c, 1] * r[y == c], s=8,
                       color=colors[c], alpha=0.6, label=f"class {c + 1}")
            d = w[c] / np.linalg.norm(w[c])
            ax.annotate("", xy=1.35 * d, xytext=(0, 0),
                        arrowprops=dict(arrowstyle="->", color=colors[c], lw=2))
        t = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(t), np.sin(t), color="#7f7f7f", lw=0.6)
        ax.set_aspect("equal")
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        ax.set_xlabel("feature 1 / ||x||")
        ax.set_ylabel("feature 2 / ||x||")
        ax.set_title(label)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("Learned 2-D features on the unit circle; arrows: class weight directions. "
                 "Margins leave empty angular gaps between classes.")
    path = Path(out) / FILENAME
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
