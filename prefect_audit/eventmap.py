"""Prefect events as audit events: pure functions, no I/O.

Prefect's server (and, for task runs, the client) emits an event for every state change of a
flow or task run and for every change to its configuration objects (deployments, work pools
and queues, variables, block documents, automations, concurrency limits, ...); Prefect Cloud
adds ``prefect-cloud.*`` audit events (logins, memberships, roles). :func:`to_events` turns one
such event, the JSON object of the events API and websocket, into the records of the taxonomy:

>>> events = to_events({
...     "id": "0b1c5f9e-6d0e-4a55-9b8f-1f0e2a3b4c5d", "occurred": "2026-12-05T02:00:00Z",
...     "event": "prefect.flow-run.Running",
...     "resource": {"prefect.resource.id": "prefect.flow-run.5b650ff4-8c77-4505-8f49-74a64958c2f4",
...                  "prefect.resource.name": "calm-otter", "prefect.run-count": "1",
...                  "prefect.state-name": "Running", "prefect.state-type": "RUNNING"},
...     "related": [{"prefect.resource.id": "prefect.flow.9f0e", "prefect.resource.role": "flow",
...                  "prefect.resource.name": "etl"}]})
>>> [(e.type, e.subject["flow_name"], e.subject["run_count"]) for e in events]
[('flowrun.started', 'etl', 1)]

**Keys.** A run's lifecycle record (``flowrun.*`` / ``task.*``) gets the key the flow process's
hooks give the same state of the same attempt (:func:`prefect_audit.ids.lifecycle_key`), so
whichever of the two writers lands first is the record; every other record is keyed by
Prefect's event id (:func:`prefect_audit.ids.event_key`). ``Retrying`` (a new attempt that
began with no retry delay) is two records, ``retry_scheduled`` of the previous attempt and
``started`` of this one, as the hooks write them. A run that ended before any attempt began
(run count 0: cancelled while pending, its infrastructure failed) ends attempt 0.

**Secrets.** A variable's value and every value of a block document's data become
:data:`~audit_core.REDACTED` with no digest (an unkeyed hash of a short secret is a
brute-force oracle); so do job variables, pull steps, a work pool's base job template and
storage steps, and parameters become a digest, wherever they sit in a payload (an
automation's run-deployment actions); an event nested in a payload (what an automation
reacted to) follows its own name's rules. The rest of the event passes
:func:`audit_core.redact` (secret-looking keys, credentials inside strings).

**Bounded.** A record keeps at most 64 KiB of any one payload member (larger: its sha256 and
size) and 256 KiB of a payload; labels and names are clipped: a huge event costs bounded
memory per record.

**Never raises.** An event that cannot be read (not an object, no id, no time, a resource
that is not an object) becomes one ``source.unreadable`` record naming its id and why.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from audit_core import REDACTED, Event, parse_timestamp, redact
from audit_core.hooks import digest, failure_data
from prefect_audit.ids import event_key, lifecycle_key, run_trace

__all__ = ["CHANGE_KINDS", "FOLLOW_SKIP", "SOURCE", "to_events"]

#: The ``source`` of ``source.unreadable`` records (and of the follower's other source.*).
SOURCE = "prefect.events"
#: Events that are not state changes nor changes anyone made: never recorded.
FOLLOW_SKIP = frozenset({"prefect.flow-run.heartbeat", "prefect.task-run.heartbeat"})
#: Prefect resource kinds whose events are configuration changes -> record type prefix.
CHANGE_KINDS: Mapping[str, str] = {
    "deployment": "deployment",
    "work-pool": "work_pool",
    "work-queue": "work_queue",
    "variable": "variable",
    "block-document": "block_document",
    "automation": "automation",
    "concurrency-limit": "concurrency_limit",
    "artifact": "artifact",
    "asset": "asset",
    "flow": "flow",
}
#: Prefect Cloud resource kinds whose changes change who may do what.
_PERMISSION_KINDS = frozenset(
    {
        "account-membership",
        "account-role",
        "team",
        "team-membership",
        "workspace-access",
        "workspace-role",
        "workspace-membership",
        "api-key",
        "service-account",
        "support-access",
    }
)
#: Prefect Cloud actions that are accesses (or refused ones), whatever the resource.
_ACCESS_ACTIONS: Mapping[str, str] = {
    "logged-in": "access.login",
    "logged-out": "access.logout",
    "login-failed": "access.login_failed",
    "failed-login": "access.login_failed",
    "access-denied": "access.denied",
}
_PROCESS = ("process", "prefect")
#: Payload members, at any depth of any payload, kept as a digest (as the flow chain keeps a
#: run's parameters: they may be large or personal; a parameter schema holds the parameters'
#: defaults) or with every value redacted, keys kept (no digest: an unkeyed hash of a short
#: secret is a brute-force oracle). ``job_variables`` (``infra_overrides`` in a deployment's
#: update: the database column's name) are environment variables, often credentials; pull
#: steps and a work pool's storage steps take credentials as arguments; a work pool's base
#: job template holds the defaults of its job variables.
_DIGESTED_FIELDS = frozenset({"parameters", "parameter_openapi_schema"})
_SECRET_FIELDS = frozenset(
    {
        "job_variables",
        "infra_overrides",
        "pull_steps",
        "base_job_template",
        "storage_configuration",
        # an automation action's failure: the API's validation error echoes the parameters
        # it refused; a notification's log, the rendered message (templates read variables)
        "validation_error",
        "notification_log",
    }
)
_MAX_LABEL = 1024
#: Bounds on what a record keeps of one event, whatever it holds (a hostile event costs
#: bounded memory per record): a payload member larger than this, serialized, is kept as its
#: digest and size; a payload larger than 4 times this after that, likewise as a whole.
_MAX_MEMBER = 64 * 1024
_MAX_PAYLOAD = 4 * _MAX_MEMBER
#: Payload nesting kept (audit_core cuts records at 64 levels; the payload sits 3 deep).
_MAX_DEPTH = 48
#: Related resources and tags kept (Prefect's server accepts at most 100 related by default).
_MAX_ITEMS = 500
_TYPE_PART = re.compile(r"[a-z][a-z0-9_]*")
_ERROR_IN_MESSAGE = re.compile(
    r"encountered an exception:? (?P<type>[A-Za-z_][\w.]*)(?::|$)", re.MULTILINE
)
_redact_keys = redact()

Data = dict[str, Any]


class _UnreadableError(ValueError):
    """The event lacks what a record needs."""


def to_events(raw: Mapping[str, Any]) -> list[Event]:
    """The records of one Prefect event (0 for heartbeats, 2 for ``Retrying``). Never raises:
    an event that cannot be read is one ``source.unreadable`` record."""
    try:
        return _to_events(raw)
    except Exception as exc:  # noqa: BLE001 - malformed input of any shape; recorded, not raised
        return [_unreadable(raw, exc)]


def _to_events(raw: Mapping[str, Any]) -> list[Event]:
    if not isinstance(raw, Mapping):
        raise _UnreadableError(f"an event is a JSON object, not {type(raw).__name__}")
    name = raw.get("event")
    if not isinstance(name, str) or not name:
        raise _UnreadableError("no event name")
    if name in FOLLOW_SKIP:  # noise, however it is shaped
        return []
    event_id = raw.get("id")
    if not isinstance(event_id, str) or not event_id:
        raise _UnreadableError("no event id")
    occurred = raw.get("occurred")
    if not isinstance(occurred, str):
        raise _UnreadableError("no occurred time")
    try:
        ts = parse_timestamp(occurred)
    except ValueError:
        raise _UnreadableError(f"occurred is not a time: {occurred[:64]!r}") from None
    resource = raw.get("resource")
    if not isinstance(resource, Mapping):
        raise _UnreadableError("resource is not an object")
    related_raw = raw.get("related") or []
    if not isinstance(related_raw, Sequence) or isinstance(related_raw, (str, bytes)):
        raise _UnreadableError("related is not a list")
    related = [r for r in related_raw if isinstance(r, Mapping)]
    payload = raw.get("payload")
    payload = payload if isinstance(payload, Mapping) else {}
    ev = _Prefect(
        event_id, name, ts, occurred, resource, related, payload, _str(raw.get("follows"))
    )
    if name.startswith("prefect.flow-run."):
        return _flow_run(ev)
    if name.startswith("prefect.task-run."):
        return _task_run(ev)
    return [_other(ev)]


class _Prefect:
    """One readable Prefect event and the lookups its mapping needs."""

    def __init__(
        self,
        event_id: str,
        name: str,
        ts: dt.datetime,
        occurred: str,
        resource: Mapping[str, Any],
        related: list[Mapping[str, Any]],
        payload: Mapping[str, Any],
        follows: str | None,
    ) -> None:
        self.id, self.name, self.ts, self.occurred = event_id, name, ts, occurred
        self.resource, self.related, self.payload = resource, related, payload
        self.follows = follows
        self._safe: Data | None = None

    def label(self, key: str) -> str | None:
        value = self.resource.get(key)
        return _clip(value) if isinstance(value, str) and value else None

    def role(self, role: str) -> list[Mapping[str, Any]]:
        return [r for r in self.related if r.get("prefect.resource.role") == role]

    def related_id(self, role: str, kind: str) -> str | None:
        """The id part of the first related ``prefect.<kind>.<id>`` with ``role``."""
        for r in self.role(role):
            found = _id_of(r.get("prefect.resource.id"), kind)
            if found:
                return found
        return None

    def related_name(self, role: str) -> str | None:
        for r in self.role(role):
            value = r.get("prefect.resource.name")
            if isinstance(value, str) and value:
                return _clip(value)
        return None

    def tags(self) -> list[str]:
        found = {_id_of(r.get("prefect.resource.id"), "tag") for r in self.role("tag")}
        return sorted(_clip(t) for t in found if t)[:_MAX_ITEMS]

    def prefect_data(self, *, payload: bool = False) -> Data:
        """What the record keeps of the event itself (values of secrets redacted). The
        payload of a run's state change is left out: its facts are the record's own, and its
        copy of the task run is large."""
        out: Data = {
            "event_id": self.id,
            "event": self.name,
            "occurred": self.occurred,
            "resource": _labels(self.resource),
            "related": [_labels(r) for r in self.related[:_MAX_ITEMS]],
        }
        if len(self.related) > _MAX_ITEMS:
            out["related_count"] = len(self.related)
        if self.follows is not None:  # a work pool's "not-ready" after "paused": resumed
            out["follows"] = self.follows
        if payload and self.payload:
            out["payload"] = self.safe_payload()
        return out

    def safe_payload(self) -> Data:
        """The payload as records keep it: secrets redacted, then oversized members as
        digests (computed once per event, however many records it makes)."""
        if self._safe is None:
            # redacted before the bounds: an oversized member's digest covers no secret
            safe = _redact_keys(_secret_payload(self.name, self.payload, 0))
            self._safe = _bounded_payload(safe if isinstance(safe, dict) else {})
        return self._safe


def _labels(resource: Mapping[str, Any]) -> Data:
    """A resource's labels, each at most ``_MAX_LABEL`` characters: a state message (a
    traceback) is the record's ``message`` already, clipped as failure facts are."""
    out: Data = {}
    for key, value in list(resource.items())[:_MAX_ITEMS]:
        out[_clip(str(key))] = _clip(value) if isinstance(value, str) else _bounded(value)
    return out


