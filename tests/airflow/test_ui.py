"""The audit trail inside Airflow's UI (``airflow_audit/ui``), on real ``airflow api-server``
processes: every route of :func:`audit_core.web.create_app` behind Airflow's auth manager
(401 without a token, 403 without the audit-log permission, only the DAGs a user may read),
the plugin's external views in Airflow's plugins API, and the ``audit.*`` record each view
leaves on the ``audit`` chain with the user's name.

The ledger the server reads is filled here with :class:`audit_core.AuditTrail` (records about
two DAGs and about none), not by running DAGs. The FAB server gets two roles of its own:
one without "can read on Audit Logs", one with it and read access to one DAG only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from airflow_audit import ui
from airflow_audit.ui.auth import NO_SUCH_DAG, decide
from airflow_audit.ui.recorder import UNRECORDED, UiRecorder
from audit_core import COUNTERS, AuditConfig, AuditTrail, Event, Record
from audit_core.readlog import AUDIT_CHAIN
from audit_core.web import Viewer, create_app
from tests.airflow._airflow import BIN, PASSWORDS, SecuredServer, events, records

#: How long a record may take to appear (the recorder is asynchronous; the machine is busy).
DEADLINE_S = 60.0
DAG_A, DAG_B = "ui_alpha", "ui_beta"
RUN, TASK = "manual__ui_run_1", "extract"
CHAIN = "airflow"
#: The FAB users of the roles created here, and their passwords.
FAB_USERS = {"noaudit": "NoAudit-pw-7", "onedag": "OneDag-pw-7"}


@dataclass(frozen=True)
class Sample:
    """Seqs (on :data:`CHAIN`) of records the fixtures wrote."""

    a: int  # about DAG_A, run RUN, task TASK
    b: int  # about DAG_B
    none: int  # about no DAG


def populate(ledger: Path) -> Sample:
    """Records about DAG_A, DAG_B and no DAG on the server's ledger, then a checkpoint (so
    that their proofs exist)."""
    trail = AuditTrail(AuditConfig(ledger_url=f"sqlite:///{ledger}", chain=CHAIN))
    try:
        seqs: dict[str, int] = {}
        for dag in (DAG_A, DAG_B):
            subject = {"dag_id": dag, "run_id": RUN, "task_id": TASK}
            trail.record("task.started", {"try_number": 1}, subject=subject)
            seqs[dag] = trail.record("task.succeeded", {"try_number": 1}, subject=subject).seq
        trail.record("variable.set", {"key": "ui_var"}, subject={"variable": "ui_var"})
        none = trail.record("connection.created", {"conn_id": "ui_conn"}, subject={}).seq
        assert trail.checkpoint(CHAIN) is not None
    finally:
        trail.close()
    return Sample(a=seqs[DAG_A], b=seqs[DAG_B], none=none)


def app_routes(ledger: Path) -> list[str]:
    """Every route of the app, as ``create_app`` builds it (the list grows with the app)."""
    app = create_app(
        ledger_url=f"sqlite:///{ledger}",
        viewer=lambda: Viewer("nobody", frozenset()),
        recorder=lambda event: None,
        via=ui.VIA,
    )
    return sorted(r.path for r in app.routes if isinstance(r, APIRoute))


def static_name() -> str:
    """A file the app serves under ``/static/``."""
    folder = resources.files("audit_core.web") / "static"
    return sorted(e.name for e in folder.iterdir() if e.is_file())[0]


def fill(route: str, sample: Sample, dag: str = DAG_A) -> str:
    """``route`` with its path parameters: ``dag``'s run and task, and ``dag``'s record
    (DAG_A's or DAG_B's). A new route with a parameter this does not know fails here."""
    seq = sample.a if dag == DAG_A else sample.b
    values = {
        "dag_id": dag,
        "run_id": RUN,
        "task_id": TASK,
        "chain": CHAIN,
        "seq": str(seq),
        "name": static_name(),
    }
    quoted = {k: urllib.parse.quote(v, safe="") for k, v in values.items()}
    # Starlette's converters ({chain:path}) are not format specs: drop them first.
    plain = re.sub(r"\{(\w+):\w+\}", r"{\1}", route)
    return ui.URL_PREFIX + plain.format(**quoted)


def dag_routes(routes: list[str]) -> list[str]:
    """The routes about one DAG (or one DAG's record)."""
    return [r for r in routes if "{dag_id}" in r or "{seq}" in r]


def get(
    server: SecuredServer, path: str, token: str | None = None, *, cookie: bool = False
) -> httpx.Response:
    """One GET, no redirect followed; the token as a bearer header or as the UI's cookie."""
    headers = {}
    cookies = {}
    if token and cookie:
        cookies["_token"] = token
    elif token:
        headers["Authorization"] = "Bearer " + token
    with httpx.Client(cookies=cookies, timeout=120) as client:
        return client.get(server.url + path, headers=headers)


def exported(server: SecuredServer, token: str, query: str = "") -> list[dict[str, Any]]:
    """The records ``/export.jsonl`` gives this user, parsed."""
    answer = get(server, f"{ui.URL_PREFIX}/export.jsonl?{query}", token)
    assert 200 == answer.status_code, answer.text[:500]
    return [json.loads(line) for line in answer.text.splitlines() if line.strip()]


def dag_of(record: dict[str, Any]) -> str | None:
    subject = record.get("subject") or {}
    return subject.get("dag_id")


def wait_for_read(ledger: Path, event: str, user: str, marker: str | None = None) -> Record:
    """The ``event`` record of the audit chain read by ``user`` (its filter naming
    ``marker``, when given), once the asynchronous recorder wrote it."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = [
            r
            for r in (records(ledger, AUDIT_CHAIN) if ledger.exists() else [])
            if r.event == event
            and (r.actor or {}).get("id") == user
            and (marker is None or marker in json.dumps(r.data))
        ]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {event} by {user} ({marker}) in {DEADLINE_S}s"
        time.sleep(0.2)  # polling the ledger for the recorder's write


# -- units: the auth mapping and the recorder, without a server -------------------------------


class _Manager:
    """An auth manager's three answers the mapping reads (a table, not Airflow)."""

    def __init__(self, audit: bool, every_dag: bool, dags: set[str]) -> None:
        self.audit, self.every_dag, self.dags = audit, every_dag, dags
        self.asked: list[dict[str, Any]] = []

    def is_authorized_dag(self, **kwargs: Any) -> bool:
        self.asked.append(kwargs)
        if kwargs.get("access_entity") is not None:
            return self.audit
        return self.every_dag

    def get_authorized_dag_ids(self, *, user: Any, method: str) -> set[str]:
        return self.dags


class _User:
    def get_name(self) -> str:
        return "ann"


class TestDecide:
    """The mapping from the auth manager's answers to a :class:`Viewer`."""

    def test_no_audit_log_permission_is_no_viewer(self) -> None:
        assert decide(_Manager(False, True, set()), _User()) is None

    def test_every_dag(self) -> None:
        manager = _Manager(True, True, {DAG_A})
        assert Viewer("ann", None) == decide(manager, _User())
        # the "every DAG" question names a DAG id no DAG can have
        assert NO_SUCH_DAG == manager.asked[-1]["details"].id

    def test_some_dags(self) -> None:
        assert Viewer("ann", frozenset({DAG_A})) == decide(_Manager(True, False, {DAG_A}), _User())


class TestRecorder:
    """Fail-open and off the caller's thread."""

    def test_events_go_on_the_audit_chain_from_another_thread(self) -> None:
        import threading

        got: list[tuple[str, list[Event], str]] = []

        def submit(what: str, build: Any) -> bool:
            got.append((what, list(build()), threading.current_thread().name))
            return True

        recorder = UiRecorder(submit)
        recorder(Event(type="audit.viewed", data={"via": "airflow"}))
        assert recorder.flush(DEADLINE_S)
        (what, events, thread) = got[0]
        assert ("audit.viewed", AUDIT_CHAIN) == (what, events[0].chain)
        assert thread != threading.current_thread().name

    def test_a_failing_ledger_is_counted_never_raised(self) -> None:
        def submit(what: str, build: Any) -> bool:
            raise OSError("ledger gone")

        before = COUNTERS.snapshot().get(UNRECORDED, 0)
        recorder = UiRecorder(submit)
        recorder(Event(type="audit.viewed"))
        assert recorder.flush(DEADLINE_S)
        assert COUNTERS.snapshot().get(UNRECORDED, 0) == before + 1


class TestPluginApp:
    """The plugin's one app: the audit trail or an empty app, the ingestion's lifespan kept."""

    @staticmethod
    def lifespan(entered: list[str]) -> ui.Lifespan:
        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            entered.append("start")
            yield
            entered.append("stop")

        return lifespan

    def test_lifespan_wraps_the_app(self) -> None:
        from fastapi.testclient import TestClient

        entered: list[str] = []
        app = ui.plugin_app(lifespan=self.lifespan(entered), ui=False)
        with TestClient(app):
            assert ["start"] == entered
        assert ["start", "stop"] == entered

    def test_unbuildable_ui_keeps_the_lifespan(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Bad settings: no audit trail (logged), the ingestion still starts."""
        from fastapi.testclient import TestClient

        monkeypatch.setenv("AIRFLOW__WORKFLOW_AUDIT__HOOK_TIMEOUT", "soon")
        entered: list[str] = []
        app = ui.plugin_app(lifespan=self.lifespan(entered), ui=True)
        with TestClient(app) as client:
            assert 404 == client.get("/").status_code
        assert ["start", "stop"] == entered

    def test_settings(self) -> None:
        from airflow_audit.settings import load_settings

        options = {"ui": "off", "verifier_key": " k1 , /etc/k2.pub ,"}
        settings = load_settings(lambda s, k, d: options.get(k, d), env={}, home="/tmp")
        assert (False, ("k1", "/etc/k2.pub")) == (settings.ui, settings.verifier_keys)
        assert load_settings(lambda s, k, d: d, env={}, home="/tmp").ui


#: Prints what the plugin registers: app count, external views' destinations, listeners.
_PLUGIN = """
import json
import os
from airflow_audit.plugin import WorkflowAuditPlugin as P

apps = getattr(P, "fastapi_apps", [])
print(json.dumps([len(apps), [v["destination"] for v in P.external_views], len(P.listeners)]))
"""


@pytest.mark.parametrize(
    ("options", "expected"),
    [({}, [1, ["nav", "dag", "dag_run", "task_instance"], 2]),
     ({"UI": "False"}, [1, [], 2]),
     # the anchor (checkpoints without cron) runs in the scheduler and the API server
     # whenever the plugin is enabled: its lifecycle listener and the app's lifespan stay
     ({"INGEST_EVENT_LOG": "False", "RECORD_ACCESS": "False"},
      [1, ["nav", "dag", "dag_run", "task_instance"], 2]),
     ({"UI": "off", "INGEST_EVENT_LOG": "False", "RECORD_ACCESS": "False"}, [1, [], 2]),
     ({"ENABLED": "False"}, [0, [], 0])],
)  # fmt: skip
def test_plugin_registers_the_ui_when_enabled(
    tmp_path: Path, options: dict[str, str], expected: list[Any]
) -> None:
    """``[workflow_audit] ui`` (default on) decides the views and the app; the app is there
    for the ingestion's and the anchor's lifespan too, and not at all when disabled."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    env.update({f"AIRFLOW__WORKFLOW_AUDIT__{k}": v for k, v in options.items()})
    python = [str(BIN / "python"), "-c", _PLUGIN]
    done = subprocess.run(python, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]
    # the script's JSON line: a warning may follow it on a busy machine
    last = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(("{", "[")))
    assert expected == json.loads(last)


# -- SimpleAuthManager: admin and viewer ---------------------------------------------------------


@pytest.fixture(scope="module")
def simple(secured_api_server: SecuredServer) -> tuple[SecuredServer, Sample]:
    return secured_api_server, populate(secured_api_server.ledger)


class TestSimpleAuthManager:
    """SimpleAuthManager: admin and viewer may both read the audit log (as Airflow's own
    Audit Log page), and every DAG."""

    def test_every_route_needs_a_token(self, simple: tuple[SecuredServer, Sample]) -> None:
        server, sample = simple
        routes = app_routes(server.ledger)
        assert len(routes) >= 12, routes
        # A token that is no JWT is refused as Airflow's own API refuses it (403 there).
        airflow_forged = get(server, "/api/v2/eventLogs", "not-a-token").status_code
        assert airflow_forged in (401, 403)
        for route in routes:
            answer = get(server, fill(route, sample))
            assert 401 == answer.status_code, (route, answer.text[:300])
            forged = get(server, fill(route, sample), "not-a-token")
            assert airflow_forged == forged.status_code, (route, forged.text[:300])

    @pytest.mark.parametrize("user", ["admin", "viewer"])
    def test_every_route_answers_a_reader(
        self, simple: tuple[SecuredServer, Sample], user: str
    ) -> None:
        server, sample = simple
        token = server.token(user, PASSWORDS[user])
        for route in app_routes(server.ledger):
            for dag in (DAG_A, DAG_B):
                answer = get(server, fill(route, sample, dag), token)
                assert 200 == answer.status_code, (route, dag, answer.text[:300])

    def test_the_ui_cookie_is_a_token(self, simple: tuple[SecuredServer, Sample]) -> None:
        """The iframe sends the ``_token`` cookie of Airflow's UI, no header."""
        server, _ = simple
        token = server.token("viewer", PASSWORDS["viewer"])
        assert 200 == get(server, ui.URL_PREFIX + "/", token, cookie=True).status_code

    def test_the_ingestion_lifespan_still_runs(self, simple: tuple[SecuredServer, Sample]) -> None:
        """The app's lifespan starts the permission checks (record_access): their first
        snapshot reaches the events chain."""
        server, _ = simple
        deadline = time.monotonic() + DEADLINE_S
        while not events(server.ledger, "permission.snapshot"):
            assert time.monotonic() < deadline, "no permission.snapshot: the lifespan did not run"
            time.sleep(0.2)  # polling the ledger for the api-server's write

    def test_every_record_is_shown(self, simple: tuple[SecuredServer, Sample]) -> None:
        server, _ = simple
        token = server.token("viewer", PASSWORDS["viewer"])
        dags = {dag_of(r) for r in exported(server, token, f"chain={CHAIN}")}
        assert {DAG_A, DAG_B, None} == dags

    def test_external_views_in_the_plugins_api(self, simple: tuple[SecuredServer, Sample]) -> None:
        server, _ = simple
        token = server.token("admin", PASSWORDS["admin"])
        answer = get(server, "/api/v2/plugins", token)
        assert 200 == answer.status_code, answer.text[:300]
        plugin = next(p for p in answer.json()["plugins"] if p["name"] == "workflow_audit")
        views = {v["destination"]: v for v in plugin["external_views"]}
        assert "browse" == views["nav"]["category"]
        assert "Audit trail" == views["nav"]["name"]
        assert {
            "nav": "/workflow-audit/",
            "dag": "/workflow-audit/dags/{DAG_ID}",
            "dag_run": "/workflow-audit/dags/{DAG_ID}/runs/{RUN_ID}",
            "task_instance": "/workflow-audit/dags/{DAG_ID}/runs/{RUN_ID}/tasks/{TASK_ID}",
        } == {d: v["href"] for d, v in views.items()}
        assert len({v["url_route"] for v in views.values()}) == 4
        app = plugin["fastapi_apps"][0]
        assert "/workflow-audit" == app["url_prefix"]

    def test_each_read_is_recorded_with_the_user(
        self, simple: tuple[SecuredServer, Sample]
    ) -> None:
        """A page view, a record opened, a proof downloaded, an export: one ``audit.*``
        record each on the audit chain, the Airflow user as actor, via airflow."""
        server, sample = simple
        token = server.token("viewer", PASSWORDS["viewer"])
        marker = "ui-" + uuid.uuid4().hex[:8]
        for path in (
            f"/?actor={marker}",
            f"/records/{CHAIN}/{sample.a}",
            f"/records/{CHAIN}/{sample.a}/proof",
            f"/export.csv?actor={marker}",
            "/status",
        ):
            assert 200 == get(server, ui.URL_PREFIX + path, token).status_code, path
        viewed = wait_for_read(server.ledger, "audit.viewed", "viewer", marker)
        assert ("user", "airflow") == (viewed.actor["type"], viewed.data["via"])
        assert {} == (viewed.subject or {})
        assert "airflow" == wait_for_read(server.ledger, "audit.opened", "viewer").data["via"]
        wait_for_read(server.ledger, "audit.proof_downloaded", "viewer")
        exported_ = wait_for_read(server.ledger, "audit.exported", "viewer", marker)
        assert "csv" == exported_.data["format"]


# -- FAB: a role without the audit log, a role with one DAG --------------------------------------

_DAGS_FILE = f'''
"""Two DAGs for the UI tests: their ids must be known to Airflow (FAB lists DAG ids from
its metadata DB)."""
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

for _dag_id in ({DAG_A!r}, {DAG_B!r}):
    with DAG(_dag_id, schedule=None) as _dag:
        EmptyOperator(task_id={TASK!r})
    globals()[_dag_id] = _dag
'''

_ROLES_SCRIPT = f"""
from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

with get_application_builder() as ab:
    sm = ab.sm
    grants = {{
        "UiNoAudit": [("can_read", "DAGs"), ("can_read", "DAG Runs"), ("can_read", "Website")],
        "UiOneDag": [("can_read", "Audit Logs"), ("can_read", "DAG:{DAG_A}")],
    }}
    users = {{"noaudit": "UiNoAudit", "onedag": "UiOneDag"}}
    passwords = {FAB_USERS!r}
    for name, perms in grants.items():
        role = sm.add_role(name)
        for action, resource in perms:
            sm.add_permission_to_role(role, sm.create_permission(action, resource))
    for user, role in users.items():
        assert sm.add_user(
            user, user, user, user + "@example.com", sm.find_role(role), password=passwords[user]
        )
"""


@pytest.fixture(scope="module")
def fab(fab_api_server: SecuredServer) -> tuple[SecuredServer, Sample]:
    """The FAB server with DAG_A and DAG_B known to Airflow, the users of :data:`FAB_USERS`
    and the ledger filled."""
    server = fab_api_server
    (server.path / "dags" / "ui_test_dags.py").write_text(_DAGS_FILE)
    for args in (
        [str(BIN / "airflow"), "dags", "reserialize"],
        [str(BIN / "python"), "-c", _ROLES_SCRIPT],
    ):
        done = subprocess.run(
            args, env=server.env, capture_output=True, text=True, timeout=600, check=False
        )
        assert 0 == done.returncode, done.stderr[-3000:]
    return server, populate(server.ledger)


class TestFab:
    """The FAB auth manager: permissions from roles."""

    def test_without_the_audit_log_permission_every_route_is_refused(
        self, fab: tuple[SecuredServer, Sample]
    ) -> None:
        server, sample = fab
        token = server.token("noaudit", FAB_USERS["noaudit"])
        for route in app_routes(server.ledger):
            answer = get(server, fill(route, sample), token)
            assert 403 == answer.status_code, (route, answer.text[:300])
            assert 401 == get(server, fill(route, sample)).status_code, route

    def test_admin_reads_every_dag(self, fab: tuple[SecuredServer, Sample]) -> None:
        server, sample = fab
        token = server.token("admin", PASSWORDS["admin"])
        for route in app_routes(server.ledger):
            answer = get(server, fill(route, sample, DAG_B), token)
            assert 200 == answer.status_code, (route, answer.text[:300])
        dags = {dag_of(r) for r in exported(server, token, f"chain={CHAIN}")}
        assert {DAG_A, DAG_B, None} == dags

    def test_viewer_role_is_refused_as_by_airflows_audit_log(
        self, fab: tuple[SecuredServer, Sample]
    ) -> None:
        """FAB gives "can read on Audit Logs" to Admin only: its Viewer reads neither
        Airflow's event log nor ours."""
        server, sample = fab
        token = server.token("viewer", PASSWORDS["viewer"])
        assert 403 == get(server, "/api/v2/eventLogs", token).status_code
        for route in app_routes(server.ledger):
            answer = get(server, fill(route, sample), token)
            assert 403 == answer.status_code, (route, answer.text[:300])

    def test_one_dag_role_sees_that_dag_and_records_about_none(
        self, fab: tuple[SecuredServer, Sample]
    ) -> None:
        server, sample = fab
        token = server.token("onedag", FAB_USERS["onedag"])
        routes = app_routes(server.ledger)
        for route in routes:
            answer = get(server, fill(route, sample, DAG_A), token)
            assert 200 == answer.status_code, (route, answer.text[:300])
        for route in dag_routes(routes):
            answer = get(server, fill(route, sample, DAG_B), token)
            assert 403 == answer.status_code, (route, answer.text[:300])
        shown = exported(server, token, f"chain={CHAIN}")
        assert {DAG_A, None} == {dag_of(r) for r in shown}
        assert {sample.a, sample.none} <= {r["seq"] for r in shown}
        # asking for another DAG's records by filter is refused like its tab
        for page in ("/", "/export.jsonl", "/report.md"):
            answer = get(server, f"{ui.URL_PREFIX}{page}?dag={DAG_B}", token)
            assert 403 == answer.status_code, (page, answer.text[:300])
        none = get(server, f"{ui.URL_PREFIX}/records/{CHAIN}/{sample.none}", token)
        assert 200 == none.status_code, none.text[:300]
        opened = wait_for_read(server.ledger, "audit.opened", "onedag")
        assert "airflow" == opened.data["via"]
