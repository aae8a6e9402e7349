"""The tour's figures of the basic curves, each computed with crossent and saved as a PNG.

Figures are drawn on :class:`matplotlib.figure.Figure` objects rendered by the Agg canvas,
so no global backend is switched and no window ever opens. Every function takes the
output folder and a ``dpi`` and returns the path it wrote. Formulas (nats throughout):

- ``-log p``: the loss of one example whose true class gets probability ``p``;
- binary CE: ``-(y log p + (1 - y) log(1 - p))`` for ``y = 1`` and ``y = 0``;
- gradients for ``y = 1``: w.r.t. the probability, CE ``-1/p`` vs MSE ``-(1 - p)``; w.r.t.
  the logit ``z`` (``p = sigmoid(z)``), CE ``p - 1`` vs MSE ``(p - 1) p (1 - p)``;
- softmax with temperature: ``softmax(z / T)``;
- ``H(p, q) = H(p) + KL(p || q)``;
- the CLIP example's similarity matrix and its row softmax;
- ``log softmax(z)_i = z_i - logsumexp(z)`` against the naive ``log(exp(z_i) / sum exp(z))``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

import crossent as ce
from crossent import reference as ref
from crossent.tour import claims as C

F64 = torch.float64
BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"


def _save(fig: Figure, out: Path, name: str, dpi: int) -> Path:
    path = Path(out) / name
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _grid(ax) -> None:
    ax.grid(True, alpha=0.3)


def neg_log(out: Path, dpi: int) -> Path:
    """``-log p`` against ``p`` with the articles' points marked."""
    p = torch.linspace(0.005, 1.0, 400, dtype=F64)
    loss = ce.binary_cross_entropy(p, torch.ones_like(p), reduction="none")
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    ax.plot(p.numpy(), loss.numpy(), color=BLUE, lw=2, label=r"$-\ln p$")
    exact_p = C.clip_softmax(0, 0)
    # (p, label, colour, where the label goes)
    points = [(0.1, "p = 0.1: 2.303", RED, (0.16, 2.7)),
              (0.9, "p = 0.9: 0.105", RED, (0.80, 0.95)),
              (0.71, "article's CLIP P(positive) = 0.71: 0.342", ORANGE, (0.30, 2.0)),
              (exact_p, f"exact CLIP P(positive) = {exact_p:.3f}: {-math.log(exact_p):.3f}",
               GREEN, (0.30, 1.45))]
    for x, text, color, xy in points:
        y = -math.log(x)
        ax.plot(x, y, "o", color=color, ms=7, zorder=3)
        ax.annotate(text, (x, y), xytext=xy, color=color if color == GREEN else "black",
                    arrowprops=dict(arrowstyle="->", color=color))
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 5.5)
    ax.set_xlabel("predicted probability of the true class, p")
    ax.set_ylabel("loss  $-\\ln p$  (nats)")
    ax.set_title("Cross-entropy of one example: confident and wrong costs the most")
    ax.legend(loc="upper right")
    _grid(ax)
    return _save(fig, out, "01_neg_log.png", dpi)


def binary_ce(out: Path, dpi: int) -> Path:
    """Binary cross-entropy against the predicted probability, for ``y = 1`` and ``y = 0``."""
    p = torch.linspace(0.002, 0.998, 400, dtype=F64)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for y, color, label in ((1.0, BLUE, r"$y = 1$: $-\ln p$"),
                            (0.0, ORANGE, r"$y = 0$: $-\ln(1 - p)$")):
        loss = ce.binary_cross_entropy(p, torch.full_like(p, y), reduction="none")
        ax.plot(p.numpy(), loss.numpy(), color=color, lw=2, label=label)
    for x in (0.1, 0.9):
        ax.plot(x, -math.log(x), "o", color=RED, ms=6, zorder=3)
        ax.annotate(f"y=1, p={x}: {-math.log(x):.3f}", (x, -math.log(x)),
                    xytext=(x + (0.05 if x < 0.5 else -0.3), -math.log(x) + 0.7),
                    arrowprops=dict(arrowstyle="->", color=GREY))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 5)
    ax.set_xlabel("predicted probability of class 1, p = sigmoid(logit)")
    ax.set_ylabel("binary cross-entropy (nats)")
    ax.set_title("Binary cross-entropy for the two labels")
    ax.legend(loc="upper center")
    _grid(ax)
    return _save(fig, out, "02_binary_ce.png", dpi)


