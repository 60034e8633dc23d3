"""Turns Airflow listener calls into audit records, fail-open and time-bounded.

>>> from airflow_audit.adapter import AirflowAdapter
>>> adapter = AirflowAdapter()   # loads nothing until the first hook fires

One adapter per process (:func:`get_adapter`). Each public method is one listener hook: it
reads the hook's arguments *in the calling thread* (they change once the hook returns), and
hands the events to a :class:`~audit_core.hooks.HookRunner`, which writes them on its thread
and waits at most ``[workflow_audit] hook_timeout`` seconds. Nothing here raises into Airflow.

Records (``docs/AIRFLOW.md`` lists every field):

==========================  ====================================  =========================
event                        fired by                              process
==========================  ====================================  =========================
``task.started``             ``on_task_instance_running``          task runner
``task.succeeded``           ``on_task_instance_success``          task runner / API server
``task.retry_scheduled``     ``on_task_instance_failed``, state    task runner / scheduler
                             ``up_for_retry``
``task.failed``              ``on_task_instance_failed``           task runner / scheduler
``task.skipped``             ``on_task_instance_skipped``; and at  task runner / scheduler
                             DAG-run end for skipped-by-scheduler
``task.upstream_failed``     DAG-run end, tasks that never ran     scheduler
``dagrun.started``/          ``on_dag_run_running/success/failed`` scheduler
``succeeded``/``failed``
``asset.updated``            ``on_asset_event_emitted``            API server / scheduler
``dag.import_error``         ``on_new/existing_dag_import_error``  DAG processor
==========================  ====================================  =========================
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import socket
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from airflow_audit import _compat
from airflow_audit.settings import AirflowAuditSettings, load_settings
from audit_core import AuditTrail, Event, trace_context
from audit_core.hooks import AdapterBase, AdapterOptions, digest, failure_data
from audit_core.ship import deliver_to_sinks

__all__ = ["AirflowAdapter", "dagrun_subject", "get_adapter", "task_subject"]

#: Record payloads before normalization (datetimes, UUIDs and enums are converted by the core).
Data = dict[str, Any]

logger = logging.getLogger("workflow_audit.airflow")

#: Task states that end a try (a record must exist for each; ``reconcile`` checks).
TERMINAL_EVENTS = (
    "task.succeeded",
    "task.failed",
    "task.retry_scheduled",
    "task.skipped",
    "task.upstream_failed",
    "task.unrecorded",
)
#: Events after which the hooks ask for a background flush (WORKFLOW_AUDIT_FLUSH_SINKS).
_FLUSH_AFTER = frozenset((*TERMINAL_EVENTS, "dagrun.succeeded", "dagrun.failed"))
# Airflow imports DAG files under a mangled module name (``unusual_prefix_<sha1>_<file>``).
_DAG_MODULE = re.compile(r"^unusual_prefix_[0-9a-f]+_")
# Failure kinds Airflow tells us through the exception's class.
_KINDS = {
    "AirflowTaskTimeout": "timeout",
    "AirflowSensorTimeout": "sensor_timeout",
    "AirflowFailException": "failed_without_retry",
    "AirflowTaskTerminated": "terminated",
    "AirflowException": "airflow",
}


class AirflowAdapter(AdapterBase):
    """Builds and writes the records of one process's listener calls."""

    flush_after = _FLUSH_AFTER

    def __init__(
        self,
        settings: AirflowAuditSettings | None = None,
        *,
        trail: AuditTrail | None = None,
    ) -> None:
        super().__init__(
            trail=trail,
            budget_s=settings.hook_timeout_s if settings else 5.0,
            delivery=deliver_to_sinks,
        )
        self._settings = settings

    @property
    def settings(self) -> AirflowAuditSettings:
        if self._settings is None:
            self._settings = load_settings()
        return self._settings

    def _load_options(self) -> AdapterOptions:
        settings = self.settings
        config = settings.audit
        return AdapterOptions(
            enabled=settings.enabled,
            events=settings.events,
            hook_timeout_s=settings.hook_timeout_s,
            audit=config,
            processors=(_airflow_masker(), *_core_processors(config.redact_keys)),
        )

    # -- task instance hooks -------------------------------------------------------------

    def task_running(self, ti: Any, previous_state: object = None) -> bool:
        return self._run("task.started", lambda: [self._task_event("task.started", ti, {})])

    # Everything that reads the hook's arguments runs inside ``build``, within the runner's
    # containment: an odd attribute must cost at most this record, never the task.

    def task_success(self, ti: Any, previous_state: object = None) -> bool:
        def build() -> list[Event]:
            data = _timing(ti)
            if previous_state is None:
                data["set_by"] = "api"  # marked success by hand (UI / REST API)
            return [self._task_event("task.succeeded", ti, data)]

        return self._run("task.succeeded", build)

    def task_skipped(self, ti: Any, previous_state: object = None) -> bool:
        def build() -> list[Event]:
            data: Data = {"ran": previous_state is not None, **_timing(ti)}
            return [self._task_event("task.skipped", ti, data)]

        return self._run("task.skipped", build)

    def task_failed(self, ti: Any, error: object, previous_state: object = None) -> bool:
        def build() -> list[Event]:
            state = _compat.enum_value(_compat.optional(ti, "state"))
            kind = _failure_kind(error, previous_state)
            data = {**failure_data(_as_error(error), kind=kind), **_timing(ti)}
            error_type = data.get("error_type")
            if isinstance(error_type, str):  # DAG files load as unusual_prefix_<sha1>_<file>
                data["error_type"] = _DAG_MODULE.sub("", error_type)
            if state == "up_for_retry":
                try_number = _compat.optional(ti, "try_number")
                data["next_try"] = try_number + 1 if isinstance(try_number, int) else None
                data["max_tries"] = _compat.optional(ti, "max_tries")
                return [self._task_event("task.retry_scheduled", ti, data)]
            return [self._task_event("task.failed", ti, data)]

        return self._run("task.failed", build)

    def _task_event(self, event: str, ti: Any, data: Data) -> Event:
        return Event(
            type=event,
            subject=task_subject(ti),
            data=data,
            trace=trace_context(_compat.task_carrier(ti)),
        )

    # -- DAG run hooks ---------------------------------------------------------------------

    def dagrun_running(self, dag_run: Any, msg: str | None = None) -> bool:
        def build() -> list[Event]:
            data = _dagrun_data(dag_run, msg)
            conf = _compat.dag_run_conf(dag_run)
            if conf:
                data["conf_sha256"] = digest(conf)
                if self.settings.record_conf:
                    data["conf"] = conf
            return [self._dagrun_event("dagrun.started", dag_run, data)]

        return self._run("dagrun.started", build)

    def dagrun_finished(self, dag_run: Any, msg: str | None, *, success: bool) -> bool:
        event = "dagrun.succeeded" if success else "dagrun.failed"

        def build() -> list[Event]:
            tis = _compat.dagrun_task_instances(dag_run)
            data = _dagrun_data(dag_run, msg)
            states = Counter(str(_compat.enum_value(ti.state)) for ti in tis)
            data["task_states"] = dict(sorted(states.items()))
            if not success:
                data["failed_tasks"] = sorted(
                    ti.task_id for ti in tis if _compat.enum_value(ti.state) == "failed"
                )
            events = self._not_run(tis) if self.settings.record_not_run else []
            events.append(self._dagrun_event(event, dag_run, data))
            return events

        return self._run(event, build)

    def _not_run(self, tis: Sequence[Any]) -> list[Event]:
        # Airflow fires no task hook for a task the scheduler skipped (branching, trigger rules)
        # or marked upstream_failed: record them here so every task instance has its record.
        events = []
        for ti in tis:
            state = _compat.enum_value(ti.state)
            # try_number stays 0 for a task never queued; no hostname: no worker ran this try
            ran = _compat.optional(ti, "try_number") and _compat.optional(ti, "hostname")
            if state in ("skipped", "upstream_failed") and not ran:
                events.append(self._task_event(f"task.{state}", ti, {"ran": False}))
        return events

    def _dagrun_event(self, event: str, dag_run: Any, data: Data) -> Event:
        user = _compat.optional(dag_run, "triggering_user_name")
        return Event(
            type=event,
            subject=dagrun_subject(dag_run),
            data=data,
            actor={"type": "user", "id": user} if user else None,
            trace=trace_context(_compat.optional(dag_run, "context_carrier")),
        )

    # -- assets and DAG files --------------------------------------------------------------

    def asset_event(self, asset_event: Any) -> bool:
        def build() -> list[Event]:
            asset = _compat.optional(asset_event, "asset")
            subject: Data = {
                "asset_uri": _compat.optional(asset, "uri"),
                "asset_name": _compat.optional(asset, "name"),
                "dag_id": _compat.optional(asset_event, "source_dag_id"),
                "task_id": _compat.optional(asset_event, "source_task_id"),
                "run_id": _compat.optional(asset_event, "source_run_id"),
                "map_index": _compat.optional(asset_event, "source_map_index"),
            }
            data: Data = {
                "group": _compat.optional(asset, "group"),
                "extra": _compat.optional(asset_event, "extra") or {},
                "partition_key": _compat.optional(asset_event, "partition_key"),
            }
            return [Event(type="asset.updated", subject=subject, data=data)]

        return self._run("asset.updated", build)

    def import_error(self, filename: str, stacktrace: str, *, new: bool) -> bool:
        def build() -> list[Event]:
            text = str(stacktrace or "")
            lines = [line for line in text.strip().splitlines() if line.strip()]
            data: Data = {
                "new": new,
                "message": lines[-1] if lines else "",
                "stacktrace_sha256": hashlib.sha256(text.encode("utf-8", "replace")).hexdigest(),
            }
            return [Event(type="dag.import_error", subject={"filename": filename}, data=data)]

        return self._run("dag.import_error", build)

    # -- the task-side API -----------------------------------------------------------------

    def _user_event(self, event: str, data: object, subject: Mapping[str, object] | None) -> Event:
        # One user event inside a running task (see :mod:`airflow_audit.api`).
        ti = _compat.current_task_instance()
        full = {**(task_subject(ti) if ti is not None else {}), **(subject or {})}
        carrier = _compat.task_carrier(ti) if ti is not None else None
        return Event(type=event, subject=full, data=data, trace=trace_context(carrier))


