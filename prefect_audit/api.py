"""The task-side API: events only the user's code knows, attached to the running task or flow.

Inside a Prefect task or flow::

    import prefect_audit

    prefect_audit.record("model.retrained", data={"model": "churn", "auc": 0.91})
    prefect_audit.audit.data_uploaded("s3://lake/train.csv", rows=120_000)

The subject is the current task run (flow name, flow run id, task name, task run id, attempt,
...) or, in a flow's own code, the flow run; the trace context is the run's span. Fail-open
and time-bounded like every hook; ``required=True`` raises an
:class:`~audit_core.errors.AuditError` instead when the record cannot be written.
"""

from __future__ import annotations

from audit_core.hooks import AdapterBase, TaskApi
from prefect_audit.adapter import get_adapter

__all__ = ["Audit", "audit", "record"]


class Audit(TaskApi):
    """``audit.record(...)`` and the shortcuts of :class:`audit_core.hooks.TaskApi`, for the
    running Prefect task or flow."""

    def __init__(self) -> None:
        super().__init__(_adapter)


def _adapter() -> AdapterBase:
    # Looked up per record: the adapter is created on first use, and tests replace
    # get_adapter. A module-level function, not a lambda, so `audit` still pickles (a
    # ProcessPoolExecutor or a virtualenv task with serializer="pickle" sends it along).
    return get_adapter()


audit = Audit()
record = audit.record