def _clip(value: str) -> str:
    if len(value) <= _MAX_LABEL:
        return value
    return f"{value[:_MAX_LABEL]}… [{len(value) - _MAX_LABEL} more characters]"


def _id_of(resource_id: object, kind: str) -> str | None:
    prefix = f"prefect.{kind}."
    if isinstance(resource_id, str) and resource_id.startswith(prefix):
        return resource_id[len(prefix) :] or None
    return None


def _int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


# -- run state changes ---------------------------------------------------------------------

#: Final state types -> (record suffix of a flow run, failure kind; None: not a failure).
_FLOW_FINAL = {
    "COMPLETED": ("succeeded", None),
    "FAILED": ("failed", "exception"),
    "CRASHED": ("crashed", "crashed"),
    "CANCELLED": ("cancelled", "cancelled"),
}


def _flow_run(ev: _Prefect) -> list[Event]:
    run_id = _id_of(ev.label("prefect.resource.id"), "flow-run")
    if run_id is None:
        raise _UnreadableError("a flow-run event without a flow-run resource")
    count = _int(ev.resource.get("prefect.run-count"))
    subject: Data = {
        "flow_name": ev.related_name("flow"),
        "flow_run_id": run_id,
        "flow_run_name": ev.label("prefect.resource.name"),
        "deployment_id": ev.related_id("deployment", "deployment"),
        "run_count": count,
        "tags": ev.tags(),
    }
    return _lifecycle(ev, "flowrun", run_id, subject, run_trace(run_id), count)


