"""``crossent bench parallel`` at a tiny shape: the worker spawns the ranks itself."""

import json

import pytest

from crossent.bench.suites import parallel
from crossent.bench.worker import main as worker_main

pytestmark = pytest.mark.slow


def test_shards_cover_the_classes_in_rank_order():
    for v, world in ((10, 4), (256000, 3), (5, 5)):
        spans = [parallel.shard(v, world, r) for r in range(world)]
        assert [s for s, _ in spans] == [sum(n for _, n in spans[:r]) for r in range(world)]
        assert sum(n for _, n in spans) == v and max(n for _, n in spans) - min(n for _, n in spans) <= 1


def test_worker_runs_an_implementation_on_two_ranks(capsys):
    cfg = {"n": 8, "h": 4, "v": 11, "world_size": 2, "dtype": "float32", "device": "cpu"}
    assert worker_main(["--suite", "parallel", "--impl", "crossent_tp", "--case", "default",
                        "--config", json.dumps(cfg), "--reps", "2", "--warmup", "1"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["world_size"] == 2 and [r["rank"] for r in rec["ranks"]] == [0, 1]
    assert rec["median_s"] == max(r["median_s"] for r in rec["ranks"]) > 0
    assert len(rec["times_s"]) == 2
    # per step: the stats all-gather and the input-gradient all-reduce at least
    assert rec["bytes_sent_per_step"] >= 8 * 4 * 4 + 8 * 4
