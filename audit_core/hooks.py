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
- **Nothing lost, little waited** (adapters, which give the runner a :class:`Spill`): a hook's
  write waits at most :attr:`HookRunner.lock_wait_s` (1 s) for the ledger lock. A write that
  fails with a :class:`~audit_core.errors.LedgerError` (locked, read-only, disk full, server
  down) or runs past the budget opens a breaker: its records, and every later hook's, go to
  the local spool (:mod:`audit_core.spool`) at once, ``fsync``'d, and the hook returns
  (counted: ``records_spooled``, ``breaker_open``). The writer thread probes the ledger with
  backoff; once it appended the spool, in order, the breaker closes. Each job is decided
  once, landed or spooled, never both. At exit, queued jobs are spooled instead of abandoned.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import re
import socket
import string
import threading
import traceback
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from audit_core._jcs import canonical_bytes
from audit_core._metrics import COUNTERS
from audit_core._normalize import JSONObject, to_json
from audit_core._runner import HookRunner, Spill
from audit_core._runner import TrackedLedger as _TrackedLedger
from audit_core.trail import Event, _now

__all__ = [
    "COUNTERS",
    "AdapterBase",
    "AdapterOptions",
    "EventFilter",
    "Flusher",
    "HookRunner",
    "Spill",
    "TaskApi",
    "chain_for",
    "digest",
    "failure_data",
]

logger = logging.getLogger("workflow_audit")

#: Longest failure message kept in a record; the full text stays in the orchestrator's log.
MAX_MESSAGE_CHARS = 2000


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
        out["message"] = _clip(_message(error))
        if error.__traceback__ is not None:
            text = "".join(traceback.format_exception(cls, error, error.__traceback__))
            out["traceback_sha256"] = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    elif isinstance(error, str) and error:
        out["message"] = _clip(error)
    if kind:
        out["failure_kind"] = kind
    return out


_CUT_WORD = re.compile(r"\S+\Z")


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # noqa: BLE001 - a user's exception whose __str__ raises anything
        return f"<{type(error).__qualname__} with a failing __str__>"


def _clip(text: str) -> str:
    if len(text) <= MAX_MESSAGE_CHARS:
        return text
    head = text[:MAX_MESSAGE_CHARS]
    # A word cut in two may be half a credential the processors no longer recognize
    # ("postgresql://etl:hunt" lost its "@"): the cut word goes whole, unless it is all there is.
    if not text[MAX_MESSAGE_CHARS].isspace():
        head = _CUT_WORD.sub("", head).rstrip() or head
    return head + f"… [{len(text) - len(head)} more characters]"


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


#: Every adapter of this process, to reset their locks in a forked child (one at-fork handler,
#: not one per instance: instances come and go, a registered handler stays forever).
_ADAPTERS: weakref.WeakSet[AdapterBase] = weakref.WeakSet()


def _reset_adapter_locks() -> None:
    # A fork while another thread holds an adapter's lock (trail(), write()) would leave the
    # child a lock nobody releases: its hooks would hang past any budget.
    for adapter in list(_ADAPTERS):
        adapter._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_adapter_locks)


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
        _ADAPTERS.add(self)
        self._flusher: Flusher | None = None
        self.runner = HookRunner(budget_s=budget_s)
        from audit_core.spool import TrailSpool  # spool imports this module's neighbours

        self.runner.spill = TrailSpool(lambda: self.trail)

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
        from audit_core.ledgers import open_ledger
        from audit_core.trail import AuditTrail

        with self._lock:
            if self._trail is None:
                options = self.options
                # A hook's write waits for the ledger lock a short while, then is spooled:
                # the hook never waits for a lock held by someone stuck (spool.py).
                config = options.audit.evolve(
                    busy_timeout_s=min(options.audit.busy_timeout_s, self.runner.lock_wait_s)
                )
                ledger = open_ledger(
                    config.ledger_url,
                    synchronous=config.synchronous,
                    busy_timeout_s=config.busy_timeout_s,
                )
                self._trail = AuditTrail(
                    config, ledger=_TrackedLedger(ledger), processors=options.processors
                )
            return self._trail

    def write(self, events: Sequence[Event]) -> None:
        """Append ``events`` in one transaction (the runner's thread calls this); after a
        terminal event, ask for a background flush to ``WORKFLOW_AUDIT_FLUSH_SINKS``."""
        trail = self.trail
        if not isinstance(trail.ledger, _TrackedLedger):  # a trail given by the caller
            trail.ledger = _TrackedLedger(trail.ledger)
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
        """Wait (bounded) until every queued record is durable in the ledger or the spool
        (what is left then is spooled); True if every one reached the ledger or the spool
        without waiting for a running write."""
        done = self.runner.drain(timeout_s) or self.runner.spool_pending(0)
        # An Airflow task runner leaves with os._exit: no exit handler exports the counts.
        from audit_core import metrics

        metrics.flush()
        return done

    def wanted(self, event: str) -> bool:
        """Recording is on and the event filter keeps ``event``."""
        options = self.options
        return options.enabled and options.events(event)

    def _run(self, what: str, build: Callable[[], Sequence[Event]]) -> bool:
        def kept() -> Sequence[Event]:
            options = self.options
            if not options.enabled:
                return ()
            events = [e for e in build() if options.events(e.type)]
            if not events:
                return events
            # The event time is taken here, in the hook: a record that waits in the spool
            # keeps it. The chain is chosen here too, so spooled records keep theirs.
            now = _now()
            template = options.audit.chain
            return [
                replace(
                    e,
                    ts=now if e.ts is None else e.ts,
                    chain=e.chain or (chain_for(template, e) if "{" in template else None),
                )
                for e in events
            ]

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
