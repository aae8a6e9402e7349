"""Margin functions of the target cosine, ``phi(c)`` and ``phi'(c)``, for the margin heads.

Every margin head (:mod:`crossent.margin`) replaces the target logit ``s * rho * cos(theta_y)``
by ``s * rho * phi(cos(theta_y))`` (``rho`` the head's magnitude: 1, ``||x||`` or
``||x|| ||W_y||``) and keeps the other logits. This module holds ``phi`` and its slope
``dphi/dc``, written in the cosine ``c`` so that no ``acos`` derivative is ever taken:

- **arcface** (Deng et al. 2019): ``cos(theta + m) = c cos m - sin(theta) sin m`` with
  ``sin(theta) = sqrt(max(1 - c^2, 0))``; past ``theta > pi - m`` the classic monotone
  continuation ``c - m sin m`` (InsightFace, pytorch-metric-learning). ``easy_margin``:
  the margin only where ``c > 0``, else ``c``.
- **cosface** (Wang et al. 2018, CosFace / AM-Softmax): ``c - m``.
- **combined** (InsightFace): ``cos(m1 theta + m2) - m3``; where ``m1 theta + m2`` passes
  pi, i.e. past ``theta* = (pi - m2) / m1``, it continues as ``c - (cos(theta*) + 1 + m3)``:
  a CosFace margin equal to the penalty at ``theta*``, so ``phi`` stays continuous and
  decreasing in ``theta``. (ArcFace keeps its classic, discontinuous continuation instead,
  so ``combined(m1=1, m2=m, m3=0)`` equals ArcFace for ``theta <= pi - m`` only.)
- **multiplicative** (Liu et al. 2016 L-Softmax, 2017 SphereFace/A-Softmax), integer
  ``m``: ``psi(theta) = (-1)^k cos(m theta) - 2k`` for ``theta`` in ``[k pi/m, (k+1) pi/m]``,
  with ``cos(m theta) = T_m(c)`` (Chebyshev) and ``d T_m / dc = m U_{m-1}(c)``: polynomials,
  finite everywhere. With the papers' annealing ``lambda``:
  ``(lambda c + psi) / (1 + lambda)``.

**The slope at theta = 0 and pi.** ``d sin(theta)/dc = -c / sin(theta)`` is infinite where
``sin(theta) = 0``; there the true gradient with respect to the embedding is finite but its
direction is undefined (any tangent direction). crossent takes the term as 0 where
``sin(theta) = 0`` (exactly), so losses and gradients stay finite at both ends; elsewhere the
slope is exact. ``straight_through`` replaces the slope by 1 (the backward of the plain
cosine, as InsightFace's current arcface_torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.checks import ArgumentError, check_int, check_non_negative

KINDS = ("arcface", "cosface", "combined", "sphereface", "lsoftmax")


@dataclass(frozen=True)
class MarginSpec:
    """One head: which ``phi``, its parameters, and which norms the logits keep.

    ``kind``: one of :data:`KINDS`. ``m1, m2, m3``: the combined-margin parameters
    (arcface: ``m2``; cosface: ``m3``; sphereface/lsoftmax: the integer ``m1``).
    ``centers``: sub-centres per class (``K``; weight row ``c*K + k``).
    """

    kind: str
    scale: float
    m1: float = 1.0
    m2: float = 0.0
    m3: float = 0.0
    easy_margin: bool = False
    straight_through: bool = False
    annealing: float = 0.0
    centers: int = 1

    # --- the custom op carries a spec as (kind, list of floats)
    def to_args(self) -> list[float]:
        return [self.scale, self.m1, self.m2, self.m3, float(self.easy_margin),
                float(self.straight_through), self.annealing, float(self.centers)]

    @classmethod
    def from_args(cls, kind: str, args) -> "MarginSpec":
        s, m1, m2, m3, easy, st, lam, k = args
        return cls(kind, s, m1, m2, m3, bool(easy), bool(st), lam, int(k))

    @property
    def normalize_x(self) -> bool:
        """Logits use ``x / ||x||`` (all but SphereFace and L-Softmax)."""
        return self.kind in ("arcface", "cosface", "combined")

    @property
    def normalize_w(self) -> bool:
        """Logits use ``W_c / ||W_c||`` (all but L-Softmax)."""
        return self.kind != "lsoftmax"

    def phi(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(phi(c), dphi/dc)`` elementwise, in ``c``'s dtype (``c`` in ``[-1, 1]``)."""
        if self.kind == "arcface":
            value, slope = _arcface(c, self.m2, self.easy_margin)
        elif self.kind == "cosface":
            value, slope = c - self.m3, torch.ones_like(c)
        elif self.kind == "combined":
            value, slope = _combined(c, self.m1, self.m2, self.m3)
        else:
            value, slope = _multiplicative(c, int(self.m1))
            if self.annealing:
                lam = self.annealing
                value, slope = (lam * c + value) / (1 + lam), (lam + slope) / (1 + lam)
        if self.straight_through:
            slope = torch.ones_like(c)
        return value, slope


