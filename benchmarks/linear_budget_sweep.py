"""Time and peak memory of crossent.linear_cross_entropy against its memory budget.

    python benchmarks/linear_budget_sweep.py 8 16 32            # MiB, reduction='mean'
    python benchmarks/linear_budget_sweep.py --reduction none 4 8

Each budget runs in its own process (as the bench workers do), at N=4096, H=1024,
V=32000 fp32: three forward+backward passes, peak extra resident memory of the last.
"""

import argparse
import os
import subprocess
import sys

WORKER = r"""
import sys, time, torch, crossent as ce
from crossent.bench.worker import _Memory
from crossent.bench.linear import make_inputs
x, w, y = make_inputs(4096, 1024, 32000, torch.float32, "cpu", {})
budget, reduction = int(float(sys.argv[1]) * 2**20), sys.argv[2]
times = []
for _ in range(3):
    x.grad = w.grad = None
    mem = _Memory("cpu"); mem.start()
    t = time.perf_counter()
    loss = ce.linear_cross_entropy(x, w, y, memory_budget=budget, reduction=reduction)
    (loss.sum() if reduction == "none" else loss).backward()
    times.append(time.perf_counter() - t)
    peak = mem.peak_extra()
last = sorted(times[1:])
print(f"{sys.argv[1]:>6} MiB  {reduction:<5} ms (median of last 2) {sum(last) / 2 * 1e3:8.0f}"
      f"  peak MiB {peak / 2**20:7.1f}")
"""

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("budgets_mib", nargs="+")
    p.add_argument("--reduction", default="mean")
    a = p.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    for b in a.budgets_mib:
        subprocess.run([sys.executable, "-c", WORKER, b, a.reduction], env=env, check=True)
