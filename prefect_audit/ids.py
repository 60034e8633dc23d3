"""Ids every Prefect record shares, whoever writes it: the idempotency key of a run's lifecycle
record and the trace context derived from Prefect's run ids.

>>> lifecycle_key("task.started", "0b1c5f9e-6d0e-4a55-9b8f-1f0e2a3b4c5d", 1)
'prefect:task.started:0b1c5f9e-6d0e-4a55-9b8f-1f0e2a3b4c5d:1'
>>> run_trace("5b650ff4-8c77-4505-8f49-74a64958c2f4")
{'trace_id': '5b650ff48c7745058f4974a64958c2f4', 'span_id': '8f4974a64958c2f4'}
>>> run_trace("5b650ff4-8c77-4505-8f49-74a64958c2f4", "01a24413-9e22-7b2e-9b07-406f501ac12f")
{'trace_id': '5b650ff48c7745058f4974a64958c2f4', 'span_id': '9b07406f501ac12f'}

**One record per run, state and attempt.** The flow process (``@audited_flow``'s hooks, its
end-of-run pass) and the event follower (``workflow-audit follow prefect``) may both see the
same state change of a run. Each gives its record the key :func:`lifecycle_key` ``(event,
run id, attempt)``; the ledger stores at most one record per key and chain
(:attr:`audit_core.Event.key`), so whichever lands first is the record and the other is
dropped. The attempt is Prefect's ``run_count`` once the attempt has begun (1 for the first).
Records of other Prefect events are keyed by Prefect's event id (:func:`event_key`).

**Trace context without OpenTelemetry.** With no OpenTelemetry SDK (Prefect's default), the
records of a run still share a W3C trace context, derived from Prefect's ids: the trace id is
the flow run id's 128 bits, the span id the last 64 bits of the task run id (a task's
records) or of the flow run id (the flow's own records). UUIDv4 and UUIDv7 both keep their
random bits at the end, so the span ids of a run's task runs do not collide in practice. When
OpenTelemetry is on, the flow process uses Prefect's own ``traceparent`` instead; a record's
``flow_run_id`` still links both kinds.
"""

from __future__ import annotations

import uuid

__all__ = ["KEY_PREFIX", "event_key", "final_attempt", "lifecycle_key", "run_trace"]

#: Every key of a Prefect record starts so (keys are per chain; other writers use others).
KEY_PREFIX = "prefect:"


def lifecycle_key(event: str, run_id: object, attempt: int) -> str:
    """The key of a run's lifecycle record (``flowrun.*`` / ``task.*``) for one attempt."""
    return f"{KEY_PREFIX}{event}:{run_id}:{int(attempt)}"


def final_attempt(run: object) -> int:
    """The attempt a run's terminal record belongs to: its ``run_count``, which is 0 for a
    run that ended before any attempt began (Pending -> Crashed when its infrastructure
    failed; cancelled while scheduled), so that end and a later real attempt's never share a
    key; 1 when the count is unknown.

    >>> class Run: run_count = 0
    >>> final_attempt(Run()), final_attempt(object())
    (0, 1)
    """
    count = getattr(run, "run_count", None)
    return 1 if count is None else int(count)


def event_key(event_id: object) -> str:
    """The key of the record of any other Prefect event: its event id.

    >>> event_key("01a24413-9e36-7e9d-bbcb-b51f7c95bfd4")
    'prefect:event:01a24413-9e36-7e9d-bbcb-b51f7c95bfd4'
    """
    return f"{KEY_PREFIX}event:{event_id}"


def _uuid(value: object) -> uuid.UUID | None:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def run_trace(flow_run_id: object, task_run_id: object = None) -> dict[str, str] | None:
    """The W3C trace context derived from a run's ids, or None without a valid flow run id.

    >>> run_trace("not-a-uuid") is None
    True
    """
    flow = _uuid(flow_run_id)
    if flow is None or flow.int == 0:
        return None
    task = _uuid(task_run_id) if task_run_id is not None else None
    span_source = task if task is not None and task.int & (2**64 - 1) else flow
    span = span_source.int & (2**64 - 1)
    if span == 0:  # W3C: an all-zero span id is invalid
        return None
    return {"trace_id": f"{flow.int:032x}", "span_id": f"{span:016x}"}
