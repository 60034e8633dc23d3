"""The task-side API: events only the user's code knows, attached to the running task.

Inside an Airflow task::

    from airflow_audit import audit

    audit.record("model.retrained", data={"model": "churn", "auc": 0.91})
    audit.data_uploaded("s3://lake/train.csv", rows=120_000, sha256=digest)

The record's subject is the current task instance (dag_id, task_id, run_id, try_number, ...)
and its trace context the task's ``context_carrier``, as for the listener's own records. Like
every hook, ``record`` is fail-open and time-bounded; pass ``required=True`` to get an
:class:`~audit_core.errors.AuditError` instead when the record cannot be written (for events a
task must not proceed without).
"""

from __future__ import annotations

from collections.abc import Mapping

from airflow_audit.adapter import get_adapter
from audit_core.hooks import TaskApi

__all__ = ["Audit", "audit"]


class Audit(TaskApi):
    """``audit.record(...)`` and the shortcuts of :class:`audit_core.hooks.TaskApi`."""

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: Mapping[str, object] | None = None,
        required: bool = False,
    ) -> bool:
        """Record ``event`` for the running task; True once it is durable."""
        return get_adapter().task_record(event, data, subject, required=required)


audit = Audit()