def _task_run(ev: _Prefect) -> list[Event]:
    run_id = _id_of(ev.label("prefect.resource.id"), "task-run")
    if run_id is None:
        raise _UnreadableError("a task-run event without a task-run resource")
    task = ev.payload.get("task_run")
    task = task if isinstance(task, Mapping) else {}
    count = _int(task.get("run_count"))
    if count is None:
        count = _int(ev.resource.get("prefect.run-count"))
    flow_run_id = ev.related_id("flow-run", "flow-run") or _clip_opt(_str(task.get("flow_run_id")))
    name = _clip(_str(task.get("name")) or ev.label("prefect.resource.name") or "")
    tags = task.get("tags")
    subject: Data = {
        "flow_name": ev.related_name("flow"),
        "flow_run_id": flow_run_id,
        "deployment_id": ev.related_id("deployment", "deployment"),
        # a task run's name is "<task name>-<3 hex>" (as adapter.task_subject reads it)
        "task_name": name.rsplit("-", 1)[0] if "-" in name else name,
        "task_run_id": run_id,
        "task_key": _clip_opt(_str(task.get("task_key"))),
        "run_count": count,
        "tags": (
            sorted(_clip(str(t)) for t in tags[:_MAX_ITEMS])
            if isinstance(tags, list)
            else ev.tags()
        ),
    }
    return _lifecycle(ev, "task", run_id, subject, run_trace(flow_run_id, run_id), count)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _clip_opt(value: str | None) -> str | None:
    return None if value is None else _clip(value)


