"""``workflow-audit serve --token-file`` in a real headless Chromium, over the records of a real
Prefect flow run: the login form, the list, a record, its proof verified offline, a CSV export
equal to the CLI's, keyboard use, dark mode, and the ``audit.*`` record each read left under
the token's name."""

from __future__ import annotations

import csv
import io
import runpy
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from audit_core import Record
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.web.auth import COOKIE
from testkit import free_port, terminate, wait_listening
from testkit.browser import (
    RECORD_LINK,
    WAIT_S,
    chrome,
    listed_records,
    set_color_scheme,
    submit_filter,
    wait_for_download,
)

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "example_flows"
BIN = Path(sys.executable).parent
FLOW = "ml-pipeline"
USER = "auditor"
#: how long a read's ``audit.*`` record may take to land (serve records in the background)
RECORDED_S = 60.0


@dataclass(frozen=True)
class Served:
    """A ``workflow-audit serve`` over a ledger holding one ml_pipeline flow run."""

    url: str  # base, no trailing slash
    ledger: Path
    token: str  # USER's


def read(ledger: Path, chain: str) -> list[Record]:
    db = SqliteLedger(ledger, create=False)
    try:
        return [Record.from_stored(s) for s in db.read(chain)]
    finally:
        db.close()


def cli(*args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """``workflow-audit ARGS`` of this venv, output as bytes (CSV keeps its CRLF)."""
    return subprocess.run(
        [str(BIN / "workflow-audit"), *map(str, args)],
        capture_output=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """example_flows/ml_pipeline.py run once under the session's Prefect server onto a fresh
    ledger, a signed checkpoint of its chain, and ``serve`` with a token file over it."""
    import prefect_audit.adapter as adapter_module
    from prefect_audit.adapter import PrefectAdapter, flush_runs
    from prefect_audit.settings import WorkflowAuditSettings

    tmp = tmp_path_factory.mktemp("serve")
    ledger = tmp / "ledger.db"
    previous = adapter_module._ADAPTER
    adapter_module._ADAPTER = PrefectAdapter(
        WorkflowAuditSettings(ledger_url=f"sqlite:///{ledger}", chain="prefect")
    )
    try:
        flow: Any = runpy.run_path(str(EXAMPLES / "ml_pipeline.py"))["ml_pipeline"]
        flow()
        assert flush_runs(300)
    finally:
        adapter_module._ADAPTER = previous
    done = cli("checkpoint", "--ledger", f"sqlite:///{ledger}", "--chain", "prefect")
    assert 0 == done.returncode, done.stderr
    token = secrets.token_urlsafe(24)
    tokens = tmp / "tokens"
    tokens.write_text(f"{USER}:{token}\n")
    tokens.chmod(0o600)
    port = free_port()
    with (tmp / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [
                *(str(BIN / "workflow-audit"), "serve", "--ledger", f"sqlite:///{ledger}"),
                *("--port", str(port), "--token-file", str(tokens)),
                *("--verifier-key", f"{ledger}.key.pub"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            assert wait_listening(port, timeout_s=120), (tmp / "serve.log").read_text()
            yield Served(f"http://127.0.0.1:{port}", ledger, token)
        finally:
            terminate(server)


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


@pytest.fixture
def browser(downloads: Path) -> Iterator[WebDriver]:
    """A fresh headless Chromium (no cookies) whose downloads land in ``downloads``."""
    driver = chrome(downloads=downloads)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, WAIT_S)


def login(driver: WebDriver, served: Served, token: str | None = None) -> None:
    """Open the trail: sent to the login form, type the token, land on the list."""
    driver.get(served.url + "/")
    field = wait(driver).until(ec.element_to_be_clickable((By.NAME, "token")))
    field.send_keys(token or served.token)
    field.submit()
    wait(driver).until(lambda d: listed_records(d))


def now() -> str:
    """The time as records stamp it: a read's record made after this has a later ``ts``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wait_recorded(
    ledger: Path, event: str, since: str, match: Callable[[Record], bool] = lambda r: True
) -> Record:
    """The first ``event`` record by USER on the audit chain stamped after ``since`` (and
    matching ``match``), once it has landed: serve records reads in the background."""
    deadline = time.monotonic() + RECORDED_S
    while True:
        for r in read(ledger, "audit"):
            if (r.event, r.actor.get("id")) == (event, USER) and r.ts > since and match(r):
                return r
        assert time.monotonic() < deadline, f"no {event} record by {USER} since {since}"
        time.sleep(0.2)  # polling the ledger for serve's background write


def at(chain: str, seq: int) -> Callable[[Record], bool]:
    """Whether an audit record is about the record (chain, seq)."""
    return lambda r: (chain, seq) == (r.data.get("chain"), r.data.get("seq"))


def by_key(ledger: Path) -> dict[tuple[str, int], Record]:
    return {(r.chain, r.seq): r for r in read(ledger, "prefect")}


class TestServe:
    """An auditor with a token reads the trail in a browser; each read is recorded."""

    def test_a_wrong_token_is_refused(self, served: Served, browser: WebDriver) -> None:
        """The login form refuses a token that is not in the file and lists nothing."""
        browser.get(served.url + "/")
        field = wait(browser).until(ec.element_to_be_clickable((By.NAME, "token")))
        field.send_keys("not-" + served.token)
        field.submit()
        wait(browser).until(ec.staleness_of(field))
        assert [] == listed_records(browser)
        assert "/login" in browser.current_url
        assert served.token not in browser.page_source

    def test_session_cookie_is_http_only_and_logout_ends_it(
        self, served: Served, browser: WebDriver
    ) -> None:
        """The login sets an HttpOnly, SameSite=Strict cookie holding no token; /logout
        removes it and the list sends the browser back to the login form."""
        login(browser, served)
        cookie = browser.get_cookie(COOKIE)
        assert cookie is not None
        assert (True, "Strict") == (cookie["httpOnly"], cookie["sameSite"])
        assert served.token not in cookie["value"]
        browser.get(served.url + "/")
        wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "form.signout button"))
        ).click()  # POST /logout: the session is revoked, the cookie removed
        wait(browser).until(ec.element_to_be_clickable((By.NAME, "token")))
        assert browser.get_cookie(COOKIE) is None
        browser.get(served.url + "/")
        wait(browser).until(ec.element_to_be_clickable((By.NAME, "token")))
        assert [] == listed_records(browser)

    def test_login_list_and_filter(self, served: Served, browser: WebDriver) -> None:
        """After the login form the list shows the flow's records newest first; the event
        filter narrows it to exactly the matching records; audit.viewed names the token."""
        start = now()
        login(browser, served)
        browser.get(served.url + "/?chain=prefect")
        known = by_key(served.ledger)
        listed = [known[k] for k in listed_records(browser)]
        assert len(known) == len(listed)
        stamps = [r.ts for r in listed]
        assert sorted(stamps, reverse=True) == stamps
        submit_filter(browser, event="task.succeeded")
        succeeded = {k for k, r in known.items() if r.event == "task.succeeded"}
        assert succeeded == set(listed_records(browser))
        assert 5 == len(succeeded)
        record = wait_recorded(served.ledger, "audit.viewed", start)
        assert "serve" == record.data["via"]

    def test_record_proof_verifies_offline(
        self, served: Served, browser: WebDriver, downloads: Path
    ) -> None:
        """A record's detail shows its hash; its proof bundle, downloaded from the page,
        passes ``workflow-audit verify-proof``; audit.opened and audit.proof_downloaded."""
        start = now()
        login(browser, served)
        chain, seq = next(k for k in listed_records(browser) if k[0] == "prefect")
        browser.find_element(By.CSS_SELECTOR, f"a[href$='/records/{chain}/{seq}']").click()
        proof = wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "a[href$='/proof']"))
        )
        assert by_key(served.ledger)[(chain, seq)].hash in browser.page_source
        proof.click()
        bundle = wait_for_download(downloads, "*.json")
        done = cli("verify-proof", "--key", f"{served.ledger}.key.pub", bundle)
        assert 0 == done.returncode, done.stdout + done.stderr
        wait_recorded(served.ledger, "audit.opened", start, at(chain, seq))
        wait_recorded(served.ledger, "audit.proof_downloaded", start, at(chain, seq))

    def test_csv_export_equals_the_cli(
        self, served: Served, browser: WebDriver, downloads: Path
    ) -> None:
        """The page's CSV export of a filter is byte for byte ``workflow-audit export
        --format csv`` with the same filter; audit.exported counts its rows."""
        start = now()
        login(browser, served)
        submit_filter(browser, event="task.*", dag=FLOW)
        wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "a[href*='export.csv']"))
        ).click()
        got = wait_for_download(downloads, "*.csv").read_bytes()
        ledger = f"sqlite:///{served.ledger}"
        done = cli(
            "export", "--ledger", ledger, "--dag", FLOW, "--event", "task.*", "--format", "csv"
        )
        assert 0 == done.returncode, done.stderr
        assert done.stdout == got
        rows = list(csv.DictReader(io.StringIO(got.decode())))
        tasks = [r for r in read(served.ledger, "prefect") if r.event.startswith("task.")]
        assert len(tasks) == len(rows)
        record = wait_recorded(served.ledger, "audit.exported", start)
        assert ("csv", len(rows)) == (record.data["format"], record.data["count"])

    def test_keyboard_reaches_filters_and_records(self, served: Served, browser: WebDriver) -> None:
        """Tab reaches the filter form, then the first record's link; Enter opens it."""
        login(browser, served)
        target = browser.find_elements(By.CSS_SELECTOR, RECORD_LINK)[0].get_attribute("href")
        in_form = "return !!arguments[0].closest('form')"
        seen_form = False
        for _ in range(100):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            active: WebElement = browser.switch_to.active_element
            seen_form = seen_form or bool(browser.execute_script(in_form, active))
            if active.get_attribute("href") == target:
                break
        else:
            pytest.fail("Tab never reached the first record's link")
        assert seen_form, "Tab reached the record before any filter field"
        active.send_keys(Keys.ENTER)
        wait(browser).until(lambda d: d.current_url == target)

    def test_dark_mode_changes_the_background(self, served: Served, browser: WebDriver) -> None:
        """With the system in dark mode the page's background is not the light one."""
        login(browser, served)
        script = "return getComputedStyle(document.body).backgroundColor"
        set_color_scheme(browser, "light")
        light = browser.execute_script(script)
        set_color_scheme(browser, "dark")
        assert light != browser.execute_script(script)
