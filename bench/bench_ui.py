"""Server-side page time of the browser view (``audit_core.web``): a TestClient round trip
of the record list with and without filters, a deep page, a record's detail and the status
page, on SQLite ledgers of 10,000, 100,000 and 1,000,000 records (and PostgreSQL with
``--postgres``, from ``testkit.postgres``; ``--postgres-only`` skips SQLite).

Run from the repository root (several minutes; ``--quick``: 2,000 and 20,000 records)::

    .venv-airflow/bin/python bench/bench_ui.py

Method: the ledger comes from ``big_ledger(url, n)`` of ``bench/bench_index.py`` (else a
stand-in built here with ``bench._common.build_ledger``; the report says which). The app is
built as ``workflow-audit serve`` builds it, with a viewer that reads every DAG (and one
limited to one DAG) and a recorder that drops the events. Filter values are taken from the
ledger's own records. Each page is requested 3 times to warm up, then ``ROUNDS`` times, the
pages interleaved round by round; the time is the whole TestClient round trip (routing, the
viewer, the query, the template, the response). Markdown on stdout, progress on stderr;
never fails on slowness.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from time import perf_counter_ns
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient

from audit_core import Event, Record, open_ledger
from audit_core.web import Viewer, create_app
from bench._common import Run, build_ledger, parse_bench_args, progress, sqlite_url, table

ROUNDS = 30

try:  # helper I's generator: the same ledgers the index benchmark measures
    from bench.bench_index import big_ledger as _big_ledger

    GENERATOR = "bench_index.big_ledger"
except ImportError:  # not there yet: a stand-in with the same shape of records
    _big_ledger = None
    GENERATOR = "bench_common.build_ledger (stand-in: bench/bench_index.py not found)"


def big_ledger(url: str, n: int) -> None:
    """A ledger of ``n`` records at ``url``."""
    if _big_ledger is not None:
        _big_ledger(url, n)
        return
    path = Path(url.removeprefix("sqlite:///"))
    build_ledger(path, [("default", n)])


def _sample(url: str) -> tuple[Record, Record, int]:
    """A record from the middle and one from near the start, and the first chain's size."""
    with closing(open_ledger(url, read_only=True)) as ledger:
        chain = ledger.chains()[0]
        head = ledger.head(chain)
        size = 0 if head is None else head.seq + 1
        mid = next(ledger.read(chain, size // 2, size // 2 + 1))
        early = next(ledger.read(chain, size // 10, size // 10 + 1))
        return Record.from_stored(mid), Record.from_stored(early), size


def _pages(url: str) -> list[tuple[str, str, str]]:
    """(label, user, path) of each measured page, with filter values from the ledger."""
    mid, early, _ = _sample(url)
    dag = str(mid.subject.get("dag_id") or mid.subject.get("flow_name") or "none")
    run = str(mid.subject.get("run_id") or mid.subject.get("flow_run_id") or "none")
    lo, hi = sorted((early.ts, mid.ts))
    q = quote
    return [
        ("list, no filter", "root", "/"),
        ("list, DAG + event", "root", f"/?dag={q(dag)}&event=task.failed"),
        ("list, DAG + run (tab)", "root", f"/dags/{q(dag, safe='')}/runs/{q(run, safe='')}"),
        ("list, time range", "root", f"/?since={q(lo)}&until={q(hi)}"),
        ("list, event pattern", "root", "/?event=task.*"),
        ("list, viewer limited to 1 DAG", "limited", "/"),
        ("list, limit 200", "root", "/?limit=200"),
        ("record detail", "root", f"/records/{q(mid.chain, safe='')}/{mid.seq}"),
        ("status", "root", "/status"),
    ]


def _client(url: str, dag: str) -> TestClient:
    users = {"root": Viewer("root", None), "limited": Viewer("limited", frozenset({dag}))}

    def viewer(x_user: str = "root") -> Viewer:  # a query parameter nobody sends: "root"
        return users[x_user]

    def drop(event: Event) -> None:
        return None

    app = create_app(ledger_url=url, viewer=viewer, recorder=drop, via="serve")
    return TestClient(app)


def _p(samples: Sequence[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))])


def measure(url: str, rounds: int) -> list[tuple[str, float, float, float, int]]:
    """(page, p50 ms, p95 ms, mean ms, status) of each page."""
    pages = _pages(url)
    mid, _, _ = _sample(url)
    dag = str(mid.subject.get("dag_id") or "none")
    times: dict[str, list[int]] = {label: [] for label, _, _ in pages}
    status: dict[str, int] = {}
    with _client(url, dag) as client:

        def get(user: str, path: str) -> Any:
            sep = "&" if "?" in path else "?"
            return client.get(f"{path}{sep}x_user={user}")

        for label, user, path in pages:  # warm: connection, templates, page cache
            for _ in range(3):
                status[label] = get(user, path).status_code
        for _ in range(rounds):
            for label, user, path in pages:
                t0 = perf_counter_ns()
                r = get(user, path)
                times[label].append(perf_counter_ns() - t0)
                status[label] = r.status_code
    return [
        (
            label,
            _p(t, 50) / 1e6,
            _p(t, 95) / 1e6,
            statistics.fmean(t) / 1e6,
            status[label],
        )
        for label, t in times.items()
    ]


def _render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    results: list[tuple[str, int, str, list[tuple[str, float, float, float, int]]]],
) -> str:
    out = [
        "## `bench_ui.py`: server-side page time of the browser view",
        "",
        f"Command: `{command}`; {elapsed_s:.0f} s; load {load[0]} → {load[1]}"
        + ("; **audit_core changed during the run**" if code_changed else ""),
        f"Ledger generator: {GENERATOR}. Times: TestClient round trip, {ROUNDS} rounds.",
        "",
    ]
    for backend, n, build, rows in results:
        out += [f"### {backend}, {n:,} records (built in {build})", ""]
        out.append(
            table(
                ("Page", "p50 ms", "p95 ms", "mean ms", "status"),
                [(p, f"{a:.1f}", f"{b:.1f}", f"{c:.1f}", str(s)) for p, a, b, c, s in rows],
            )
        )
        out.append("")
    return "\n".join(out)


def _timed(fn: Callable[[], None]) -> str:
    t0 = perf_counter_ns()
    fn()
    return f"{(perf_counter_ns() - t0) / 1e9:.0f} s"


def main(argv: list[str] | None = None) -> None:
    raw = list(sys.argv[1:] if argv is None else argv)
    pg_only = "--postgres-only" in raw
    with_pg = pg_only or "--postgres" in raw
    rest = [a for a in raw if a not in ("--postgres", "--postgres-only")]
    args, command = parse_bench_args(__doc__, __file__, rest)
    extra = " --postgres-only" if pg_only else " --postgres" if with_pg else ""
    run = Run.begin(command + extra)
    sizes = (2_000, 20_000) if args.quick else (10_000, 100_000, 1_000_000)
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as d:
        for n in () if pg_only else sizes:
            url = sqlite_url(Path(d) / f"ui-{n}.db")
            progress(f"building a SQLite ledger of {n:,} records")
            built = _timed(lambda url=url, n=n: big_ledger(url, n))  # type: ignore[misc]
            progress(f"measuring pages on {n:,} records")
            results.append(("SQLite", n, built, measure(url, ROUNDS)))
        if with_pg and _big_ledger is None:
            progress("--postgres needs bench/bench_index.py's big_ledger: skipped")
        elif with_pg:
            import psycopg

            from testkit.postgres import PgServer

            server = PgServer.start()
            try:
                for n in sizes:
                    with psycopg.connect(server.url(), autocommit=True) as conn:
                        conn.execute(f"CREATE DATABASE ui_{n}")
                    url = server.url(f"ui_{n}")
                    progress(f"building a PostgreSQL ledger of {n:,} records")
                    built = _timed(lambda url=url, n=n: big_ledger(url, n))  # type: ignore[misc]
                    results.append(("PostgreSQL", n, built, measure(url, ROUNDS)))
            finally:
                server.stop()
    run.print_report(_render, results=results)


if __name__ == "__main__":
    main()
