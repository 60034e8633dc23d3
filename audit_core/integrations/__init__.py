"""Integrations with the logging stacks teams already run.

- :mod:`audit_core.integrations.structlog`: audit records as structlog JSON log lines with
  trace context (``StructlogSink``), and selected structlog events as audit records
  (``to_audit_record``). Needs ``structlog``; nothing here imports it until used.
"""

__all__: list[str] = []
