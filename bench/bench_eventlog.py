"""Airflow's event log onto the events chain: backfill throughput and ingestion lag.

Run from the repository root (full mode takes about three minutes, ``--quick`` about one)::

    .venv-airflow/bin/python bench/bench_eventlog.py            # numbers for BENCHMARKS.md
    .venv-airflow/bin/python bench/bench_eventlog.py --quick    # 1,000 rows, 15 calls

Markdown goes to stdout, progress to stderr. The script prints numbers and ratios and compares
them with the goals of issue #13 (backfill at least 5,000 log rows/s into SQLite, ingestion lag
p95 at most 5 s in the default setup); it never fails because something is slow.

Method, in one throwaway ``AIRFLOW_HOME`` (``airflow db migrate``, SQLite metadata DB):

- **Backfill**: N real-shaped rows (REST actions with their masked bodies, ``cli_*`` commands
  with their command lines, task state rows: the shapes Airflow 3.3 writes) are inserted into
  ``log`` in one transaction; then ``Ingestor.run()`` (in this process, batch 1000) copies them
  from :class:`airflow_audit.eventlog.AirflowLogSource` into a fresh SQLite ledger, a few
  rounds, each with a fresh ledger; and ``workflow-audit ingest airflow`` does the same in a
  subprocess (its wall time includes the interpreter's and Airflow's import).
- **Lag**: an ``airflow api-server`` on 127.0.0.1 with the plugin's ingester at its defaults
  (``ingest_interval`` 1 s), continuing from the cursor the CLI left; ~50 REST calls that each
  write a ``log`` row (pools, variables, connections) at random intervals (0-1 s apart). The
  ledger is polled read-only every 50 ms; a row's lag is the poll that first saw its record
  minus the row's ``dttm`` (Airflow's commit time, to the microsecond; the record's own ``ts``
  is that ``dttm``, so it cannot measure the lag).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

from airflow_audit.eventlog import AirflowLogSource
from audit_core import AuditConfig, AuditTrail, Record
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.sources import Ingestor
from bench._common import (
    Run,
    Stats,
    machine,
    met,
    ms,
    parse_bench_args,
    progress,
    rate,
    sqlite_url,
    table,
)
from testkit import free_port, terminate
from testkit.airflow import home_env

GOAL_ROWS_PER_S = 5_000.0
GOAL_LAG_P95_S = 5.0
CHAIN = "airflow-events"
BATCH = 1000
ROWS, QUICK_ROWS = 10_000, 1_000
ROUNDS, QUICK_ROUNDS = 3, 1
CALLS, QUICK_CALLS = 50, 15
POLL_S = 0.05
SERVER_START_S = 300.0
CATCH_UP_S = 120.0
PASSWORDS = {"admin": "bench-admin-pw"}
AIRFLOW = Path(sys.executable).with_name("airflow")
WORKFLOW_AUDIT = Path(sys.executable).with_name("workflow-audit")


# -- real-shaped rows -----------------------------------------------------------------------------

_DAGS = ("ml_training_pipeline", "daily_sales_etl", "customer_churn_scoring", "s3_to_dwh_sync")
_TASKS = ("extract_orders", "build_features", "train_model", "evaluate_model", "publish_report")
_USERS = ("alice", "bob", "carol", "deploy-bot")


def _row(rng: random.Random, when: dt.datetime) -> tuple[object, ...]:
    """(dttm, dag_id, task_id, map_index, event, logical_date, run_id, owner,
    owner_display_name, extra, try_number): one row as Airflow 3.3 writes it."""
    dag, task, user = rng.choice(_DAGS), rng.choice(_TASKS), rng.choice(_USERS)
    run = f"manual__2026-11-{rng.randint(1, 28):02d}T00:00:00+00:00"
    stamp = when.strftime("%Y-%m-%d %H:%M:%S.%f")  # naive UTC text, as SQLAlchemy stores it
    kind = rng.random()
    if kind < 0.35:  # a task's state change: Airflow's bookkeeping, owner = the DAG's owner
        state = rng.choice(("running", "success", "failed", "up_for_retry", "queued"))
        extra = json.dumps({"host_name": f"airflow-worker-{rng.randint(0, 7)}"})
        return (stamp, dag, task, rng.choice((-1, -1, 3)), state, None, run, "airflow", None,
                extra, rng.randint(1, 3))  # fmt: skip
    if kind < 0.45:  # a CLI command, its command line unmasked
        argv = ["/opt/airflow/bin/airflow", "variables", "set", f"key_{rng.randint(0, 99)}",
                f"value-{rng.getrandbits(64):x}"]  # fmt: skip
        extra = json.dumps({"host_name": "scheduler-0", "full_command": str(argv)})
        return (stamp, None, None, None, "cli_variables_set", None, None, "airflow", None,
                extra, None)  # fmt: skip
    name, body = rng.choice(
        (
            ("trigger_dag_run", {"dag_run_id": run, "logical_date": None, "conf": {"n": 3}}),
            ("patch_dag", {"is_paused": rng.random() < 0.5}),
            ("clear_dag_run", {"dry_run": False, "only_failed": True}),
            ("patch_task_instance", {"new_state": "failed"}),
            ("post_variable", {"key": "feature_flags", "value": "***"}),
            ("post_connection", {"connection_id": "dwh", "conn_type": "postgres",
                                 "host": "dwh.internal", "password": "***",
                                 "extra": {"sslmode": "***"}}),
            ("post_pool", {"name": "gpu", "slots": 4}),
            ("create_backfill", {"dag_id": dag, "from_date": "2026-11-01T00:00:00Z",
                                 "to_date": "2026-11-08T00:00:00Z"}),
        )
    )  # fmt: skip
    dag_id = dag if name in ("trigger_dag_run", "patch_dag", "clear_dag_run",
                             "patch_task_instance", "create_backfill") else None  # fmt: skip
    run_id = run if name in ("clear_dag_run", "patch_task_instance") else None
    task_id = task if name == "patch_task_instance" else None
    method = "PATCH" if name.startswith("patch") else "POST"
    extra = json.dumps({**body, "method": method})
    return (stamp, dag_id, task_id, None, name, None, run_id, user, user, extra, None)


def insert_rows(db: Path, n: int, *, seed: int = 20261205) -> float:
    """Insert ``n`` rows into ``log`` in one transaction; returns seconds taken."""
    rng = random.Random(seed)
    start = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None) - dt.timedelta(hours=1)
    rows = [_row(rng, start + dt.timedelta(milliseconds=i)) for i in range(n)]
    t0 = perf_counter()
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO log (dttm, dag_id, task_id, map_index, event, logical_date, run_id, "
            "owner, owner_display_name, extra, try_number) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
    return perf_counter() - t0


# -- backfill -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Backfill:
    rows: int
    in_process_s: list[float]
    recorded: int
    gaps: int
    cli_s: float
    cli_idle_s: float  #: the same command with nothing to ingest
    cli_summary: str
    cli_records: int


def backfill(root: Path, env: dict[str, str], db: Path, rows: int, rounds: int) -> Backfill:
    seconds = []
    recorded = gaps = 0
    for r in range(rounds):
        ledger = root / f"backfill-{r}.db"
        config = AuditConfig(ledger_url=sqlite_url(ledger), actor=("process", "bench"))
        source = AirflowLogSource(sqlite_url(db))
        with AuditTrail(config) as trail:
            ingestor = Ingestor(trail, source, chain=CHAIN, batch=BATCH)
            # Once-per-process costs out of the timing (a sidecar pays them once): SQLAlchemy's
            # import and engine (~0.2 s here), the ledger's creation and its first read.
            source.oldest_id()
            ingestor.position()
            t0 = perf_counter()
            result = ingestor.run()
            seconds.append(perf_counter() - t0)
        source.close()
        recorded, gaps = result.recorded, result.gaps
        progress(f"  in-process round {r + 1}: {recorded / seconds[-1]:,.0f} rows/s")
    ledger = root / "ledger.db"
    cli_s, line = _ingest_cli(env, ledger)
    # The same command again, caught up: its time is the fixed cost (interpreter, imports,
    # opening both databases), to tell it from the ingestion.
    idle_s, _ = _ingest_cli(env, ledger)
    return Backfill(recorded, seconds, recorded, gaps, cli_s, idle_s, line, _count(ledger))


def _ingest_cli(env: dict[str, str], ledger: Path) -> tuple[float, str]:
    """``workflow-audit ingest airflow`` into ``ledger``: wall seconds and its last line."""
    t0 = perf_counter()
    done = subprocess.run(
        # The ledger from the environment: --ledger must name an existing one (a typo must
        # not create a ledger), and the first run's is new.
        [str(WORKFLOW_AUDIT), "ingest", "airflow"],
        env={**env, "WORKFLOW_AUDIT_LEDGER": sqlite_url(ledger)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = perf_counter() - t0
    summary = (done.stdout + done.stderr).strip().splitlines()
    return seconds, f"exit {done.returncode}: {summary[-1] if summary else ''}"


def _count(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    db = SqliteLedger(ledger, read_only=True)
    try:
        return sum(1 for _ in db.read(CHAIN))
    finally:
        db.close()


# -- lag ------------------------------------------------------------------------------------------


class Poller:
    """Reads the events chain read-only every POLL_S; notes when each log id first showed."""

    def __init__(self, ledger: Path) -> None:
        self.ledger = ledger
        self.seen: dict[int, float] = {}  # log id -> time.time() of the poll that saw it
        self.next_seq = 0
        self.stop = threading.Event()
        self.errors = 0
        self.thread = threading.Thread(target=self._loop, name="bench-poller", daemon=True)

    def _loop(self) -> None:
        db: SqliteLedger | None = None
        while not self.stop.wait(POLL_S):
            try:
                db = db or SqliteLedger(self.ledger, read_only=True)
                stored = list(db.read(CHAIN, self.next_seq))
            except Exception:  # noqa: BLE001 - a busy or half-created ledger: poll again
                self.errors += 1
                continue
            now = time.time()
            for s in stored:
                record = Record.from_stored(s)
                log_id = record.data.get("log_id")
                if isinstance(log_id, int):
                    self.seen.setdefault(log_id, now)
                self.next_seq = record.seq + 1
        if db is not None:
            db.close()


def _request(url: str, method: str, token: str | None, body: object = None) -> tuple[int, bytes]:
    """Status and body of one request (JSON body, Bearer token); HTTP errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - 127.0.0.1
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=120) as answer:  # noqa: S310 - 127.0.0.1
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_ready(base: str, server: subprocess.Popen[bytes], log: str) -> None:
    """Poll the health endpoint until it answers 200 (the API, not just the socket)."""
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            if _request(base + "/api/v2/monitor/health", "GET", None)[0] == 200:
                return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"api-server not ready (exit {server.poll()}); see {log}")
        time.sleep(0.5)


