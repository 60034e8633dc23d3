"""Airflow's event log (the ``log`` table) on the events chain: real rows written by Airflow's
own CLI and REST handlers (``action_logging``) in a real migrated metadata DB, mapped and
ingested exactly once (airflow_audit/eventlog.py, eventmap.py, service.py)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_audit import service
from airflow_audit.eventlog import AirflowLogSource
from airflow_audit.eventmap import command_line, to_event
from airflow_audit.settings import AirflowAuditSettings
from audit_core import REDACTED, AuditConfig, AuditTrail, Record
from audit_core.errors import SourceError
from audit_core.sources import Ingestor
from testkit import free_port
from tests.airflow._airflow import BIN, PASSWORDS, AirflowHome, records, serving

CHAIN = "airflow-events"
#: Secret values written through Airflow (API bodies, CLI arguments, raw rows); none may reach
#: the ledger file in any form.
SECRETS = {f"s3cr3t-{name}-{i}" for i, name in enumerate(["api", "cli", "raw"] * 7)}
API_SECRETS = sorted(s for s in SECRETS if "-api-" in s)
CLI_SECRETS = sorted(s for s in SECRETS if "-cli-" in s)
RAW_SECRETS = sorted(s for s in SECRETS if "-raw-" in s)

DAGS = """
import datetime as dt
from airflow.sdk import DAG, Asset
from airflow.providers.standard.operators.empty import EmptyOperator

with DAG("eventlog_daily", schedule="@daily", start_date=dt.datetime(2026, 1, 1), catchup=False):
    EmptyOperator(task_id="t1", outlets=[Asset("s3://bucket/eventlog")])

with DAG("eventlog_doomed", schedule=None, start_date=dt.datetime(2026, 1, 1)):
    EmptyOperator(task_id="t1")
"""

# Drives Airflow's real REST handlers in-process (Starlette's TestClient on create_app()), so
# every row below is what action_logging() writes. Prints {"run_id": ..., "statuses": ...}.
API_SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
from airflow.api_fastapi.app import create_app

secrets = json.loads(sys.argv[1])
passwords = json.loads(sys.argv[2])
client = TestClient(create_app())
statuses = []

def token(user):
    answer = client.post("/auth/token", json={"username": user, "password": passwords[user]})
    assert answer.status_code in (200, 201), answer.text
    return {"Authorization": "Bearer " + answer.json()["access_token"]}

admin, viewer = token("admin"), token("viewer")

def call(method, path, body=None, who=admin):
    answer = client.request(method, "/api/v2" + path, json=body, headers=who)
    statuses.append([method, path, answer.status_code])
    return answer

call("POST", "/variables", {"key": "api_var", "value": secrets[0]})
call("PATCH", "/variables/api_var", {"key": "api_var", "value": secrets[1]})
call("PATCH", "/variables", {"actions": [
    {"action": "create", "entities": [{"key": "bulk_a", "value": secrets[2]}]}]})
call("DELETE", "/variables/api_var")
call("POST", "/connections", {"connection_id": "api_conn", "conn_type": "http",
     "password": secrets[3], "extra": json.dumps({"token": secrets[4]})})
call("POST", "/connections/enqueue-test", {"connection_id": "api_conn", "conn_type": "http"})
call("POST", "/pools", {"name": "api_pool", "slots": 2})
call("PATCH", "/pools/api_pool", {"pool": "api_pool", "slots": 5, "include_deferred": False})
call("DELETE", "/pools/api_pool")
call("PATCH", "/dags/eventlog_daily", {"is_paused": False})
call("PATCH", "/dags/eventlog_daily", {"is_paused": True})
run_id = call("POST", "/dags/eventlog_daily/dagRuns",
              {"logical_date": None, "conf": {"note": secrets[6]}}).json()["dag_run_id"]
call("POST", "/dags/eventlog_daily/dagRuns", {"dag_run_id": "named_run", "logical_date": None})
call("PATCH", f"/dags/eventlog_daily/dagRuns/{run_id}", {"state": "failed"})
call("POST", f"/dags/eventlog_daily/dagRuns/{run_id}/clear", {"dry_run": False})
call("POST", "/dags/eventlog_daily/clearTaskInstances",
     {"dry_run": False, "dag_run_id": run_id, "task_ids": ["t1"]})
call("PATCH", f"/dags/eventlog_daily/dagRuns/{run_id}/taskInstances/t1", {"new_state": "success"})
backfill = call("POST", "/backfills", {"dag_id": "eventlog_daily",
    "from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-02T00:00:00Z"}).json()["id"]
call("PUT", f"/backfills/{backfill}/pause")
call("PUT", f"/backfills/{backfill}/unpause")
call("PUT", f"/backfills/{backfill}/cancel")
asset = client.get("/api/v2/assets", headers=admin).json()["assets"][0]["id"]
call("POST", "/assets/events", {"asset_id": asset})
call("DELETE", "/dags/eventlog_doomed")
call("POST", "/variables", {"key": "viewer_var", "value": secrets[5]}, who=viewer)
print(json.dumps({"run_id": run_id, "statuses": statuses}))
"""

