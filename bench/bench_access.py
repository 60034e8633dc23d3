"""Per-request overhead of the access middleware (``airflow_audit.access``), on vs off.

Run from the repository root (about a minute; ``--quick`` about 20 s)::

    .venv-airflow/bin/python bench/bench_access.py
    .venv-airflow/bin/python bench/bench_access.py --quick

Markdown goes to stdout (paste it into BENCHMARKS.md as is); progress goes to stderr. It
prints numbers and ratios against the goal of issue #13 (at most 1 ms added at p50 per
request); it never fails because something is slow.

Method: Airflow's real API app (``airflow.api_fastapi.app.create_app``, SimpleAuthManager,
``airflow db migrate``'d SQLite home) is built once in this process with ``record_access =
False``, so the plugin registers no middleware: that app is "off", and ``AccessMiddleware``
wrapped around the same app object is "on" (the plugin puts it innermost, under Airflow's
own middlewares; around them or under them it does the same work). Each request is one ASGI
call made directly (no socket, no HTTP client: their cost would only blur the difference),
timed from the call to the end of the response; "on" and "off" alternate request by request
(ABBA), so both see the same machine state. Three kinds of request:

- ``GET /api/v2/version`` with a bearer token: an ordinary authenticated request, which the
  middleware only looks at (path, status);
- ``POST /auth/token`` with a good password: a login, whose body is teed to find the user
  name and whose record is queued for the worker thread;
- ``GET /api/v2/variables`` without a token: a 401, recorded as ``access.denied``.

The records really are written (SQLite ledger in the temporary home) by the worker thread of
"on", after the answer. Left running, that write (the GIL, the CPU) lands on whichever
request comes next, which the alternation makes an "off" one as often as not: so after each
request, untimed, the bench waits until the worker is idle. The difference of the p50s is
then the middleware's own work on the request's path; the write's cost is the worker's
(about a millisecond of CPU per record on SQLite, off the event loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from bench._common import Run, Stats, machine, met, ms, parse_bench_args, progress, table, us
from testkit.airflow import home_env

GOAL_ADDED_MS = 1.0
USERS = {"admin": "bench-admin-pw"}
KINDS = ("GET /api/v2/version (token)", "POST /auth/token (login)", "GET /api/v2/variables (401)")


def configure(home: Path) -> dict[str, str]:
    """Environment of the Airflow home (set in this process before Airflow is imported)."""
    dags = home / "dags"
    dags.mkdir(parents=True)
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps(USERS))
    return {
        **home_env(home, dags),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "bench-access-" + "j" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__RECORD_ACCESS": "False",
        # Airflow's access log line per request would cost both variants alike, and flood.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__WORKFLOW_AUDIT__INGEST_EVENT_LOG": "False",
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{home / 'ledger.db'}",
    }


class Client:
    """Direct ASGI calls: what uvicorn hands an app for one HTTP/1.1 request."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(
        self, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], body: bytes = b""
    ) -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"bench"), *headers],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        never = asyncio.get_running_loop().create_future()  # the client stays connected
        status, chunks = 0, []

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            return await never  # type: ignore[no-any-return]

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        never.cancel()
        return status, b"".join(chunks)


Requests = dict[str, tuple[str, str, list[tuple[bytes, bytes]], bytes, int]]
Samples = dict[str, dict[str, list[int]]]


async def airflow_requests(client: Client) -> Requests:
    """The three kinds of request, with a token of the admin for the first."""
    login = json.dumps({"username": "admin", "password": USERS["admin"]}).encode()
    json_type = (b"content-type", b"application/json")
    status, body = await client("POST", "/auth/token", [json_type], login)
    assert 201 == status, body
    bearer = (b"authorization", b"Bearer " + json.loads(body)["access_token"].encode())
    return {
        KINDS[0]: ("GET", "/api/v2/version", [bearer], b"", 200),
        KINDS[1]: ("POST", "/auth/token", [json_type], login, 201),
        KINDS[2]: ("GET", "/api/v2/variables", [], b"", 401),
    }


async def measure(
    off: Client, on: Client, requests: Requests, rounds: int, settle: Callable[[], object]
) -> Samples:
    """Latency samples (ns) per kind of request and variant, ABBA-alternated; ``settle``
    (untimed) after each request."""
    samples: Samples = {k: {"off": [], "on": []} for k in requests}
    for n in range(rounds):
        order = (("off", off), ("on", on)) if n % 2 == 0 else (("on", on), ("off", off))
        for kind, (method, path, headers, data, expected) in requests.items():
            for variant, client in order:
                start = perf_counter_ns()
                status, body = await client(method, path, headers, data)
                samples[kind][variant].append(perf_counter_ns() - start)
                assert expected == status, (kind, variant, status, body[:200])
                settle()
    return samples


