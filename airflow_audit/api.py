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

__all__ = ["Audit", "audit"]


class Audit:
    """``audit.record(...)`` and shortcuts for the events ML pipelines record most."""

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


audit = Audit()
