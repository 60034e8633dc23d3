"""Turns Prefect state hooks, and Prefect's record of task runs, into audit records.

>>> from prefect_audit.adapter import PrefectAdapter
>>> adapter = PrefectAdapter()   # loads nothing until the first hook fires

One adapter per process (:func:`get_adapter`). Like the Airflow adapter, each hook reads its
arguments in Prefect's thread and hands the events to a :class:`~audit_core.hooks.HookRunner`
(one writer thread, ``hook_timeout`` budget, fail-open). Task runs are recorded two ways, and
each (task run, event, attempt) once: in real time by :func:`prefect_audit.task_hooks` where a
task carries them, and from Prefect's API — the authoritative state history — when the flow
run ends (:meth:`PrefectAdapter.task_run_events`); see :mod:`prefect_audit.flows` for why.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from audit_core import AuditTrail, Event, trace_context
from audit_core.hooks import AdapterBase, AdapterOptions, digest, failure_data
from audit_core.ship import deliver_to_sinks
from prefect_audit._client import task_runs
from prefect_audit.settings import WorkflowAuditSettings

__all__ = ["PrefectAdapter", "flow_subject", "get_adapter", "task_subject"]

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
            events = []
            if state.name == "Retrying":  # a failed flow attempt fires no on_failure
                events.append(self._flow_event("flowrun.retry_scheduled", flow, flow_run, state))
            started = self._flow_event("flowrun.started", flow, flow_run, state, data)
            # on_running receives the flow run as it was before Prefect counted this attempt
            subject = {**(started.subject or {}), "run_count": (flow_run.run_count or 0) + 1}
            events.append(Event(type=started.type, subject=subject, data=data, trace=started.trace))
            return events

        return self._run("flowrun.started", build)

    def flow_finished(self, flow: Any, flow_run: Any, state: Any, outcome: str) -> bool:
        """``outcome``: succeeded, failed, crashed or cancelled."""

        def build() -> list[Event]:
            events = self.task_run_events(flow, flow_run)
            data: Data = {"state": state.name}
            if outcome != "succeeded":
                data.update(_state_failure(state, kind=outcome, live=True))
            events.append(self._flow_event(f"flowrun.{outcome}", flow, flow_run, state, data))
            return events

        return self._run(f"flowrun.{outcome}", build)

    def _flow_event(
        self, event: str, flow: Any, flow_run: Any, state: Any, data: Data | None = None
    ) -> Event:
        return Event(
            type=event,
            subject=flow_subject(flow, flow_run),
            data=data or {},
            trace=_trace(flow_run, state),
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
            data = {} if success else _state_failure(state, kind="exception", live=True)
            events = [self._task_event(event, task_run, state, int(task_run.run_count or 1), data)]
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
            trace=_trace(task_run, state),
        )

    # -- task runs from Prefect's API -------------------------------------------------------

    def task_run_events(self, flow: Any, flow_run: Any) -> list[Event]:
        """The flow run's task runs, from their state history in Prefect's API, as records
        (minus those task hooks recorded already). Waits at most ``sync_timeout`` for the API
        to hold every task run's final state: Prefect reports task states through events."""
        done = self._live.pop(str(flow_run.id), set())
        runs = _final_task_runs(flow_run.id, self.settings.sync_timeout)
        retried = [r.id for r, states in runs if any(_is_retry(s) for s in states)]
        reasons = _retry_reasons(retried) if retried else {}
        events: list[Event] = []
        for task_run, states in runs:
            for event, attempt, state, data in lifecycle(states, reasons.get(str(task_run.id))):
                if (str(task_run.id), event, attempt) in done:
                    continue
                events.append(
                    Event(
                        type=event,
                        subject=task_subject(task_run, attempt, flow, flow_run),
                        data=data,
                        trace=_trace(task_run, state),
                        ts=state.timestamp,
                    )
                )
        events.sort(key=lambda e: e.ts if isinstance(e.ts, dt.datetime) else _EPOCH)
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
            trace = _trace(run, None)
        elif flow_run is not None:
            base, trace = flow_subject(flow, flow_run), _trace(flow_run, None)
        else:
            base, trace = {}, trace_context()
        full = {**base, **(subject or {})}
        return Event(type=event, subject=full, data=data, trace=trace)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def lifecycle(
    states: Sequence[Any], retry_reasons: Sequence[Data] | None = None
) -> list[tuple[str, int, Any, Data]]:
    """(event, attempt, state, data) for a task run's state history, oldest first.

    ``Running`` starts attempt 1; ``AwaitingRetry`` (a retry delay) or ``Retrying`` right after
    a ``Running`` ends the attempt with ``task.retry_scheduled``; ``Retrying`` starts the next;
    a final state ends the last. Prefect keeps no failed state for an attempt it retries: the
    n-th ``retry_reasons`` entry (from the task run's log, :func:`retry_reason`) says why the
    n-th retry was scheduled.
    """
    out: list[tuple[str, int, Any, Data]] = []
    attempt = 0
    open_attempt = False
    reasons = list(retry_reasons or [])

    def why() -> Data:
        return reasons.pop(0) if reasons else {}

    for state in states:
        kind, name = _state_type(state), state.name
        if kind == "SCHEDULED" and name == "AwaitingRetry" and open_attempt:
            out.append(("task.retry_scheduled", attempt, state, why()))
            open_attempt = False
        elif kind == "RUNNING":
            if open_attempt:  # Retrying straight after Running: no retry delay
                out.append(("task.retry_scheduled", attempt, state, why()))
            attempt += 1
            open_attempt = True
            out.append(("task.started", attempt, state, {}))
        elif kind == "COMPLETED":
            data: Data = {"cached": True} if name == "Cached" else {}
            out.append(("task.succeeded", max(attempt, 1), state, data))
            open_attempt = False
        elif kind in ("FAILED", "CRASHED", "CANCELLED"):
            failure = _state_failure(state, kind=kind.lower() if kind != "FAILED" else "exception")
            out.append(("task.failed", max(attempt, 1), state, failure))
            open_attempt = False
    return out


