"""The browser view of the audit trail: a FastAPI app that Airflow mounts (``airflow_audit.ui``)
and ``workflow-audit serve`` runs. Who may see what is the host's business: it hands
:func:`create_app` a ``viewer`` dependency returning a :class:`Viewer`.

>>> Viewer("ann", frozenset({"etl"}))
Viewer(name='ann', dags=frozenset({'etl'}))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Viewer", "create_app"]


@dataclass(frozen=True, slots=True)
class Viewer:
    """The authenticated person a page is built for.

    ``dags``: the DAGs (or flows) whose records they may read, plus records about none;
    None means every DAG. It becomes the ``dags`` permission of every query the app runs.
    """

    name: str
    dags: frozenset[str] | None = None


from audit_core.web.app import create_app  # noqa: E402  (app.py imports Viewer from here)
