"""What the query index costs and buys: durable ``record()`` with vs without it, and
``query.search()`` pages on 10k, 100k and 1M-record ledgers, SQLite and PostgreSQL.

Run from the repository root (the 1M ledgers take minutes to build; ``--quick`` under a
minute)::

    .venv-airflow/bin/python bench/bench_index.py
    .venv-airflow/bin/python bench/bench_index.py --quick --no-postgres

Method. (a) Two fresh ledgers of each kind, A maintaining the index (the default) and B not
(``index=False``, a constructor option for this A/B only), take durable ``AuditTrail.record()``
calls alternately, call by call, so drift and other load hit both alike; SQLite with
``synchronous=FULL``, PostgreSQL with ``synchronous_commit=on``; A indexes a chain's tail
once it reaches ``--index-batch`` records (each value given is one A/B). Target: A/B - 1 <=
10 % at p50. (b) :func:`big_ledger` builds each size with ``append_many`` in batches (index
maintained on append, as in production), then appends INDEX_BATCH - 1 records one by one, so
queries also read unindexed tails as long as a current writer leaves; each filter's first
page (50 records, newest first) is asked ``--repeats`` times from a read-only reader, as the
web view does; p50 and p95 of the wall time of :func:`audit_core.query.search`. Target: p95
<= 200 ms. The PostgreSQL server is a throw-away cluster from ``testkit`` (``pgaudit.log``
none by default: pgaudit's own cost is bench/bench_postgres.py's). Markdown on stdout,
progress on stderr; it never fails because something is slow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter, perf_counter_ns

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.ledgers import Ledger, open_ledger
from audit_core.ledgers.postgres import PostgresLedger
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.query import INDEX_BATCH, IndexMaintainer, Query, search
from bench._common import load_average, machine, progress, relative, source_fingerprint, table

__all__ = ["FILTERS", "big_ledger", "main"]

BATCH = 5_000
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
STEP_S = 5  # one record every ~5 s: 1M records span ~58 days
N_DAGS = 200
TASKS = ("extract", "validate", "transform", "train", "evaluate", "load", "report", "notify")
TASK_EVENTS = ("task.started", "task.succeeded", "task.failed", "task.retried")
USERS = tuple(f"user_{i:02d}" for i in range(20))


def _event(rng: random.Random, i: int) -> Event:
    """Record ``i`` of a big ledger: Airflow-like task and run events on 200 DAGs, and the
    audit chain's ``audit.viewed`` records about no DAG (10 %), ts increasing."""
    ts = START + dt.timedelta(seconds=i * STEP_S + rng.randint(0, STEP_S - 1))
    if rng.random() < 0.1:
        return Event(
            type="audit.viewed",
            subject={},
            actor=("user", rng.choice(USERS)),
            data={"via": "serve", "count": rng.randint(0, 50)},
            ts=ts,
            chain="audit",
        )
    dag = f"dag_{rng.randrange(N_DAGS):03d}"
    run = f"scheduled__{ts.date().isoformat()}T00:00:00+00:00"
    manual = rng.random() < 0.05
    kind = rng.choice(("run.started", "run.succeeded")) if rng.random() < 0.1 else None
    subject: dict[str, object] = {"dag_id": dag, "run_id": run}
    if kind is None:
        kind = rng.choice(TASK_EVENTS)
        subject["task_id"] = rng.choice(TASKS)
        subject["try_number"] = rng.randint(1, 2)
    return Event(
        type=kind,
        subject=subject,
        actor=("user", rng.choice(USERS)) if manual else ("service", "airflow-scheduler"),
        data={"hostname": f"worker-{rng.randrange(8)}", "duration_s": rng.randint(1, 900)},
        ts=ts,
        chain="default",
    )


def big_ledger(url: str, n: int, *, seed: int = 15) -> int:
    """Fill the ledger ``url`` names with ``n`` realistic records (see :func:`_event`), in
    ``append_many`` batches of 5,000 with the query index maintained, then INDEX_BATCH - 1
    more one by one (the unindexed tails queries read by seq); a ledger that holds records
    already is left as it is. Returns the records it holds. Also imported by
    bench/bench_ui.py."""
    ledger = open_ledger(url)
    try:
        have = sum(n for _, n, _ in _sizes(ledger))
        if have:
            return have
        trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"))
        rng = random.Random(seed)
        t0 = perf_counter()
        for start in range(0, n, BATCH):
            batch = [trail.prepare(_event(rng, i)) for i in range(start, min(n, start + BATCH))]
            ledger.append_many(batch)
            if (start + BATCH) % 100_000 == 0:
                rate = (start + BATCH) / (perf_counter() - t0)
                progress(f"  {url.split('@')[-1]}: {start + BATCH:,} / {n:,} ({rate:,.0f}/s)")
        for i in range(n, n + INDEX_BATCH - 1):
            ledger.append(trail.prepare(_event(rng, i)))
        trail.close()
        return n + INDEX_BATCH - 1
    finally:
        ledger.close()


