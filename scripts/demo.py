"""`make demo`: real Airflow runs of the example DAGs write the audit trail; then the
`workflow-audit` CLI checkpoints, verifies, reports, proves one record, and catches a tamper.

Everything lives in .demo/ in the repository and is recreated on every run:

- .demo/airflow       a throw-away AIRFLOW_HOME (airflow.cfg, the SQLite metadata database)
- .demo/ledger.db     the audit ledger (chain 'airflow'); .key / .key.pub beside it
- .demo/ml_pipeline   the example DAGs' synthetic data lake and "model registry"
- .demo/logs          Airflow's output, one file per command
- .demo/tampered.db   a copy of the ledger with one record edited

Airflow runs with a cleaned environment (no inherited AIRFLOW_* or WORKFLOW_AUDIT_*
variables), so the demo never touches a real Airflow installation or ledger. No network
access beyond loopback: `airflow dags test` runs the DAG in-process against SQLite.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from audit_core import Record, open_ledger

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin/: airflow and workflow-audit
CHAIN = "airflow"  # the chain the Airflow plugin writes to
AIRFLOW_TIMEOUT_S = 300.0  # a hung Airflow command fails the demo instead of blocking it

# `airflow dags test` exits 1 when the DAG run fails, and also when the DAG cannot be found
# or parsed; the run's end as recorded on the audit trail tells the two apart.
EXIT_DAG_RUN_FAILED = 1
EXIT_VERIFY_INVALID = 1  # `workflow-audit verify`: 1 means the trail is invalid


class DemoError(Exception):
    """A step did not do what the demo expects; the message says what and where to look."""


@dataclass(frozen=True, slots=True)
class Demo:
    """The paths every step shares (absolute: Airflow and the CLI must name the same files)."""

    root: Path = REPO / ".demo"

    @property
    def airflow_home(self) -> Path:
        return self.root / "airflow"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def ml_home(self) -> Path:
        return self.root / "ml_pipeline"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def ledger_url(self) -> str:
        return f"sqlite:///{self.ledger}"

    @property
    def verifier_key(self) -> Path:
        # `workflow-audit checkpoint` signs with <ledger>.key, created on first use, and
        # writes the verifier key beside it (audit_core.checkpoint.write_key_files).
        return self.ledger.with_name(self.ledger.name + ".key.pub")

    @property
    def tampered(self) -> Path:
        return self.root / "tampered.db"


Step = Callable[[Demo], None]


# -- helpers ------------------------------------------------------------------------------


def _rel(path: Path) -> str:
    """``path`` relative to the repository, for short messages."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _say(line: str) -> None:
    print(line, flush=True)


