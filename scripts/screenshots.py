"""`make screenshots`: PNGs of the audit trail inside Airflow's UI, light and dark, for the README.

A throw-away Airflow home (a temporary directory, removed at the end) runs ml_pipeline and
ml_pipeline_bad_data once with `airflow dags test`, `workflow-audit checkpoint` signs the
chain, and an `airflow api-server` with SimpleAuthManager (one user, a random password)
serves the UI on 127.0.0.1. Headless Debian Chromium (testkit.browser; apt-installed when
missing) logs in through Airflow's login form and writes into docs/screenshots/:

- audit-trail-{light,dark}.png   Browse → Audit trail
- dag-tab-{light,dark}.png       the Audit tab of ml_pipeline, filtered to task.*
- record-{light,dark}.png        a record's detail (hash, prev, proof download)
- status-{light,dark}.png        the status page (chains, checkpoints, verification)

Dark is the operating system's preference (prefers-color-scheme, emulated through DevTools):
Airflow's UI follows it by default and the audit trail follows Airflow. Nothing is fetched
from the network; the window size is fixed so that the images only change when pages do.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from testkit import free_port, terminate
from testkit.airflow import REPO, home_env
from testkit.browser import (
    RECORD_LINK,
    WAIT_S,
    airflow_login,
    chrome,
    listed_records,
    set_color_scheme,
    submit_filter,
)

BIN = Path(sys.executable).parent  # the venv's bin/: airflow and workflow-audit
OUT = REPO / "docs" / "screenshots"
DAGS = ("ml_pipeline", "ml_pipeline_bad_data")
USER = "admin"
TIMEOUT_S = 300.0  # a hung Airflow command fails the script instead of blocking it
WINDOW = (1440, 1100)  # a 1440x957 page: the records table fits its width
HREF = "return location.href"  # the iframe's own address


class ScreenshotError(Exception):
    """A step did not do what the script expects; the message says what and where to look."""


def run(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> None:
    """Run a command of this venv; fail with its output's tail unless it exits with ``ok``."""
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if done.returncode not in ok:
        raise ScreenshotError(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")


@contextlib.contextmanager
def airflow(home: Path) -> Iterator[str]:
    """A migrated Airflow home with the example DAGs run onto its ledger and an api-server
    with SimpleAuthManager on 127.0.0.1; yields its base URL."""
    dags = home / "dags"
    dags.mkdir()
    port = free_port()
    ledger = home / "ledger.db"
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: secrets.token_urlsafe(16)}))
    env = {
        **home_env(home, dags),
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__WORKFLOW_AUDIT__LEDGER_URL": f"sqlite:///{ledger}",
    }
    run(env, "airflow", "db", "migrate")
    for dag in DAGS:
        # ml_pipeline_bad_data's run fails on purpose (exit 1); the trail records how
        run(env, "airflow", "dags", "test", dag, ok=(0, 1))
    run(env, "workflow-audit", "checkpoint", "--ledger", f"sqlite:///{ledger}")
    run(env, "workflow-audit", "verify", "--ledger", f"sqlite:///{ledger}")
    # the status page checks checkpoint signatures with the verifier key (the key itself:
    # [workflow_audit] verifier_key takes no file path here)
    keys = (home / "ledger.db.key.pub").read_text().split()
    env["AIRFLOW__WORKFLOW_AUDIT__VERIFIER_KEY"] = ",".join(keys)
    with (home / "api-server.log").open("w") as log:
        server = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_health(base, server, home / "api-server.log")
            yield base
        finally:
            terminate(server, 60)


def wait_for_health(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll Airflow's health endpoint until it answers (or the server dies)."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            urllib.request.urlopen(base + "/api/v2/monitor/health", timeout=10)  # noqa: S310 - 127.0.0.1
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise ScreenshotError(f"the api-server did not start; see {log}") from None
            time.sleep(0.5)  # polling the port the server is starting on


def in_view(driver: WebDriver, title: str, ready: str) -> None:
    """Wait until the plugin page's iframe shows an element matching CSS ``ready``; leave the
    driver inside the iframe."""
    driver.switch_to.default_content()
    WebDriverWait(driver, WAIT_S).until(
        ec.frame_to_be_available_and_switch_to_it((By.CSS_SELECTOR, f"iframe[title='{title}']"))
    )
    WebDriverWait(driver, WAIT_S).until(ec.presence_of_element_located((By.CSS_SELECTOR, ready)))


def shoot(driver: WebDriver, name: str) -> Path:
    """Save the whole window (Airflow's UI around the iframe) as docs/screenshots/NAME.png."""
    driver.switch_to.default_content()
    path = OUT / f"{name}.png"
    if not driver.save_screenshot(str(path)):
        raise ScreenshotError(f"chromium could not save {path}")
    return path


def pages(driver: WebDriver, base: str, scheme: str) -> list[Path]:
    """The four pages in one colour scheme."""
    set_color_scheme(driver, scheme)
    shots = []
    driver.get(base + "/plugin/workflow-audit")
    in_view(driver, "Audit trail", RECORD_LINK)
    shots.append(shoot(driver, f"audit-trail-{scheme}"))

    driver.get(base + "/dags/ml_pipeline/plugin/workflow-audit-dag")
    in_view(driver, "Audit", RECORD_LINK)
    submit_filter(driver, event="task.*")
    WebDriverWait(driver, WAIT_S).until(listed_records)
    shots.append(shoot(driver, f"dag-tab-{scheme}"))

    in_view(driver, "Audit", RECORD_LINK)
    driver.find_element(By.CSS_SELECTOR, RECORD_LINK).click()
    in_view(driver, "Audit", "a[href$='/proof']")
    shots.append(shoot(driver, f"record-{scheme}"))

    driver.get(base + "/plugin/workflow-audit")
    in_view(driver, "Audit trail", RECORD_LINK)
    driver.find_element(By.CSS_SELECTOR, "a[href$='/status']").click()
    in_view(driver, "Audit trail", "main h1")
    WebDriverWait(driver, WAIT_S).until(
        lambda d: "/status" in d.execute_script("return location.href")
    )
    shots.append(shoot(driver, f"status-{scheme}"))
    return shots


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="workflow-audit-screenshots-"))
    try:
        with airflow(home) as base:
            password = json.loads((home / "passwords.json").read_text())[USER]
            driver = chrome(window=WINDOW)
            try:
                airflow_login(driver, base, USER, password)
                for scheme in ("light", "dark"):
                    for path in pages(driver, base, scheme):
                        print(path.relative_to(REPO))
            finally:
                driver.quit()
    except (ScreenshotError, WebDriverException, OSError, subprocess.SubprocessError):
        traceback.print_exc()
        print(f"screenshots: failed; the Airflow home and its logs are in {home}", file=sys.stderr)
        return 1
    shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
