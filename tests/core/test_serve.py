"""``workflow-audit serve``: a real server process on 127.0.0.1, its identities and its
records of who read what."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from audit_core import AuditConfig, AuditTrail, Record
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.readlog import AUDIT_CHAIN
from audit_core.web import Viewer, create_app
from audit_core.web.auth import (
    COOKIE,
    HeaderAuth,
    LocalAuth,
    TokenAuth,
    is_loopback,
    load_tokens,
)
from testkit import free_port, terminate, wait_listening
from tests.core._spooling import held_lock, mount

TOKENS = {"ann": "ann-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
#: A bound on waiting for an event that normally takes milliseconds (no performance claim).
WAIT_S = 60.0
#: Path parameters of the app's routes, filled with a record the test ledger holds.
PARAMS = {
    "dag_id": "etl",
    "run_id": "r1",
    "task_id": "extract",
    "chain": "default",
    "seq": "0",
    "name": "app.css",
}


def app_paths() -> list[str]:
    """Every GET route of the app ``serve`` runs, its parameters filled in."""
    app = create_app(
        ledger_url="sqlite:///:memory:",
        viewer=lambda: Viewer("x"),
        recorder=lambda e: None,
        via="serve",
    )
    paths = [r.path for r in app.routes if isinstance(r, APIRoute)]
    return [re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: PARAMS[m[1]], p) for p in paths]


@dataclass
class Served:
    """A running ``workflow-audit serve``."""

    proc: subprocess.Popen[str]
    url: str
    ledger: Path
    log: Path

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, follow_redirects=False, timeout=30, **kw)

    def bearer(self, name: str = "ann") -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {TOKENS[name]}"})

    def audit(self) -> list[Record]:
        """The audit chain's records (none before the first)."""
        ledger = SqliteLedger(self.ledger, create=False, read_only=True)
        try:
            return [Record.from_stored(s) for s in ledger.read(AUDIT_CHAIN)]
        finally:
            ledger.close()

    def wait_audit(self, done: Callable[[list[Record]], bool]) -> list[Record]:
        """The audit chain once ``done`` holds for it (reads are recorded off the request)."""
        deadline = time.monotonic() + WAIT_S
        while not done(found := self.audit()):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, [(r.event, r.actor) for r in found]
            time.sleep(0.05)
        return found


def make_ledger(path: Path) -> None:
    """Three records about DAG etl, then a checkpoint (so inclusion proofs exist)."""
    with AuditTrail(AuditConfig(ledger_url=f"sqlite:///{path}")) as trail:
        for task in ("extract", "load", "extract"):
            trail.record(
                "task.succeeded", {"rows": 1}, subject={"dag_id": "etl", "run_id": "r1",
                                                      "task_id": task})  # fmt: skip


def start(tmp_path: Path, *options: str, ledger: Path | None = None) -> Served:
    """``workflow-audit serve`` on a free port of 127.0.0.1, once it listens (its output in
    ``tmp_path``; the ledger ``tmp_path/ledger.db`` unless given, made if missing)."""
    ledger = ledger or tmp_path / "ledger.db"
    if not ledger.exists():
        make_ledger(ledger)
    port = free_port()
    log = tmp_path / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "audit_core.cli", "serve", "--ledger", str(ledger),
             "--port", str(port), *options],
            stdout=out, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    served = Served(proc, f"http://127.0.0.1:{port}", ledger, log)
    deadline = time.monotonic() + WAIT_S
    while not wait_listening(port, timeout_s=1.0):
        if proc.poll() is not None or time.monotonic() > deadline:
            terminate(proc)
            raise AssertionError(f"serve did not listen ({proc.returncode}): {log.read_text()}")
    return served


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# who may read\n" + "".join(f"{n}:{t}\n" for n, t in TOKENS.items()))
    path.chmod(0o600)
    return path


