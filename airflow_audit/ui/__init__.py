"""The audit trail inside Airflow's UI: :func:`audit_core.web.create_app` mounted into the
plugin's FastAPI app at :data:`URL_PREFIX`, shown by Airflow in a sandboxed, same-origin
iframe through the plugin's :data:`EXTERNAL_VIEWS` (Browse → "Audit trail"; an "Audit" tab
on each DAG, DAG run and task instance page).

Airflow mounts a plugin's app open to anyone: every route of this one depends on
:func:`airflow_audit.ui.auth.viewer`, which asks Airflow's auth manager (401 without a valid
token, 403 without the audit-log permission, and the DAGs the user may read). Every page
view, record opened, proof downloaded and export made is recorded on the ``audit`` chain by
:class:`airflow_audit.ui.recorder.UiRecorder`, off the event loop and fail-open.

Importing this package imports neither FastAPI nor Airflow's API: the plugin (loaded by
every task process) only reads :data:`EXTERNAL_VIEWS`; the API server calls
:func:`plugin_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from airflow_audit.settings import AirflowAuditSettings

__all__ = ["EXTERNAL_VIEWS", "URL_PREFIX", "VIA", "plugin_app", "ui_app"]

logger = logging.getLogger("workflow_audit.airflow")

#: Where the plugin's FastAPI app (and so the audit trail) is mounted in the API server.
URL_PREFIX = "/workflow-audit"
#: ``data.via`` of the ``audit.*`` records written here.
VIA = "airflow"

Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]

#: The plugin's ``external_views``: Airflow substitutes ``{DAG_ID}``, ``{RUN_ID}`` and
#: ``{TASK_ID}`` in ``href``; each view needs a ``url_route`` of its own (Airflow skips
#: views without one, and those whose route another plugin took).
EXTERNAL_VIEWS: list[dict[str, Any]] = [
    {
        "name": "Audit trail",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "category": "browse",
        "url_route": "workflow-audit",
    },
    {
        "name": "Audit",
        "href": f"{URL_PREFIX}/dags/{{DAG_ID}}",
        "destination": "dag",
        "url_route": "workflow-audit-dag",
    },
    {
        "name": "Audit",
        "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}",
        "destination": "dag_run",
        "url_route": "workflow-audit-dag-run",
    },
    {
        "name": "Audit",
        "href": f"{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/tasks/{{TASK_ID}}",
        "destination": "task_instance",
        "url_route": "workflow-audit-task-instance",
    },
]


def ui_app(settings: AirflowAuditSettings) -> FastAPI:
    """The audit trail app over ``settings``' ledger, behind Airflow's auth manager."""
    from airflow_audit.ui.auth import viewer
    from airflow_audit.ui.recorder import UiRecorder
    from audit_core import AuditError
    from audit_core.checkpoint import load_verifiers
    from audit_core.web import create_app

    keys: list[str] = []
    if settings.verifier_keys:
        try:  # key strings or files of them, as `workflow-audit verify --key` takes
            keys = [str(k) for k in load_verifiers(settings.verifier_keys)]
        except AuditError as exc:  # the pages stay; the status page checks no signature
            logger.error("workflow-audit: [workflow_audit] verifier_key is unusable: %s", exc)
    return create_app(
        ledger_url=settings.audit.ledger_url,
        viewer=viewer,
        recorder=UiRecorder(),
        via=VIA,
        verifier_keys=keys,
        config=settings.audit,
    )


def plugin_app(*, lifespan: Lifespan | None, ui: bool) -> FastAPI:
    """The plugin's one FastAPI app: the audit trail when ``ui``, else an empty app; with
    ``lifespan`` entered around the app's own (Airflow enters it in every API server worker).

    Never raises for the audit trail: when its settings or app cannot be built, the error is
    logged and the empty app keeps the lifespan (the ingestion does not depend on the UI)."""
    from fastapi import FastAPI

    app: FastAPI | None = None
    if ui:
        try:
            from airflow_audit.settings import load_settings

            app = ui_app(load_settings())
        except Exception:  # the API server keeps starting, without the audit trail
            logger.exception("workflow-audit: the audit trail page could not be built")
    if app is None:
        app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    if lifespan is not None:
        _enter_first(app, lifespan)
    return app


def _enter_first(app: FastAPI, lifespan: Lifespan) -> None:
    """Make ``lifespan`` wrap the app's own lifespan (startup handlers included)."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def both(target: Any) -> AsyncIterator[Any]:
        async with lifespan(target), inner(target) as state:
            yield state

    app.router.lifespan_context = both
