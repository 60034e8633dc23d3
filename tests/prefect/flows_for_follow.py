"""What makes Prefect events happen for the follower's scenario tests and its benchmark:
flows (undecorated and ``@audited_flow``), changes people make, automations, Cloud-style
access events and bulk custom events, each a subcommand run in its OWN process against a
:class:`testkit.prefect.PrefectServer` (its ``env()``), so the test process's own Prefect
settings (the session harness of ``conftest.py``) never decide which server is reached.

    python tests/prefect/flows_for_follow.py serve NAME          # plain_flow.serve(NAME)
    python tests/prefect/flows_for_follow.py deploy POOL NAME    # process pool + deployment
    python tests/prefect/flows_for_follow.py run DEPLOYMENT [N]  # run_deployment, waits
    python tests/prefect/flows_for_follow.py decorated [N]       # @audited_flow in process
    python tests/prefect/flows_for_follow.py changes             # deployment/variable/pool
    python tests/prefect/flows_for_follow.py automation          # create one, make it fire
    python tests/prefect/flows_for_follow.py cloud EMAIL         # prefect-cloud login event
    python tests/prefect/flows_for_follow.py emit N [EVENT [RATE]]  # N custom events, in order

Every subcommand that ends prints one JSON line on stdout (ids the test asserts on).
Waits are deadlines on the server's answers, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.runtime import task_run

HERE = Path(__file__).resolve().parent
#: The value of the variable the scenario sets: it must be in no byte of the ledger.
SECRET_VALUE = "s3cr3t-variable-value-7f41c2"  # noqa: S105 - a test's fake secret
SECRET_CHANGED = "s3cr3t-variable-value-changed-9e03"  # noqa: S105
DEADLINE_S = 120.0


@task
def square(i: int) -> int:
    return i * i


@task(retries=1, retry_delay_seconds=0)
def flaky() -> str:
    """Fails its first attempt: the run has task.retry_scheduled, then started again."""
    if task_run.get_run_count() <= 1:
        raise RuntimeError("first attempt fails on purpose")
    return "ok"


@flow(name="follow-plain")
def plain_flow(n: int = 3) -> int:
    """An undecorated flow: only the follower records it."""
    futures = [square.submit(i) for i in range(n)]
    flaky()
    return sum(f.result() for f in futures)


def _decorated() -> Any:
    from prefect_audit import audited_flow

    @audited_flow(name="follow-decorated")
    def decorated_flow(n: int = 3) -> int:
        futures = [square.submit(i) for i in range(n)]
        flaky()
        return sum(f.result() for f in futures)

    return decorated_flow


def _print(value: object) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")
    sys.stdout.flush()


def cmd_serve(name: str) -> None:
    plain_flow.serve(name=name)


def cmd_deploy(pool: str, name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment = flow.from_source(  # type: ignore[attr-defined]
        source=str(HERE), entrypoint="flows_for_follow.py:plain_flow"
    )
    deployment_id = deployment.deploy(name=name, work_pool_name=pool, print_next_steps=False)
    _print({"deployment_id": deployment_id, "name": f"follow-plain/{name}"})


def cmd_run(deployment: str, n: int) -> None:
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters={"n": n}, timeout=DEADLINE_S)
    state = run.state.type.value if run.state is not None else None
    _print({"flow_run_id": str(run.id), "state": state})


def cmd_decorated(n: int) -> None:
    decorated_flow = _decorated()
    state = decorated_flow(n, return_state=True)
    _print({"flow_run_id": str(state.state_details.flow_run_id), "state": state.type.value})


def cmd_changes() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import (
        DeploymentUpdate,
        VariableCreate,
        VariableUpdate,
        WorkPoolCreate,
        WorkPoolUpdate,
    )

    suffix = uuid.uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(f"follow-changes-{suffix}")
        deployment_id = client.create_deployment(flow_id, name=f"dep-{suffix}")
        client.update_deployment(deployment_id, DeploymentUpdate(description="changed"))
        client.delete_deployment(deployment_id)

        variable = client.create_variable(VariableCreate(name=f"var_{suffix}", value=SECRET_VALUE))
        client.update_variable(VariableUpdate(name=f"var_{suffix}", value=SECRET_CHANGED))
        client.delete_variable_by_name(f"var_{suffix}")

        pool = f"pool-{suffix}"
        created = client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=False))
    _print(
        {
            "deployment_id": str(deployment_id),
            "variable_id": str(variable.id),
            "variable_name": f"var_{suffix}",
            "work_pool_id": str(created.id),
            "work_pool": pool,
        }
    )


def _server_events(prefix: str, since: float) -> list[dict[str, Any]]:
    """Events of the server whose name starts ``prefix`` (the client's own API)."""
    from prefect import get_client

    async def read() -> list[dict[str, Any]]:
        async with get_client() as client:
            answer = await client._client.post(
                "/events/filter",
                json={
                    "filter": {"order": "ASC", "event": {"prefix": [prefix]}},
                    "limit": 50,
                },
            )
            answer.raise_for_status()
            return list(answer.json()["events"])

    return asyncio.run(read())


def _emit(
    event: str,
    resource: dict[str, str],
    related: list[dict[str, str]] | None = None,
    payload: dict[str, Any] | None = None,
) -> str:
    """Emit one event and wait until the server's websocket has taken it."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    value = Event(event=event, resource=resource, related=related or [], payload=payload or {})

    async def send() -> None:
        async with get_events_client(checkpoint_every=1) as client:
            await client.emit(value)

    asyncio.run(send())
    return str(value.id)


def cmd_automation() -> None:
    from prefect.automations import Automation
    from prefect.events.actions import DoNothing
    from prefect.events.schemas.automations import EventTrigger, Posture

    suffix = uuid.uuid4().hex[:8]
    ping = f"test.follow.ping.{suffix}"
    automation = Automation(
        name=f"follow-automation-{suffix}",
        trigger=EventTrigger(
            expect={ping},
            match={"prefect.resource.id": "test.follow.*"},
            posture=Posture.Reactive,
            threshold=1,
        ),
        actions=[DoNothing()],
    ).create()
    automation_resource = f"prefect.automation.{automation.id}"
    started = time.time()

    def fired() -> bool:
        # The server's trigger service loads new automations on its own schedule: ping
        # until one fires (each ping is a distinct event; firing once is what we wait for).
        _emit(ping, {"prefect.resource.id": f"test.follow.{suffix}"})
        return any(
            e["resource"].get("prefect.resource.id") == automation_resource
            for e in _server_events("prefect.automation.action", started - 60)
        )

    deadline = time.monotonic() + DEADLINE_S
    while not fired():
        if time.monotonic() > deadline:
            raise TimeoutError(f"automation {automation.id} never fired")
        time.sleep(0.5)
    _print({"automation_id": str(automation.id), "resource": automation_resource})


def cmd_cloud(email: str) -> None:
    user = str(uuid.uuid4())
    event_id = _emit(
        "prefect-cloud.user.logged-in",
        {"prefect.resource.id": f"prefect-cloud.user.{user}", "prefect.resource.name": email},
        [
            {
                "prefect.resource.id": f"prefect-cloud.user.{user}",
                "prefect.resource.role": "actor",
                "prefect.resource.name": email,
                "prefect-cloud.email": email,
            }
        ],
    )
    _print({"event_id": event_id, "user": user})


def cmd_emit(n: int, name: str, rate: float = 0.0) -> None:
    """N custom events in one connection, ``occurred`` increasing; ``rate`` a second (0: as
    fast as they go)."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    ids: list[str] = []

    async def send() -> None:
        started = time.monotonic()
        async with get_events_client(checkpoint_every=500) as client:
            for i in range(n):
                if rate > 0:
                    await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                value = Event(
                    event=name,
                    resource={"prefect.resource.id": f"test.follow.bulk.{i}"},
                    payload={"i": i},
                )
                ids.append(str(value.id))
                await client.emit(value)

    asyncio.run(send())
    _print({"count": len(ids), "first": ids[0] if ids else None, "last": ids[-1] if ids else None})


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "serve":
        cmd_serve(args[0])
    elif command == "deploy":
        cmd_deploy(args[0], args[1])
    elif command == "run":
        cmd_run(args[0], int(args[1]) if len(args) > 1 else 3)
    elif command == "decorated":
        cmd_decorated(int(args[0]) if args else 3)
    elif command == "changes":
        cmd_changes()
    elif command == "automation":
        cmd_automation()
    elif command == "cloud":
        cmd_cloud(args[0])
    elif command == "emit":
        name = args[1] if len(args) > 1 else "test.follow.bulk"
        cmd_emit(int(args[0]), name, float(args[2]) if len(args) > 2 else 0.0)
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
