"""What people did, over real HTTP: a script of REST actions with Bearer tokens and an
``airflow variables set`` command against an ``airflow api-server`` (SimpleAuthManager users
admin and viewer) becomes the events chain: one record per row of Airflow's ``log`` table, in
id order, with the right type and actor, logins and denials beside them, and no byte of a
secret value in the ledger. Then the ledger is made unwritable under the running server: it
keeps answering as before, the failure is counted, and ingestion catches up once it is
writable again."""

from __future__ import annotations

import collections
import contextlib
import getpass
import json
import secrets
import shutil
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from audit_core import Record
from testkit import free_port
from testkit.otlp import OtlpReceiver
from tests.airflow._airflow import BIN, PASSWORDS, SecuredServer, events, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

INGEST_DEADLINE_S = 180.0  # the default interval is 1 s; the machine is loaded
POLL_S = 0.25
CHAIN = "airflow-events"  # [workflow_audit] events_chain, the default
RUN_ID = "eventlog-run-1"
DAG_ID = "audit_secrets"  # tests/airflow/dags: only test_dags_test runs it, with new run ids
TASK_ID = "use_secret"
DELETED_DAG = "ml_pipeline_bad_data"  # `dags test` parses its file again if another test needs it
BACKFILL_DAG = "example_skip_dag"  # a backfill needs a schedule
ASSET = "churn_training_data"  # example_dags/ml_pipeline.py's outlet


@dataclass(frozen=True, slots=True)
class Step:
    """One request of the script and what it must give: its status, and the event name of the
    ``log`` row Airflow writes for it (None: Airflow writes no row) and that row's record."""

    method: str
    path: str
    body: object
    status: int
    row: str | None
    record: str | None
    user: str = "admin"


@dataclass(frozen=True, slots=True)
class Answer:
    step: Step
    status: int
    body: object


@dataclass(frozen=True, slots=True)
class Scripted:
    """What the module's script did: the server, the last ``log`` id before it, the answers,
    the secret every secret value starts with, the CLI's unix user, and the run id Airflow
    made up for the trigger that named none."""

    server: SecuredServer
    baseline: int
    answers: list[Answer]
    secret: str
    cli_user: str
    generated_run_id: str


def request(
    url: str, method: str, token: str | None = None, body: object = None
) -> tuple[int, object]:
    """One HTTP request (JSON body, Bearer token): status and parsed answer, errors included."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - 127.0.0.1
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=120) as answer:  # noqa: S310 - 127.0.0.1
            raw = answer.read()
            return answer.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def db(home: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of the Airflow home's metadata DB, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{home / 'airflow.db'}?mode=ro", uri=True)) as c:
        return list(c.execute(sql, params))


def log_rows(home: Path, after: int = 0) -> list[tuple[int, str, str | None]]:
    """(id, event, owner) of Airflow's ``log`` table, by id."""
    return db(home, "SELECT id, event, owner FROM log WHERE id > ? ORDER BY id", after)


def by_log_id(records: list[Record]) -> dict[int, list[Record]]:
    """The records of ``log`` rows, by the row's id (data.log_id)."""
    found: dict[int, list[Record]] = collections.defaultdict(list)
    for r in records:
        if "log_id" in r.data:
            found[int(r.data["log_id"])].append(r)  # type: ignore[arg-type]
    return found


def wait_ingested(ledger: Path, home: Path, *, deadline_s: float = INGEST_DEADLINE_S) -> int:
    """Wait until every row of ``log`` present now has a record on the events chain; returns
    the highest id waited for."""
    target = {row[0] for row in log_rows(home)}
    deadline = time.monotonic() + deadline_s
    while True:
        missing = target - set(by_log_id(events(ledger)))
        if not missing:
            return max(target)
        assert time.monotonic() < deadline, (
            f"log rows {sorted(missing)[:20]} (of {len(missing)}) not on the events chain after "
            f"{deadline_s}s"
        )
        time.sleep(POLL_S)


