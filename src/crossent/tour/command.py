"""The ``crossent tour`` subcommand: check the claims, draw the figures, write the report.

Output goes to stdout (a readable table, or with ``--format json`` a JSON list of claim
objects and nothing else); progress goes to stderr, one line per stage. The exit status is
0 when the tour ran — wrong statements in the articles are findings, not failures — and 1
when a figure failed to draw.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_OUT = "./crossent-tour"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="text: a readable table (default); json: a JSON list of claims")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"folder for the PNG figures and index.html (default {DEFAULT_OUT})")
    parser.add_argument("--lang", choices=("en", "zh"), default="en",
                        help="language of the table and report (the articles' two languages)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer gradient steps and lower DPI (for tests)")
    parser.add_argument("--no-plots", action="store_true",
                        help="check the claims and write the report without drawing figures")
    parser.add_argument("--no-progress", action="store_true",
                        help="do not print progress to stderr")


class Progress:
    """``[stage k/n] message (elapsed)`` lines on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.perf_counter()

    def step(self, message: str) -> None:
        self.done += 1
        if self.enabled:
            elapsed = time.perf_counter() - self.start
            print(f"[tour {self.done}/{self.total}] {message} ({elapsed:.1f}s)",
                  file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; figures are drawn off-screen

    from crossent.tour import figures as figs
    from crossent.tour import report
    from crossent.tour.check import evaluate_all
    from crossent.tour.claims import CLAIMS
    from crossent.tour.text import format_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = 2 + (0 if args.no_plots else len(figs.FIGURES))
    progress = Progress(stages, enabled=not args.no_progress)

    progress.step(f"recomputing {len(CLAIMS)} worked examples with crossent")
    rows = evaluate_all(CLAIMS, args.lang)

    figures = None
    if not args.no_plots:
        dpi = 60 if args.quick else 130
        figures = figs.render(out, dpi, args.quick, args.lang,
                              on_figure=lambda spec: progress.step(f"figure {spec.file}"))

    flags = "".join(f" {f}" for f, on in (("--quick", args.quick), ("--no-plots", args.no_plots),
                                          (f"--lang {args.lang}", True)) if on)
    html = report.write(out, rows, figures, args.lang, flags)
    progress.step(f"report {html}")

    if args.format == "json":
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        print(format_text(rows, figures, args.lang, str(out)))
    failed = [f for f in figures or [] if f["status"].startswith("failed")]
    for f in failed:
        print(f"crossent tour: figure {f['file']} {f['status']}", file=sys.stderr)
    return 1 if failed else 0
