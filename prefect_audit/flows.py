"""``@audited_flow``: ``@flow`` with the audit hooks, and the hooks for those who keep ``@flow``.

::

    from prefect import task
    from prefect_audit import audited_flow, record

    @task(retries=1)
    def retrain(): ...

    @audited_flow(log_prints=True)          # every argument of @flow, unchanged
    def ml_pipeline():
        retrain()
        record("model.deployed", data={"model": "churn"})

    # or, keeping @flow:
    @flow(**flow_hooks(on_failure=[notify]))  # our hooks appended to yours
    def etl(): ...

**How task runs are recorded, and why.** Prefect 3.9 runs task state hooks only for hooks
declared on each task (``@task(on_running=...)``) and its plugin system has no per-task hook;
intercepting task calls would mean patching Prefect internals, which we never do. What Prefect
does keep, authoritatively, is every task run's full state history in its API
(``read_task_runs``, ``read_task_run_states``). So when an audited flow run reaches a final
state, its final hook (``on_completion`` / ``on_failure`` / ``on_crashed`` /
``on_cancellation``) pushes out Prefect's pending events, waits (at most ``sync_timeout``) for
the API to hold every task run's final state, and records each task run's lifecycle with the
timestamps Prefect gave its states: ``task.started``, ``task.retry_scheduled`` (from the
``AwaitingRetry`` / ``Retrying`` states: a retried attempt fires no failure hook),
``task.succeeded``, ``task.failed``. The same history serves ``workflow-audit reconcile
prefect`` when a flow process dies before its final hook (SIGKILL runs no hook at all).

Where a record must exist the moment a task ends, add :func:`task_hooks` to that task: its
records are written in real time, and the end-of-run pass skips what they already wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

from prefect import Flow, flow

from prefect_audit.adapter import get_adapter

__all__ = ["audited_flow", "flow_hooks", "task_hooks"]

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[..., Any]


def _on_running(flow: Any, flow_run: Any, state: Any) -> None:
    get_adapter().flow_running(flow, flow_run, state)


def _on_completion(flow: Any, flow_run: Any, state: Any) -> None:
    get_adapter().flow_finished(flow, flow_run, state, "succeeded")


def _on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    get_adapter().flow_finished(flow, flow_run, state, "failed")


def _on_crashed(flow: Any, flow_run: Any, state: Any) -> None:
    get_adapter().flow_finished(flow, flow_run, state, "crashed")


def _on_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    get_adapter().flow_finished(flow, flow_run, state, "cancelled")


def _task_on_running(task: Any, task_run: Any, state: Any) -> None:
    get_adapter().task_running(task, task_run, state)


def _task_on_completion(task: Any, task_run: Any, state: Any) -> None:
    get_adapter().task_finished(task, task_run, state, success=True)


def _task_on_failure(task: Any, task_run: Any, state: Any) -> None:
    get_adapter().task_finished(task, task_run, state, success=False)


_FLOW_HOOKS: dict[str, Hook] = {
    "on_running": _on_running,
    "on_completion": _on_completion,
    "on_failure": _on_failure,
    "on_crashed": _on_crashed,
    "on_cancellation": _on_cancellation,
}
_TASK_HOOKS: dict[str, Hook] = {
    "on_running": _task_on_running,
    "on_completion": _task_on_completion,
    "on_failure": _task_on_failure,
}


def _merged(ours: dict[str, Hook], theirs: dict[str, Any]) -> dict[str, list[Hook]]:
    # The user's hooks run first, each once; ours are appended (and never twice).
    merged = {}
    for name, hook in ours.items():
        hooks = list(theirs.get(name) or [])
        merged[name] = hooks if hook in hooks else [*hooks, hook]
    return merged


def flow_hooks(**user_hooks: list[Hook] | None) -> dict[str, list[Hook]]:
    """``@flow`` hook arguments with the audit hooks appended to yours:
    ``@flow(**flow_hooks(on_failure=[notify]))``."""
    return _merged(_FLOW_HOOKS, user_hooks)


def task_hooks(**user_hooks: list[Hook] | None) -> dict[str, list[Hook]]:
    """``@task`` hook arguments recording this task in real time:
    ``@task(retries=2, **task_hooks())``."""
    return _merged(_TASK_HOOKS, user_hooks)


@overload
def audited_flow(__fn: F) -> Flow[Any, Any]: ...


@overload
def audited_flow(**kwargs: Any) -> Callable[[F], Flow[Any, Any]]: ...


def audited_flow(__fn: F | None = None, **kwargs: Any) -> Any:
    """A drop-in for ``@flow`` (same arguments) whose runs and task runs are audited."""
    kwargs.update(flow_hooks(**{name: kwargs.pop(name, None) for name in _FLOW_HOOKS}))
    decorate: Any = flow  # @flow's overloads cannot type a **kwargs pass-through
    if __fn is None:
        return decorate(**kwargs)
    return decorate(__fn, **kwargs)