def _clean_env() -> dict[str, str]:
    """This process's environment without Airflow's or workflow-audit's settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "WORKFLOW_AUDIT_"))}


def _airflow_env(demo: Demo) -> dict[str, str]:
    return {
        **_clean_env(),
        "AIRFLOW_HOME": str(demo.airflow_home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "example_dags"),
        # The plugin's default would be $AIRFLOW_HOME/workflow_audit/ledger.db; naming the
        # ledger here keeps the plugin and the CLI on the same file.
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": demo.ledger_url,
        "AIRFLOW__WORKFLOW_AUDIT__CHAIN": CHAIN,
        "WORKFLOW_AUDIT_LEDGER": demo.ledger_url,
        "ML_PIPELINE_HOME": str(demo.ml_home),
    }


def _airflow(demo: Demo, args: Sequence[str], log_name: str) -> tuple[int, float, Path]:
    """Run ``airflow ARGS`` with its output in a log file; (exit code, seconds, log)."""
    log = demo.logs / log_name
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                [str(BIN / "airflow"), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
                env=_airflow_env(demo),
                timeout=AIRFLOW_TIMEOUT_S,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired as exc:
            raise DemoError(
                f"airflow {shlex.join(args)} did not finish in {AIRFLOW_TIMEOUT_S:.0f} s; "
                f"see {_rel(log)}"
            ) from exc
    return code, time.perf_counter() - started, log


def _cli(*args: str, expect: int = 0) -> None:
    """Run ``workflow-audit ARGS`` in front of the user; fail unless it exits with ``expect``."""
    _say(f"\n$ workflow-audit {shlex.join(args)}")
    code = subprocess.run(
        [str(BIN / "workflow-audit"), *args],
        cwd=REPO,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    ).returncode
    sys.stdout.flush()
    if code != expect:
        raise DemoError(f"workflow-audit {args[0]} exited with {code}, expected {expect}")
    if expect != 0:
        _say(f"(exit code {code}, as expected)")


def _records(demo: Demo, dag_id: str | None = None) -> list[Record]:
    """The records on the Airflow chain, of one DAG if given."""
    if not demo.ledger.exists():
        raise DemoError(f"no ledger at {_rel(demo.ledger)}: the Airflow plugin wrote nothing")
    ledger = open_ledger(demo.ledger_url)
    try:
        records = [Record.from_stored(stored) for stored in ledger.read(CHAIN)]
    finally:
        ledger.close()
    return [r for r in records if dag_id is None or r.subject.get("dag_id") == dag_id]


def _dag_run_end(demo: Demo, dag_id: str, log: Path) -> tuple[Record, list[Record]]:
    """The DAG run's dagrun.succeeded/failed record, and all of the DAG's records."""
    records = _records(demo, dag_id)
    ends = [r for r in records if r.event in ("dagrun.succeeded", "dagrun.failed")]
    if not ends:
        raise DemoError(
            f"no dagrun.succeeded or dagrun.failed record of {dag_id} on the audit trail; "
            f"see {_rel(log)}"
        )
    return ends[-1], records


def _model_deployed(demo: Demo) -> Record:
    """The last model.deployed record: the one the proof and the tamper are about."""
    deployed = [r for r in _records(demo) if r.event == "model.deployed"]
    if not deployed:
        raise DemoError("no model.deployed record on the audit trail")
    return deployed[-1]


# -- steps --------------------------------------------------------------------------------


def reset(demo: Demo) -> None:
    """Start from an empty .demo/, so every run is the same."""
    shutil.rmtree(demo.root, ignore_errors=True)
    demo.logs.mkdir(parents=True)
    _say(
        f"fresh {_rel(demo.root)}/: AIRFLOW_HOME={_rel(demo.airflow_home)}, "
        f"ledger {demo.ledger_url} (chain {CHAIN!r}), Airflow logs in {_rel(demo.logs)}/"
    )


def airflow_db_migrate(demo: Demo) -> None:
    """Create Airflow's metadata database in the throw-away AIRFLOW_HOME."""
    code, seconds, log = _airflow(demo, ["db", "migrate"], "airflow-db-migrate.log")
    if code != 0:
        raise DemoError(f"airflow db migrate exited with {code}; see {_rel(log)}")
    _say(f"airflow db migrate: ok in {seconds:.1f} s (log {_rel(log)})")


def airflow_run_ml_pipeline(demo: Demo) -> None:
    """Run ml_pipeline, which succeeds after one retry of validate."""
    dag_id = "ml_pipeline"
    code, seconds, log = _airflow(demo, ["dags", "test", dag_id], f"airflow-dags-test-{dag_id}.log")
    if code != 0:
        raise DemoError(f"airflow dags test {dag_id} exited with {code}; see {_rel(log)}")
    end, records = _dag_run_end(demo, dag_id, log)
    if end.event != "dagrun.succeeded":
        raise DemoError(f"{dag_id} exited 0 but the trail says {end.event}; see {_rel(log)}")
    retried = [r.subject.get("task_id") for r in records if r.event == "task.retry_scheduled"]
    _say(
        f"airflow dags test {dag_id}: succeeded in {seconds:.1f} s, {len(records)} records, "
        f"retried: {', '.join(map(str, retried)) or 'none'} (log {_rel(log)})"
    )


def airflow_run_ml_pipeline_bad_data(demo: Demo) -> None:
    """Run ml_pipeline_bad_data, whose run fails on purpose at validate."""
    dag_id = "ml_pipeline_bad_data"
    code, seconds, log = _airflow(demo, ["dags", "test", dag_id], f"airflow-dags-test-{dag_id}.log")
    if code == 0:
        raise DemoError(f"airflow dags test {dag_id} succeeded but must fail; see {_rel(log)}")
    if code != EXIT_DAG_RUN_FAILED:
        raise DemoError(f"airflow dags test {dag_id} exited with {code}; see {_rel(log)}")
    end, records = _dag_run_end(demo, dag_id, log)
    if end.event != "dagrun.failed":
        raise DemoError(f"{dag_id} exited {code} but the trail says {end.event}; see {_rel(log)}")
    tasks = end.data.get("failed_tasks")
    failed = ", ".join(map(str, tasks)) if isinstance(tasks, list) else "?"
    _say(
        f"airflow dags test {dag_id}: failed as intended (exit {code}) in {seconds:.1f} s at "
        f"{failed}, {len(records)} records (log {_rel(log)})"
    )


