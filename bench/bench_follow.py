"""What the Prefect event follower (``workflow-audit follow prefect``) sustains: backfill
throughput and live lag, against one local ``prefect server start``.

Run from the repository root::

    .venv-prefect/bin/python bench/bench_follow.py            # 5,000 events backfilled, 3 runs
    .venv-prefect/bin/python bench/bench_follow.py --quick    # 1,000 events, 1 run; smoke test
    .venv-prefect/bin/python bench/bench_follow.py --events 20000 --rate 400 --live-s 20
    # sustained live load, sweeps on (the command's defaults): one follower run per rate
    .venv-prefect/bin/python bench/bench_follow.py --runs 1 --rates 200,500 --live-s 30

Why: issue #14 asks for >= 2,000 events/s recorded and a lag p95 <= 2 s from an event to its
record. Two measurements, one server (:class:`testkit.prefect.PrefectServer`, its own SQLite
database) and a SQLite ledger in a temporary directory:

1. **Backfill**: E custom events are emitted (one websocket, Prefect's events client) and the
   server is waited on until it holds them all; then ``follow --once`` runs on a fresh ledger,
   R times: the whole command (interpreter start included), in process
   (:func:`prefect_audit.follower.follow`), and the REST paging alone (the same pages, nothing
   recorded), so what the ledger adds shows as the difference.
2. **Live**: a follower (the command, a separate process) runs on a ledger already caught up;
   the script emits events at a steady rate for S seconds and polls the ledger every 20 ms;
   lag = when a record was first seen in the ledger minus its event's ``occurred`` (the
   emitter's clock: the same machine). It includes Prefect's own path (client -> websocket
   in -> server -> websocket out), the follower's batching (``flush_s``) and the 20 ms poll.
   ``--rates`` repeats it per rate (sustained load: the follower's sweeps run every 5 s
   meanwhile); the follower's own summary gives the records its sweeps found (dropped live)
   and the duplicates it skipped.

Markdown goes to stdout, progress to stderr; numbers and ratios, never a failure because
something is slow. The machine has 2 cores: the emitter, the server, the follower and the
poller share them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import load_average, progress, relative, table
from testkit.prefect import PrefectServer

CHAIN = "prefect"
WORKFLOW_AUDIT = Path(sys.executable).with_name("workflow-audit")
BACKFILL_EVENT = "bench.follow.backfill"
LIVE_EVENT = "bench.follow.live"
TARGET_RATE = 2_000.0  # events/s recorded (issue #14)
TARGET_LAG_P95_S = 2.0
POLL_S = 0.02


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1,000 events, 1 run, 5 s live")
    parser.add_argument("--events", type=int, default=5_000, help="events backfilled")
    parser.add_argument("--runs", type=int, default=3, help="backfill runs (fresh ledgers)")
    parser.add_argument("--rate", type=float, default=200.0, help="live events per second")
    parser.add_argument("--live-s", type=float, default=15.0, help="seconds of live emission")
    parser.add_argument(
        "--rates", default=None, help="live rates to measure one after another (200,500)"
    )
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the temp directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.runs, args.live_s = 1_000, 1, 5.0
    args.rates = [float(r) for r in args.rates.split(",")] if args.rates else [args.rate]
    return args


# -- the server side --------------------------------------------------------------------------


def _count(server: PrefectServer, name: str) -> int:
    """How many events named ``name`` the server holds (its ``total``; one request)."""
    body = {"limit": 1, "filter": {"order": "ASC", "event": {"name": [name]}}}
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1, our server
        server.api_url + "/events/filter",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
        return int(json.load(answer)["total"])


def _wait_count(server: PrefectServer, name: str, n: int, deadline_s: float = 300.0) -> float:
    """Seconds until the server holds ``n`` events named ``name`` (its persister is late)."""
    started = time.monotonic()
    while _count(server, name) < n:
        if time.monotonic() - started > deadline_s:
            raise TimeoutError(f"the server holds {_count(server, name)} of {n} {name} events")
        time.sleep(0.2)
    return time.monotonic() - started


async def _emit(n: int, name: str, rate: float | None = None) -> list[tuple[str, float]]:
    """``n`` events on one connection, at ``rate`` per second (None: as fast as it goes);
    (id, occurred as epoch seconds) of each."""
    from prefect.events import Event
    from prefect.events.clients import get_events_client

    sent: list[tuple[str, float]] = []
    started = time.monotonic()
    async with get_events_client(checkpoint_every=1000) as client:
        for i in range(n):
            if rate is not None:
                due = started + i / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            event = Event(
                event=name,
                resource={"prefect.resource.id": f"bench.follow.{i}"},
                payload={"i": i},
            )
            await client.emit(event)
            sent.append((str(event.id), event.occurred.timestamp()))
    return sent


# -- the follower side -------------------------------------------------------------------------


def _follow_cli(env: dict[str, str], url: str, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(WORKFLOW_AUDIT), "follow", "prefect", "--chain", CHAIN, *extra],
        env={**env, "WORKFLOW_AUDIT_LEDGER": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _records(url: str, start: int = 0) -> list[Any]:
    from audit_core import Record, open_ledger

    ledger = open_ledger(url, read_only=True)
    try:
        return [Record.from_stored(r) for r in ledger.read(CHAIN, start)]
    finally:
        ledger.close()


def _event_records(url: str, name: str) -> int:
    return sum(1 for r in _records(url) if (r.data.get("prefect") or {}).get("event") == name)


def _backfill(env: dict[str, str], tmp: Path, runs: int, events: int) -> dict[str, list[float]]:
    """Seconds per ``--once`` backfill of every event the server holds, three ways."""
    from prefect_audit.follower import PrefectStream, follow

    times: dict[str, list[float]] = {"cli": [], "in_process": [], "paging": []}
    items: list[int] = []
    for run in range(runs):
        # alternate the three, so a load spike hits them alike
        url = f"sqlite:///{tmp / f'backfill-cli-{run}.db'}"
        started = time.monotonic()
        process = _follow_cli(env, url, "--once")
        out, _ = process.communicate(timeout=1800)
        times["cli"].append(time.monotonic() - started)
        if process.returncode != 0:
            raise RuntimeError(f"follow --once failed: {out.decode()[-2000:]}")
        recorded = _event_records(url, BACKFILL_EVENT)
        times.setdefault("recorded", []).append(float(recorded))
        if recorded != events:
            progress(f"WARNING: the CLI backfill recorded {recorded} of {events} events")

        url = f"sqlite:///{tmp / f'backfill-inproc-{run}.db'}"
        started = time.monotonic()
        result = follow(once=True, ledger_url=url, chain=CHAIN)
        times["in_process"].append(time.monotonic() - started)
        items.append(result.items)

        stream = PrefectStream()
        started = time.monotonic()
        n = sum(len(page) for page in stream.backfill(None, 500))
        times["paging"].append(time.monotonic() - started)
        stream.close()
        progress(
            f"backfill run {run + 1}/{runs}: cli {times['cli'][-1]:.2f} s, in process "
            f"{times['in_process'][-1]:.2f} s ({result.items} items), "
            f"paging {times['paging'][-1]:.2f} s ({n} events)"
        )
    times["items"] = [float(i) for i in items]
    return times


def _live(env: dict[str, str], caught_up_url: str, rate: float, seconds: float) -> dict[str, Any]:
    """Lags (s) of live events: first seen in the ledger minus occurred."""
    # a ledger already caught up: the live path is what is measured, not a backfill
    url = caught_up_url
    follower = _follow_cli(env, url)
    try:
        start_seq = _wait_live(url, follower)
        n = int(rate * seconds)
        seen: dict[str, float] = {}
        arrived: dict[str, float] = {}
        next_seq = start_seq

        async def emit_and_poll() -> list[tuple[str, float]]:
            nonlocal next_seq
            ready = asyncio.Event()
            listener = asyncio.ensure_future(_subscribe(arrived, n, ready))
            await asyncio.wait_for(ready.wait(), 60)
            task = asyncio.ensure_future(_emit(n, LIVE_EVENT, rate))
            deadline = None
            while True:
                for record in await asyncio.to_thread(_records, url, next_seq):
                    next_seq = record.seq + 1
                    prefect = record.data.get("prefect") or {}
                    if prefect.get("event") == LIVE_EVENT:
                        seen.setdefault(str(prefect.get("event_id")), time.time())
                if task.done() and deadline is None:
                    deadline = time.monotonic() + 60
                if task.done() and (len(seen) >= n or time.monotonic() > (deadline or 0)):
                    listener.cancel()
                    return task.result()
                await asyncio.sleep(POLL_S)

        sent = asyncio.run(emit_and_poll())
    finally:
        follower.terminate()
        out, _ = follower.communicate(timeout=60)
        # its summary (items read, sweeps, lag) says where the time went
        summary = [line for line in out.decode(errors="replace").splitlines() if "->" in line]
        said = summary[-1] if summary else out.decode(errors="replace")[-500:]
        progress(f"live follower: {said}")
    lags = sorted(seen[i] - occurred for i, occurred in sent if i in seen)
    prefect_lags = sorted(arrived[i] - occurred for i, occurred in sent if i in arrived)
    return {
        "sent": len(sent),
        "recorded": len(lags),
        "lags": lags,
        "prefect_lags": prefect_lags,
        "rate": rate,
        "seconds": seconds,
        "swept": _said(said, r"(\d+) found by sweeps"),
        "duplicates": _said(said, r"(\d+) duplicate\(s\) skipped"),
        "known": _said(said, r"(\d+) read again and dropped before"),
        "follower_recorded": _said(said, r"(\d+) record\(s\)"),
    }


def _said(summary: str, pattern: str) -> int:
    """A number of the follower's summary line (0 when it does not say it)."""
    found = re.search(pattern, summary)
    return int(found.group(1)) if found else 0