def _grads(p: torch.Tensor) -> dict[str, np.ndarray]:
    """|dL/dp| and |dL/dz| for CE and MSE with label 1, by autograd through crossent."""
    prob = p.clone().requires_grad_(True)
    ce.binary_cross_entropy(prob, torch.ones_like(p), reduction="sum").backward()
    ce_p = prob.grad.abs().numpy()
    prob = p.clone().requires_grad_(True)
    (0.5 * (1.0 - prob) ** 2).sum().backward()
    mse_p = prob.grad.abs().numpy()
    z = torch.log(p / (1 - p)).requires_grad_(True)
    ce.binary_cross_entropy_with_logits(z, torch.ones_like(p), reduction="sum").backward()
    ce_z = z.grad.abs().numpy()
    z = torch.log(p / (1 - p)).requires_grad_(True)
    (0.5 * (1.0 - torch.sigmoid(z)) ** 2).sum().backward()
    mse_z = z.grad.abs().numpy()
    return {"ce_p": ce_p, "mse_p": mse_p, "ce_z": ce_z, "mse_z": mse_z}


def grad_ce_vs_mse(out: Path, dpi: int) -> Path:
    """Gradient magnitude of CE vs MSE against the predicted probability of the true class."""
    p = torch.linspace(0.01, 0.99, 300, dtype=F64)
    g = _grads(p)
    x = p.numpy()
    fig = Figure(figsize=(12, 4.6))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.semilogy(x, g["ce_p"], color=BLUE, lw=2, label=r"CE: $|{-y}/p| = 1/p$")
    ax1.semilogy(x, g["mse_p"], color=ORANGE, lw=2, label=r"MSE $\frac{1}{2}(y-p)^2$: $1-p$")
    ax1.plot([0.1, 0.1], [0.9, 10], "o", color=RED, zorder=3)
    ax1.annotate("p = 0.1: CE 10 vs MSE 0.9\n(the article's numbers)", (0.1, 10),
                 xytext=(0.3, 15), arrowprops=dict(arrowstyle="->", color=GREY))
    ax1.set_title("(a) w.r.t. the probability p (as in the article)")
    ax1.set_ylabel("gradient magnitude  |dL/dp|")
    ax2.plot(x, g["ce_z"], color=BLUE, lw=2, label=r"CE: $|p - y| = 1 - p$")
    ax2.plot(x, g["mse_z"], color=ORANGE, lw=2, label=r"MSE: $(1-p)\,p\,(1-p)$")
    ax2.plot([0.1, 0.1], [0.9, 0.081], "o", color=RED, zorder=3)
    ax2.annotate("p = 0.1: CE 0.9 vs MSE 0.081", (0.1, 0.081), xytext=(0.22, 0.25),
                 arrowprops=dict(arrowstyle="->", color=GREY))
    ax2.set_title("(b) w.r.t. the logit z, p = sigmoid(z): what reaches the network")
    ax2.set_ylabel("gradient magnitude  |dL/dz|")
    ax2.set_ylim(0, 1.05)
    for ax in (ax1, ax2):
        ax.set_xlabel("predicted probability of the true class, p   (label y = 1)")
        _grid(ax)
    ax1.legend(loc="lower left")
    ax2.legend(loc="upper right")
    fig.suptitle("Why cross-entropy learns fast when wrong: its gradient stays large as p → 0,"
                 " MSE's vanishes")
    return _save(fig, out, "03_grad_ce_vs_mse.png", dpi)


