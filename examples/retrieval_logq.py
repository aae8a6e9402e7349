"""Two-tower retrieval on a 100,000-item Zipf catalogue, with and without the logQ correction.

    python examples/retrieval_logq.py [--items 100000] [--steps 300] [--out retrieval_logq.png]

The data are synthetic, so the truth is known. Item ``i`` has content features ``v_i``
(``k``-dimensional) and a Zipf popularity ``pi_i``; a query ``u`` (the user's features) is
drawn for an item from ``N(c v_i, I)``, so that the true conditional is a softmax over the
catalogue with a popularity prior::

    P(i | u)  ~  pi_i exp(c <u, v_i> - c^2 |v_i|^2 / 2)

A query tower (an MLP of ``u``) and an item tower (an id embedding plus a linear map of
``v_i``) are trained with :func:`crossent.sampled_softmax_loss` on batches of logged
(query, item) pairs — the batch's items are negatives of the other rows (sampled in
proportion to popularity) — plus a pool of uniformly sampled items (mixed negative
sampling), in three ways:

- ``no correction``: the plain in-batch softmax, which learns ``log P(i|u) - log Q(i)``:
  popular items, sampled often as negatives, are pushed down;
- ``logQ (true Q)``: each column's logit minus the log of its sampling probability,
  ``log(B pi_i + M / N)`` (Yi et al., 2019; Yang et al., 2020);
- ``logQ (estimated)``: the same with ``B pi_i`` estimated by
  :class:`crossent.retrieval.FrequencyEstimator` from the stream of batches.

Held-out pairs are then retrieved from the whole catalogue by the towers' dot product:
recall@k, and the popularity of what is retrieved against that of the true items, drawn
(left: recall@k, with the Bayes-optimal ranking by the true ``P(i|u)`` as the ceiling;
right: the popularity rank of the top-10 retrieved items). CPU only, about a minute.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import crossent as ce
from crossent.retrieval import FrequencyEstimator

METHODS = ("no correction", "logQ (true Q)", "logQ (estimated)")
KS = (1, 2, 5, 10, 20, 50, 100)


class Catalogue:
    """Items with content features and Zipf popularity; (query, item) pairs from it."""

    def __init__(self, items: int, dim: int, zipf: float, strength: float, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.items, self.dim, self.strength = items, dim, strength
        self.features = torch.randn(items, dim, generator=g) / math.sqrt(dim) * 1.5
        rank = torch.randperm(items, generator=g)  # popularity rank of each item (0: top)
        self.rank = rank
        popularity = (rank + 1.0).double() ** -zipf
        self.popularity = popularity / popularity.sum()
        self.g = g

    def pairs(self, n: int):
        item = torch.multinomial(self.popularity, n, replacement=True, generator=self.g)
        query = self.strength * self.features[item] + torch.randn(n, self.dim, generator=self.g)
        return query, item

    def true_scores(self, query: torch.Tensor) -> torch.Tensor:
        """``log P(i | u)`` up to a constant per query (the Bayes-optimal ranking)."""
        c, v = self.strength, self.features
        return (c * query @ v.T - 0.5 * c * c * (v * v).sum(1)
                + torch.log(self.popularity).float())


class Towers(torch.nn.Module):
    def __init__(self, items: int, features: torch.Tensor, width: int = 32):
        super().__init__()
        dim = features.shape[1]
        self.query = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.ReLU(),
                                         torch.nn.Linear(64, width))
        self.item_id = torch.nn.Embedding(items, width)
        torch.nn.init.normal_(self.item_id.weight, std=0.01)
        self.item_features = torch.nn.Linear(dim, width)
        self.register_buffer("features", features)

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        return self.item_id(ids) + self.item_features(self.features[ids])


def train(cat: Catalogue, method: str, steps: int, batch: int, pool: int, seed: int) -> Towers:
    torch.manual_seed(seed)
    model = Towers(cat.items, cat.features)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    estimator = FrequencyEstimator(num_buckets=1 << 18, learning_rate=0.05)
    uniform = pool / cat.items
    g = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        query, ids = cat.pairs(batch)
        pool_ids = torch.randint(0, cat.items, (pool,), generator=g)
        all_ids = torch.cat([ids, pool_ids])
        log_q = None
        if method == "logQ (true Q)":
            log_q = torch.log(batch * cat.popularity[all_ids] + uniform).float()
        elif method == "logQ (estimated)":
            estimator.update(ids)
            log_q = torch.log(estimator.log_q(all_ids).exp() + uniform)
        loss = ce.sampled_softmax_loss(
            model.query(query), model.items(ids), item_ids=ids, negatives=model.items(pool_ids),
            negative_ids=pool_ids, item_log_q=None if log_q is None else log_q[:batch],
            negative_log_q=None if log_q is None else log_q[batch:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


@torch.no_grad()
def evaluate(cat: Catalogue, score_fn, query: torch.Tensor, target: torch.Tensor, chunk: int = 500):
    """Recall@k for :data:`KS` and the popularity ranks of the top-10 retrieved items."""
    hits = {k: 0 for k in KS}
    top10 = []
    for s in range(0, query.shape[0], chunk):
        scores = score_fn(query[s:s + chunk])
        top = scores.topk(max(KS), dim=1).indices
        found = top == target[s:s + chunk, None]
        for k in KS:
            hits[k] += int(found[:, :k].any(1).sum())
        top10.append(cat.rank[top[:, :10]].flatten())
    n = query.shape[0]
    return {k: hits[k] / n for k in KS}, torch.cat(top10)


def plot(results: dict, target_ranks: torch.Tensor, items: int, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    styles = {"Bayes-optimal (true P(i|u))": "k--", "no correction": "C3o-",
              "logQ (true Q)": "C0s-", "logQ (estimated)": "C2^-"}
    for name, (recall, _) in results.items():
        left.plot(KS, [recall[k] for k in KS], styles[name], label=name, ms=4)
    left.set_xscale("log")
    left.set_xlabel("k")
    left.set_ylabel("recall@k (held-out pairs)")
    left.set_title(f"retrieval from {items:,} items")
    left.legend(fontsize=8)
    bins = torch.logspace(0, math.log10(items), 26).numpy()

    def fractions(ranks):  # each bar: the fraction of the items in that band of ranks
        return dict(x=ranks.numpy() + 1, weights=torch.full((ranks.numel(),), 1 / ranks.numel()).numpy())

    right.hist(**fractions(target_ranks), bins=bins, histtype="step", color="k",
               label="true items of the queries", lw=1.5)
    for name, (_, ranks) in results.items():
        if not name.startswith("Bayes"):
            right.hist(**fractions(ranks), bins=bins, histtype="step", color=styles[name][:2],
                       label=f"top-10: {name}")
    right.set_xscale("log")
    right.set_xlabel("popularity rank of the item (1 = most popular)")
    right.set_ylabel("fraction of the items")
    right.set_title("popularity of what is retrieved")
    right.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--strength", type=float, default=2.0, help="c: how much the query tells")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--pool", type=int, default=512)
    p.add_argument("--test", type=int, default=5000, help="held-out pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="retrieval_logq.png")
    p.add_argument("--dpi", type=int, default=100)
    a = p.parse_args(argv)
    cat = Catalogue(a.items, a.dim, a.zipf, a.strength, a.seed)
    query, target = cat.pairs(a.test)
    results = {"Bayes-optimal (true P(i|u))": evaluate(cat, cat.true_scores, query, target)}
    for method in METHODS:
        start = time.perf_counter()
        model = train(cat, method, a.steps, a.batch, a.pool, a.seed)
        catalogue = model.items(torch.arange(a.items)).detach()
        results[method] = evaluate(cat, lambda q: model.query(q) @ catalogue.T, query, target)
        print(f"  trained {method!r} in {time.perf_counter() - start:.1f} s")
    target_ranks = cat.rank[target]
    print(f"{a.items:,} items, Zipf {a.zipf}, {a.steps} steps of {a.batch} pairs + {a.pool} "
          f"uniform negatives; {a.test} held-out pairs")
    print(f"  {'':<30}" + "".join(f"  R@{k:<4}" for k in KS) + "  median pop. rank of top-10")
    print(f"  {'true items of the queries':<30}" + " " * 8 * len(KS)
          + f"  {int(target_ranks.median()) + 1}")
    for name, (recall, ranks) in results.items():
        print(f"  {name:<30}" + "".join(f"  {recall[k]:.3f} " for k in KS)
              + f"  {int(ranks.median()) + 1}")
    path = plot(results, target_ranks, a.items, Path(a.out), a.dpi)
    print(f"figure: {path}")
    return results


if __name__ == "__main__":
    main()