def checkpoint(demo: Demo) -> None:
    """Sign a checkpoint now: the plugin signs one only every 1000 records or 300 s."""
    _cli("checkpoint", "--ledger", demo.ledger_url)
    if not demo.verifier_key.exists():
        raise DemoError(f"checkpoint wrote no verifier key at {_rel(demo.verifier_key)}")


def verify(demo: Demo) -> None:
    """Verify every record, link and hash, and the checkpoint's signature."""
    _cli("verify", "--ledger", demo.ledger_url, "--key", str(demo.verifier_key))


def report(demo: Demo) -> None:
    """The auditor's report (Markdown), with the verification verdict in it."""
    _cli("report", "--ledger", demo.ledger_url, "--key", str(demo.verifier_key))


def prove_model_deployed(demo: Demo) -> None:
    """Prove the model.deployed record is in the signed tree, then check that offline."""
    seq = _model_deployed(demo).seq
    bundle = demo.ledger.with_name(f"{demo.ledger.name}.proof-{seq}.json")
    _cli(
        "prove", "--ledger", demo.ledger_url, "--chain", CHAIN, "--seq", str(seq), "-o", str(bundle)
    )
    # Offline: only the bundle and the verifier key, not the ledger.
    _cli("verify-proof", str(bundle), "--key", str(demo.verifier_key))


def tamper(demo: Demo) -> None:
    """Edit one record in a copy of the ledger, as someone with write access could, and show
    that verify names it (exit code 1)."""
    deployed = _model_deployed(demo)
    before = deployed.data.get("accuracy")
    after = 0.5 if before == 0.99 else 0.99
    # The ledger runs in WAL mode: copying ledger.db alone would lose the latest records.
    with (
        contextlib.closing(sqlite3.connect(demo.ledger)) as src,
        contextlib.closing(sqlite3.connect(demo.tampered)) as dst,
    ):
        src.backup(dst)
    with contextlib.closing(sqlite3.connect(demo.tampered)) as db, db:
        # The append-only triggers stop mistakes, not someone who can write the file.
        db.execute("DROP TRIGGER records_no_update")
        db.execute(
            "UPDATE records SET body = CAST(json_set(CAST(body AS TEXT), '$.data.accuracy', ?)"
            " AS BLOB) WHERE chain = ? AND seq = ?",
            (after, CHAIN, deployed.seq),
        )
    _say(
        f"\ntamper: copied the ledger to {_rel(demo.tampered)}, dropped its append-only trigger "
        f"and set data.accuracy of the model.deployed record (chain {CHAIN!r} seq "
        f"{deployed.seq}) from {before} to {after}"
    )
    _cli(
        "verify",
        "--ledger",
        f"sqlite:///{demo.tampered}",
        "--key",
        str(demo.verifier_key),
        expect=EXIT_VERIFY_INVALID,
    )


def next_steps(demo: Demo) -> None:
    """Commands to explore the trail further."""
    wa = _rel(BIN / "workflow-audit")
    _say(
        f"\nThe ledger is {demo.ledger_url}; checkpoints are signed with {_rel(demo.ledger)}.key "
        f"(verifier key {_rel(demo.verifier_key)}). Try:\n"
        f"  {wa} show --ledger {demo.ledger_url} --event 'task.*'\n"
        f"  {wa} export --ledger {demo.ledger_url} --format jsonl\n"
        f"  AIRFLOW_HOME={_rel(demo.airflow_home)} {_rel(BIN / 'airflow')} dags list-runs "
        "ml_pipeline"
    )


# The demo, in order. Each step raises DemoError when something is not as expected.
SETUP: tuple[Step, ...] = (reset,)
AIRFLOW: tuple[Step, ...] = (
    airflow_db_migrate,
    airflow_run_ml_pipeline,
    airflow_run_ml_pipeline_bad_data,
)
# Prefect (a later issue) goes here: Prefect lives in .venv-prefect, so its steps will run
# the example flows there as subprocesses, writing to the same ledger on a chain of their own,
# before the ledger steps below checkpoint, verify and report on every chain.
PREFECT: tuple[Step, ...] = ()
LEDGER: tuple[Step, ...] = (
    checkpoint,
    verify,
    report,
    prove_model_deployed,
    tamper,
    next_steps,
)
STEPS: tuple[Step, ...] = (*SETUP, *AIRFLOW, *PREFECT, *LEDGER)


def main() -> int:
    demo = Demo()
    started = time.perf_counter()
    try:
        for step in STEPS:
            step(demo)
    except DemoError as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        return 1
    _say(f"\ndemo done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
