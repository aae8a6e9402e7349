"""``crossent bench`` at tiny shapes: runs workers, prints the side-by-side table."""

import argparse
import json

import pytest
import torch

from crossent.bench import command
from crossent.bench.suites import SUITES, load
from crossent.bench.worker import main as worker_main

pytestmark = pytest.mark.slow


def _parse(argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_linear_tiny(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = _parse(["linear", "--set", "n=16", "h=8", "v=40", "--reps", "1", "--warmup", "0",
                   "--cases", "default", "z_loss", "--impls", "crossent", "torch_chunked",
                   "--json", str(out)])
    assert command.run(args) == 0
    text = capsys.readouterr().out
    assert "case default" in text and "case z_loss" in text and "time/base" in text
    data = json.loads(out.read_text())
    (suite,) = data["suites"]
    assert suite["config"]["n"] == 16 and suite["config"]["v"] == 40
    assert {r["impl"] for r in suite["results"]} == {"crossent", "torch_chunked"}
    assert {r["case"] for r in suite["results"]} == {"default", "z_loss"}
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])
    base = next(r for r in suite["results"] if r["impl"] == "torch_chunked" and r["case"] == "default")
    assert base["time_ratio"] == 1.0


def test_bench_ce_tiny_with_plot(tmp_path, capsys):
    png = tmp_path / "r.png"
    args = _parse(["ce", "--set", "n=8", "c=30", "--reps", "1", "--warmup", "0",
                   "--cases", "default", "bf16", "--plot", str(png)])
    assert command.run(args) == 0
    assert "case bf16" in capsys.readouterr().out
    assert png.stat().st_size > 1000


def test_unknown_suite_preset_case_are_errors(capsys):
    assert command.run(_parse(["nope"])) == 2
    assert command.run(_parse(["ce", "--preset", "nope"])) == 2
    assert command.run(_parse(["ce", "--cases", "nope"])) == 2
    assert command.run(_parse(["ce", "--set", "n"])) == 2
    err = capsys.readouterr().err
    assert "unknown suite" in err and "no preset 'nope'" in err and "case(s) ['nope']" in err
    assert "KEY=VALUE" in err


