"""A flow run's task runs, as Prefect's API holds them, turned into lifecycle steps: what the
end-of-run pass of ``@audited_flow`` records (see :mod:`prefect_audit.flows`).

>>> from types import SimpleNamespace as NS
>>> states = [NS(type="RUNNING", name="Running"), NS(type="COMPLETED", name="Completed")]
>>> [(event, attempt) for event, attempt, _state, _data in lifecycle(states)]
[('task.started', 1), ('task.succeeded', 1)]

**Cheap by construction.** The pass runs in this process's background thread once the flow
run has returned (:class:`prefect_audit.adapter.PrefectAdapter`), next to the user's next
work, so it reads little: two counts, polled until Prefect's API holds every task run of the
flow run in a final state, one paginated, filtered query of those task runs, the state history
of only the task runs that need it (retried, or in an unexpected state), and the logs of only
the retried ones (why they retried). A task run that ran once and ended is described by the
task run itself: ``start_time`` is its ``task.started``, its state its terminal record, the
same records the history would give.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from audit_core.hooks import failure_data
from prefect_audit._client import task_run_count, task_runs

__all__ = ["Step", "lifecycle", "retry_reason", "state_failure", "state_type", "task_run_steps"]

logger = logging.getLogger("workflow_audit.prefect")
Data = dict[str, Any]
#: Final state types a task run that ran once may end in (its own fields then describe it).
_ENDED = frozenset(("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
_ONE_ATTEMPT = _ENDED | {"PENDING", "RUNNING"}


class Step(NamedTuple):
    """One lifecycle record of a task run: which, for which attempt, from which state, when."""

    task_run: Any
    event: str
    attempt: int
    state: Any
    ts: dt.datetime | None
    data: Data


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
        kind, name = state_type(state), state.name
        if kind == "SCHEDULED" and name == "AwaitingRetry" and open_attempt:
            out.append(("task.retry_scheduled", attempt, state, why()))
            open_attempt = False
        elif kind == "RUNNING":
            if open_attempt:  # Retrying straight after Running: no retry delay
                out.append(("task.retry_scheduled", attempt, state, why()))
            attempt += 1
            open_attempt = True
            out.append(("task.started", attempt, state, {}))
        elif kind in _ENDED:
            out.append((*_terminal(state, attempt), state, _terminal_data(state)))
            open_attempt = False
    return out


def _terminal(state: Any, attempt: int) -> tuple[str, int]:
    return ("task.succeeded" if state_type(state) == "COMPLETED" else "task.failed", attempt)


def _terminal_data(state: Any) -> Data:
    kind = state_type(state)
    if kind == "COMPLETED":
        return {"cached": True} if state.name == "Cached" else {}
    return state_failure(state, kind=kind.lower() if kind != "FAILED" else "exception")


def _ran_once(task_run: Any) -> bool:
    """True if the task run's own fields tell its whole lifecycle: at most one attempt, that
    began (``start_time``) if it ran, and a final state of a known type, or still pending or
    running (the sync timed out: its history would hold no more)."""
    state, runs = task_run.state, int(task_run.run_count or 0)
    if state is None or state_type(state) not in _ONE_ATTEMPT or runs > 1:
        return False
    return runs == 0 or task_run.start_time is not None


def _derived(task_run: Any) -> list[Step]:
    # What lifecycle() makes of [Running, <final>] (or [<final>] for a run that never ran),
    # stamped with the times the history would give: start_time is the Running state's.
    state = task_run.state
    steps = []
    if int(task_run.run_count or 0) == 1:
        steps.append(Step(task_run, "task.started", 1, state, task_run.start_time, {}))
    if state_type(state) in _ENDED:
        event, attempt = _terminal(state, int(task_run.run_count or 0))
        steps.append(Step(task_run, event, attempt, state, state.timestamp, _terminal_data(state)))
    return steps


def task_run_steps(flow_run_id: Any, timeout_s: float) -> list[Step]:
    """Every lifecycle step of the flow run's task runs, oldest first. Waits for Prefect's
    API to hold every task run's final state (Prefect reports task states through events,
    which reach the API late): as long as the counts it polls still change, and at most
    ``timeout_s`` after the last change (:func:`_final_task_runs`)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = _final_task_runs(client, flow_run_id, timeout_s)
        histories = {
            str(r.id): list(client.read_task_run_states(r.id)) for r in runs if not _ran_once(r)
        }
    retried = [i for i, states in histories.items() if any(map(_is_retry, states))]
    reasons = _retry_reasons(retried) if retried else {}
    steps: list[Step] = []
    for run in runs:
        states = histories.get(str(run.id))
        if states is None:
            steps.extend(_derived(run))
            continue
        for event, attempt, state, data in lifecycle(states, reasons.get(str(run.id))):
            steps.append(Step(run, event, attempt, state, state.timestamp, data))
    steps.sort(key=lambda s: s.ts or _EPOCH)
    return steps


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _final_task_runs(client: Any, flow_run_id: Any, timeout_s: float) -> list[Any]:
    """The flow run's task runs once Prefect holds each in a final state and its recorder has
    gone quiet, or at the deadline what it holds. Prefect records the client's task states
    one event at a time, a few hundred a second: while it catches up, the task runs it holds
    are often all final already, with more to come; so the wait polls two counts (all task
    runs, final ones: small requests that leave the busy server to its work) until they are
    equal and unchanged over :data:`QUIET_S`, then reads the task runs once, in pages.

    The deadline scales with the run: it is ``timeout_s`` after the last poll that saw the
    counts change, so a recorder that is behind but moving (about 19 s after a flow of 1,000
    tasks on a small machine) is waited for, and one that stopped is given ``timeout_s``."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    # Task states reach the API as events, which Prefect's events worker sends as they come:
    # the pass does not drain it (draining stops the worker, and a flow running meanwhile
    # could send to the stopped one); a tail still in flight shows as counts that change.
    deadline = time.monotonic() + timeout_s
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    final = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType(t) for t in _ENDED]))
    )
    seen: tuple[int, int] | None = None
    while True:
        counts = (task_run_count(client, flow_filter), task_run_count(client, flow_filter, final))
        if counts == seen and counts[0] == counts[1]:
            runs = task_runs(client, flow_filter)
            if len(runs) >= counts[0] and all(r.state and r.state.is_final() for r in runs):
                return runs
        # While the recorder is busy, poll less: each poll is work for the server we wait on.
        busy = seen is not None and counts != seen
        if busy:  # progress: the server is still recording this run's task states
            deadline = time.monotonic() + timeout_s
        if time.monotonic() >= deadline:
            logger.warning(
                "workflow-audit: flow run %s: task runs not final in Prefect's API after "
                "%.1fs without progress; recording what it holds",
                flow_run_id,
                timeout_s,
            )
            return task_runs(client, flow_filter)
        seen = counts
        time.sleep(BUSY_S if busy else QUIET_S)


#: Seconds Prefect's task run counts must stay unchanged (and all final) before the pass
#: reads the task runs: its recorder, when behind, changes them every few milliseconds (the
#: pass runs off the flow's path, so a margin here costs the flow nothing).
QUIET_S = 0.2
#: Seconds between polls while the counts still change.
BUSY_S = 0.25


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


def state_type(state: Any) -> str:
    """A state's type as a string (``COMPLETED``), whether an enum or already a string."""
    kind = getattr(state, "type", None)
    return str(getattr(kind, "value", kind))


def state_failure(state: Any, *, kind: str, live: bool = False) -> Data:
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