def softmax_temperature(out: Path, dpi: int) -> Path:
    """``softmax(z / T)`` of the CLIP example's first row for a range of temperatures."""
    z = torch.tensor(C.CLIP_LOGITS[0], dtype=F64)
    temps = np.logspace(-1, 1, 200)
    probs = np.stack([ce.softmax(z / t, dim=0).numpy() for t in temps])
    fig = Figure(figsize=(12, 4.6))
    ax1, ax2 = fig.subplots(1, 2)
    shown = [0.25, 0.5, 1.0, 2.0, 5.0]
    width = 0.16
    for k, t in enumerate(shown):
        pk = ce.softmax(z / t, dim=0).numpy()
        xs = np.arange(3) + (k - 2) * width
        bars = ax1.bar(xs, pk, width, label=f"T = {t:g}")
        if t == 1.0:
            for b, v in zip(bars, pk):
                ax1.text(b.get_x() + b.get_width() / 2, v + 0.01, f"{v:.3f}", ha="center",
                         fontsize=8)
    ax1.set_xticks(range(3), [f"class {j + 1}\nlogit {v:+.1f}" for j, v in enumerate(z.tolist())])
    ax1.set_ylabel("probability")
    ax1.set_ylim(0, 1.05)
    ax1.set_title("(a) softmax(z / T), CLIP row 1: z = [2.0, 0.5, -1.0] (T = 1 labelled)")
    ax1.legend()
    for j, color in enumerate((BLUE, ORANGE, GREEN)):
        ax2.semilogx(temps, probs[:, j], color=color, lw=2, label=f"class {j + 1}")
    ax2.axhline(1 / 3, color=GREY, ls="--", label="uniform 1/3 (T → ∞)")
    ax2.axvline(1.0, color=GREY, ls=":")
    ax2.set_xlabel("temperature T (log scale)")
    ax2.set_ylabel("probability")
    ax2.set_ylim(0, 1.02)
    ax2.set_title("(b) low T sharpens toward argmax, high T flattens")
    ax2.legend()
    for ax in (ax1, ax2):
        _grid(ax)
    return _save(fig, out, "04_softmax_temperature.png", dpi)


def _h_kl(p: list[float], q: np.ndarray) -> tuple[float, float, float]:
    """``H(p)``, ``KL(p||q)`` (crossent kl_div) and ``H(p, q)`` (crossent cross_entropy)."""
    pt = torch.tensor([p], dtype=F64)
    logq = torch.log(torch.tensor(np.asarray(q)[None, :], dtype=F64))
    h = float(ref.entropy(p))
    kl = ce.kl_div(logq, pt, reduction="sum").item()
    h_pq = ce.cross_entropy(logq, pt, reduction="sum").item()
    return h, kl, h_pq


def entropy_ce_kl(out: Path, dpi: int) -> Path:
    """Entropy, cross-entropy and KL of two distributions: ``H(p, q) = H(p) + KL(p || q)``."""
    p, q = C.KL_P, np.asarray(C.KL_Q)
    h, kl, h_pq = _h_kl(p, q)
    fig = Figure(figsize=(12, 4.6))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    xs = np.arange(3)
    for off, dist, color, label in ((-0.2, p, BLUE, "p (true)"), (0.2, q, ORANGE, "q (model)")):
        bars = ax1.bar(xs + off, dist, 0.4, color=color, label=label)
        for b, v in zip(bars, dist):
            ax1.text(b.get_x() + 0.2, v + 0.01, f"{v:.1f}", ha="center", fontsize=9)
    ax1.set_xticks(xs, ["outcome 1", "outcome 2", "outcome 3"])
    ax1.set_ylabel("probability")
    ax1.set_ylim(0, 0.8)
    ax1.set_title(f"(a) H(p) = {h:.4f}, KL(p||q) = {kl:.4f},\nH(p,q) = {h_pq:.4f} = "
                  f"{h:.4f} + {kl:.4f}  (nats)")
    ax1.legend()
    far = np.array([0.02, 0.08, 0.9])
    alphas = np.linspace(0.0, 1.0, 101)
    rows = np.array([_h_kl(p, (1 - a) * np.asarray(p) + a * far) for a in alphas])
    ax2.stackplot(alphas, rows[:, 0], rows[:, 1], colors=[BLUE, ORANGE], alpha=0.45,
                  labels=["H(p)  (entropy, fixed)", "KL(p||q)  (extra cost of using q)"])
    ax2.plot(alphas, rows[:, 2], "k--", lw=2, label="H(p, q) computed on its own")
    ax2.set_xlabel(r"$\alpha$ in  $q_\alpha = (1-\alpha)\,p + \alpha\,[0.02, 0.08, 0.9]$")
    ax2.set_ylabel("nats")
    ax2.set_title("(b) cross-entropy = entropy + KL along a path of models q")
    ax2.legend(loc="upper left")
    ax2.set_xlim(0, 1)
    for ax in (ax1, ax2):
        _grid(ax)
    return _save(fig, out, "05_entropy_ce_kl.png", dpi)