def test_gpu_preset_skips_without_cuda(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the preset runs instead of skipping")
    assert command.run(_parse(["linear", "--preset", "gemma2-2b"])) == 0
    assert "skipping" in capsys.readouterr().out


def test_worker_reports_json(capsys):
    cfg = {"n": 8, "h": 4, "v": 10, "dtype": "float32", "device": "cpu"}
    assert worker_main(["--suite", "linear", "--impl", "crossent", "--case", "probs",
                        "--config", json.dumps(cfg), "--reps", "1", "--warmup", "0"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["impl"] == "crossent" and rec["median_s"] > 0


@pytest.mark.parametrize("name", list(SUITES))
def test_suites_follow_the_contract(name):
    suite = load(name)
    assert isinstance(suite.DESCRIPTION, str) and suite.DESCRIPTION
    assert "default" in suite.PRESETS and suite.BASELINE in suite.IMPLS
    assert suite.FLOOR is None or suite.FLOOR in suite.IMPLS
    for preset in suite.PRESETS.values():
        assert {"dtype", "device", "cases"} <= set(preset)
        assert set(preset["cases"]) <= set(suite.CASES)


def test_bench_margin_tiny(tmp_path, capsys):
    out = tmp_path / "m.json"
    args = _parse(["margin", "--set", "n=8", "d=4", "c=30", "--reps", "1", "--warmup", "0",
                   "--cases", "arcface", "subcenter", "--impls", "crossent", "torch",
                   "--json", str(out)])
    assert command.run(args) == 0
    (suite,) = json.loads(out.read_text())["suites"]
    assert {(r["impl"], r["case"]) for r in suite["results"]} == {
        (i, c) for i in ("crossent", "torch") for c in ("arcface", "subcenter")}
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])


def test_bench_margin_partial_fc_on_two_ranks(capsys):
    """crossent_pfc (Partial FC with sampling) runs on the ranks the worker spawns."""
    from crossent.bench.worker import main as worker_main

    cfg = {"n": 8, "d": 4, "c": 40, "world_size": 2, "dtype": "float32", "device": "cpu"}
    assert worker_main(["--suite", "margin", "--impl", "crossent_pfc", "--case",
                        "arcface_sampled", "--config", json.dumps(cfg), "--reps", "1",
                        "--warmup", "0"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["world_size"] == 2 and [r["rank"] for r in rec["ranks"]] == [0, 1]
    # per step at least: the embeddings' all-gather and its reduce-scatter, 4 x 4 floats each
    assert rec["bytes_sent_per_step"] >= 2 * 4 * 4 * 4


def test_bench_margin_implementations_agree():
    """The suite's plain formula and crossent compute the same loss (so the timings compare
    like with like)."""
    suite = load("margin")
    cfg = {"n": 16, "d": 8, "c": 50, "dtype": "float64", "device": "cpu"}
    for name, case in suite.CASES.items():
        inputs = suite.make_inputs(cfg, case)
        torch.testing.assert_close(suite.step("crossent", inputs, cfg, case),
                                   suite.step("torch", inputs, cfg, case))


def test_bench_logprobs_tiny(tmp_path, capsys):
    out = tmp_path / "lp.json"
    args = _parse(["logprobs", "--set", "n=16", "h=8", "v=40", "--reps", "1", "--warmup", "0",
                   "--json", str(out)])
    assert command.run(args) == 0
    text = capsys.readouterr().out
    assert "case fp32" in text and "case bf16" in text and "time/floor" in text
    (suite,) = json.loads(out.read_text())["suites"]
    suite_module = load("logprobs")
    ran = {r["impl"] for r in suite["results"]}
    skipped = {i for i in suite_module.IMPLS
               if suite_module.why_unavailable(i, suite["config"]) is not None}
    assert ran == set(suite_module.IMPLS) - skipped
    assert {"crossent", "torch_logits", "crossent_lce"} <= ran
    for impl in skipped:
        assert f"{impl}: skipped" in text
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])


def test_bench_logprobs_implementations_agree():
    """The suite's implementations compute the same log-probabilities and entropy (so the
    timings compare like with like); the floor's log-probabilities too."""
    suite = load("logprobs")
    cfg = {"n": 24, "h": 8, "v": 50, "temperature": 0.7, "dtype": "float32", "device": "cpu"}
    x, w, y, _, _ = suite.make_inputs(cfg, suite.CASES["fp32"])
    want_lp, want_ent = suite.log_probs_and_entropy("torch_logits", x, w, y, 0.7)
    for impl in suite.IMPLS:
        if not suite.available(impl, cfg):
            continue
        lp, ent = suite.log_probs_and_entropy(impl, x, w, y, 0.7)
        torch.testing.assert_close(lp.float(), want_lp, atol=1e-5, rtol=1e-5, msg=impl)
        if ent is not None:
            torch.testing.assert_close(ent.float(), want_ent, atol=1e-5, rtol=1e-5, msg=impl)


def test_bench_distill_tiny(tmp_path, capsys):
    out = tmp_path / "d.json"
    args = _parse(["distill", "--set", "n=16", "h=8", "v=40", "--reps", "1", "--warmup", "0",
                   "--cases", "forward_kl", "jsd", "--impls", "crossent", "torch_logits",
                   "crossent_logits", "trl", "--json", str(out)])
    assert command.run(args) == 0
    (suite,) = json.loads(out.read_text())["suites"]
    assert {(r["impl"], r["case"]) for r in suite["results"]} == {
        (i, c) for i in ("crossent", "torch_logits", "crossent_logits", "trl")
        for c in ("forward_kl", "jsd")}
    assert all("error" not in r and r["median_s"] > 0 for r in suite["results"])


@pytest.mark.parametrize("case", ["forward_kl", "jsd"])
def test_bench_distill_implementations_agree(case):
    suite = load("distill")
    cfg = dict(n=12, h=8, v=50, dtype="float64", device="cpu")
    results = {}
    for impl in suite.IMPLS:
        inputs = suite.make_inputs(cfg, suite.CASES[case])
        loss = suite.step(impl, inputs, cfg, suite.CASES[case])
        loss.backward()
        results[impl] = (loss.detach(), inputs[0].grad, inputs[1].grad)
    for impl, got in results.items():
        for a, e in zip(got, results[suite.BASELINE]):
            torch.testing.assert_close(a, e, msg=impl)
