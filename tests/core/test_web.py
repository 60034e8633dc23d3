"""The browser view (audit_core.web): every route behind the viewer dependency, the list's
filters and pages, a record's detail and proof, status, exports equal to the CLI's, the
audit of the audit, and 4xx pages for bad input. Real SQLite ledgers written by AuditTrail;
the viewer is a test dependency reading an ``X-User`` header."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")

from fastapi import FastAPI, Header, HTTPException
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from audit_core import AuditConfig, AuditError, AuditTrail, Event, Signer
from audit_core._report import parse_time
from audit_core.ledgers import open_ledger
from audit_core.proofs import verify_inclusion_bundle
from audit_core.query import Query, iterate
from audit_core.readlog import read_event
from audit_core.web import Viewer, create_app
from audit_core.web import app as web_app

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
USERS = {"root": None, "ann": frozenset({"etl"}), "nobody": frozenset()}
ROW = re.compile(r'href="([^"]*)/records/([^/"]+)/(\d+)"')


def viewer(x_user: str | None = Header(default=None)) -> Viewer:
    """Test identities: none → 401; "nobody" → 403; "ann" reads DAG etl; "root" everything."""
    if x_user is None:
        raise HTTPException(401, "sign in first")
    if x_user not in USERS or x_user == "nobody":
        raise HTTPException(403, f"{x_user} may not read the audit trail")
    return Viewer(x_user, USERS[x_user])


@dataclass
class Site:
    url: str
    path: Path
    signer: Signer
    client: TestClient
    events: list[Event]
    covered: int  # records of chain default the checkpoint covers

    def get(self, path: str, user: str | None = "root", **kw: Any) -> Any:
        headers = {"X-User": user} if user else {}
        return self.client.get(path, headers=headers, **kw)

    def key(self) -> str:
        return str(self.signer.verifier)


def _write(url: str, signer: Signer) -> int:
    """Records on chains default, ops and audit; a checkpoint of default before its last 3."""
    config = AuditConfig(
        ledger_url=url, signing_key=str(signer), origin="test.example/audit", checkpoint_every=0
    )
    events: list[Event] = []
    for i in range(60):
        dag = ("etl", "ml", None)[i % 3]
        subject = (
            {}
            if dag is None
            else {"dag_id": dag, "run_id": f"r{i % 2}", "task_id": "ab"[i % 4 // 2]}
        )
        kind = "task.failed" if i % 7 == 0 else "task.succeeded" if dag else "config.changed"
        events.append(
            Event(
                type=kind,
                data={"i": i, "note": "<b>x</b>"},
                subject=subject,
                actor={"type": "user", "id": "ann" if i % 5 == 0 else "svc"},
                ts=T0 + dt.timedelta(minutes=i),
                chain="ops" if i % 4 == 3 else "default",
            )
        )
    events.append(
        Event(
            type="task.unrecorded",
            subject={"dag_id": "etl", "run_id": "r0", "task_id": "a"},
            ts=T0 + dt.timedelta(minutes=30, seconds=1),
        )
    )
    verified = read_event(
        "verified",
        user="auditor",
        via="cli",
        verdict="valid",
        chains={"default": {"size": 1, "head": "00", "valid": True}},
        key_checked=True,
    )
    with AuditTrail(config) as trail:
        trail.record_many(events)
        trail.record_many([verified])
        stored = trail.checkpoint("default")
        assert stored is not None
        for i in range(3):
            trail.record(
                "task.started", subject={"dag_id": "etl"}, ts=T0 + dt.timedelta(hours=2, minutes=i)
            )
    return stored.size


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    path = tmp_path / "ledger.db"
    url = f"sqlite:///{path}"
    signer = Signer.generate("test.example/key")
    covered = _write(url, signer)
    got: list[Event] = []
    app = create_app(
        ledger_url=url,
        viewer=viewer,
        recorder=got.append,
        via="serve",
        verifier_keys=[str(signer.verifier)],
        config=AuditConfig(ledger_url=url, spool_dir=str(tmp_path / "spool")),
    )
    with TestClient(app) as client:
        yield Site(url, path, signer, client, got, covered)


def _all(site: Site, q: Query) -> list[tuple[str, int]]:
    with closing(open_ledger(site.url, read_only=True)) as ledger:
        found = [(r.ts, r.chain, r.seq) for r in iterate(ledger, q)]
    return [(c, s) for _, c, s in sorted(found, reverse=True)]


def _rows(html: str) -> list[tuple[str, int]]:
    return [(unquote(m[2]), int(m[3])) for m in ROW.finditer(html)]


def _pages(site: Site, first: str, user: str = "root") -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    url: str | None = first
    while url is not None:
        r = site.get(url, user)
        assert 200 == r.status_code, r.text
        seen += _rows(r.text)
        nxt = re.search(r'href="([^"]+)" rel="next"', r.text)
        url = nxt[1].replace("&amp;", "&") if nxt else None
    return seen


def _sample(route: APIRoute) -> str:
    values = {
        "dag_id": "etl",
        "run_id": "r0",
        "task_id": "a",
        "chain": "default",
        "seq": "0",
        "name": "app.css",
    }
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: values[m[1]], route.path)


class TestAccess:
    def test_every_route_asks_the_viewer(self, site: Site) -> None:
        """Every route of the app: 401 without identity, 403 without access, 200 with it."""
        routes = [r for r in site.client.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
        assert len(routes) >= 12
        for route in routes:
            path = _sample(route)
            assert 401 == site.get(path, None).status_code, path
            assert 403 == site.get(path, "nobody").status_code, path
            assert 200 == site.get(path, "root").status_code, path
            assert 200 == site.get(path, "ann").status_code, path

    def test_401_and_403_are_pages(self, site: Site) -> None:
        r = site.get("/", None)
        assert "text/html" in r.headers["content-type"]
        assert "sign in first" in r.text

    def test_limited_user_sees_only_their_dags(self, site: Site) -> None:
        assert 403 == site.get("/dags/ml", "ann").status_code
        assert 403 == site.get("/dags/ml/runs/r0", "ann").status_code
        assert 403 == site.get("/dags/ml/runs/r0/tasks/a", "ann").status_code
        assert 403 == site.get("/?dag=ml", "ann").status_code
        assert 403 == site.get("/export.csv?dag=ml", "ann").status_code
        seen = _pages(site, "/?limit=200", "ann")
        assert _all(site, Query(dags=frozenset({"etl"}), chains=("default", "ops"))) == seen
        ml = {(c, s) for c, s in _all(site, Query(dag="ml"))}
        assert ml
        assert not ml & set(seen)
        chain, seq = sorted(ml)[0]
        assert 403 == site.get(f"/records/{chain}/{seq}", "ann").status_code
        assert 403 == site.get(f"/records/{chain}/{seq}/proof", "ann").status_code
        export = site.get("/export.jsonl", "ann").content.splitlines()
        assert len(seen) == len(export)
        assert all(orjson.loads(line)["subject"].get("dag_id") in (None, "etl") for line in export)

    def test_audit_chain_is_for_every_dag_readers(self, site: Site) -> None:
        """Who read what, with the filters they typed, is not shown to a DAG-limited viewer
        (a filter may name a DAG they may not read); every-DAG readers see it."""
        audit = _all(site, Query(chains=("audit",)))
        assert audit
        chain, seq = audit[0]
        assert 403 == site.get("/?chain=audit", "ann").status_code
        assert 403 == site.get("/export.jsonl?chain=audit", "ann").status_code
        assert 403 == site.get(f"/records/{chain}/{seq}", "ann").status_code
        assert 403 == site.get(f"/records/{chain}/{seq}/proof", "ann").status_code
        assert not set(audit) & set(_pages(site, "/?limit=200", "ann"))
        exported = site.get("/export.jsonl", "ann").content.splitlines()
        assert all(orjson.loads(line)["chain"] != "audit" for line in exported)
        assert 200 == site.get(f"/records/{chain}/{seq}", "root").status_code
        assert set(audit) <= set(_pages(site, "/?limit=200", "root"))


class TestList:
    def test_newest_first_with_links_and_count(self, site: Site) -> None:
        r = site.get("/")
        expected = _all(site, Query())
        assert expected[:50] == _rows(r.text)
        assert f">{len(expected)}</strong>" in r.text
        assert "&lt;b&gt;x&lt;/b&gt;" in r.text
        assert "<b>x</b>" not in r.text

    def test_pagination_covers_each_record_once(self, site: Site) -> None:
        seen = _pages(site, "/?limit=7")
        assert _all(site, Query()) == seen
        assert len(seen) == len(set(seen))

    @pytest.mark.parametrize(
        ("params", "q"),
        [
            ("dag=etl", Query(dag="etl")),
            ("dag=etl&run=r1", Query(dag="etl", run="r1")),
            ("task=b", Query(task="b")),
            ("actor=ann", Query(actor="ann")),
            ("chain=ops", Query(chains=("ops",))),
            ("event=task.f*", Query(events=("task.f*",))),
            ("event=task.failed&event=config.*", Query(events=("task.failed", "config.*"))),
            ("event=task.failed+config.*", Query(events=("task.failed", "config.*"))),
            ("event=task.failed%2C%20config.*", Query(events=("task.failed", "config.*"))),
            (
                "since=2026-11-01T00:20:00Z&until=2026-11-01T00:40Z",
                Query(
                    since=parse_time("2026-11-01T00:20:00Z"), until=parse_time("2026-11-01T00:40Z")
                ),
            ),
            ("since=2026-11-01T00:50:00%2B00:00", Query(since=parse_time("2026-11-01T00:50:00Z"))),
        ],
    )
    def test_filters(self, site: Site, params: str, q: Query) -> None:
        expected = _all(site, q)
        assert expected
        assert expected == _pages(site, f"/?{params}&limit=5")

    def test_tabs_are_the_list_prefiltered(self, site: Site) -> None:
        assert _all(site, Query(dag="etl")) == _pages(site, "/dags/etl?limit=200")
        assert _all(site, Query(dag="etl", run="r0")) == _pages(site, "/dags/etl/runs/r0")
        assert _all(site, Query(dag="etl", run="r0", task="a")) == _pages(
            site, "/dags/etl/runs/r0/tasks/a"
        )
        # the path beats the query string
        assert _all(site, Query(dag="etl")) == _pages(site, "/dags/etl?dag=ml&limit=200")

    def test_count_is_capped(self, site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(web_app, "COUNT_CAP", 5)
        assert ">5+</strong>" in site.get("/").text


class TestDetail:
    def test_every_field_and_the_chain_position(self, site: Site) -> None:
        with closing(open_ledger(site.url, read_only=True)) as ledger:
            rec = next(iter(iterate(ledger, Query(chains=("default",), events=("task.failed",)))))
            size = len(list(ledger.read("default")))
        r = site.get(f"/records/default/{rec.seq}")
        assert 200 == r.status_code
        text = r.text
        for value in (rec.hash, rec.prev, rec.ts, rec.event, f"seq {rec.seq:,} of {size:,}"):
            assert value in text
        assert "&#34;note&#34;: &#34;&lt;b&gt;x&lt;/b&gt;&#34;" in text or "&lt;b&gt;x" in text
        assert "covered by the signed checkpoint" in text
        assert f"/records/default/{rec.seq}/proof" in text
        assert (
            f"workflow-audit verify-proof proof-default-{rec.seq}.json --key {site.key()}" in text
        )

    def test_uncovered_record_says_how_to_cover_it(self, site: Site) -> None:
        r = site.get(f"/records/default/{site.covered}")
        assert "not yet" in r.text
        assert "workflow-audit checkpoint" in r.text
        proof = site.get(f"/records/default/{site.covered}/proof")
        assert 409 == proof.status_code
        assert "workflow-audit checkpoint" in proof.text

    def test_proof_verifies_in_python_and_with_the_cli(self, site: Site, tmp_path: Path) -> None:
        r = site.get("/records/default/4/proof")
        assert 200 == r.status_code
        assert 'attachment; filename="proof-default-4.json"' == r.headers["content-disposition"]
        bundle = orjson.loads(r.content)
        proven = verify_inclusion_bundle(bundle, [site.signer.verifier])
        assert ("default", 4) == (proven.record.chain, proven.record.seq)
        path = tmp_path / "proof-default-4.json"
        path.write_bytes(r.content)
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit_core.cli",
                "verify-proof",
                str(path),
                "--key",
                site.key(),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == cli.returncode, cli.stderr
        assert cli.stdout.startswith("valid: chain 'default' seq 4")


class TestExports:
    @pytest.mark.parametrize(
        "params",
        [
            [],
            [("dag", "etl"), ("event", "task.*")],
            [("chain", "ops"), ("chain", "default"), ("since", "2026-11-01T00:10:00Z")],
            [("run", "r1"), ("task", "a"), ("actor", "svc")],
        ],
    )
    @pytest.mark.parametrize("fmt", ["jsonl", "csv"])
    def test_export_equals_the_cli(
        self, site: Site, tmp_path: Path, fmt: str, params: list[tuple[str, str]]
    ) -> None:
        r = site.get(f"/export.{fmt}", params=params)  # before the CLI records its own read
        assert 200 == r.status_code
        assert r.headers["content-disposition"].startswith('attachment; filename="audit-')
        out = tmp_path / f"out.{fmt}"
        flags = [f"--{'dag' if k == 'dag' else k}={v}" for k, v in params]
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit_core.cli",
                "export",
                "--ledger",
                site.url,
                "--format",
                fmt,
                "-o",
                str(out),
                *flags,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == cli.returncode, cli.stderr
        assert out.read_bytes() == r.content
        assert r.content

    @pytest.mark.parametrize("fmt", ["md", "json"])
    def test_report_equals_the_cli(self, site: Site, tmp_path: Path, fmt: str) -> None:
        r = site.get(f"/report.{fmt}?dag=etl")
        assert 200 == r.status_code
        out = tmp_path / f"report.{fmt}"
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "audit_core.cli",
                "report",
                "--ledger",
                site.url,
                "--format",
                fmt,
                "--dag",
                "etl",
                "--key",
                site.key(),
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert 0 == cli.returncode, cli.stderr
        want, got = out.read_text(encoding="utf-8"), r.text
        if fmt == "json":
            want_doc, got_doc = orjson.loads(want), orjson.loads(got)
            want_doc.pop("generated")
            got_doc.pop("generated")
            assert want_doc == got_doc
        else:
            assert want == got


class TestReadLog:
    def test_each_read_is_handed_to_the_recorder(self, site: Site) -> None:
        site.get("/?dag=etl&limit=3", "ann")
        site.get("/records/default/0", "ann")
        site.get("/records/default/0/proof", "ann")
        site.get("/export.csv?event=task.*", "ann")
        site.get("/report.json", "ann")
        site.get("/status", "ann")
        site.get("/static/app.css", "ann")
        kinds = [e.type for e in site.events]
        assert [
            "audit.viewed",
            "audit.opened",
            "audit.proof_downloaded",
            "audit.exported",
            "audit.exported",
            "audit.viewed",
        ] == kinds
        viewed, opened, proof, export, report, status = (e.data for e in site.events)
        assert {"dag": "etl"} == viewed["filter"]
        assert 3 == viewed["count"]
        assert all("serve" == d["via"] for d in (viewed, opened, proof, export, report, status))
        assert ("default", 0) == (opened["chain"], opened["seq"])
        assert ("records", "csv") == (export["kind"], export["format"])
        assert export["count"] == len(
            _all(site, Query(events=("task.*",), dags=frozenset({"etl"})))
        )
        assert ("report", "json") == (report["kind"], report["format"])
        assert all({"type": "user", "id": "ann"} == e.actor for e in site.events)
        assert all("audit" == e.chain and {} == e.subject for e in site.events)

    def test_refused_reads_are_not_recorded(self, site: Site) -> None:
        site.get("/", None)
        site.get("/dags/ml", "ann")
        site.get("/?since=nonsense")
        assert [] == site.events


class TestStatus:
    def test_chains_checkpoints_verification_gaps_spool(self, site: Site) -> None:
        r = site.get("/status")
        assert 200 == r.status_code
        with closing(open_ledger(site.url, read_only=True)) as ledger:
            head = ledger.head("default")
            assert head is not None
        text = r.text
        assert head.hash.hex()[:16] in text
        assert "verifies under test.example/key" in text
        assert "valid at " in text
        assert "by auditor" in text
        assert 'event=%2A.unrecorded">1</a>' in text
        assert "0 record(s) wait in the spool" in text
        assert "PRIVATE+KEY" not in text


BAD = [
    ("/?since=yesterday", 400),
    ("/?until=2026-13-45", 400),
    ("/?limit=0", 400),
    ("/?limit=201", 400),
    ("/?limit=abc", 400),
    ("/?limit=%d9%a3", 400),  # an Arabic-Indic digit three: not a limit
    ("/?dag=%00", 400),
    ("/?event=" + "a+" * 60, 400),  # 60 patterns in one field
    ("/dags/%00", 400),
    ("/export.csv?event=%00", 400),
    ("/?event=%ed%a0%80", 200),  # not UTF-8: replaced, matches nothing
    ("/records/default/%d9%a3", 400),
    ("/?limit=99999999999999999999999999", 400),
    ("/?before=!!!", 400),
    ("/?before=WzFd", 400),
    ("/?dag=a&dag=b", 400),
    ("/?actor=" + "x" * 5000, 400),
    ("/records/default/-1", 400),
    ("/records/default/abc", 400),
    ("/records/default/99999999999999999999999999", 400),
    ("/records/default/100000", 404),
    ("/records/nochain/1", 404),
    ("/records/%ff%fe/1", 404),
    ("/records/default/100000/proof", 404),
    ("/dags/%ff/runs/x", 200),
    ("/static/app.py", 404),
    ("/static/..%2Fapp.py", 404),
    ("/nowhere", 404),
]


@pytest.mark.parametrize(("path", "status"), BAD)
def test_bad_input_is_a_plain_4xx_page(site: Site, path: str, status: int) -> None:
    r = site.get(path)
    assert status == r.status_code, r.text
    assert "Traceback" not in r.text
    assert 'File "' not in r.text


def test_works_mounted_under_a_prefix(site: Site) -> None:
    """Inside Airflow the app is mounted at /workflow-audit: every link stays under it."""
    parent = FastAPI()
    parent.mount("/workflow-audit", site.client.app)  # type: ignore[arg-type]
    with TestClient(parent) as client:
        r = client.get("/workflow-audit/", headers={"X-User": "root"})
        assert 200 == r.status_code
        links = re.findall(r'(?:href|src|action)="([^"]*)"', r.text)
        absolute = [u for u in links if u.startswith("/")]
        assert absolute
        assert all(u.startswith("/workflow-audit/") for u in absolute)
        rows = _rows(r.text)
        detail = client.get(
            f"/workflow-audit/records/{rows[0][0]}/{rows[0][1]}", headers={"X-User": "root"}
        )
        assert 200 == detail.status_code
        css = client.get("/workflow-audit/static/app.css", headers={"X-User": "root"})
        assert "prefers-color-scheme" in css.text


def test_pages_make_no_outside_request_and_open_no_window(site: Site) -> None:
    for path in ("/", "/status", "/records/default/1", "/dags/etl"):
        r = site.get(path)
        assert not re.search(r'(?:src|href)="(?:https?:)?//', r.text), path
        assert "_blank" not in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert "no-store" == r.headers["cache-control"]
        assert 'class="skip" href="#main"' in r.text


def test_verifier_key_from_a_file(site: Site, tmp_path: Path) -> None:
    """Keys may be given as files of keys (as `verify --key` and `[workflow_audit]
    verifier_key` take them); a file that holds no key stops the app at start."""
    keyfile = tmp_path / "ledger.key.pub"
    keyfile.write_text(site.key() + "\n")
    app = create_app(
        ledger_url=site.url,
        viewer=viewer,
        recorder=lambda e: None,
        via="serve",
        verifier_keys=[str(keyfile)],
    )
    with TestClient(app) as client:
        text = client.get("/status", headers={"X-User": "root"}).text
    assert "verifies under test.example/key" in text
    (tmp_path / "junk").write_text("not a key\n")
    with pytest.raises(AuditError):
        create_app(
            ledger_url=site.url,
            viewer=viewer,
            recorder=lambda e: None,
            via="serve",
            verifier_keys=[str(tmp_path / "junk")],
        )


def test_missing_ledger_is_a_503_page(tmp_path: Path) -> None:
    app = create_app(
        ledger_url=f"sqlite:///{tmp_path / 'none.db'}", viewer=viewer, recorder=print, via="serve"
    )
    with TestClient(app) as client:
        r = client.get("/", headers={"X-User": "root"})
    assert 503 == r.status_code
    assert not (tmp_path / "none.db").exists()


def test_no_secret_in_any_page(tmp_path: Path) -> None:
    """A PostgreSQL URL's password is never shown (the page names the ledger masked)."""
    app = create_app(
        ledger_url="postgresql://u:s3cr3t-pw@127.0.0.1:1/db",
        viewer=viewer,
        recorder=print,
        via="serve",
    )
    with TestClient(app) as client:
        r = client.get("/", headers={"X-User": "root"})
    assert r.status_code in (503, 400)
    assert "s3cr3t-pw" not in r.text


