"""Benchmarks for ``audit_core``: durable write latency, batched append, verify, canonicalization.

Run from the repository root (full mode takes a few minutes, ``--quick`` under 30 s)::

    .venv-airflow/bin/python bench/bench_core.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_core.py --quick    # smoke test, small sizes

Markdown goes to stdout (paste it into BENCHMARKS.md as is); progress goes to stderr.
The script prints numbers and ratios and compares them with the goals of the performance
issue; it never fails because something is slow.

Method: the machine is small and noisy, so whatever is compared (FULL vs NORMAL, canonical_bytes
vs rfc8785, the stages of verification) is measured in the same run, interleaved call by call or
round by round, and reported as a median. Ledgers live in a TemporaryDirectory (``--tmpdir``
chooses its parent: fsync cost depends on the file system).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import sqlite3
import statistics
import tempfile
import timeit
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from time import perf_counter, perf_counter_ns

import orjson
import rfc8785

from audit_core import (
    AuditConfig,
    AuditTrail,
    Event,
    StoredRecord,
    canonical_bytes,
    genesis,
    leaf_hash,
    normalize,
    verify_chain,
)
from audit_core.ledgers.sqlite import SqliteLedger
from bench._common import (
    ACTOR,
    BUILD_BATCH,
    LATENCY_HEADER,
    ChildRun,
    Run,
    Stats,
    build_ledger,
    each,
    interleaved,
    machine,
    make_events,
    met,
    mib,
    ms,
    open_trail,
    parse_bench_args,
    progress,
    rate,
    table,
    us,
    verify_child,
)

# -- goals (from the performance issue) -----------------------------------------------------------

GOAL_RECORD_P50_MS = 0.3
GOAL_RECORD_P99_MS = 2.0
GOAL_BATCH_RPS = 50_000
GOAL_VERIFY_RPS = 300_000
#: "Flat" verify memory: peak RSS growth at 1M records within this much of the growth at 100k.
#: The records themselves are ~0.5 GB, so anything that grows with the chain shows far beyond it.
FLAT_TOLERANCE_MIB = 8.0

SYNCS = ("FULL", "NORMAL")
#: What canonical_bytes asks orjson for (audit_core/_jcs.py), to split its cost.
CANON_OPTS = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
#: Verify rounds stop early once another round would take the time spent past this budget.
VERIFY_BUDGET_S = 90.0


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each section does."""

    latency_warmup: int
    latency_calls: int
    batch: int
    batch_warmup: int
    batches: int
    verify_small: int
    verify_big: int
    verify_reps: int
    breakdown_records: int
    breakdown_rounds: int
    micro_records: int
    canon_records: int
    canon_rounds: int
    floor_calls: int


FULL = Sizes(
    latency_warmup=300,
    latency_calls=5_000,
    batch=1_000,
    batch_warmup=3,
    batches=30,
    verify_small=100_000,
    verify_big=1_000_000,
    verify_reps=3,
    breakdown_records=200_000,
    breakdown_rounds=3,
    micro_records=20_000,
    canon_records=2_000,
    canon_rounds=7,
    floor_calls=2_000,
)
QUICK = Sizes(
    latency_warmup=50,
    latency_calls=400,
    batch=1_000,
    batch_warmup=1,
    batches=4,
    verify_small=5_000,
    verify_big=50_000,
    verify_reps=1,
    breakdown_records=20_000,
    breakdown_rounds=2,
    micro_records=5_000,
    canon_records=300,
    canon_rounds=3,
    floor_calls=300,
)


# -- 1. durable record() latency ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class LatencyResult:
    record: dict[str, Stats]
    prepare: Stats
    append: dict[str, Stats]
    body_bytes: float
    prepare_parts: list[tuple[str, float]]


