"""Benchmark of shipping to OTLP: records/s through ``OtlpSink``, where the time goes, and
``record()`` latency while a shipper runs against a dead or a live endpoint.

Run from the repository root (full mode ~1-2 minutes, ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_ship_otlp.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_ship_otlp.py --quick    # smoke test, small sizes

Same conventions as ``bench_core.py`` (helpers shared in ``bench/_common.py``): Markdown on
stdout, progress on stderr, goals table first (≥ 10,000 records/s shipped to OTLP), numbers and
ratios only.

Method: a ledger of N task records (``make_events``' ~500-byte events, half of them with trace
ids) is shipped with ``Shipper(ledger, OtlpSink(...)).ship_once()`` in batches of 1,000, to the
OTLP/HTTP receiver of testkit/otlp.py (the tests' too) in its own process on 127.0.0.1:
it decodes every ``ExportLogsServiceRequest`` with opentelemetry-proto and counts distinct
(audit.chain, audit.seq) pairs, so "all arrived" is checked, not assumed. Each round uses a
fresh receiver on a new port: a new sink name, so a new cursor, so the whole chain again.
The rotel rows put the rotel OTLP agent (the ``rotel`` wheel) between the sink and the
receiver; there the sink is acknowledged by rotel, and end-to-end is until the receiver has
counted every record. Section 3 runs ``workflow-audit``'s shipper as a separate process (as
``workflow-audit ship`` would) and measures ``record()`` in this one, blocks alternating.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter, perf_counter_ns

from audit_core import AuditTrail, Event
from audit_core.ship import Shipper
from audit_core.sinks.otlp import OtlpSink
from bench._common import (
    LATENCY_HEADER,
    Run,
    Stats,
    machine,
    make_events,
    met,
    open_trail,
    parse_bench_args,
    progress,
    rate,
    sqlite_url,
    table,
    us,
)
from testkit import HOST, free_port
from testkit.otlp import Rotel, rotel_agent

REPO = Path(__file__).resolve().parents[1]

GOAL_SHIP_RPS = 10_000
CHAIN = "bench"
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
#: The shipper process of section 3: follows LEDGER to ENDPOINT until its stdin closes.
SHIPPER = """
import sys, threading
from audit_core import open_ledger
from audit_core.ship import Backoff, Shipper
from audit_core.sinks.otlp import OtlpSink
ledger = open_ledger(sys.argv[1])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
sink = OtlpSink(sys.argv[2], timeout_s=1)
Shipper(ledger, sink, backoff=Backoff(initial_s=0.2, max_s=1)).follow(stop, poll_s=0.2)
"""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    records: int
    rounds: int
    rotel_rounds: int
    breakdown_records: int
    latency_calls: int
    latency_blocks: int


FULL = Sizes(
    records=100_000,
    rounds=3,
    rotel_rounds=2,
    breakdown_records=20_000,
    latency_calls=1_000,
    latency_blocks=3,
)
QUICK = Sizes(
    records=10_000,
    rounds=2,
    rotel_rounds=1,
    breakdown_records=5_000,
    latency_calls=200,
    latency_blocks=2,
)


# -- the receiver process ---------------------------------------------------------------------


@dataclasses.dataclass
class Receiver:
    process: subprocess.Popen[str]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=10) as response:  # noqa: S310 - 127.0.0.1
            stats: dict[str, int] = json.loads(response.read())
            return stats

    def wait_for(self, n: int, timeout_s: float) -> float | None:
        """Seconds until ``n`` distinct records arrived, or None."""
        start = perf_counter()
        while perf_counter() - start < timeout_s:
            if self.stats()["distinct"] >= n:
                return perf_counter() - start
            time.sleep(0.01)
        return None


@contextmanager
def receiver() -> Iterator[Receiver]:
    """testkit/otlp.py as a count-only receiver in its own process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.otlp", "--port", str(free_port())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline().split()[1])
        yield Receiver(process, port)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        process.wait(10)


# -- 1. throughput ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ShipRun:
    path: str
    records: int
    seconds: float
    end_to_end_s: float | None
    arrived: int
    requests: int

    @property
    def rps(self) -> float:
        return self.records / self.seconds


def write_ledger(path: Path, n: int) -> AuditTrail:
    """N task records on chain CHAIN, every other one with trace ids."""
    trail = open_trail(path, "NORMAL")
    events = make_events(min(n, 5_000), chain=CHAIN)
    for start in range(0, n, 1_000):
        batch = []
        for i in range(start, min(n, start + 1_000)):
            event = events[i % len(events)]
            batch.append(dataclasses.replace(event, trace=TRACE) if i % 2 else event)
        trail.record_many(batch)
    return trail


