"""Reads from Prefect's API that page: the adapter's end-of-run sync and the reconciler share
them. Each takes a client of ``prefect.client.orchestration.get_client(sync_client=True)``.

>>> class Client:
...     def read_task_runs(self, flow_run_filter, offset, limit):
...         return list(range(450))[offset:offset + limit]
>>> len(task_runs(Client(), flow_run_filter=None))
450
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["PAGE_SIZE", "flow_runs", "flows", "read_all", "task_runs"]

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
    """Every task run of the flow runs ``flow_run_filter`` selects."""
    return read_all(client.read_task_runs, flow_run_filter=flow_run_filter)


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