def _heatmap(ax, m: np.ndarray, title: str, fmt: str, cmap: str, notes=None,
             dark_high: bool = True) -> None:
    im = ax.imshow(m, cmap=cmap)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            text = format(m[i, j], fmt) + ("" if notes is None else notes.get((i, j), ""))
            dark = (m[i, j] > (m.max() + m.min()) / 2) == dark_high
            ax.text(j, i, text, ha="center", va="center", fontsize=10,
                    color="white" if dark else "black")
        ax.add_patch(_rect(i))
    n = m.shape[0]
    ax.set_xticks(range(n), [f"text {j + 1}" for j in range(n)])
    ax.set_yticks(range(n), [f"image {i + 1}" for i in range(n)])
    ax.set_title(title)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def _rect(i: int):
    from matplotlib.patches import Rectangle

    return Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor=GREEN, lw=3)


def clip_similarity(out: Path, dpi: int) -> Path:
    """The CLIP article's 3x3 logits as a heatmap and its row softmax (positives boxed)."""
    s = torch.tensor(C.CLIP_LOGITS, dtype=F64)
    probs = ce.softmax(s, dim=1).numpy()
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _heatmap(ax1, s.numpy(), "(a) logits_per_image (similarities)", "+.1f", "viridis",
             dark_high=False)
    notes = {(0, 0): "\narticle: 0.71", (0, 1): "\narticle: 0.23", (0, 2): "\narticle: 0.06"}
    _heatmap(ax2, probs, "(b) row softmax P(text j | image i)", ".3f", "Blues", notes)
    losses = ce.cross_entropy(s, torch.arange(3), reduction="none").numpy()
    fig.suptitle("CLIP example: positives on the diagonal (green). Row losses -log P = "
                 + ", ".join(f"{v:.3f}" for v in losses)
                 + f"; symmetric CLIP loss {C.clip_loss('sym'):.4f}")
    return _save(fig, out, "06_clip_similarity.png", dpi)


def _naive_ce(z: torch.Tensor) -> torch.Tensor:
    """Softmax-then-log, as one would write it by hand: ``-log(exp(z_0) / sum exp(z))``."""
    e = torch.exp(z)
    return -torch.log(e[..., 0] / e.sum(-1))


def _overflow_at(dtype: torch.dtype) -> float:
    """Largest ``c`` with finite ``exp(c)``: ``ln(max)``."""
    return math.log(torch.finfo(dtype).max)


def _underflow_at(dtype: torch.dtype) -> float:
    """``c`` beyond which ``exp(-c)`` rounds to 0: half the smallest subnormal."""
    info = torch.finfo(dtype)
    return -(math.log(info.smallest_normal) + math.log(info.eps) - math.log(2.0))


