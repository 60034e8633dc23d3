"""Durable appends per second: the PostgreSQL ledger next to SQLite, in the same run.

Run from the repository root (as root: the server is a throw-away cluster made by
``testkit/postgres.py``, installed with apt when missing)::

    .venv-airflow/bin/python bench/bench_postgres.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_postgres.py --quick    # smoke test

Markdown goes to stdout, progress to stderr; it never fails because something is slow.

For 1, 4 and 8 writer processes, on one chain and on one chain per writer, each writer
appends through ``AuditTrail.record()`` (one record, one transaction) and then through
``record_many()`` in batches of ``--batch``; the table gives total records/s (all writers,
first start to last finish) and the p50/p99 latency of a single-record call. Both ledgers are
durable on return: SQLite ``synchronous=FULL``, PostgreSQL ``synchronous_commit=on`` with
``fsync=on``; the server runs with pgaudit logging writes (``--pgaudit-log none`` to compare).
Goals (issue #7): ≥ 10,000 records/s with 8 writers on one chain (batched); single-record
p99 ≤ 5 ms on loopback.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time

from audit_core import AuditConfig, AuditTrail, Event
from audit_core.ledgers.postgres_admin import init
from testkit.postgres import PgServer


def _writer(
    url: str, chain: str, count: int, batch: int, start: float, out: multiprocessing.Queue[object]
) -> None:
    trail = AuditTrail(AuditConfig(ledger_url=url, chain=chain, checkpoint_every=0))
    trail.record("bench.warmup")  # connect outside the measurement
    while time.time() < start:
        time.sleep(0.001)
    latencies = []
    t0 = time.perf_counter()
    if batch <= 1:
        for i in range(count):
            s = time.perf_counter()
            trail.record("task.succeeded", {"i": i, "pad": "x" * 200})
            latencies.append(time.perf_counter() - s)
    else:
        for i in range(0, count, batch):
            trail.record_many(
                Event(type="task.succeeded", data={"i": i + k, "pad": "x" * 200})
                for k in range(batch)
            )
    t1 = time.perf_counter()
    trail.close()
    out.put((t0, t1, latencies))


def _run(
    url: str, writers: int, per_chain: bool, count: int, batch: int
) -> tuple[float, list[float]]:
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[object] = ctx.Queue()
    start = time.time() + 1.0
    tag = f"{writers}{'p' if per_chain else 'o'}{batch}"
    procs = [
        ctx.Process(
            target=_writer,
            args=(url, f"b{tag}-{i}" if per_chain else f"b{tag}", count, batch, start, out),
        )
        for i in range(writers)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    begin = min(r[0] for r in results)  # type: ignore[index]
    end = max(r[1] for r in results)  # type: ignore[index]
    latencies = [x for r in results for x in r[2]]  # type: ignore[index]
    return writers * count / (end - begin), latencies


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] * 1000 if len(xs) > 1 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few records, for a smoke test")
    parser.add_argument("--batch", type=int, default=100, help="records per record_many call")
    parser.add_argument("--pgaudit-log", default="write, ddl, role", help="pgaudit.log setting")
    args = parser.parse_args()
    singles, batched = (100, 1000) if args.quick else (1000, 10_000)
    server = PgServer.start(pgaudit_log=args.pgaudit_log)
    tmp = tempfile.TemporaryDirectory()
    try:
        init(server.url(), writer="bench", writer_password="bench")  # noqa: S106 - throw-away
        ledgers = {
            "sqlite": f"sqlite:///{tmp.name}/bench.db",
            "postgres": server.url(user="bench", password="bench"),  # noqa: S106 - throw-away
        }
        print("# PostgreSQL ledger vs SQLite: durable appends\n")
        print(f"`{' '.join(['python', *sys.argv])}`; {platform.platform()}, "
              f"{os.cpu_count()} CPUs; pgaudit.log = '{args.pgaudit_log}'\n")  # fmt: skip
        print("| writers | chains | mode | SQLite rec/s | Postgres rec/s | PG/SQLite "
              "| SQLite p50/p99 ms | Postgres p50/p99 ms |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for writers in (1, 4, 8):
            for per_chain in (False, True):
                if writers == 1 and per_chain:
                    continue
                for batch, count in ((1, singles), (args.batch, batched)):
                    row = {}
                    for name, url in ledgers.items():
                        print(f"{name} {writers} writers {per_chain=} {batch=}", file=sys.stderr)
                        row[name] = _run(url, writers, per_chain, count, batch)
                    (ls, lat_s), (lp, lat_p) = row["sqlite"], row["postgres"]
                    lat = (
                        f"{_pct(lat_s, 50):.2f}/{_pct(lat_s, 99):.2f} | "
                        f"{_pct(lat_p, 50):.2f}/{_pct(lat_p, 99):.2f}"
                        if batch == 1
                        else "- | -"
                    )
                    print(
                        f"| {writers} | {'one per writer' if per_chain else 'one'} | "
                        f"{'record()' if batch == 1 else f'record_many({batch})'} | {ls:,.0f} | "
                        f"{lp:,.0f} | {lp / ls:.2f} | {lat} |",
                        flush=True,
                    )
    finally:
        server.stop()
        tmp.cleanup()


if __name__ == "__main__":
    main()
