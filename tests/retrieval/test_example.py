"""examples/retrieval_logq.py at a tiny size: it trains the three towers, evaluates and draws."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # trains three small models and draws a figure

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "retrieval_logq.py"


def test_retrieval_example_runs_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("retrieval_logq_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "r.png"
    results = module.main(["--items", "400", "--steps", "3", "--batch", "32", "--pool", "16",
                           "--test", "64", "--out", str(out)])
    assert set(results) == {"Bayes-optimal (true P(i|u))", *module.METHODS}
    for recall, ranks in results.values():
        assert all(0.0 <= recall[k] <= 1.0 for k in module.KS)
        assert [recall[k] for k in module.KS] == sorted(recall[k] for k in module.KS)
        assert ranks.numel() == 64 * 10
    assert out.stat().st_size > 1000
    assert "figure:" in capsys.readouterr().out