def task_subject(ti: Any) -> Data:
    """Who the record is about: the task instance, in either of Airflow's two shapes."""
    hostname = _compat.optional(ti, "hostname")
    dag_version = _compat.optional(ti, "dag_version_id")
    return {
        "dag_id": _compat.optional(ti, "dag_id"),
        "task_id": _compat.optional(ti, "task_id"),
        "run_id": _compat.optional(ti, "run_id"),
        "try_number": _compat.optional(ti, "try_number"),
        "map_index": _compat.optional(ti, "map_index"),
        "logical_date": _compat.logical_date(ti),
        "operator": _compat.operator_name(ti),
        "dag_version": None if dag_version is None else str(dag_version),
        # The Task SDK's instance lives in the worker running the try: this host ran it.
        "hostname": hostname or (socket.gethostname() if _compat.is_runtime(ti) else None),
    }


def dagrun_subject(dag_run: Any) -> Data:
    version = _compat.optional(dag_run, "created_dag_version_id")
    return {
        "dag_id": _compat.optional(dag_run, "dag_id"),
        "run_id": _compat.optional(dag_run, "run_id"),
        "run_type": _compat.enum_value(_compat.optional(dag_run, "run_type")),
        "logical_date": _compat.optional(dag_run, "logical_date"),
        "dag_version": None if version is None else str(version),
        "bundle_version": _compat.optional(dag_run, "bundle_version"),
    }