def _lifecycle(
    ev: _Prefect,
    kind: str,
    run_id: str,
    subject: Data,
    trace: Mapping[str, str] | None,
    count: int | None,
) -> list[Event]:
    """The records of a run's state change (``kind``: ``flowrun`` or ``task``)."""
    state_type = (ev.label("prefect.state-type") or "").upper()
    state_name = ev.label("prefect.state-name") or ev.name.rsplit(".", 1)[-1]
    message = _str(ev.resource.get("prefect.state-message"))  # failure_data clips it
    base: Data = {"state": state_name, "state_type": state_type or None}
    attempt = count or 0

    def make(event: str, attempt: int | None, data: Data) -> Event:
        full = {**base, **data, "prefect": ev.prefect_data()}
        key = event_key(ev.id) if attempt is None else lifecycle_key(event, run_id, attempt)
        run_subject = subject if attempt is None else {**subject, "run_count": attempt}
        return _event(
            type=event,
            subject=run_subject,
            data=_redact_keys(full),
            actor=_actor(ev),
            trace=trace,
            ts=ev.ts,
            key=key,
        )

    if state_type == "RUNNING":
        started = make(f"{kind}.started", max(attempt, 1), {})
        if state_name == "Retrying":  # the previous attempt failed; its retry starts now
            return [make(f"{kind}.retry_scheduled", max(attempt - 1, 1), {}), started]
        return [started]
    if state_type == "SCHEDULED" and state_name == "AwaitingRetry":
        return [make(f"{kind}.retry_scheduled", max(attempt, 1), _failure(message, None))]
    final = _FLOW_FINAL.get(state_type)
    if final is not None:
        suffix, failure_kind = final
        if kind == "task" and failure_kind is not None:
            suffix = "failed"  # a task has no crashed/cancelled record: failure_kind says
        data: Data = {"cached": True} if state_name == "Cached" else {}
        if failure_kind is not None:
            data.update(_failure(message, failure_kind))
        # A run that ended before any attempt began (run count 0: cancelled while pending, its
        # infrastructure failed) is attempt 0: with attempt 1's key, the end of a later first
        # attempt would be dropped as its duplicate.
        ended = 1 if count is None else max(count, 0)
        return [make(f"{kind}.{suffix}", ended, data)]
    return [make(f"{kind}.state", None, {"message": _clip(message)} if message else {})]


