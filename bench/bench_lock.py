"""What a ledger locked for 60 s costs a real Airflow DAG run, and what it loses.

Run from the repository root (about three minutes a round)::

    .venv-airflow/bin/python bench/bench_lock.py              # 2 rounds
    .venv-airflow/bin/python bench/bench_lock.py --rounds 3

Method: one throwaway ``AIRFLOW_HOME`` (``airflow db migrate``) with example_dags/; a warm-up
``airflow dags test ml_pipeline`` is discarded; then each round runs it twice, alternating:

- ``unlocked``: a fresh ledger nobody else holds;
- ``locked``: a fresh ledger on which another process took ``BEGIN EXCLUSIVE`` just before the
  run started and holds it for 60 s (the run ends before that: the whole run is locked out).

The wall time of each ``dags test`` process is measured (start to exit, so the exit handler's
work counts too). After the lock is released, ``workflow-audit spool drain`` runs and the run's
records on the chain are counted against the 17 the DAG writes (``records lost``), and
``workflow-audit verify`` checks the chain. Markdown on stdout, progress on stderr; it never
fails because something is slow. For comparison, issue #11 measured ~51 s added before the
breaker and the spool (each hook waited its full 5 s budget; the run's records were lost).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from audit_core import AuditConfig, AuditTrail
from testkit.airflow import home_env

BIN = Path(sys.executable).parent
LOCK_S = 60.0
EXPECTED = 17  # records one ml_pipeline run writes (tests/airflow/_airflow.py ML_TIMELINE)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def airflow_home(root: Path) -> dict[str, str]:
    home = root / "airflow"
    dags = home / "dags"
    dags.mkdir(parents=True)
    env = home_env(home, dags)
    progress("airflow db migrate ...")
    subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, check=True
    )
    return env


def make_ledger(path: Path) -> None:
    """The schema and one record on another chain (so a lock can be taken on the real file)."""
    with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}", checkpoint_every=0)) as trail:
        trail.record("bench.init")


def dags_test(env: dict[str, str], ledger: Path) -> tuple[float, str]:
    run_env = {**env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}"}
    start = time.monotonic()
    done = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", "ml_pipeline"],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - start
    if done.returncode != 0:
        progress(done.stderr[-2000:])
        raise SystemExit(f"dags test failed ({done.returncode})")
    return elapsed, done.stdout + done.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "workflow-audit"), *args], capture_output=True, text=True, check=False
    )


def run_records(ledger: Path, env: dict[str, str]) -> int:
    """Records of the newest ml_pipeline run on the ``airflow`` chain."""
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = 'ml_pipeline' ORDER BY id DESC"
        ).fetchone()
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        bodies = [b for (b,) in db.execute("SELECT body FROM records WHERE chain = 'airflow'")]
    # asset.updated carries no run_id: count it with its run (one run per ledger here)
    return sum(1 for b in bodies if run_id.encode() in b or b'"asset.updated"' in b)


def locked_round(env: dict[str, str], ledger: Path) -> dict[str, object]:
    make_ledger(ledger)
    locker = subprocess.Popen(
        [sys.executable, "-c", (
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(ledger)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True)\n"
            f"time.sleep({LOCK_S}); c.execute('ROLLBACK')\n")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    locked_at = time.monotonic()
    elapsed, output = dags_test(env, ledger)
    on_chain_during = run_records(ledger, env)
    progress(f"  locked run {elapsed:.1f}s; waiting for the lock ({LOCK_S:.0f}s) to go")
    locker.wait(timeout=LOCK_S + 60)
    held = time.monotonic() - locked_at
    drained = cli("spool", "drain", "--ledger", str(ledger))
    on_chain = run_records(ledger, env)
    verified = cli("verify", "--ledger", str(ledger))
    return {
        "elapsed": elapsed,
        "held": held,
        "during": on_chain_during,
        "on_chain": on_chain,
        "lost": EXPECTED - on_chain,
        "verify": verified.returncode,
        "drain": drained.stdout.strip(),
        "abandoned": "abandoned" in output,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-lock-"))
    try:
        env = airflow_home(root)
        progress("warm-up run ...")
        dags_test(env, root / "warmup.db")
        free: list[float] = []
        locked: list[dict[str, object]] = []
        for n in range(args.rounds):
            progress(f"round {n + 1}: unlocked ...")
            free.append(dags_test(env, root / f"free-{n}.db")[0])
            progress(f"round {n + 1}: locked ...")
            locked.append(locked_round(env, root / f"locked-{n}.db"))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print("## 60 s lock: added wall time per DAG run, records lost\n")
    print(
        f"`.venv-airflow/bin/python bench/bench_lock.py --rounds {args.rounds}`; "
        f"load average at the end: {os.getloadavg()[0]:.2f}\n"
    )
    print(
        "| round | unlocked (s) | locked (s) | added (s) | on chain during the lock | "
        "records on chain after drain | records lost | verify exit | 'abandoned' logged |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, (f, r) in enumerate(zip(free, locked, strict=True), 1):
        added = float(r["elapsed"]) - f  # type: ignore[arg-type]
        print(
            f"| {n} | {f:.1f} | {r['elapsed']:.1f} | {added:+.1f} | {r['during']} | "
            f"{r['on_chain']} / {EXPECTED} | {r['lost']} | {r['verify']} | {r['abandoned']} |"
        )
    added_all = [float(r["elapsed"]) - f for f, r in zip(free, locked, strict=True)]  # type: ignore[arg-type]
    print(
        f"\nmedian added wall time: {statistics.median(added_all):+.1f} s per DAG run "
        f"(issue #11 before: ~51 s); records lost: {sum(int(r['lost']) for r in locked)}"  # type: ignore[call-overload]
    )
    for r in locked:
        print(f"\n- drain: {r['drain']}")


if __name__ == "__main__":
    main()