def _calls(n: int) -> list[tuple[str, str, object]]:
    """``n`` REST calls that each write one ``log`` row, creating and deleting things."""
    out: list[tuple[str, str, object]] = []
    for i in range(n):
        kind = i % 6
        if kind == 0:
            out.append(("POST", "/api/v2/pools", {"name": f"bench_pool_{i}", "slots": 2}))
        elif kind == 1:
            out.append(("DELETE", f"/api/v2/pools/bench_pool_{i - 1}", None))
        elif kind == 2:
            out.append(("POST", "/api/v2/variables", {"key": f"bench_var_{i}", "value": "v"}))
        elif kind == 3:
            out.append(("DELETE", f"/api/v2/variables/bench_var_{i - 1}", None))
        elif kind == 4:
            conn = {"connection_id": f"bench_conn_{i}", "conn_type": "http", "password": "pw"}
            out.append(("POST", "/api/v2/connections", conn))
        else:
            out.append(("DELETE", f"/api/v2/connections/bench_conn_{i - 1}", None))
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class Lag:
    calls: int
    statuses: dict[int, int]
    lags_s: list[float]
    missing: int
    poll_errors: int
    caught_up_s: float


def lag(root: Path, env: dict[str, str], db: Path, n_calls: int, seed: int = 13) -> Lag:
    port = free_port()
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    ledger = root / "ledger.db"  # where the CLI left the cursor
    server_env = {
        **env,
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-bench-" + "b" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": sqlite_url(ledger),
    }
    log = (root / "api-server.log").open("w")
    server = subprocess.Popen(
        [str(AIRFLOW), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    poller = Poller(ledger)
    try:
        base = f"http://127.0.0.1:{port}"
        progress("  waiting for the api-server")
        _wait_ready(base, server, log.name)
        login = {"username": "admin", "password": PASSWORDS["admin"]}
        status, answer = _request(base + "/auth/token", "POST", None, login)
        if status != 201:
            raise RuntimeError(f"login answered {status}: {answer[:200]!r}")
        token = str(json.loads(answer)["access_token"])
        with sqlite3.connect(db) as conn:
            baseline = conn.execute("SELECT MAX(id) FROM log").fetchone()[0] or 0
        poller.thread.start()
        _wait_seen(poller, db, baseline)  # the server's own cli_api_server row, the login
        with sqlite3.connect(db) as conn:
            baseline = conn.execute("SELECT MAX(id) FROM log").fetchone()[0] or 0
        rng = random.Random(seed)
        statuses: dict[int, int] = {}
        progress(f"  {n_calls} REST calls")
        for method, path, body in _calls(n_calls):
            time.sleep(rng.uniform(0.0, 1.0))  # random intervals: the load is the point here
            status, _ = _request(base + path, method, token, body)
            statuses[status] = statuses.get(status, 0) + 1
        t0 = perf_counter()
        missing = _wait_seen(poller, db, baseline)
        caught_up = perf_counter() - t0
    finally:
        poller.stop.set()
        terminate(server, 60)
        log.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, dttm FROM log WHERE id > ?", (baseline,)).fetchall()
    lags = []
    for log_id, dttm in rows:
        written = dt.datetime.fromisoformat(dttm).replace(tzinfo=dt.timezone.utc).timestamp()
        if log_id in poller.seen:
            lags.append(poller.seen[log_id] - written)
    return Lag(n_calls, statuses, lags, missing, poller.errors, caught_up)


def _wait_seen(poller: Poller, db: Path, after: int) -> int:
    """Wait until the poller saw every row of ``log`` after ``after`` (or CATCH_UP_S):
    how many it did not see."""
    deadline = time.monotonic() + CATCH_UP_S
    while True:
        with sqlite3.connect(db) as conn:
            ids = {i for (i,) in conn.execute("SELECT id FROM log WHERE id > ?", (after,))}
        missing = ids - set(poller.seen)
        if not missing or time.monotonic() > deadline:
            return len(missing)
        time.sleep(POLL_S)


# -- report ---------------------------------------------------------------------------------------


def render(
    *,
    command: str,
    elapsed_s: float,
    code_changed: bool,
    load: tuple[str, str],
    host: Sequence[tuple[str, str]],
    insert_s: float,
    fill: Backfill,
    lagged: Lag | None,
    lag_error: str | None,
) -> str:
    per_s = [fill.rows / s for s in fill.in_process_s]
    best = statistics.median(per_s)
    ingest_s = max(fill.cli_s - fill.cli_idle_s, 1e-3)
    lines = [
        "## Event log ingestion (bench/bench_eventlog.py)",
        "",
        f"Command: `{command}`; {elapsed_s:.0f} s; load average {load[0]} → {load[1]}"
        + ("; **audit_core changed during the run**" if code_changed else ""),
        "",
        table(("Machine", ""), host),
        "",
        "### Backfill throughput",
        "",
        f"{fill.rows:,} real-shaped rows inserted into `log` in one transaction "
        f"({insert_s:.2f} s); `Ingestor.run()` in this process, batch {BATCH}, "
        f"a fresh SQLite ledger per round (synchronous FULL, the default), opened and the "
        "source's engine created before the clock starts.",
        "",
        table(
            ("Path", "Time", "Rows/s", f"Goal ≥ {GOAL_ROWS_PER_S:,.0f}/s", "Note"),
            [
                *[
                    (
                        f"in-process, round {i + 1}",
                        f"{s:.2f} s",
                        rate(fill.rows / s),
                        met(fill.rows / s >= GOAL_ROWS_PER_S),
                        "",
                    )
                    for i, s in enumerate(fill.in_process_s)
                ],
                (
                    "in-process, median",
                    "",
                    rate(best),
                    met(best >= GOAL_ROWS_PER_S),
                    f"{fill.recorded:,} recorded, {fill.gaps} gaps",
                ),
                (
                    "`workflow-audit ingest airflow` (subprocess, wall)",
                    f"{fill.cli_s:.2f} s",
                    rate(fill.rows / fill.cli_s),
                    met(fill.rows / fill.cli_s >= GOAL_ROWS_PER_S),
                    f"{fill.cli_records:,} records; {fill.cli_summary}",
                ),
                (
                    "the same, minus a caught-up run's wall (fixed cost)",
                    f"{ingest_s:.2f} s",
                    rate(fill.rows / ingest_s),
                    met(fill.rows / ingest_s >= GOAL_ROWS_PER_S),
                    f"fixed cost {fill.cli_idle_s:.2f} s",
                ),
            ],
        ),
        "",
        f"Ratio to the goal (median in-process): {best / GOAL_ROWS_PER_S:.2f}x; "
        f"CLI wall / in-process median: {fill.cli_s / (fill.rows / best):.2f}x.",
        "",
        "### Ingestion lag (api-server, default interval)",
        "",
    ]
    if lagged is None:
        lines.append(f"Not measured: {lag_error}")
    elif lagged.lags_s:
        st = Stats.of([round(x * 1e9) for x in lagged.lags_s])
        lines += [
            f"{lagged.calls} REST calls 0-1 s apart (statuses {lagged.statuses}); lag = first "
            f"poll (every {POLL_S * 1000:.0f} ms, read-only) that saw the record minus the row's "
            f"`dttm`. {len(lagged.lags_s)} rows measured, {lagged.missing} never seen, "
            f"{lagged.poll_errors} failed polls; the last row seen {lagged.caught_up_s:.1f} s "
            "after the last call returned.",
            "",
            table(
                ("Rows", "p50", "p95", "p99", "max", "mean", f"Goal p95 ≤ {GOAL_LAG_P95_S:.0f} s"),
                [
                    (
                        str(st.n),
                        ms(st.p50),
                        ms(_p95(lagged.lags_s) * 1e9),
                        ms(st.p99),
                        ms(st.max),
                        ms(st.mean),
                        met(_p95(lagged.lags_s) <= GOAL_LAG_P95_S),
                    )
                ],
            ),
        ]
    else:
        lines.append(f"No row seen: {lagged}")
    return "\n".join(lines)


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * 95 // 100) - 1))]


def main(argv: Sequence[str] | None = None) -> None:
    args, command = parse_bench_args(__doc__, __file__, argv)
    n_rows = QUICK_ROWS if args.quick else ROWS
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    n_calls = QUICK_CALLS if args.quick else CALLS
    run = Run.begin(command)
    with tempfile.TemporaryDirectory(prefix="audit-bench-eventlog-", dir=args.tmpdir) as tmp:
        root = Path(tmp)
        home = root / "airflow-home"
        dags = home / "dags"
        dags.mkdir(parents=True)
        env = {**home_env(home, dags), "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": ""}
        host = machine(root)
        progress("airflow db migrate")
        subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, check=True)
        db = home / "airflow.db"
        progress(f"inserting {n_rows:,} log rows")
        insert_s = insert_rows(db, n_rows)
        progress("backfill")
        env["AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL"] = sqlite_url(root / "ledger.db")
        fill = backfill(root, env, db, n_rows, rounds)
        progress("lag")
        lagged, error = None, None
        try:
            lagged = lag(root, env, db, n_calls)
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    run.print_report(
        render, host=host, insert_s=insert_s, fill=fill, lagged=lagged, lag_error=error
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