async def _subscribe(arrived: dict[str, float], n: int, ready: asyncio.Event) -> None:
    """Prefect's own path alone: when each live event reaches a websocket subscriber of this
    process (the emitter's process: it shares the emitter's event loop)."""
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    wanted = EventFilter(event=EventNameFilter(name=[LIVE_EVENT]))
    async with get_events_subscriber(filter=wanted) as events:
        ready.set()
        async for event in events:
            arrived.setdefault(str(event.id), time.time())
            if len(arrived) >= n:
                return


def _wait_live(url: str, follower: subprocess.Popen[bytes]) -> int:
    """Emit probes until one is recorded (the follower is live); the next seq."""
    for _ in range(600):
        if follower.poll() is not None:
            out = follower.stdout.read().decode() if follower.stdout else ""
            raise RuntimeError(f"the follower exited: {out[-2000:]}")
        asyncio.run(_emit(1, "bench.follow.probe"))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            records = _records(url)
            if any(
                (r.data.get("prefect") or {}).get("event") == "bench.follow.probe" for r in records
            ):
                return records[-1].seq + 1
            time.sleep(0.1)
    raise TimeoutError("the follower never recorded a probe event")


# -- the report -------------------------------------------------------------------------------


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1)).__int__()]


def _render(
    events: int, persist_s: float, backfill: dict[str, list[float]], lives: list[dict[str, Any]]
) -> str:
    items = statistics.median(backfill["items"])
    rows = []
    for key, label in (
        ("cli", "`workflow-audit follow prefect --once` (process start included)"),
        ("in_process", "`prefect_audit.follower.follow(once=True)`"),
        ("paging", "REST paging alone (nothing recorded)"),
    ):
        t = statistics.median(backfill[key])
        rows.append(
            (
                label,
                str(len(backfill[key])),
                f"{t:.2f}",
                f"{min(backfill[key]):.2f}-{max(backfill[key]):.2f}",
                f"{items / t:,.0f}",
                f"{items / t / TARGET_RATE:.2f}x",
            )
        )
    out = [
        f"Backfill of {events:,} custom events ({items:,.0f} events on the server in all; "
        f"the command recorded {min(backfill['recorded']):,.0f} to "
        f"{max(backfill['recorded']):,.0f} of the {events:,} per run); the server needed "
        f"{persist_s:.1f} s after the last emit to hold them all. Events/s = events on the "
        "server / wall time; the command's includes starting Python and importing Prefect.\n",
        table(("What", "runs", "median (s)", "min-max (s)", "events/s", "vs 2,000/s"), rows),
        "",
    ]
    live_rows = []
    for live in lives:
        what = f"{live['rate']:g}/s, {live['seconds']:g} s"
        out.append(
            f"Live {what}: {live['sent']:,} events emitted; {live['recorded']:,} recorded by a "
            f"running follower (the command), {live['swept']:,} of them by its sweeps (dropped "
            f"live); the follower wrote {live['follower_recorded']:,} records and skipped "
            f"{live['duplicates']:,} duplicates in the ledger; {live['known']:,} events read "
            "again were dropped before the ledger (recorded moments before).\n"
        )
        for label, values in (
            ("ledger first seen - occurred (the follower)", live["lags"]),
            (
                f"websocket subscriber - occurred (Prefect alone; "
                f"{len(live['prefect_lags']):,} seen)",
                live["prefect_lags"],
            ),
        ):
            live_rows.append(
                (
                    label,
                    what,
                    f"{_pct(values, 50):.3f}",
                    f"{_pct(values, 95):.3f}",
                    f"{_pct(values, 99):.3f}",
                    f"{values[-1] if values else float('nan'):.3f}",
                    f"{_pct(values, 95) / TARGET_LAG_P95_S:.2f}x",
                )
            )
    out.append(table(("lag (s)", "rate", "p50", "p95", "p99", "max", "p95 vs 2 s"), live_rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    started = time.monotonic()
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-follow-", dir=args.tmpdir) as name:
        tmp = Path(name)
        server = PrefectServer.create(tmp / "prefect")
        progress("starting prefect server")
        server.start()
        try:
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("PREFECT_", "WORKFLOW_AUDIT"))
            }
            env.update(server.env())
            env["PREFECT_LOGGING_LEVEL"] = "WARNING"
            os.environ.update(server.env())  # the in-process follower and emitter: this server
            progress(f"emitting {args.events} events")
            asyncio.run(_emit(args.events, BACKFILL_EVENT))
            persist_s = _wait_count(server, BACKFILL_EVENT, args.events)
            backfill = _backfill(env, tmp, args.runs, args.events)
            lives = []
            for rate in args.rates:
                progress(f"live: {rate:g}/s for {args.live_s:g} s")
                caught_up = f"sqlite:///{tmp / 'backfill-inproc-0.db'}"
                lives.append(_live(env, caught_up, rate, args.live_s))
        finally:
            server.stop()
    print("## #14 follower: backfill throughput and live lag\n")
    print(f"Command: `{' '.join([relative(sys.executable), *sys.argv])}`  ")
    print(f"elapsed {time.monotonic() - started:.0f} s; load average {load} -> {load_average()}\n")
    print(_render(args.events, persist_s, backfill, lives))


if __name__ == "__main__":
    main()
