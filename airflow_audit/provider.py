"""Provider metadata: ``airflow providers list`` shows workflow-audit and ``airflow config list``
documents the ``[workflow_audit]`` options.

The listener plugin is registered through the ``airflow.plugins`` entry point only. Listing it
under the provider's ``plugins`` as well would load it twice: Airflow keeps the first copy and
reports the second as a plugin import error.
"""

from __future__ import annotations

from typing import Any

from airflow_audit.settings import provider_config

__all__ = ["get_provider_info"]


def get_provider_info() -> dict[str, Any]:
    """The dictionary Airflow validates against ``provider_info.schema.json``."""
    from audit_core import __version__

    return {
        "package-name": "workflow-audit",
        "name": "workflow-audit",
        "description": "Tamper-evident, compliance-grade audit trails for Airflow: every task "
        "run, retry, failure, asset event and DAG run on a verifiable hash chain.",
        "versions": [__version__],
        "config": provider_config(),
    }
