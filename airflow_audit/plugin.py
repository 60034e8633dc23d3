"""The Airflow plugin, registered through the ``airflow.plugins`` entry point (no file in
``plugins/``). ``[workflow_audit] enabled = False`` registers no listener at all."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_audit import listener
from airflow_audit._compat import airflow_conf_get
from airflow_audit.settings import OPTIONS, SECTION


def _enabled() -> bool:
    value = airflow_conf_get(SECTION, "enabled", OPTIONS["enabled"].default)
    return value.strip().lower() not in ("false", "f", "0", "no", "n", "off")


class WorkflowAuditPlugin(AirflowPlugin):
    """Records every task run, retry, failure, asset event and DAG run on the audit chain."""

    name = "workflow_audit"
    listeners = [listener] if _enabled() else []