def ship_direct(trail: AuditTrail, n: int) -> ShipRun:
    with receiver() as r:
        shipper = Shipper(trail.ledger, OtlpSink(r.endpoint, timeout_s=30), chains=[CHAIN])
        t0 = perf_counter()
        report = shipper.ship_once()
        seconds = perf_counter() - t0
        stats = r.stats()
    assert not report.failed, report
    return ShipRun(
        "sink → receiver", report.shipped, seconds, seconds, stats["distinct"], stats["requests"]
    )


def ship_rotel(trail: AuditTrail, n: int, log: Path) -> ShipRun:
    with receiver() as r:
        agent = Rotel(r.endpoint, log=log).start()
        try:
            shipper = Shipper(trail.ledger, OtlpSink(agent.endpoint, timeout_s=30), chains=[CHAIN])
            t0 = perf_counter()
            report = shipper.ship_once()
            seconds = perf_counter() - t0
            rest = r.wait_for(n, timeout_s=120)
            stats = r.stats()
        finally:
            agent.stop()
    assert not report.failed, report
    end = None if rest is None else seconds + rest
    return ShipRun(
        "sink → rotel → receiver",
        report.shipped,
        seconds,
        end,
        stats["distinct"],
        stats["requests"],
    )


# -- 2. where the time goes -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Breakdown:
    build_ns: float
    encode_ns: float
    send_ns: float
    request_bytes: float


