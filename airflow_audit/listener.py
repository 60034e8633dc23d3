"""The Airflow listener: one function per hook, each handing its arguments to the adapter.

Hook specs: ``airflow/_shared/listeners/spec/taskinstance.py`` and ``lifecycle.py`` (task
runner and core), ``airflow/listeners/spec/dagrun.py``, ``asset.py`` and ``importerrors.py``
(scheduler, API server, DAG processor). Each function is defined once and never raises: the
adapter contains every failure (``audit_core.hooks.HookRunner``).
"""

from __future__ import annotations

from typing import Any

from airflow.listeners import hookimpl

from airflow_audit.adapter import get_adapter


@hookimpl
def on_task_instance_running(previous_state: Any, task_instance: Any) -> None:
    get_adapter().task_running(task_instance, previous_state)


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    get_adapter().task_success(task_instance, previous_state)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    get_adapter().task_failed(task_instance, error, previous_state)


@hookimpl
def on_task_instance_skipped(previous_state: Any, task_instance: Any) -> None:
    get_adapter().task_skipped(task_instance, previous_state)


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    get_adapter().dagrun_running(dag_run, msg)


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    get_adapter().dagrun_finished(dag_run, msg, success=True)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    get_adapter().dagrun_finished(dag_run, msg, success=False)


@hookimpl
def on_asset_event_emitted(asset_event: Any) -> None:
    get_adapter().asset_event(asset_event)


@hookimpl
def on_new_dag_import_error(filename: str, stacktrace: str) -> None:
    get_adapter().import_error(filename, stacktrace, new=True)


@hookimpl
def on_existing_dag_import_error(filename: str, stacktrace: str) -> None:
    get_adapter().import_error(filename, stacktrace, new=False)


@hookimpl
def before_stopping(component: Any) -> None:
    # A task runner may leave with os._exit, skipping atexit: make the queue durable first.
    get_adapter().flush()
