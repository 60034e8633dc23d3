"""What orchestrator adapters share: bounded fail-open hook calls, failure facts, event filters.

>>> from audit_core import AuditConfig, AuditTrail, Event
>>> trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
>>> runner = HookRunner(budget_s=5.0)
>>> runner.run("task.started", lambda: [Event(type="task.started")], trail.record_many)
True
>>> runner.run("task.started", lambda: 1 / 0, trail.record_many)  # logged and counted
False
>>> COUNTERS.snapshot()["hook_failures"] >= 1
True

The contract every adapter hook keeps (README "Guarantees"):

- **Fail-open**: a hook never raises into the orchestrator. Translating the hook's arguments
  happens inside the one ``except Exception`` of :meth:`HookRunner.run` (in the hook's thread);
  writing happens inside the one ``except Exception`` of the writer thread. Both log with
  ``exc_info`` and count ``hook_failures``; ``run`` returns False for either. ``BaseException``
  (KeyboardInterrupt, SystemExit) is never caught: the orchestrator owns those.
- **Time-bounded**: the records are written by one background thread per process; the hook
  waits at most ``budget_s`` for them to be durable. Past the budget it returns, counts
  ``hook_timeouts`` and the write goes on in the background (a locked ledger, a slow disk);
  :meth:`HookRunner.drain` (called when a task process stops, and at exit) waits a bounded time
  for what is still queued and logs and counts ``records_abandoned`` for what it gives up on.
  One thread and a queue, never a fork per event: forking from a hook is what left Airflow
  tasks "running" with the OpenLineage listener on Airflow 3.1.
"""

from __future__ import annotations

import atexit
import fnmatch
import hashlib
import logging
import os
import queue
import re
import socket
import string
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from audit_core._jcs import canonical_bytes
from audit_core._metrics import COUNTERS
from audit_core._normalize import JSONObject, to_json
from audit_core.trail import Event

__all__ = [
    "COUNTERS",
    "AdapterBase",
    "AdapterOptions",
    "EventFilter",
    "Flusher",
    "HookRunner",
    "TaskApi",
    "chain_for",
    "digest",
    "failure_data",
]

logger = logging.getLogger("workflow_audit")

#: Longest failure message kept in a record; the full text stays in the orchestrator's log.
MAX_MESSAGE_CHARS = 2000


class _Job:
    __slots__ = ("done", "events", "failed", "what", "write")

    def __init__(self, what: str, events: Sequence[Event], write: Callable[..., Any]) -> None:
        self.what = what
        self.events = events
        self.write = write
        self.failed = False
        self.done = threading.Event()


class HookRunner:
    """Runs adapter hooks fail-open; writes on one background thread; waits at most a budget."""

    def __init__(self, *, budget_s: float = 5.0, name: str = "workflow-audit") -> None:
        self.budget_s = budget_s
        self.name = name
        self._lock = threading.Lock()
        self._pid = -1
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pending = 0
        atexit.register(self._at_exit)
        if hasattr(os, "register_at_fork"):
            # A fork while another thread holds the lock would leave the child a lock nobody
            # releases (the OpenTelemetry SDK's processors reset theirs the same way).
            os.register_at_fork(after_in_child=self._after_fork)

    def run(
        self,
        what: str,
        build: Callable[[], Sequence[Event] | None],
        write: Callable[[Sequence[Event]], object],
    ) -> bool:
        """Build the events here (the hook's arguments may change once it returns), write them
        on the background thread; True once written within the budget, False otherwise."""
        try:
            events = build()
            if not events:
                return True
            job = _Job(what, events, write)
            if threading.current_thread() is self._thread:  # a hook fired by our own write
                self._execute(job)
                return not job.failed
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

    def _enqueue(self, job: _Job) -> None:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: the thread is gone
                self._pid = os.getpid()
                self._queue = queue.SimpleQueue()
                self._pending = 0
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name=self.name, daemon=True
                )
                self._thread.start()
            self._pending += 1
            self._queue.put(job)

    def _work(self, jobs: queue.SimpleQueue[_Job | None]) -> None:
        while (job := jobs.get()) is not None:
            try:
                self._execute(job)
            finally:
                with self._lock:  # before done: a caller that saw done sees pending drop
                    self._pending -= 1
                job.done.set()

    def _execute(self, job: _Job) -> None:
        try:
            job.write(job.events)
        except Exception:  # the writer thread's one containment point: nobody else sees it
            job.failed = True
            COUNTERS.incr("hook_failures")
            logger.exception("workflow-audit: could not write %s", job.what)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pid = -1
        self._thread = None
        self._pending = 0

    def _at_exit(self) -> None:
        # Daemon threads die with the interpreter: give queued records one budget to land,
        # and say how many did not (they are what `workflow-audit reconcile` will find).
        if not self.drain():
            left = max(self.pending, 1)
            COUNTERS.incr("records_abandoned", left)
            logger.error(
                "workflow-audit: %d write(s) still pending at exit after %.1fs; abandoned",
                left,
                self.budget_s,
            )


