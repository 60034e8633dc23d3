"""Logins, failed logins, logouts and refused requests of a real ``airflow api-server``
(SimpleAuthManager), driven over HTTP: the ``access.*`` records on the events chain."""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from airflow_audit import access
from airflow_audit.access import MAX_LOGIN_BODY, AccessMiddleware, RequestDone
from audit_core import Event, Record
from audit_core.hooks import COUNTERS
from testkit import free_port
from tests.airflow._airflow import BIN, PASSWORDS, AirflowHome, SecuredServer, events, serving

#: How long a record may take to appear (the machine is loaded; the write is asynchronous).
DEADLINE_S = 60.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the test looks at the redirect itself


_OPENER = urllib.request.build_opener(_NoRedirect)


def call(
    url: str,
    method: str = "GET",
    *,
    agent: str,
    json_body: object = None,
    form: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[int, bytes]:
    """Status and body of one request (no redirect followed, an error status returned)."""
    headers = {"User-Agent": agent}
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with _OPENER.open(request, timeout=60) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def login(
    server: SecuredServer, user: str, password: str, agent: str, path: str = "/auth/token"
) -> int:
    """Status of a JSON login as ``user``."""
    body = {"username": user, "password": password}
    return call(server.url + path, "POST", agent=agent, json_body=body)[0]


def viewer_writes(server: SecuredServer, agent: str) -> Record:
    """The viewer's POST /api/v2/variables, refused (403), and its access.denied record."""
    token = server.token("viewer", PASSWORDS["viewer"])
    variable = {"key": "k403", "value": "v-403"}
    url = server.url + "/api/v2/variables"
    assert 403 == call(url, "POST", agent=agent, token=token, json_body=variable)[0]
    return wait_for(server.ledger, "access.denied", agent)


def wait_for(ledger: Path, event: str, agent: str) -> Record:
    """The one ``event`` record of the request made with user agent ``agent``."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = [r for r in events(ledger, event) if r.data.get("user_agent") == agent]
        if found:
            assert 1 == len(found), found
            return found[0]
        assert time.monotonic() < deadline, f"no {event} from {agent} in {DEADLINE_S}s"
        time.sleep(0.2)


def assert_nowhere(ledger: Path, secret: str) -> None:
    """``secret`` is in no byte of the ledger's files (database, WAL, spool, key)."""
    for path in ledger.parent.rglob(ledger.name + "*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def of_agent(ledger: Path, agent: str) -> list[str]:
    """The event types of every access record of the requests made with ``agent``."""
    return [r.event for r in events(ledger, "access.*") if r.data.get("user_agent") == agent]


class TestLogin:
    """POST /auth/token and /auth/token/cli."""

    def test_good_password_records_a_login(self, secured_api_server: SecuredServer) -> None:
        """A good password: access.login with the user, its auth manager, client and path."""
        server = secured_api_server
        assert 201 == login(server, "admin", PASSWORDS["admin"], "t-login-good")
        record = wait_for(server.ledger, "access.login", "t-login-good")
        assert {
            "user": "admin",
            "authenticator": "simple",
            "client": "127.0.0.1",
            "user_agent": "t-login-good",
            "method": "POST",
            "path": "/auth/token",
            "status": 201,
        } == record.data
        assert {"type": "user", "id": "admin"} == record.actor
        assert "airflow-events" == record.chain

    def test_form_body_names_the_user(self, secured_api_server: SecuredServer) -> None:
        """A form-encoded login body (what HTML forms post) names its user too."""
        server = secured_api_server
        status, _ = call(
            server.url + "/auth/token",
            "POST",
            agent="t-login-form",
            form={"username": "viewer", "password": PASSWORDS["viewer"]},
        )
        assert 201 == status
        assert "viewer" == wait_for(server.ledger, "access.login", "t-login-form").data["user"]

    def test_wrong_password_records_the_attempt_never_the_password(
        self, secured_api_server: SecuredServer
    ) -> None:
        """A wrong password: access.login_failed naming the attempted user; the password is
        in no byte of the ledger."""
        server = secured_api_server
        wrong = "Wr0ng-pw-7f3a9c"
        assert 401 == login(server, "admin", wrong, "t-login-wrong")
        record = wait_for(server.ledger, "access.login_failed", "t-login-wrong")
        assert {
            "username": "admin",
            "status": 401,
            "client": "127.0.0.1",
            "user_agent": "t-login-wrong",
            "method": "POST",
            "path": "/auth/token",
            "authenticator": "simple",
        } == record.data
        assert {"type": "anonymous", "id": "-"} == record.actor
        assert ["access.login_failed"] == of_agent(server.ledger, "t-login-wrong")  # no denied
        assert_nowhere(server.ledger, wrong)

    def test_unknown_user_records_a_failed_login(self, secured_api_server: SecuredServer) -> None:
        """An unknown user: access.login_failed with the name tried."""
        server = secured_api_server
        assert 401 == login(server, "mallory", "guess-1", "t-login-unknown")
        record = wait_for(server.ledger, "access.login_failed", "t-login-unknown")
        assert ("mallory", 401) == (record.data["username"], record.data["status"])

    def test_cli_token_records_a_login(self, secured_api_server: SecuredServer) -> None:
        """POST /auth/token/cli (airflowctl's login): access.login on that path."""
        server = secured_api_server
        assert 201 == login(server, "viewer", PASSWORDS["viewer"], "t-login-cli", "/auth/token/cli")
        record = wait_for(server.ledger, "access.login", "t-login-cli")
        assert ("viewer", "/auth/token/cli") == (record.data["user"], record.data["path"])


class TestLogoutAndDenied:
    """GET /api/v2/auth/logout, and every 401/403."""

    def test_logout_names_the_user(self, secured_api_server: SecuredServer) -> None:
        """The UI's logout (it revokes the token): access.logout with the token's user."""
        server = secured_api_server
        token = server.token("admin", PASSWORDS["admin"])
        status, _ = call(server.url + "/api/v2/auth/logout", agent="t-logout", token=token)
        assert 307 == status
        record = wait_for(server.ledger, "access.logout", "t-logout")
        assert {
            "user": "admin",
            "client": "127.0.0.1",
            "user_agent": "t-logout",
            "path": "/api/v2/auth/logout",
            "authenticator": "simple",
        } == record.data
        # The token is revoked now: using it is refused (and recorded, without a user).
        status, _ = call(server.url + "/api/v2/variables", agent="t-revoked", token=token)
        assert 403 == status
        assert None is wait_for(server.ledger, "access.denied", "t-revoked").data["user"]

    def test_viewer_write_is_denied_with_the_user(self, secured_api_server: SecuredServer) -> None:
        """A viewer's POST /api/v2/variables is refused (403): access.denied names the viewer."""
        record = viewer_writes(secured_api_server, "t-denied-viewer")
        assert {
            "method": "POST",
            "path": "/api/v2/variables",
            "status": 403,
            "user": "viewer",
            "client": "127.0.0.1",
            "user_agent": "t-denied-viewer",
            "authenticator": "simple",
        } == record.data
        assert {"type": "user", "id": "viewer"} == record.actor

    def test_no_token_is_denied_without_a_user(self, secured_api_server: SecuredServer) -> None:
        """No token (401): access.denied with user null, the path without its query string."""
        server = secured_api_server
        status, _ = call(server.url + "/api/v2/variables?limit=5&k=x", agent="t-denied-anon")
        assert 401 == status
        record = wait_for(server.ledger, "access.denied", "t-denied-anon")
        assert ("GET", "/api/v2/variables", 401, None) == (
            record.data["method"],
            record.data["path"],
            record.data["status"],
            record.data["user"],
        )
        assert {"type": "anonymous", "id": "-"} == record.actor

    def test_allowed_requests_record_nothing(self, secured_api_server: SecuredServer) -> None:
        """An admin's successful GET: no access record (only logins, logouts, 401/403)."""
        server = secured_api_server
        token = server.token("admin", PASSWORDS["admin"])
        status, _ = call(server.url + "/api/v2/version", agent="t-allowed", token=token)
        assert 200 == status
        # A later refused request of the same client is recorded; the allowed one is not.
        call(server.url + "/api/v2/variables", agent="t-allowed-marker")
        wait_for(server.ledger, "access.denied", "t-allowed-marker")
        assert [] == of_agent(server.ledger, "t-allowed")


class TestFailOpen:
    """A ledger that cannot be written never costs an answer."""

    def test_unwritable_ledger_keeps_the_server_answering(
        self, secured_api_server: SecuredServer, tmp_path: Path
    ) -> None:
        """The ledger cannot be created (its directory is a file): logins, refusals and writes
        are answered as always; the failure is logged once, not per request."""
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        port = free_port()
        env = {
            **secured_api_server.env,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{blocker}/ledger.db",
        }
        url = f"http://127.0.0.1:{port}"
        with serving(env, port):
            login = {"username": "admin", "password": PASSWORDS["admin"]}
            for n in range(3):
                status, body = call(url + "/auth/token", "POST", agent="t-ro", json_body=login)
                assert 201 == status
                token = json.loads(body)["access_token"]
                assert 401 == call(url + "/api/v2/variables", agent="t-ro")[0]
                variable = {"key": f"ro{n}", "value": "v"}
                status, _ = call(
                    url + "/api/v2/variables", "POST", agent="t-ro", token=token, json_body=variable
                )
                assert 201 == status
            log = Path(env["AIRFLOW_HOME"]) / f"api-server-{port}.log"
            deadline = time.monotonic() + DEADLINE_S
            while "counted as access_not_in_ledger" not in log.read_text():
                assert time.monotonic() < deadline, "the failure was not logged: see " + str(log)
                time.sleep(0.2)
        assert 1 == log.read_text().count("counted as access_not_in_ledger")
        assert not (blocker / "ledger.db").exists()


class _Browser:
    """Cookies kept between requests, redirects not followed: a browser, one step at a time."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            _NoRedirect, urllib.request.HTTPCookieProcessor(self.jar)
        )

    def open(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        """Status, Location header and body text of a GET (or a form POST)."""
        data = None if form is None else urllib.parse.urlencode(form).encode()
        request = urllib.request.Request(url, data=data, headers={"User-Agent": self.agent})  # noqa: S310
        try:
            with self.opener.open(request, timeout=60) as answer:
                return (
                    int(answer.status),
                    answer.headers.get("Location", ""),
                    answer.read().decode(),
                )
        except urllib.error.HTTPError as error:
            return int(error.code), error.headers.get("Location", ""), error.read().decode()

    def login_form(self, url: str, username: str, password: str) -> tuple[int, str]:
        """FAB's login page: fetch the form (its CSRF token), post it; status and Location."""
        status, _, page = self.open(url + "/auth/login/")
        assert 200 == status
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
        assert csrf is not None, page[:500]
        form = {"csrf_token": csrf.group(1), "username": username, "password": password}
        status, location, _ = self.open(url + "/auth/login/", form)
        return status, location


class TestFab:
    """The same with the FAB auth manager: its token endpoint, its login form, its logout."""

    def test_token_login_and_failure(self, fab_api_server: SecuredServer) -> None:
        """POST /auth/token: access.login, and access.login_failed for a wrong password."""
        server = fab_api_server
        assert 201 == login(server, "viewer", PASSWORDS["viewer"], "f-token")
        record = wait_for(server.ledger, "access.login", "f-token")
        assert ("viewer", "fab") == (record.data["user"], record.data["authenticator"])
        assert 401 == login(server, "viewer", "Fab-wr0ng-91", "f-token-bad")
        record = wait_for(server.ledger, "access.login_failed", "f-token-bad")
        assert ("viewer", 401) == (record.data["username"], record.data["status"])

    def test_login_form(self, fab_api_server: SecuredServer) -> None:
        """The UI's login form: a wrong password redirects back (access.login_failed), a good
        one away (access.login); neither password reaches the ledger."""
        server = fab_api_server
        browser = _Browser("f-form-bad")
        status, location = browser.login_form(server.url, "admin", "Fab-f0rm-wr0ng")
        assert (302, "/auth/login/") == (status, urllib.parse.urlsplit(location).path)
        record = wait_for(server.ledger, "access.login_failed", "f-form-bad")
        assert ("admin", "/auth/login/", 302) == (
            record.data["username"],
            record.data["path"],
            record.data["status"],
        )
        browser = _Browser("f-form-good")
        status, location = browser.login_form(server.url, "admin", PASSWORDS["admin"])
        assert 302 == status
        assert "/auth/login/" != urllib.parse.urlsplit(location).path
        record = wait_for(server.ledger, "access.login", "f-form-good")
        assert ("admin", "fab") == (record.data["user"], record.data["authenticator"])
        assert_nowhere(server.ledger, "Fab-f0rm-wr0ng")

    def test_logout_records_once(self, fab_api_server: SecuredServer) -> None:
        """The UI's logout goes through /api/v2/auth/logout, then FAB's /auth/logout: one
        access.logout, naming the user of the session."""
        server = fab_api_server
        browser = _Browser("f-logout")
        assert 302 == browser.login_form(server.url, "viewer", PASSWORDS["viewer"])[0]
        status, location, _ = browser.open(server.url + "/api/v2/auth/logout")
        assert (307, "/auth/logout") == (status, urllib.parse.urlsplit(location).path)
        assert 307 == browser.open(server.url + "/auth/logout")[0]
        # A refused request of the same browser after both hops: every record is in by then.
        assert 401 == browser.open(server.url + "/api/v2/variables")[0]
        wait_for(server.ledger, "access.denied", "f-logout")
        assert ["access.login", "access.logout", "access.denied"] == of_agent(
            server.ledger, "f-logout"
        )
        record = wait_for(server.ledger, "access.logout", "f-logout")
        assert ("viewer", "/api/v2/auth/logout") == (record.data["user"], record.data["path"])

    def test_viewer_write_is_denied_with_the_user(self, fab_api_server: SecuredServer) -> None:
        """A FAB viewer's POST /api/v2/variables: access.denied names the viewer (the auth
        manager resolves the token's numeric subject to the user)."""
        record = viewer_writes(fab_api_server, "f-denied")
        assert ("viewer", 403, "fab") == (
            record.data["user"],
            record.data["status"],
            record.data["authenticator"],
        )


# -- the middleware alone, in this process, around a plain ASGI app ----------------------------


async def _answer(status: int, location: str | None = None) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass  # read the whole body, as a login endpoint does
        headers = [(b"location", location.encode())] if location else []
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def _drive(
    middleware: AccessMiddleware, method: str, path: str, body: bytes = b"", **headers: str
) -> list[int]:
    """One request through ``middleware``; the statuses the client saw."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "query_string": b"",
        "client": ("10.1.2.3", 4567),
        "headers": [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()],
    }
    chunks = [body[:5], body[5:]]  # a body in two messages
    seen: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen.append(message["status"])

    asyncio.run(middleware(scope, receive, send))
    assert middleware.flush(10.0)
    return seen


class TestMiddleware:
    """AccessMiddleware around a plain ASGI app: what it hands the adapter."""

    @staticmethod
    def _middleware(status: int, submit: Any, location: str | None = None) -> AccessMiddleware:
        return AccessMiddleware(asyncio.run(_answer(status, location)), submit=submit, chain="c")

    def test_login_hands_over_the_username_never_the_password(self) -> None:
        """A form login: one access.login naming the user; no event holds the password."""
        built: list[Event] = []

        def submit(what: str, build: Any) -> bool:
            built.extend(build())
            return True

        middleware = self._middleware(201, submit)
        body = b"username=ann&password=pw-Zx81"
        _drive(
            middleware,
            "POST",
            "/auth/token",
            body,
            content_type="application/x-www-form-urlencoded",
        )
        assert ["access.login"] == [e.type for e in built]
        assert ("ann", "10.1.2.3", "c") == (
            built[0].data["user"],
            built[0].data["client"],
            built[0].chain,
        )
        assert "pw-Zx81" not in repr(built)

    def test_failed_write_is_counted_and_the_answer_kept(self) -> None:
        """A submit that fails (a broken ledger): the client still gets its answer; the
        failure is counted per record."""

        def submit(what: str, build: Any) -> bool:
            return False

        before = COUNTERS.snapshot().get("access_not_in_ledger", 0)
        middleware = self._middleware(403, submit)
        assert [403] == _drive(middleware, "DELETE", "/api/v2/pools/p")
        assert [403] == _drive(middleware, "DELETE", "/api/v2/pools/p")
        assert before + 2 == COUNTERS.snapshot()["access_not_in_ledger"]

    def test_a_raising_submit_never_reaches_the_client(self) -> None:
        """Even a submit that raises: the answer is unchanged, the failure counted."""

        def submit(what: str, build: Any) -> bool:
            raise RuntimeError("boom")

        before = COUNTERS.snapshot().get("access_failures", 0)
        assert [401] == _drive(self._middleware(401, submit), "GET", "/api/v2/dags")
        assert before + 1 == COUNTERS.snapshot()["access_failures"]

    def test_watchers_see_mutating_requests(self) -> None:
        """on_request_done: a POST is reported (method, path, status, user); a GET is not."""
        seen: list[RequestDone] = []
        stop = access.on_request_done(seen.append)
        try:
            middleware = self._middleware(200, lambda what, build: True)
            _drive(middleware, "POST", "/auth/fab/v1/users")
            _drive(middleware, "GET", "/auth/fab/v1/users")
        finally:
            stop()
        assert [RequestDone("POST", "/auth/fab/v1/users", 200, None)] == seen

    @pytest.mark.parametrize("ending", ["answered", "app raises", "client gone", "queue full"])
    def test_watched_requests_in_flight_until_they_end(
        self, ending: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A request a watcher wants is in flight while the app answers it, and no longer
        once it ended, however: a leaked count would hold the permission polls back."""
        seen: list[bool] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(access.watched_in_flight(60.0))
            if ending == "app raises" and scope["path"] == "/w":
                raise RuntimeError("the app failed")
            if ending == "client gone" and scope["path"] == "/w":
                raise asyncio.CancelledError
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

        middleware = AccessMiddleware(app, submit=lambda what, build: True, chain="c")
        if ending == "queue full":
            monkeypatch.setattr(middleware._worker, "put", lambda job: None)  # a dropped job
        stop = access.on_request_done(lambda done: None, wants=lambda m, p: p == "/w")
        try:
            assert not access.watched_in_flight(60.0)
            with contextlib.suppress(RuntimeError, asyncio.CancelledError):
                _drive(middleware, "POST", "/w")
            assert seen == [True]
            assert not access.watched_in_flight(60.0)
            _drive(middleware, "POST", "/not-watched")
            assert seen == [True, False]
        finally:
            stop()

    def test_malformed_login_body_still_records(self) -> None:
        """A login body nested too deep for the JSON parser: the attempt is recorded without
        a username."""
        built: list[Event] = []

        def submit(what: str, build: Any) -> bool:
            built.extend(build())
            return True

        middleware = self._middleware(400, submit)
        body = b"[" * MAX_LOGIN_BODY
        assert [400] == _drive(
            middleware, "POST", "/auth/token", body, content_type="application/json"
        )
        assert [("access.login_failed", None)] == [(e.type, e.data["username"]) for e in built]


#: Prints, as the last line, the names of the root middlewares plugins give the API server.
MIDDLEWARES = """
import json
from airflow import plugins_manager

print(json.dumps([m["name"] for m in plugins_manager.get_fastapi_plugins()[1]]))
"""


class TestRegistration:
    """record_access (and enabled) decide whether the plugin registers the middleware."""

    @pytest.mark.parametrize(
        ("enabled", "record_access", "expected"),
        [("True", "True", ["workflow_audit"]), ("True", "False", []), ("False", "True", [])],
    )
    def test_options_decide(
        self, airflow_home: AirflowHome, enabled: str, record_access: str, expected: list[str]
    ) -> None:
        """Only with both on does Airflow get the middleware from the plugin."""
        env = {
            **airflow_home.env,
            "AIRFLOW__WORKFLOW_AUDIT__ENABLED": enabled,
            "AIRFLOW__WORKFLOW_AUDIT__RECORD_ACCESS": record_access,
        }
        python = [str(BIN / "python"), "-c", MIDDLEWARES]
        done = subprocess.run(python, env=env, capture_output=True, text=True, timeout=240)
        assert 0 == done.returncode, done.stderr[-3000:]
        # the script's JSON line: a warning may follow it on a busy machine
        last = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(("{", "[")))
        assert expected == json.loads(last)