def script(secret: str, asset_id: int) -> list[Step]:
    """~20 REST actions of an admin and two refused writes of a viewer, in order."""
    runs = f"/api/v2/dags/{DAG_ID}/dagRuns"
    conn = {"connection_id": "eventlog_conn", "conn_type": "postgres", "host": "db.example"}
    window = {"from_date": "2026-01-01T00:00:00Z", "to_date": "2026-01-03T00:00:00Z"}
    return [
        Step("POST", runs, {"dag_run_id": RUN_ID, "logical_date": None}, 200,
             "trigger_dag_run", "run.triggered"),
        Step("POST", runs, {"logical_date": "2026-01-02T00:00:00Z"}, 200,
             "trigger_dag_run", "run.triggered"),
        Step("PATCH", f"{runs}/{RUN_ID}/taskInstances/{TASK_ID}", {"new_state": "failed"}, 200,
             "patch_task_instance", "task.state_set"),
        Step("POST", f"{runs}/{RUN_ID}/clear", {"dry_run": False}, 200,
             "clear_dag_run", "run.cleared"),
        Step("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances",
             {"dry_run": False, "task_ids": [TASK_ID], "dag_run_id": RUN_ID}, 200,
             "post_clear_task_instances", "task.cleared"),
        Step("PATCH", f"{runs}/{RUN_ID}", {"state": "failed"}, 200,
             "patch_dag_run", "run.state_set"),
        Step("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": True}, 200,
             "patch_dag", "dag.paused"),
        Step("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False}, 200,
             "patch_dag", "dag.unpaused"),
        Step("POST", "/api/v2/variables", {"key": "eventlog_var", "value": secret + "-a"}, 201,
             "post_variable", "variable.created"),
        Step("PATCH", "/api/v2/variables/eventlog_var",
             {"key": "eventlog_var", "value": secret + "-b"}, 200,
             "patch_variable", "variable.updated"),
        Step("DELETE", "/api/v2/variables/eventlog_var", None, 204,
             "delete_variable", "variable.deleted"),
        Step("POST", "/api/v2/connections",
             {**conn, "login": "etl", "password": secret + "-c",
              "extra": json.dumps({"sslkey": secret + "-d"})}, 201,
             "post_connection", "connection.created"),
        Step("PATCH", "/api/v2/connections/eventlog_conn", {**conn, "password": secret + "-e"},
             200, "patch_connection", "connection.updated"),
        Step("DELETE", "/api/v2/connections/eventlog_conn", None, 204,
             "delete_connection", "connection.deleted"),
        Step("POST", "/api/v2/pools", {"name": "eventlog_pool", "slots": 3}, 201,
             "post_pool", "pool.created"),
        Step("PATCH", "/api/v2/pools/eventlog_pool",
             {"pool": "eventlog_pool", "slots": 5, "include_deferred": False}, 200,
             "patch_pool", "pool.updated"),
        Step("DELETE", "/api/v2/pools/eventlog_pool", None, 204, "delete_pool", "pool.deleted"),
        Step("POST", "/api/v2/backfills", {"dag_id": BACKFILL_DAG, **window, "max_active_runs": 1},
             200, "create_backfill", "backfill.created"),
        Step("PUT", "/api/v2/backfills/{backfill}/pause", None, 200,
             "pause_backfill", "backfill.paused"),
        Step("PUT", "/api/v2/backfills/{backfill}/unpause", None, 200,
             "unpause_backfill", "backfill.unpaused"),
        Step("PUT", "/api/v2/backfills/{backfill}/cancel", None, 200,
             "cancel_backfill", "backfill.cancelled"),
        Step("POST", "/api/v2/assets/events", {"asset_id": asset_id, "extra": {"by": "test"}},
             200, "create_asset_event", "asset.event_created"),
        Step("DELETE", f"/api/v2/dags/{DELETED_DAG}", None, 204, "delete_dag", "dag.deleted"),
        # action_logging runs before the variable routes' permission check, so Airflow logs
        # the refused write as post_variable (with no outcome); the DAG route checks first.
        Step("POST", "/api/v2/variables", {"key": "viewer_var", "value": secret + "-f"}, 403,
             "post_variable", "variable.created", user="viewer"),
        Step("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": True}, 403, None, None,
             user="viewer"),
    ]  # fmt: skip


def run_script(server: SecuredServer, steps: list[Step]) -> list[Answer]:
    tokens = {user: server.token(user, PASSWORDS[user]) for user in ("admin", "viewer")}
    answers = []
    backfill = None
    for step in steps:
        path = step.path.replace("{backfill}", str(backfill))
        status, body = request(server.url + path, step.method, tokens[step.user], step.body)
        answers.append(Answer(step, status, body))
        if step.row == "create_backfill" and isinstance(body, dict):
            backfill = body.get("id")
    return answers


