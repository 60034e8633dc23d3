"""``workflow-audit reconcile prefect --since …``: flow and task runs that ended unrecorded.

Prefect runs no hook in a process killed with SIGKILL (Prefect issues #16427, #16436): its
flow run stays ``Running`` in the API, and the task runs that finished before the kill were
never recorded (an audited flow records its task runs when it ends). This reconciler asks
Prefect's API for the flow runs that started in the window and their task runs, and the core
appends ``flowrun.unrecorded`` / ``task.unrecorded`` for each run with no terminal record.

A flow run still ``Running`` or ``Pending`` counts as a gap only when ``--until`` is given and
it started before then: pass an ``--until`` older than your longest flow run, so a run that is
merely still going is not reported.

A terminal record counts whoever wrote it: the flow process's hooks, or the event follower
(``workflow-audit follow prefect``, :mod:`prefect_audit.eventmap`), whose records have the
same subject fields. A gap record has the run's trace (:func:`prefect_audit.ids.run_trace`)
and a key (:func:`prefect_audit.ids.lifecycle_key`), so two reconcilers racing write it once.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

from audit_core import AuditConfig, Event, Record, parse_timestamp
from audit_core.reconcile import Expected
from prefect_audit._client import flow_runs, flows, task_runs
from prefect_audit.adapter import (
    FLOW_TERMINAL_EVENTS,
    TASK_TERMINAL_EVENTS,
    flow_subject,
    task_subject,
)
from prefect_audit.ids import final_attempt, lifecycle_key, run_trace
from prefect_audit.settings import WorkflowAuditSettings

__all__ = ["PrefectReconciler"]

_ACTOR = {"type": "reconciler", "id": "workflow-audit reconcile prefect"}
_REASON = (
    "Prefect's API has this run and the chain has no terminal record for it: its process "
    "probably died before its hooks ran (SIGKILL, OOM kill, lost infrastructure)."
)


class PrefectReconciler:
    """Prefect's side of :class:`audit_core.reconcile.Reconciler`."""

    name = "prefect"

    def config(self, ledger_url: str | None, chain: str | None) -> AuditConfig:
        config = WorkflowAuditSettings().audit_config()
        return config.evolve(
            ledger_url=ledger_url or config.ledger_url, chain=chain or config.chain
        )

    def expected(self, since: str, until: str | None) -> Iterator[Expected]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterId,
            FlowRunFilterStartTime,
        )

        start, end = parse_timestamp(since), parse_timestamp(until) if until else None
        with get_client(sync_client=True) as client:
            window = FlowRunFilterStartTime(after_=start, before_=end)  # type: ignore[arg-type]
            runs = flow_runs(client, FlowRunFilter(start_time=window))
            names = {f.id: f.name for f in flows(client, {r.flow_id for r in runs})}
            for run in runs:
                final = run.state is not None and run.state.is_final()
                if not final and end is None:
                    continue  # may still be running: only an explicit --until judges it
                flow = _Named(names.get(run.flow_id))
                yield Expected(
                    ("flow", str(run.id)), _unrecorded("flowrun", flow_subject(flow, run), run)
                )
                ids = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
                for task_run in task_runs(client, ids):
                    if task_run.state is not None and task_run.state.is_final():
                        subject = task_subject(task_run, final_attempt(task_run), flow, run)
                        yield Expected(
                            ("task", str(task_run.id)), _unrecorded("task", subject, task_run)
                        )

    def recorded_key(self, record: Record) -> Hashable | None:
        if record.event in TASK_TERMINAL_EVENTS:
            return ("task", record.subject.get("task_run_id"))
        if record.event in FLOW_TERMINAL_EVENTS:
            return ("flow", record.subject.get("flow_run_id"))
        return None


class _Named:
    def __init__(self, name: str | None) -> None:
        self.name = name


def _unrecorded(kind: str, subject: dict[str, Any], run: Any) -> Event:
    state = run.state
    event = f"{kind}.unrecorded"
    task_run_id = subject.get("task_run_id")
    return Event(
        type=event,
        subject=subject,
        actor=_ACTOR,
        trace=run_trace(subject.get("flow_run_id"), task_run_id),
        key=lifecycle_key(event, task_run_id or subject.get("flow_run_id"), final_attempt(run)),
        data={
            "state": None if state is None else state.name,
            "state_type": None if state is None else str(state.type.value),
            "started_at": run.start_time,
            "ended_at": run.end_time,
            "reason": _REASON,
        },
    )
