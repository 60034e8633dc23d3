"""The event log's ingestion inside long-running Airflow processes, started by the plugin.

Airflow's ``log`` table is copied onto ``[workflow_audit] events_chain`` by a daemon thread
(:func:`audit_core.sources.start_ingesting`) in the processes that run as long as Airflow does
and reach its metadata DB:

- the **scheduler**: the lifecycle listener :data:`lifecycle` starts it on
  ``on_starting(component)`` when the component is the scheduler's ``Job`` and stops it on
  ``before_stopping`` (the triggerer, the DAG processor and task runners call the same hooks
  with other components and start nothing; see ``_compat.is_scheduler_job``);
- each **API server worker**: :data:`FASTAPI_APPS` mounts a FastAPI app (empty, or the audit
  trail of :mod:`airflow_audit.ui` when ``[workflow_audit] ui`` is on) whose lifespan starts
  it when the worker starts serving and stops it at shutdown (Airflow enters the lifespans
  of plugins' apps in every worker; a thread started before uvicorn forks or spawns its
  workers would not run in them).

CLI commands, task processes and DAG processors never ingest. However many processes ingest,
each row is recorded once: the cursor moves in the same transaction as the append. Nothing here
raises into Airflow: a failure to start is logged and counted (``ingest_failures``).

The same processes **anchor** whenever the plugin is enabled, ingesting or not: an
:class:`audit_core.anchor.Anchor` signs a checkpoint of every chain that grew (the task
chains too, which task processes too short-lived to reach the checkpoint policy write) every
``[workflow_audit] anchor_interval`` seconds and once more when the process stops cleanly,
and offers it to the configured witnesses (c2sp.org/tlog-witness). Several anchoring
processes sign what the ledger holds: a race yields consistent checkpoints, never a fork
(:func:`audit_core.checkpoint.write_checkpoint`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from airflow.listeners import hookimpl

from airflow_audit import _compat, permissions
from airflow_audit.eventlog import AirflowLogSource
from airflow_audit.settings import AirflowAuditSettings, load_settings
from audit_core import COUNTERS, AuditTrail, redact
from audit_core.anchor import Anchor, start_anchor
from audit_core.sources import Background, start_ingesting

__all__ = ["FASTAPI_APPS", "anchoring", "lifecycle", "plugin_apps", "running", "start", "stop"]

logger = logging.getLogger("workflow_audit.airflow")

_LOCK = threading.Lock()
_RUNNING: tuple[int, Background] | None = None  # (pid, thread) of this process
_ANCHOR: tuple[int, Anchor] | None = None  # (pid, anchor) of this process


def start(kind: str, settings: AirflowAuditSettings | None = None) -> Background | None:
    """Start this process's anchoring (when ``enabled``) and ingestion thread (when
    ``ingest_event_log`` is true too), once per process; ``kind`` names the process in the
    threads' names. Never raises: returns the ingestion thread, None when it did not start."""
    global _RUNNING
    try:
        settings = settings or load_settings()
        if settings.enabled:
            _start_anchor(kind, settings)
        if settings.enabled and settings.record_access:
            # who may do what, checked beside the event log (permissions.py; never raises)
            permissions.start_permission_checks(
                lambda: _open_trail(settings),
                chain=settings.events_chain,
                interval_s=settings.ingest_interval_s,
            )
        if not (settings.enabled and settings.ingest_event_log):
            return None
        with _LOCK:
            if _RUNNING is not None and _RUNNING[0] == os.getpid() and _RUNNING[1].alive:
                return _RUNNING[1]
            background = start_ingesting(
                lambda: _open_trail(settings),
                lambda: _open_source(settings),
                chain=settings.events_chain,
                interval_s=settings.ingest_interval_s,
                grace_s=settings.ingest_grace_s,
                name=f"workflow-audit-ingest-{kind}",
            )
            _RUNNING = (os.getpid(), background)
        logger.info(
            "workflow-audit: %s copies Airflow's event log onto chain %r",
            kind,
            settings.events_chain,
        )
        return background
    except Exception:  # the plugin's one containment point: Airflow keeps starting
        COUNTERS.incr("ingest_failures")
        logger.exception("workflow-audit: could not start copying Airflow's event log")
        return None