def bench_latency(tmp: Path, sizes: Sizes, events: list[Event]) -> LatencyResult:
    """record() with FULL and NORMAL, interleaved call by call, plus prepare/append split."""
    record: dict[str, list[int]] = {s: [] for s in SYNCS}
    append: dict[str, list[int]] = {s: [] for s in SYNCS}
    prepare: list[int] = []
    trails = {s: open_trail(tmp / f"latency-{s.lower()}.db", s) for s in SYNCS}
    clock = perf_counter_ns
    try:
        for i in range(sizes.latency_warmup + sizes.latency_calls):
            keep = i >= sizes.latency_warmup
            e = events[i % len(events)]
            for sync in SYNCS if i % 2 == 0 else SYNCS[::-1]:
                trail = trails[sync]
                t0 = clock()
                trail.record(e.type, e.data, subject=e.subject, trace=e.trace)
                t1 = clock()
                prepared = trail.prepare(e)
                t2 = clock()
                trail.ledger.append(prepared)
                t3 = clock()
                if keep:
                    record[sync].append(t1 - t0)
                    prepare.append(t2 - t1)
                    append[sync].append(t3 - t2)
        bodies = [r.body for r in trails["FULL"].ledger.read("default")]
        parts = prepare_parts(trails["FULL"], events, rounds=5)
    finally:
        for trail in trails.values():
            trail.close()
    return LatencyResult(
        record={s: Stats.of(v) for s, v in record.items()},
        prepare=Stats.of(prepare),
        append={s: Stats.of(v) for s, v in append.items()},
        body_bytes=statistics.fmean(len(b) for b in bodies),
        prepare_parts=parts,
    )


def prepare_parts(trail: AuditTrail, events: list[Event], rounds: int) -> list[tuple[str, float]]:
    """Mean ns per event of the steps of ``AuditTrail.prepare`` that the public API can run
    alone, and of the rest (timestamp, actor, field checks and the record's canonical encoding)
    as the difference; the whole last."""
    limit = trail.config.max_value_bytes
    datas = [normalize(e.data, processors=(), max_value_bytes=limit).value for e in events]
    subjects = [
        normalize(e.subject, processors=(), max_value_bytes=limit, path="subject").value
        for e in events
    ]

    def run_processors() -> None:
        for value in (*datas, *subjects):
            for p in trail.processors:
                value = p(value)

    names = ", ".join(_name(p) for p in trail.processors)
    steps: list[tuple[str, Callable[[], object]]] = [
        (
            "`normalize(data, processors=())` (to JSON, size limit)",
            each(lambda e: normalize(e.data, processors=(), max_value_bytes=limit), events),
        ),
        (
            "`normalize(subject, processors=())`",
            each(
                lambda e: normalize(
                    e.subject, processors=(), max_value_bytes=limit, path="subject"
                ),
                events,
            ),
        ),
        (f"processors ({names}) on data and subject", run_processors),
        ("`canonical_bytes(data)` alone", each(canonical_bytes, datas)),
        ("whole `trail.prepare(event)`", each(trail.prepare, events)),
    ]
    timing = [(name, ns / len(events)) for name, ns in interleaved(steps, rounds)]
    whole = timing[-1][1]
    rest = whole - sum(ns for _, ns in timing[:3])
    # The record's own encoding has no public name of its own: it is what the rest costs.
    label = "the rest: timestamp, actor, field checks, canonical encoding (difference)"
    return [*timing[:3], (label, rest), *timing[3:]]


def _noop(_: object) -> None:
    return None


def _name(fn: Callable[..., object]) -> str:
    return "`" + fn.__qualname__.split(".")[0] + "`"


# -- 2. batched append ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    record_many_ns: dict[str, float]  # median ns per batch
    prepare_ns: float
    append_many_ns: dict[str, float]


def bench_batch(tmp: Path, sizes: Sizes, events: list[Event]) -> BatchResult:
    """record_many() batches with FULL and NORMAL, interleaved, and the prepare/append split."""
    many: dict[str, list[int]] = {s: [] for s in SYNCS}
    append: dict[str, list[int]] = {s: [] for s in SYNCS}
    prepare: list[int] = []
    trails = {s: open_trail(tmp / f"batch-{s.lower()}.db", s) for s in SYNCS}
    clock = perf_counter_ns
    try:
        for r in range(sizes.batch_warmup + sizes.batches):
            start = r * sizes.batch
            chunk = [events[(start + j) % len(events)] for j in range(sizes.batch)]
            keep = r >= sizes.batch_warmup
            for sync in SYNCS if r % 2 == 0 else SYNCS[::-1]:
                trail = trails[sync]
                t0 = clock()
                trail.record_many(chunk)
                t1 = clock()
                prepared = [trail.prepare(e) for e in chunk]
                t2 = clock()
                trail.ledger.append_many(prepared)
                t3 = clock()
                if keep:
                    many[sync].append(t1 - t0)
                    prepare.append(t2 - t1)
                    append[sync].append(t3 - t2)
    finally:
        for trail in trails.values():
            trail.close()
    return BatchResult(
        record_many_ns={s: statistics.median(v) for s, v in many.items()},
        prepare_ns=statistics.median(prepare),
        append_many_ns={s: statistics.median(v) for s, v in append.items()},
    )