def _sizes(ledger: Ledger) -> list[tuple[str, int, int]]:
    assert isinstance(ledger, IndexMaintainer)
    return ledger.index_sizes()


def _mid(n: int) -> dt.datetime:
    return START + dt.timedelta(seconds=n * STEP_S // 2)


def filters(n: int) -> list[tuple[str, Query]]:
    """The filters measured on a ledger of ``n`` records (values that exist in it)."""
    mid = _mid(n)
    run = f"scheduled__{mid.date().isoformat()}T00:00:00+00:00"
    day = mid.replace(hour=0, minute=0, second=0)
    return [
        ("none", Query()),
        ("event task.*", Query(events=("task.*",))),
        ("dag", Query(dag="dag_042")),
        ("dag + event", Query(dag="dag_042", events=("task.failed",))),
        ("run (dag + run)", Query(dag="dag_042", run=run)),
        ("task (dag + run + task)", Query(dag="dag_042", run=run, task="train")),
        ("actor", Query(actor="user_07")),
        (
            "time range (1 h)",
            Query(
                since=(day + dt.timedelta(hours=12)).strftime("%Y-%m-%dT%H:%M:%S"),
                until=(day + dt.timedelta(hours=13)).strftime("%Y-%m-%dT%H:%M:%S"),
            ),
        ),
        ("10 permitted DAGs", Query(dags=frozenset(f"dag_{i:03d}" for i in range(0, 200, 20)))),
        (
            "permitted + task.*",
            Query(events=("task.*",), dags=frozenset(f"dag_{i:03d}" for i in range(0, 200, 20))),
        ),
    ]


FILTERS = [name for name, _ in filters(1000)]


def _pct(samples: Sequence[int], q: float) -> float:
    ordered = sorted(samples)
    return float(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))])


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


# -- (a) record() with vs without the index -----------------------------------------------------


def record_ab(make: Callable[[bool], Ledger], calls: int) -> tuple[list[int], list[int]]:
    """ns of durable ``record()`` calls: A with the index, B without, alternating."""
    a, b = make(True), make(False)
    trails = [
        AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:"), ledger=led) for led in (a, b)
    ]
    times: tuple[list[int], list[int]] = ([], [])
    rng = random.Random(3)
    events = [_event(rng, i) for i in range(calls + 20)]
    for k, e in enumerate(events):
        order = (0, 1) if k & 1 else (1, 0)
        for which in order:
            subject = dict(e.subject or {})
            t0 = perf_counter_ns()
            trails[which].record(e.type, e.data, subject=subject, actor=e.actor, chain=e.chain)
            if k >= 20:  # the first calls warm connections, schema and caches
                times[which].append(perf_counter_ns() - t0)
    for trail in trails:
        trail.close()
    return times


# -- (b) search() pages ---------------------------------------------------------------------------


