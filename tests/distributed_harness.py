"""Run a function on ``W`` real ``torch.distributed`` processes, for tests.

::

    from distributed_harness import RankPool, run_ranks

    def job(rank, world_size, data):      # module level: pickled by reference
        ...                                # the default process group is initialised
        return {"loss": loss.detach()}     # anything picklable (tensors included)

    results = run_ranks(job, 2, data)                  # [rank 0's value, rank 1's]

    with RankPool(4) as pool:                          # one spawn, many jobs
        values = pool.run(job, data)                   # raises RankFailure if a rank raised
        outcomes = pool.outcomes(job, data)            # per rank: value or exception

In tests, the session fixture ``rank_pool`` (``tests/conftest.py``) hands out one started
pool per world size: ``rank_pool(4).run(job, data)``.

Every rank is a fresh ``spawn``ed process with ``torch.set_num_threads(threads)`` and the
default process group initialised from a ``FileStore`` in a temporary directory (no
ports). Each job has a hard ``timeout``: a hang shows as :class:`RankTimeout` naming the
ranks that never answered (with what the others answered), never as a stuck test run;
the pool's processes are then killed and the next job starts a fresh pool. A rank that
dies is reported as soon as it is noticed. Results and exceptions come back pickled
(tensors are copied), exceptions with their remote traceback.
"""

from __future__ import annotations

import os
import pickle
import queue
import shutil
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch.multiprocessing as mp

DEFAULT_TIMEOUT = 120.0


@dataclass
class Outcome:
    """What one rank's job produced: ``value``, or ``error`` with its remote traceback."""

    rank: int
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class RankFailure(RuntimeError):
    """A rank raised (or died); the message holds every failing rank's traceback."""

    def __init__(self, message: str, outcomes: list[Outcome] | None = None):
        super().__init__(message)
        self.outcomes = outcomes or []


class RankTimeout(RankFailure):
    """Some ranks did not answer within the job's timeout (a hang)."""


def _safe_pickle(obj) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception:  # an unpicklable value or exception: keep its text
        kind, payload = obj
        if kind == "error":
            exc, tb = payload
            return pickle.dumps(("error", (RuntimeError(f"{type(exc).__name__}: {exc}"), tb)))
        return pickle.dumps(("error", (RuntimeError(f"unpicklable result {payload!r:.2000}"), "")))


def _serve(rank, world_size, store_path, backend, threads, timeout_s, inbox, outbox):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(threads)
    dist.init_process_group(backend, store=dist.FileStore(store_path, world_size), rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_s))
    outbox.put((rank, "ready", b"", 0.0))
    try:
        while True:
            msg = inbox.get()
            if msg is None:
                break
            job_id, payload = msg
            start = time.perf_counter()
            try:
                fn, args, kwargs = pickle.loads(payload)
                result = ("ok", fn(rank, world_size, *args, **kwargs))
            except BaseException as exc:  # reported, not raised: the parent decides
                result = ("error", (exc, traceback.format_exc()))
            outbox.put((rank, job_id, _safe_pickle(result), time.perf_counter() - start))
    finally:
        dist.destroy_process_group()