def failure_data(error: BaseException | str | None, *, kind: str | None = None) -> JSONObject:
    """Facts about a failure: exception type, message (processors redact it later), a SHA-256
    of the formatted traceback (evidence without storing code paths), and ``kind``."""
    out: JSONObject = {}
    if isinstance(error, BaseException):
        cls = type(error)
        module = cls.__module__
        out["error_type"] = (
            cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
        )
        out["message"] = _clip(str(error))
        if error.__traceback__ is not None:
            text = "".join(traceback.format_exception(cls, error, error.__traceback__))
            out["traceback_sha256"] = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    elif isinstance(error, str) and error:
        out["message"] = _clip(error)
    if kind:
        out["failure_kind"] = kind
    return out


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    return text[:MAX_MESSAGE_CHARS] + f"… [{len(text) - MAX_MESSAGE_CHARS} more characters]"


def digest(value: object) -> str:
    """``sha256:<hex>`` of ``value``'s canonical JSON (RFC 8785): proves what a value was
    (parameters, run configuration) without recording it.

    The value is converted as records are (:func:`~audit_core._normalize.to_json`), so values
    a record could not tell apart digest alike: ``float("nan")`` and ``"NaN"``, a set and its
    sorted list.
    """
    norm = to_json({"value": value}, max_value_bytes=1 << 30)
    return "sha256:" + hashlib.sha256(canonical_bytes(norm.value["value"])).hexdigest()


class EventFilter:
    """Which event types to record: comma-separated shell patterns (``task.*,dagrun.*``);
    a leading ``!`` excludes (``*,!task.started``). Empty means everything."""

    def __init__(self, spec: str | Sequence[str] = "*") -> None:
        parts = spec.split(",") if isinstance(spec, str) else list(spec)
        patterns = [p.strip() for p in parts if p.strip()] or ["*"]
        include = [fnmatch.translate(p) for p in patterns if not p.startswith("!")] or [".*"]
        exclude = [fnmatch.translate(p[1:]) for p in patterns if p.startswith("!")]
        self.spec = ",".join(patterns)
        self._include = re.compile("|".join(include))
        self._exclude = re.compile("|".join(exclude)) if exclude else None

    def __call__(self, event: str) -> bool:
        if self._exclude is not None and self._exclude.match(event):
            return False
        return self._include.match(event) is not None

    def __repr__(self) -> str:
        return f"EventFilter({self.spec!r})"


class TaskApi:
    """The task-side API both adapters offer: ``record`` (theirs) and shortcuts for the events
    ML pipelines record most. Subclasses implement :meth:`record`."""

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: Mapping[str, object] | None = None,
        required: bool = False,
    ) -> bool:
        """Record ``event`` for the running task; True once it is durable."""
        raise NotImplementedError

    def data_uploaded(self, uri: str, *, required: bool = False, **facts: object) -> bool:
        """``data.uploaded``: a dataset was written (uri, rows, sha256, schema, ...)."""
        return self.record("data.uploaded", {"uri": uri, **facts}, required=required)

    def model_retrained(self, model: str, *, required: bool = False, **facts: object) -> bool:
        """``model.retrained``: a model was trained (version, metrics, training data, ...)."""
        return self.record("model.retrained", {"model": model, **facts}, required=required)

    def model_deployed(self, model: str, *, required: bool = False, **facts: object) -> bool:
        """``model.deployed``: a model went into service (version, target, approver, ...)."""
        return self.record("model.deployed", {"model": model, **facts}, required=required)

    def drift_detected(self, model: str, *, required: bool = False, **facts: object) -> bool:
        """``drift.detected``: monitoring found drift (metric, value, threshold, ...)."""
        return self.record("drift.detected", {"model": model, **facts}, required=required)


class Flusher:
    """Best-effort delivery soon after a task or run ends (``WORKFLOW_AUDIT_FLUSH_SINKS``).

    :meth:`request` only sets a flag: a daemon thread of this process then ships whatever the
    ledger holds past the sinks' cursors (:class:`~audit_core.ship.Shipper`), so a hook never
    waits for a sink. What it does not deliver before the process ends stays in the ledger
    for the next flush or ``workflow-audit ship``: the ledger is the spool, nothing is lost.
    """

    def __init__(self, trail: Any, names: Sequence[str]) -> None:
        self.trail = trail
        self.names = tuple(names)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._pid = -1
        self._shippers: list[Any] = []

    def request(self) -> None:
        """Ask for a flush (never blocks; a no-op without configured sinks)."""
        if not self.names:
            return
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: start our thread
                self._pid = os.getpid()
                self._wake = threading.Event()
                threading.Thread(
                    target=self._loop, args=(self._wake,), name="workflow-audit-flush", daemon=True
                ).start()
        self._wake.set()

    def _loop(self, wake: threading.Event) -> None:
        while True:
            wake.wait()
            wake.clear()
            try:
                for shipper in self._ensure_shippers():
                    shipper.ship_once()  # a failing sink is logged, counted, retried next time
            except Exception:  # the flush thread's one containment point
                COUNTERS.incr("flush_failures")
                logger.exception("workflow-audit: background flush to %s failed", self.names)

    def _ensure_shippers(self) -> list[Any]:
        if not self._shippers:
            from audit_core.ship import Shipper
            from audit_core.sinks.registry import make_sink, sink_names

            ledger, config = self.trail.ledger, self.trail.config
            self._shippers = [
                Shipper(ledger, make_sink(name, ledger, config)) for name in sink_names(self.names)
            ]
        return self._shippers