@pytest.fixture
def served(tmp_path: Path, token_file: Path) -> Iterator[Served]:
    """A server with the tokens of ann and bob."""
    s = start(tmp_path, "--token-file", str(token_file))
    yield s
    terminate(s.proc)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "audit_core.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestTokens:
    """``--token-file``: bearer tokens and the login form."""

    def test_every_route_needs_the_token(self, served: Served) -> None:
        """Every app route answers 401 without a token and with a wrong one, 200 with one."""
        paths = app_paths()
        assert len(paths) >= 12
        with (
            served.client() as anon,
            served.client(headers={"Authorization": "Bearer not-a-token-at-all"}) as wrong,
            served.bearer() as ann,
        ):
            for path in paths:
                assert 401 == anon.get(path).status_code, path
                assert 401 == wrong.get(path).status_code, path
                got = ann.get(path)
                assert 200 == got.status_code, (path, got.text[:300])

    def test_no_token_in_output(self, served: Served) -> None:
        """The tokens appear in no page and not in the server's output."""
        with served.bearer() as ann:
            pages = "".join(ann.get(p).text for p in ("/", "/status", "/records/default/0"))
        terminate(served.proc)
        for token in TOKENS.values():
            assert token not in pages
            assert token not in served.log.read_text()

    def test_login_form_sets_a_session_cookie(self, served: Served) -> None:
        """POST /login with a token: 303, an HttpOnly SameSite=Strict cookie that is not the
        token, which then opens every page; /logout clears it."""
        with served.client() as browser:
            form = browser.get("/login")
            assert 200 == form.status_code
            assert 'name="token"' in form.text
            done = browser.post(
                "/login",
                content=f"token={TOKENS['bob']}&next=/status",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert (303, "/status") == (done.status_code, done.headers["location"])
            cookie = done.headers["set-cookie"]
            assert cookie.startswith(f"{COOKIE}=")
            for attribute in ("HttpOnly", "SameSite=strict", "Path=/"):
                assert attribute.lower() in cookie.lower()
            assert "secure" not in cookie.lower()  # plain http on loopback
            assert TOKENS["bob"] not in cookie
            assert 200 == browser.get("/").status_code
            assert 200 == browser.get("/static/app.css").status_code
            old = browser.cookies[COOKIE]
            confirm = browser.get("/logout")  # a link may not log out: it asks
            assert (200, 'method="post"') == (confirm.status_code, _form_tag(confirm.text))
            assert 303 == browser.post("/logout").status_code
            assert 401 == browser.get("/status").status_code
        with served.client(cookies={COOKIE: old}) as replayed:  # the cookie died at logout
            assert 401 == replayed.get("/status").status_code

    def test_wrong_token_login_refused(self, served: Served) -> None:
        """A wrong token at /login: 401, the form again, no cookie."""
        with served.client() as browser:
            done = browser.post(
                "/login",
                content="token=guess-guess-guess-guess",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert 401 == done.status_code
            assert "set-cookie" not in done.headers
            assert 'name="token"' in done.text

    def test_malformed_login_is_a_4xx(self, served: Served) -> None:
        """A login body that is not UTF-8 is 400, a huge one 413, an outside next ignored."""
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        with served.client() as browser:
            assert (
                400 == browser.post("/login", content=b"token=\xff\xfe", headers=form).status_code
            )
            huge = browser.post("/login", content=b"token=" + b"a" * 100_000, headers=form)
            assert 413 == huge.status_code
            away = browser.post(
                "/login", content=f"token={TOKENS['ann']}&next=//evil.example/", headers=form
            )
            assert (303, "/") == (away.status_code, away.headers["location"])

    def test_browser_sent_to_login(self, served: Served) -> None:
        """A browser asking for / without a session is sent to /login; other routes say 401."""
        with served.client(headers={"Accept": "text/html"}) as browser:
            first = browser.get("/")
            assert (303, "/login") == (first.status_code, first.headers["location"])
            assert 401 == browser.get("/status").status_code

    def test_forged_cookie_refused(self, served: Served) -> None:
        """A cookie the server did not sign (or the raw token as cookie) is refused."""
        for value in (TOKENS["ann"], "YW5u.99999999999.00", "YW5u.99999999999"):
            with served.client(cookies={COOKIE: value}) as forged:
                assert 401 == forged.get("/status").status_code

    def test_reads_recorded_with_the_token_name(self, served: Served) -> None:
        """Pages, a record, a proof and an export leave audit.* records naming the token's
        owner, via serve, with the filter and count."""
        with served.bearer("ann") as ann, served.bearer("bob") as bob:
            assert 200 == ann.get("/", params={"event": "task.*", "task": "extract"}).status_code
            assert 200 == bob.get("/records/default/1").status_code
            assert 200 == bob.get("/records/default/1/proof").status_code
            assert 200 == ann.get("/export.csv", params={"dag": "etl"}).status_code

        def complete(found: list[Record]) -> bool:
            return len(found) >= 4

        found = served.wait_audit(complete)
        by_event = {r.event: r for r in found}
        viewed = by_event["audit.viewed"]
        assert ("ann", "serve") == (viewed.actor["id"], viewed.data["via"])
        assert {"events": ["task.*"], "task": "extract"} == viewed.data["filter"]
        assert 2 == viewed.data["count"]
        assert "bob" == by_event["audit.opened"].actor["id"]
        assert "bob" == by_event["audit.proof_downloaded"].actor["id"]
        exported = by_event["audit.exported"]
        assert ("ann", {"dag": "etl"}, 3) == (
            exported.actor["id"],
            exported.data["filter"],
            exported.data["count"],
        )

    @pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
    def test_signal_stops_it_and_keeps_the_reads(self, served: Served, signum: int) -> None:
        """SIGTERM or SIGINT: the server exits 0, every read it served is on the audit chain."""
        with served.bearer() as ann:
            for _ in range(5):
                assert 200 == ann.get("/status").status_code
        served.proc.send_signal(signum)
        assert 0 == served.proc.wait(WAIT_S)
        assert 5 == sum(r.event == "audit.viewed" for r in served.audit())


def _form_tag(page: str) -> str:
    """The method attribute of the first form of ``page``."""
    start = page.index("<form")
    return page[start : page.index(">", start)].split(" ")[1]


class TestCliRecords:
    """The CLI's reads of the ledger the server shows."""

    def test_export_and_verify_recorded(self, served: Served) -> None:
        """CLI export and verify leave audit.exported and audit.verified beside serve's."""
        assert 0 == run_cli("export", "--ledger", str(served.ledger)).returncode
        assert 0 == run_cli("verify", "--ledger", str(served.ledger)).returncode
        events = [(r.event, r.data["via"]) for r in served.audit()]
        assert [("audit.exported", "cli"), ("audit.verified", "cli")] == events
        with served.bearer() as ann:
            listed = ann.get("/", params={"chain": AUDIT_CHAIN})
        assert "audit.verified" in listed.text


class TestBinding:
    """Which addresses and identities ``serve`` accepts."""

    @pytest.mark.parametrize(
        ("options", "says"),
        [
            (["--host", "0.0.0.0"], "--token-file"),  # noqa: S104 - refused, never bound
            (["--host", "::"], "--token-file"),
            (["--host", "0.0.0.0", "--trusted-header", "X-Forwarded-User"], "--allow-remote"),  # noqa: S104
        ],
    )
    def test_remote_without_credential_refused(
        self, tmp_path: Path, options: list[str], says: str
    ) -> None:
        """A non-loopback address without a credential (or with a header but no explicit
        permission) exits 2 and says what to give."""
        make_ledger(tmp_path / "l.db")
        done = run_cli("serve", "--ledger", str(tmp_path / "l.db"), *options)
        assert 2 == done.returncode
        assert says in done.stderr
        assert "Traceback" not in done.stderr

    @pytest.mark.parametrize("hours", ["nan", "inf", "-1", "0", "721", "eight"])
    def test_bad_session_hours_refused(self, tmp_path: Path, token_file: Path, hours: str) -> None:
        """--session-hours outside (0, 720], or not a finite number: a usage error, exit 2."""
        make_ledger(tmp_path / "l.db")
        done = run_cli(
            "serve", "--ledger", str(tmp_path / "l.db"), "--token-file", str(token_file),
            f"--session-hours={hours}",
        )  # fmt: skip
        assert 2 == done.returncode
        assert "--session-hours" in done.stderr
        assert "Traceback" not in done.stderr

    def test_bad_token_file_refused(self, tmp_path: Path) -> None:
        """A token file with a short token exits 2 naming the line, not the token."""
        make_ledger(tmp_path / "l.db")
        tokens = tmp_path / "tokens"
        tokens.write_text("ann:short-secret\n")
        done = run_cli("serve", "--ledger", str(tmp_path / "l.db"), "--token-file", str(tokens))
        assert 2 == done.returncode
        assert "line 1" in done.stderr
        assert "short-secret" not in done.stderr

    def test_missing_ledger_refused(self, tmp_path: Path) -> None:
        """A ledger that does not exist: exit 2, and none is created."""
        done = run_cli("serve", "--ledger", str(tmp_path / "nope.db"))
        assert 2 == done.returncode
        assert [] == list(tmp_path.iterdir())

    def test_local_user_on_loopback(self, tmp_path: Path) -> None:
        """Without a credential on 127.0.0.1: pages open as local:USER, and a request for
        another host name (DNS rebinding) is refused."""
        s = start(tmp_path)
        try:
            with s.client() as local:
                assert 200 == local.get("/status").status_code
                assert 403 == local.get("/status", headers={"Host": "evil.example"}).status_code
            found = s.wait_audit(lambda f: len(f) >= 1)
            assert str(found[0].actor["id"]).startswith("local:")
        finally:
            terminate(s.proc)

    def test_trusted_header(self, tmp_path: Path) -> None:
        """--trusted-header: the header names the reader; without it, 401."""
        s = start(tmp_path, "--trusted-header", "X-Forwarded-User")
        try:
            with s.client() as proxy:
                assert 401 == proxy.get("/status").status_code
                assert (
                    200 == proxy.get("/status", headers={"X-Forwarded-User": "carol"}).status_code
                )
            found = s.wait_audit(lambda f: len(f) >= 1)
            assert "carol" == found[0].actor["id"]
        finally:
            terminate(s.proc)

    def test_read_only_ledger_still_served(self, tmp_path: Path) -> None:
        """A ledger on read-only media: served, and the server says at start and at exit
        that its reads were not recorded."""
        where = tmp_path / "ro"
        where.mkdir()
        mount("-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where))
        try:
            make_ledger(where / "ledger.db")
            mount("-o", "remount,ro", str(where))
            s = start(tmp_path, "--token-file", str(_tokens(tmp_path)), ledger=where / "ledger.db")
            try:
                with s.bearer() as ann:
                    assert 200 == ann.get("/").status_code
                    assert 200 == ann.get("/records/default/0").status_code
            finally:
                terminate(s.proc)
        finally:
            mount(str(where), tool="umount")
        assert 0 == s.proc.returncode
        log = s.log.read_text()
        assert "reads will not be recorded" in log
        assert "2 read(s) were not recorded" in log

    def test_locked_ledger_still_served(self, tmp_path: Path) -> None:
        """A ledger the server may not write (here: locked by another process for the whole
        visit) is still shown; the reads are counted, not recorded, and not waited for."""
        make_ledger(tmp_path / "ledger.db")
        s = start(tmp_path, "--token-file", str(_tokens(tmp_path)))
        try:
            with held_lock(s.ledger), s.bearer() as ann:
                for _ in range(3):
                    assert 200 == ann.get("/").status_code
                # Said while it runs, not only at exit: the first unrecorded read at once.
                deadline = time.monotonic() + WAIT_S
                while "not recorded" not in s.log.read_text():
                    assert time.monotonic() < deadline, s.log.read_text()
                    time.sleep(0.05)
                assert 200 == ann.get("/").status_code
        finally:
            terminate(s.proc)
        assert 0 == s.proc.returncode
        log = s.log.read_text()
        told = [
            line for line in log.splitlines() if "audit.viewed by 'ann' was not recorded" in line
        ]
        assert 1 == len(told), log  # then at most once a minute
        assert "locked" in told[0]
        assert "Traceback" not in log
        assert "read(s) were not recorded on the audit chain; the last reason" in log


def _tokens(where: Path) -> Path:
    path = where / "tokens"
    path.write_text("".join(f"{n}:{t}\n" for n, t in TOKENS.items()))
    return path


class TestAuthUnits:
    """The pure parts of audit_core.web.auth."""

    def test_load_tokens(self, token_file: Path) -> None:
        """name:token lines, comments skipped."""
        assert TOKENS == load_tokens(token_file)

    def test_session_expires(self) -> None:
        """A session cookie stops working at its expiry, and under another process's key."""
        auth = TokenAuth(TOKENS, session_hours=1)
        value = auth.session_value("ann", now=1000.0)
        assert "ann" == auth.session_name(value, now=1000.0 + 3599)
        assert auth.session_name(value, now=1000.0 + 3601) is None
        assert TokenAuth(TOKENS).session_name(value, now=1000.0) is None

    def test_loopback_names(self) -> None:
        """127.0.0.0/8, ::1 and localhost are loopback; others are not."""
        assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
        others = ["0.0.0.0", "::", "10.0.0.1", "example.com"]  # noqa: S104 - not bound
        assert not any(map(is_loopback, others))

    def test_local_name(self) -> None:
        """The local identity is the OS user, prefixed local:."""
        assert "local:alice" == LocalAuth("alice").name

    def test_cookie_secure_over_https(self) -> None:
        """Over https the session cookie is also Secure."""
        from fastapi import FastAPI
        from fastapi.testclient import TestClient

        auth = TokenAuth(TOKENS)
        app = FastAPI()
        app.include_router(auth.router())
        with TestClient(app, base_url="https://testserver") as client:
            done = client.post(
                "/login",
                content=f"token={TOKENS['ann']}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                follow_redirects=False,
            )
        assert 303 == done.status_code
        assert "; secure" in done.headers["set-cookie"].lower()

    @staticmethod
    def _app(auth: TokenAuth | HeaderAuth) -> Any:
        """An app with ``auth``'s viewer on /who (and its login routes)."""
        from fastapi import Depends, FastAPI

        app = FastAPI()
        if isinstance(auth, TokenAuth):
            app.include_router(auth.router())

        @app.get("/who")
        async def who(viewer: Viewer = Depends(auth.viewer)) -> str:  # noqa: B008
            return viewer.name

        return app

    def test_header_on_loopback_checks_host(self) -> None:
        """--trusted-header on a loopback address: a request for another host name (a DNS
        name rebound to 127.0.0.1, whose page can set the header) is refused."""
        from fastapi.testclient import TestClient

        app = self._app(HeaderAuth("X-Forwarded-User", loopback=True))
        with TestClient(app, base_url="http://127.0.0.1:8421") as client:
            assert "carol" == client.get("/who", headers={"X-Forwarded-User": "carol"}).json()
            rebound = client.get("/who", headers={"X-Forwarded-User": "carol", "Host": "evil.com"})
            assert 403 == rebound.status_code
        remote = self._app(HeaderAuth("X-Forwarded-User", loopback=False))
        with TestClient(remote, base_url="http://audit.example") as client:
            assert 200 == client.get("/who", headers={"X-Forwarded-User": "carol"}).status_code

    def test_header_twice_refused(self) -> None:
        """The header twice (a proxy appending instead of replacing): 401, whoever is named."""
        from fastapi.testclient import TestClient

        with TestClient(self._app(HeaderAuth("X-Forwarded-User")), base_url="http://[::1]") as c:
            twice = [("X-Forwarded-User", "mallory"), ("X-Forwarded-User", "carol")]
            assert 401 == c.get("/who", headers=twice).status_code

    def test_header_is_utf8(self) -> None:
        """The header's bytes are UTF-8: a name decodes as itself; bytes that are not UTF-8
        are refused (400), never read as Latin-1."""
        from fastapi.testclient import TestClient

        with TestClient(self._app(HeaderAuth("X-Remote-User")), base_url="http://localhost") as c:
            named = c.get("/who", headers={"X-Remote-User": "jürgen".encode()})
            assert (200, "jürgen") == (named.status_code, named.json())
        # (The test client re-encodes header values: the raw bytes go in an ASGI scope.)
        import asyncio

        from fastapi import Request
        from starlette.exceptions import HTTPException

        raw = [(b"host", b"localhost"), (b"x-remote-user", b"j\xfcrgen")]
        request = Request({"type": "http", "method": "GET", "path": "/", "headers": raw})
        with pytest.raises(HTTPException) as refused:
            asyncio.run(HeaderAuth("X-Remote-User").viewer(request))
        assert 400 == refused.value.status_code

    def test_logout_revokes_the_session(self) -> None:
        """A session cookie saved before /logout is refused after it; GET /logout only asks."""
        from fastapi.testclient import TestClient

        auth = TokenAuth(TOKENS)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        with TestClient(self._app(auth), follow_redirects=False) as client:
            client.post("/login", content=f"token={TOKENS['ann']}", headers=form)
            old = client.cookies[COOKIE]
            assert "ann" == client.get("/who").json()
            assert 200 == client.get("/logout").status_code
            assert "ann" == client.get("/who").json()  # GET did not log out
            assert 303 == client.post("/logout").status_code
        with TestClient(self._app(auth), cookies={COOKIE: old}) as replay:
            assert 401 == replay.get("/who").status_code
        assert auth.session_name(old) is None
        other = auth.session_value("ann")  # other sessions of ann live on
        assert "ann" == auth.session_name(other)

    @pytest.mark.parametrize(
        ("headers", "status"),
        [
            ({"Origin": "https://evil.example"}, 403),
            ({"Origin": "null"}, 403),
            ({"Referer": "https://evil.example/page"}, 403),
            ({"Origin": "http://testserver"}, 303),
            ({"Referer": "http://testserver/login"}, 303),
            ({"Origin": "http://testserver:8080"}, 303),  # the Host names no port
            ({"Origin": "https://audit.example", "X-Forwarded-Host": "audit.example"}, 303),
            ({}, 303),  # no Origin nor Referer: a script, or a browser that sends neither
        ],
    )
    def test_login_from_another_site_refused(self, headers: dict[str, str], status: int) -> None:
        """Login CSRF: a POST /login whose Origin (else Referer) is another site is 403."""
        from fastapi.testclient import TestClient

        form = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        with TestClient(self._app(TokenAuth(TOKENS)), follow_redirects=False) as client:
            done = client.post("/login", content=f"token={TOKENS['ann']}", headers=form)
            assert status == done.status_code
            assert ("set-cookie" in done.headers) == (status == 303)
            assert status == client.post("/logout", headers=headers).status_code
