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
does keep, authoritatively, is every task run in its API. So when an audited flow run reaches
a final state, its final hook (``on_completion`` / ``on_failure`` / ``on_crashed`` /
``on_cancellation``) writes the flow's terminal record (durable before the hook returns) and
hands the flow run to the **end-of-run pass**, which runs off the flow's path: one background
thread per process works through a queue of flow runs, so the flow call returns at once. For
each, it waits until Prefect's API holds every task run in a final state and reads them in one
paginated, filtered query. That wait is long: Prefect's server records the task states the
client sends one event at a time, a few hundred a second on a small machine (about 1.6 s after
a flow of 100 tasks returns, 19 s after one of 1,000), and a plain flow does not wait for it;
so the pass polls two counts and keeps waiting as long as they change, giving up only
``sync_timeout`` seconds after the last change (then it records what the API holds, with a
warning). A task run that ran once is recorded from its own fields: ``task.started`` at its
``start_time``, ``task.succeeded`` / ``task.failed`` at its state's time. Only task runs that
retried (or sit in an unexpected state) have their state history read
(:mod:`prefect_audit.history`): ``task.retry_scheduled`` comes from the ``AwaitingRetry`` /
``Retrying`` states (a retried attempt fires no failure hook), with the reason from the task
run's retry log line.

**Order on the chain, and the end of the process.** The flow's terminal record lands
*before* its task records; every record keeps Prefect's state time in ``ts`` (a task record's
``ts`` is earlier than the flow's end record before it), so order by ``ts`` to replay a run.
At interpreter exit the process waits for its pending passes, at most ``exit_wait`` seconds
(60 by default): a script, a process worker's ``python -m prefect.engine`` and the
subprocess in which ``flow.serve()`` runs each flow all exit normally: their passes finish. A
pass cut short by ``exit_wait`` is logged and counted (``run_passes_abandoned``); a process
SIGKILLed while it waits (or before its final hook: SIGKILL runs no hook at all) loses no
run silently: Prefect's API keeps every task run, ``workflow-audit reconcile prefect`` records
a ``task.unrecorded`` gap for each that has no terminal record on the chain, and ``workflow-
audit follow prefect`` (which backfills from Prefect's events, within their retention) records
the missing lifecycle records themselves, under the same keys. In a long-lived process that
reads the ledger right after a flow (a notebook, a test), call
:func:`prefect_audit.adapter.flush_runs` first: it waits for the pending passes.

Where a record must exist the moment a task ends, add :func:`task_hooks` to that task: its
records are written in real time, and the end-of-run pass skips what they already wrote.

**One record per run, state and attempt; a trace on every record.** Each lifecycle record
(``flowrun.*``, ``task.*``) carries the key :func:`prefect_audit.ids.lifecycle_key` (event,
run id, Prefect's ``run_count`` of the attempt); the ledger stores one record per key, so a
hook that fires twice, the end-of-run pass and ``workflow-audit follow prefect`` never
duplicate each other. Records carry Prefect's OpenTelemetry span when an SDK is configured,
else the trace context derived from the run ids (:func:`prefect_audit.ids.run_trace`: the
flow run id as trace id).

**Follower mode** (``PREFECT_INTEGRATIONS_WORKFLOW_AUDIT_FOLLOWER=true``): a follower records
every flow and task run from Prefect's event stream, so the final hook skips the end-of-run
read entirely. The flow process still records what only it knows: the flow's start (with the
parameters' digest) and end (with the exception type and traceback digest of a failure),
:func:`task_hooks`' records, and :func:`prefect_audit.record` calls; under the same keys as
the follower's, whichever lands first is kept.
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
