"""``crossent bench contrastive`` at tiny shapes: every implementation runs and reports."""

import argparse
import json

import pytest

from crossent.bench import command
from crossent.bench.suites import SUITES, load

pytestmark = pytest.mark.slow


def test_suite_is_registered_with_the_contract():
    assert "contrastive" in SUITES
    suite = load("contrastive")
    for name in ("DESCRIPTION", "CASES", "PRESETS", "IMPLS", "BASELINE", "available", "make_inputs", "step"):
        assert hasattr(suite, name), name
    assert suite.BASELINE in suite.IMPLS and "default" in suite.PRESETS


def test_bench_contrastive_tiny(tmp_path, capsys):
    out = tmp_path / "r.json"
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["contrastive", "--set", "n=24", "d=8", "--reps", "1", "--warmup", "0",
                              "--cases", "clip", "siglip", "--json", str(out)])
    assert command.run(args) == 0
    assert "case clip" in capsys.readouterr().out
    (suite,) = json.loads(out.read_text())["suites"]
    impls = {r["impl"] for r in suite["results"] if "error" not in r}
    assert {"crossent", "torch"} <= impls
    if load("contrastive").available("open_clip", suite["config"]):
        assert "open_clip" in impls


def test_bench_steps_compute_the_same_loss():
    suite = load("contrastive")
    cfg = dict(n=16, d=8, dtype="float32", device="cpu")
    for case in ("clip", "siglip", "nt_xent"):
        inputs = suite.make_inputs(cfg, suite.CASES[case])
        impls = [i for i in suite.IMPLS if suite.available(i, cfg) and not (i == "open_clip" and case == "nt_xent")]
        values = [suite.step(i, inputs, cfg, suite.CASES[case]).item() for i in impls]
        assert max(values) - min(values) < 1e-4 * abs(values[0]), (case, impls, values)
