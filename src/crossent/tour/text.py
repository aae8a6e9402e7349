"""The terminal table of ``crossent tour --format text``: one block per claim, by article.

Each claim shows a verdict (holds / WRONG / no number stated), the quantity, the number as
the article writes it, the exact value and, where the statement fails, the exact value at
the article's precision and the explanation.
"""

from __future__ import annotations

from typing import Any

from crossent.tour.articles import ARTICLES
from crossent.tour.i18n import t


def verdict(row: dict[str, Any], lang: str) -> str:
    if row["agrees"] is None:
        return t(lang, "none")
    return t(lang, "holds") if row["agrees"] else t(lang, "wrong")


def summary_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {"n": len(rows), "ok": sum(r["agrees"] is True for r in rows),
            "bad": sum(r["agrees"] is False for r in rows),
            "none": sum(r["agrees"] is None for r in rows)}


def _exact(row: dict[str, Any], lang: str) -> str:
    text = f"{t(lang, 'exact')} {row['computed']:.6g}"
    if row["agrees"] is False and row["computed_at_precision"] is not None:
        text += (f" (= {row['computed_at_precision']} "
                 f"{t(lang, 'at_precision', k=row['decimals'])})")
    return text


def format_text(rows: list[dict[str, Any]], figures: list[dict] | None, lang: str,
                out_dir: str | None) -> str:
    """The whole text report: header, per-article claim blocks, summary, figures."""
    lines = [t(lang, "title"), t(lang, "rule"), t(lang, "none_long"), ""]
    width = max(len(t(lang, k)) for k in ("holds", "wrong", "none"))
    for article in ARTICLES:
        mine = [r for r in rows if r["article"] == article.seed]
        if not mine:
            continue
        title = article.title if lang == "zh" else article.title_en
        lines.append(f"== {article.seed}  {title}")
        for r in mine:
            tag = verdict(r, lang)
            lines.append(f"  [{tag:^{width}}] {r['quantity']}")
            pad = " " * (width + 5)
            stated = r["stated_text"] if r["stated_text"] is not None else "-"
            lines.append(f"{pad}{t(lang, 'article_says')} {stated}   {_exact(r, lang)}")
            if r["note"]:
                lines.append(f"{pad}{r['note']}")
        lines.append("")
    lines.append(t(lang, "summary", **summary_counts(rows)))
    wrong = [r for r in rows if r["agrees"] is False]
    if wrong:
        lines.append(t(lang, "wrong_list"))
        for r in wrong:
            lines.append(f"  - {r['article'][:3]} {r['quantity']}: {r['stated_text']} -> "
                         f"{r['computed']:.6g}")
    if figures is None:
        lines.append(t(lang, "no_plots"))
    else:
        lines.append(t(lang, "figures_in", path=out_dir))
        for f in figures:
            mark = "ok" if f["status"] == "ok" else f["status"]
            lines.append(f"  {f['file']}: {mark}")
    return "\n".join(lines)
