"""Real Airflow 3 for the adapter's tests: a throwaway AIRFLOW_HOME, ``airflow db migrate``,
``airflow dags test`` subprocesses, and an ``airflow api-server`` on 127.0.0.1 for the
executor path. Each test writes to its own ledger (``[workflow_audit] ledger_url``)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import airflow
import pytest

from testkit import free_port
from testkit.airflow import home_env
from tests.airflow._airflow import BIN, BUNDLED, AirflowHome


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> AirflowHome:
    """``airflow db migrate`` in a fresh home whose DAGs folder holds the example DAGs, the
    tests' own DAGs and a few of Airflow's bundled examples."""
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    env = home_env(home, dags)  # copies the example DAGs
    shutil.copy(Path(__file__).with_name("dags") / "audit_test_dags.py", dags)
    bundled = Path(airflow.__file__).parent / "example_dags"
    for name in BUNDLED:
        shutil.copy(bundled / name, dags)
    done = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert 0 == done.returncode, done.stderr[-3000:]
    return AirflowHome(home, env)


@pytest.fixture(scope="module")
def api_server(
    airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AirflowHome]:
    """An ``airflow api-server`` on 127.0.0.1 and the LocalExecutor settings that use it; it
    and the tests that use it share one ledger (the API server records asset events)."""
    port = free_port()
    ledger = tmp_path_factory.mktemp("executor") / "ledger.db"
    env = {
        **airflow_home.env,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "x" * 32,
        # On a loaded 2-core machine the api-server can answer later than the task runners'
        # 5 s request timeout (Airflow's default): seen here, 4 of a runner's 5 tries timed
        # out, with random exponential waits of up to 90 s between tries, so one slow patch
        # cost minutes and a fifth time-out would fail the task's start or its state report.
        # Airflow's advice for "timeout errors under high load" is a longer timeout; short
        # waits between tries keep a slow start from turning into minutes of back-off.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "120",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX": "10",
    }
    log = (airflow_home.path / f"api-server-{port}.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Ready means both APIs answer: the public one and the execution API task runners use.
        for path in ("api/v2/monitor/health", "execution/health"):
            _wait_for_http(f"http://127.0.0.1:{port}/{path}", server, log.name, deadline_s=300)
        yield AirflowHome(airflow_home.path, env, ledger)
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
