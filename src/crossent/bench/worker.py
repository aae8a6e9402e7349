"""One implementation, one case, in this process: ``python -m crossent.bench.worker``.

    python -m crossent.bench.worker --suite linear --impl crossent --case default \
        --config '{"n": 2048, "h": 512, "v": 16000, "dtype": "float32", "device": "cpu"}'

Prints one JSON line: median step seconds over ``--reps`` after ``--warmup`` steps, and
the peak extra memory in bytes. A step is the suite's forward (``suite.step``) and, when
it returns a tensor, ``.backward()`` on it.

Peak extra memory: on CUDA, ``max_memory_allocated`` minus the allocation after the
inputs exist. On CPU, the process's peak resident set (``VmHWM``) minus its resident
set after the inputs exist and the warm-up ran; the peak is reset first by writing ``5`` to
``/proc/self/clear_refs`` (Linux), so input creation does not count. The bench runs
workers with ``MALLOC_MMAP_THRESHOLD_=131072`` so glibc returns freed blocks at once.
Gradients of every input tensor are dropped between steps, so each step allocates them
afresh.

A suite may run an implementation on ranks (its optional ``world_size(impl, cfg)``):
the worker then spawns them (:func:`run_ranks`) and reports the slowest rank's time, the
largest per-rank peak and the bytes each rank sends per step through
:mod:`crossent.distributed`.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from .suites import load


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Memory:
    """Peak extra memory of what runs between :meth:`start` and :meth:`peak_extra`."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def start(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self.base = _status_kib("VmRSS") * 1024

    def peak_extra(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _status_kib("VmHWM") * 1024 - self.base


def _tensors(inputs):
    """Every tensor in a (nested) tuple/list/dict of inputs."""
    if isinstance(inputs, torch.Tensor):
        yield inputs
    elif isinstance(inputs, dict):
        for value in inputs.values():
            yield from _tensors(value)
    elif isinstance(inputs, (tuple, list)):
        for value in inputs:
            yield from _tensors(value)


def _drop_grads(inputs) -> None:
    for t in _tensors(inputs):
        t.grad = None


def _steps(suite, impl: str, case: dict, cfg: dict, reps: int, warmup: int,
           barrier=None) -> tuple[list[float], int, int]:
    """``warmup + reps`` steps in this process: the timed ones, the peak extra memory and
    the bytes sent through :mod:`crossent.distributed` per timed step (0 on one process)."""
    from ..core.collectives import count_traffic

    inputs = suite.make_inputs(cfg, case)
    cuda = cfg.get("device") == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mem = Memory(cfg.get("device", "cpu"))
    times, sent = [], 0
    for i in range(warmup + reps):
        _drop_grads(inputs)
        if i == warmup:  # libraries and thread pools are loaded by now
            mem.start()
        sync()
        if barrier is not None:
            barrier()  # ranks start each step together
        with count_traffic() as traffic:
            t0 = time.perf_counter()
            loss = suite.step(impl, inputs, cfg, case)
            if loss is not None:
                loss.backward()
            sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            sent += traffic.bytes_sent
        del loss
    return times, mem.peak_extra(), sent // max(reps, 1)


def world_size(suite, impl: str, cfg: dict) -> int | None:
    """Ranks an implementation runs on: the suite's ``world_size(impl, cfg)`` (optional
    in the suite contract); None: in this process, without a process group."""
    fn = getattr(suite, "world_size", None)
    ranks = fn(impl, cfg) if fn is not None else None
    return None if ranks is None else int(ranks)


def measure(suite_name: str, impl: str, case_name: str, cfg: dict, reps: int, warmup: int) -> dict:
    """Run ``warmup + reps`` steps; the timed ones' median and the peak extra memory.

    An implementation on ``W`` ranks runs in ``W`` processes spawned here (one
    ``torch.distributed`` group: Gloo on CPU, NCCL on CUDA with one device per rank, each
    rank with ``threads // W`` threads); the record gives the slowest rank's median, the
    largest per-rank peak, every rank's numbers and the bytes each rank sent per step.
    """
    suite = load(suite_name)
    case = suite.CASES[case_name]
    ranks = world_size(suite, impl, cfg)
    record = {"suite": suite_name, "impl": impl, "case": case_name}
    if ranks is None:
        times, peak, _ = _steps(suite, impl, case, cfg, reps, warmup)
        return {**record, "median_s": statistics.median(times), "times_s": times,
                "peak_extra_bytes": peak}
    per_rank = run_ranks(ranks, suite_name, impl, case_name, cfg, reps, warmup)
    return {**record, "world_size": ranks,
            "median_s": max(r["median_s"] for r in per_rank),
            "times_s": [max(t) for t in zip(*(r["times_s"] for r in per_rank))],
            "peak_extra_bytes": max(r["peak_extra_bytes"] for r in per_rank),
            "bytes_sent_per_step": max(r["bytes_sent_per_step"] for r in per_rank),
            "ranks": per_rank}


def _rank_main(rank: int, ranks: int, store: str, threads: int, args: tuple, results) -> None:
    import torch.distributed as dist

    suite_name, impl, case_name, cfg, reps, warmup = args
    cuda = cfg.get("device") == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    torch.set_num_threads(threads)
    dist.init_process_group("nccl" if cuda else "gloo", store=dist.FileStore(store, ranks),
                            rank=rank, world_size=ranks)
    try:
        suite = load(suite_name)
        times, peak, sent = _steps(suite, impl, suite.CASES[case_name], cfg, reps, warmup,
                                   barrier=dist.barrier)
        results.put((rank, {"rank": rank, "median_s": statistics.median(times), "times_s": times,
                            "peak_extra_bytes": peak, "bytes_sent_per_step": sent}))
    finally:
        dist.destroy_process_group()


def run_ranks(ranks: int, suite_name: str, impl: str, case_name: str, cfg: dict, reps: int,
              warmup: int) -> list[dict]:
    """One measurement on ``ranks`` spawned processes; every rank's record, in rank order."""
    import tempfile

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    threads = max(1, torch.get_num_threads() // ranks)
    with tempfile.TemporaryDirectory(prefix="crossent-bench-") as tmp:
        args = (suite_name, impl, case_name, cfg, reps, warmup)
        procs = [ctx.Process(target=_rank_main, args=(r, ranks, f"{tmp}/store", threads, args,
                                                       results))
                 for r in range(ranks)]
        for p in procs:
            p.start()
        out = {}
        while len(out) < ranks:
            try:
                rank, rec = results.get(timeout=5)
                out[rank] = rec
            except Exception:
                failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if failed:
                    for p in procs:
                        p.kill()
                    raise RuntimeError(f"bench rank(s) {failed} failed (see stderr above)")
        for p in procs:
            p.join()
    return [out[r] for r in range(ranks)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", required=True)
    p.add_argument("--impl", required=True)
    p.add_argument("--case", default="default")
    p.add_argument("--config", required=True, help="the suite's configuration, as JSON")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args(argv)
    if a.reps < 1:
        p.error("--reps must be at least 1")
    record = measure(a.suite, a.impl, a.case, json.loads(a.config), a.reps, a.warmup)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
