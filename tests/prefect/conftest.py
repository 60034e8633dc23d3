"""Real Prefect 3 for the adapter's tests: one temporary local server per session
(``prefect_test_harness``), an OpenTelemetry SDK tracer provider recording spans in memory,
and a fresh adapter (own ledger) per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# A throw-away Prefect home: results and the server database never land in ~/.prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="workflow-audit-prefect-")
os.environ.setdefault("DO_NOT_TRACK", "1")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

import prefect_audit.adapter as adapter_module
from prefect_audit.adapter import PrefectAdapter
from prefect_audit.settings import WorkflowAuditSettings

SPANS = InMemorySpanExporter()


@pytest.fixture(scope="session", autouse=True)
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Prefect's temporary local server for the whole session; spans go to SPANS."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(SPANS))
    trace.set_tracer_provider(provider)
    os.environ["ML_PIPELINE_HOME"] = str(tmp_path_factory.mktemp("ml_pipeline"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Path]:
    """A fresh adapter writing to its own ledger, installed as the process's adapter."""
    path = tmp_path / "ledger.db"
    settings = WorkflowAuditSettings(ledger_url=f"sqlite:///{path}", chain="prefect")
    previous = adapter_module._ADAPTER
    adapter_module._ADAPTER = PrefectAdapter(settings)
    try:
        yield path
    finally:
        adapter_module._ADAPTER = previous
