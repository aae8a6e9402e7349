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


def measure(suite_name: str, impl: str, case_name: str, cfg: dict, reps: int, warmup: int) -> dict:
    """Run ``warmup + reps`` steps here; the timed ones' median and the peak extra memory."""
    suite = load(suite_name)
    case = suite.CASES[case_name]
    inputs = suite.make_inputs(cfg, case)
    cuda = cfg.get("device") == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    mem = Memory(cfg.get("device", "cpu"))
    times = []
    for i in range(warmup + reps):
        _drop_grads(inputs)
        if i == warmup:  # libraries and thread pools are loaded by now
            mem.start()
        sync()
        t0 = time.perf_counter()
        loss = suite.step(impl, inputs, cfg, case)
        if loss is not None:
            loss.backward()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        del loss
    return {"suite": suite_name, "impl": impl, "case": case_name,
            "median_s": statistics.median(times), "times_s": times,
            "peak_extra_bytes": mem.peak_extra()}


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
