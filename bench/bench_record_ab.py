"""Durable ``record()`` latency of this tree against a git revision, in the same run.

Run from the repository root::

    .venv-airflow/bin/python bench/bench_record_ab.py                 # this tree vs HEAD
    .venv-airflow/bin/python bench/bench_record_ab.py --base main~3   # vs any revision
    .venv-airflow/bin/python bench/bench_record_ab.py --rounds 2 --calls 300   # smoke test

Why: a change must not slow the durable ``record()`` (issue #11: "not more than 5 % at p50").
Numbers from different runs on this noisy 2-core machine cannot be compared, so A (the working
tree) and B (``git archive`` of ``--base`` in a temporary directory) run alternately, round by
round, each round in a fresh interpreter that imports its own ``audit_core`` and writes its own
ledger (``synchronous=FULL``, checkpoints every 1,000 records as by default) in one temporary
directory, so both meet the same disk. Markdown goes to stdout; it never fails because
something is slow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The measuring child: imports audit_core from argv[1], writes argv[3] records to argv[2].
_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import audit_core
assert audit_core.__file__.startswith(sys.argv[1]), audit_core.__file__
from audit_core import AuditConfig, AuditTrail
trail = AuditTrail(AuditConfig(ledger_url="sqlite:///" + sys.argv[2], synchronous="FULL"))
data = {"dag_id": "ml_pipeline", "task_id": "train", "rows": 12345, "auc": 0.913,
        "uri": "s3://bucket/datasets/2026-12-01/part-0001.parquet"}
subject = {"dag_id": "ml_pipeline", "task_id": "train", "run_id": "scheduled__2026-12-01",
           "try_number": 1}
for _ in range(int(sys.argv[4])):  # warm-up: imports, the WAL file's growth, caches
    trail.record("task.succeeded", data, subject=subject, actor=("service", "bench"))
out = []
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter_ns()
    trail.record("task.succeeded", data, subject=subject, actor=("service", "bench"))
    out.append((time.perf_counter_ns() - t0) / 1e6)
trail.close()
print(json.dumps(out))
"""


def _export(rev: str, into: Path) -> Path:
    """``git archive REV`` unpacked into ``into``; returns the tree's root."""
    archive = into / "base.tar"
    git = shutil.which("git") or "git"
    subprocess.run(
        [git, "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), rev],
        check=True,
    )
    root = into / "base"
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    return root


def _round(python: str, source: Path, ledger: Path, calls: int, warmup: int) -> list[float]:
    done = subprocess.run(
        [python, "-c", _CHILD, str(source), str(ledger), str(calls), str(warmup)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ledger.parent,  # not the repository: its audit_core must not shadow argv[1]
        env={k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")},
    )
    return list(json.loads(done.stdout))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare with (HEAD)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side (6)")
    parser.add_argument("--calls", type=int, default=2000, help="timed calls per round (2000)")
    parser.add_argument("--warmup", type=int, default=500, help="untimed calls first (500)")
    parser.add_argument("--tmpdir", default=None, help="parent of the ledgers' directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        base = _export(args.base, Path(tmp))
        sides = {"A (this tree)": REPO, f"B ({args.base})": base}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.rounds):
            for name, source in sides.items():
                ledger = Path(tmp) / f"{name[0]}-{i}.db"
                times[name] += _round(sys.executable, source, ledger, args.calls, args.warmup)
                print(f"round {i + 1}/{args.rounds} {name} done", file=sys.stderr)
    print(f"## Durable `record()`: this tree vs `{args.base}`\n")
    print(
        f"`{' '.join(['python', 'bench/bench_record_ab.py', *sys.argv[1:]])}` — "
        f"{args.rounds} alternating rounds x {args.calls} calls per side, FULL, fresh "
        f"interpreter and ledger per round; load average at the end {os.getloadavg()[0]:.2f}\n"
    )
    print("| side | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {_pct(values, 0.5):.3f} | {_pct(values, 0.9):.3f} | "
            f"{_pct(values, 0.99):.3f} | {statistics.fmean(values):.3f} |"
        )
    a, b = times.values()
    print(
        f"\np50 ratio A/B: **{_pct(a, 0.5) / _pct(b, 0.5):.3f}**; "
        f"p99 ratio A/B: {_pct(a, 0.99) / _pct(b, 0.99):.3f}"
    )


if __name__ == "__main__":
    main()