def breakdown(trail: AuditTrail, n: int) -> Breakdown:
    """Per record: SDK log records built by the sink, the SDK's protobuf encoding, the HTTP
    round trip (with the receiver's decoding). Private calls: if they change, fix them here."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    stored = list(trail.ledger.read(CHAIN, 0, n))
    with receiver() as r:
        sink = OtlpSink(r.endpoint, timeout_s=30)
        t0 = perf_counter_ns()
        logs = [sink._log_record(s) for s in stored]
        t1 = perf_counter_ns()
        bodies = [encode_logs(logs[i : i + 1000]).SerializeToString() for i in range(0, n, 1000)]
        t2 = perf_counter_ns()
        for body in bodies:
            assert sink._exporter._client.export(body).success
        t3 = perf_counter_ns()
    return Breakdown(
        (t1 - t0) / n, (t2 - t1) / n, (t3 - t2) / n, sum(map(len, bodies)) / len(bodies)
    )


# -- 3. record() while shipping ---------------------------------------------------------------


VARIANTS = ("no shipper", "shipper, endpoint down", "shipper, endpoint up")


def record_latency(tmp: Path, sizes: Sizes) -> dict[str, Stats]:
    """record() at synchronous=FULL in this process while a shipper process runs (or not)."""
    ledger = tmp / "latency.db"
    trail = open_trail(ledger)
    events = [dataclasses.replace(e, chain="latency") for e in make_events(500)]
    samples: dict[str, list[int]] = {v: [] for v in VARIANTS}
    with receiver() as live:
        dead = f"http://{HOST}:{free_port()}"
        for block in range(sizes.latency_blocks):
            order = VARIANTS if block % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                endpoint = {VARIANTS[1]: dead, VARIANTS[2]: live.endpoint}.get(variant)
                with shipper_process(ledger, endpoint):
                    samples[variant] += _record_calls(trail, events, sizes.latency_calls)
    trail.close()
    return {v: Stats.of(s) for v, s in samples.items()}


@contextmanager
def shipper_process(ledger: Path, endpoint: str | None) -> Iterator[None]:
    if endpoint is None:
        yield
        return
    process = subprocess.Popen(
        [sys.executable, "-c", SHIPPER, sqlite_url(ledger), endpoint],
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # the dead endpoint's failures are logged, loudly
        cwd=REPO,
        text=True,
    )
    time.sleep(1.0)  # imported, and shipping or failing
    try:
        yield
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def _record_calls(trail: AuditTrail, events: Sequence[Event], calls: int) -> list[int]:
    out = []
    for i in range(calls):
        e = events[i % len(events)]
        t0 = perf_counter_ns()
        trail.record(e.type, e.data, subject=e.subject, chain=e.chain)
        out.append(perf_counter_ns() - t0)
    return out


# -- report -----------------------------------------------------------------------------------


def report(
    *,
    command: str,
    host: list[tuple[str, str]],
    sizes: Sizes,
    direct: list[ShipRun],
    via_rotel: list[ShipRun],
    rotel_note: str,
    parts: Breakdown,
    latency: dict[str, Stats],
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
) -> str:
    out: list[str] = []
    add = out.append
    best = max(r.rps for r in direct)
    median = sorted(r.rps for r in direct)[len(direct) // 2]
    add("## OTLP shipping benchmark\n")
    add(f"Command: `{command}`  ")
    add(f"Run time: {elapsed_s:.0f} s\n")
    if code_changed:
        add("**Warning: audit_core changed while this ran. Run again.**\n")
    add(table(("Machine", ""), [*host, ("load average (1 min), start → end", " → ".join(load))]))
    add("\n### Goals\n")
    add(
        table(
            ("Goal", "Target", "Measured (median of rounds)", "Met"),
            [
                (
                    f"Ship {sizes.records:,} records to OTLP/HTTP (receiver on 127.0.0.1)",
                    f"≥ {GOAL_SHIP_RPS:,} records/s",
                    rate(median),
                    met(median >= GOAL_SHIP_RPS),
                )
            ],
        )
    )
    add(f"\n### 1. Ship throughput ({sizes.records:,} records, batches of 1,000)\n")
    add(
        "`Shipper.ship_once()` with `OtlpSink`; *ship* is until the sink was acknowledged for "
        "the last batch (by the receiver, or by rotel), *end to end* until the receiver had "
        "counted every distinct record.\n"
    )
    rows = []
    for run in [*direct, *via_rotel]:
        end = "—" if run.end_to_end_s is None else f"{run.end_to_end_s:.2f} s"
        rows.append(
            (
                run.path,
                f"{run.records:,}",
                f"{run.seconds:.2f} s",
                rate(run.rps),
                end,
                f"{run.arrived:,} ({met(run.arrived == run.records)})",
                f"{run.requests:,}",
            )
        )
    add(
        table(
            ("Path", "Records", "Ship", "Ship rate", "End to end", "Arrived (all?)", "Requests"),
            rows,
        )
    )
    if rotel_note:
        add(f"\n{rotel_note}")
    add(f"\nBest direct round: {rate(best)}.")
    add(f"\n### 2. Where the time goes ({sizes.breakdown_records:,} records, per record)\n")
    total = parts.build_ns + parts.encode_ns + parts.send_ns
    add(
        table(
            ("Step", "Per record", "Share"),
            [
                (
                    "build SDK log records (parse, attributes, trace context)",
                    us(parts.build_ns),
                    f"{parts.build_ns / total:.0%}",
                ),
                (
                    "encode (the SDK's `encode_logs` + protobuf)",
                    us(parts.encode_ns),
                    f"{parts.encode_ns / total:.0%}",
                ),
                (
                    "send: HTTP POST + the receiver's decoding",
                    us(parts.send_ns),
                    f"{parts.send_ns / total:.0%}",
                ),
                ("total", us(total), f"→ {rate(1e9 / total)}"),
            ],
        )
    )
    add(
        f"\nMean request: {parts.request_bytes / 1024:.0f} KiB of protobuf for 1,000 records "
        "(uncompressed)."
    )
    add(
        f"\n### 3. `record()` latency while a shipper runs "
        f"({sizes.latency_calls * sizes.latency_blocks:,} calls each)\n"
    )
    add(
        "synchronous=FULL, in this process; the shipper is a separate process following the "
        "same ledger (as `workflow-audit ship` would), blocks alternating. `record()` never "
        "calls a sink: a dead endpoint only delays shipping.\n"
    )
    add(table(LATENCY_HEADER, [(v, *latency[v].cells()) for v in VARIANTS]))
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    sizes = QUICK if args.quick else FULL
    run = Run.begin(command)
    with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        host = machine(tmp)
        progress(f"writing {sizes.records:,} records")
        trail = write_ledger(tmp / "ship.db", sizes.records)
        direct = []
        for i in range(sizes.rounds):
            progress(f"1. ship to the receiver, round {i + 1}/{sizes.rounds}")
            direct.append(ship_direct(trail, sizes.records))
        via_rotel: list[ShipRun] = []
        rotel_note = ""
        if rotel_agent() is None:
            rotel_note = "rotel rows not run: the `rotel` package is not installed."
        else:
            for i in range(sizes.rotel_rounds):
                progress(f"1. ship through rotel, round {i + 1}/{sizes.rotel_rounds}")
                via_rotel.append(ship_rotel(trail, sizes.records, tmp / "rotel.log"))
        progress("2. where the time goes")
        parts = breakdown(trail, sizes.breakdown_records)
        trail.close()
        progress("3. record() latency while shipping")
        latency = record_latency(tmp, sizes)
    run.print_report(
        report,
        host=host,
        sizes=sizes,
        direct=direct,
        via_rotel=via_rotel,
        rotel_note=rotel_note,
        parts=parts,
        latency=latency,
    )


if __name__ == "__main__":
    main()
