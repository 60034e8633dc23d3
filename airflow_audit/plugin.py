"""The Airflow plugin, registered through the ``airflow.plugins`` entry point (no file in
``plugins/``). ``[workflow_audit] enabled = False`` registers no listener at all; so does an
``enabled`` that is neither true nor false, with an error in the log (a listener would only
fail on that setting in every hook)."""

from __future__ import annotations

import logging

from airflow.plugins_manager import AirflowPlugin

from airflow_audit import access, listener, service, ui
from airflow_audit._compat import airflow_conf_get
from airflow_audit.settings import OPTIONS, SECTION, parse_boolean
from audit_core.errors import ConfigError


def _enabled(key: str = "enabled") -> bool:
    """The boolean option ``key``; False, with an error in the log, when it is neither."""
    try:
        return parse_boolean(key, airflow_conf_get(SECTION, key, OPTIONS[key].default))
    except ConfigError as exc:
        outcome = "no listener registered, nothing is recorded" if key == "enabled" else "off"
        logging.getLogger("workflow_audit.airflow").error("workflow-audit: %s; %s", exc, outcome)
        return False


class WorkflowAuditPlugin(AirflowPlugin):
    """Records every task run, retry, failure, asset event and DAG run on the audit chain."""

    name = "workflow_audit"
    listeners = [listener] if _enabled() else []
    # Anchoring (checkpoints every anchor_interval), Airflow's event log and the permission
    # checks onto the events chain, from the scheduler and each API server worker
    # (service.py says where and why there).
    _serves = _enabled()
    if _serves:
        listeners.append(service.lifecycle)
    # The audit trail in the UI, behind Airflow's auth manager (airflow_audit/ui/).
    _ui = _enabled() and _enabled("ui")
    if _serves or _ui:
        fastapi_apps = service.plugin_apps(lifespan=_serves, ui=_ui)
    external_views = ui.EXTERNAL_VIEWS if _ui else []
    # Logins, failed logins, logouts and 401/403 answers of the API server (access.py).
    fastapi_root_middlewares = (
        [access.middleware_entry()] if _enabled() and _enabled("record_access") else []
    )