def _failure(message: str | None, kind: str | None) -> Data:
    """Failure facts as :func:`audit_core.hooks.failure_data` gives them, from Prefect's
    state message ("Flow run encountered an exception: ValueError: boom"). ``kind`` None (a
    retry's reason): ``exception`` when the message names one."""
    match = _ERROR_IN_MESSAGE.search(message[:4096]) if message else None
    if kind is None and match is not None:
        kind = "exception"
    out: Data = dict(failure_data(message or None, kind=kind))
    if match is not None:
        out["error_type"] = match["type"]
    return out


# -- everything else -----------------------------------------------------------------------


def _other(ev: _Prefect) -> Event:
    """A configuration change, a Prefect Cloud audit event, or any other event."""
    parts = ev.name.split(".")
    kind, action = (parts[1], ".".join(parts[2:])) if len(parts) >= 3 else ("", "")
    subject: Data = {}
    data: Data = {}
    if parts[0] == "prefect" and kind in CHANGE_KINDS and action:
        event = _type(CHANGE_KINDS[kind], action)
        subject[f"{CHANGE_KINDS[kind]}_id"] = _id_of(ev.label("prefect.resource.id"), kind)
        # "name": what the report lists a configuration change by (never a value)
        data["name"] = ev.label("prefect.resource.name") or _clip_opt(_str(ev.payload.get("name")))
    elif parts[0] == "prefect" and kind == "block" and parts[-1] == "loaded":
        # "prefect.block.<type slug>.loaded": a block document (a secret, credentials) read
        event = "block.loaded"
        subject["block_document_id"] = _id_of(ev.label("prefect.resource.id"), "block-document")
        data["name"] = ev.label("prefect.resource.name")
        data["block_type"] = ".".join(parts[2:-1]) or None
    elif parts[0] == "prefect-cloud" and action:
        event = _cloud_type(kind, action)
        data.update(_cloud_data(ev, event, kind, action))
    else:
        event = "prefect.event"
    subject = {k: v for k, v in subject.items() if v is not None}
    data = {k: v for k, v in data.items() if v is not None}
    data["prefect"] = ev.prefect_data(payload=True)
    return _event(
        type=event,
        subject=subject or None,
        data=_redact_keys(data),
        actor=_actor(ev),
        trace=_related_trace(ev),
        ts=ev.ts,
        key=event_key(ev.id),
    )


def _cloud_data(ev: _Prefect, event: str, kind: str, action: str) -> Data:
    """What the report's "Access and changes" reads of a Prefect Cloud audit event."""
    user = _user_name(ev)
    target = ev.label("prefect.resource.name") or ev.label("prefect.resource.id")
    if event == "access.login_failed":
        return {"username": user or target, "client": _client(ev.payload)}
    if event.startswith("access."):
        return {"user": user, "client": _client(ev.payload), "reason": action}
    if event == "permission.changed":
        payload = ev.safe_payload()  # before/after: the payload's rules and bounds
        return {
            "change": f"{kind}.{action}",
            "target": target,
            "before": payload.get("before"),
            "after": payload.get("after"),
        }
    return {"name": target}


def _client(payload: Mapping[str, Any]) -> str | None:
    for key in ("ip", "ip_address", "client_ip", "source_ip"):
        value = _str(payload.get(key))
        if value:
            return _clip(value)
    return None