# -- 3. verification ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyResult:
    build_rps: float
    file_mib: float
    small: list[ChildRun]
    big: list[ChildRun]
    stages: list[tuple[str, float]]  # cumulative ns per record
    stage_records: int
    micro: list[tuple[str, float]]  # ns per call


def bench_verify(tmp: Path, sizes: Sizes) -> VerifyResult:
    path = tmp / "verify.db"
    progress(
        f"3. building a ledger: chain 'small' {sizes.verify_small:,} + "
        f"'default' {sizes.verify_big:,} records"
    )
    build_rps = build_ledger(path, [("small", sizes.verify_small), ("default", sizes.verify_big)])
    file_mib = sum(p.stat().st_size for p in tmp.glob("verify.db*")) / 2**20
    small: list[ChildRun] = []
    big: list[ChildRun] = []
    spent = 0.0
    for rep in range(sizes.verify_reps):
        progress(f"3. verify_chain in a child process, round {rep + 1}/{sizes.verify_reps}")
        t0 = perf_counter()
        small.append(verify_child(path, "small"))
        big.append(verify_child(path, "default"))
        last = perf_counter() - t0
        spent += last
        if spent + last > VERIFY_BUDGET_S:  # keep a full run within minutes on slow code
            progress(f"3. stopping after {rep + 1} round(s): {spent:.0f} s spent verifying")
            break
    progress(f"3. per-stage verification cost on {sizes.breakdown_records:,} records")
    # A chain of exactly that many records, so that the last stage is verify_chain on all of it.
    stages_path = tmp / "stages.db"
    build_ledger(stages_path, [("default", sizes.breakdown_records)])
    with closing(SqliteLedger(stages_path, create=False)) as stages_ledger:
        stages = verify_stages(stages_ledger, sizes.breakdown_records, sizes.breakdown_rounds)
    ledger = SqliteLedger(path, create=False)
    micro = verify_micro(ledger, sizes.micro_records)
    ledger.close()
    return VerifyResult(
        build_rps=build_rps,
        file_mib=file_mib,
        small=small,
        big=big,
        stages=stages,
        stage_records=sizes.breakdown_records,
        micro=micro,
    )


def verify_stages(ledger: SqliteLedger, n: int, rounds: int) -> list[tuple[str, float]]:
    """Cumulative cost of what verify_chain does, stage by stage, in ns per record, on a
    ledger whose chain ``default`` holds ``n`` records."""
    lhash, loads, canon = leaf_hash, orjson.loads, canonical_bytes

    def read_only() -> None:
        for _ in ledger.read("default", 0, n):
            pass

    def with_hash() -> None:
        for rec in ledger.read("default", 0, n):
            if lhash(rec.body) != rec.hash:
                raise RuntimeError(f"hash mismatch at seq {rec.seq}")

    def with_loads() -> None:
        for rec in ledger.read("default", 0, n):
            if lhash(rec.body) != rec.hash:
                raise RuntimeError(f"hash mismatch at seq {rec.seq}")
            loads(rec.body)

    def with_canonical() -> None:
        for rec in ledger.read("default", 0, n):
            if lhash(rec.body) != rec.hash:
                raise RuntimeError(f"hash mismatch at seq {rec.seq}")
            if canon(loads(rec.body)) != rec.body:
                raise RuntimeError(f"not canonical at seq {rec.seq}")

    def full() -> None:
        if verify_chain(ledger, "default").size != n:
            raise RuntimeError(f"the chain does not hold {n} records")

    steps: list[tuple[str, Callable[[], object]]] = [
        ("SQLite read (iterate `ledger.read`)", read_only),
        ("+ `leaf_hash` (SHA-256) and compare", with_hash),
        ("+ `orjson.loads`", with_loads),
        ("+ `canonical_bytes` re-encode and compare", with_canonical),
        ("full `verify_chain` (+ format checks, prev link, Merkle root)", full),
    ]
    return [(name, ns / n) for name, ns in interleaved(steps, rounds)]