def test_a_failing_recorder_fails_no_page(site: Site) -> None:
    """Recorders are fail-open by contract; one that raises anyway still leaves the page."""

    def boom(event: Event) -> None:
        raise RuntimeError("recorder down")

    app = create_app(ledger_url=site.url, viewer=viewer, recorder=boom, via="airflow")
    with TestClient(app) as client:
        assert 200 == client.get("/", headers={"X-User": "root"}).status_code
        assert 200 == client.get("/export.csv", headers={"X-User": "root"}).status_code


def test_a_hosts_redirect_passes_through(site: Site) -> None:
    """A host may send people without a session to its login page (serve's /login)."""

    def to_login() -> Viewer:
        raise HTTPException(303, headers={"Location": "/login"})

    app = create_app(ledger_url=site.url, viewer=to_login, recorder=print, via="serve")
    with TestClient(app, follow_redirects=False) as client:
        r = client.get("/status")
    assert 303 == r.status_code
    assert "/login" == r.headers["location"]


def test_detail_walks_the_chain(site: Site) -> None:
    """A detail links the records before and after it on its chain (not past either end)."""
    first = site.get("/records/default/0").text
    assert 'href="/records/default/1" rel="next"' in first
    assert 'rel="prev"' not in first
    with closing(open_ledger(site.url, read_only=True)) as ledger:
        head = ledger.head("default")
        assert head is not None
    last = site.get(f"/records/default/{head.seq}").text
    assert f'href="/records/default/{head.seq - 1}" rel="prev"' in last
    assert 'rel="next"' not in last


