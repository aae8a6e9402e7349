"""Streaming estimate of each item's sampling probability (Yi et al., RecSys 2019, Alg. 2).

A two-tower model trained on a stream of batches sees item ``y`` about every ``delta_y``
steps; ``1 / delta_y`` is its sampling probability per step (up to the batch size, a
constant that cancels in the softmax). Algorithm 2 estimates ``delta`` with two arrays of
``H`` buckets indexed by a hash ``h`` of the id: ``A[h]``, the last step the bucket was
seen, and ``B[h]``, a running average of the gaps between sightings::

    at step t, for each id y of the batch:
        B[h(y)] <- (1 - alpha) B[h(y)] + alpha (t - A[h(y)])
        A[h(y)] <- t
    p(y) = 1 / B[h(y)]

Ids that share a bucket (a collision) share its gaps: the bucket sees their sightings
together, so its gap is shorter and the estimate of each of them is the *sum* of their
probabilities, an over-estimate. With ``num_hashes`` independent hash functions and
arrays, the paper takes the largest gap, ``p(y) = 1 / max_i B_i[h_i(y)]``: the bucket
least shared is the least over-estimated (as a count-min sketch takes the smallest count).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core import checks as _checks

__all__ = ["FrequencyEstimator"]

_MASK63 = (1 << 63) - 1


def _int64(x: int) -> int:
    """The int64 with the low 64 bits of ``x`` (two's complement)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = _int64(0xBF58476D1CE4E5B9)
_MIX2 = _int64(0x94D049BB133111EB)


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _hash(ids: torch.Tensor, seed: int, buckets: int) -> torch.Tensor:
    """SplitMix64's finaliser of ``id + seed * golden`` (int64 arithmetic wraps), then the
    bucket: a hash whose every output bit depends on every input bit, the same on every
    device."""
    z = ids + _int64(seed * _GOLDEN)
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return torch.remainder(z & _MASK63, buckets)


class FrequencyEstimator(nn.Module):
    """Streaming sampling-probability estimate of item ids, for the logQ correction.

    Yi et al.'s Algorithm 2: per hash function ``i`` and bucket, the last step seen ``A``
    and the averaged gap between sightings ``B``; :meth:`update` once per training step
    with the batch's ids, :meth:`log_q` the estimate ``log p(y) = -log max_i B_i[h_i(y)]``
    to pass as ``item_log_q`` / ``negative_log_q`` to
    :func:`crossent.sampled_softmax_loss`::

        t <- t + 1;   for y in ids:  B[h(y)] <- (1 - alpha) B[h(y)] + alpha (t - A[h(y)]),
                                     A[h(y)] <- t

    An id that occurs ``k`` times in one step updates its bucket ``k`` times, in order (the
    later ones with gap 0), so ``p`` estimates the expected number of occurrences per step.
    ``A`` and ``B`` start at 0, as in the paper, so a bucket's first ``~1 / alpha``
    sightings under-estimate its gap (over-estimate ``p``). A bucket never seen has no gap
    yet: its estimate is ``1 / t`` (at most once in ``t`` steps; ``1`` before the first
    step). The state (``A``, ``B``, ``t``) is made of module
    buffers: ``state_dict`` / ``load_state_dict`` and ``.to(device)`` work; the updates run
    on the buffers' device without host synchronisation. Across ranks, update every rank's
    estimator with the ids of the global batch (e.g. all-gathered) to keep them equal.

    Args:
        num_buckets: ``H``, buckets per hash function (more than the number of distinct
            ids for few collisions).
        learning_rate: ``alpha`` in ``(0, 1]``: larger adapts faster, averages less.
        num_hashes: independent hash functions (``1`` in the paper's Algorithm 2; more
            reduce the effect of collisions).
        seed: picks the hash functions (ranks must use the same).
        device: where the state lives.
    Shape:
        ids ``(n,)`` int64; :meth:`log_q` returns ``(n,)`` float32.
    Returns:
        :meth:`update` returns None (the state changes in place); :meth:`log_q` the
        estimated log sampling probability of each id, float32.
    Example:
        >>> import torch
        >>> from crossent.retrieval import FrequencyEstimator
        >>> est = FrequencyEstimator(num_buckets=1024, learning_rate=0.1)
        >>> for step in range(200):  # id 0 in every batch, id 1 in every fourth
        ...     est.update(torch.tensor([0, 1]) if step % 4 == 0 else torch.tensor([0]))
        >>> est.log_q(torch.tensor([0, 1])).exp().round(decimals=2)
        tensor([1.0000, 0.2500])

    References:
        Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
        Recommendations", RecSys 2019 (Algorithm 2, and the multiple hashings of its
        section 5).
    """

    def __init__(self, num_buckets: int = 1 << 20, *, learning_rate: float = 0.01,
                 num_hashes: int = 1, seed: int = 0, device=None) -> None:
        super().__init__()
        num_buckets = _checks.check_int("num_buckets", num_buckets)
        num_hashes = _checks.check_int("num_hashes", num_hashes)
        for name, value in (("num_buckets", num_buckets), ("num_hashes", num_hashes)):
            if value < 1:
                raise _checks.ArgumentError(f"{name} must be a positive int, got {value}")
        alpha = _checks.check_positive("learning_rate", learning_rate, allow_none=False)
        if alpha > 1.0:
            raise _checks.ArgumentError(f"learning_rate must be in (0, 1], got {alpha}")
        self.num_buckets, self.num_hashes, self.learning_rate = num_buckets, num_hashes, alpha
        self.seed = _checks.check_int("seed", seed)
        self.register_buffer("last_step", torch.zeros(num_hashes, num_buckets, dtype=torch.int64,
                                                      device=device))  # A
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets, dtype=torch.float32,
                                                device=device))  # B
        self.register_buffer("step", torch.zeros((), dtype=torch.int64, device=device))  # t

    def extra_repr(self) -> str:
        return (f"num_buckets={self.num_buckets}, learning_rate={self.learning_rate}, "
                f"num_hashes={self.num_hashes}, seed={self.seed}")

    def _check_ids(self, ids) -> torch.Tensor:
        if isinstance(ids, torch.Tensor) and ids.dim() != 1:
            raise _checks.ArgumentError(f"ids must be 1-D (n,), got shape {list(ids.shape)}")
        n = ids.shape[0] if isinstance(ids, torch.Tensor) else 0
        return _checks.check_id_vector("ids", ids, n, self.gap.device)

    def _buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """``(num_hashes, n)`` bucket of each id under each hash function."""
        return torch.stack([_hash(ids, self.seed * self.num_hashes + i + 1, self.num_buckets)
                            for i in range(self.num_hashes)])

    @torch.no_grad()
    def update(self, ids: torch.Tensor) -> None:
        """One training step: advance ``t`` and record the batch's ids (duplicates count)."""
        ids = self._check_ids(ids)
        self.step += 1
        alpha = self.learning_rate
        for i, h in enumerate(self._buckets(ids)):
            buckets, count = torch.unique(h, return_counts=True)
            # the first sighting of the step sees gap t - A; the k - 1 others gap 0
            first = (1 - alpha) * self.gap[i, buckets] + alpha * (self.step - self.last_step[i, buckets])
            self.gap[i, buckets] = first * (1 - alpha) ** (count - 1).to(first.dtype)
            self.last_step[i, buckets] = self.step

    @torch.no_grad()
    def log_q(self, ids: torch.Tensor) -> torch.Tensor:
        """``log p(y) = -log max_i B_i[h_i(y)]`` per id (``-log t`` where never seen)."""
        ids = self._check_ids(ids)
        h = self._buckets(ids)
        gap = torch.stack([self.gap[i, h[i]] for i in range(self.num_hashes)]).amax(0)
        unseen = torch.clamp(self.step, min=1).to(gap.dtype)
        gap = torch.where(gap > 0, gap, unseen)
        return -torch.log(gap)
