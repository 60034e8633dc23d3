"""Helpers of the Airflow tests: the Airflow home, ledgers' records, API servers."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger

BIN = Path(sys.executable).parent
#: (event, task_id, try_number) of the records one run of example_dags/ml_pipeline.py writes.
ML_TIMELINE = [
    ("task.started", "upload_dataset", 1),
    ("data.uploaded", "upload_dataset", 1),
    ("asset.updated", "upload_dataset", None),
    ("task.succeeded", "upload_dataset", 1),
    ("task.started", "validate", 1),
    ("task.retry_scheduled", "validate", 1),
    ("task.started", "validate", 2),
    ("task.succeeded", "validate", 2),
    ("task.started", "retrain", 1),
    ("model.retrained", "retrain", 1),
    ("task.succeeded", "retrain", 1),
    ("task.started", "evaluate", 1),
    ("model.invoked", "evaluate", 1),
    ("task.succeeded", "evaluate", 1),
    ("task.started", "deploy", 1),
    ("model.deployed", "deploy", 1),
    ("task.succeeded", "deploy", 1),
    ("dagrun.succeeded", None, None),
]
BUNDLED = (
    "example_skip_dag.py",
    "example_nested_branch_dag.py",
    "example_dynamic_task_mapping.py",
    "example_setup_teardown_taskflow.py",
)


@dataclass(frozen=True)
class AirflowHome:
    """A migrated Airflow home and the environment that selects it."""

    path: Path
    env: dict[str, str]
    ledger: Path | None = None  # shared by the api-server and the tests that use it

    def run(
        self, *args: str, ledger: Path | None = None, timeout: float = 240, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run an ``airflow`` command with the plugin writing to ``ledger``."""
        ledger = ledger or self.ledger
        assert ledger is not None
        env = {**self.env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}", **extra}
        return subprocess.run(
            [str(BIN / "airflow"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def db(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows from Airflow's metadata DB."""
        with sqlite3.connect(self.path / "airflow.db") as conn:
            return list(conn.execute(sql, params))

    def last_run(self, dag_id: str) -> tuple[str, str | None]:
        """run_id and context_carrier (JSON text) of the DAG's newest run."""
        rows = self.db(
            "SELECT run_id, context_carrier FROM dag_run WHERE dag_id = ? ORDER BY id DESC",
            dag_id,
        )
        run_id, carrier = rows[0]
        return str(run_id), None if carrier is None else str(carrier)


def records(ledger: Path, chain: str = "airflow") -> list[Record]:
    """Every record of ``chain``, parsed."""
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read(chain)]
    finally:
        db.close()


def events(ledger: Path, type_glob: str = "*", chain: str = "airflow-events") -> list[Record]:
    """The records of the events chain whose event type matches ``type_glob`` (``access.*``);
    none while the chain does not exist yet."""
    if not ledger.exists():
        return []
    return [r for r in records(ledger, chain) if fnmatch.fnmatchcase(r.event, type_glob)]


#: SimpleAuthManager users of the ``secured_api_server`` fixture and their passwords.
PASSWORDS = {"admin": "admin-pw-1", "viewer": "viewer-pw-1"}


@dataclass(frozen=True)
class SecuredServer:
    """An ``airflow api-server`` with SimpleAuthManager users ``admin`` and ``viewer``
    (passwords :data:`PASSWORDS`) and its own ledger."""

    url: str  # base, no trailing slash
    env: dict[str, str]  # the server's environment (its ledger included)
    ledger: Path
    path: Path  # AIRFLOW_HOME

    def token(self, user: str, password: str) -> str:
        """A JWT from ``POST /auth/token``."""
        request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1, built by the fixture
            self.url + "/auth/token",
            data=json.dumps({"username": user, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310 - 127.0.0.1
            return str(json.load(answer)["access_token"])


@contextlib.contextmanager
def serving(env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``airflow api-server`` on 127.0.0.1:``port`` with ``env`` (its log in
    AIRFLOW_HOME) until both APIs answer; stop it on leaving."""
    log = (Path(env["AIRFLOW_HOME"]) / f"api-server-{port}.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Ready means both APIs answer: the public one and the execution API task runners use.
        for path in ("api/v2/monitor/health", "execution/health"):
            _wait_for_http(f"http://127.0.0.1:{port}/{path}", server, log.name, deadline_s=300)
        yield server
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_for_http(url: str, server: subprocess.Popen[bytes], log: str, deadline_s: float) -> None:
    """Poll ``url`` until it answers, the server exits (fail now), or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=10)  # noqa: S310 - http://127.0.0.1 built above
            return
        except OSError:
            assert server.poll() is None, "api-server exited; see " + log
            assert time.monotonic() < deadline, f"{url} did not answer in {deadline_s}s; see {log}"
            time.sleep(0.5)


# The executor path's run, shared by test_executor and test_lock.
DAG_RUN_DEADLINE_S = 900
SHUTDOWN_GRACE_S = 120  # after the run ended: a clean exit takes a few seconds here
EXECUTOR_POLL_S = 0.5


def executor_dags_test(
    home: AirflowHome, dag_id: str, ledger: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """``airflow dags test DAG --use-executor``, until the process exits.

    Airflow's LocalExecutor can hang in its own shutdown after the run has ended: seen once
    in ~20 runs here, ``end()`` joining an idle worker that never got its poison pill, after
    "DagRun Finished" and "Shutting down LocalExecutor" (our hooks had all returned: they run
    before both lines). So once the DAG run is terminal in the metadata DB and the process has
    logged that shutdown, it gets SHUTDOWN_GRACE_S to exit, then its process group is killed
    and the exit code is the one ``dags test`` gives for that state (0 success, 1 failed).
    Past DAG_RUN_DEADLINE_S without a terminal run, fail with what Airflow's metadata DB and
    the api-server's log say (to tell a hang from slowness). The same hang is Airflow's own
    flaky test: apache/airflow#45329 (``TestLocalExecutor.test_execution``, ``end()`` at
    ``proc.join()``); py-spy here showed both workers idle in ``SimpleQueue.get``."""
    ledger = ledger or home.ledger
    assert ledger is not None
    env = {**home.env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}", **extra}
    out_path = home.path / f"dags-test-{dag_id}-{time.time_ns()}.log"
    with out_path.open("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "dags", "test", dag_id, "--use-executor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # one process group: the workers go with it when killed
        )
        run_ended: float | None = None
        while proc.poll() is None:
            now = time.monotonic()
            if run_ended is None:
                state = _newest_run_state(home, dag_id)
                if state in ("success", "failed") and "Shutting down LocalExecutor" in (
                    out_path.read_text(errors="replace")
                ):
                    run_ended = now
            elif now - run_ended > SHUTDOWN_GRACE_S:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                code = 0 if _newest_run_state(home, dag_id) == "success" else 1
                output = out_path.read_text(errors="replace")
                warnings.warn(
                    f"dags test {dag_id}: Airflow's LocalExecutor did not finish its shutdown "
                    f"within {SHUTDOWN_GRACE_S}s after the run ended; killed",
                    stacklevel=2,
                )
                return subprocess.CompletedProcess(proc.args, code, output, output)
            if now - started > DAG_RUN_DEADLINE_S:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _fail_with_diagnostics(home, dag_id, out_path.read_text(errors="replace"))
            time.sleep(EXECUTOR_POLL_S)  # polling the process and the metadata DB for the run's end
        output = out_path.read_text(errors="replace")
        return subprocess.CompletedProcess(proc.args, proc.returncode, output, output)


def _newest_run_state(home: AirflowHome, dag_id: str) -> object:
    rows = home.db("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)
    return rows[0][0] if rows else None


def _fail_with_diagnostics(home: AirflowHome, dag_id: str, output: str) -> None:
    states = home.db(
        "SELECT task_id, try_number, state, hostname FROM task_instance WHERE dag_id = ?",
        dag_id,
    )
    logs = sorted(home.path.glob("api-server-*.log"))
    tail = logs[-1].read_text(errors="replace")[-3000:] if logs else "(no api-server log)"
    pytest.fail(
        f"dags test {dag_id} still running after {DAG_RUN_DEADLINE_S}s; task instances: "
        f"{states}\n--- dags test output (tail) ---\n{output[-3000:]}\n"
        f"--- api-server log (tail) ---\n{tail}"
    )
