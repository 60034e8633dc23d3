"""workflow-audit for Apache Airflow 3: a listener plugin that puts every task run, retry,
failure, asset event and DAG run on the audit chain, and a task-side API.

``pip install "workflow-audit[airflow]"`` registers the plugin (entry point ``airflow.plugins``)
and the provider (``airflow providers list``, ``airflow config list``); nothing else to do.

Inside a task::

    from airflow_audit import audit
    audit.record("model.retrained", data={"model": "churn", "auc": 0.91})
"""

from airflow_audit.api import Audit, audit

__all__ = ["Audit", "audit"]
