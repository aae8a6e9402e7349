"""Shared test configuration for crossent's suite (kept deliberately small).

* Hypothesis: the default profile ``crossent`` is fast and derandomized (reproducible runs
  in CI); ``HYPOTHESIS_PROFILE=thorough`` explores more and randomly.
* Every test starts from the same torch RNG state, so tensors made with ``torch.randn``
  inside a test are the same on every run.
* Without CUDA, Triton kernels run under its CPU interpreter. ``TRITON_INTERPRET`` is read
  when triton is first imported, and any test module (or torch itself) may import it, so
  it is set here, before the first test module is collected.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "crossent",
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "crossent"))


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed torch's global generator before each test (tests stay order-independent)."""
    torch.manual_seed(0)
    yield


# --- distributed tests: one pool of W Gloo processes per world size, shared by the session
@pytest.fixture(scope="session")
def rank_pool():
    """``rank_pool(W)``: a started :class:`distributed_harness.RankPool` of ``W`` ranks,
    spawned once per test session (per xdist worker) and reused by every job."""
    from distributed_harness import RankPool

    pools: dict[int, RankPool] = {}

    def get(world_size: int) -> RankPool:
        if world_size not in pools:
            pools[world_size] = RankPool(world_size)
        pools[world_size].start()
        return pools[world_size]

    yield get
    for pool in pools.values():
        pool.__exit__(None, None, None)
