"""The benchmark suites of ``crossent bench``: one module per family of losses.

A suite module defines (see :mod:`crossent.bench.suites.linear` for a full example)::

    DESCRIPTION = "one line"
    CASES = {"default": {...options...}, ...}          # option sets
    PRESETS = {"default": {<shape keys>, "dtype": "float32", "device": "cpu",
                           "cases": [...]}, ...}       # 'default' runs in minutes on 2 CPUs
    IMPLS = ("crossent", "torch", ...)                 # implementations compared
    BASELINE = "torch"                                 # ratios time/base and mem/base
    FLOOR = None                                       # or the impl that measures the floor
    def available(impl, cfg) -> bool                   # installed? right device?
    def make_inputs(cfg, case)                         # deterministic tensors (tuple or dict)
    def step(impl, inputs, cfg, case)                  # one forward: the scalar to backward,
                                                       # or None when it did all its work
    def flops(cfg, case) -> float | None               # optional: a TFLOP/s column
    def world_size(impl, cfg) -> int | None            # optional: W ranks (a process group)
                                                       # the worker spawns for impl; None: in
                                                       # the worker's process, no group
    def why_unavailable(impl, cfg) -> str | None       # optional: the line printed for an
                                                       # impl that is skipped (not installed)

:func:`load` imports a suite by name; the worker (:mod:`crossent.bench.worker`) and the
command (:mod:`crossent.bench.command`) know nothing else about it.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: suite name -> module; ``crossent bench`` with no suite runs them all, in this order.
SUITES: dict[str, str] = {
    "ce": "crossent.bench.suites.ce",
    "linear": "crossent.bench.suites.linear",
    "contrastive": "crossent.bench.suites.contrastive",
    "parallel": "crossent.bench.suites.parallel",
    "margin": "crossent.bench.suites.margin",
    "retrieval": "crossent.bench.suites.retrieval",
    "distill": "crossent.bench.suites.distill",
    # a Hugging Face causal LM patched by crossent.integrations.transformers
    "hf": "crossent.bench.suites.hf",
    # per-token log-probabilities and entropy (RL) against TRL's and verl's kernels
    "logprobs": "crossent.bench.suites.logprobs",
}


def load(name: str) -> ModuleType:
    if name not in SUITES:
        raise ValueError(f"unknown bench suite {name!r}; expected one of {sorted(SUITES)}")
    return importlib.import_module(SUITES[name])
