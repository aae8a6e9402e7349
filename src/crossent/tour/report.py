"""The tour's report: ``index.html`` (claims table and figures) and ``claims.json``.

The HTML is self-contained (inline CSS, figures referenced by relative file name), in the
language chosen with ``--lang``. Claims are grouped by article; each row shows the article's
own words, the number as written, the exact value, and a verdict — a wrong statement is
marked in red with the exact value at the article's precision and what went wrong.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from crossent.tour.articles import ARTICLES
from crossent.tour.i18n import t
from crossent.tour.text import summary_counts, verdict

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.35em 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { font-family: ui-monospace, monospace; white-space: nowrap; }
tr.wrong td { background: #fdecea; }
tr.none td { color: #555; }
.tag { font-weight: bold; white-space: nowrap; }
tr.wrong .tag { color: #b71c1c; }
tr.ok .tag { color: #1b5e20; }
.quote { color: #444; font-size: 0.9em; }
.note { color: #b71c1c; font-size: 0.9em; margin-top: 0.3em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.92em; color: #333; }
.missing { background: #fff8e1; border: 1px solid #ffe082; padding: 0.6em 0.8em; }
.rule { background: #f5f5f5; padding: 0.6em 0.8em; }
"""


def _row(r: dict[str, Any], lang: str) -> str:
    cls = "none" if r["agrees"] is None else ("ok" if r["agrees"] else "wrong")
    stated = "—" if r["stated_text"] is None else escape(r["stated_text"])
    exact = f"{r['computed']:.6g}"
    if r["agrees"] is False and r["computed_at_precision"] is not None:
        exact += f"<br>(= {escape(r['computed_at_precision'])})"
    note = f'<div class="note">{escape(r["note"])}</div>' if r["note"] else ""
    return (f'<tr class="{cls}"><td class="tag">{escape(verdict(r, lang))}</td>'
            f"<td>{escape(r['quantity'])}{note}</td>"
            f'<td class="quote">{escape(r["quote"])}</td>'
            f'<td class="num">{stated}</td><td class="num">{exact}</td></tr>')


def _claims_html(rows: list[dict[str, Any]], lang: str) -> str:
    parts = []
    head = (f"<tr><th>{t(lang, 'verdict')}</th><th>{t(lang, 'quantity')}</th>"
            f"<th>{t(lang, 'quote')}</th><th>{t(lang, 'stated')}</th>"
            f"<th>{t(lang, 'exact')}</th></tr>")
    for a in ARTICLES:
        mine = [r for r in rows if r["article"] == a.seed]
        if not mine:
            continue
        title = a.title if lang == "zh" else f"{a.title_en} ({a.title})"
        topics = a.topics_zh if lang == "zh" else a.topics
        parts.append(f'<h3 id="{escape(a.seed)}">{t(lang, "article")} {escape(a.seed)}: '
                     f"{escape(title)}</h3><p>{escape(topics)}</p>")
        parts.append("<table>" + head + "".join(_row(r, lang) for r in mine) + "</table>")
    return "\n".join(parts)


def _figures_html(figures: list[dict] | None, lang: str) -> str:
    if figures is None:
        return f"<p>{escape(t(lang, 'no_plots'))}</p>"
    parts, missing = [], []
    for f in figures:
        if f["status"] == "ok":
            parts.append(f'<figure><h3>{escape(f["title"])}</h3>'
                         f'<img src="{escape(f["file"])}" alt="{escape(f["title"])}">'
                         f'<figcaption>{escape(f["caption"])}</figcaption></figure>')
        else:
            missing.append(f"<li><b>{escape(f['title'])}</b> ({escape(f['file'])}): "
                           f"{escape(f['status'])}</li>")
    if missing:
        parts.append(f'<div class="missing"><h3>{t(lang, "missing")}</h3><ul>'
                     + "".join(missing) + "</ul></div>")
    return "\n".join(parts)


def write(out: Path, rows: list[dict[str, Any]], figures: list[dict] | None, lang: str,
          flags: str = "") -> Path:
    """Write ``index.html`` and ``claims.json`` into ``out``; return the HTML path."""
    from crossent.tour import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1),
                                     encoding="utf-8")
    counts = summary_counts(rows)
    wrong = [r for r in rows if r["agrees"] is False]
    wrong_items = "".join(
        f"<li>{escape(r['article'][:3])} — {escape(r['quantity'])}: {escape(r['stated_text'])}"
        f" → <b>{r['computed']:.6g}</b></li>" for r in wrong)
    html = f"""<!DOCTYPE html>
<html lang="{'zh-CN' if lang == 'zh' else 'en'}"><head><meta charset="utf-8">
<title>{escape(t(lang, 'title'))}</title><style>{CSS}</style></head><body>
<h1>{escape(t(lang, 'title'))}</h1>
<p>{escape(t(lang, 'intro'))}</p>
<p class="rule">{escape(t(lang, 'rule'))}<br>{escape(t(lang, 'none_long'))}</p>
<p><b>{escape(t(lang, 'summary', **counts))}</b></p>
<p>{escape(t(lang, 'wrong_list'))}</p><ul>{wrong_items}</ul>
{_claims_html(rows, lang)}
<h2>{escape(t(lang, 'figures'))}</h2>
{_figures_html(figures, lang)}
<hr><p><small>{escape(t(lang, 'generated', version=__version__, flags=flags))}</small></p>
</body></html>
"""
    path = out / "index.html"
    path.write_text(html, encoding="utf-8")
    return path