WRITER_PASSWORD, AUDITOR_PASSWORD = "writer-pw-1", "auditor-pw-1"


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Any]:
    """A throw-away PostgreSQL cluster (testkit), for the one PostgreSQL test below."""
    pytest.importorskip("psycopg")
    from testkit.postgres import PgServer

    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_postgres_ledger_read_as_the_auditor_role(pg_server: Any, tmp_path: Path) -> None:
    """On PostgreSQL, through the read-only auditor role: list, detail, proof, status and an
    export equal to the CLI's; the password shows nowhere; a NUL is a 400, not a 500."""
    import psycopg

    from audit_core.ledgers.postgres_admin import init

    with psycopg.connect(pg_server.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE web_test")
    init(
        pg_server.url("web_test"),
        writer="web_writer",
        writer_password=WRITER_PASSWORD,
        auditor="web_auditor",
        auditor_password=AUDITOR_PASSWORD,
    )
    signer = Signer.generate("test.example/key")
    covered = _write(pg_server.url("web_test", "web_writer", WRITER_PASSWORD), signer)
    url = pg_server.url("web_test", "web_auditor", AUDITOR_PASSWORD)
    got: list[Event] = []
    app = create_app(
        ledger_url=url,
        viewer=viewer,
        recorder=got.append,
        via="serve",
        verifier_keys=[str(signer.verifier)],
    )
    with TestClient(app) as client:
        site = Site(url, tmp_path, signer, client, got, covered)
        assert _all(site, Query()) == _pages(site, "/?limit=9")
        assert _all(site, Query(dag="etl")) == _pages(site, "/dags/etl?limit=200", "ann")
        proof = site.get("/records/default/2/proof")
        assert 200 == proof.status_code
        verify_inclusion_bundle(orjson.loads(proof.content), [signer.verifier])
        pages = [site.get(p) for p in ("/status", "/records/default/2", "/?dag=%00")]
        assert [200, 200, 400] == [p.status_code for p in pages]
        assert "verifies under test.example/key" in pages[0].text
        assert all(AUDITOR_PASSWORD not in p.text for p in pages)
        export = site.get("/export.csv?event=task.*")
        report = site.get("/report.md?dag=etl")
    out = tmp_path / "out.csv"
    cli = subprocess.run(
        [
            sys.executable, "-m", "audit_core.cli", "export", "--ledger", url,
            "--format", "csv", "--event", "task.*", "-o", str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert 0 == cli.returncode, cli.stderr
    assert out.read_bytes() == export.content
    cli = subprocess.run(
        [
            sys.executable, "-m", "audit_core.cli", "report", "--ledger", url,
            "--format", "md", "--dag", "etl", "--key", str(signer.verifier),
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert 0 == cli.returncode, cli.stderr
    assert cli.stdout == report.text
    assert AUDITOR_PASSWORD not in report.text


class TestLimitedViewerLearnsNoOtherDag:
    """A DAG-limited viewer learns nothing of other DAGs' records: not their DAG names, chain
    names, sizes or heads, nor who verified what (the audit chain's actors)."""

    def test_refusing_a_record_names_no_dag(self, site: Site) -> None:
        chain, seq = sorted(_all(site, Query(dag="ml")))[0]
        for path in (f"/records/{chain}/{seq}", f"/records/{chain}/{seq}/proof"):
            r = site.get(path, "ann")
            assert 403 == r.status_code
            assert "ml" not in r.text.replace("html", "")
            assert "this record is about a DAG you may not read" in r.text

    def test_a_missing_record_tells_no_chain_size(self, site: Site) -> None:
        for path in ("/records/default/100000", "/records/ops/100000/proof", "/records/x/1"):
            r = site.get(path, "ann")
            assert 404 == r.status_code
            assert "records; no seq" not in r.text
            assert "in this ledger" not in r.text
            assert "you may read" in r.text
        assert "records; no seq" in site.get("/records/default/100000").text

    def test_chain_list_names_only_chains_with_readable_records(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'l.db'}"
        with AuditTrail(AuditConfig(ledger_url=url)) as trail:
            trail.record("task.succeeded", subject={"dag_id": "etl"}, chain="shared")
            trail.record("task.succeeded", subject={"dag_id": "ml"}, chain="shared")
            trail.record("task.succeeded", subject={"dag_id": "ml"}, chain="secret-ml")
            verified = read_event(
                "verified",
                user="auditor",
                via="cli",
                verdict="valid",
                chains={"shared": {}, "secret-ml": {}},
                key_checked=False,
            )
            trail.record_many([verified])
        app = create_app(ledger_url=url, viewer=viewer, recorder=print, via="serve")
        with TestClient(app) as client:

            def get(path: str, user: str) -> str:
                r = client.get(path, headers={"X-User": user})
                assert 200 == r.status_code, (path, r.text)
                return r.text

            assert "secret-ml" in get("/", "root")
            for path in ("/", "/status", "/report.md", "/report.json"):
                text = get(path, "ann")
                assert "secret-ml" not in text, path
                assert "auditor" not in text, path
            assert "shared" in get("/", "ann")
            assert "valid at " in get("/status", "ann")
            root_status = get("/status", "root")
            assert "secret-ml" in root_status
            assert "by auditor" in root_status
            assert "secret-ml" in get("/report.md", "root")
            assert "secret-ml" not in get("/report.md?chain=secret-ml", "ann")


class TestStreams:
    def test_a_partial_export_is_recorded_as_incomplete(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'big.db'}"
        pad = "x" * 500
        with AuditTrail(AuditConfig(ledger_url=url)) as trail:
            trail.record_many(
                [Event(type="task.succeeded", data={"i": i, "pad": pad}) for i in range(3000)]
            )
        got: list[Event] = []
        app = create_app(ledger_url=url, viewer=viewer, recorder=got.append, via="serve")
        with TestClient(app) as client:
            with client.stream("GET", "/export.jsonl", headers={"X-User": "root"}) as r:
                assert 200 == r.status_code
                first = next(r.iter_bytes())
                assert first
            # the client went away after one chunk: the read is recorded, as incomplete
            exported = [e for e in got if e.type == "audit.exported"]
            assert 1 == len(exported), got
            assert exported[0].data["complete"] is False
            assert 0 < exported[0].data["count"] < 3000
            got.clear()
            whole = client.get("/export.jsonl", headers={"X-User": "root"})
            assert 3000 == len(whole.content.splitlines())
            assert [(True, 3000)] == [(e.data["complete"], e.data["count"]) for e in got]

    def test_an_unreadable_ledger_is_a_503_before_the_stream(self, site: Site) -> None:
        assert 200 == site.get("/").status_code  # the ledger is open
        site.path.rename(site.path.with_suffix(".gone"))
        for path in ("/export.jsonl", "/export.csv"):
            r = site.get(path)
            assert 503 == r.status_code, (path, r.status_code, r.content[:200])
            assert "text/html" in r.headers["content-type"]
            assert "attachment" not in r.headers.get("content-disposition", "")


def test_chains_with_a_slash_open(tmp_path: Path) -> None:
    """A chain name may hold "/": its rows, detail, walk links and proof all work."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    signer = Signer.generate("test.example/key")
    config = AuditConfig(ledger_url=url, signing_key=str(signer), origin="test.example/audit")
    with AuditTrail(config) as trail:
        for i in range(7):
            trail.record("task.succeeded", subject={"dag_id": "etl"}, data={"i": i}, chain="a/b")
        assert trail.checkpoint("a/b") is not None
    app = create_app(ledger_url=url, viewer=viewer, recorder=print, via="serve")
    with TestClient(app) as client:
        h = {"X-User": "root"}
        rows = _rows(client.get("/", headers=h).text)
        assert ("a/b", 6) in rows
        link = re.search(r'href="(/records/[^"]+/5)"', client.get("/", headers=h).text)
        assert link is not None
        detail = client.get(link[1], headers=h)
        assert 200 == detail.status_code, detail.text
        assert "a/b #5" in detail.text
        assert 200 == client.get("/records/a/b/5", headers=h).status_code
        assert 'href="/records/a%2Fb/4" rel="prev"' in detail.text
        assert 200 == client.get("/records/a%2Fb/4", headers=h).status_code
        for path in ("/records/a/b/5/proof", "/records/a%2Fb/5/proof"):
            proof = client.get(path, headers=h)
            assert 200 == proof.status_code, proof.text
            proven = verify_inclusion_bundle(orjson.loads(proof.content), [signer.verifier])
            assert ("a/b", 5) == (proven.record.chain, proven.record.seq)
        assert 404 == client.get("/records/a/5", headers=h).status_code


def test_head_answers_without_recording_a_read(site: Site) -> None:
    for path in ("/", "/status", "/records/default/1", "/export.csv", "/report.md"):
        r = site.client.head(path, headers={"X-User": "root"})
        assert 200 == r.status_code, path
    assert 401 == site.client.head("/").status_code
    assert [] == site.events
