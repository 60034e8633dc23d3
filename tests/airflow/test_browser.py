"""The audit trail in Airflow's own UI, in a real headless Chromium: log in through Airflow's
login form, Browse → Audit trail, the Audit tab of ml_pipeline, filters, a record, its proof
verified offline, a CSV export equal to the CLI's, the viewer's view, keyboard use, dark mode,
and the ``audit.*`` record each of those reads left on the ledger."""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from audit_core import Record
from testkit.browser import (
    RECORD_LINK,
    WAIT_S,
    airflow_login,
    chrome,
    listed_records,
    set_color_scheme,
    submit_filter,
    wait_for_download,
)
from tests.airflow._airflow import BIN, ML_TIMELINE, PASSWORDS, AirflowHome, SecuredServer, records

pytestmark = pytest.mark.slow

DAG = "ml_pipeline"
#: how long a read's ``audit.*`` record may take to land (written off the event loop)
RECORDED_S = 60.0
#: task.* records of one ml_pipeline run
TASK_RECORDS = sum(1 for event, _, _ in ML_TIMELINE if event.startswith("task."))
AUDIT_TRAIL_ITEM = "//*[@role='menuitem'][normalize-space()='Audit trail']"


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``workflow-audit ARGS`` of this venv."""
    return subprocess.run(
        [str(BIN / "workflow-audit"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def trail(secured_api_server: SecuredServer) -> SecuredServer:
    """One ``airflow dags test ml_pipeline`` onto the api-server's own ledger, then a signed
    checkpoint of its chain (a proof needs one)."""
    server = secured_api_server
    home = AirflowHome(server.path, server.env, server.ledger)
    done = home.run("dags", "test", DAG)
    assert 0 == done.returncode, done.stderr[-3000:]
    done = cli("checkpoint", "--ledger", f"sqlite:///{server.ledger}", "--chain", "airflow")
    assert 0 == done.returncode, done.stderr
    return server


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


def wait(driver: WebDriver, timeout_s: float = WAIT_S) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, timeout_s)


def login(driver: WebDriver, base: str, user: str) -> None:
    airflow_login(driver, base, user, PASSWORDS[user])


def enter_view(driver: WebDriver, title: str) -> None:
    """Switch into the plugin page's iframe (Airflow titles it with the view's name) once
    the app inside has rendered its page."""
    wait(driver).until(
        ec.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, f"iframe[title='{title}']"))
    )
    wait(driver).until(ec.presence_of_element_located((By.CSS_SELECTOR, "main, form, h1")))


def now() -> str:
    """The time as records stamp it: a read's record made after this has a later ``ts``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wait_recorded(
    ledger: Path,
    user: str,
    event: str,
    since: str,
    match: Callable[[Record], bool] = lambda r: True,
) -> Record:
    """The first ``event`` record by ``user`` on the audit chain stamped after ``since`` (and
    matching ``match``), once it has landed: reads are recorded off the event loop."""
    deadline = time.monotonic() + RECORDED_S
    while True:
        for r in records(ledger, "audit"):
            if (r.event, r.actor.get("id")) == (event, user) and r.ts > since and match(r):
                return r
        assert time.monotonic() < deadline, f"no {event} record by {user} since {since}"
        time.sleep(0.2)  # polling the ledger for the recorder's write


def filter_of(record: Record) -> Mapping[str, object]:
    """The user-typed filter an ``audit.*`` record names."""
    found = record.data.get("filter")
    assert isinstance(found, dict), record.data
    return found


def at(chain: str, seq: int) -> Callable[[Record], bool]:
    """Whether an audit record is about the record (chain, seq)."""
    return lambda r: (chain, seq) == (r.data.get("chain"), r.data.get("seq"))


def by_key(ledger: Path) -> dict[tuple[str, int], Record]:
    """The records of the pipeline's chains (the run's and Airflow's event log) by key."""
    both = records(ledger, "airflow") + records(ledger, "airflow-events")
    return {(r.chain, r.seq): r for r in both}


