"""examples/distill_topk.py at a tiny size: it runs, prints every student and draws the figure."""

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distill_topk.py"


def test_distill_example_runs_tiny(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("distill_topk", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "d.png"
    assert module.main(["--steps", "4", "--teacher-steps", "3", "--classes", "40", "--train",
                        "64", "--pool", "256", "--every", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("hard labels", "dense teacher", "top-64", "top-8", "teacher:"):
        assert name in text
    assert out.stat().st_size > 1000
