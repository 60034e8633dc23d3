"""`workflow-audit verify --jobs 1` vs `--jobs 2` on one large ledger, alternating.

usage: .venv-airflow/bin/python bench/bench_parallel.py [--records N] [--rounds R]

Prints a Markdown table: records/s per round (from the command's own summary line), medians
and the ratio. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from audit_core import AuditConfig, AuditTrail, Event

_RATE = re.compile(r"([\d,]+) records/s")


def build(path: Path, records: int) -> None:
    """A chain of ``records`` Airflow-like task records, a checkpoint every 100,000."""
    config = AuditConfig(
        ledger_url=f"sqlite:///{path}", synchronous="OFF", checkpoint_every=0, actor=("bench", "b")
    )
    with AuditTrail(config) as trail:
        event = Event(
            type="task.succeeded",
            data={"duration_s": 12.5, "rows": 1000, "state": "success", "hostname": "worker-1"},
            subject={
                "dag_id": "ml_pipeline",
                "task_id": "train",
                "run_id": "scheduled__2026-11-28T00:00:00+00:00",
                "try_number": 1,
                "map_index": -1,
            },
        )
        batch = [trail.prepare(event)] * 5_000
        for done in range(0, records, len(batch)):
            trail.ledger.append_many(batch[: records - done])
            if (done + len(batch)) % 100_000 == 0:
                trail.checkpoint()
        trail.checkpoint()


def rate(path: Path, jobs: int) -> int:
    cli = Path(sys.executable).with_name("workflow-audit")
    run = subprocess.run(
        [str(cli), "verify", "--ledger", str(path), "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        check=True,
    )
    found = _RATE.search(run.stderr)
    if found is None:
        raise SystemExit(f"no rate in: {run.stderr!r}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-parallel-") as tmp:
        path = Path(tmp) / "ledger.db"
        build(path, args.records)
        rates: dict[int, list[int]] = {1: [], 2: []}
        for _ in range(args.rounds):
            for jobs in (1, 2):  # alternating: both see the same machine state
                rates[jobs].append(rate(path, jobs))
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"## verify --jobs, {args.records:,} records ({os.cpu_count()} CPUs)\n")
    print(f"Command: `{Path(sys.executable).name} bench/bench_parallel.py`\n")
    print("| `--jobs` | records/s per round | median |\n|---|---|---|")
    for jobs, values in rates.items():
        rounds = " / ".join(f"{v:,}" for v in values)
        print(f"| {jobs} | {rounds} | {statistics.median(values):,.0f}/s |")
    print(f"\n`--jobs 2` / `--jobs 1`: {two / one:.2f}x")


if __name__ == "__main__":
    main()