class RankPool:
    """``world_size`` processes in one process group, serving jobs until closed."""

    def __init__(self, world_size: int, store_dir: str | os.PathLike | None = None, *,
                 backend: str = "gloo", threads: int = 1, timeout: float = DEFAULT_TIMEOUT):
        self.world_size = world_size
        self.backend = backend
        self.threads = threads
        self.timeout = timeout
        self._own_dir = store_dir is None
        self._dir = tempfile.mkdtemp(prefix="crossent-dist-") if store_dir is None else str(store_dir)
        self._procs: list = []
        self._jobs = 0

    # -- lifecycle
    def __enter__(self) -> "RankPool":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.is_alive() for p in self._procs)

    def start(self) -> None:
        if self.running:
            return
        self.close()
        ctx = mp.get_context("spawn")
        store = os.path.join(self._dir, f"store-{uuid.uuid4().hex}")
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(self.world_size)]
        self._procs = [
            ctx.Process(target=_serve, daemon=True,
                        args=(r, self.world_size, store, self.backend, self.threads,
                              self.timeout, self._inboxes[r], self._outbox))
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        self._collect("ready", self.timeout, what="starting the process group")

    def close(self) -> None:
        for inbox, p in zip(getattr(self, "_inboxes", []), self._procs):
            if p.is_alive():
                try:
                    inbox.put(None)
                except Exception:
                    pass
        deadline = time.monotonic() + 2.0
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.kill()
                p.join(5.0)
        self._procs = []

    # -- jobs
    def _collect(self, job_id, timeout: float, what: str) -> dict[int, tuple[bytes, float]]:
        got: dict[int, tuple[bytes, float]] = {}
        deadline = time.monotonic() + timeout
        while len(got) < self.world_size:
            try:
                rank, jid, data, seconds = self._outbox.get(timeout=0.2)
            except queue.Empty:
                dead = [r for r, p in enumerate(self._procs) if not p.is_alive() and r not in got]
                if dead or time.monotonic() > deadline:
                    missing = [r for r in range(self.world_size) if r not in got]
                    answered = self._outcomes(got) if job_id != "ready" else []
                    self.close()
                    detail = "".join(f"\n--- rank {o.rank}: {o.error!r}\n{o.traceback}"
                                     for o in answered if not o.ok)
                    if dead:
                        raise RankFailure(f"{what}: rank(s) {dead} died without answering"
                                          f"{detail}", answered)
                    raise RankTimeout(f"{what}: rank(s) {missing} did not answer within "
                                      f"{timeout:.0f} s (a hang?){detail}", answered)
                continue
            if jid == job_id:
                got[rank] = (data, seconds)
        return got

    def _outcomes(self, got: dict[int, tuple[bytes, float]]) -> list[Outcome]:
        out = []
        for rank in sorted(got):
            data, seconds = got[rank]
            kind, payload = pickle.loads(data)
            if kind == "ok":
                out.append(Outcome(rank, value=payload, seconds=seconds))
            else:
                exc, tb = payload
                out.append(Outcome(rank, error=exc, traceback=tb, seconds=seconds))
        return out

    def outcomes(self, fn: Callable, *args, timeout: float | None = None, **kwargs) -> list[Outcome]:
        """Run ``fn(rank, world_size, *args, **kwargs)`` on every rank; every rank's outcome."""
        self.start()
        self._jobs += 1
        job_id = self._jobs
        payload = pickle.dumps((fn, args, kwargs))
        for inbox in self._inboxes:
            inbox.put((job_id, payload))
        name = getattr(fn, "__qualname__", repr(fn))
        got = self._collect(job_id, self.timeout if timeout is None else timeout,
                            what=f"job {name} on {self.world_size} ranks")
        return self._outcomes(got)

    def run(self, fn: Callable, *args, timeout: float | None = None, **kwargs) -> list:
        """Every rank's return value, in rank order; :class:`RankFailure` if any rank raised."""
        outs = self.outcomes(fn, *args, timeout=timeout, **kwargs)
        failed = [o for o in outs if not o.ok]
        if failed:
            detail = "".join(f"\n--- rank {o.rank}: {o.error!r}\n{o.traceback}" for o in failed)
            raise RankFailure(f"{len(failed)} of {self.world_size} ranks raised:{detail}", outs)
        return [o.value for o in outs]


def run_ranks(fn: Callable, world_size: int, *args, timeout: float = DEFAULT_TIMEOUT,
              backend: str = "gloo", threads: int = 1, **kwargs) -> list:
    """One job on a fresh pool of ``world_size`` processes; every rank's return value."""
    with RankPool(world_size, backend=backend, threads=threads, timeout=timeout) as pool:
        return pool.run(fn, *args, **kwargs)
