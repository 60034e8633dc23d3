"""Every difference between Airflow versions and process kinds, in one place (STYLE rule 9).

Airflow 3 hands listeners two shapes of task instance:

- the Task SDK's ``RuntimeTaskInstance`` in the task-runner process (a pydantic model with the
  server's run context in ``_ti_context_from_server``), and
- the ORM ``TaskInstance`` in scheduler / API-server processes (executor-reported failures,
  states set by hand in the UI or the REST API), whose relationships may be detached.

The functions here read what both shapes have, and never raise for a missing attribute: a
listener that fails to read an optional field must still write the record.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "airflow_conf_get",
    "airflow_home",
    "airflow_maskers",
    "current_task_instance",
    "dag_run_conf",
    "dagrun_task_instances",
    "enum_value",
    "is_runtime",
    "is_scheduler_job",
    "logical_date",
    "metadata_db",
    "metadata_db_url",
    "metadata_engine_kwargs",
    "operator_name",
    "optional",
    "task_carrier",
]

logger = logging.getLogger("workflow_audit.airflow")


def optional(obj: object, *names: str) -> Any:
    """``obj.<names[0]>.<names[1]>…`` or None when any step is missing or cannot be loaded.

    A detached ORM object raises SQLAlchemy's ``DetachedInstanceError`` on a lazy relationship;
    a Task SDK model raises ``AttributeError``. Both mean "not available here", not a failure.
    """
    from sqlalchemy.exc import SQLAlchemyError

    value: Any = obj
    for name in names:
        if value is None:
            return None
        try:
            value = getattr(value, name)
        except (AttributeError, SQLAlchemyError):
            return None
    return value


def is_runtime(ti: object) -> bool:
    """True for the Task SDK's ``RuntimeTaskInstance`` (we are in the process running it)."""
    return type(ti).__name__ == "RuntimeTaskInstance"


def enum_value(value: object) -> object:
    """``TaskInstanceState.SUCCESS`` -> ``"success"``; other values unchanged."""
    inner = getattr(value, "value", value)
    return inner if isinstance(inner, str | int | float | bool) or inner is None else str(inner)


def airflow_conf_get(section: str, key: str, fallback: str) -> str:
    """``[section] key`` from Airflow's configuration (``AIRFLOW__SECTION__KEY`` first, then
    ``airflow.cfg``), or ``fallback`` when neither sets it."""
    try:
        from airflow.configuration import conf as parser
    except ImportError:  # a Task-SDK-only worker without airflow-core
        from airflow.sdk.configuration import conf as parser  # type: ignore[no-redef]
    value = parser.get(section, key, fallback=fallback)
    return fallback if value is None else str(value)


def metadata_db_url() -> str:
    """Airflow's metadata DB URL (see :func:`metadata_db`)."""
    return metadata_db()[0]


def metadata_db() -> tuple[str, str | None]:
    """Airflow's metadata DB: ``[database] sql_alchemy_conn`` (Airflow 3; its ``_cmd`` and
    ``_secret`` variants resolved by Airflow's configuration) and ``sql_alchemy_schema``
    (None when blank, as ``airflow.models.base`` reads it)."""
    from airflow.configuration import conf

    schema = conf.get("database", "sql_alchemy_schema", fallback="") or ""
    return str(conf.get("database", "sql_alchemy_conn")), schema.strip() or None


#: Engine arguments that size or choose the pool: each of our engines chooses its own (one
#: connection, or none held on SQLite), not the scheduler's pool of 5 + 10.
_POOL_ARGS = frozenset(
    {
        "poolclass",
        "pool",
        "pool_size",
        "max_overflow",
        "pool_recycle",
        "pool_pre_ping",
        "pool_timeout",
        "pool_use_lifo",
        "pool_reset_on_return",
    }
)


def metadata_engine_kwargs() -> dict[str, Any]:
    """``create_engine`` arguments for Airflow's metadata DB beside the URL, read as Airflow's
    ``settings.configure_orm`` reads them: ``connect_args`` from ``[database]
    sql_alchemy_connect_args`` (an import path to a dict: TLS certificates, a driver's
    options) and ``[database] sql_alchemy_engine_args`` (JSON) without its pool settings.
    A path that does not import raises, as it does for Airflow: connecting without the
    deployment's TLS settings would only fail later, less clearly."""
    from airflow.configuration import conf

    kwargs: dict[str, Any] = {}
    engine_args = conf.getjson("database", "sql_alchemy_engine_args", fallback={})
    if isinstance(engine_args, dict):
        kwargs.update((k, v) for k, v in engine_args.items() if k not in _POOL_ARGS)
    if conf.has_option("database", "sql_alchemy_connect_args"):
        connect_args = conf.getimport("database", "sql_alchemy_connect_args")
        if connect_args:
            kwargs["connect_args"] = dict(connect_args)
    return kwargs