def _type(prefix: str, action: str) -> str:
    """``prefix.<action>`` with Prefect's kebab-case action in snake case; ``prefect.event``
    if the action cannot be part of a record type."""
    parts = [p.replace("-", "_").lower() for p in action.split(".")]
    if all(_TYPE_PART.fullmatch(p) for p in parts):
        return ".".join((prefix, *parts))
    return "prefect.event"


def _cloud_type(kind: str, action: str) -> str:
    last = action.split(".")[0]
    for word, event in _ACCESS_ACTIONS.items():
        if last == word or action.startswith(word):
            return event
    if kind in _PERMISSION_KINDS:
        return "permission.changed"
    return _type(f"prefect_cloud.{kind.replace('-', '_')}", action)


def _related_trace(ev: _Prefect) -> Mapping[str, str] | None:
    """A change made by or about a run (an artifact, an asset) shares the run's trace."""
    flow_run = _id_of(ev.label("prefect.resource.id"), "flow-run") or ev.related_id(
        "flow-run", "flow-run"
    )
    if flow_run is None:
        return None
    return run_trace(flow_run, ev.related_id("task-run", "task-run"))


def _person(r: Mapping[str, Any]) -> tuple[str, str] | None:
    rid = r.get("prefect.resource.id")
    if not isinstance(rid, str):
        return None
    name = r.get("prefect.resource.name")
    for prefix, kind in (
        ("prefect-cloud.user.", "user"),
        ("prefect-cloud.service-account.", "service_account"),
        ("prefect-cloud.bot.", "service_account"),
    ):
        if rid.startswith(prefix):
            who = name if isinstance(name, str) and name else rid[len(prefix) :]
            return (kind, who) if who else None
    return None


def _actor(ev: _Prefect) -> tuple[str, str]:
    """The person the event names (Prefect Cloud's actor, a run's creator), else Prefect."""
    for role in ("actor", "creator"):
        for r in ev.role(role):
            who = _person(r)
            if who is not None:
                return who
    if ev.name.startswith("prefect-cloud."):
        who = _person(ev.resource)  # prefect-cloud.user.logged-in: the user is the resource
        if who is not None:
            return who
    return _PROCESS


def _user_name(ev: _Prefect) -> str | None:
    who = _actor(ev)
    return who[1] if who != _PROCESS else None


def _secret_payload(name: str, payload: Mapping[str, Any], depth: int) -> Data:
    """The payload with every value that may be a secret redacted. By the event's name: a
    variable's value, each value of a block document's data (whatever its key). At any depth:
    the fields of :data:`_SECRET_FIELDS` and :data:`_DIGESTED_FIELDS` (a deployment's, an
    automation's run-deployment action's, before and after a change too), and every event
    nested in the payload (an automation's ``triggering_event``) by that event's own name."""
    out = _scrub_object(payload, depth)
    if name.startswith("prefect.variable.") and "value" in out:
        out["value"] = REDACTED
    if name.startswith("prefect.block-document."):
        for key in ("data", "block_document_data"):
            if key in out:
                out[key] = _redact_all(payload[key], depth + 1)
    if name.startswith("prefect.artifact.") and out.get("data") is not None:
        out["data"] = digest(payload["data"])  # a run's results: large, maybe personal
    return out


def _scrub(value: object, depth: int) -> object:
    if depth > _MAX_DEPTH:  # a payload nested past any use: not kept (nor walked further)
        return {"truncated": True, "depth": depth}
    if isinstance(value, Mapping):
        name = value.get("event")
        if isinstance(name, str) and ("payload" in value or "resource" in value):
            return _nested_event(name, value, depth)
        return _scrub_object(value, depth)
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value]
    return value


def _nested_event(name: str, event: Mapping[str, Any], depth: int) -> Data:
    """An event inside a payload (what an automation reacted to): its own rules apply."""
    out = _scrub_object({k: v for k, v in event.items() if k != "payload"}, depth)
    payload = event.get("payload")
    if isinstance(payload, Mapping):
        out["payload"] = _secret_payload(name, payload, depth + 1)
    elif "payload" in event:
        out["payload"] = _scrub(payload, depth + 1)
    return out


