"""Judging a stated number against the exact one: the tour's precision rule.

A number written with ``k`` decimals (``"0.71"``: k = 2, ``"2.3"``: k = 1, ``"-10"``: k = 0)
*agrees* with the exact value ``x`` when

    |x - stated| <= 0.5 * 10**(-k) + slack,      slack = 1e-9 * max(1, |stated|)

i.e. when the article's figure is ``x`` correctly rounded to the precision it was written
with (the slack only absorbs floating-point noise at an exact half). A truncated figure
(``-ln 0.4 = 0.9163`` written ``0.91``) therefore does not agree. Numbers that are exact by
their nature — "the information content is 0", "a distribution sums to 1", "the two
outputs are identical" — are marked ``exact`` and held to the slack alone. A claim whose
article states no number (``stated is None``) is reported with ``agrees = None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

SLACK = 1e-9


@dataclass(frozen=True)
class Claim:
    """One worked example: what an article states and how crossent recomputes it."""

    id: str                        # stable key, e.g. "a001.clip.row1.p_pos"
    article: str                   # seed file name
    quantity: str                  # what is computed (English)
    quantity_zh: str               # the same in Chinese
    stated: str | None             # the number exactly as written, or None
    quote: str                     # the article's own words
    compute: Callable[[], float]   # recomputation with crossent, float64
    note: str = ""                 # explanation when the statement fails (English)
    note_zh: str = ""              # the same in Chinese
    exact: bool = False            # stated value is exact by nature (see module doc)


def decimals(text: str) -> int:
    """Digits after the decimal point of a written number: ``"0.105"`` -> 3, ``"-10"`` -> 0."""
    mantissa = text.strip().lower().split("e")[0]
    return len(mantissa.split(".", 1)[1]) if "." in mantissa else 0


def tolerance(text: str, exact: bool = False) -> float:
    """Half a unit in the last written place (0 when ``exact``), plus the float slack."""
    stated = float(text)
    half_unit = 0.0 if exact else 0.5 * 10.0 ** (-decimals(text))
    return half_unit + SLACK * max(1.0, abs(stated))


def agrees(computed: float, text: str | None, exact: bool = False) -> bool | None:
    """The precision rule: ``None`` without a stated number, else within ``tolerance``."""
    if text is None:
        return None
    return abs(computed - float(text)) <= tolerance(text, exact)


def evaluate(claim: Claim, lang: str = "en") -> dict[str, Any]:
    """Recompute one claim and return its row (JSON-ready; see ``crossent tour --format json``)."""
    computed = float(claim.compute()) + 0.0  # + 0.0 turns -0.0 into 0.0
    if not math.isfinite(computed):
        raise ValueError(f"claim {claim.id}: computed value {computed} is not finite")
    ok = agrees(computed, claim.stated, claim.exact)
    k = None if claim.stated is None else decimals(claim.stated)
    zh = lang == "zh"
    return {
        "id": claim.id,
        "article": claim.article,
        "quantity": claim.quantity_zh if zh else claim.quantity,
        "stated": None if claim.stated is None else float(claim.stated),
        "stated_text": claim.stated,
        "computed": computed,
        "agrees": ok,
        "decimals": k,
        "exact": claim.exact,
        "tolerance": None if claim.stated is None else tolerance(claim.stated, claim.exact),
        "computed_at_precision": (
            None if k is None or claim.exact else f"{computed:.{k}f}"
        ),
        "quote": claim.quote,
        "note": (claim.note_zh if zh else claim.note) if ok is False else "",
    }


def evaluate_all(claims: list[Claim], lang: str = "en",
                 on_claim: Callable[[int, int, Claim], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate every claim in order; ``on_claim(i, n, claim)`` is called before each."""
    rows = []
    for i, claim in enumerate(claims):
        if on_claim is not None:
            on_claim(i, len(claims), claim)
        rows.append(evaluate(claim, lang))
    return rows