def _dagrun_data(dag_run: Any, msg: str | None) -> Data:
    return {
        "state": _compat.enum_value(_compat.optional(dag_run, "state")),
        "msg": msg,
        "triggered_by": _compat.enum_value(_compat.optional(dag_run, "triggered_by")),
        "triggering_user": _compat.optional(dag_run, "triggering_user_name"),
        "started_at": _compat.optional(dag_run, "start_date"),
        "ended_at": _compat.optional(dag_run, "end_date"),
    }


def _timing(ti: Any) -> Data:
    start, end = _compat.optional(ti, "start_date"), _compat.optional(ti, "end_date")
    data: Data = {"started_at": start, "ended_at": end, "pid": os.getpid()}
    comparable = (  # never subtract a naive from an aware datetime
        isinstance(start, dt.datetime)
        and isinstance(end, dt.datetime)
        and (start.tzinfo is None) == (end.tzinfo is None)
    )
    if comparable:
        data["duration_s"] = round((end - start).total_seconds(), 6)
    return data


def _as_error(error: object) -> BaseException | str | None:
    if error is None or isinstance(error, BaseException | str):
        return error
    return str(error)


def _failure_kind(error: object, previous_state: object) -> str:
    if isinstance(error, BaseException):
        for cls in type(error).__mro__:
            if cls.__name__ in _KINDS:
                return _KINDS[cls.__name__]
        return "exception"
    if previous_state is None:
        return "set_by_api"  # marked failed by hand (UI / REST API)
    return "reported"  # by the scheduler or executor: the task process died or was killed


def _airflow_masker() -> Callable[[Data], Data]:
    maskers = _compat.airflow_maskers()

    def mask(data: Data) -> Data:
        for redact in maskers:
            data = redact(data)
        return data

    return mask


def _core_processors(redact_keys: Sequence[str]) -> tuple[Callable[[Data], Data]]:
    from audit_core import redact

    return (redact(redact_keys),)


_ADAPTER: AirflowAdapter | None = None
_ADAPTER_LOCK = threading.Lock()


def get_adapter() -> AirflowAdapter:
    """This process's adapter (created on first use, never raises)."""
    global _ADAPTER
    with _ADAPTER_LOCK:
        if _ADAPTER is None:
            _ADAPTER = AirflowAdapter()
        return _ADAPTER
