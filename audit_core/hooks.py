"""The adapter kit: what orchestrator adapters share, on top of the trail. :class:`AdapterBase`
(options and trail built on first use, hooks run by the :class:`HookRunner` of
:mod:`audit_core._runner` with the spool as its fallback, a background flush by
:mod:`audit_core.flush`), the task-side :class:`TaskApi`, event filters, failure facts,
digests and per-stream chain names. The kit knows no sinks: an adapter hands it the delivery.

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
import re
import socket
import string
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from audit_core._forklock import renew_after_fork
from audit_core._jcs import canonical_bytes
from audit_core._metrics import COUNTERS
from audit_core._normalize import JSONObject, now_timestamp, to_json
from audit_core._runner import HookRunner, Spill, TrackedLedger
from audit_core.config import AuditConfig
from audit_core.flush import Flusher
from audit_core.ledgers import Ledger, open_ledger
from audit_core.model import model_event
from audit_core.spool import TrailSpool
from audit_core.trail import AuditTrail, Event

logger = logging.getLogger("workflow_audit")

__all__ = [
    "COUNTERS",
    "AdapterBase",
    "AdapterOptions",
    "Delivery",
    "EventFilter",
    "HookRunner",
    "Spill",
    "TaskApi",
    "chain_for",
    "digest",
    "failure_data",
]

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
    """The task-side API both adapters offer: :meth:`record` and shortcuts for the events ML
    pipelines record most. ``adapter`` returns the process's adapter when a record is made
    (looked up per call: an adapter is created on first use, and tests replace it)."""

    def __init__(self, adapter: Callable[[], AdapterBase]) -> None:
        self._adapter = adapter

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: Mapping[str, object] | None = None,
        required: bool = False,
    ) -> bool:
        """Record ``event`` for the running task (or flow); True once it is durable.
        ``subject`` adds to (or overrides) the task's own; ``required=True`` writes in the
        caller's thread and raises an :class:`~audit_core.errors.AuditError` instead of
        failing open."""
        return self._adapter().task_record(event, data, subject, required=required)

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

    def model_invoked(
        self,
        model: str,
        version: str | int | None = None,
        *,
        inputs: object = None,
        outputs: object = None,
        batch: bool = False,
        data_subject: str | None = None,
        required: bool = False,
        **facts: object,
    ) -> bool:
        """``model.invoked``: a model was run on ``inputs`` and gave ``outputs``; the record
        holds their digests, sizes, row counts and schemas, and with ``batch=True`` a Merkle
        root over the predictions (:func:`audit_core.model.model_event`). The summaries are
        built inside the hook's containment, so inputs that cannot be summarized (outputs
        of another length, say) are logged and counted and False returned, as any failing
        hook; ``required=True`` raises instead."""
        adapter, event = self._adapter(), "model.invoked"

        def build() -> list[Event]:
            if not adapter.wanted(event):  # filtered out: no digests computed for nothing
                return []
            data = model_event(
                model,
                version,
                inputs=inputs,
                outputs=outputs,
                batch=batch,
                data_subject=data_subject,
                values=True,  # the trail strips them, or its privacy policy commits them
                **facts,
            )
            return [adapter._user_event(event, data, None)]

        if required:  # as task_record: written in this thread, raising
            events = build()
            if events:
                adapter.write(events)
            return bool(events)
        return adapter.submit(event, build)


@dataclass(frozen=True, slots=True)
class AdapterOptions:
    """What the shared adapter machinery needs from an orchestrator's own settings."""

    enabled: bool
    events: EventFilter
    hook_timeout_s: float
    audit: AuditConfig
    processors: tuple[Callable[[Any], Any], ...] | None = None


#: Builds what a :class:`~audit_core.flush.Flusher` calls to deliver a ledger to the sinks of
#: a config's ``flush_sinks`` (the adapters pass :func:`audit_core.ship.deliver_to_sinks`).
Delivery = Callable[[Ledger, AuditConfig], Callable[[], None]]


