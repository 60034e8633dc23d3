"""What the benchmarks share: latency statistics and Markdown tables, realistic task events,
the machine and code a report was measured on, interleaved timing of steps, a ledger built fast
with ``append_many``, ``verify_chain`` in a fresh interpreter, and the options and report
header every script has (``--quick``, ``--tmpdir``, command line, load average).

Imported by the scripts as ``bench._common`` (the repository root is on ``sys.path`` in the
project's virtualenvs through its editable install, as for ``audit_core`` and ``testkit``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from time import perf_counter, perf_counter_ns
from typing import TypeVar

import orjson

import audit_core
from audit_core import AuditConfig, AuditTrail, Event

ACTOR = ("service", "airflow-scheduler")
BUILD_BATCH = 5_000

T = TypeVar("T")


# -- statistics and formatting --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Stats:
    """Latency summary of one operation, in nanoseconds."""

    n: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, samples_ns: Sequence[int]) -> Stats:
        ordered = sorted(samples_ns)
        return cls(
            n=len(ordered),
            p50=_rank(ordered, 50),
            p90=_rank(ordered, 90),
            p99=_rank(ordered, 99),
            max=float(ordered[-1]),
            mean=statistics.fmean(ordered),
        )

    def cells(self) -> tuple[str, str, str, str, str]:
        """p50, p90, p99, max and mean, in milliseconds."""
        return (ms(self.p50), ms(self.p90), ms(self.p99), ms(self.max), ms(self.mean))


LATENCY_HEADER = ("Operation", "p50", "p90", "p99", "max", "mean")


def _rank(ordered: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of sorted samples."""
    index = max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))
    return float(ordered[int(index)])


def ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


def us(ns: float) -> str:
    return f"{ns / 1e3:.2f} µs"


def rate(per_second: float) -> str:
    return f"{per_second:,.0f}/s"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- realistic events -----------------------------------------------------------------------------

_DAGS = ("ml_training_pipeline", "daily_sales_etl", "customer_churn_scoring", "s3_to_dwh_sync")
_TASKS = ("extract_orders", "build_features", "train_model", "evaluate_model", "publish_report")
_OPERATORS = ("PythonOperator", "KubernetesPodOperator", "SnowflakeOperator", "BashOperator")
_STATES = {
    "task.started": "running",
    "task.succeeded": "success",
    "task.failed": "failed",
    "task.retried": "up_for_retry",
}


def make_events(n: int, *, seed: int = 20261128, chain: str | None = None) -> list[Event]:
    """Task events as an Airflow adapter would record them: ~500-byte records, no trace."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        dag, task = rng.choice(_DAGS), rng.choice(_TASKS)
        day = f"2026-11-{rng.randint(1, 28):02d}"
        event_type = rng.choice(tuple(_STATES))
        # Floats that orjson writes as ECMAScript would (never "12.0" or an exponent), so the
        # fast canonical path is measured here; the slow path is measured on its own (section 4).
        duration = round(rng.uniform(0.5, 900.0), 3)
        if duration == int(duration):
            duration += 0.125
        events.append(
            Event(
                type=event_type,
                subject={
                    "dag_id": dag,
                    "task_id": task,
                    "run_id": f"scheduled__{day}T00:00:00+00:00",
                    "try_number": rng.randint(1, 3),
                    "map_index": rng.choice((-1, -1, -1, rng.randint(0, 63))),
                },
                data={
                    "state": _STATES[event_type],
                    "operator": rng.choice(_OPERATORS),
                    "hostname": f"airflow-worker-{rng.randint(0, 7)}",
                    "pool": "default_pool",
                    "duration_s": duration,
                    "rows_out": rng.randint(0, 5_000_000),
                },
                chain=chain,
            )
        )
    return events


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path gives sqlite:////abs/path, as documented


def open_trail(path: Path, synchronous: str = "FULL") -> AuditTrail:
    return AuditTrail(
        AuditConfig(ledger_url=sqlite_url(path), synchronous=synchronous, actor=ACTOR)
    )


# -- machine --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else "unknown"


def _filesystem(path: Path) -> str:
    """The mount point and type holding ``path`` (fsync cost depends on it)."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    resolved = str(path.resolve())
    best = ("", "unknown")
    for point, kind in mounts:
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best[0]):
            best = (point, kind)
    return f"{best[0]} ({best[1]})"