# Prefect 3.9's task engine logs, at INFO, why it retries (task_engine.handle_retry):
# "Task run failed with exception: ValueError('boom') - Retry 1/2 will start immediately".
_RETRY_LOG = re.compile(
    r"Task run failed with (?P<kind>exception|state): (?P<what>.*) - "
    r"Retry (?P<retry>\d+)/(?P<retries>\d+) will start .*",
    re.DOTALL,
)
_EXCEPTION_REPR = re.compile(r"(?P<type>[A-Za-z_][\w.]*)\((?P<args>.*)\)", re.DOTALL)


def retry_reason(message: str) -> Data | None:
    """The failure facts in Prefect's retry log line, or None if ``message`` is not one.

    >>> reason = retry_reason("Task run failed with exception: ValueError('boom') - "
    ...                       "Retry 1/2 will start immediately")
    >>> reason["error_type"], reason["message"], reason["retry"], reason["max_retries"]
    ('ValueError', "ValueError('boom')", 1, 2)
    """
    match = _RETRY_LOG.fullmatch(message.strip())
    if match is None:
        return None
    out: Data = {"message": match["what"]}
    if match["kind"] == "exception" and (error := _EXCEPTION_REPR.fullmatch(match["what"])):
        out["error_type"] = error["type"]
    out.update(
        failure_kind=match["kind"], retry=int(match["retry"]), max_retries=int(match["retries"])
    )
    return out


def _is_retry(state: Any) -> bool:
    return state.name in ("AwaitingRetry", "Retrying")


def _retry_reasons(task_run_ids: Sequence[Any]) -> dict[str, list[Data]]:
    """Per task run, the reasons of its retries, oldest first, from its logs in Prefect's API
    (log records reach the API through a queue: push ours out first). Best effort: a log not
    there yet leaves that retry record without a message."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
    from prefect.client.schemas.sorting import LogSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=2)
    found: dict[str, list[Data]] = {}
    log_filter = LogFilter(task_run_id=LogFilterTaskRunId(any_=list(task_run_ids)))
    with get_client(sync_client=True) as client:
        for log in client.read_logs(log_filter=log_filter, sort=LogSort.TIMESTAMP_ASC):
            reason = retry_reason(str(log.message))
            if reason is not None:
                found.setdefault(str(log.task_run_id), []).append(reason)
    return found


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


def _state_type(state: Any) -> str:
    kind = getattr(state, "type", None)
    return str(getattr(kind, "value", kind))


def _trace(run: Any, state: Any) -> dict[str, str] | None:
    """The run's span (Prefect's RunTelemetry puts its traceparent in the run's labels and
    the state's details), else the current span."""
    labels = getattr(run, "labels", None) or {}
    details = getattr(state, "state_details", None)
    return trace_context(
        {"traceparent": labels.get("__OTEL_TRACEPARENT")},
        {"traceparent": getattr(details, "traceparent", None)},
    )


def _state_failure(state: Any, *, kind: str, live: bool = False) -> Data:
    """Failure facts of a final state: the exception when this process holds it (a hook's
    state, ``live``), else Prefect's message (the API's history: reading a result there could
    mean fetching it from result storage)."""
    if live:
        from prefect.exceptions import PrefectException

        try:
            error = state.result(raise_on_failure=False)
        except (PrefectException, OSError, ValueError, TypeError):  # no result to show
            error = None
        if isinstance(error, BaseException):
            return failure_data(error, kind=kind)
    return failure_data(getattr(state, "message", None) or None, kind=kind)


def _final_task_runs(flow_run_id: Any, timeout_s: float) -> list[tuple[Any, list[Any]]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.events.worker import EventsWorker

    deadline = time.monotonic() + timeout_s
    # Task states reach the API as events: push ours out before asking for them.
    EventsWorker.drain_all(timeout=timeout_s)
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        previous: list[str] = []
        while True:
            runs = task_runs(client, flow_filter)
            ids = sorted(str(r.id) for r in runs)
            settled = all(r.state is not None and r.state.is_final() for r in runs)
            if (settled and ids == previous) or time.monotonic() >= deadline:
                if not settled:
                    logger.warning(
                        "workflow-audit: flow run %s: task runs not final in Prefect's API "
                        "after %.1fs; recording what it holds",
                        flow_run_id,
                        timeout_s,
                    )
                return [(r, list(client.read_task_run_states(r.id))) for r in runs]
            previous = ids
            time.sleep(0.05)


_ADAPTER: PrefectAdapter | None = None
_ADAPTER_LOCK = threading.Lock()


def get_adapter() -> PrefectAdapter:
    """This process's adapter (created on first use, never raises)."""
    global _ADAPTER
    with _ADAPTER_LOCK:
        if _ADAPTER is None:
            _ADAPTER = PrefectAdapter()
        return _ADAPTER
