"""The tile plan of the fused linear cross-entropy keeps its working set in the budget.

Working set of a pass (see ``crossent.kernels.torch_chunked``): ``buffers`` float32
tiles of ``rows x cols``, plus, when the vocabulary is tiled (``cols < V``), a
``rows x H`` float32 accumulator for ``dx``. It must fit ``memory_budget`` whatever the
vocabulary size, which is what lets ``V = 256000`` run in a few MiB beyond the outputs.
"""

import pytest

from crossent.kernels.dispatch import (
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_RECOMPUTE_MEMORY_BUDGET,
    plan_tiles,
)

MiB = 1 << 20


def _working_set(plan, vocab, hidden, buffers):
    tiles = buffers * plan.rows * plan.cols * 4
    accumulator = 0 if plan.fused(vocab) else plan.rows * hidden * 4
    return tiles + accumulator


@pytest.mark.parametrize("vocab", [32000, 128256, 256000])
@pytest.mark.parametrize("hidden", [1024, 4096])
@pytest.mark.parametrize("tokens", [1, 300, 8192])
@pytest.mark.parametrize("budget", [4 * MiB, 8 * MiB, 32 * MiB])
@pytest.mark.parametrize("buffers", [1, 2, 3])
def test_working_set_within_budget(vocab, hidden, tokens, budget, buffers):
    plan = plan_tiles(tokens, vocab, buffers=buffers, memory_budget=budget,
                      accumulator_width=hidden)
    assert 1 <= plan.rows <= tokens and 1 <= plan.cols <= vocab
    assert _working_set(plan, vocab, hidden, buffers) <= budget


@pytest.mark.parametrize("recompute, budget", [(False, DEFAULT_MEMORY_BUDGET),
                                               (True, DEFAULT_RECOMPUTE_MEMORY_BUDGET)])
def test_default_budget_by_path(recompute, budget):
    plan = plan_tiles(8192, 256000, buffers=1, recompute=recompute, accumulator_width=4096)
    assert _working_set(plan, 256000, 4096, 1) <= budget
    # and the plan uses most of it rather than a token amount
    assert _working_set(plan, 256000, 4096, 1) > budget // 2


def test_whole_rows_when_they_fit():
    plan = plan_tiles(4096, 32000, buffers=1, memory_budget=32 * MiB, accumulator_width=1024)
    assert plan.fused(32000) and plan.rows == (32 * MiB) // (32000 * 4)


def test_explicit_chunk_sizes_override_the_budget():
    plan = plan_tiles(4096, 32000, memory_budget=MiB, token_chunk_size=64, vocab_chunk_size=1000)
    assert (plan.rows, plan.cols) == (64, 1000)