class TestAdmin:
    """The admin's path through the audit trail, and the record each read left."""

    def test_browse_menu_opens_the_audit_trail(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """Browse → Audit trail shows the records, newest first, and records audit.viewed."""
        start = now()
        login(browser, trail.url, "admin")
        wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "button[aria-label=Browse]"))
        ).click()
        wait(browser).until(ec.element_to_be_clickable((By.XPATH, AUDIT_TRAIL_ITEM))).click()
        enter_view(browser, "Audit trail")
        wait(browser).until(lambda d: listed_records(d))
        known = by_key(trail.ledger)
        listed = [known[k] for k in listed_records(browser) if k in known]
        assert listed, listed_records(browser)
        stamps = [r.ts for r in listed]
        assert sorted(stamps, reverse=True) == stamps
        record = wait_recorded(trail.ledger, "admin", "audit.viewed", start)
        assert "airflow" == record.data["via"]

    def test_dag_tab_filters_by_event_and_task(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """The Audit tab of ml_pipeline lists its records; the event and task filters narrow
        them to exactly the matching records of the ledger."""
        start = now()
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/dags/{DAG}")
        tab = wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "a[href$='/plugin/workflow-audit-dag']"))
        )
        tab.click()
        enter_view(browser, "Audit")
        wait(browser).until(lambda d: listed_records(d))
        known = by_key(trail.ledger)
        ours = {k for k, r in known.items() if r.subject.get("dag_id") == DAG}
        assert set(listed_records(browser)) <= ours

        submit_filter(browser, event="task.succeeded")
        succeeded = {k for k in ours if known[k].event == "task.succeeded"}
        assert succeeded == set(listed_records(browser))
        assert 5 == len(succeeded)
        filtered = wait_recorded(
            trail.ledger,
            "admin",
            "audit.viewed",
            start,
            lambda r: ["task.succeeded"] == filter_of(r).get("events"),
        )
        assert (DAG, len(succeeded)) == (filter_of(filtered).get("dag"), filtered.data["count"])

        submit_filter(browser, task="validate", event="")
        validate = {k for k in ours if known[k].subject.get("task_id") == "validate"}
        assert validate == set(listed_records(browser))
        assert ["task.started", "task.retry_scheduled", "task.started", "task.succeeded"] == [
            known[k].event for k in sorted(validate) if k[0] == "airflow"
        ]

    def test_task_instance_tab_shows_that_task(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """The Audit tab of a task instance page (its run id has ':' and '+', which Airflow
        substitutes URL-encoded) lists exactly that task's records of that run."""
        known = by_key(trail.ledger)
        run_id = next(str(r.subject["run_id"]) for r in known.values() if r.chain == "airflow")
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/validate")
        wait(browser).until(
            ec.element_to_be_clickable(
                (By.CSS_SELECTOR, "a[href$='/plugin/workflow-audit-task-instance']")
            )
        ).click()
        enter_view(browser, "Audit")
        wait(browser).until(lambda d: listed_records(d))
        expected = {
            k
            for k, r in known.items()
            if (r.subject.get("dag_id"), r.subject.get("run_id"), r.subject.get("task_id"))
            == (DAG, run_id, "validate")
        }
        assert expected == set(listed_records(browser))

    def test_record_proof_verifies_offline(
        self, trail: SecuredServer, browser: WebDriver, downloads: Path
    ) -> None:
        """A record's detail shows its hash; its proof bundle, downloaded from the page,
        passes ``workflow-audit verify-proof`` with the ledger's verifier key; both reads are
        recorded (audit.opened, audit.proof_downloaded)."""
        start = now()
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/dags/{DAG}/plugin/workflow-audit-dag")
        enter_view(browser, "Audit")
        wait(browser).until(lambda d: listed_records(d))
        # the run's chain (checkpointed by the fixture), not Airflow's event log copied beside it
        chain, seq = next(k for k in listed_records(browser) if k[0] == "airflow")
        browser.find_element(By.CSS_SELECTOR, f"a[href$='/records/{chain}/{seq}']").click()
        proof = wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "a[href$='/proof']"))
        )
        record = by_key(trail.ledger)[(chain, seq)]
        assert record.hash in browser.find_element(By.TAG_NAME, "body").text
        proof.click()
        bundle = wait_for_download(downloads, "*.json")
        key = trail.ledger.with_name(trail.ledger.name + ".key.pub")
        done = cli("verify-proof", "--key", key, bundle)
        assert 0 == done.returncode, done.stdout + done.stderr
        assert "verify-proof" in browser.find_element(By.TAG_NAME, "body").text
        wait_recorded(trail.ledger, "admin", "audit.opened", start, at(chain, seq))
        wait_recorded(trail.ledger, "admin", "audit.proof_downloaded", start, at(chain, seq))

    def test_csv_export_equals_the_cli(
        self, trail: SecuredServer, browser: WebDriver, downloads: Path
    ) -> None:
        """The page's CSV export of a filter is byte for byte ``workflow-audit export
        --format csv`` with the same filter, and is recorded as audit.exported."""
        start = now()
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/dags/{DAG}/plugin/workflow-audit-dag")
        enter_view(browser, "Audit")
        submit_filter(browser, event="task.*")
        wait(browser).until(
            ec.element_to_be_clickable((By.CSS_SELECTOR, "a[href*='export.csv']"))
        ).click()
        got = wait_for_download(downloads, "*.csv").read_bytes()
        done = subprocess.run(
            [
                str(BIN / "workflow-audit"),
                "export",
                "--ledger",
                f"sqlite:///{trail.ledger}",
                "--dag",
                DAG,
                "--event",
                "task.*",
                "--format",
                "csv",
            ],
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert 0 == done.returncode, done.stderr
        assert done.stdout == got
        rows = list(csv.DictReader(io.StringIO(got.decode())))
        assert TASK_RECORDS == len(rows)
        record = wait_recorded(trail.ledger, "admin", "audit.exported", start)
        assert "csv" == record.data["format"]
        assert TASK_RECORDS == record.data["count"]

    def test_keyboard_reaches_filters_and_records(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """Tab reaches the filter form, then the first record's link; Enter opens it."""
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/workflow-audit/")
        wait(browser).until(lambda d: listed_records(d))
        first = browser.find_elements(By.CSS_SELECTOR, RECORD_LINK)[0]
        target = first.get_attribute("href")
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

    def test_dark_mode_changes_the_background(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """With the system in dark mode the page's background is not the light one."""
        login(browser, trail.url, "admin")
        browser.get(f"{trail.url}/workflow-audit/")
        wait(browser).until(lambda d: listed_records(d))
        script = "return getComputedStyle(document.body).backgroundColor"
        set_color_scheme(browser, "light")
        light = browser.execute_script(script)
        set_color_scheme(browser, "dark")
        dark = browser.execute_script(script)
        assert light != dark


class TestViewer:
    """SimpleAuthManager's viewer may read the audit log (as on Airflow's own Audit Log
    page): the records, with their own name on the audit records. Refusals (403) by
    permission are in tests/airflow/test_ui.py (``TestFab``: FAB's Viewer role, which may
    not read the audit log, and a role that may read one DAG only)."""

    def test_viewer_sees_the_trail_and_is_recorded(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """The viewer, logged in through the form, sees ml_pipeline's records; the view is
        recorded under the viewer's name."""
        start = now()
        login(browser, trail.url, "viewer")
        browser.get(f"{trail.url}/dags/{DAG}/plugin/workflow-audit-dag")
        enter_view(browser, "Audit")
        wait(browser).until(lambda d: listed_records(d))
        known = by_key(trail.ledger)
        assert {known[k].subject.get("dag_id") for k in listed_records(browser) if k in known} == {
            DAG
        }
        wait_recorded(trail.ledger, "viewer", "audit.viewed", start)

    def test_bad_addresses_are_pages_not_tracebacks(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """A record that does not exist is a 404 page, a malformed filter a 400 page."""
        login(browser, trail.url, "viewer")
        for path, status in [
            ("/workflow-audit/records/airflow/999999", "404"),
            ("/workflow-audit/records/no-such-chain/0", "404"),
            ("/workflow-audit/?limit=many", "400"),
            ("/workflow-audit/?before=not-a-position", "400"),
        ]:
            browser.get(trail.url + path)
            heading = wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "h1")))
            assert heading.text.startswith(status), (path, heading.text)
            assert "Traceback" not in browser.page_source

    def test_without_login_the_page_is_refused(
        self, trail: SecuredServer, browser: WebDriver
    ) -> None:
        """Without the ``_token`` cookie the app answers 401 and lists nothing."""
        browser.get(f"{trail.url}/workflow-audit/")
        wait(browser).until(ec.presence_of_element_located((By.TAG_NAME, "body")))
        assert [] == listed_records(browser)
        heading = browser.find_element(By.TAG_NAME, "h1").text
        assert heading.startswith("401"), heading
