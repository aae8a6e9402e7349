"""What a model does to its output layer's scores before the loss, read from the model.

Causal LMs feed the loss ``g(lm_head(h))`` where ``g`` is elementwise: the identity
(Llama), a scale ``s * z`` (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``),
a soft cap ``c * tanh(z / c)`` (Gemma-2/3's ``final_logit_softcapping``), or a composition
of the two. Every such composition is ``a * tanh(b * z)`` or ``s * z``, which is
:class:`crossent.core.statistics.ScoreTransform` with ``softcap = a`` and ``logit_scale = a * b``.

Rather than reading configuration attributes (whose names differ between architectures),
the integration shows the model known scores ``z`` (:func:`probe_scores`), records the
scores ``g(z)`` that reach the loss, and :func:`fit_score_transform` recovers ``(s, c)``
from them and checks them at every probed point. A model whose ``g`` is anything else
(a slice of the vocabulary, a mask, an offset) fails that check instead of being trained
on a different loss.
"""

from __future__ import annotations

import math

import torch

from ..core.checks import ArgumentError
from ..core.statistics import ScoreTransform

#: A score so large that ``tanh`` saturates to exactly 1 for any plausible cap.
_HUGE = 1e30
#: Probed scores other than +-_HUGE span [-_SPAN, _SPAN].
_SPAN = 60.0


def probe_scores(count: int, device=None) -> torch.Tensor:
    """``count`` (>= 8) float64 scores: ``+_HUGE``, ``-_HUGE``, then an even grid on
    ``[-_SPAN, _SPAN]`` (0 included when ``count`` is odd)."""
    if count < 8:
        raise ValueError(f"probe_scores needs at least 8 scores, got {count}")
    grid = torch.linspace(-_SPAN, _SPAN, count - 2, dtype=torch.float64, device=device)
    head = torch.tensor([_HUGE, -_HUGE], dtype=torch.float64, device=device)
    return torch.cat([head, grid])


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 8 * torch.finfo(dtype).eps


def fit_score_transform(z: torch.Tensor, g: torch.Tensor, what: str = "the model") -> ScoreTransform:
    """``ScoreTransform(s, c)`` with ``g == c * tanh(s * z / c)`` (or ``s * z``) at every point.

    ``z``: the scores of :func:`probe_scores`; ``g``: what the loss received for them, of
    the same number of elements. Raises :class:`crossent.ArgumentError`, saying what was
    seen, when no scale/soft-cap explains ``g``.
    """
    tol = _tolerance(g.dtype)
    z, g = z.reshape(-1).double(), g.reshape(-1).double()
    if z.numel() != g.numel():
        raise ArgumentError(
            f"{what} passes {g.numel()} scores to its loss where its output layer gave "
            f"{z.numel()}: it selects or adds logits, which crossent cannot do tile by tile"
        )
    if not bool(torch.isfinite(g[2:]).all()):
        raise ArgumentError(f"{what} turns finite output-layer scores into inf/NaN before its loss")
    top, bottom = float(g[0]), float(g[1])
    if math.isfinite(top) and abs(top) < _HUGE * 1e-6:  # saturates: a soft cap
        cap = top
        if not cap > 0 or not math.isclose(bottom, -cap, rel_tol=tol):
            raise ArgumentError(
                f"{what} maps the scores +-{_HUGE:g} to {top:g} and {bottom:g}: not a symmetric soft cap"
            )
        inner = g[2:] / cap
        zs = z[2:]
        sel = (inner.abs() < 0.9) & (zs != 0)
        if not bool(sel.any()):
            raise ArgumentError(f"{what} saturates every probed score (soft cap {cap:g})")
        slope = float(torch.median(torch.atanh(inner[sel]) / zs[sel]))  # b in a*tanh(b*z)
        scale = _snap(cap * slope)
        transform = ScoreTransform(scale, cap)
    else:
        scale = _snap(top / _HUGE)
        if not scale > 0:
            raise ArgumentError(f"{what} maps the score {_HUGE:g} to {top:g}: not a positive scale")
        transform = ScoreTransform(scale, None)
    expected = transform.apply(z, torch.float64)
    err = ((g - expected).abs() / (1.0 + expected.abs())).max()
    if not float(err) <= tol:
        worst = int(((g - expected).abs() / (1.0 + expected.abs())).argmax())
        raise ArgumentError(
            f"{what} changes its output-layer scores in a way crossent cannot reproduce: "
            f"the score {float(z[worst]):g} reached the loss as {float(g[worst]):g}, where "
            f"logit_scale={transform.logit_scale:g}, softcap={transform.softcap} gives "
            f"{float(expected[worst]):g}"
        )
    return transform


def _snap(scale: float) -> float:
    """1.0 when ``scale`` is 1 up to float64 rounding of the fit (the identity path)."""
    return 1.0 if math.isclose(scale, 1.0, rel_tol=1e-12) else scale

