"""`workflow-audit verify` while 8 writers append: verify's records/s, false alarms, writers' rate.

usage: .venv-airflow/bin/python bench/bench_live_verify.py [--records N] [--writers W]
       [--seconds S] [--tmpdir DIR]

Builds a ledger of N records, measures `verify` and `verify --jobs 2` on it alone, then starts W
writer processes (durable `record()`, synchronous=FULL, a checkpoint every 100 records each) and
runs `verify` and `verify --jobs 2` alternately for S seconds. Every run must exit 0: an exit 1
is a false alarm (the records were not tampered with). Prints Markdown: verify's records/s
(from the command's own summary line) idle and under load, the false alarms, and the writers'
records/s during the window. Numbers only; nothing is asserted. About 1-2 minutes by default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from audit_core import Event, open_ledger
from bench._common import build_copies, verify_cli

CHAIN = "default"

# One writer: durable record() calls until SIGTERM, as an Airflow task process would append.
_WRITER = """
import sys
from audit_core import AuditConfig, AuditTrail
trail = AuditTrail(AuditConfig(ledger_url=sys.argv[1], actor=("bench", sys.argv[2]),
                               checkpoint_every=100, busy_timeout_s=60))
subject = {"dag_id": "ml_pipeline", "task_id": "train_" + sys.argv[2], "run_id": "r1"}
sys.stdout.write("started\\n")
sys.stdout.flush()
i = 0
while True:
    trail.record("task.succeeded", {"i": i, "state": "success"}, subject=subject)
    i += 1
"""


#: A task record as the writers append them; the ledger is built of copies of it.
EVENT = Event(
    type="task.succeeded",
    data={"duration_s": 12.5, "rows": 1000, "state": "success", "hostname": "worker-1"},
    subject={"dag_id": "ml_pipeline", "task_id": "train", "run_id": "r0", "try_number": 1},
)


def size(path: Path) -> int:
    ledger = open_ledger(f"sqlite:///{path}", read_only=True)
    try:
        head = ledger.head(CHAIN)
        return 0 if head is None else head.seq + 1
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--tmpdir", default=None, help="directory for the ledger")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-live-", dir=args.tmpdir) as tmp:
        path = Path(tmp) / "ledger.db"
        print(f"building {args.records:,} records…", file=sys.stderr)
        build_copies(path, args.records, EVENT, checkpoint_every=50_000)
        idle: dict[int, list[int]] = {1: [], 2: []}
        for _ in range(2):
            for jobs in (1, 2):
                idle[jobs].append(verify_cli(path, jobs)[1])
        print(f"starting {args.writers} writers…", file=sys.stderr)
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER, f"sqlite:///{path}", f"w{i}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for i in range(args.writers)
        ]
        try:
            for writer in writers:
                assert writer.stdout is not None
                if writer.stdout.readline() != "started\n":
                    raise SystemExit(f"a writer exited with {writer.wait()}")
            start_size, started = size(path), time.perf_counter()
            live: dict[int, list[int]] = {1: [], 2: []}
            codes: dict[int, int] = {}
            alarms: list[str] = []
            while time.perf_counter() - started < args.seconds:
                for jobs in (1, 2):
                    code, rate, first = verify_cli(path, jobs)
                    codes[code] = codes.get(code, 0) + 1
                    if code == 0:
                        live[jobs].append(rate)
                    else:
                        alarms.append(f"--jobs {jobs}: exit {code}: {first[:200]}")
                print(f"  {sum(codes.values())} runs, exits {codes}", file=sys.stderr)
            elapsed = time.perf_counter() - started
            appended = size(path) - start_size
            alive = sum(w.poll() is None for w in writers)
        finally:
            for writer in writers:
                writer.terminate()
            for writer in writers:
                writer.wait()
    runs = sum(codes.values())
    print(f"## verify while {args.writers} writers append ({os.cpu_count()} CPUs)\n")
    print(f"Command: `{Path(sys.executable).name} bench/bench_live_verify.py`\n")
    print(
        f"Ledger: {args.records:,} records at start; {appended:,} appended during the "
        f"{elapsed:.0f} s window by {args.writers} writers ({alive} still running at the end).\n"
    )
    print("| `verify` | idle: records/s per run | idle median | under load: runs | median |")
    print("|---|---|---:|---:|---:|")
    for jobs in (1, 2):
        per_run = " / ".join(f"{v:,}" for v in idle[jobs])
        median = statistics.median(live[jobs]) if live[jobs] else 0
        print(
            f"| `--jobs {jobs}` | {per_run} | {statistics.median(idle[jobs]):,.0f}/s "
            f"| {len(live[jobs])} | {median:,.0f}/s |"
        )
    false_alarms = codes.get(1, 0)
    print(
        f"\nFalse alarms (exit 1 on an untampered ledger): **{false_alarms}** of {runs} runs; "
        f"other failures (exit 2+): {runs - false_alarms - codes.get(0, 0)}."
    )
    print(
        f"Writers: {appended / elapsed:,.0f} records/s in total, "
        f"{appended / elapsed / args.writers:,.1f}/s each (durable `record()`, synchronous=FULL)."
    )
    for alarm in alarms[:5]:
        print(f"\n- {alarm}")


if __name__ == "__main__":
    main()
