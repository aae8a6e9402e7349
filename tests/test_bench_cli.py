"""``crossent bench linear`` at tiny shapes: runs workers, prints the side-by-side table."""

import argparse
import json

from crossent.bench import command
from crossent.bench.worker import main as worker_main


def test_bench_linear_tiny(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    out = tmp_path / "r.json"
    args = parser.parse_args(["linear", "--n", "16", "--h", "8", "--v", "40", "--reps", "1",
                              "--warmup", "0", "--cases", "default", "z_loss",
                              "--impls", "crossent", "torch_chunked", "--json", str(out)])
    assert command.run(args) == 0
    text = capsys.readouterr().out
    assert "case default" in text and "case z_loss" in text and "time/torch" in text
    data = json.loads(out.read_text())
    assert {r["impl"] for r in data["results"]} == {"crossent", "torch_chunked"}
    assert all("error" not in r and r["median_s"] > 0 for r in data["results"])


def test_gpu_preset_skips_without_cuda(capsys):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    import torch

    if torch.cuda.is_available():
        return
    assert command.run(parser.parse_args(["linear", "--preset", "gemma2-2b"])) == 0
    assert "skipping" in capsys.readouterr().out


def test_worker_reports_json(capsys):
    assert worker_main(["--impl", "crossent", "--case", "probs", "--n", "8", "--h", "4",
                        "--v", "10", "--reps", "1", "--warmup", "0"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["impl"] == "crossent" and rec["median_s"] > 0
