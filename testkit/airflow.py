"""A throw-away Airflow home for the tests and the benchmarks: the example DAGs copied into its
DAGs folder and the environment that points ``airflow`` at it, with the plugin configured
through Airflow's configuration only (every ``WORKFLOW_AUDIT_*`` variable removed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["REPO", "home_env"]

REPO = Path(__file__).resolve().parent.parent


def home_env(home: Path, dags: Path) -> dict[str, str]:
    """Copy example_dags/*.py into ``dags`` (which must exist) and return this process's
    environment pointed at ``home``: no bundled examples, no unit-test mode, warnings off."""
    for path in (REPO / "example_dags").glob("*.py"):
        shutil.copy(path, dags)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "ML_PIPELINE_HOME": str(home / "ml_pipeline"),
        "PYTHONWARNINGS": "ignore",
    }
    for key in [k for k in env if k.startswith("WORKFLOW_AUDIT_")]:
        del env[key]
    return env