@pytest.fixture(scope="module")
def scripted(secured_api_server: SecuredServer) -> Scripted:
    """Parse the DAGs into the metadata DB (the API server parses none), run the script and
    the CLI command, and wait until every ``log`` row is on the events chain."""
    server = secured_api_server
    done = subprocess.run(
        [str(BIN / "airflow"), "dags", "reserialize"],
        env=server.env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    baseline = max((row[0] for row in log_rows(server.path)), default=0)
    [(asset_id,)] = db(server.path, "SELECT id FROM asset WHERE name = ?", ASSET)
    secret = "s3cr3t-VALUE-" + secrets.token_hex(12)
    answers = run_script(server, script(secret, int(asset_id)))
    # Not a sensitive-looking key: Airflow keeps the value unmasked in full_command.
    done = subprocess.run(
        [str(BIN / "airflow"), "variables", "set", "eventlog_cli_key", secret + "-g"],
        env=server.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert 0 == done.returncode, done.stderr[-3000:]
    wait_ingested(server.ledger, server.path)
    bodies = [a.body for a in answers if a.step.row == "trigger_dag_run"]
    made_up = [b.get("dag_run_id") for b in bodies if isinstance(b, dict)]
    generated = next((str(r) for r in made_up if r and r != RUN_ID), "")
    return Scripted(server, baseline, answers, secret, getpass.getuser(), generated)


def expected_rows(s: Scripted) -> list[tuple[str, str]]:
    """(log event, owner) of the rows the script must have written, in order."""
    rows = [(a.step.row, a.step.user) for a in s.answers if a.step.row is not None]
    return [*rows, ("cli_variables_set", s.cli_user)]


class TestScript:
    """The script's actions on the events chain."""

    def test_answers(self, scripted: Scripted) -> None:
        """Every request got the status the script expects (the script itself is right)."""
        got = [(a.step.method, a.step.path, a.status) for a in scripted.answers]
        want = [(a.step.method, a.step.path, a.step.status) for a in scripted.answers]
        assert want == got, [a.body for a in scripted.answers if a.status != a.step.status]

    def test_log_table_rows(self, scripted: Scripted) -> None:
        """Airflow wrote one ``log`` row per logged action, as the script expects."""
        rows = [
            (event, owner) for _, event, owner in log_rows(scripted.server.path, scripted.baseline)
        ]
        assert expected_rows(scripted) == rows

    def test_every_row_once_in_id_order(self, scripted: Scripted) -> None:
        """Each row of ``log`` has exactly one record, with its id and original event name,
        and the records follow the rows' ids; no gap was recorded."""
        chain = events(scripted.server.ledger)
        found = by_log_id(chain)
        rows = log_rows(scripted.server.path)
        assert {i: 1 for i, _, _ in rows} == {i: len(found.get(i, [])) for i, _, _ in rows}
        assert set() == set(found) - {i for i, _, _ in rows}
        assert [event for _, event, _ in rows] == [found[i][0].data["event"] for i, _, _ in rows]
        ids = [int(r.data["log_id"]) for r in chain if "log_id" in r.data]  # type: ignore[arg-type]
        assert sorted(ids) == ids
        assert [] == [r.data for r in chain if r.event == "source.gap"]

    def test_types_and_actors(self, scripted: Scripted) -> None:
        """The script's rows became the expected record types, each with its person as actor
        (the REST user; the unix user for the CLI)."""
        found = by_log_id(events(scripted.server.ledger))
        ids = [i for i, _, _ in log_rows(scripted.server.path, scripted.baseline)]
        want = [(a.step.record, {"type": "user", "id": a.step.user}) for a in scripted.answers
                if a.step.record is not None]  # fmt: skip
        want.append(("variable.set", {"type": "user", "id": scripted.cli_user}))
        assert want == [(found[i][0].event, found[i][0].actor) for i in ids]

    def test_row_fields_kept(self, scripted: Scripted) -> None:
        """A record keeps the row's id, event name, owner, dag_id, task_id and run_id."""
        found = by_log_id(events(scripted.server.ledger))
        [(i, *_)] = db(
            scripted.server.path,
            "SELECT id FROM log WHERE id > ? AND event = 'patch_task_instance'",
            scripted.baseline,
        )
        data = found[int(i)][0].data  # type: ignore[call-overload]
        want = {"event": "patch_task_instance", "owner": "admin", "dag_id": DAG_ID,
                "task_id": TASK_ID, "run_id": RUN_ID}  # fmt: skip
        assert want == {k: data.get(k) for k in want}
        assert {"log_id", "owner_display_name", "map_index", "try_number", "logical_date",
                "extra"} <= set(data)  # fmt: skip

    def test_trigger_and_clear_linked_to_run(self, scripted: Scripted) -> None:
        """The trigger, clear, state changes of the named run carry its run_id."""
        chain = events(scripted.server.ledger)
        linked = [r.event for r in chain if r.data.get("run_id") == RUN_ID]
        assert ["run.triggered", "task.state_set", "run.cleared", "task.cleared",
                "run.state_set"] == linked  # fmt: skip

    def test_trigger_without_run_id_linked(self, scripted: Scripted) -> None:
        """A trigger whose body names no run is linked to the run it created, though the
        admin's other run of that DAG was cleared (re-queued) just after it."""
        chain = events(scripted.server.ledger, "run.triggered")
        unnamed = [r for r in chain if r.data["run_link"] != "row"]
        assert 1 == len(unnamed), [r.data for r in chain]
        [record] = unnamed
        want = {"run_id": scripted.generated_run_id, "run_link": "dag_run"}
        assert want == {k: record.data.get(k) for k in want}

    def test_logins(self, scripted: Scripted) -> None:
        """Each token request (run_script asks one per user) gave one access.login naming its
        user, the auth manager and the client."""
        logins = events(scripted.server.ledger, "access.login")
        assert {"admin": 1, "viewer": 1} == collections.Counter(str(r.data["user"]) for r in logins)
        want = {
            "path": "/auth/token",
            "status": 201,
            "authenticator": "simple",
            "client": "127.0.0.1",
        }
        assert [want] * len(logins) == [{k: r.data.get(k) for k in want} for r in logins]

    def test_viewer_denied(self, scripted: Scripted) -> None:
        """Each of the viewer's refused writes gave one access.denied; the refused variable
        write is still on the chain as Airflow logged it (no outcome in the row)."""
        denied = events(scripted.server.ledger, "access.denied")
        got = sorted((r.data["method"], r.data["path"], r.data["status"], r.data["user"])
                     for r in denied)  # fmt: skip
        want = sorted([("POST", "/api/v2/variables", 403, "viewer"),
                       ("PATCH", f"/api/v2/dags/{DAG_ID}", 403, "viewer")])  # fmt: skip
        assert want == got
        # rows of this module's script only: the session's shared Airflow DB holds other
        # modules' rows (a viewer's refused write among them), and the server ingests them all
        viewer = [r for r in events(scripted.server.ledger, "variable.*")
                  if r.actor == {"type": "user", "id": "viewer"}
                  and r.data["log_id"] > scripted.baseline]  # fmt: skip
        assert ["post_variable"] == [r.data["event"] for r in viewer]

    def test_chain_verifies(self, scripted: Scripted) -> None:
        """The events chain the server wrote verifies (hash chain, Merkle tree, checkpoints)."""
        done = subprocess.run(
            [str(BIN / "workflow-audit"), "verify", "--chain", CHAIN,
             "--ledger", f"sqlite:///{scripted.server.ledger}"],
            env=scripted.server.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert 0 == done.returncode, done.stdout + done.stderr

    def test_no_secret_byte_in_ledger(self, scripted: Scripted) -> None:
        """No secret value (variables, connection password and extra, the CLI's value) and no
        login password is in any byte of the ledger file or its WAL, though Airflow's own log
        holds the CLI's value."""
        secret = scripted.secret
        cli = db(scripted.server.path, "SELECT extra FROM log WHERE event = 'cli_variables_set'")
        assert any(secret in str(extra) for (extra,) in cli)  # the canary: the check can fail
        ledger = scripted.server.ledger
        files = sorted(ledger.parent.glob(ledger.name + "*"))
        assert ledger in files
        token = secret.removeprefix("s3cr3t-VALUE-").encode()
        for path in files:
            blob = path.read_bytes()
            assert token not in blob, path
            assert secret.encode() not in blob, path
            for password in PASSWORDS.values():
                assert password.encode() not in blob, path


# -- fail-open -------------------------------------------------------------------------------


@contextlib.contextmanager
def immutable(paths: list[Path]) -> Iterator[None]:
    """``chattr +i`` (tests run as root, who ignores modes; the immutable flag binds root too):
    writes and new files fail with EPERM. Never the -shm file: SQLite maps it, and a write to
    an immutable mapped page is a SIGBUS that would kill the server, not a write error."""
    chattr = shutil.which("chattr")
    assert chattr is not None, "chattr (e2fsprogs) is needed to make the ledger unwritable"
    subprocess.run([chattr, "+i", *map(str, paths)], check=True)
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *map(str, paths)], check=True)


def probe(server_url: str, token: str, viewer: str, n: int) -> list[int]:
    """Requests that write log rows, a login and a denial: their statuses."""
    pool = f"failopen_pool_{n}"
    return [
        request(server_url + "/api/v2/pools", "POST", token, {"name": pool, "slots": 2})[0],
        request(server_url + f"/api/v2/pools/{pool}", "DELETE", token)[0],
        request(server_url + f"/api/v2/dags/{DAG_ID}", "PATCH", token, {"is_paused": False})[0],
        request(server_url + "/api/v2/dags", "GET", token)[0],
        request(server_url + "/api/v2/variables", "POST", viewer, {"key": "v", "value": "x"})[0],
        request(
            server_url + "/auth/token", "POST", None,
            {"username": "admin", "password": PASSWORDS["admin"]},
        )[0],
    ]  # fmt: skip


class TestFailOpen:
    """An unwritable ledger under a running API server."""

    def test_unwritable_ledger(
        self, scripted: Scripted, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        """The server answers as before while the ledger is immutable, the ingestion failure
        is counted (OTLP metrics) and logged, and once writable again every row written
        meanwhile is recorded, once."""
        base = scripted.server
        ledger = tmp_path_factory.mktemp("failopen") / "ledger.db"
        receiver = OtlpReceiver().start()
        port = free_port()
        env = {
            **base.env,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
            "WORKFLOW_AUDIT_METRICS": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        }
        url = f"http://127.0.0.1:{port}"
        try:
            with serving(env, port):
                server = SecuredServer(url, env, ledger, base.path)
                token = server.token("admin", PASSWORDS["admin"])
                viewer = server.token("viewer", PASSWORDS["viewer"])
                before = probe(url, token, viewer, 1)
                wait_ingested(ledger, base.path)
                counted_before = ingest_failures(receiver)
                locked = [ledger, ledger.with_name(ledger.name + "-wal"), ledger.parent]
                with immutable([p for p in locked if p.exists()]):
                    last_before = max(i for i, _, _ in log_rows(base.path))
                    during = probe(url, token, viewer, 2)
                    written = [i for i, _, _ in log_rows(base.path, last_before)]
                    assert written, "the probe wrote no log row"
                    counted = wait_counted(receiver, counted_before)
                    assert before == during
                    assert not set(by_log_id(events(ledger))) & set(written)
                wait_ingested(ledger, base.path)
                after = probe(url, token, viewer, 3)
                wait_ingested(ledger, base.path)
                assert before == after
                found = by_log_id(events(ledger))
                rows = log_rows(base.path)
                assert {i: 1 for i, _, _ in rows} == {i: len(found[i]) for i, _, _ in rows}
            assert counted > counted_before
            log = (base.path / f"api-server-{port}.log").read_text(errors="replace")
            failed = f"ingesting onto chain '{CHAIN}' failed (LedgerError: "
            assert 1 == log.count(failed), "logged once per kind, not at every retry"
            assert f"ingesting onto chain '{CHAIN}' works again" in log
        finally:
            receiver.stop()


INGEST_FAILURES = "workflow_audit.ingest_failures"


def ingest_failures(receiver: OtlpReceiver) -> float:
    """The highest ``ingest_failures`` count the server exported so far (0: none yet)."""
    return max((p.value for p in receiver.points if p.name == INGEST_FAILURES), default=0.0)


def wait_counted(receiver: OtlpReceiver, before: float) -> float:
    """Wait until the server exported an ``ingest_failures`` count above ``before``."""
    deadline = time.monotonic() + INGEST_DEADLINE_S
    while True:
        now = ingest_failures(receiver)
        if now > before:
            return now
        assert time.monotonic() < deadline, f"{INGEST_FAILURES} still {now} (was {before})"
        time.sleep(POLL_S)
