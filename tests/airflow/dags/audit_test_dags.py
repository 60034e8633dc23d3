"""DAGs the Airflow tests need beyond the examples: secrets, a SIGKILLed task, 20 no-ops."""

from __future__ import annotations

import os
import signal
from datetime import datetime

from airflow.sdk import dag, task

from airflow_audit import audit

SECRET = "tok-8f3b2c7d9e1a"  # noqa: S105 - a fake secret the masker must hide


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def audit_secrets() -> None:
    @task
    def use_secret() -> None:
        from airflow.sdk.log import mask_secret

        mask_secret(SECRET)
        audit.record(
            "access.granted",
            data={"note": f"connected with {SECRET}", "password": "plain-text-pw"},
        )
        raise RuntimeError(f"upstream said: bad credential {SECRET}")

    use_secret()


@dag(schedule=None, start_date=datetime(2026, 1, 1), catchup=False)
def audit_sigkill() -> None:
    @task
    def before() -> None:
        pass

    @task
    def killed() -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # what the OOM killer does: no hook runs

    before() >> killed()


audit_secrets()
audit_sigkill()