def verify_micro(ledger: SqliteLedger, n: int) -> list[tuple[str, float]]:
    """ns per call of each operation verify_chain does per record, on bodies in memory."""
    recs = list(ledger.read("default", 0, n))
    rows = [(r.seq, r.hash, r.body) for r in recs]
    bodies = [r.body for r in recs]
    values = [orjson.loads(b) for b in bodies]
    digests = [r.hash for r in recs]
    steps: list[tuple[str, Callable[[], object]]] = [
        ("(loop and call overhead)", each(_noop, bodies)),
        ("`StoredRecord(...)` from a row tuple", each(lambda r: StoredRecord("default", *r), rows)),
        ("`leaf_hash(body)`", each(leaf_hash, bodies)),
        ("`orjson.loads(body)`", each(orjson.loads, bodies)),
        ("`canonical_bytes(value)`", each(canonical_bytes, values)),
        ("  ↳ `orjson.dumps(value, SORT_KEYS + STRICT_INTEGER)`", each(_orjson_sorted, values)),
        ("`digest.hex()` (next prev)", each(bytes.hex, digests)),
    ]
    result = [(name, ns / n) for name, ns in interleaved(steps, rounds=5)]
    timing = dict(result)
    derived = timing["`canonical_bytes(value)`"] - timing[steps[5][0]]
    result.insert(6, ("  ↳ the rest: slow-path check (difference)", derived))
    return result


def _orjson_sorted(value: object) -> bytes:
    return orjson.dumps(value, option=CANON_OPTS)


# -- 4. canonicalization --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CanonResult:
    fast_ns: float
    rfc_ns: float
    slow_ns: float
    rfc_slow_ns: float
    fast_identical: int
    slow_identical: int
    n: int
    orjson_differs: int


def bench_canonical(sizes: Sizes, events: list[Event]) -> CanonResult:
    """canonical_bytes vs rfc8785.dumps on the same record dicts, interleaved round by round."""
    with AuditTrail(AuditConfig(ledger_url="sqlite:///:memory:", actor=ACTOR)) as trail:
        prev = genesis("default")
        fast = [
            orjson.loads(trail.prepare(e).seal(i, prev))
            for i, e in enumerate(events[: sizes.canon_records])
        ]
    slow = []
    for i, value in enumerate(fast):
        # 1e16 and 1e-7: orjson writes exponents, ECMAScript does not → the exact encoder runs.
        data = {**value["data"], "max_rows": 1e16 + i * 2, "learning_rate": 1e-7 * (i + 1)}
        slow.append({**value, "data": data})
    differ = sum(_orjson_sorted(v) != canonical_bytes(v) for v in slow)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("fast", each(canonical_bytes, fast)),
        ("rfc", each(rfc8785.dumps, fast)),
        ("slow", each(canonical_bytes, slow)),
        ("rfc_slow", each(rfc8785.dumps, slow)),
    ]
    res = dict(interleaved(steps, sizes.canon_rounds))
    n = len(fast)
    return CanonResult(
        fast_ns=res["fast"] / n,
        rfc_ns=res["rfc"] / n,
        slow_ns=res["slow"] / n,
        rfc_slow_ns=res["rfc_slow"] / n,
        fast_identical=sum(canonical_bytes(v) == rfc8785.dumps(v) for v in fast),
        slow_identical=sum(canonical_bytes(v) == rfc8785.dumps(v) for v in slow),
        n=n,
        orjson_differs=differ,
    )


# -- 5. floors ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class FloorResult:
    sha256_ns: float
    leaf_hash_ns: float
    commit: dict[str, Stats]
    fsync: Stats
    fdatasync: Stats


