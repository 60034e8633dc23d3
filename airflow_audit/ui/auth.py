"""Who may read the audit trail inside Airflow, decided by Airflow's own auth manager.

:func:`viewer` is the FastAPI dependency :func:`audit_core.web.create_app` puts on every
route. The rules are those of Airflow's own Audit Log page (``/api/v2/eventLogs``):

- no valid token (``Authorization`` header or the ``_token`` cookie): 401, from
  Airflow's ``GetUserDep``;
- the page at all: ``is_authorized_dag(GET, access_entity=AUDIT_LOG)``, else 403. These
  users see the records about no DAG, as Airflow's event log shows its rows without one;
- records about a DAG: only DAGs the user may read. ``dags=None`` (every DAG) when the auth
  manager grants reading a DAG id no DAG has, which only a grant on every DAG does (FAB's
  global "can read on DAGs"; SimpleAuthManager's roles); else the auth manager's
  ``get_authorized_dag_ids`` (FAB answers it from its tables: the DAGs Airflow knows).

The auth manager's checks may read its database (FAB): they run in a worker thread, never
on the event loop.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import (
    DagAccessEntity,
    DagDetails,
)
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import HTTPException, status

from audit_core.web import Viewer

__all__ = ["NO_SUCH_DAG", "decide", "viewer"]

#: A DAG id no DAG can have (DAG ids are letters, digits, ``-``, ``.`` and ``_``): reading
#: it is granted only by a grant on every DAG.
NO_SUCH_DAG = "~workflow-audit: no such DAG~"


def decide(manager: Any, user: Any) -> Viewer | None:
    """The viewer ``user`` is to ``manager``, None when they may not read the audit log."""
    if not manager.is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.AUDIT_LOG, user=user
    ):
        return None
    name = str(user.get_name())
    if manager.is_authorized_dag(method="GET", details=DagDetails(id=NO_SUCH_DAG), user=user):
        return Viewer(name=name, dags=None)
    dags = manager.get_authorized_dag_ids(user=user, method="GET")
    return Viewer(name=name, dags=frozenset(str(d) for d in dags))


async def viewer(user: GetUserDep) -> Viewer:
    """The FastAPI dependency: the authenticated user as a :class:`Viewer`, or 403."""
    manager = get_auth_manager()
    decided = await anyio.to_thread.run_sync(decide, manager, user)
    if decided is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "Reading the audit trail needs Airflow's permission to read the audit log.",
        )
    return decided