@dataclass(frozen=True, slots=True)
class AdapterOptions:
    """What the shared adapter machinery needs from an orchestrator's own settings."""

    enabled: bool
    events: EventFilter
    hook_timeout_s: float
    audit: Any  # audit_core.AuditConfig (Any: hooks.py is imported by trail-free code too)
    processors: tuple[Callable[[Any], Any], ...] | None = None


class AdapterBase:
    """The machinery both orchestrator adapters share, once: options and the trail built on
    first use, the :class:`HookRunner`, the event filter, and the background :class:`Flusher`
    after terminal events. Subclasses implement :meth:`_load_options` and their hooks, each
    hook ending in ``self._run(what, build)``."""

    #: Events after which a background flush to ``WORKFLOW_AUDIT_FLUSH_SINKS`` is requested.
    flush_after: frozenset[str] = frozenset()

    def __init__(self, *, trail: Any = None, budget_s: float = 5.0) -> None:
        self._trail = trail
        self._options: AdapterOptions | None = None
        self._lock = threading.Lock()
        self._flusher: Flusher | None = None
        self.runner = HookRunner(budget_s=budget_s)

    def _load_options(self) -> AdapterOptions:
        raise NotImplementedError

    @property
    def options(self) -> AdapterOptions:
        if self._options is None:
            self._options = self._load_options()
            self.runner.budget_s = self._options.hook_timeout_s
        return self._options

    @property
    def trail(self) -> Any:
        """This process's :class:`~audit_core.AuditTrail` (created on first use)."""
        from audit_core.trail import AuditTrail

        with self._lock:
            if self._trail is None:
                options = self.options
                self._trail = AuditTrail(options.audit, processors=options.processors)
            return self._trail

    def write(self, events: Sequence[Event]) -> None:
        """Append ``events`` in one transaction (the runner's thread calls this); after a
        terminal event, ask for a background flush to ``WORKFLOW_AUDIT_FLUSH_SINKS``."""
        trail = self.trail
        template = trail.config.chain
        if "{" in template:  # one chain per stream (chain_for)
            events = [e if e.chain else replace(e, chain=chain_for(template, e)) for e in events]
        trail.record_many(events)
        if trail.config.flush_sinks and any(e.type in self.flush_after for e in events):
            with self._lock:
                if self._flusher is None:
                    self._flusher = Flusher(trail, trail.config.flush_sinks)
            self._flusher.request()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait (bounded) until every queued record is durable; True if none is left."""
        return self.runner.drain(timeout_s)

    def wanted(self, event: str) -> bool:
        """Recording is on and the event filter keeps ``event``."""
        options = self.options
        return options.enabled and options.events(event)

    def _run(self, what: str, build: Callable[[], Sequence[Event]]) -> bool:
        def kept() -> Sequence[Event]:
            options = self.options
            if not options.enabled:
                return ()
            return [e for e in build() if options.events(e.type)]

        return self.runner.run(what, kept, self.write)


class _Fields(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "unknown"


def chain_for(template: str, event: Event) -> str:
    """The chain of ``event`` under a per-stream ``template``: ``{field}`` is a subject field
    (``airflow-{dag_id}``, ``prefect-{flow_name}``) or ``{host}``; missing ones read
    ``unknown``. Characters outside ``[A-Za-z0-9._-]`` become ``_``.

    >>> chain_for("airflow-{dag_id}", Event(type="task.started", subject={"dag_id": "ml/v2"}))
    'airflow-ml_v2'

    Streams trade one total order for throughput: writers of different chains never wait for
    each other's lock (each chain has its own head, Merkle tree and checkpoints), but the
    order between chains is only what the timestamps say. ``workflow-audit checkpoint --all``
    signs every chain at once, so one set of checkpoints pins them all together.
    """
    fields = _Fields({k: v for k, v in (event.subject or {}).items() if v is not None})
    fields.setdefault("host", socket.gethostname())
    name = string.Formatter().vformat(template, (), fields)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)
