"""workflow-audit for Prefect 3: an audited ``@flow``, state hooks, and a task-side API.

Swap ``@flow`` for ``@audited_flow`` (same arguments), or add ``**flow_hooks()`` to your
``@flow``: every flow run and every task run inside it lands on the audit chain. Inside a
task or flow, ``prefect_audit.record("model.retrained", data={...})`` adds what only your code
knows. Settings: ``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_*`` (see :mod:`prefect_audit.settings`).
"""

from prefect_audit.adapter import flush_runs
from prefect_audit.api import Audit, audit, record
from prefect_audit.flows import audited_flow, flow_hooks, task_hooks
from prefect_audit.settings import WorkflowAuditSettings

__all__ = [
    "Audit",
    "WorkflowAuditSettings",
    "audit",
    "audited_flow",
    "flow_hooks",
    "flush_runs",
    "record",
    "task_hooks",
]
