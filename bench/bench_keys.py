"""What idempotency keys cost a SQLite append: keyed vs unkeyed, one record a transaction and
batches of 500, and what an unkeyed batch pays for the feature (it must pay nothing).

Run from the repository root (about a minute; ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_keys.py

Method: records are prepared before timing (the ledger's append alone is measured). Two fresh
ledgers, A unkeyed and B keyed (keys shaped like ``prefect_audit.ids.lifecycle_key``'s, ~60
characters), are appended to alternately, call by call or batch by batch, so drift and other
load hit both alike. Then B takes the same keyed batches again (every record a duplicate:
nothing appended). Last, the key work an unkeyed batch of 500 still does (scanning it for a
key) is timed on its own. Markdown on stdout, progress on stderr; never fails on slowness.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from dataclasses import replace
from pathlib import Path
from time import perf_counter_ns

from audit_core import AuditConfig, AuditTrail, Event, PreparedRecord
from audit_core.ledgers.sqlite import SqliteLedger
from bench._common import (
    Run,
    Stats,
    interleaved,
    make_events,
    ms,
    parse_bench_args,
    progress,
    table,
    us,
)

BATCH = 500


def _prepare(events: list[Event], keyed: bool) -> list[PreparedRecord]:
    trail = AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", chain="bench"))
    out = []
    for i, event in enumerate(events):
        key = f"flowrun.started:{uuid.UUID(int=i)}:1" if keyed else None
        out.append(trail.prepare(replace(event, key=key)))
    trail.close()
    return out


def single(tmp: Path, n: int, synchronous: str) -> tuple[Stats, Stats]:
    """``append`` of one record a transaction, A unkeyed and B keyed alternating."""
    events = make_events(n)
    plain, keyed = _prepare(events, False), _prepare(events, True)
    a = SqliteLedger(tmp / f"single-a-{synchronous}.db", synchronous=synchronous)
    b = SqliteLedger(tmp / f"single-b-{synchronous}.db", synchronous=synchronous)
    times_a: list[int] = []
    times_b: list[int] = []
    a.append(plain[0])  # warm: connection, schema, frontier cache
    b.append(plain[0])
    for i in range(n):
        for ledger, rec, times in ((a, plain[i], times_a), (b, keyed[i], times_b))[
            :: 1 - 2 * (i & 1)
        ]:
            t0 = perf_counter_ns()
            ledger.append(rec)
            times.append(perf_counter_ns() - t0)
    a.close()
    b.close()
    return Stats.of(times_a), Stats.of(times_b)


def batches(tmp: Path, n: int) -> tuple[float, float, float]:
    """Median ns per batch of 500: unkeyed, keyed, keyed duplicates (nothing appended)."""
    events = make_events(n)
    plain, keyed = _prepare(events, False), _prepare(events, True)
    a, b = SqliteLedger(tmp / "batch-a.db"), SqliteLedger(tmp / "batch-b.db")
    times_a: list[int] = []
    times_b: list[int] = []
    times_dup: list[int] = []
    parts = range(0, n, BATCH)
    for k, start in enumerate(parts):
        pair = ((a, plain, times_a), (b, keyed, times_b))
        for ledger, recs, times in pair[:: 1 - 2 * (k & 1)]:
            t0 = perf_counter_ns()
            got = ledger.append_many(recs[start : start + BATCH])
            times.append(perf_counter_ns() - t0)
            assert len(got) == min(BATCH, n - start)
    for start in parts:
        t0 = perf_counter_ns()
        assert [] == b.append_many(keyed[start : start + BATCH])
        times_dup.append(perf_counter_ns() - t0)
    a.close()
    b.close()
    med = Stats.of
    return med(times_a).p50, med(times_b).p50, med(times_dup).p50


def unkeyed_scan() -> float:
    """ns the key feature adds to an unkeyed batch of 500: the scan for a key. The loop is
    ``audit_core.ledgers._frontier.new_keys``'s first pass (a private module, not imported
    here), which returns at once when it finds no key."""
    recs = _prepare(make_events(BATCH), False)

    def scan() -> None:
        for _ in range(100):
            wanted: dict[str, list[str]] = {}
            for rec in recs:
                if rec.key is not None:
                    wanted.setdefault(rec.chain, []).append(rec.key)
            assert not wanted

    return interleaved([("scan", scan)], 21)[0][1] / 100


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    single: dict[str, tuple[Stats, Stats]],
    batches: tuple[float, float, float],
    scan: float,
    n_single: int,
    n_batch: int,
) -> str:
    single_rows = [
        (
            mode,
            ms(a.p50),
            ms(b.p50),
            f"{b.p50 / a.p50:.2f}x",
            ms(a.mean),
            ms(b.mean),
            f"{b.mean / a.mean:.2f}x",
        )
        for mode, (a, b) in single.items()
    ]
    plain, keyed, dup = batches
    return "\n\n".join(
        [
            "# Idempotency keys: append cost on SQLite",
            f"`{command}` — {elapsed_s:.0f} s, load {load[0]} → {load[1]}"
            + (" — **audit_core changed during the run**" if code_changed else ""),
            f"## {n_single:,} single-record transactions, A unkeyed vs B keyed (alternating)",
            table(
                ("synchronous", "A p50", "B p50", "B/A p50", "A mean", "B mean", "B/A mean"),
                single_rows,
            ),
            f"## {n_batch:,} records in batches of {BATCH} (FULL, alternating)",
            table(
                ("batch of 500", "median per batch", "per record", "vs unkeyed"),
                [
                    ("unkeyed", ms(plain), us(plain / BATCH), "1.00x"),
                    ("keyed, new", ms(keyed), us(keyed / BATCH), f"{keyed / plain:.2f}x"),
                    ("keyed, all duplicates", ms(dup), us(dup / BATCH), f"{dup / plain:.2f}x"),
                ],
            ),
            "## What an unkeyed batch pays",
            f"Scanning an unkeyed batch of {BATCH} for a key (the only key work it does): "
            f"{us(scan)} ({100 * scan / plain:.3f} % of its append).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    run = Run.begin(command)
    n_single, n_batch = (200, 2_000) if args.quick else (1_000, 10_000)
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as d:
        tmp = Path(d)
        results = {}
        for mode in ("FULL", "NORMAL"):
            progress(f"{n_single} single appends, {mode}")
            results[mode] = single(tmp, n_single, mode)
        progress(f"{n_batch} records in batches of {BATCH}")
        batch = batches(tmp, n_batch)
    progress("unkeyed scan")
    run.print_report(
        render,
        single=results,
        batches=batch,
        scan=unkeyed_scan(),
        n_single=n_single,
        n_batch=n_batch,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
