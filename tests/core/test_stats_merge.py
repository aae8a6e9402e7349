"""``_stats``: statistics of column tiles merged exactly, against whole-row PyTorch ops."""

import pytest
import torch

from crossent.core import stats as _stats


def _merged(z, bounds, **kw):
    parts = [_stats.tile_stats(z[:, a:b], None, a, **kw) for a, b in zip(bounds, bounds[1:])]
    out = parts[0]
    for p in parts[1:]:
        out = _stats.merge(out, p)
    return out


@pytest.mark.parametrize("entropy", [False, True])
def test_merged_argmax_is_the_row_argmax_when_log_sum_exp_orders_tiles_differently(entropy):
    # tile 0: four 5s (max 5, logsumexp 5 + log 4 = 6.39); tile 1: one 6 (max 6, lse 6).
    # The row's argmax is in tile 1, although tile 0 has the larger log-sum-exp.
    z = torch.tensor([[5.0, 5.0, 5.0, 5.0, 6.0, -torch.inf]], dtype=torch.float64)
    st = _merged(z, [0, 4, 6], entropy=entropy, argmax=True)
    assert st.argmax.tolist() == [4]
    torch.testing.assert_close(_stats.logsumexp(st), torch.logsumexp(z, 1))


def test_merged_statistics_equal_whole_row_ones():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 50, generator=g, dtype=torch.float64) * 4
    z[3] = -torch.inf  # a row with no mass
    z[5, 10:] = -torch.inf
    st = _merged(z, [0, 3, 20, 21, 50], argmax=True)
    assert torch.equal(st.argmax[[0, 1, 2, 4, 5, 6]], z.argmax(1)[[0, 1, 2, 4, 5, 6]])
    torch.testing.assert_close(_stats.logsumexp(st), torch.logsumexp(z, 1))