def bench_floors(tmp: Path, sizes: Sizes) -> FloorResult:
    """SHA-256 of 500 bytes; a bare SQLite WAL commit of one 500-byte row; a raw fsync."""
    payload = random.Random(1).randbytes(500)
    ns = {"sha": hashlib.sha256, "leaf_hash": leaf_hash, "b": payload}
    number = 20_000
    sha = statistics.median(timeit.repeat("sha(b).digest()", globals=ns, number=number, repeat=7))
    leaf = statistics.median(timeit.repeat("leaf_hash(b)", globals=ns, number=number, repeat=7))

    conns = {}
    for sync in SYNCS:
        conn = sqlite3.connect(str(tmp / f"floor-{sync.lower()}.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        conns[sync] = conn
    commit: dict[str, list[int]] = {s: [] for s in SYNCS}
    fsync: list[int] = []
    fdatasync: list[int] = []
    fd = os.open(tmp / "floor.bin", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sync_data = getattr(os, "fdatasync", os.fsync)
    clock = perf_counter_ns
    try:
        warmup = 50
        for i in range(warmup + sizes.floor_calls):
            for sync in SYNCS if i % 2 == 0 else SYNCS[::-1]:
                conn = conns[sync]
                t0 = clock()
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (body) VALUES (?)", (payload,))
                conn.execute("COMMIT")
                if i >= warmup:
                    commit[sync].append(clock() - t0)
            t0 = clock()
            os.write(fd, payload)
            os.fsync(fd)
            t1 = clock()
            os.write(fd, payload)
            sync_data(fd)
            t2 = clock()
            if i >= warmup:
                fsync.append(t1 - t0)
                fdatasync.append(t2 - t1)
    finally:
        os.close(fd)
        for conn in conns.values():
            conn.close()
    return FloorResult(
        sha256_ns=sha / number * 1e9,
        leaf_hash_ns=leaf / number * 1e9,
        commit={s: Stats.of(v) for s, v in commit.items()},
        fsync=Stats.of(fsync),
        fdatasync=Stats.of(fdatasync),
    )


# -- report ---------------------------------------------------------------------------------------


def report(
    *,
    command: str,
    host: list[tuple[str, str]],
    sizes: Sizes,
    lat: LatencyResult,
    batch: BatchResult,
    ver: VerifyResult,
    canon: CanonResult,
    floor: FloorResult,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
) -> str:
    out: list[str] = []
    add = out.append
    full = lat.record["FULL"]
    batch_rps = sizes.batch / batch.record_many_ns["FULL"] * 1e9
    big_rps = statistics.median(r.size / r.wall_s for r in ver.big)
    big_cpu_rps = statistics.median(r.size / r.cpu_s for r in ver.big)
    small_growth = statistics.median(r.growth_kib for r in ver.small)
    big_growth = statistics.median(r.growth_kib for r in ver.big)
    flat = big_growth - small_growth <= FLAT_TOLERANCE_MIB * 1024
    n_small, n_big = ver.small[0].size, ver.big[0].size

    add("## audit_core benchmarks\n")
    add(f"Command: `{command}`  ")
    add(f"Run time: {elapsed_s:.0f} s\n")
    if code_changed:
        add(
            "**Warning: audit_core changed while this ran; the numbers mix two versions "
            "(verify children import it afresh). Run again.**\n"
        )
    add(table(("Machine", ""), [*host, ("load average (1 min), start → end", " → ".join(load))]))
    add("")
    add("### Goals\n")
    add(
        table(
            ("Goal", "Target", "Measured", "Met"),
            [
                (
                    "1. `record()` p50, synchronous=FULL",
                    f"≤ {GOAL_RECORD_P50_MS} ms",
                    ms(full.p50),
                    met(full.p50 <= GOAL_RECORD_P50_MS * 1e6),
                ),
                (
                    "1. `record()` p99, synchronous=FULL",
                    f"≤ {GOAL_RECORD_P99_MS} ms",
                    ms(full.p99),
                    met(full.p99 <= GOAL_RECORD_P99_MS * 1e6),
                ),
                (
                    f"2. `record_many()`, batches of {sizes.batch:,}, FULL, one process",
                    f"≥ {GOAL_BATCH_RPS:,} records/s",
                    rate(batch_rps),
                    met(batch_rps >= GOAL_BATCH_RPS),
                ),
                (
                    f"3. `verify_chain()`, {n_big:,} records, one core",
                    f"≥ {GOAL_VERIFY_RPS:,} records/s",
                    rate(big_rps),
                    met(big_rps >= GOAL_VERIFY_RPS),
                ),
                (
                    f"3. verify peak RSS growth, {n_small:,} → {n_big:,} records",
                    f"flat (within {FLAT_TOLERANCE_MIB:.0f} MiB)",
                    f"{mib(small_growth)} → {mib(big_growth)}",
                    met(flat),
                ),
            ],
        )
    )

    add(f"\n### 1. Durable `record()` latency ({sizes.latency_calls:,} calls each)\n")
    add(
        f"Mean record size {lat.body_bytes:.0f} bytes (task event: subject with dag_id, "
        "task_id, run_id, try_number, map_index; data with state, operator, hostname, pool, "
        "duration_s, rows_out). FULL and NORMAL "
        f"ledgers written alternately, call by call, after {sizes.latency_warmup} warm-up "
        "calls. The split rows call `trail.prepare(event)` then `trail.ledger.append()`.\n"
    )
    rows: list[tuple[str, ...]] = []
    for sync in SYNCS:
        s = lat.record[sync]
        rows.append((f"`record()`, synchronous={sync}", *s.cells()))
    p = lat.prepare
    rows.append(("`trail.prepare()` (normalize + canonicalize)", *p.cells()))
    for sync in SYNCS:
        s = lat.append[sync]
        rows.append((f"`ledger.append()`, synchronous={sync}", *s.cells()))
    add(table(LATENCY_HEADER, rows))
    if lat.prepare_parts:
        whole = lat.prepare_parts[-1][1]
        add("\nWhere `prepare()` spends its time (tight loop, mean per event, median of rounds):\n")
        add(
            table(
                ("Step of `trail.prepare()`", "per event", "share of whole"),
                [(name, us(ns), f"{ns / whole:.0%}") for name, ns in lat.prepare_parts],
            )
        )

    add(f"\n### 2. Batched append (`record_many`, batches of {sizes.batch:,})\n")
    add(
        f"Median of {sizes.batches} batches per mode, FULL and NORMAL alternating. The split "
        "rows prepare the batch, then call `ledger.append_many()`.\n"
    )
    rows = []
    for sync in SYNCS:
        t = batch.record_many_ns[sync]
        rows.append(
            (
                f"`record_many()`, synchronous={sync}",
                ms(t),
                us(t / sizes.batch),
                rate(sizes.batch / t * 1e9),
            )
        )
    t = batch.prepare_ns
    rows.append(
        ("`trail.prepare()` x batch", ms(t), us(t / sizes.batch), rate(sizes.batch / t * 1e9))
    )
    for sync in SYNCS:
        t = batch.append_many_ns[sync]
        rows.append(
            (
                f"`ledger.append_many()`, synchronous={sync}",
                ms(t),
                us(t / sizes.batch),
                rate(sizes.batch / t * 1e9),
            )
        )
    add(table(("Operation", "per batch", "per record", "records/s"), rows))

    add("\n### 3. Verification (`verify_chain`, one process, one core)\n")
    add(
        f"Ledger built in transactions of {BUILD_BATCH:,} records (each chain's "
        f"{BUILD_BATCH:,} prepared records passed to `ledger.append_many` again and again) "
        f"at {rate(ver.build_rps)}; {ver.file_mib:,.0f} MiB for {n_small + n_big:,} records, "
        "in the page cache. Each verify runs in a fresh interpreter; memory = peak RSS "
        "(VmHWM) minus RSS just before `verify_chain`.\n"
    )
    rows = []
    for label, runs in (("small", ver.small), ("default", ver.big)):
        for r in runs:
            rows.append(
                (
                    f"`{label}`",
                    f"{r.size:,}",
                    f"{r.wall_s:.2f} s",
                    rate(r.size / r.wall_s),
                    rate(r.size / r.cpu_s),
                    mib(r.rss_before_kib),
                    mib(r.peak_kib),
                    mib(r.growth_kib),
                )
            )
    add(
        table(
            (
                "Chain",
                "Records",
                "Wall",
                "Records/s (wall)",
                "Records/s (CPU)",
                "RSS before",
                "Peak RSS",
                "Growth",
            ),
            rows,
        )
    )
    add(f"\nMedian for {n_big:,} records: {rate(big_rps)} wall, {rate(big_cpu_rps)} CPU time.")
    add(
        f"\nCost per record, in process, on a ledger of {ver.stage_records:,} records; each "
        "row adds one step to the previous one (median of rounds, stages interleaved; an "
        "added cost within noise can come out slightly negative):\n"
    )
    rows = []
    prev_ns = 0.0
    total_ns = ver.stages[-1][1]
    for name, ns in ver.stages:
        added = ns - prev_ns
        rows.append((name, us(ns), us(added), rate(1e9 / ns), f"{added / total_ns:.0%}"))
        prev_ns = ns
    add(table(("Stage (cumulative)", "per record", "added", "records/s", "share"), rows))
    add(
        "\nThe same operations one by one on records already in memory "
        f"({sizes.micro_records:,} records; ↳ rows are parts of the row "
        "above):\n"
    )
    add(table(("Operation", "per call"), [(name, us(ns)) for name, ns in ver.micro]))

    add(f"\n### 4. Canonicalization ({canon.n:,} record dicts, {sizes.canon_rounds} rounds)\n")
    add(
        "Record dicts parsed from realistic record bodies, as `verify_chain` sees them. Slow "
        "path: the same dicts with `1e16` and `1e-7`-style floats added to `data` "
        f"(sorted orjson output alone differs from RFC 8785 for {canon.orjson_differs:,} of "
        f"these {canon.n:,}, so the exact encoder must run).\n"
    )
    add(
        table(
            (
                "Input",
                "`canonical_bytes`",
                "`rfc8785.dumps`",
                "rfc8785 / canonical_bytes",
                "Same bytes",
            ),
            [
                (
                    "realistic records (fast path)",
                    us(canon.fast_ns),
                    us(canon.rfc_ns),
                    f"{canon.rfc_ns / canon.fast_ns:.1f}x",
                    f"{canon.fast_identical:,} / {canon.n:,}",
                ),
                (
                    "with 1e16 / 1e-7 floats (slow path)",
                    us(canon.slow_ns),
                    us(canon.rfc_slow_ns),
                    f"{canon.rfc_slow_ns / canon.slow_ns:.1f}x",
                    f"{canon.slow_identical:,} / {canon.n:,}",
                ),
            ],
        )
    )
    add(f"\nSlow path costs {canon.slow_ns / canon.fast_ns:.1f}x the fast path.")

    add("\n### 5. Floors\n")
    rows = [
        ("`hashlib.sha256(500 B).digest()`", us(floor.sha256_ns), "—", "—", "—", "—"),
        ("`leaf_hash(500 B)` (0x00 prefix + SHA-256)", us(floor.leaf_hash_ns), "—", "—", "—", "—"),
    ]
    for sync in SYNCS:
        s = floor.commit[sync]
        rows.append((f"bare SQLite WAL commit, 1 x 500 B row, synchronous={sync}", *s.cells()))
    for label, s in (
        ("`os.write` + `os.fsync`, 500 B", floor.fsync),
        ("`os.write` + `os.fdatasync`, 500 B", floor.fdatasync),
    ):
        rows.append((label, *s.cells()))
    add(table(LATENCY_HEADER, rows))
    add(
        "\nSHA-256 rows: median of 7 timeit repeats of 20,000 calls. Others: "
        f"{sizes.floor_calls:,} calls each, interleaved."
    )
    full_floor = floor.commit["FULL"].p50
    add(
        f"\nA bare FULL commit costs {ms(full_floor)} at p50 on this disk, "
        f"{'more' if full_floor > GOAL_RECORD_P50_MS * 1e6 else 'less'} than the "
        f"{GOAL_RECORD_P50_MS} ms goal; `record()` with FULL costs {ms(full.p50)}, "
        f"{full.p50 / full_floor:.2f}x the bare commit ({ms(full.p50 - full_floor)} more)."
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    sizes = QUICK if args.quick else FULL
    run = Run.begin(command)
    events = make_events(2_000)
    with tempfile.TemporaryDirectory(prefix="audit-bench-", dir=args.tmpdir) as tmp_name:
        tmp = Path(tmp_name)
        host = machine(tmp)
        progress("5. floors (sha256, bare SQLite commit, fsync)")
        floor = bench_floors(tmp, sizes)
        progress(f"1. record() latency, {sizes.latency_calls:,} calls x FULL/NORMAL")
        lat = bench_latency(tmp, sizes, events)
        progress(f"2. record_many(), {sizes.batches} batches of {sizes.batch:,} x FULL/NORMAL")
        batch = bench_batch(tmp, sizes, events)
        progress("4. canonical_bytes vs rfc8785")
        canon = bench_canonical(sizes, events)
        ver = bench_verify(tmp, sizes)
    run.print_report(
        report, host=host, sizes=sizes, lat=lat, batch=batch, ver=ver, canon=canon, floor=floor
    )


if __name__ == "__main__":
    main()