#: (Airflow event, record type, actor) of the rows the API script writes, in order.
API_ROWS = [
    ("post_variable", "variable.created", ("user", "admin")),
    ("patch_variable", "variable.updated", ("user", "admin")),
    ("bulk_variables", "variable.created", ("user", "admin")),
    ("delete_variable", "variable.deleted", ("user", "admin")),
    ("post_connection", "connection.created", ("user", "admin")),
    ("enqueue_connection_test", "connection.tested", ("user", "admin")),
    ("post_pool", "pool.created", ("user", "admin")),
    ("patch_pool", "pool.updated", ("user", "admin")),
    ("delete_pool", "pool.deleted", ("user", "admin")),
    ("patch_dag", "dag.unpaused", ("user", "admin")),
    ("patch_dag", "dag.paused", ("user", "admin")),
    ("trigger_dag_run", "run.triggered", ("user", "admin")),
    ("trigger_dag_run", "run.triggered", ("user", "admin")),
    ("patch_dag_run", "run.state_set", ("user", "admin")),
    ("clear_dag_run", "run.cleared", ("user", "admin")),
    ("post_clear_task_instances", "task.cleared", ("user", "admin")),
    ("patch_task_instance", "task.state_set", ("user", "admin")),
    ("create_backfill", "backfill.created", ("user", "admin")),
    ("pause_backfill", "backfill.paused", ("user", "admin")),
    ("unpause_backfill", "backfill.unpaused", ("user", "admin")),
    ("cancel_backfill", "backfill.cancelled", ("user", "admin")),
    ("create_asset_event", "asset.event_created", ("user", "admin")),
    ("delete_dag", "dag.deleted", ("user", "admin")),
    ("post_variable", "variable.created", ("user", "viewer")),  # refused (403), still logged
]


@dataclass(frozen=True)
class EventHome:
    """A copy of the migrated Airflow DB with rows of every kind in its ``log`` table."""

    home: AirflowHome
    db: Path
    run_id: str  # the run the API script triggered without naming it
    statuses: list[list[Any]]

    def env(self, ledger: Path, **extra: str) -> dict[str, str]:
        return {
            **self.home.env,
            "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
            **extra,
        }

    def log_ids(self, db: Path | None = None) -> list[int]:
        with sqlite3.connect(db or self.db) as conn:
            return [int(r[0]) for r in conn.execute("SELECT id FROM log ORDER BY id")]


def _copy_home(template: Path, dest: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A new AIRFLOW_HOME holding a copy of ``template`` (a migrated airflow.db)."""
    dest.mkdir(parents=True, exist_ok=True)
    db = dest / "airflow.db"
    shutil.copy(template, db)
    env = {
        **env,
        "AIRFLOW_HOME": str(dest),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db}",
    }
    return db, env


def _run(
    program: str, env: dict[str, str], *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / program), *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _airflow(env: dict[str, str], *args: str) -> str:
    done = _run("airflow", env, *args)
    assert 0 == done.returncode, (args, done.stderr[-3000:])
    return done.stdout


def _scratch(events: EventHome, tmp_path: Path, rows: int = 0) -> tuple[Path, dict[str, str], Path]:
    """A copy of the events' DB with ``rows`` more rows, its environment and a new ledger."""
    db, env = _copy_home(events.db, tmp_path / "home", events.home.env)
    ledger = tmp_path / "ledger.db"
    env |= {"AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}"}
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO log (dttm, event, owner, extra) "
            "VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), 'bulk_row', 'x', ?)",
            [(json.dumps({"i": i}),) for i in range(rows)],
        )
    return db, env, ledger


@pytest.fixture(scope="module")
def events(airflow_home: AirflowHome, tmp_path_factory: pytest.TempPathFactory) -> EventHome:
    """Rows written by Airflow itself (CLI commands in subprocesses, the REST handlers through
    the API script) and a few inserted as Airflow's scheduler and older versions write them."""
    path = tmp_path_factory.mktemp("eventlog")
    dags = path / "dags"
    dags.mkdir()
    (dags / "eventlog_dags.py").write_text(DAGS)
    passwords = path / "passwords.json"
    passwords.write_text(json.dumps(PASSWORDS))
    db, env = _copy_home(airflow_home.path / "airflow.db", path, airflow_home.env)
    # The template is the session's shared home: other modules' servers wrote log rows into
    # it before (logins, a viewer's refused write). The script's rows are the ones counted.
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM log")
    env |= {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API_AUTH__JWT_SECRET": "workflow-audit-tests-" + "e" * 32,
        # the plugin's own ingestion stays off here: the tests ingest themselves
        "AIRFLOW__WORKFLOW_AUDIT__INGEST_EVENT_LOG": "False",
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{path / 'plugin-ledger.db'}",
    }
    _airflow(env, "dags", "reserialize")
    cli = CLI_SECRETS
    _airflow(env, "variables", "set", "plain_key", cli[0])
    _airflow(env, "variables", "set", "--description", "d", "other_key", cli[1])
    _airflow(env, "pools", "set", "cli_pool", "3", "a pool")
    _airflow(env, "dags", "pause", "eventlog_daily")
    _airflow(env, "dags", "unpause", "eventlog_daily")
    _airflow(env, "dags", "trigger", "eventlog_daily", "-c", json.dumps({"note": cli[4]}))
    _airflow(
        env, "connections", "add", "cli_conn", "--conn-type", "postgres", "--conn-password", cli[2]
    )
    _airflow(env, "connections", "add", "cli_uri", "--conn-uri", f"postgres://u:{cli[3]}@h/db")
    script = path / "api_script.py"
    script.write_text(API_SCRIPT)
    out = _run("python", env, str(script), json.dumps(API_SECRETS), json.dumps(PASSWORDS))
    assert 0 == out.returncode, out.stderr[-3000:]
    # the script's one JSON line: warnings may follow it on a busy machine ("access.denied
    # did not reach the ledger in time" from the access middleware's worker)
    result = json.loads(next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{")))
    _insert_raw_rows(db)
    home = AirflowHome(path, env)
    return EventHome(home, db, result["run_id"], result["statuses"])


def _insert_raw_rows(db: Path) -> None:
    """Rows as Airflow's scheduler and task API write them, a user's own event, and rows with
    values unmasked (an older Airflow, a hand-written row): the mapping must mask them."""
    raw = RAW_SECRETS
    rows = [
        ("running", "airflow", None, json.dumps({"host_name": "worker-1"})),
        ("paused", "scheduler", "Scheduler", "[('dag_id', 'eventlog_daily'), ('is_paused', True)]"),
        ("heartbeat timeout", None, None, "Task did not emit heartbeat within time limit"),
        ("custom_audit_thing", "carol", "Carol", json.dumps({"why": "quarterly review"})),
        (
            "post_variable",
            "dave",
            "Dave",
            json.dumps({"key": "k", "val": raw[0], "method": "POST"}),
        ),
        (
            "post_connection",
            "dave",
            "Dave",
            json.dumps({"connection_id": "c", "password": raw[1], "extra": json.dumps({"a": 1})}),
        ),
        (
            "bulk_connections",
            "dave",
            "Dave",
            json.dumps(
                {
                    "actions": [
                        {"action": "delete", "entities": ["old_conn"]},
                        {
                            "action": "create",
                            "entities": [{"connection_id": "n", "password": raw[2]}],
                        },
                    ]
                }
            ),
        ),
        (
            "cli_users_create",
            "root",
            None,
            json.dumps(
                {
                    "host_name": "vm",
                    "full_command": str(
                        ["airflow", "users", "create", "-u", "eve", "-p", raw[3], "-r", "Admin"]
                    ),
                }
            ),
        ),
        (
            "cli_connections_add",
            "root",
            None,
            json.dumps(
                {
                    "host_name": "vm",
                    "full_command": str(
                        [
                            "airflow",
                            "connections",
                            "add",
                            "x",
                            f'--conn-json={{"password": "{raw[4]}"}}',
                        ]
                    ),
                }
            ),
        ),
        ("cli_variables_set", "root", None, json.dumps({"full_command": f"not a list {raw[5]}"})),
    ]
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO log (dttm, event, owner, owner_display_name, extra, dag_id) "
            "VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), ?, ?, ?, ?, 'eventlog_daily')",
            rows,
        )


def _ingest(url: str, ledger: Path, **kwargs: Any) -> Any:
    source = AirflowLogSource(url, link_wait_s=0)
    with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger}")) as trail:
        try:
            return Ingestor(trail, source, chain=CHAIN, grace_s=0, **kwargs).run()
        finally:
            source.close()