def stop(timeout_s: float = 10.0) -> None:
    """Stop this process's ingestion thread after its current step (bounded wait), then its
    anchoring after a final round, so the last checkpoint covers the last records ingested.
    Never raises: it runs in Airflow's shutdown."""
    global _RUNNING
    try:
        permissions.stop_permission_checks(timeout_s)
        with _LOCK:
            running, _RUNNING = _RUNNING, None
        if running is not None and running[0] == os.getpid():
            running[1].stop(timeout_s)
    except Exception:  # the shutdown's one containment point: Airflow goes on stopping
        COUNTERS.incr("ingest_failures")
        logger.exception("workflow-audit: could not stop copying Airflow's event log")
    _stop_anchor(timeout_s)


def anchoring() -> Anchor | None:
    """This process's anchor, if it was started here (and not stopped yet)."""
    current = _ANCHOR
    return current[1] if current is not None and current[0] == os.getpid() else None


def _start_anchor(kind: str, settings: AirflowAuditSettings) -> None:
    """Start this process's anchor once (a forked child starts its own: the parent's thread
    does not run there). :func:`start_anchor` never raises: None when it could not start
    (logged and counted by it, ``anchor_failures``); recording goes on without it."""
    global _ANCHOR
    try:
        with _LOCK:
            if anchoring() is not None:
                return
            anchor = start_anchor(settings.audit, name=f"workflow-audit-anchor-{kind}")
            _ANCHOR = None if anchor is None else (os.getpid(), anchor)
    except Exception:  # containment: ingestion and recording go on without anchoring
        COUNTERS.incr("anchor_failures")
        logger.exception("workflow-audit: could not start anchoring")


def _stop_anchor(timeout_s: float) -> None:
    """The final round (a checkpoint of every chain that grew since the last one), then
    stop. ``Anchor.stop`` never raises."""
    global _ANCHOR
    try:
        with _LOCK:
            current, _ANCHOR = _ANCHOR, None
        if current is not None and current[0] == os.getpid():
            current[1].stop(timeout_s)
    except Exception:  # the shutdown's containment point: Airflow goes on stopping
        COUNTERS.incr("anchor_failures")
        logger.exception("workflow-audit: could not stop anchoring")


def running() -> Background | None:
    """This process's ingestion thread, if it runs."""
    current = _RUNNING
    if current is None or current[0] != os.getpid() or not current[1].alive:
        return None
    return current[1]


def _open_source(settings: AirflowAuditSettings) -> AirflowLogSource:
    url, schema = _compat.metadata_db()
    return AirflowLogSource(
        url, chain=settings.events_chain, schema=schema, record_conf=settings.record_conf
    )


def _open_trail(settings: AirflowAuditSettings) -> AuditTrail:
    # Airflow's maskers first (in the API server they know the connections' secrets), then
    # the core's key patterns: the processors the task chain's records get.
    processors = (*_compat.airflow_maskers(), redact(settings.audit.redact_keys))
    return AuditTrail(settings.audit, processors=processors)


class _Lifecycle:
    """Lifecycle listener: the scheduler's ingestion and anchoring follow its job."""

    # Listeners are usually modules; tools that list them (and pluggy's canonical name) read
    # ``__name__``.
    __name__ = "airflow_audit.service.lifecycle"

    @hookimpl
    def on_starting(self, component: Any) -> None:
        if _compat.is_scheduler_job(component):
            start("scheduler")

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        if _compat.is_scheduler_job(component):
            stop()


lifecycle = _Lifecycle()


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    start("api-server")
    try:
        yield
    finally:
        stop()


class _Apps:
    """``fastapi_apps`` of the plugin, built when first read: only the API server reads it,
    so a task process never imports FastAPI for it. ``lifespan``: the app's lifespan starts
    and stops this worker's ingestion and anchoring; ``ui``: the app serves the audit trail
    (:func:`airflow_audit.ui.plugin_app`)."""

    def __init__(self, *, lifespan: bool = True, ui: bool = False) -> None:
        self.lifespan = lifespan
        self.ui = ui
        self._apps: list[dict[str, Any]] | None = None

    def __get__(self, obj: object, owner: type | None = None) -> list[dict[str, Any]]:
        if self._apps is None:
            from airflow_audit.ui import URL_PREFIX, plugin_app

            app = plugin_app(lifespan=_lifespan if self.lifespan else None, ui=self.ui)
            self._apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "workflow-audit"}]
        return self._apps


def plugin_apps(*, lifespan: bool, ui: bool) -> _Apps:
    """The plugin's ``fastapi_apps`` descriptor (see :class:`_Apps`)."""
    return _Apps(lifespan=lifespan, ui=ui)


#: The plugin's ``fastapi_apps`` without the audit trail (a class attribute descriptor).
FASTAPI_APPS = _Apps()
