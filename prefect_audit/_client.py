"""Reads from Prefect's API that page: the adapter's end-of-run sync and the reconciler share
them. Each takes a client of ``prefect.client.orchestration.get_client(sync_client=True)``.

>>> from types import SimpleNamespace
>>> class Client:
...     def read_task_runs(self, flow_run_filter, sort, offset, limit):
...         return [SimpleNamespace(id=i) for i in range(450)][offset:offset + limit]
>>> len(task_runs(Client(), flow_run_filter=None))
450
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["PAGE_SIZE", "flow_runs", "flows", "read_all", "task_run_count", "task_runs"]

#: Items asked for per call; a shorter page is the last one.
PAGE_SIZE = 200


def read_all(read: Callable[..., Sequence[Any]], **filters: Any) -> list[Any]:
    """Every item ``read(**filters, offset=…, limit=…)`` returns, page by page."""
    items: list[Any] = []
    while True:
        page = read(**filters, offset=len(items), limit=PAGE_SIZE)
        items.extend(page)
        if len(page) < PAGE_SIZE:
            return items


def task_runs(client: Any, flow_run_filter: Any) -> list[Any]:
    """Every task run of the flow runs ``flow_run_filter`` selects, each once. The pages come
    in a fixed order (by id): a task run created between two reads can then only push one
    already read into the next page (dropped here), never push one unread out of it."""
    from prefect.client.schemas.sorting import TaskRunSort

    runs = read_all(
        client.read_task_runs, flow_run_filter=flow_run_filter, sort=TaskRunSort.ID_DESC
    )
    return list({str(r.id): r for r in runs}.values())


def task_run_count(client: Any, flow_run_filter: Any, task_run_filter: Any = None) -> int:
    """How many task runs of the flow runs ``flow_run_filter`` selects (and ``task_run_filter``
    if given) Prefect holds: one small request (the client has no method for
    ``/task_runs/count``)."""
    body = {"flow_runs": flow_run_filter.model_dump(mode="json", exclude_unset=True)}
    if task_run_filter is not None:
        body["task_runs"] = task_run_filter.model_dump(mode="json", exclude_unset=True)
    answer = client.request("POST", "/task_runs/count", json=body)
    answer.raise_for_status()
    return int(answer.json())


def flow_runs(client: Any, flow_run_filter: Any) -> list[Any]:
    """Every flow run ``flow_run_filter`` selects."""
    return read_all(client.read_flow_runs, flow_run_filter=flow_run_filter)


def flows(client: Any, ids: Iterable[Any]) -> list[Any]:
    """The flows with these ids (none asked, none read)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterId

    wanted = list(ids)
    if not wanted:
        return []
    return list(client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=wanted))))