class AdapterBase:
    """The machinery both orchestrator adapters share, once: options and the trail built on
    first use, the :class:`HookRunner`, the event filter, the task-side API's writes, and a
    background :class:`~audit_core.flush.Flusher` after terminal events (when the adapter
    passes a ``delivery``). Subclasses implement :meth:`_load_options`, :meth:`_user_event`
    and their hooks, each hook ending in ``self._run(what, build)``."""

    #: Events after which a background flush to ``WORKFLOW_AUDIT_FLUSH_SINKS`` is requested.
    flush_after: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        trail: AuditTrail | None = None,
        budget_s: float = 5.0,
        delivery: Delivery | None = None,
    ) -> None:
        self._trail = trail
        self._options: AdapterOptions | None = None
        self._lock = threading.Lock()
        renew_after_fork(self)  # trail(), write(): a fork must not hang the child's hooks
        self._delivery = delivery
        self._warned_no_delivery = False
        self._flusher: Flusher | None = None
        self.runner = HookRunner(budget_s=budget_s, spill=TrailSpool(lambda: self.trail))

    def _load_options(self) -> AdapterOptions:
        raise NotImplementedError

    def _user_event(self, event: str, data: object, subject: Mapping[str, object] | None) -> Event:
        """The task-side API's record of ``event`` (subject: the running task, plus
        ``subject``); called inside the hook's containment."""
        raise NotImplementedError

    @property
    def options(self) -> AdapterOptions:
        if self._options is None:
            self._options = self._load_options()
            self.runner.budget_s = self._options.hook_timeout_s
        return self._options

    @property
    def trail(self) -> AuditTrail:
        """This process's :class:`~audit_core.AuditTrail` (created on first use)."""
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
                    config, ledger=TrackedLedger(ledger), processors=options.processors
                )
            return self._trail

    def write(self, events: Sequence[Event]) -> None:
        """Append ``events`` in one transaction (the runner's thread calls this); after a
        terminal event, ask for a background flush to ``WORKFLOW_AUDIT_FLUSH_SINKS``."""
        trail = self.trail
        if not isinstance(trail.ledger, TrackedLedger):  # a trail given by the caller
            trail.ledger = TrackedLedger(trail.ledger)
        template = trail.config.chain
        if "{" in template:  # one chain per stream (chain_for)
            events = [e if e.chain else replace(e, chain=chain_for(template, e)) for e in events]
        trail.record_many(events)
        sinks, delivery = trail.config.flush_sinks, self._delivery
        if sinks and delivery is None and not self._warned_no_delivery:
            # An adapter built without ``delivery=`` cannot flush: say so once, not per event.
            self._warned_no_delivery = True
            logger.warning(
                "workflow-audit: WORKFLOW_AUDIT_FLUSH_SINKS=%s is set but %s was built without "
                "delivery=audit_core.ship.deliver_to_sinks: nothing is flushed in the background",
                ",".join(sinks),
                type(self).__name__,
            )
        if sinks and delivery and any(e.type in self.flush_after for e in events):
            with self._lock:
                if self._flusher is None:
                    self._flusher = Flusher(delivery(trail.ledger, trail.config), sinks)
            self._flusher.request()

    def task_record(
        self,
        event: str,
        data: object,
        subject: Mapping[str, object] | None,
        *,
        required: bool,
    ) -> bool:
        """One event of the task-side API (:class:`TaskApi`): fail-open and time-bounded
        like every hook, or, ``required``, written in the caller's thread, raising."""

        def build() -> list[Event]:
            return [self._user_event(event, data, subject)]

        if required:  # the caller wants an exception, not fail-open: write in this thread
            if self.wanted(event):
                self.write(build())
                return True
            return False
        return self._run(event, build)

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

    def submit(self, what: str, build: Callable[[], Sequence[Event]]) -> bool:
        """Record the events ``build`` returns through the hooks' runner: fail-open (a failure
        in ``build`` or in the write is logged and counted, never raised), waiting at most the
        hook budget, kept by the event filter; events without a ``ts`` get this call's time.

        For records that are not task hooks (the event log, access, permission changes):
        each event names its own ``chain`` (events without one go on the adapter's chain).
        ``what`` names the records in logs and counters. Blocks for up to the budget: call it
        off an event loop. True once written to the ledger within the budget; False when
        they failed, ran late (the write goes on) or went to the spool."""
        return self._run(what, build)

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
            now = now_timestamp()
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
