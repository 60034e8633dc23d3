"""airflow_audit.plugin in a real Airflow process (Airflow's listener manager, as every Airflow
component builds it): ``[workflow_audit] enabled`` decides whether the listener is registered;
a value that is neither true nor false registers none and says so in the log."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.airflow._airflow import BIN

pytestmark = pytest.mark.slow

#: Prints, as the last line, the modules Airflow registered as listeners.
LISTENERS = """
import json
from airflow.listeners.listener import get_listener_manager

print(json.dumps(sorted(p.__name__ for p in get_listener_manager().pm.get_plugins())))
"""


def listener_manager(home: Path, enabled: str) -> tuple[list[str], str]:
    """The listeners registered with ``enabled`` set, and the process's output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKFLOW_AUDIT_")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__WORKFLOW_AUDIT__ENABLED=enabled,
        PYTHONWARNINGS="ignore",
    )
    python = [str(BIN / "python"), "-c", LISTENERS]
    done = subprocess.run(python, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert 0 == done.returncode, done.stderr[-3000:]
    *log, last = done.stdout.splitlines()
    return json.loads(last), "\n".join(log) + done.stderr


class TestEnabled:
    """[workflow_audit] enabled, read by the plugin with the settings' own parser."""

    @pytest.mark.parametrize(
        ("enabled", "expected"),
        [("True", ["airflow_audit.listener", "airflow_audit.service.lifecycle"]),
         (" YES ", ["airflow_audit.listener", "airflow_audit.service.lifecycle"]),
         ("off", []), ("0", [])],
    )  # fmt: skip
    def test_enabled_decides_the_listener(
        self, tmp_path: Path, enabled: str, expected: list[str]
    ) -> None:
        """A true value registers the listener; a false one registers none."""
        assert expected == listener_manager(tmp_path, enabled)[0]

    def test_invalid_value_registers_nothing_and_is_logged(self, tmp_path: Path) -> None:
        """enabled = maybe: no listener (no hook fails on it later); the error in the log
        names the option, the accepted values and the outcome."""
        registered, output = listener_manager(tmp_path, "maybe")
        assert [] == registered
        assert (
            "[workflow_audit] enabled must be True or False (or 1/0, yes/no, on/off, t/f, y/n), "
            "not 'maybe'; no listener registered, nothing is recorded"
        ) in output
