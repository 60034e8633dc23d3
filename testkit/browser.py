"""Headless Debian Chromium for the browser tests and ``make screenshots``::

    driver = chrome(downloads=Path("/tmp/downloads"))
    driver.get("http://127.0.0.1:8080/")
    cookie = wait_for_cookie(driver, "_token")
    driver.quit()

Debian's ``chromium`` and ``chromium-driver`` are installed when missing (as root, ``apt-get
install``; ``apt-get update`` only when that fails), as :mod:`testkit.postgres` does for
PostgreSQL; anything that goes wrong raises :class:`BrowserError`: the tests fail loudly
instead of skipping. Selenium is given both paths explicitly, so Selenium Manager never runs
and nothing is downloaded; the browser's own background traffic (updates, sync, safe
browsing) is switched off, so it talks to 127.0.0.1 only.

>>> sorted(_PACKAGES)
['chromium', 'chromium-driver']
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

__all__ = [
    "BINARY",
    "DRIVER",
    "RECORD_LINK",
    "WAIT_S",
    "WINDOW",
    "BrowserError",
    "airflow_login",
    "chrome",
    "ensure_packages",
    "listed_records",
    "set_color_scheme",
    "submit_filter",
    "wait_for_cookie",
    "wait_for_download",
]

BINARY = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
_PACKAGES = ["chromium", "chromium-driver"]
#: width, height: fixed so that layouts (and screenshots) are the same on every machine
WINDOW = (1280, 900)
#: seconds a wait for a page, a cookie or a file may take on a busy 2-core machine
WAIT_S = 60.0
#: the links of the audit trail's pages to a record's detail
RECORD_LINK = "a[href*='/records/']"
# Chromium's own network traffic, all of it off: the tests talk to 127.0.0.1 only.
_QUIET = (
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-client-side-phishing-detection",
    "--disable-domain-reliability",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--safebrowsing-disable-auto-update",
    "--disable-features=OptimizationHints,MediaRouter,Translate",
)


class BrowserError(RuntimeError):
    """Chromium cannot be installed or started, or a wait ran out."""


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload,no-any-return]


def ensure_packages() -> None:
    """Install Debian's chromium and chromium-driver with apt when they are missing."""
    if BINARY.exists() and DRIVER.exists():
        return
    if os.geteuid() != 0:
        raise BrowserError(f"{' '.join(_PACKAGES)} are missing and this is not root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *_PACKAGES]
    done = _run(install, env=env)
    if done.returncode != 0:
        _run(["apt-get", "update"], env=env)
        done = _run(install, env=env)
    if done.returncode != 0 or not (BINARY.exists() and DRIVER.exists()):
        raise BrowserError(f"cannot install {_PACKAGES}: {done.stderr[-2000:]}")


def chrome(*, downloads: Path | None = None, window: tuple[int, int] = WINDOW) -> WebDriver:
    """A headless Chromium (a new, empty profile) driven by chromedriver; files it downloads
    land in ``downloads`` without a prompt. The caller quits it."""
    ensure_packages()
    options = webdriver.ChromeOptions()
    options.binary_location = str(BINARY)
    options.add_argument("--headless=new")
    # Tests run as root, where Chromium's sandbox cannot start; the pages are our own.
    options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")  # small /dev/shm in containers
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.add_argument("--lang=en-US")
    for flag in _QUIET:
        options.add_argument(flag)
    if downloads is not None:
        downloads.mkdir(parents=True, exist_ok=True)
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(downloads),
                "download.prompt_for_download": False,
                "download.directory_upgrade": True,
                "safebrowsing.enabled": False,
            },
        )
    try:
        driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    except Exception as exc:  # selenium raises several unrelated types for a failed start
        raise BrowserError(f"chromium did not start: {exc}") from exc
    driver.set_window_size(*window)
    if downloads is not None:
        # Headless Chromium honours the prefs; the DevTools call makes it explicit (and also
        # covers downloads started inside a sandboxed iframe that allows them).
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior",
            {"behavior": "allow", "downloadPath": str(downloads), "eventsEnabled": True},
        )
    return driver


def set_color_scheme(driver: WebDriver, scheme: str) -> None:
    """Make the page see ``prefers-color-scheme: scheme`` ("light" or "dark"), as a user's
    operating system setting would (DevTools ``Emulation.setEmulatedMedia``)."""
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"media": "", "features": [{"name": "prefers-color-scheme", "value": scheme}]},
    )


def wait_for_cookie(driver: WebDriver, name: str, timeout_s: float = WAIT_S) -> str:
    """The value of cookie ``name`` once the page has set it (Airflow's login form sets
    ``_token`` from JavaScript after its API call answers)."""

    def present(d: WebDriver) -> str | None:
        cookie = d.get_cookie(name)
        return None if cookie is None else str(cookie["value"]) or None

    try:
        return str(WebDriverWait(driver, timeout_s).until(present))
    except Exception as exc:  # TimeoutException, with the page for the reader
        raise BrowserError(f"cookie {name!r} not set on {driver.current_url}") from exc


def wait_for_download(directory: Path, pattern: str = "*", timeout_s: float = WAIT_S) -> Path:
    """The one complete file matching ``pattern`` in ``directory`` (Chromium writes
    ``*.crdownload`` first and renames it when done)."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = [
            p
            for p in directory.glob(pattern)
            if p.is_file() and not p.name.endswith(".crdownload") and p.stat().st_size > 0
        ]
        partial = list(directory.glob("*.crdownload"))
        if done and not partial:
            if len(done) > 1:
                raise BrowserError(f"several downloads match {pattern!r}: {sorted(done)}")
            return done[0]
        if time.monotonic() > deadline:
            found = sorted(p.name for p in directory.iterdir())
            raise BrowserError(f"no complete download {pattern!r} in {directory}: {found}")
        time.sleep(0.05)  # polling the directory for the renamed file


def airflow_login(driver: WebDriver, base: str, user: str, password: str) -> None:
    """Sign in through Airflow's own login form at ``base``; the form's JavaScript sets the
    ``_token`` cookie after its API call answers, then leaves the login page."""
    driver.get(base + "/")
    # Airflow's UI redirects to its login page from script: a lookup during that navigation
    # fails with "aborted by navigation" (a WebDriverException), so those are retried too.
    field = WebDriverWait(
        driver, WAIT_S, ignored_exceptions=(NoSuchElementException, WebDriverException)
    ).until(ec.element_to_be_clickable((By.NAME, "username")))
    field.send_keys(user)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for_cookie(driver, "_token")
    WebDriverWait(driver, WAIT_S).until(lambda d: "/auth/login" not in d.current_url)


def listed_records(driver: WebDriver) -> list[tuple[str, int]]:
    """(chain, seq) of the records an audit trail page links to, top to bottom."""
    found = []
    for link in driver.find_elements(By.CSS_SELECTOR, RECORD_LINK):
        match = re.search(r"/records/([^/?#]+)/(\d+)$", link.get_attribute("href") or "")
        if match:
            found.append((unquote(match.group(1)), int(match.group(2))))
    return list(dict.fromkeys(found))


def submit_filter(driver: WebDriver, **fields: str) -> None:
    """Type ``fields`` (name: value; "" clears) into the page's filter form, submit it and
    wait for the next page."""
    form = driver.find_element(By.CSS_SELECTOR, "form.filters")
    for name, value in fields.items():
        field = form.find_element(By.NAME, name)
        field.clear()
        field.send_keys(value)
    old = driver.find_element(By.TAG_NAME, "html")
    form.find_element(By.NAME, next(iter(fields))).submit()
    WebDriverWait(driver, WAIT_S).until(ec.staleness_of(old))
