"""``crossent tour``: every worked example of the five source articles, checked and drawn.

- :mod:`~crossent.tour.claims`: the articles' numeric claims as data, each recomputed with
  crossent in float64;
- :mod:`~crossent.tour.check`: the precision rule deciding whether a statement holds (a
  number written with ``k`` decimals must be the exact value rounded to ``k`` decimals);
- :mod:`~crossent.tour.plots`, :mod:`~crossent.tour.clip_demo`,
  :mod:`~crossent.tour.margins`, :mod:`~crossent.tour.figures`: the PNG figures;
- :mod:`~crossent.tour.text`, :mod:`~crossent.tour.report`: the terminal table and the
  ``index.html`` report (English or Chinese);
- :mod:`~crossent.tour.command`: the ``crossent tour`` subcommand.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("crossent")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "unknown"