def logsumexp_overflow(out: Path, dpi: int) -> Path:
    """Naive softmax-then-log breaks at large logits; crossent's log-sum-exp form does not."""
    c = np.logspace(0, 3.2, 300)
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    kinds = ((torch.float32, ORANGE, GREEN, 0.33), (torch.float64, RED, BLUE, 0.27))
    for dtype, naive_color, stable_color, nan_row in kinds:
        name = str(dtype).replace("torch.", "")
        z = torch.tensor(np.stack([c, c - 1, c - 2], axis=1), dtype=dtype)
        naive = _naive_ce(z).double().numpy()
        stable = ce.cross_entropy(z, torch.zeros(len(c), dtype=torch.long),
                                  reduction="none").double().numpy()
        bad = ~np.isfinite(naive)
        ax1.plot(c, np.where(bad, np.nan, naive), color=naive_color, lw=6, alpha=0.5,
                 label=f"naive softmax-then-log, {name}")
        ax1.plot(c[bad], np.full(bad.sum(), nan_row), "x", color=naive_color, ms=4,
                 label=f"naive {name} = NaN once exp(c) > max (c > {_overflow_at(dtype):.1f})")
        ax1.text(c[-1], nan_row + 0.012, f"{name} naive: NaN (drawn here as markers)",
                 color=naive_color, fontsize=8, ha="right")
        ax1.plot(c, stable, "--" if dtype == torch.float64 else ":", color=stable_color,
                 lw=2.0 if dtype == torch.float64 else 3.5,
                 label=f"crossent.cross_entropy, {name}")
    ax1.set_xscale("log")
    ax1.set_ylim(0.2, 0.75)
    ax1.set_xlabel("logit scale c   (logits [c, c-1, c-2], target 0)")
    ax1.set_ylabel("loss (nats);  exact: ln(1 + e^-1 + e^-2) = 0.4076")
    ax1.set_title("(a) overflow: exp(c) = inf and inf / inf = NaN")
    ax1.legend(loc="upper left", fontsize=8)
    for dtype, naive_color, stable_color, inf_row in ((torch.float32, ORANGE, GREEN, 9000.0),
                                                       (torch.float64, RED, BLUE, 3500.0)):
        name = str(dtype).replace("torch.", "")
        z = torch.tensor(np.stack([np.zeros_like(c), -c], axis=1), dtype=dtype)
        naive = -torch.log(torch.exp(z[:, 1]) / torch.exp(z).sum(1)).double().numpy()
        stable = -ce.log_softmax(z, dim=1)[:, 1].double().numpy()
        bad = ~np.isfinite(naive)
        ax2.plot(c, np.where(bad, np.nan, naive), color=naive_color, lw=6, alpha=0.5,
                 label=f"naive -log(softmax), {name}")
        ax2.plot(c[bad], np.full(bad.sum(), inf_row), "x", color=naive_color, ms=4,
                 label=f"naive {name} = inf once exp(-c) = 0 (c > {_underflow_at(dtype):.1f})")
        ax2.text(c[-1], inf_row * 1.15, f"{name} naive: inf (drawn here as markers)",
                 color=naive_color, fontsize=8, ha="right")
        ax2.plot(c, stable, "--" if dtype == torch.float64 else ":", color=stable_color,
                 lw=2.0 if dtype == torch.float64 else 3.5,
                 label=f"-crossent.log_softmax, {name}")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("logit gap c   (logits [0, -c])")
    ax2.set_ylabel("-log p(class 2)  (nats);  exact: c + log(1 + e^-c)")
    ax2.set_title("(b) underflow: exp(-c) = 0 and -log 0 = inf")
    ax2.set_ylim(0.8, 3e4)
    ax2.legend(loc="lower right", fontsize=8)
    for ax in (ax1, ax2):
        _grid(ax)
    fig.suptitle(r"log-sum-exp: $\log\,\mathrm{softmax}(z)_i = z_i - m - \log\sum_j e^{z_j - m}$,"
                 r" $m = \max_j z_j$, stays exact where softmax-then-log fails")
    return _save(fig, out, "08_logsumexp_overflow.png", dpi)
