"""The Airflow plugin, registered through the ``airflow.plugins`` entry point (no file in
``plugins/``). ``[workflow_audit] enabled = False`` registers no listener at all; so does an
``enabled`` that is neither true nor false, with an error in the log (a listener would only
fail on that setting in every hook)."""

from __future__ import annotations

import logging

from airflow.plugins_manager import AirflowPlugin

from airflow_audit import listener
from airflow_audit._compat import airflow_conf_get
from airflow_audit.settings import OPTIONS, SECTION, parse_boolean
from audit_core.errors import ConfigError


def _enabled() -> bool:
    try:
        return parse_boolean(
            "enabled", airflow_conf_get(SECTION, "enabled", OPTIONS["enabled"].default)
        )
    except ConfigError as exc:
        logging.getLogger("workflow_audit.airflow").error(
            "workflow-audit: %s; no listener registered, nothing is recorded", exc
        )
        return False


class WorkflowAuditPlugin(AirflowPlugin):
    """Records every task run, retry, failure, asset event and DAG run on the audit chain."""

    name = "workflow_audit"
    listeners = [listener] if _enabled() else []
