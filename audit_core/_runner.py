"""The bounded, fail-open hook runner with its breaker (the contract: :mod:`audit_core.hooks`).

>>> runner = HookRunner(budget_s=5.0)
>>> runner.run("task.started", lambda: [Event(type="task.started")], lambda events: None)
True
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from audit_core._metrics import COUNTERS
from audit_core.errors import LedgerError
from audit_core.trail import Event

__all__ = ["HookRunner", "Spill", "TrackedLedger"]

logger = logging.getLogger("workflow_audit")


# Job states. A job's outcome is decided once, under HookRunner._lock: the writer moves it
# QUEUED -> RUNNING -> LANDED or SPOOLED; a hook whose wait ran out, or the exit handler,
# moves a job still QUEUED straight to SPOOLED (the writer then skips it). A RUNNING job is
# only ever decided by the writer, except at interpreter exit (UNCERTAIN, see spool.py).
_QUEUED, _RUNNING, _LANDED, _SPOOLED, _FAILED, _UNCERTAIN = range(6)


class _Job:
    __slots__ = ("done", "events", "ids", "number", "state", "what", "write")

    def __init__(
        self, what: str, events: Sequence[Event], write: Callable[..., Any], number: int = 0
    ) -> None:
        self.what = what
        self.number = number  # the hook's place in this process's order (HookRunner.run)
        self.events = events
        self.write = write
        self.state = _QUEUED
        self.ids: list[str] = []
        self.done = threading.Event()

    @property
    def failed(self) -> bool:
        return self.state != _LANDED


class Spill(Protocol):
    """Where a :class:`HookRunner` puts records the ledger cannot take now (the spool,
    :class:`audit_core.spool.TrailSpool`); every method may raise, the runner contains it."""

    def spill(
        self, events: Sequence[Event], *, uncertain: bool = False, order: int | None = None
    ) -> list[str]:
        """Store ``events`` durably; their spool ids. ``order``: the batch's number in this
        process's order; batches are drained in that order, whatever order they are spooled
        in (a write that timed out, then failed, is spooled after later hooks' records)."""
        ...

    def landed(self, ids: Sequence[str]) -> None:
        """The uncertain write spooled as ``ids`` landed after all."""
        ...

    def recover(self) -> bool:
        """Seal what is spooled and append it to the ledger; True when the ledger took it."""
        ...

    def has_backlog(self) -> bool:
        """Something of this ledger waits in the spool (one directory listing)."""
        ...

    @property
    def unsealed(self) -> int:
        """Records spooled since the last :meth:`recover` sealed the file."""
        ...

    def close(self) -> None:
        """Release the spool file."""
        ...


class HookRunner:
    """Runs adapter hooks fail-open; writes on one background thread; waits at most a budget.

    With a :attr:`spill` (the adapters give it the spool) it is also a circuit breaker: once a
    write ran past the budget or failed with a :class:`~audit_core.errors.LedgerError`,
    records go to the spool at once, without waiting, until a probe from the writer thread
    appended the spool to the ledger again.
    """

    #: First and longest pause between two probes of a ledger while the breaker is open.
    PROBE_MIN_S = 0.5
    PROBE_MAX_S = 30.0

    def __init__(
        self, *, budget_s: float = 5.0, name: str = "workflow-audit", spill: Spill | None = None
    ) -> None:
        self.budget_s = budget_s
        self.name = name
        self.spill = spill
        self._lock = threading.Lock()
        # Held while records go to the spool and while the breaker closes: a record spooled
        # while it was open is drained before any later one is written (original order).
        self._spill_lock = threading.Lock()
        self._open = False
        self._probe_delay = self.PROBE_MIN_S
        self._probe_at = 0.0
        self._pid = -1
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._inflight: collections.deque[_Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._pending = 0
        self._numbers = itertools.count(1)  # next() is atomic under the GIL
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            # A fork while another thread holds the lock would leave the child a lock nobody
            # releases (the OpenTelemetry SDK's processors reset theirs the same way).
            os.register_at_fork(after_in_child=self._after_fork)

    @property
    def lock_wait_s(self) -> float:
        """How long a hook's write waits for the ledger lock before it is spooled: a fifth of
        the budget, at most 1 s (a healthy ledger's write transaction takes milliseconds)."""
        return min(1.0, self.budget_s / 5)

    @property
    def breaker_open(self) -> bool:
        """Records go straight to the spool (the ledger timed out or failed)."""
        return self._open

    def run(
        self,
        what: str,
        build: Callable[[], Sequence[Event] | None],
        write: Callable[[Sequence[Event]], object],
    ) -> bool:
        """Build the events here (the hook's arguments may change once it returns), write them
        on the background thread; True once written within the budget, False otherwise
        (failed, timed out, or spooled)."""
        try:
            events = build()
            if not events:
                return True
            job = _Job(what, events, write, next(self._numbers))
            if threading.current_thread() is self._thread:  # a hook fired by our own write
                self._execute(job)
                return not job.failed
            if self.spill is not None and self._open and self._spill_if_open(job):
                return False
            self._enqueue(job)
            if job.done.wait(self.budget_s):
                return not job.failed
            COUNTERS.incr("hook_timeouts")
            logger.warning(
                "workflow-audit: %s not durable after %.1fs; the hook returns and the write "
                "goes on in the background",
                what,
                self.budget_s,
            )
            if self.spill is not None:
                self._trip(f"a write took longer than the {self.budget_s:.1f}s budget")
                self._spill_queued()
            return False
        except Exception:  # the one containment point: an audit hook never fails a task
            COUNTERS.incr("hook_failures")
            logger.exception("workflow-audit: could not record %s", what)
            return False

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait up to ``timeout_s`` (default: the budget) for queued writes; True if none left."""
        deadline = time.monotonic() + (self.budget_s if timeout_s is None else timeout_s)
        while True:
            with self._lock:
                pending = self._pending if self._pid == os.getpid() else 0
            if pending == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    @property
    def pending(self) -> int:
        """Writes queued or running in this process."""
        with self._lock:
            return self._pending if self._pid == os.getpid() else 0

    # -- the breaker ---------------------------------------------------------------------

    def _spill_if_open(self, job: _Job) -> bool:
        with self._spill_lock:
            if not self._open:
                return False
            job.state = _SPOOLED
            self._spill([job])
            return True

    def _spill(self, jobs: Sequence[_Job], *, uncertain: bool = False) -> None:
        """Spool ``jobs`` (already claimed), in order; a spool that cannot be written is the
        last resort: logged and counted as abandoned."""
        assert self.spill is not None
        for job in jobs:
            try:
                ids = self.spill.spill(job.events, uncertain=uncertain, order=job.number)
            except Exception:  # the spool is the fallback; nothing is left to contain it
                job.state = _FAILED
                COUNTERS.incr("records_abandoned", len(job.events))
                logger.exception(
                    "workflow-audit: %s could reach neither the ledger nor the spool; abandoned",
                    job.what,
                )
            else:
                with self._lock:
                    if job.state == _LANDED:  # an uncertain write landed meanwhile
                        self.spill.landed(ids)
                    job.ids = ids
            job.done.set()

    def _trip(self, why: str) -> None:
        with self._lock:
            if self._open:
                return
            self._open = True
            self._probe_delay = self.PROBE_MIN_S
            self._probe_at = time.monotonic() + self._probe_delay
        COUNTERS.incr("breaker_open")
        logger.warning(
            "workflow-audit: %s; records go to the spool until the ledger takes writes again "
            "(`workflow-audit spool status`)",
            why,
        )

    def _spill_queued(self) -> None:
        """Spool every job still queued (its hook returns now instead of waiting its budget)."""
        with self._spill_lock:
            with self._lock:
                claimed = [j for j in self._inflight if j.state == _QUEUED]
                for job in claimed:
                    job.state = _SPOOLED
            if claimed:
                self._spill(claimed)

    def _probe(self) -> None:
        """From the writer thread: append the spool to the ledger; close the breaker if it
        took everything, else try again later (exponential backoff)."""
        assert self.spill is not None
        try:
            ok = self.spill.recover()
        except Exception:  # a ledger still locked or down: expected while the breaker is open
            ok = False
            logger.debug("workflow-audit: the ledger is not writable yet", exc_info=True)
        if ok:
            with self._spill_lock:
                if self.spill.unsealed == 0:
                    was_open, self._open = self._open, False
                    if was_open:
                        COUNTERS.incr("breaker_closed")
                        logger.warning("workflow-audit: the ledger takes writes again")
                    return
            self._probe_at = time.monotonic()  # more was spooled meanwhile: once more, now
            return
        if not self._open:
            self._trip("the spool could not be appended to the ledger")
        self._probe_delay = min(self._probe_delay * 2, self.PROBE_MAX_S)
        self._probe_at = time.monotonic() + self._probe_delay

    # -- the writer thread ---------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: the thread is gone
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                self._inflight = collections.deque()
                self._pending = 0
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name=self.name, daemon=True
                )
                self._thread.start()
            self._pending += 1
            self._inflight.append(job)
            self._queue.put(job)

    def _work(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        if self.spill is not None:
            # The next writer of a ledger appends what earlier processes spooled: checked once
            # per process (one directory listing), and after each breaker recovery.
            try:
                backlog = self.spill.has_backlog()
            except Exception:
                backlog = False
                logger.exception("workflow-audit: cannot list the spool")
            if backlog:
                self._probe()
        while True:
            timeout = None
            if self._open:
                timeout = max(0.0, self._probe_at - time.monotonic())
            try:
                job = jobs.get(timeout=timeout)
            except queue.Empty:
                self._probe()
                continue
            if job is None:
                break
            try:
                self._run_job(job)
            finally:
                with self._lock:  # before done: a caller that saw done sees pending drop
                    self._pending -= 1
                    with contextlib.suppress(ValueError):
                        self._inflight.remove(job)
                job.done.set()

    def _run_job(self, job: _Job) -> None:
        with self._lock:
            if job.state != _QUEUED:  # a hook or the exit handler spooled it already
                return
            job.state = _RUNNING
        if self.spill is not None and self._open:
            with self._spill_lock:  # behind what the breaker spooled: keep the order
                if self._open:
                    job.state = _SPOOLED
                    self._spill([job])
                    return
        self._execute(job)

    def _execute(self, job: _Job) -> None:
        _commits.landed = False
        try:
            job.write(job.events)
        except LedgerError as exc:
            landed = getattr(_commits, "landed", False)
            if self.spill is None or landed:
                COUNTERS.incr("hook_failures")
                logger.exception("workflow-audit: could not write %s", job.what)
                self._settle(job, landed=landed)
                return
            with self._spill_lock:  # before any hook that sees the breaker open: the order
                with self._lock:
                    uncertain = job.state == _UNCERTAIN
                    job.state = _SPOOLED
                self._trip(f"the ledger refused a write ({exc})")
                if not uncertain:  # the exit handler spooled it already
                    self._spill([job])
        except Exception:  # the writer thread's one containment point: nobody else sees it
            COUNTERS.incr("hook_failures")
            logger.exception("workflow-audit: could not write %s", job.what)
            self._settle(job, landed=getattr(_commits, "landed", False))
        else:
            self._settle(job, landed=True)

    def _settle(self, job: _Job, *, landed: bool) -> None:
        with self._lock:
            if job.state == _UNCERTAIN and landed and self.spill is not None and job.ids:
                # The exit handler spooled it while it was running: it must not land twice.
                with contextlib.suppress(Exception):
                    self.spill.landed(job.ids)
            job.state = _LANDED if landed else _FAILED

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._spill_lock = threading.Lock()
        self._open = False  # the child probes the ledger for itself, on its first write
        self._pid = -1
        self._thread = None
        self._pending = 0
        self._inflight = collections.deque()

    def _at_exit(self) -> None:
        # Daemon threads die with the interpreter. With a spool, what is still queued is
        # spooled now, and a write still running gets one budget to finish before it is
        # spooled as uncertain; without one, what is left after a budget is abandoned and
        # counted (it is what `workflow-audit reconcile` will find).
        if self._pid != os.getpid():
            return
        if self.spill is None:
            if not self.drain():
                left = max(self.pending, 1)
                COUNTERS.incr("records_abandoned", left)
                logger.error(
                    "workflow-audit: %d write(s) still pending at exit after %.1fs; abandoned",
                    left,
                    self.budget_s,
                )
            return
        self.spool_pending()
        with contextlib.suppress(Exception):
            self.spill.close()

    def spool_pending(self, timeout_s: float | None = None) -> bool:
        """Spool what is still queued; give a running write ``timeout_s`` (default: the
        budget) to finish, then spool it as uncertain. For a process about to exit (atexit,
        or Airflow's ``before_stopping`` before an ``os._exit``); True if nothing was left."""
        if self.spill is None or self._pid != os.getpid():
            return self.drain(timeout_s)
        self._spill_queued()
        if not self.drain(timeout_s):
            with self._spill_lock:
                with self._lock:
                    running = [j for j in self._inflight if j.state == _RUNNING]
                    for job in running:
                        job.state = _UNCERTAIN
                if running:
                    logger.error(
                        "workflow-audit: %d write(s) still running at exit after %.1fs; "
                        "spooled (the drain skips any that land after all)",
                        len(running),
                        self.budget_s,
                    )
                    self._spill(running, uncertain=True)
            return False
        return True


#: Set by the writer thread's ledger (:class:`TrackedLedger`) once an append committed: a
#: LedgerError raised after it (a checkpoint read) must not spool records that landed.
_commits = threading.local()


class TrackedLedger:
    """A ledger that notes, per thread, that an append committed."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def append_many(self, records: Sequence[Any]) -> Any:
        stored = self._ledger.append_many(records)
        _commits.landed = True
        return stored

    def append(self, record: Any) -> Any:
        stored = self._ledger.append(record)
        _commits.landed = True
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def __repr__(self) -> str:
        return repr(self._ledger)
