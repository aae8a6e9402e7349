"""``crossent.cross_entropy`` against ``torch.nn.functional.cross_entropy`` on given logits.

    python benchmarks/cross_entropy_core.py                 # N=4096, C=32000, CPU
    python benchmarks/cross_entropy_core.py --n 8192 --c 50257 --cases default bf16

Each (implementation, case) runs in its own process: median forward+backward time over
``--reps`` after one warm-up, and peak extra resident memory (the method of
``crossent/bench/worker.py``: VmHWM minus VmRSS after the inputs exist, the logits'
gradient included). Printed as ratios to PyTorch.
"""

import argparse
import json
import os
import subprocess
import sys

CASES = {
    "default": {},
    "label_smoothing": {"label_smoothing": 0.1},
    "ignore_half": {"ignore": True},
    "bf16": {"dtype": "bfloat16"},
}

WORKER = r"""
import json, statistics, sys, time, torch, torch.nn.functional as F
import crossent as ce
from crossent.bench.worker import _Memory
impl, n, c, reps, case = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5])
g = torch.Generator().manual_seed(0)
x = torch.randn(n, c, generator=g).to(getattr(torch, case.get("dtype", "float32"))).requires_grad_()
y = torch.randint(0, c, (n,), generator=g)
if case.get("ignore"):
    y[::2] = -100
fn = ce.cross_entropy if impl == "crossent" else F.cross_entropy
kw = {"label_smoothing": case.get("label_smoothing", 0.0)}
times = []
for i in range(reps + 1):
    x.grad = None
    if i == 1:
        mem = _Memory("cpu"); mem.start()
    t = time.perf_counter()
    fn(x, y, **kw).backward()
    if i:
        times.append(time.perf_counter() - t)
print(json.dumps({"s": statistics.median(times), "peak": mem.peak_extra()}))
"""


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--c", type=int, default=32000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    a = p.parse_args()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    import torch

    print(f"cross_entropy on given logits: N={a.n} C={a.c}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'case':<16}{'impl':<10}{'ms':>9}{'peak MiB':>10}{'time/torch':>12}{'mem/torch':>11}")
    for case in a.cases:
        rows = {}
        for impl in ("torch", "crossent"):
            out = subprocess.run(
                [sys.executable, "-c", WORKER, impl, str(a.n), str(a.c), str(a.reps),
                 json.dumps(CASES[case])],
                env=env, capture_output=True, text=True, check=True,
            )
            rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
        for impl, r in rows.items():
            base = rows["torch"]
            print(f"{case:<16}{impl:<10}{r['s'] * 1e3:>9.0f}{r['peak'] / 2**20:>10.1f}"
                  f"{r['s'] / base['s']:>12.3f}{r['peak'] / base['peak']:>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
