"""``crossent bench retrieval`` at a tiny shape, and its two implementations agree."""

import argparse
import json

import pytest
import torch

from crossent.bench import command
from crossent.bench.suites import load

pytestmark = pytest.mark.slow


def test_bench_retrieval_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["retrieval", "--set", "b=16", "m=24", "d=8", "--reps", "1",
                              "--warmup", "0", "--cases", "default", "in_batch",
                              "--json", str(out)])
    assert command.run(args) == 0
    assert "case in_batch" in capsys.readouterr().out
    (suite,) = json.loads(out.read_text())["suites"]
    assert {(r["impl"], r["case"]) for r in suite["results"]} == {
        (i, c) for i in ("crossent", "torch") for c in ("default", "in_batch")}
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])


def test_bench_retrieval_implementations_agree():
    """The suite's plain formula and crossent compute the same loss and gradients."""
    suite = load("retrieval")
    cfg = {"b": 24, "m": 40, "d": 8, "dtype": "float64", "device": "cpu"}
    for name, case in suite.CASES.items():
        a, b = suite.make_inputs(cfg, case), suite.make_inputs(cfg, case)
        if "item_ids" in a:  # the ids repeat: accidental hits are exercised
            assert a["item_ids"].unique().numel() < cfg["b"]
        la, lb = suite.step("crossent", a, cfg, case), suite.step("torch", b, cfg, case)
        torch.testing.assert_close(la, lb, msg=name)
        la.backward()
        lb.backward()
        torch.testing.assert_close(a["query"].grad, b["query"].grad, msg=name)