async def bare_app(scope: Any, receive: Any, send: Any) -> None:
    """An app that does nothing but read the body and answer: the middleware's own cost."""
    while (await receive()).get("more_body"):
        pass
    status = {"/api/v2/version": 200, "/auth/token": 201}.get(scope["path"], 401)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def settle(middleware: Any) -> None:
    """Wait until the worker wrote what it queued, then the same short pause after every
    request (an idle gap only after "on" requests would make the next one slower)."""
    middleware.flush(60.0)
    time.sleep(0.002)


def rows_of(samples: Samples, unit: Callable[[float], str]) -> list[tuple[str, ...]]:
    rows = []
    for kind, by in samples.items():
        off, on = Stats.of(by["off"]), Stats.of(by["on"])
        paired = statistics.median(a - b for a, b in zip(by["on"], by["off"], strict=True))
        rows.append(
            (
                kind,
                unit(off.p50),
                unit(on.p50),
                unit(on.p50 - off.p50),
                unit(paired),
                f"{on.p50 / off.p50:.3f}x",
                unit(off.p99),
                unit(on.p99),
                unit(on.p99 - off.p99),
            )
        )
    return rows


HEADER = (
    "Request",
    "off p50",
    "on p50",
    "added p50",
    "added, paired median",
    "ratio p50",
    "off p99",
    "on p99",
    "added p99",
)


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    host: list[tuple[str, str]],
    rounds: int,
    airflow: Samples,
    bare: Samples,
    records: dict[str, int],
) -> str:
    goal_rows = []
    for kind, by in airflow.items():
        added = Stats.of(by["on"]).p50 - Stats.of(by["off"]).p50
        goal_rows.append(
            (kind, f"≤ {GOAL_ADDED_MS:.0f} ms", ms(added), met(added <= GOAL_ADDED_MS * 1e6))
        )
    return "\n\n".join(
        [
            "## Access middleware: overhead per request (on vs off)",
            f"Command: `{command}` ({elapsed_s:.0f} s; load average {load[0]} → {load[1]}"
            + ("; **audit_core changed during the run**" if code_changed else "")
            + ")",
            table(("", ""), host),
            table(("Request", "goal (added p50)", "measured", "met"), goal_rows),
            f"Airflow's API app, {rounds} requests of each kind per variant, alternating "
            "request by request (paired: the median of on minus off within each pair):",
            table(HEADER, rows_of(airflow, ms)),
            "The middleware alone, around an app that only answers (no Airflow): its own "
            "work per request, without the noise of Airflow's:",
            table(HEADER, rows_of(bare, us)),
            "Records written by the worker thread during the run: "
            + ", ".join(f"{k} {v}" for k, v in sorted(records.items())),
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    rounds = 200 if args.quick else 2000
    run = Run.begin(command)
    with tempfile.TemporaryDirectory(prefix="audit-bench-access-", dir=args.tmpdir) as tmp:
        home = Path(tmp) / "airflow-home"
        env = configure(home)
        progress("airflow db migrate")
        subprocess.run(
            [str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
            env=env,
            capture_output=True,
            check=True,
        )
        os.environ.update(env)
        progress("building Airflow's API app")
        from airflow.api_fastapi.app import create_app

        from airflow_audit.access import AccessMiddleware
        from airflow_audit.adapter import get_adapter
        from audit_core import Record
        from audit_core.ledgers import open_ledger

        app = create_app()
        middleware = AccessMiddleware(app, chain="airflow-events")
        progress(f"{rounds} rounds of {len(KINDS)} requests, on and off")
        off, on = Client(app), Client(middleware)
        requests = asyncio.run(airflow_requests(off))
        samples = asyncio.run(measure(off, on, requests, rounds, lambda: settle(middleware)))
        progress(f"{rounds * 10} rounds around a bare app")
        alone = AccessMiddleware(bare_app, submit=lambda what, build: bool(build()), chain="c")
        bare = asyncio.run(
            measure(
                Client(bare_app), Client(alone), requests, rounds * 10, lambda: alone.flush(60.0)
            )
        )
        middleware.flush(60.0)
        get_adapter().flush(60.0)
        ledger = open_ledger(env["AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL"], create=False)
        try:
            records: dict[str, int] = {}
            for stored in ledger.read("airflow-events"):
                event = Record.from_stored(stored).event
                records[event] = records.get(event, 0) + 1
        finally:
            ledger.close()
        run.print_report(
            render,
            host=machine(Path(tmp)),
            rounds=rounds,
            airflow=samples,
            bare=bare,
            records=records,
        )


if __name__ == "__main__":
    main()