def is_scheduler_job(component: object) -> bool:
    """Is a lifecycle listener's ``component`` the scheduler's ``Job``?

    ``before_stopping`` sees the ``Job`` with its ``job_type`` (``"SchedulerJob"``), but
    Airflow 3.3 calls ``on_starting`` from ``Job.__init__``, before the job runner sets it: a
    ``Job`` whose type is not set yet is the scheduler's when this process is ``airflow
    scheduler`` (the triggerer and the DAG processor run as their own commands).
    """
    if type(component).__name__ != "Job":  # the task runner's TaskRunnerMarker
        return False
    kind = optional(component, "job_type")
    if kind is not None:
        return bool(kind == "SchedulerJob")
    return sys.argv[1:2] == ["scheduler"]


def airflow_home() -> str:
    """``$AIRFLOW_HOME`` as Airflow resolves it (default ``~/airflow``)."""
    try:
        from airflow import configuration
    except ImportError:
        from airflow.sdk import configuration  # type: ignore[no-redef]
    return str(configuration.AIRFLOW_HOME)


def airflow_maskers() -> list[Callable[[Any], Any]]:
    """Airflow's secrets maskers, most specific first.

    Airflow keeps one masker per import path: the Task SDK's (in task processes it knows the
    connections and variables the task read) and the core's (scheduler, API server). Both are
    applied; a masker that is not installed is skipped.
    """
    found: list[Callable[[Any], Any]] = []
    for module in ("airflow.sdk._shared.secrets_masker", "airflow._shared.secrets_masker"):
        try:
            redact = __import__(module, fromlist=["redact"]).redact
        except (ImportError, AttributeError):
            continue
        found.append(redact)
    if not found:
        logger.warning("workflow-audit: Airflow's secrets masker not found; core redaction only")
    return found


def current_task_instance() -> Any:
    """The running task's ``RuntimeTaskInstance``, or None outside a task."""
    try:
        from airflow.sdk import get_current_context
    except ImportError:
        return None
    try:
        context = get_current_context()
    except RuntimeError:  # "no context was found": not inside a task
        return None
    return context.get("ti")


def logical_date(ti: object) -> object:
    """The logical date of the task's DAG run, in either task-instance shape."""
    from_server = optional(ti, "_ti_context_from_server", "dag_run", "logical_date")
    if from_server is not None:
        return from_server
    return optional(ti, "dag_run", "logical_date") or optional(ti, "logical_date")


def operator_name(ti: object) -> object:
    """``@task`` for TaskFlow tasks, else the operator's class name."""
    task = optional(ti, "task")
    if task is not None:
        return optional(task, "custom_operator_name") or optional(task, "task_type")
    return optional(ti, "custom_operator_name") or optional(ti, "operator")


def dag_run_conf(dag_run: object) -> object:
    return optional(dag_run, "conf")


def task_carrier(ti: object) -> Any:
    """The task's trace carrier (W3C ``traceparent``, child of the DAG run's trace).

    The executor path gives the task runner the carrier in its workload. ``airflow dags test``
    without ``--use-executor`` builds the Task SDK instance from ids only; that in-process mode
    (and only it) can reach the metadata DB, so the DAG run's carrier is read from there: the
    same trace id (a retried try moves its own row to the history table, the run's stays).
    """
    carrier = optional(ti, "context_carrier")
    if carrier or not _in_process_test():
        return carrier
    key = (optional(ti, "dag_id"), optional(ti, "run_id"))
    if key not in _RUN_CARRIERS:  # one query per DAG run, not one per hook
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import select

        query = select(DagRun.context_carrier).where(
            DagRun.dag_id == key[0], DagRun.run_id == key[1]
        )
        with create_session() as session:
            if len(_RUN_CARRIERS) >= 64:
                _RUN_CARRIERS.clear()
            _RUN_CARRIERS[key] = session.scalar(query)
    return _RUN_CARRIERS[key]


_RUN_CARRIERS: dict[tuple[object, object], Any] = {}


def _in_process_test() -> bool:
    try:
        from airflow.sdk.execution_time import task_runner
        from airflow.sdk.execution_time.supervisor import InProcessSupervisorComms
    except ImportError:
        return False
    return isinstance(getattr(task_runner, "SUPERVISOR_COMMS", None), InProcessSupervisorComms)


def dagrun_task_instances(dag_run: Any) -> list[Any]:
    """The run's task instances, read through the session the run is attached to (the
    scheduler's transaction: no second connection, no lock wait), or through a new short
    session when the run is detached (``airflow dags test`` hands listeners a detached run)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy.orm import object_session

    session = object_session(dag_run)
    if session is not None:
        return list(dag_run.get_task_instances(session=session))
    with create_session() as own:
        tis = DagRun.fetch_task_instances(dag_id=dag_run.dag_id, run_id=dag_run.run_id, session=own)
        own.expunge_all()  # read after the session closes: keep loaded attributes
        return list(tis)