def _by_log_id(ledger: Path) -> list[Record]:
    """The records of log rows (the events chain also holds gaps, and the access and
    permission records of the plugin's other parts)."""
    return [r for r in records(ledger, CHAIN) if "log_id" in r.data]


def _ledger_bytes(ledger: Path) -> bytes:
    return b"".join(p.read_bytes() for p in ledger.parent.glob(ledger.name + "*"))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return _run("workflow-audit", env, *args)


@pytest.fixture(scope="module")
def ingested(events: EventHome, tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    """The events chain after one in-process ingestion of the whole log."""
    ledger = tmp_path_factory.mktemp("ingested") / "ledger.db"
    _ingest(f"sqlite:///{events.db}", ledger)
    return _by_log_id(ledger)


class TestMapping:
    """Each real row becomes one record of the taxonomy, with the person as actor."""

    def test_api_requests_succeeded_where_expected(self, events: EventHome) -> None:
        """The API script's requests did what they ask (the viewer's write is refused)."""
        refused = [s for s in events.statuses if s[2] >= 400]
        # the connection test is refused unless [core] test_connection is on: logged anyway
        assert [["POST", "/variables", 403]] == [
            s for s in refused if s[1] != "/connections/enqueue-test"
        ]

    def test_every_row_once_in_id_order(self, events: EventHome, ingested: list[Record]) -> None:
        """The chain holds one record per log row, in id order, with the row id kept."""
        assert events.log_ids() == [r.data["log_id"] for r in ingested]

    def test_api_rows_types_and_actors(self, ingested: list[Record]) -> None:
        """REST actions map to the taxonomy with the authenticated user as the actor."""
        api = [r for r in ingested if r.data["owner"] in ("admin", "viewer")]
        got = [(r.data["event"], r.event, (r.actor["type"], r.actor["id"])) for r in api]
        assert API_ROWS == got

    def test_cli_rows(self, ingested: list[Record]) -> None:
        """CLI commands become cli.command records with the command and the OS user; those
        that change configuration get its types, with the key, id or pool they named."""
        cli = [r for r in ingested if "command" in r.data]
        commands = [r.data["command"] for r in cli]
        for expected in ("dag_reserialize", "variables_set", "pool_set", "dag_pause"):
            assert expected in commands
        kinds = {r.data["command"]: r.event for r in cli}
        assert ("cli.command", "variable.set", "pool.set") == (
            kinds["dag_pause"],
            kinds["variables_set"],
            kinds["pool_set"],
        )
        assert {"plain_key", "other_key"} <= {
            r.data.get("key") for r in cli if r.event == "variable.set"
        }
        pause = next(r for r in cli if r.data["command"] == "dag_pause")
        assert ("eventlog_daily", "user") == (pause.subject["dag_id"], pause.actor["type"])
        assert ("cli_dag_pause", os.environ.get("USER") or pause.actor["id"]) == (
            pause.data["event"],
            pause.actor["id"],
        )

    def test_cli_variable_value_is_marker_only(self, ingested: list[Record]) -> None:
        """`variables set KEY VALUE` keeps the key and replaces the value by the marker (also
        after options), with no digest: a SHA-256 of a short secret can be brute-forced."""
        sets = [r for r in ingested if r.data["event"] == "cli_variables_set"]
        lines = [r.data["extra"]["full_command"] for r in sets]
        assert ["variables", "set", "plain_key", REDACTED] == lines[0][1:]
        assert ["variables", "set", "--description", "d", "other_key", REDACTED] == lines[1][1:]
        assert all("value_sha256" not in r.data["extra"] for r in sets)
        assert REDACTED == sets[-1].data["extra"]["full_command"]  # not a list: nothing kept

    def test_cli_secret_options_are_markers(self, ingested: list[Record]) -> None:
        """--conn-password, --conn-uri, --conn-json=… and users' -p never keep their value."""
        lines = [
            r.data["extra"]["full_command"]
            for r in ingested
            if r.data["event"] in ("cli_connections_add", "cli_users_create")
        ]
        assert 4 == len(lines)
        assert REDACTED == lines[0][lines[0].index("--conn-password") + 1]
        assert REDACTED == lines[1][lines[1].index("--conn-uri") + 1]
        assert REDACTED == lines[2][lines[2].index("-p") + 1]
        assert f"--conn-json={REDACTED}" == lines[3][-1]

    def test_values_replaced_in_api_bodies(self, ingested: list[Record]) -> None:
        """Variable values, connection passwords and extras become the marker, with no digest;
        a conf keeps its digest (as the task chain does); bulk bodies keep keys and ids."""
        by_event = {(r.data["event"], r.data["owner"]): r.data["extra"] for r in ingested}
        assert REDACTED == by_event[("post_variable", "admin")]["value"]
        raw = by_event[("post_variable", "dave")]
        assert (REDACTED, None) == (raw["val"], raw.get("value_sha256"))
        conn = by_event[("post_connection", "admin")]
        assert (REDACTED, REDACTED, ["token"]) == (
            conn["password"],
            conn["extra"],
            conn["extra_keys"],
        )
        bulk = by_event[("bulk_variables", "admin")]["actions"][0]["entities"][0]
        assert {"key": "bulk_a", "value": REDACTED} == bulk
        actions = by_event[("bulk_connections", "dave")]["actions"]
        assert ["old_conn"] == actions[0]["entities"]
        assert REDACTED == actions[1]["entities"][0]["password"]
        trigger = next(r.data["extra"] for r in ingested if r.event == "run.triggered")
        assert (REDACTED, ["conf"]) == (trigger["conf"], list(trigger["value_sha256"]))
        cli = next(r for r in ingested if r.data["event"] == "cli_dag_trigger")
        line = cli.data["extra"]["full_command"]
        assert REDACTED == line[line.index("-c") + 1]
        assert "connection.changed" == next(
            r.event for r in ingested if r.data["event"] == "bulk_connections"
        )

    def test_no_secret_in_any_byte_of_the_ledger(self, events: EventHome, tmp_path: Path) -> None:
        """No secret written through the API, the CLI or a raw row reaches the ledger file."""
        ledger = tmp_path / "ledger.db"
        _ingest(f"sqlite:///{events.db}", ledger)
        with sqlite3.connect(events.db) as conn:
            text = "\n".join(str(r) for r in conn.execute("SELECT extra FROM log"))
        assert CLI_SECRETS[0] in text  # Airflow itself kept the CLI's value: we must not
        content = _ledger_bytes(ledger)
        assert [] == [s for s in SECRETS if s.encode() in content]

    def test_trigger_linked_to_the_run_it_created(
        self, events: EventHome, ingested: list[Record]
    ) -> None:
        """A trigger without a run id in its row is linked to the run it created; one that
        named its run keeps it from the row."""
        triggers = [r for r in ingested if r.event == "run.triggered"]
        assert [(events.run_id, "dag_run"), ("named_run", "row")] == [
            (r.data["run_id"], r.data["run_link"]) for r in triggers
        ]
        assert events.run_id == triggers[0].subject["run_id"]

    def test_run_id_from_the_body(self) -> None:
        """A row without run_id takes it from the masked body's dag_run_id."""
        event = to_event(
            {
                "id": 1,
                "event": "post_clear_task_instances",
                "owner": "a",
                "dag_id": "d",
                "extra": json.dumps({"dag_run_id": "r1"}),
            }
        )
        assert ("r1", "body") == (event.subject["run_id"], event.data["run_link"])

    def test_system_and_unknown_rows(self, ingested: list[Record]) -> None:
        """Airflow's own rows, and any row neither the REST API nor the CLI wrote, have a
        process as actor (the owner stays in data); unknown names are kept, not dropped."""
        got = {r.data["event"]: (r.event, r.actor["type"], r.actor["id"]) for r in ingested}
        assert ("airflow.task_state", "process", "airflow") == got["running"]
        assert ("dag.paused", "process", "scheduler") == got["paused"]
        assert ("airflow.event", "process", "airflow") == got["heartbeat timeout"]
        assert ("airflow.event", "process", "airflow") == got["custom_audit_thing"]
        assert "carol" == next(r for r in ingested if r.data["owner"] == "carol").data["owner"]

    def test_schema_qualified_tables(self, events: EventHome) -> None:
        """With [database] sql_alchemy_schema set, the tables are read in that schema (SQLite
        calls its own 'main')."""
        source = AirflowLogSource(f"sqlite:///{events.db}", schema="main", link_wait_s=0)
        try:
            rows = source.rows_after(-1, 100_000)
            assert (events.log_ids(), events.log_ids()[0]) == (
                [r.id for r in rows],
                source.oldest_id(),
            )
        finally:
            source.close()

    def test_anonymous_owner(self) -> None:
        """owner 'anonymous' (no authenticated user) is the anonymous actor."""
        extra = '{"method": "POST"}'
        event = to_event({"id": 1, "event": "post_pool", "owner": "anonymous", "extra": extra})
        assert ("anonymous", "-") == event.actor

    def test_record_time_is_the_rows(self, events: EventHome, ingested: list[Record]) -> None:
        """The record's ts is when Airflow wrote the row (dttm), in UTC."""
        with sqlite3.connect(events.db) as conn:
            first = conn.execute("SELECT dttm FROM log ORDER BY id LIMIT 1").fetchone()[0]
        assert first.replace(" ", "T")[:23] == ingested[0].ts[:23]


class TestSource:
    """AirflowLogSource's own contract: errors without passwords, a trigger waits for its run."""

    def test_unreachable_db_is_a_source_error_without_password(self) -> None:
        """An unreachable metadata DB raises SourceError naming the URL, password masked."""
        source = AirflowLogSource(f"postgresql://airflow:hunter2-pw@127.0.0.1:{free_port()}/db")
        with pytest.raises(SourceError) as caught:
            source.rows_after(-1, 10)
        assert "hunter2-pw" not in str(caught.value)
        assert "airflow:***@127.0.0.1" in str(caught.value)

    def test_young_trigger_waits_for_its_run(self, events: EventHome, tmp_path: Path) -> None:
        """A trigger row younger than link_wait_s whose run is not created yet ends the batch
        (the rows before it are returned); once older, it comes unlinked ("not_found")."""
        db, _, _ = _scratch(events, tmp_path, rows=2)
        with sqlite3.connect(db) as conn:
            conn.execute(
                "INSERT INTO log (dttm, event, owner, dag_id, extra) VALUES "
                "(strftime('%Y-%m-%d %H:%M:%f', 'now'), 'trigger_dag_run', 'admin', "
                "'eventlog_daily', '{\"method\": \"POST\"}')"
            )
        ids = events.log_ids(db)
        source = AirflowLogSource(f"sqlite:///{db}", link_wait_s=300)
        try:
            assert ids[-3:-1] == [r.id for r in source.rows_after(ids[-4], 10)]
            source.link_wait_s = 0
            last = source.rows_after(ids[-2], 10)
            assert [(ids[-1], "not_found")] == [(r.id, r.event.data["run_link"]) for r in last]
        finally:
            source.close()


class TestIngestCommand:
    """`workflow-audit ingest airflow`: once, after `airflow db clean`, after kill -9."""

    def test_ingest_command_records_each_row_once(self, events: EventHome, tmp_path: Path) -> None:
        """Two runs of the command record every row once; verify passes."""
        ledger = tmp_path / "ledger.db"
        env = events.env(ledger)
        for _ in range(2):
            done = _cli(env, "ingest", "airflow", "--grace", "0")
            assert 0 == done.returncode, done.stderr[-3000:]
        assert events.log_ids() == [r.data["log_id"] for r in _by_log_id(ledger)]
        done = _cli(env, "verify", "--ledger", f"sqlite:///{ledger}")
        assert 0 == done.returncode, done.stdout + done.stderr

    def test_db_clean_between_runs(self, events: EventHome, tmp_path: Path) -> None:
        """Rows `airflow db clean` deleted unread become one purged gap naming their ids;
        what was recorded before stays."""
        db, env, ledger = _scratch(events, tmp_path)
        with sqlite3.connect(db) as conn:  # the rows so far are old; read by the first run
            conn.execute("UPDATE log SET dttm = '2020-01-01 00:00:00.000000'")
        first = events.log_ids(db)
        assert 0 == _cli(env, "ingest", "airflow", "--grace", "0").returncode
        with sqlite3.connect(db) as conn:
            conn.executemany(
                "INSERT INTO log (dttm, event, owner) VALUES ('2020-01-02 00:00:00', ?, 'x')",
                [(f"old_{i}",) for i in range(30)],
            )
            conn.executemany(
                "INSERT INTO log (dttm, event, owner) "
                "VALUES (strftime('%Y-%m-%d %H:%M:%f', 'now'), ?, 'x')",
                [(f"new_{i}",) for i in range(5)],
            )
        unread = events.log_ids(db)[len(first) : len(first) + 30]
        _airflow(
            env,
            "db",
            "clean",
            "-t",
            "log",
            "--clean-before-timestamp",
            "2021-01-01 00:00:00+00:00",
            "--skip-archive",
            "-y",
        )
        assert unread[-1] < events.log_ids(db)[0]  # deleted: every row up to the unread ones
        done = _cli(env, "ingest", "airflow", "--grace", "0")
        assert 0 == done.returncode, done.stderr[-3000:]
        chain = records(ledger, CHAIN)
        gaps = [r.data for r in chain if r.event == "source.gap"]
        assert [
            {
                "source": "airflow.log",
                "first_id": unread[0],
                "last_id": unread[-1],
                "count": 30,
                "reason": "purged",
            }
        ] == gaps
        ids = [r.data["log_id"] for r in chain if not r.event.startswith("source.")]
        assert first + events.log_ids(db) == ids
        assert 0 == _cli(env, "verify", "--ledger", f"sqlite:///{ledger}").returncode

    def test_kill_9_mid_backfill(self, events: EventHome, tmp_path: Path) -> None:
        """kill -9 of the command during a 10,000-row backfill, then a rerun: each row once."""
        db, env, ledger = _scratch(events, tmp_path, rows=10_000)
        ids = events.log_ids(db)
        proc = subprocess.Popen(
            [str(BIN / "workflow-audit"), "ingest", "airflow", "--grace", "0", "--batch", "50"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        at = _wait_for_cursor(ledger, lambda c: c >= ids[len(ids) // 10], proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert ids[0] <= at < ids[-1], "killed after the backfill ended: nothing tested"
        assert 0 == _cli(env, "ingest", "airflow", "--grace", "0").returncode
        got = Counter(r.data["log_id"] for r in _by_log_id(ledger))
        assert (set(ids), {1}) == (set(got), set(got.values()))
        assert 0 == _cli(env, "verify", "--ledger", f"sqlite:///{ledger}").returncode


def _cursor(ledger: Path) -> int:
    if not ledger.exists():
        return -1
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT seq FROM cursors WHERE name = 'source:airflow.log' AND chain = ?", (CHAIN,)
            ).fetchone()
    except sqlite3.OperationalError:  # the schema is being created
        return -1
    return -1 if row is None else int(row[0])


def _wait_for_cursor(
    ledger: Path, done: Any, proc: subprocess.Popen[bytes] | None = None, deadline_s: float = 240
) -> int:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        at = _cursor(ledger)
        if done(at):
            return at
        assert proc is None or proc.poll() is None, "the ingesting process ended early"
        time.sleep(0.01)
    raise AssertionError(f"the cursor stayed at {_cursor(ledger)}")


class TestConcurrentIngesters:
    """Several ingesters over one source and one ledger record each row once."""

    def test_threads_and_a_process(self, events: EventHome, tmp_path: Path) -> None:
        """Three in-process ingesters and the command, at once: every row exactly once."""
        db, env, ledger = _scratch(events, tmp_path, rows=3000)
        proc = subprocess.Popen(
            [str(BIN / "workflow-audit"), "ingest", "airflow", "--grace", "0", "--batch", "100"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        results: list[Any] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(_ingest(f"sqlite:///{db}", ledger, batch=100))
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        _, err = proc.communicate(timeout=300)
        assert 0 == proc.returncode, err[-3000:]
        got = Counter(r.data["log_id"] for r in _by_log_id(ledger))
        assert (events.log_ids(db), {1}) == (sorted(got), set(got.values()))
        assert 3 == len(results)


#: The plugin's own ingestion on (the events fixture turned it off), quick to settle holes.
_INGESTING = {
    "AIRFLOW__WORKFLOW_AUDIT__INGEST_EVENT_LOG": "True",
    "AIRFLOW__WORKFLOW_AUDIT__INGEST_GRACE": "1",
}


class TestService:
    """Ingestion started inside Airflow's long-running processes, and only there."""

    def test_start_ingests_in_a_thread(
        self, events: EventHome, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """service.start() copies the log in a daemon thread until stop(); a second start in
        the same process reuses it."""
        monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{events.db}")
        ledger = tmp_path / "ledger.db"
        settings = AirflowAuditSettings(
            audit=AuditConfig(ledger_url=f"sqlite:///{ledger}"),
            ingest_grace_s=0.5,
            record_access=False,
        )
        background = service.start("test", settings)
        try:
            assert background is not None
            assert background is service.start("test", settings)
            _wait_for_cursor(ledger, lambda c: c >= events.log_ids()[-1])
        finally:
            service.stop()
        assert service.running() is None
        assert events.log_ids() == [r.data["log_id"] for r in _by_log_id(ledger)]

    def test_off_starts_nothing(self, tmp_path: Path) -> None:
        """ingest_event_log = False: no ingestion thread (anchoring alone runs)."""
        audit = AuditConfig(ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}")
        off = AirflowAuditSettings(audit=audit, ingest_event_log=False, record_access=False)
        try:
            assert service.start("test", off) is None
            assert service.running() is None
        finally:
            service.stop()

    def test_scheduler_ingests_cli_does_not(self, events: EventHome, tmp_path: Path) -> None:
        """A real `airflow scheduler` records new log rows; a CLI command records none."""
        db, env, ledger = _scratch(events, tmp_path)
        env |= _INGESTING
        _airflow(env, "pools", "list")  # a CLI command: plugin loaded, nothing ingested
        assert -1 == _cursor(ledger)
        log = (tmp_path / "scheduler.log").open("w")
        scheduler = subprocess.Popen(
            [str(BIN / "airflow"), "scheduler"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            last = events.log_ids(db)[-1]
            _wait_for_cursor(ledger, lambda c: c >= last, scheduler, deadline_s=300)
        finally:
            scheduler.terminate()
            scheduler.wait(timeout=120)
            log.close()
        ids = [r.data["log_id"] for r in _by_log_id(ledger)]
        assert ids == sorted(set(ids))
        assert set(ids) <= set(events.log_ids(db))
        assert last in ids

    def test_api_server_workers_ingest_once(self, events: EventHome, tmp_path: Path) -> None:
        """Two `airflow api-server` workers ingest the same log: each row once."""
        db, env, ledger = _scratch(events, tmp_path, rows=2000)
        port = free_port()
        env |= _INGESTING | {
            "AIRFLOW__API__WORKERS": "2",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
        }
        with serving(env, port):
            last = events.log_ids(db)[-1]
            _wait_for_cursor(ledger, lambda c: c >= last, deadline_s=300)
        got = Counter(r.data["log_id"] for r in _by_log_id(ledger))
        assert set(got.values()) == {1}
        assert set(events.log_ids(db)) <= set(got)


# -- the option forms Airflow's argparse accepts, source errors, linkage, engine arguments ------

FAB_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
#: Secrets given to real CLI commands in the forms argparse accepts besides the exact option.
FORMS = {
    name: f"f0rm-{name}-s3cret"
    for name in ("passw", "attached", "conn_pass", "conn_eq", "con_prefix", "task_par")
}


@dataclass(frozen=True)
class FormHome:
    """A copy of the events' DB after CLI commands with abbreviated and attached options,
    ingested into ``ledger``."""

    db: Path
    ledger: Path
    lines: dict[str, list[str]]  # Airflow's event name -> the recorded command line (last)
    digests: dict[str, Any]  # Airflow's event name -> the record's value_sha256 (last)
    passwords: list[str]  # of the connections form_a and form_b, as Airflow reads them


@pytest.fixture(scope="module")
def forms(events: EventHome, tmp_path_factory: pytest.TempPathFactory) -> FormHome:
    path = tmp_path_factory.mktemp("cli_forms")
    db, env = _copy_home(events.db, path / "home", events.home.env)
    fab = env | {"AIRFLOW__CORE__AUTH_MANAGER": FAB_MANAGER}  # `airflow users` is FAB's
    s = FORMS
    names = ["-u", "ann", "-f", "Ann", "-l", "Lee", "-e", "ann@example.com", "-r", "Viewer"]
    _airflow(fab, "users", "create", *names, "--passw", s["passw"])
    _airflow(fab, "users", "reset-password", "-u", "ann", "-p" + s["attached"])
    _airflow(
        env, "connections", "add", "form_a", "--conn-type", "generic", "--conn-pass", s["conn_pass"]
    )
    _airflow(
        env, "connections", "add", "form_b", "--conn-t=generic", "--conn-passw=" + s["conn_eq"]
    )
    conf = json.dumps({"k": s["con_prefix"]})
    _airflow(env, "dags", "trigger", "eventlog_daily", "--con", conf)
    params = json.dumps({"k": s["task_par"]})
    _airflow(env, "tasks", "test", "eventlog_daily", "t1", "--task-par", params)
    read = "from airflow.models import Connection as C; print([C.get_connection_from_secrets(i)"
    read += ".password for i in ('form_a', 'form_b')])"
    passwords = ast.literal_eval(_run("python", env, "-c", read).stdout.strip().splitlines()[-1])
    ledger = path / "ledger.db"
    _ingest(f"sqlite:///{db}", ledger)
    cli = [r for r in _by_log_id(ledger) if "command" in r.data]
    lines = {r.data["event"]: r.data["extra"]["full_command"] for r in cli}
    digests = {r.data["event"]: r.data["extra"].get("value_sha256") for r in cli}
    return FormHome(db, ledger, lines, digests, passwords)


class TestOptionForms:
    """Airflow's argparse accepts unique prefixes of long options (allow_abbrev) and short
    options with their value attached: no such form keeps a secret on the chain."""

    def test_airflow_accepted_the_commands(self, forms: FormHome) -> None:
        """The commands did what they ask (the abbreviated and attached forms set the
        passwords), and Airflow's own log kept every secret in clear (its masking knows only
        the exact option names): the chain is the only guard."""
        from werkzeug.security import check_password_hash

        with sqlite3.connect(forms.db) as conn:
            (hashed,) = conn.execute("SELECT password FROM ab_user WHERE username = 'ann'")
            log = "\n".join(str(r[0]) for r in conn.execute("SELECT extra FROM log"))
        assert check_password_hash(hashed[0], FORMS["attached"])  # reset-password -pS
        assert [FORMS["conn_pass"], FORMS["conn_eq"]] == forms.passwords
        assert [] == [s for s in FORMS.values() if s not in log]

    def test_no_form_reaches_the_ledger(self, forms: FormHome) -> None:
        """Not one byte of any secret in the ledger file."""
        content = _ledger_bytes(forms.ledger)
        assert [] == [s for s in FORMS.values() if s.encode() in content]

    def test_markers_where_the_values_were(self, forms: FormHome) -> None:
        """Each form's value is the marker; a task's params keep a digest (a conf, as
        `dags trigger --conf` does); an ambiguous prefix (`--con`: --conf or --conn-*) is
        hidden as a secret, with no digest."""
        lines = forms.lines
        create = lines["cli_users_create"]
        assert REDACTED == create[create.index("--passw") + 1]
        assert f"-p{REDACTED}" == lines["cli_user_reset_password"][-1]
        add = lines["cli_connections_add"]  # the last one: --conn-passw=...
        assert ["--conn-t=generic", f"--conn-passw={REDACTED}"] == add[-2:]
        trigger = lines["cli_dag_trigger"]
        assert (REDACTED, None) == (trigger[-1], forms.digests["cli_dag_trigger"])
        test = lines["cli_task_test"]
        assert REDACTED == test[-1]
        assert [str(len(test) - 1)] == list(forms.digests["cli_task_test"])


@pytest.mark.parametrize(
    ("argv", "hidden"),
    [
        (["users", "create", "--p", "S"], [3]),
        (["users", "create", "--pa=S"], [2]),
        (["users", "create", "-vpS"], [2]),
        (["users", "create", "-p=S"], [2]),
        (["connections", "add", "c", "--conn-e", "S"], [4]),
        (["connections", "add", "c", "--conn-u=S"], [3]),
        (["tasks", "test", "d", "t", "--env-vars", "S"], [5]),
        (["tasks", "test", "d", "t", "-tS"], [4]),
        (["backfill", "create", "--dag-run", "S"], [3]),
        (["dags", "test", "d", "-cS"], [3]),
        (["variables", "set", "--desc", "d", "k", "S"], [5]),
        # argparse: after "--" every argument is a value, and "-987654" is a value too
        (["variables", "set", "--", "k", "-S"], [4]),
        (["variables", "set", "k", "--", "-S"], [4]),
        (["variables", "set", "-j", "--", "k", "-S"], [5]),
        (["variables", "set", "k", "-987654"], [3]),
        (["tasks", "clear", "d", "-t", "regex"], []),
        (["dags", "list", "--output", "json"], []),
    ],
)
def test_command_line_forms(argv: list[str], hidden: list[int]) -> None:
    """Which arguments of ``airflow <argv>`` lose their value (index in argv)."""
    command = "variables_set" if argv[:2] == ["variables", "set"] else "x"
    out = command_line(command, ["airflow", *argv])["full_command"][1:]
    assert hidden == [i for i, (a, b) in enumerate(zip(argv, out, strict=True)) if a != b]
    assert all(REDACTED in out[i] for i in hidden)
    assert all(argv[i].lstrip("-") not in out[i].replace(REDACTED, "") for i in hidden)


def test_record_conf_keeps_task_params() -> None:
    """record_conf keeps confs and task params, beside the command under "conf" by argument
    index (a node a privacy policy commits), not inside it; secrets stay hidden."""
    argv = ["airflow", "tasks", "test", "d", "t", "-t", '{"a": 1}', "--env-vars", "S"]
    out = command_line("task_test", argv, record_conf=True)
    assert [*argv[:6], REDACTED, argv[7], REDACTED] == out["full_command"]
    assert {"6": '{"a": 1}'} == out["conf"]


def test_executor_rows_have_a_process_actor() -> None:
    """A row with neither a REST method nor a cli_ name (an executor's log_task_event, a
    provider's note) was not written by a person: the owner (the task's) stays in data."""
    row = {"id": 1, "event": "executor note", "owner": "data-team", "extra": '{"info": "x"}'}
    event = to_event(row)
    assert (("process", "airflow"), "data-team") == (event.actor, event.data["owner"])
    rest = to_event({**row, "event": "post_pool", "extra": '{"method": "POST"}'})
    assert ("user", "data-team") == rest.actor
    cli = to_event({**row, "event": "cli_pool_set", "extra": "{}"})
    assert ("user", "data-team") == cli.actor


class TestSourceErrors:
    """Every read of the source, not just connecting, fails as SourceError."""

    def test_empty_database_file(self, tmp_path: Path) -> None:
        """A DB without a log table: SourceError from rows_after and oldest_id."""
        empty = tmp_path / "empty.db"
        empty.touch()
        source = AirflowLogSource(f"sqlite:///{empty}")
        try:
            for read in (lambda: source.rows_after(-1, 10), source.oldest_id):
                with pytest.raises(SourceError, match="no such table: log"):
                    read()
        finally:
            source.close()

    def test_ingest_command_without_traceback(self, events: EventHome, tmp_path: Path) -> None:
        """`workflow-audit ingest airflow` on an empty metadata DB: one line, exit 2."""
        empty = tmp_path / "empty.db"
        empty.touch()
        env = events.env(tmp_path / "ledger.db")
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{empty}"
        done = _cli(env, "ingest", "airflow")
        assert (2, "") == (done.returncode, done.stdout)
        assert "Traceback" not in done.stderr
        assert "no such table: log" in done.stderr

    def test_linkage_lookup(self, events: EventHome, tmp_path: Path) -> None:
        """A trigger row whose run is looked up in a DB without dag_run: SourceError."""
        db, _, _ = _scratch(events, tmp_path)
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE dag_run")
            conn.execute(
                "INSERT INTO log (dttm, event, owner, dag_id, extra) VALUES "
                "('2020-01-01 00:00:00', 'trigger_dag_run', 'admin', 'eventlog_daily', '{}')"
            )
        source = AirflowLogSource(f"sqlite:///{db}", link_wait_s=0)
        try:
            with pytest.raises(SourceError, match="no such table: dag_run"):
                source.rows_after(events.log_ids(db)[-2], 10)
        finally:
            source.close()


def _copy_run(conn: sqlite3.Connection, run_id: str, new_id: str, created_at: str) -> None:
    columns = [r[1] for r in conn.execute("PRAGMA table_info(dag_run)") if r[1] != "id"]
    values = {"run_id": "?", "created_at": "?"}
    picked = ", ".join(values.get(c, c) for c in columns)
    conn.execute(
        f"INSERT INTO dag_run ({', '.join(columns)}) SELECT {picked} FROM dag_run "  # noqa: S608
        "WHERE run_id = ?",
        (new_id, created_at, run_id),
    )


def test_old_trigger_linked_behind_many_newer_runs(events: EventHome, tmp_path: Path) -> None:
    """A trigger row read long after (a first install's backfill) is linked to its run even
    when many manual runs of the DAG were created since."""
    db, _, _ = _scratch(events, tmp_path)
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO log (dttm, event, owner, dag_id, extra) VALUES "
            "('2020-01-01 00:00:00', 'trigger_dag_run', 'admin', 'eventlog_daily', "
            '\'{"method": "POST"}\')'
        )
        _copy_run(conn, events.run_id, "old_run", "2020-01-01 00:00:01")
        for i in range(60):
            _copy_run(conn, events.run_id, f"newer_{i}", f"2021-01-01 00:00:{i:02d}")
    source = AirflowLogSource(f"sqlite:///{db}", link_wait_s=0)
    try:
        (row,) = source.rows_after(events.log_ids(db)[-2], 10)
    finally:
        source.close()
    assert ("old_run", "dag_run") == (row.event.data["run_id"], row.event.data["run_link"])


class _Counting(sqlite3.Connection):
    opened = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        type(self).opened += 1
        super().__init__(*args, **kwargs)


#: ``[database] sql_alchemy_connect_args`` of the test below (an import path, as Airflow reads).
CONNECT_ARGS = {"factory": _Counting}


def test_airflow_connect_args_are_used(events: EventHome, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source's engine connects with Airflow's [database] sql_alchemy_connect_args (TLS
    settings live there), as Airflow's own engine does."""
    from airflow_audit.eventlog import open_source

    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{events.db}")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS", f"{__name__}.CONNECT_ARGS")
    before = _Counting.opened
    source = open_source()
    try:
        assert events.log_ids()[:3] == [r.id for r in source.rows_after(-1, 3)]
    finally:
        source.close()
    assert _Counting.opened > before


@pytest.fixture(autouse=True)
def _no_leftover_thread() -> Iterator[None]:
    yield
    service.stop()
