"""Real Airflow 3 for the adapter's tests: a throwaway AIRFLOW_HOME, ``airflow db migrate``,
``airflow dags test`` subprocesses, and an ``airflow api-server`` on 127.0.0.1 for the
executor path. Each test writes to its own ledger (``[workflow_audit] ledger_url``)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import airflow
import pytest

from testkit import free_port
from testkit.airflow import home_env
from tests.airflow._airflow import BIN, BUNDLED, PASSWORDS, AirflowHome, SecuredServer, serving


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
        # the API server's anchor: a checkpoint of every chain that grew, every 5 s
        "AIRFLOW__WORKFLOW_AUDIT__ANCHOR_INTERVAL": "5",
    }
    with serving(env | {"AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}"}, port):
        yield AirflowHome(airflow_home.path, env, ledger)


@pytest.fixture(scope="module")
def secured_api_server(
    airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SecuredServer]:
    """An ``airflow api-server`` on 127.0.0.1 whose SimpleAuthManager knows ``admin`` (role
    admin) and ``viewer`` (role viewer) with the passwords of :data:`PASSWORDS`, writing to a
    ledger of its own."""
    port = free_port()
    tmp = tmp_path_factory.mktemp("secured")
    ledger = tmp / "ledger.db"
    # SimpleAuthManager only generates passwords for users missing from this file (init()).
    passwords = tmp / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    env = {
        **airflow_home.env,
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "s" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
    }
    with serving(env, port):
        yield SecuredServer(f"http://127.0.0.1:{port}", env, ledger, airflow_home.path)


@pytest.fixture(scope="module")
def fab_api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    """An ``airflow api-server`` on 127.0.0.1 with the FAB auth manager in a fresh home
    (``airflow db migrate`` creates FAB's tables too), users ``admin`` (role Admin) and
    ``viewer`` (role Viewer) with the passwords of :data:`PASSWORDS`, and its own ledger."""
    home = tmp_path_factory.mktemp("fab_home")
    (home / "dags").mkdir()
    port = free_port()
    ledger = home / "ledger.db"
    env = {
        **home_env(home, home / "dags"),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "f" * 32,
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
    }
    fab = AirflowHome(home, env, ledger)
    done = fab.run("db", "migrate", timeout=300)
    assert 0 == done.returncode, done.stderr[-3000:]
    for user, password in PASSWORDS.items():
        names = ["-f", user, "-l", user, "-e", f"{user}@example.com"]
        done = fab.run("users", "create", "-u", user, "-p", password, "-r", user.title(), *names)
        assert 0 == done.returncode, done.stderr[-3000:]
    with serving(env, port):
        yield SecuredServer(f"http://127.0.0.1:{port}", env, ledger, home)
