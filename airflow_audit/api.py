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

from airflow_audit.adapter import get_adapter
from audit_core.hooks import AdapterBase, TaskApi

__all__ = ["Audit", "audit"]


class Audit(TaskApi):
    """``audit.record(...)`` and the shortcuts of :class:`audit_core.hooks.TaskApi`, for the
    running Airflow task."""

    def __init__(self) -> None:
        super().__init__(_adapter)


def _adapter() -> AdapterBase:
    # Looked up per record: the adapter is created on first use, and tests replace
    # get_adapter. A module-level function, not a lambda, so `audit` still pickles (a
    # ProcessPoolExecutor or a virtualenv task with serializer="pickle" sends it along).
    return get_adapter()


audit = Audit()