def _scrub_object(value: Mapping[str, Any], depth: int) -> Data:
    out: Data = {}
    for key, member in value.items():
        field = str(key)
        if field == "updates" and isinstance(member, Mapping):  # {field: {"from", "to"}}
            out[field] = {
                str(name): (
                    {str(side): _hidden(str(name), v, depth + 2) for side, v in change.items()}
                    if isinstance(change, Mapping)
                    else _hidden(str(name), change, depth + 1)
                )
                for name, change in member.items()
            }
        else:
            out[field] = _hidden(field, member, depth + 1)
    return out


def _hidden(field: str, value: object, depth: int) -> object:
    if field in _SECRET_FIELDS:
        return _redact_all(value, depth)
    if field in _DIGESTED_FIELDS:
        return None if value is None else digest(value)
    return _scrub(value, depth)


def _redact_all(value: object, depth: int = 0) -> object:
    """``value`` with its keys kept and every other value redacted (``None``: nothing set)."""
    if value is None:
        return None
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {str(k): _redact_all(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_all(v, depth + 1) for v in value]
    return REDACTED


def _bounded_payload(payload: Data) -> Data:
    """``payload`` with each member larger than :data:`_MAX_MEMBER` (serialized) as its
    digest and size; the whole payload so if still larger than :data:`_MAX_PAYLOAD`."""
    try:
        size = len(json.dumps(payload, default=str))
    except (TypeError, ValueError, RecursionError):
        size = _MAX_PAYLOAD + 1
    if size <= _MAX_MEMBER:  # the usual case: one serialization, nothing to cut
        return payload
    out: Data = {key: _bounded(value) for key, value in payload.items()}
    whole = _bounded(out, _MAX_PAYLOAD)  # out itself, or its digest and size
    return whole if isinstance(whole, dict) else out


def _bounded(value: object, limit: int = _MAX_MEMBER) -> object:
    """``value``, or ``{"sha256", "bytes", "truncated": true}`` if its JSON is larger than
    ``limit`` bytes (applied after the secret rules and :func:`audit_core.redact`: the digest
    is of no secret)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str) and len(value) * 6 + 2 <= limit:  # fits even fully escaped
        return value
    try:
        text = json.dumps(value, default=str)
    except (TypeError, ValueError, RecursionError):
        return {"truncated": True, "error": "not serializable"}
    if len(text) <= limit:
        return value
    sha = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    return {"sha256": sha, "bytes": len(text), "truncated": True}


def _unreadable(raw: object, exc: Exception) -> Event:
    event_id = raw.get("id") if isinstance(raw, Mapping) else None
    event_id = event_id if isinstance(event_id, str) and event_id else None
    error = str(exc) if isinstance(exc, _UnreadableError) else f"{type(exc).__name__}: {exc}"
    return _event(
        type="source.unreadable",
        data={"source": SOURCE, "id": event_id[:200] if event_id else None, "error": error[:500]},
        actor=_PROCESS,
        key=event_key(event_id) if event_id else _content_key(raw),
    )


def _content_key(raw: object) -> str | None:
    """An event with no id: keyed by its content, so a redelivery is not recorded twice."""
    try:
        text = json.dumps(raw, sort_keys=True, default=repr)
    except (TypeError, ValueError, RecursionError):
        return None
    return event_key("sha256-" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest())


_RECORD_TYPE = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+")  # audit_core's EVENT_TYPE
_KEY = re.compile(r"[ -~]{1,256}")  # an idempotency key (audit_core.Event.key)


def _event(*, type: str, key: str | None, **fields: Any) -> Event:
    """The Event, with a type and a key the trail accepts whatever the input held: the
    follower writes a batch at once, and one record the trail refused would hold it up."""
    if _RECORD_TYPE.fullmatch(type) is None:
        type = "prefect.event"
    if key is not None and _KEY.fullmatch(key) is None:  # an id no Prefect server makes
        key = event_key("sha256-" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest())
    return Event(type=type, key=key, **fields)
