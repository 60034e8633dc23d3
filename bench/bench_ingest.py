"""Backfill throughput of ``audit_core.sources``: log rows per second from a SQLite table into
a SQLite ledger, against plain ``record_many`` of the same events, in the same run.

Run from the repository root::

    .venv-airflow/bin/python bench/bench_ingest.py            # 20,000 rows, 3 rounds
    .venv-airflow/bin/python bench/bench_ingest.py --quick    # 4,000 rows, 1 round

Why: issue #13 targets >= 5,000 log rows/s backfilled into SQLite. Method: one source table
shaped like Airflow's ``log`` (``id`` autoincrement, ``dttm``, ``event``, ``owner``,
``dag_id``, ``task_id``, ``run_id``, ``extra``) holds the rows; for each batch size
(100, 500, 1,000, 5,000) and round, in alternating order, each into a fresh ledger
(``synchronous=FULL``, checkpoints every 1,000 records as by default):

- ``A ingest``: ``Ingestor(trail, source, batch=N).run()``: reads the rows after the cursor,
  appends them and moves the cursor in one transaction per batch;
- ``B record_many``: the same reads and events, appended with ``record_many`` (no cursor):
  what exactly-once costs over a plain append.

The median wall time per configuration is reported as rows/s, and A/B. Markdown on stdout,
progress on stderr; it never fails because something is slow.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter

from audit_core import AuditConfig, AuditTrail, Event, Signer
from audit_core.sources import Ingestor, SourceRow
from bench._common import Run, load_average, machine, parse_bench_args, rate, table

BATCHES = (100, 500, 1000, 5000)
CHAIN = "airflow-events"
#: one signing key for every ledger (as in production: a key kept away from the ledger)
KEY = str(Signer.generate("bench.ingest"))


class LogTable:
    """Airflow's ``log`` table, in SQLite, read by id as the Airflow source reads it."""

    name = "bench.log"

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def rows_after(self, after: int, limit: int) -> Sequence[SourceRow]:
        query = (
            "SELECT id, dttm, event, owner, dag_id, task_id, run_id, extra FROM log "
            "WHERE id > ? ORDER BY id LIMIT ?"
        )
        return [_row(*r) for r in self.db.execute(query, (after, limit))]

    def oldest_id(self) -> int | None:
        (first,) = self.db.execute("SELECT min(id) FROM log").fetchone()
        return first if first is None else int(first)

    def newest_id(self) -> int | None:
        (last,) = self.db.execute("SELECT max(id) FROM log").fetchone()
        return last if last is None else int(last)

    def close(self) -> None:
        self.db.close()


def _row(
    log_id: int, dttm: str, event: str, owner: str, dag: str, task: str, run: str, extra: str
) -> SourceRow:
    data = {"log_id": log_id, "event": event, "owner": owner, "dag_id": dag, "task_id": task}
    data |= {"run_id": run, "extra": extra}
    when = dt.datetime.fromisoformat(dttm)
    kind = "run.triggered" if event == "trigger_dag_run" else "airflow.event"
    return SourceRow(log_id, when, Event(type=kind, data=data, actor=("user", owner), ts=when))


def fill(path: Path, rows: int) -> None:
    """``rows`` log rows, one transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute(
        "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, dttm TEXT, event TEXT, "
        "owner TEXT, dag_id TEXT, task_id TEXT, run_id TEXT, extra TEXT)"
    )
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO log (dttm, event, owner, dag_id, task_id, run_id, extra) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (
                now,
                ("trigger_dag_run", "post_clear_task_instances", "patch_dag")[i % 3],
                f"user{i % 7}",
                f"dag_{i % 40}",
                f"task_{i % 12}",
                f"manual__2026-12-01T00:00:{i % 60:02d}",
                '{"note": "bench", "conf": {"rows": ' + str(i) + "}}",
            )
            for i in range(rows)
        ),
    )
    db.execute("COMMIT")
    db.close()


def _trail(path: Path) -> AuditTrail:
    config = AuditConfig(ledger_url=f"sqlite:///{path}", synchronous="FULL", signing_key=KEY)
    return AuditTrail(config)


def ingest(source_db: Path, ledger: Path, batch: int) -> int:
    with _trail(ledger) as trail:
        source = LogTable(source_db)
        result = Ingestor(trail, source, chain=CHAIN, batch=batch).run()
        source.close()
    return result.recorded


def record_many(source_db: Path, ledger: Path, batch: int) -> int:
    with _trail(ledger) as trail:
        source = LogTable(source_db)
        at, done = 0, 0
        while rows := source.rows_after(at, batch):
            trail.record_many([r.event for r in rows], strict=False)
            at, done = rows[-1].id, done + len(rows)
        source.close()
    return done


def measure(tmp: Path, rows: int, rounds: int) -> dict[tuple[str, int], list[float]]:
    """Seconds per (variant, batch), each round in a fresh ledger, the order alternating."""
    source_db = tmp / "airflow.db"
    fill(source_db, rows)
    variants: list[tuple[str, Callable[[Path, Path, int], int]]] = [
        ("A ingest", ingest),
        ("B record_many", record_many),
    ]
    times: dict[tuple[str, int], list[float]] = {}
    n = 0
    for r in range(rounds):
        for batch in BATCHES:
            order = variants if (r + batch) % 2 == 0 else variants[::-1]
            for name, fn in order:
                n += 1
                ledger = tmp / f"ledger-{n}.db"
                t0 = perf_counter()
                done = fn(source_db, ledger, batch)
                times.setdefault((name, batch), []).append(perf_counter() - t0)
                assert done == rows, (name, batch, done)
                for leftover in tmp.glob(f"ledger-{n}.db*"):
                    leftover.unlink()
        print(f"[bench] round {r + 1}/{rounds} done (load {load_average()})", file=sys.stderr)
    return times


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    rows: int,
    times: dict[tuple[str, int], list[float]],
    machine_rows: list[tuple[str, str]],
) -> str:
    body = []
    for batch in BATCHES:
        a = statistics.median(times[("A ingest", batch)])
        b = statistics.median(times[("B record_many", batch)])
        body.append((f"{batch:,}", rate(rows / a), rate(rows / b), f"{b / a:.2f}"))
    header = ("batch", "A ingest (rows/s)", "B record_many (rows/s)", "A/B throughput")
    lines = [
        f"## Backfill throughput: {rows:,} log rows, SQLite table -> SQLite ledger",
        "",
        f"`{command}` — {elapsed_s:.0f} s, load {load[0]} -> {load[1]}"
        + (" (**audit_core changed during the run**)" if code_changed else ""),
        "",
        table(header, body),
        "",
        "Medians of the rounds; each run into a fresh ledger (synchronous=FULL, a checkpoint "
        "every 1,000 records). A/B > 1: ingest is faster.",
        "",
        table(("", ""), machine_rows),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    rows, rounds = (4000, 1) if args.quick else (20_000, 3)
    run = Run.begin(command)
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        times = measure(Path(tmp), rows, rounds)
        machine_rows = machine(Path(tmp))
    run.print_report(render, rows=rows, times=times, machine_rows=machine_rows)


if __name__ == "__main__":
    main()
