"""``crossent bench linear``: forward+backward time and peak extra memory, side by side.

Each implementation runs in its own Python process (:mod:`crossent.bench.worker`), so
one's allocations never inflate another's peak. ``--rounds R`` repeats every process R
times, interleaved, and reports the median, which damps a busy machine. Ratios are
against PyTorch's chunked ``F.linear_cross_entropy``. Presets give the GPU shapes of
Llama-3-8B and Gemma-2-2B (8192 tokens, bf16); Liger-Kernel and cut-cross-entropy join
on CUDA when installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

import torch

from .linear import CASES, IMPLS, available

SUITES = ("linear",)
PRESETS = {
    "cpu-small": dict(n=2048, h=512, v=16000, dtype="float32", device="cpu", cases=["default"]),
    "cpu-judged": dict(n=4096, h=1024, v=32000, dtype="float32", device="cpu", cases=list(CASES)),
    "llama3-8b": dict(n=8192, h=4096, v=128256, dtype="bfloat16", device="cuda", cases=["default"]),
    "gemma2-2b": dict(n=8192, h=2304, v=256000, dtype="bfloat16", device="cuda", cases=["softcap"]),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=SUITES, help="what to benchmark")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--n", type=int, help="tokens")
    parser.add_argument("--h", type=int, help="hidden size")
    parser.add_argument("--v", type=int, help="vocabulary size")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--device", choices=("cpu", "cuda"))
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", help="also write the results to this file")


def _config(args) -> dict:
    cfg = dict(PRESETS[args.preset])
    for key in ("n", "h", "v", "dtype", "device", "cases"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def _run_worker(impl: str, case: str, cfg: dict, args) -> dict:
    cmd = [sys.executable, "-m", "crossent.bench.worker", "--impl", impl, "--case", case,
           "--n", str(cfg["n"]), "--h", str(cfg["h"]), "--v", str(cfg["v"]),
           "--dtype", cfg["dtype"], "--device", cfg["device"],
           "--reps", str(args.reps), "--warmup", str(args.warmup)]
    # Return freed blocks to the OS at once, so resident-set peaks are allocation peaks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"impl": impl, "case": case, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def run(args) -> int:
    cfg = _config(args)
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        print(f"preset/device needs CUDA, which is not available here ({machine()}); skipping")
        return 0
    impls = [i for i in args.impls if available(i, cfg["device"])]
    flops = 6 * cfg["n"] * cfg["h"] * cfg["v"]
    print(f"crossent bench linear: N={cfg['n']} H={cfg['h']} V={cfg['v']} {cfg['dtype']} "
          f"on {cfg['device']}; {machine()}")
    results = []
    for case in cfg["cases"]:
        runs: dict[str, list[dict]] = {i: [] for i in impls}
        for _ in range(args.rounds):
            for impl in impls:
                runs[impl].append(_run_worker(impl, case, cfg, args))
        rows = {}
        for impl, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                rows[impl] = {"impl": impl, "case": case, "error": rs[0]["error"]}
                continue
            rows[impl] = {
                "impl": impl, "case": case,
                "median_s": statistics.median(r["median_s"] for r in ok),
                "peak_extra_bytes": statistics.median(r["peak_extra_bytes"] for r in ok),
            }
        base = rows.get("torch_chunked", {})
        print(f"\ncase {case}")
        print(f"{'impl':<14}{'ms':>10}{'TFLOP/s':>9}{'peak MiB':>10}{'time/torch':>12}{'mem/torch':>11}")
        for impl, r in rows.items():
            if "error" in r:
                print(f"{impl:<14} error: {r['error']}")
                continue
            t_ratio = r["median_s"] / base["median_s"] if "median_s" in base else float("nan")
            m_ratio = (r["peak_extra_bytes"] / base["peak_extra_bytes"]
                       if base.get("peak_extra_bytes") else float("nan"))
            print(f"{impl:<14}{r['median_s'] * 1e3:>10.1f}{flops / r['median_s'] / 1e12:>9.3f}"
                  f"{r['peak_extra_bytes'] / 2**20:>10.1f}{t_ratio:>12.3f}{m_ratio:>11.3f}")
            r.update(time_ratio=t_ratio, mem_ratio=m_ratio)
        results.extend(rows.values())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "machine": machine(), "results": results}, f, indent=1)
    return 0