def search_times(url: str, n: int, repeats: int) -> list[tuple[str, float, float, int, bool]]:
    """(filter, p50 ns, p95 ns, records on the page, answered by the index) per filter."""
    reader = open_ledger(url, read_only=True)
    out = []
    try:
        for name, q in filters(n):
            samples = []
            page = search(reader, q, limit=50)  # warm
            for _ in range(repeats):
                t0 = perf_counter_ns()
                page = search(reader, q, limit=50)
                samples.append(perf_counter_ns() - t0)
            out.append(
                (name, _pct(samples, 50), _pct(samples, 95), len(page.records), page.indexed)
            )
    finally:
        reader.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, smoke test")
    parser.add_argument("--tmpdir", type=Path, default=None, help="parent of the ledgers")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--sizes", default=None, help="comma-separated ledger sizes")
    parser.add_argument("--calls", type=int, default=None, help="record() calls per ledger")
    parser.add_argument("--repeats", type=int, default=40, help="searches per filter")
    parser.add_argument("--pgaudit-log", default="none", help="the server's pgaudit.log")
    parser.add_argument(
        "--index-batch",
        default=str(INDEX_BATCH),
        help=f"comma-separated INDEX_BATCH values for (a) (default {INDEX_BATCH})",
    )
    parser.add_argument(
        "--only", choices=("record", "search"), default=None, help="one of the two sections"
    )
    args = parser.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([2_000, 10_000] if args.quick else [10_000, 100_000, 1_000_000])
    )
    calls = args.calls or (200 if args.quick else 1500)
    command = " ".join([relative(sys.executable), relative(__file__), *sys.argv[1:]])
    started, fingerprint, load0 = perf_counter(), source_fingerprint(), load_average()
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmpdir))
    host = machine(tmp)
    server = None
    kinds: list[tuple[str, Callable[[str], str]]] = [
        ("SQLite", lambda name: f"sqlite:///{tmp / name}.db")
    ]
    if not args.no_postgres:
        import psycopg

        from testkit.postgres import PgServer

        server = PgServer.start(pgaudit_log=args.pgaudit_log)

        def pg(name: str) -> str:
            with psycopg.connect(server.url(), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            return server.url(name)

        kinds.append(("PostgreSQL", pg))
    try:
        ab_rows = []
        batches = [int(b) for b in args.index_batch.split(",")]
        ab = [(k, u, b) for b in batches for k, u in kinds] if args.only != "search" else []
        for run, (kind, url_of, batch) in enumerate(ab):
            progress(f"record() A/B on {kind}, index batch {batch}, {calls} calls each")

            def make(
                index: bool,
                kind: str = kind,
                url_of: Callable[[str], str] = url_of,
                batch: int = batch,
                run: int = run,
            ) -> Ledger:
                url = url_of(f"ab_{run}_{'a' if index else 'b'}")
                led: SqliteLedger | PostgresLedger
                if kind == "SQLite":
                    led = SqliteLedger(
                        url.removeprefix("sqlite:///"), synchronous="FULL", index=index
                    )
                else:
                    led = PostgresLedger(url, synchronous="FULL", index=index)
                led.index_batch = batch
                return led

            a, b = record_ab(make, calls)
            pa50, pb50, pa95, pb95 = _pct(a, 50), _pct(b, 50), _pct(a, 95), _pct(b, 95)
            ab_rows.append(
                (
                    kind,
                    str(batch),
                    _ms(pa50),
                    _ms(pb50),
                    f"{pa50 / pb50 - 1:+.1%}",
                    _ms(pa95),
                    _ms(pb95),
                    f"{pa95 / pb95 - 1:+.1%}",
                )
            )
        search_rows = []
        for kind, url_of in kinds if args.only != "record" else []:
            for n in sizes:
                url = url_of(f"big_{n}")
                progress(f"building {n:,} records on {kind}")
                t0 = perf_counter()
                big_ledger(url, n)
                built = perf_counter() - t0
                progress(f"  built in {built:.0f} s; searching")
                for name, p50, p95, shown, indexed in search_times(url, n, args.repeats):
                    search_rows.append(
                        (
                            kind,
                            f"{n:,}",
                            name,
                            _ms(p50),
                            _ms(p95),
                            str(shown),
                            "index" if indexed else "SCAN",
                            "yes" if p95 <= 200e6 else "NO",
                        )
                    )
                search_rows.append(
                    (kind, f"{n:,}", "(build, append_many)", f"{built:.1f} s", "", "", "", "")
                )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print("# Query index benchmark\n")
    print(
        f"`{command}`; {perf_counter() - started:.0f} s; load {load0} -> {load_average()}; "
        f"code changed while running: {source_fingerprint() != fingerprint}\n"
    )
    print(table(("Machine", ""), host) + "\n")
    print("## (a) Durable record(): A with the index vs B without (alternating)\n")
    print(
        table(
            ("Ledger", "batch", "p50 A", "p50 B", "A/B-1 p50", "p95 A", "p95 B", "A/B-1 p95"),
            ab_rows,
        )
    )
    print("\nTarget: A/B-1 at p50 <= +10 %.\n")
    print("## (b) query.search(): first page of 50, newest first, read-only reader\n")
    print(
        table(
            ("Ledger", "records", "filter", "p50", "p95", "shown", "answered by", "p95 <= 200 ms"),
            search_rows,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
