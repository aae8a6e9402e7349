"""One implementation, one case, in this process: ``python -m crossent.bench.worker``.

Prints one JSON line: median forward+backward seconds over ``--reps`` after
``--warmup`` runs, and peak extra memory in bytes.

Peak extra memory: on CUDA, ``max_memory_allocated`` minus the allocation after the
inputs exist. On CPU, the process's peak resident set (``VmHWM``) minus its resident
set after the inputs exist and the warm-up ran; the peak is reset first by writing ``5`` to
``/proc/self/clear_refs`` (Linux), so input creation does not count. The bench runs
workers with ``MALLOC_MMAP_THRESHOLD_=131072`` so glibc returns freed blocks at once. Gradients are
dropped between repetitions, so each repetition allocates them afresh.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Memory:
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


def main(argv=None) -> int:
    from .linear import CASES, make_inputs, step

    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True)
    p.add_argument("--case", default="default")
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--h", type=int, required=True)
    p.add_argument("--v", type=int, required=True)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args(argv)
    case = CASES[a.case]
    x, w, y = make_inputs(a.n, a.h, a.v, getattr(torch, a.dtype), a.device, case)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    mem = _Memory(a.device)
    times = []
    for i in range(a.warmup + a.reps):
        x.grad = w.grad = None
        if i == a.warmup:  # libraries and thread pools are loaded by now
            mem.start()
        sync()
        t0 = time.perf_counter()
        loss = step(a.impl, x, w, y, case)
        loss.backward()
        sync()
        if i >= a.warmup:
            times.append(time.perf_counter() - t0)
        del loss
    peak = mem.peak_extra()
    print(json.dumps({"impl": a.impl, "case": a.case, "median_s": statistics.median(times),
                      "times_s": times, "peak_extra_bytes": peak}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
