"""``workflow-audit reconcile airflow --since …``: task instances that ended without a record.

A task process killed with SIGKILL (or by the OOM killer) never runs its listener hooks;
Airflow's scheduler or supervisor still marks the try failed in the metadata DB. This
reconciler lists every try that ended in the window — ``task_instance`` for the latest try and
``task_instance_history`` for earlier ones — and the core appends a ``task.unrecorded`` record
for each one with no terminal record on the chain (see :mod:`audit_core.reconcile`).

Run it where Airflow's metadata DB is reachable (the scheduler host, or any host with the
Airflow configuration), e.g. from a daily maintenance DAG or a cron job.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any

from airflow_audit.adapter import TERMINAL_EVENTS, task_subject
from airflow_audit.settings import load_settings
from audit_core import AuditConfig, Event, Record, parse_timestamp
from audit_core.reconcile import Expected

__all__ = ["AirflowReconciler", "find_gaps"]

#: States that end a try; ``up_for_retry`` ends a failed try that will be retried.
TERMINAL_STATES = ("success", "failed", "skipped", "upstream_failed", "up_for_retry")
_TERMINAL_EVENTS = frozenset(TERMINAL_EVENTS)


class AirflowReconciler:
    """Airflow's side of :class:`audit_core.reconcile.Reconciler`."""

    name = "airflow"

    def config(self, ledger_url: str | None, chain: str | None) -> AuditConfig:
        audit = load_settings().audit
        return audit.evolve(ledger_url=ledger_url or audit.ledger_url, chain=chain or audit.chain)

    def expected(self, since: str, until: str | None) -> Iterator[Expected]:
        from airflow.models.taskinstance import TaskInstance
        from airflow.models.taskinstancehistory import TaskInstanceHistory
        from airflow.utils.session import create_session
        from sqlalchemy import select

        start, end = parse_timestamp(since), parse_timestamp(until) if until else None
        with create_session() as session:
            for model in (TaskInstance, TaskInstanceHistory):
                query = select(model).where(
                    model.end_date >= start, model.state.in_(TERMINAL_STATES)
                )
                if end is not None:
                    query = query.where(model.end_date < end)
                for ti in session.scalars(query):
                    yield Expected(_key_of(ti), _unrecorded(ti))

    def recorded_key(self, record: Record) -> Hashable | None:
        if record.event not in _TERMINAL_EVENTS:
            return None
        s = record.subject
        return (s.get("dag_id"), s.get("task_id"), s.get("run_id"), s.get("map_index"),
                s.get("try_number"))  # fmt: skip


def find_gaps() -> AirflowReconciler:
    """The ``workflow_audit.reconcilers`` entry point."""
    return AirflowReconciler()


def _key_of(ti: Any) -> Hashable:
    return (ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)


def _unrecorded(ti: Any) -> Event:
    state = getattr(ti.state, "value", ti.state)
    return Event(
        type="task.unrecorded",
        subject=task_subject(ti),
        actor={"type": "reconciler", "id": "workflow-audit reconcile airflow"},
        data={
            "state": state,
            "started_at": ti.start_date,
            "ended_at": ti.end_date,
            "hostname": ti.hostname or None,
            "pid": ti.pid,
            "reason": "Airflow's metadata DB has this try in a terminal state and the chain "
            "has no terminal record for it: its process probably died before the listener "
            "ran (SIGKILL, OOM kill, lost worker).",
        },
    )
