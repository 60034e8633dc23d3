"""`workflow-audit verify --jobs 1` vs `--jobs 2` on one large ledger, alternating.

usage: .venv-airflow/bin/python bench/bench_parallel.py [--records N] [--rounds R]

Prints a Markdown table: records/s per round (from the command's own summary line), medians
and the ratio. Numbers only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from audit_core import Event
from bench._common import build_copies, verify_cli

#: An Airflow-like task record; the ledger is built of copies of it.
EVENT = Event(
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


def rate(path: Path, jobs: int) -> int:
    code, records_per_s, first = verify_cli(path, jobs)
    if code != 0 or not records_per_s:
        raise SystemExit(f"verify --jobs {jobs} exited {code}: {first!r}")
    return records_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-parallel-") as tmp:
        path = Path(tmp) / "ledger.db"
        build_copies(path, args.records, EVENT, checkpoint_every=100_000)
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
