"""``crossent bench [SUITE ...]``: time and peak memory side by side, each in its own process.

Every (suite, case, implementation) runs in a fresh Python process
(:mod:`crossent.bench.worker`), so one implementation's allocations never inflate
another's peak. ``--rounds R`` repeats every process R times, interleaved, and reports
the median, which damps a busy machine. Each suite names its baseline (PyTorch) and,
optionally, its floor (what the hardware allows); the table gives ratios to both.

    crossent bench                                  # every suite, default presets
    crossent bench linear --preset cpu-judged --json out.json --plot out.png
    crossent bench ce --set n=8192 c=50257 --cases default bf16
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

from .suites import SUITES, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suites", nargs="*", metavar="SUITE",
                        help=f"what to benchmark, any of {', '.join(SUITES)} (default: all)")
    parser.add_argument("--preset", default="default",
                        help="a preset of the suite(s): shapes, dtype, device, cases")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override preset entries, e.g. --set n=4096 dtype=bfloat16")
    parser.add_argument("--cases", nargs="+", help="only these cases")
    parser.add_argument("--impls", nargs="+", help="only these implementations")
    parser.add_argument("--reps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="processes per implementation, interleaved (median reported)")
    parser.add_argument("--json", help="also write the raw results to this file")
    parser.add_argument("--plot", help="also draw the time and memory ratios to this PNG")


def _value(text: str):
    """``--set`` values: JSON when it parses (numbers, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        out[key] = _value(value)
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def run_worker(suite: str, impl: str, case: str, cfg: dict, reps: int, warmup: int) -> dict:
    """One worker process; its JSON record, or ``{"error": last stderr line}``."""
    cmd = [sys.executable, "-m", "crossent.bench.worker", "--suite", suite, "--impl", impl,
           "--case", case, "--config", json.dumps(cfg), "--reps", str(reps),
           "--warmup", str(warmup)]
    # Return freed blocks to the OS at once, so resident-set peaks are allocation peaks.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return {"suite": suite, "impl": impl, "case": case, "error": lines[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _select(wanted: list[str] | None, default, known) -> list[str]:
    """``wanted`` names that ``known`` has (all of ``default`` when nothing is asked)."""
    if not wanted:
        return [d for d in default if d in known]
    return [w for w in wanted if w in known]


def _config(module, suite: str, preset: str, overrides: dict) -> dict:
    if preset not in module.PRESETS:
        raise ValueError(f"suite {suite!r} has no preset {preset!r}; "
                         f"its presets: {sorted(module.PRESETS)}")
    return {**module.PRESETS[preset], **overrides}


def _median(records: list[dict]) -> dict:
    ok = [r for r in records if "error" not in r]
    if not ok:
        return dict(records[0])
    return {**ok[0], "median_s": statistics.median(r["median_s"] for r in ok),
            "peak_extra_bytes": statistics.median(r["peak_extra_bytes"] for r in ok),
            "rounds": len(ok)}


def _ratio(a, b) -> float:
    return a / b if a is not None and b else float("nan")


def bench_suite(suite: str, args, overrides: dict) -> dict:
    module = load(suite)
    cfg = _config(module, suite, args.preset, overrides)
    cases = _select(args.cases, cfg["cases"], module.CASES)
    impls = [i for i in _select(args.impls, module.IMPLS, module.IMPLS) if module.available(i, cfg)]
    shape = " ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("cases", "device", "dtype"))
    print(f"\n== {suite}: {module.DESCRIPTION}\n   {shape} {cfg['dtype']} on {cfg['device']}")
    why = getattr(module, "why_unavailable", None)
    for impl in _select(args.impls, module.IMPLS, module.IMPLS) if why else ():
        reason = why(impl, cfg)
        if reason:
            print(f"   {impl}: skipped, {reason}")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        print("   needs CUDA, which is not available here; skipping")
        return {"suite": suite, "config": cfg, "skipped": "no CUDA", "results": []}
    results = []
    flops_fn = getattr(module, "flops", None)
    for case in cases:
        runs: dict[str, list[dict]] = {i: [] for i in impls}
        for _ in range(args.rounds):
            for impl in impls:
                runs[impl].append(run_worker(suite, impl, case, cfg, args.reps, args.warmup))
        rows = {impl: _median(rs) for impl, rs in runs.items()}
        base = rows.get(module.BASELINE, {})
        floor = rows.get(module.FLOOR, {}) if module.FLOOR else {}
        work = flops_fn(cfg, module.CASES[case]) if flops_fn else None
        print(f"\ncase {case}")
        print(f"{'impl':<16}{'ms':>10}{'TFLOP/s':>9}{'peak MiB':>10}{'time/base':>11}"
              f"{'mem/base':>10}{'time/floor':>12}")
        for impl, r in rows.items():
            if "error" in r:
                print(f"{impl:<16} error: {r['error']}")
                results.append(r)
                continue
            r.update(time_ratio=_ratio(r["median_s"], base.get("median_s")),
                     mem_ratio=_ratio(r["peak_extra_bytes"], base.get("peak_extra_bytes")),
                     floor_ratio=_ratio(r["median_s"], floor.get("median_s")))
            tflops = f"{work / r['median_s'] / 1e12:.3f}" if work else "-"
            print(f"{impl:<16}{r['median_s'] * 1e3:>10.1f}{tflops:>9}"
                  f"{r['peak_extra_bytes'] / 2**20:>10.1f}{r['time_ratio']:>11.3f}"
                  f"{r['mem_ratio']:>10.3f}{r['floor_ratio']:>12.3f}")
            results.append(r)
        for impl, r in rows.items():  # implementations that ran on several ranks
            if "world_size" in r:
                print(f"  {impl}: {r['world_size']} ranks (peak and time: the largest per "
                      f"rank); {r['bytes_sent_per_step'] / 2**10:.1f} KiB sent per rank "
                      f"per step")
    return {"suite": suite, "preset": args.preset, "config": cfg, "baseline": module.BASELINE,
            "floor": module.FLOOR, "results": results}


def plot(report: dict, path: str) -> None:
    """Bars of time/base and mem/base per (suite, case), one bar per implementation."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    groups = [(s["suite"], case) for s in report["suites"]
              for case in dict.fromkeys(r["case"] for r in s["results"])]
    impls = list(dict.fromkeys(r["impl"] for s in report["suites"] for r in s["results"]))
    fig = Figure(figsize=(max(6, 1.2 * len(groups) * max(1, len(impls)) / 2), 6),
                 layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    width = 0.8 / max(1, len(impls))
    for ax, key, label in ((axes[0], "time_ratio", "time / baseline"),
                           (axes[1], "mem_ratio", "peak memory / baseline")):
        for k, impl in enumerate(impls):
            values = []
            for suite, case in groups:
                rec = next((r for s in report["suites"] if s["suite"] == suite
                            for r in s["results"] if r["case"] == case and r["impl"] == impl), {})
                values.append(rec.get(key, float("nan")))
            ax.bar([g + k * width for g in range(len(groups))], values, width, label=impl)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8, ncols=min(4, len(impls)))
    axes[1].set_xticks([g + 0.4 - width / 2 for g in range(len(groups))],
                       [f"{s}\n{c}" for s, c in groups], fontsize=8)
    fig.suptitle(report["machine"], fontsize=9)
    fig.savefig(path, dpi=120)


def run(args) -> int:
    suites = args.suites or list(SUITES)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        print(f"crossent bench: unknown suite(s) {unknown}; expected any of {list(SUITES)}",
              file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.overrides)
        modules = {s: load(s) for s in suites}
        for s, module in modules.items():
            _config(module, s, args.preset, overrides)
        for what, wanted, known in (("case", args.cases, "CASES"), ("impl", args.impls, "IMPLS")):
            missing = [w for w in wanted or [] if not any(w in getattr(m, known)
                                                          for m in modules.values())]
            if missing:
                raise ValueError(f"no selected suite has the {what}(s) {missing}")
    except ValueError as exc:
        print(f"crossent bench: {exc}", file=sys.stderr)
        return 2
    print(f"crossent bench on {machine()}")
    report = {"machine": machine(), "argv": sys.argv[1:],
              "suites": [bench_suite(s, args, overrides) for s in suites]}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.plot:
        plot(report, args.plot)
    return 0