def _sin(c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin(theta) = sqrt(max(1 - c^2, 0))`` and ``c / sin(theta)`` (0 where sin is 0)."""
    sin = (1 - c * c).clamp_min(0).sqrt()
    nonzero = sin > 0
    ratio = torch.where(nonzero, c / torch.where(nonzero, sin, torch.ones_like(sin)),
                        torch.zeros_like(c))
    return sin, ratio


def _arc(c: torch.Tensor, m: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos(theta + m)`` and its slope ``cos m + sin m * c / sin(theta)``."""
    sin, ratio = _sin(c)
    return c * math.cos(m) - sin * math.sin(m), math.cos(m) + math.sin(m) * ratio


def _arcface(c, m, easy):
    value, slope = _arc(c, m)
    if easy:
        keep, other = c > 0, c
    else:  # theta < pi - m, else the classic continuation
        keep, other = c > -math.cos(m), c - m * math.sin(m)
    return torch.where(keep, value, other), torch.where(keep, slope, torch.ones_like(c))


def combined_threshold(m1: float, m2: float) -> float:
    """``cos(theta*)``, ``theta* = (pi - m2) / m1`` where ``m1 theta + m2`` reaches pi
    (-1 when it never does)."""
    t = (math.pi - m2) / m1
    return -1.0 if t >= math.pi else math.cos(t)


def _combined(c, m1, m2, m3):
    if m1 == 1.0:
        value, slope = _arc(c, m2)
    else:
        sin, _ = _sin(c)
        theta = torch.acos(c.clamp(-1, 1))
        inner = m1 * theta + m2
        value = torch.cos(inner)
        nonzero = sin > 0
        ratio = torch.sin(inner) / torch.where(nonzero, sin, torch.ones_like(sin))
        # theta = 0: the limit m1 sin(m1 t) / sin(t) -> m1^2 when m2 = 0, else 0 (see above)
        at_zero = m1 * m1 if m2 == 0 else 0.0
        slope = torch.where(nonzero, m1 * ratio, torch.full_like(c, at_zero))
    cut = combined_threshold(m1, m2)
    if cut > -1.0:
        keep = c >= cut
        value = torch.where(keep, value, c - (cut + 1.0))
        slope = torch.where(keep, slope, torch.ones_like(c))
    return value - m3, slope


def _multiplicative(c: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``psi = (-1)^k T_m(c) - 2k`` and ``(-1)^k m U_{m-1}(c)``, ``k = floor(theta m / pi)``."""
    t_prev, t = torch.ones_like(c), c  # T_0, T_1
    u_prev, u = torch.zeros_like(c), torch.ones_like(c)  # U_{-1}, U_0
    for _ in range(m - 1):
        t_prev, t = t, 2 * c * t - t_prev
        u_prev, u = u, 2 * c * u - u_prev
    k = torch.zeros_like(c)
    for j in range(1, m):  # theta >= j pi / m  <=>  c <= cos(j pi / m)
        k = k + (c <= math.cos(j * math.pi / m)).to(c.dtype)
    sign = 1 - 2 * torch.remainder(k, 2)
    return sign * t - 2 * k, sign * m * u


def anneal_lambda(step: int, *, base: float = 1000.0, gamma: float = 0.12, power: float = 1.0,
                  minimum: float = 5.0) -> float:
    """The papers' annealing weight ``lambda`` for SphereFace and L-Softmax at a step.

    ::

        lambda(step) = max(minimum, base * (1 + gamma * step)^-power)

    Defaults are SphereFace's (Liu et al. 2017, its Caffe ``margin_inner_product_param``:
    base 1000, gamma 0.12, power 1, lambda_min 5); L-Softmax's MNIST example used
    ``base=1000, gamma=2.5e-5, power=35, minimum=0``. Pass the result as ``annealing=``.

    Args:
        step: the training iteration, an int ``>= 0``.
        base, gamma, power: the schedule's constants, finite numbers ``>= 0``.
        minimum: the floor ``lambda_min``, a finite number ``>= 0``.
    Returns:
        ``lambda`` as a float.
    Example:
        >>> import crossent as ce
        >>> ce.anneal_lambda(0)
        1000.0
        >>> round(ce.anneal_lambda(100), 4)
        76.9231
        >>> ce.anneal_lambda(10**6)  # the floor
        5.0

    References:
        Liu et al., "SphereFace: Deep Hypersphere Embedding for Face Recognition", 2017.
        Liu et al., "Large-Margin Softmax Loss for Convolutional Neural Networks", 2016.
    """
    step = check_int("step", step)
    if step < 0:
        raise ArgumentError(f"step must be >= 0, got {step}")
    base, gamma = check_non_negative("base", base), check_non_negative("gamma", gamma)
    power, minimum = check_non_negative("power", power), check_non_negative("minimum", minimum)
    return max(minimum, base * (1.0 + gamma * step) ** (-power))
