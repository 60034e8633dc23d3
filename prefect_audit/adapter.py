"""Turns Prefect state hooks, and Prefect's record of task runs, into audit records.

>>> from prefect_audit.adapter import PrefectAdapter
>>> adapter = PrefectAdapter()   # loads nothing until the first hook fires

One adapter per process (:func:`get_adapter`). Like the Airflow adapter, each hook reads its
arguments in Prefect's thread and hands the events to a :class:`~audit_core.hooks.HookRunner`
(one writer thread, ``hook_timeout`` budget, fail-open). Task runs are recorded two ways, and
each (task run, event, attempt) once: in real time by :func:`prefect_audit.task_hooks` where a
task carries them, and from Prefect's API when the flow run ends
(:meth:`PrefectAdapter.task_run_events`, :mod:`prefect_audit.history`) unless a follower
records them (``settings.follower``); see :mod:`prefect_audit.flows` for why. That end-of-run
pass runs off the flow's path, on one background thread per process (:class:`EndOfRunPasses`):
the final hook writes the flow's terminal record and returns; the process waits for pending
passes at exit (``exit_wait``), and :func:`flush_runs` waits for them on demand. Every lifecycle
record carries its :func:`prefect_audit.ids.lifecycle_key` and a trace context (Prefect's
span, else :func:`prefect_audit.ids.run_trace`).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from audit_core import COUNTERS, AuditTrail, Event, trace_context
from audit_core.hooks import AdapterBase, AdapterOptions, digest
from audit_core.ship import deliver_to_sinks
from prefect_audit.history import state_failure, task_run_steps
from prefect_audit.ids import final_attempt, lifecycle_key, run_trace
from prefect_audit.settings import WorkflowAuditSettings

__all__ = [
    "EndOfRunPasses",
    "PrefectAdapter",
    "flow_subject",
    "flush_runs",
    "get_adapter",
    "task_subject",
]

logger = logging.getLogger("workflow_audit.prefect")

#: Records that prove a task run / flow run ended (``reconcile`` looks for them).
TASK_TERMINAL_EVENTS = ("task.succeeded", "task.failed", "task.unrecorded")
FLOW_TERMINAL_EVENTS = (
    "flowrun.succeeded",
    "flowrun.failed",
    "flowrun.crashed",
    "flowrun.cancelled",
    "flowrun.unrecorded",
)
#: Events after which the hooks ask for a background flush (WORKFLOW_AUDIT_FLUSH_SINKS).
_FLUSH_AFTER = frozenset((*TASK_TERMINAL_EVENTS, *FLOW_TERMINAL_EVENTS))
Data = dict[str, Any]
Key = tuple[str, str, int]  # (task run id, event, attempt)


class PrefectAdapter(AdapterBase):
    """Builds and writes the records of one process's Prefect hooks."""

    flush_after = _FLUSH_AFTER

    def __init__(
        self, settings: WorkflowAuditSettings | None = None, *, trail: AuditTrail | None = None
    ) -> None:
        super().__init__(
            trail=trail,
            budget_s=settings.hook_timeout if settings else 5.0,
            delivery=deliver_to_sinks,
        )
        self._settings = settings
        # flow run id -> what task hooks recorded in real time (the end-of-run sync skips it)
        self._live: dict[str, set[Key]] = {}
        self.passes = EndOfRunPasses(self._end_of_run, lambda: self.settings.exit_wait)

    @property
    def settings(self) -> WorkflowAuditSettings:
        if self._settings is None:
            self._settings = WorkflowAuditSettings()
        return self._settings

    def _load_options(self) -> AdapterOptions:
        settings = self.settings
        return AdapterOptions(
            enabled=settings.enabled,
            events=settings.event_filter(),
            hook_timeout_s=settings.hook_timeout,
            audit=settings.audit_config(),
        )

    # -- flow hooks: (flow, flow_run, state) -----------------------------------------------

    def flow_running(self, flow: Any, flow_run: Any, state: Any) -> bool:
        def build() -> list[Event]:
            data: Data = {"state": state.name}
            if self.settings.record_parameters:
                data["parameters"] = dict(flow_run.parameters or {})
            if creator := created_by(flow_run):
                data["created_by"] = creator  # a person (Prefect Cloud), or a deployment
            # on_running receives the flow run as it was before Prefect counted this attempt
            attempt = int(flow_run.run_count or 0) + 1
            events = []
            if state.name == "Retrying":  # a failed flow attempt fires no on_failure
                events.append(
                    self._flow_event("flowrun.retry_scheduled", flow, flow_run, state, attempt - 1)
                )
            events.append(self._flow_event("flowrun.started", flow, flow_run, state, attempt, data))
            return events

        return self._run("flowrun.started", build)

    def flow_finished(self, flow: Any, flow_run: Any, state: Any, outcome: str) -> bool:
        """``outcome``: succeeded, failed, crashed or cancelled."""

        def build() -> list[Event]:
            data: Data = {"state": state.name}
            if outcome != "succeeded":
                data.update(state_failure(state, kind=outcome, live=True))
            attempt = final_attempt(flow_run)
            event = f"flowrun.{outcome}"
            return [self._flow_event(event, flow, flow_run, state, attempt, data)]

        written = self._run(f"flowrun.{outcome}", build)
        try:
            done = self._live.pop(str(flow_run.id), set())
            # With a follower, it records the task runs: no API scan. Otherwise the pass runs
            # in the background; the flow's terminal record above is already durable.
            if not self.settings.follower and self.options.enabled:
                self.passes.submit(_Pass(flow, flow_run, done, _prefect_settings()))
        except Exception:  # fail-open: the flow's outcome never depends on the audit
            COUNTERS.incr("hook_failures")
            logger.exception("workflow-audit: could not queue the task runs of %s", flow_run.id)
        return written

    def _end_of_run(self, job: _Pass) -> None:
        # The pass thread: the same containment, filter and budget as a hook, under the
        # hook's Prefect settings (a context variable: the API the flow used). Only those:
        # the flow run's own context holds its API client, closed once the flow returned.
        from prefect.context import SettingsContext

        found = job.prefect_settings
        scope: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext()
            if found is None
            else SettingsContext(profile=found.profile, settings=found.settings)
        )
        with scope:
            self._run(
                f"task runs of flow run {job.flow_run.id}",
                lambda: self.task_run_events(job.flow, job.flow_run, job.done),
            )

    def flush_runs(self, timeout_s: float | None = None) -> bool:
        """Wait until this process's pending end-of-run passes have run and their records
        are durable (or spooled): at most ``timeout_s`` (None: no bound). True if nothing is
        left pending."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self.passes.wait(timeout_s):
            return False
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.runner.drain(left if left is not None else 3600.0)

    def _flow_event(
        self,
        event: str,
        flow: Any,
        flow_run: Any,
        state: Any,
        attempt: int,
        data: Data | None = None,
    ) -> Event:
        return Event(
            type=event,
            subject={**flow_subject(flow, flow_run), "run_count": attempt},
            data=data or {},
            trace=_trace(flow_run, state, task=False),
            key=lifecycle_key(event, flow_run.id, attempt),
        )

    # -- task hooks: (task, task_run, state), real time where a task carries them -----------

    def task_running(self, task: Any, task_run: Any, state: Any) -> bool:
        def build() -> list[Event]:
            attempt = int(task_run.run_count or 1)
            events = []
            if state.name == "Retrying":  # the previous attempt failed and fired no hook
                events.append(
                    self._task_event("task.retry_scheduled", task_run, state, attempt - 1)
                )
            events.append(self._task_event("task.started", task_run, state, attempt))
            self._remember(task_run, events)
            return events

        return self._run("task.started", build)

    def task_finished(self, task: Any, task_run: Any, state: Any, *, success: bool) -> bool:
        event = "task.succeeded" if success else "task.failed"

        def build() -> list[Event]:
            data = {} if success else state_failure(state, kind="exception", live=True)
            events = [self._task_event(event, task_run, state, final_attempt(task_run), data)]
            self._remember(task_run, events)
            return events

        return self._run(event, build)

    def _remember(self, task_run: Any, events: Iterable[Event]) -> None:
        live = self._live.setdefault(str(task_run.flow_run_id), set())
        for e in events:
            attempt = (e.subject or {}).get("run_count")
            live.add((str(task_run.id), e.type, attempt if isinstance(attempt, int) else 0))

    def _task_event(
        self, event: str, task_run: Any, state: Any, attempt: int, data: Data | None = None
    ) -> Event:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        flow, flow_run = (context.flow, context.flow_run) if context else (None, None)
        return Event(
            type=event,
            subject=task_subject(task_run, attempt, flow, flow_run),
            data=data or {},
            trace=_trace(task_run, state, task=True),
            key=lifecycle_key(event, task_run.id, attempt),
        )

    # -- task runs from Prefect's API -------------------------------------------------------

    def task_run_events(
        self, flow: Any, flow_run: Any, done: set[Key] | None = None
    ) -> list[Event]:
        """The flow run's task runs, from Prefect's API (:func:`prefect_audit.history.
        task_run_steps`: one paginated read, state histories only of retried runs), as
        records, oldest first, minus those task hooks recorded already (``done``, by default
        what this adapter's task hooks recorded for the flow run). Waits for the API to hold
        every task run's final state, at most ``sync_timeout`` after Prefect's last progress."""
        if done is None:
            done = self._live.pop(str(flow_run.id), set())
        events: list[Event] = []
        for step in task_run_steps(flow_run.id, self.settings.sync_timeout):
            run = step.task_run
            if (str(run.id), step.event, step.attempt) in done:
                continue
            events.append(
                Event(
                    type=step.event,
                    subject=task_subject(run, step.attempt, flow, flow_run),
                    data=step.data,
                    trace=_trace(run, step.state, task=True),
                    ts=step.ts,
                    key=lifecycle_key(step.event, run.id, step.attempt),
                )
            )
        return events

    # -- the task-side API -----------------------------------------------------------------

    def _user_event(self, event: str, data: object, subject: Mapping[str, object] | None) -> Event:
        # One user event inside a running task or flow (see :func:`prefect_audit.record`).
        from prefect.context import FlowRunContext, TaskRunContext

        task_ctx, flow_ctx = TaskRunContext.get(), FlowRunContext.get()
        flow, flow_run = (flow_ctx.flow, flow_ctx.flow_run) if flow_ctx else (None, None)
        if task_ctx is not None:
            run = task_ctx.task_run
            base = task_subject(run, int(run.run_count or 1), flow, flow_run)
            trace = _trace(run, None, task=True)
        elif flow_run is not None:
            base, trace = flow_subject(flow, flow_run), _trace(flow_run, None, task=False)
        else:
            base, trace = {}, trace_context()
        full = {**base, **(subject or {})}
        return Event(type=event, subject=full, data=data, trace=trace)


def flow_subject(flow: Any, flow_run: Any) -> Data:
    """Who a flow record is about."""
    deployment = getattr(flow_run, "deployment_id", None)
    return {
        "flow_name": getattr(flow, "name", None) or getattr(flow_run, "flow_name", None),
        "flow_run_id": str(flow_run.id),
        "flow_run_name": getattr(flow_run, "name", None),
        "deployment_id": None if deployment is None else str(deployment),
        "run_count": getattr(flow_run, "run_count", None),
        "parameters_sha256": digest(dict(getattr(flow_run, "parameters", None) or {})),
        "tags": sorted(getattr(flow_run, "tags", None) or []),
    }


def task_subject(task_run: Any, attempt: int, flow: Any, flow_run: Any) -> Data:
    """Who a task record is about: the task run, its attempt, and the flow run around it."""
    name = str(task_run.name)
    deployment = getattr(flow_run, "deployment_id", None) if flow_run is not None else None
    flow_run_id = getattr(task_run, "flow_run_id", None)
    return {
        "flow_name": getattr(flow, "name", None),
        "flow_run_id": None if flow_run_id is None else str(flow_run_id),
        "deployment_id": None if deployment is None else str(deployment),
        # task_run.name is "<task name>-<3 hex>"; the task's own name is what users wrote
        "task_name": name.rsplit("-", 1)[0] if "-" in name else name,
        "task_run_id": str(task_run.id),
        "task_key": getattr(task_run, "task_key", None),
        "run_count": attempt,
        "tags": sorted(getattr(task_run, "tags", None) or []),
    }


def created_by(flow_run: Any) -> Data | None:
    """Who created the flow run (Prefect's ``created_by``: a user, a deployment, an
    automation), as the privacy policy's default rules find it: ``/data/created_by``."""
    creator = getattr(flow_run, "created_by", None)
    if creator is None:
        return None
    out = {
        name: str(value)
        for name in ("id", "type", "display_value")
        if (value := getattr(creator, name, None)) is not None
    }
    return out or None


def _trace(run: Any, state: Any, *, task: bool) -> dict[str, str] | None:
    """Prefect's span of the run (its RunTelemetry puts the traceparent in the run's labels
    and the state's details), else the current span, else the context derived from the run's
    ids (:func:`prefect_audit.ids.run_trace`): with no OpenTelemetry SDK every record of a
    run still carries the flow run id as its trace id."""
    labels = getattr(run, "labels", None) or {}
    details = getattr(state, "state_details", None)
    found = trace_context(
        {"traceparent": labels.get("__OTEL_TRACEPARENT")},
        {"traceparent": getattr(details, "traceparent", None)},
    )
    if found is not None:
        return dict(found)
    if task:
        return run_trace(getattr(run, "flow_run_id", None), getattr(run, "id", None))
    return run_trace(getattr(run, "id", None))


def _prefect_settings() -> Any:
    from prefect.context import SettingsContext

    return SettingsContext.get()


class _Pass(NamedTuple):
    """One flow run's end-of-run pass: what its records need, taken in the final hook."""

    flow: Any
    flow_run: Any
    done: set[Key]
    prefect_settings: Any  # prefect.context.SettingsContext of the hook, or None


class EndOfRunPasses:
    """The end-of-run passes of one process: a queue of flow runs and ONE daemon thread that
    runs ``run`` for each, in order, started on first use.

    At interpreter exit (``atexit``, after Prefect's own services pushed out their events)
    the process waits for the queue to empty, at most ``exit_wait()`` seconds; a pass still
    pending then is abandoned: logged, counted (``run_passes_abandoned``), and left to
    ``workflow-audit reconcile prefect`` (a ``task.unrecorded`` gap per task run with no
    terminal record) or a follower (the records themselves, same keys). A daemon thread,
    because Python joins other threads before it runs exit handlers: the wait would have no
    bound.
    """

    def __init__(self, run: Callable[[_Pass], None], exit_wait: Callable[[], float]) -> None:
        self._run = run
        self._exit_wait = exit_wait
        self._reset()
        self._registered = False
        if hasattr(os, "register_at_fork"):
            # A forked child has no pass thread, and the parent runs the parent's passes.
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._queue: collections.deque[_Pass] = collections.deque()
        self._pending: list[str] = []  # flow run ids queued or running, oldest first
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Passes queued or running."""
        with self._cond:
            return len(self._pending)

    def submit(self, job: _Pass) -> None:
        with self._cond:
            self._queue.append(job)
            self._pending.append(str(job.flow_run.id))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="workflow-audit-prefect-passes", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
            if not self._registered:
                # Registered after the hook runner's own exit handler (made with the adapter):
                # exit handlers run last-in first-out, so this wait comes first and the
                # runner then writes or spools what the passes queued.
                self._registered = True
                atexit.register(self.at_exit)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                job = self._queue.popleft()
            try:
                self._run(job)
            except Exception:  # the runner contains its own; this is the thread's last net
                COUNTERS.incr("hook_failures")
                logger.exception("workflow-audit: end-of-run pass of %s failed", job.flow_run.id)
            finally:
                with self._cond:
                    self._pending.remove(str(job.flow_run.id))
                    self._cond.notify_all()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until no pass is queued or running, at most ``timeout_s`` (None: no bound);
        True if none is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending, timeout_s)

    def at_exit(self) -> None:
        """Wait up to ``exit_wait()`` for pending passes; abandon (log, count) the rest."""
        limit = self._exit_wait()  # the settings are loaded: a pass was submitted
        if self.wait(limit):
            return
        with self._cond:
            left = list(self._pending)
            for job in self._queue:  # never to run: no longer pending (the running one is)
                self._pending.remove(str(job.flow_run.id))
            self._queue.clear()
        COUNTERS.incr("run_passes_abandoned", len(left))
        logger.warning(
            "workflow-audit: exit_wait (%.2fs) ran out with %d end-of-run pass(es) pending "
            "(flow runs %s): their task records are not all written; "
            "'workflow-audit reconcile prefect' finds the task runs left unrecorded",
            limit,
            len(left),
            ", ".join(left),
        )


def flush_runs(timeout_s: float | None = None) -> bool:
    """Wait until the end-of-run passes of this process's flow runs have written their task
    records (see :meth:`PrefectAdapter.flush_runs`): for a flow called in a long-lived
    process (a notebook, a test) that reads the ledger right after. True if none is left."""
    return get_adapter().flush_runs(timeout_s)


_ADAPTER: PrefectAdapter | None = None
_ADAPTER_LOCK = threading.Lock()


def get_adapter() -> PrefectAdapter:
    """This process's adapter (created on first use, never raises)."""
    global _ADAPTER
    with _ADAPTER_LOCK:
        if _ADAPTER is None:
            _ADAPTER = PrefectAdapter()
        return _ADAPTER
