"""``crossent bench``: speed and memory side by side, each implementation in its own process.

:mod:`crossent.bench.command` is the CLI; :mod:`crossent.bench.worker` runs one
implementation on one case and prints one JSON line; :mod:`crossent.bench.suites` holds
one module per family (implementations, cases, presets), under one small contract.
"""
