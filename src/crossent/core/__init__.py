"""The core of crossent: what every loss of the family is made of.

- :mod:`~crossent.core.checks`: argument validation and the error types;
- :mod:`~crossent.core.targets`: target distributions (class indices, probabilities,
  label sets) as the statistics see them;
- :mod:`~crossent.core.stats`: streaming softmax statistics of a tile and their exact
  merge (across tiles and, through :mod:`~crossent.core.collectives`, across ranks), and
  the one per-row loss formula;
- :mod:`~crossent.core.tiles`: the one tile planner and its budget table;
- :mod:`~crossent.core.reduction`: ``none`` / ``sum`` / ``mean`` and the output dtype;
- :mod:`~crossent.core.statistics`: the statistics of given logits with a lean backward;
- :mod:`~crossent.core.collectives`: ``torch.distributed`` collectives, the agreement check;
- the losses on given logits: :mod:`~crossent.core.multiclass`,
  :mod:`~crossent.core.binary`, :mod:`~crossent.core.divergence`,
  :mod:`~crossent.core.variants`, and their class-sharded path
  :mod:`~crossent.core.sharded`.

The core imports nothing from the rest of crossent (the layering contracts in
``pyproject.toml`` check it).
"""