def source_fingerprint() -> str:
    """Which audit_core was measured: the tree has no commit to name, and it changes often."""
    root = Path(audit_core.__file__).parent
    files = sorted(root.rglob("*.py"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    newest = dt.datetime.fromtimestamp(max(f.stat().st_mtime for f in files), dt.timezone.utc)
    return (
        f"sha256 {digest.hexdigest()[:12]} of {len(files)} files under {relative(str(root))}, "
        f"newest changed {newest:%Y-%m-%d %H:%M} UTC"
    )


def machine(tmp: Path) -> list[tuple[str, str]]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        ("CPU", f"{_cpu_model()}; nproc {os.cpu_count()} (usable {affinity})"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("SQLite", sqlite3.sqlite_version),
        ("orjson", orjson.__version__),
        ("rfc8785", importlib.metadata.version("rfc8785")),
        ("workflow-audit", f"{audit_core.__version__}; {source_fingerprint()}"),
        ("ledger directory", f"{tmp} on {_filesystem(tmp)}"),
    ]


# -- timing ---------------------------------------------------------------------------------------


def each(fn: Callable[[T], object], items: Sequence[T]) -> Callable[[], None]:
    """A step that calls ``fn`` on every item and keeps no result, like a streaming loop
    (a list comprehension would keep thousands of objects alive and inflate GC time)."""

    def run() -> None:
        for item in items:
            fn(item)

    return run


def interleaved(
    steps: Sequence[tuple[str, Callable[[], object]]], rounds: int
) -> list[tuple[str, float]]:
    """Run every step once per round, rotating the order; median ns per step."""
    times: dict[str, list[int]] = {name: [] for name, _ in steps}
    for r in range(rounds):
        for k in range(len(steps)):
            name, fn = steps[(k + r) % len(steps)]
            gc.collect()
            t0 = perf_counter_ns()
            fn()
            times[name].append(perf_counter_ns() - t0)
    return [(name, statistics.median(times[name])) for name, _ in steps]


# -- ledgers and verification ---------------------------------------------------------------------

# Runs in a fresh interpreter so that its peak RSS is the verifier's alone. Peak = VmHWM after
# verify_chain; baseline = VmRSS just before it (imports done, ledger opened). RUSAGE_CHILDREN
# in the parent would be the maximum over all children so far, so a 100k run after a 1M run
# could not be told apart.
_VERIFY_CHILD = """
import json, resource, sys, time
from audit_core import verify_chain
from audit_core.ledgers.sqlite import SqliteLedger

def status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

ledger = SqliteLedger(sys.argv[1], create=False)
before = status_kib("VmRSS")
w0, c0 = time.perf_counter(), time.process_time()
head = verify_chain(ledger, sys.argv[2])
w1, c1 = time.perf_counter(), time.process_time()
peak = status_kib("VmHWM")
print(json.dumps({"size": head.size, "wall_s": w1 - w0, "cpu_s": c1 - c0,
                  "rss_before_kib": before, "peak_kib": peak}))
"""


@dataclasses.dataclass(frozen=True, slots=True)
class ChildRun:
    size: int
    wall_s: float
    cpu_s: float
    rss_before_kib: int
    peak_kib: int

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.rss_before_kib


def build_ledger(path: Path, chains: Sequence[tuple[str, int]]) -> float:
    """Write the chains in transactions of BUILD_BATCH records; returns records/s.

    Each chain's BUILD_BATCH events are prepared once and the same prepared records are
    appended again and again: ``ledger.append_many`` is what ``record_many`` does after
    ``prepare``, and it seals every copy with its own seq and prev, so the chain is valid and
    the build takes seconds instead of minutes (``prepare`` is measured in sections 1 and 2).
    """
    total = sum(n for _, n in chains)
    written = 0
    t0 = perf_counter()
    with open_trail(path) as trail:
        for chain, n in chains:
            pool = [trail.prepare(e) for e in make_events(BUILD_BATCH, seed=n, chain=chain)]
            for start in range(0, n, BUILD_BATCH):
                count = min(BUILD_BATCH, n - start)
                trail.ledger.append_many(pool[:count])
                written += count
                if written % 200_000 == 0:
                    progress(f"  built {written:,} / {total:,} records")
    return total / (perf_counter() - t0)


def verify_child(path: Path, chain: str) -> ChildRun:
    out = subprocess.run(
        [sys.executable, "-c", _VERIFY_CHILD, str(path), chain],
        check=True,
        capture_output=True,
        text=True,
    )
    return ChildRun(**json.loads(out.stdout))


def build_copies(path: Path, records: int, event: Event, *, checkpoint_every: int) -> None:
    """A chain of ``records`` copies of ``event`` at synchronous=OFF (``append_many`` of
    BUILD_BATCH at a time), a signed checkpoint every ``checkpoint_every`` records and one at
    the end."""
    config = AuditConfig(
        ledger_url=sqlite_url(path), synchronous="OFF", checkpoint_every=0, actor=("bench", "b")
    )
    with AuditTrail(config) as trail:
        batch = [trail.prepare(event)] * BUILD_BATCH
        for done in range(0, records, len(batch)):
            trail.ledger.append_many(batch[: records - done])
            if (done + len(batch)) % checkpoint_every == 0:
                trail.checkpoint()
        trail.checkpoint()


#: The records/s of the summary line ``workflow-audit verify`` writes to stderr.
_VERIFY_RATE = re.compile(r"([\d,]+) records/s")


def verify_cli(path: Path, jobs: int) -> tuple[int, int, str]:
    """``workflow-audit verify --jobs JOBS`` on the ledger at ``path``: (exit code, records/s
    from its summary line or 0, first line of stderr)."""
    cli = Path(sys.executable).with_name("workflow-audit")
    run = subprocess.run(
        [str(cli), "verify", "--ledger", sqlite_url(path), "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = _VERIFY_RATE.search(run.stderr)
    rate = int(found.group(1).replace(",", "")) if found else 0
    return run.returncode, rate, run.stderr.strip().splitlines()[0] if run.stderr.strip() else ""


# -- command line and report header -----------------------------------------------------------


def parse_bench_args(
    doc: str | None, script: str, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, str]:
    """The options every bench script takes, and the command line to print in its report."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s), smoke test")
    parser.add_argument(
        "--tmpdir", type=Path, default=None, help="parent of the temporary ledger directory"
    )
    args = parser.parse_args(argv)
    quick = ["--quick"] if args.quick else []
    return args, " ".join([relative(sys.executable), relative(script), *quick])


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    """What every report states besides its numbers: the command line, the time taken, whether
    ``audit_core`` changed while it ran, and the load average at the start and the end."""

    command: str
    started: float
    fingerprint: str
    load_start: str

    @classmethod
    def begin(cls, command: str) -> Run:
        return cls(command, perf_counter(), source_fingerprint(), load_average())

    def print_report(self, render: Callable[..., str], **sections: object) -> None:
        """Print ``render(**sections)`` with ``command``, ``elapsed_s``, ``code_changed`` and
        ``load`` added."""
        print(
            render(
                command=self.command,
                elapsed_s=perf_counter() - self.started,
                code_changed=source_fingerprint() != self.fingerprint,
                load=(self.load_start, load_average()),
                **sections,
            )
        )


def load_average() -> str:
    """1-minute load average: other work on a 2-core machine shows in every number."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "?"


def relative(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
