"""deploy/: the Collector config, the Grafana dashboard and the Loki alert rules parse, hang
together, and query only names the OTLP sink sends (as Loki stores them) and metrics the
process counters and ``workflow-audit health`` export (as Prometheus names them)."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

from airflow_audit.adapter import AirflowAdapter, dagrun_subject, task_subject
from audit_core import AuditConfig, AuditTrail, Event, Record
from audit_core.health import GAUGES
from audit_core.hooks import TaskApi
from audit_core.metrics import KNOWN_COUNTS, metric_name
from audit_core.readlog import read_event
from audit_core.ship import Shipper
from audit_core.sinks.otlp import UNREADABLE_EVENT, OtlpSink, attributes
from testkit.otlp import OtlpReceiver, ReceivedLog
from tests.core import _access

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"}
#: Fields of an OTLP log record that Loki keeps as structured metadata under these names.
LOG_RECORD_FIELDS = {"severity_text", "severity_number", "trace_id", "span_id"}
#: Grafana's own variables.
GRAFANA_VARIABLES = {"__interval", "__range", "__auto", "__rate_interval"}
_COMPARISON = r"(?:=~|!~|!=|==|>=|<=|=|>|<)"


# -- what the sink sends ---------------------------------------------------------------------


class _Capture(TaskApi):
    """The task-side API's shortcuts, captured instead of written."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def record(
        self,
        event: str,
        data: object = None,
        *,
        subject: object = None,
        required: bool = False,
    ) -> bool:
        self.events.append((event, data))
        return True


def _returned_keys(source: Path, function: str) -> dict[str, object]:
    """The keys of the dict literal ``function`` returns in ``source`` (read, not imported:
    Prefect lives in the other virtualenv)."""
    tree = ast.parse(source.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == function:
            for ret in ast.walk(node):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Dict):
                    keys = [k.value for k in ret.value.keys if isinstance(k, ast.Constant)]
                    return {str(k): "x" for k in keys}
    raise AssertionError(f"no dict literal returned by {function} in {source}")


def _sample_events() -> Iterator[tuple[str, dict[str, object], object, dict[str, str] | None]]:
    """(event, subject, data, trace) of every kind of record the adapters and the API write,
    with subjects built by the adapters' own functions."""
    when = dt.datetime(2026, 11, 28, tzinfo=dt.timezone.utc)
    ti = SimpleNamespace(
        dag_id="ml",
        task_id="retrain",
        run_id="manual__1",
        try_number=1,
        map_index=-1,
        logical_date=when,
        operator="PythonOperator",
        dag_version_id="v1",
        hostname="worker-1",
    )
    dag_run = SimpleNamespace(
        dag_id="ml",
        run_id="manual__1",
        run_type="manual",
        logical_date=when,
        created_dag_version_id="v1",
        bundle_version=None,
    )
    task = task_subject(ti)
    failure = {"error_type": "ValueError", "message": "bad", "failure_kind": "exception"}
    for event in ("task.started", "task.succeeded", "task.skipped", "task.upstream_failed"):
        yield event, task, {"duration_s": 1.5}, TRACE
    for event in ("task.failed", "task.retry_scheduled", "task.unrecorded"):
        yield event, task, failure, TRACE
    for event in ("dagrun.started", "dagrun.succeeded", "dagrun.failed"):
        yield event, dagrun_subject(dag_run), {"task_states": {"failed": 1}}, TRACE
    adapter = object.__new__(AirflowAdapter)  # only its record builders, no settings or I/O
    built: list[Any] = []
    adapter._run = lambda _name, build: built.extend(build())  # type: ignore[method-assign]
    adapter.import_error("dags/broken.py", "Traceback\nValueError: x", new=True)
    asset = SimpleNamespace(uri="s3://lake/train.csv", name="train", group="asset")
    adapter.asset_event(
        SimpleNamespace(
            asset=asset,
            source_dag_id="ml",
            source_task_id="upload",
            source_run_id="manual__1",
            source_map_index=-1,
            extra={"rows": 10},
            partition_key=None,
        )
    )
    for e in built:
        yield e.type, e.subject, e.data, None
    prefect = REPO / "prefect_audit" / "adapter.py"
    flow, prefect_task = (
        _returned_keys(prefect, "flow_subject"),
        _returned_keys(prefect, "task_subject"),
    )
    for event in ("flowrun.started", "flowrun.succeeded", "flowrun.failed", "flowrun.crashed"):
        yield event, flow, {"state": "x"}, TRACE
    yield "flowrun.unrecorded", flow, {"state": "x"}, None
    for event in ("task.started", "task.failed", "task.retry_scheduled"):
        yield event, prefect_task, failure, TRACE
    api = _Capture()
    api.data_uploaded("s3://lake/train.csv", rows=120_000, sha256="0" * 64)
    api.model_retrained("churn", version=8, auc=0.91)
    api.model_deployed("churn", version=8, approved_by="ml-lead@example.com")
    api.drift_detected("churn", psi=0.31)
    for event, data in api.events:
        yield event, task, data, TRACE
    yield "access.denied", {"path": "s3://lake/pii"}, {"reason": "policy"}, None


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """What the sink sends for the sample records: Loki names of attributes and fields, and
    the event types."""
    ledger = tmp_path_factory.mktemp("emitted") / "ledger.db"
    config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
    keys: set[str] = {"audit.truncated"}  # documented; sent only for records that were cut
    events = {UNREADABLE_EVENT}
    with AuditTrail(config) as trail:
        for event, subject, data, trace in _sample_events():
            actor = ("user", "bob") if event == "access.denied" else None
            stored = trail.record(event, data, subject=subject, trace=trace, actor=actor)
            keys |= set(attributes(Record.from_stored(stored)))
            events.add(event)
        people = _access.period() + _access.config_changes()  # what people did (issue #13)
        seams = [  # what audit_core.sources records besides gaps (issue #13)
            Event(type="source.reset", data={"source": "airflow.log", "reason": "restarted"}),
            Event(type="source.unreadable", data={"source": "airflow.log", "id": 7}),
        ]
        reads = [  # the audit of the audit (issue #15): pages, exports, verify runs
            read_event(kind, user="auditor", via="serve", count=3)
            for kind in ("viewed", "opened", "proof_downloaded", "exported")
        ] + [read_event("verified", user="auditor", via="cli", verdict="valid")]
        seams += reads
        for stored in trail.record_many(people + seams):
            record = Record.from_stored(stored)
            keys |= set(attributes(record))
            events.add(record.event)
    resource = OtlpSink("http://127.0.0.1:9").provider.resource.attributes
    labels = {_loki_name(k) for k in resource if k == "service.name"}  # an index label
    return {
        "names": {_loki_name(k) for k in keys} | LOG_RECORD_FIELDS | labels,
        "labels": labels,
        "events": events,
    }


def _loki_name(key: str) -> str:
    """Loki's name for an OTLP attribute: every character but [A-Za-z0-9_] becomes "_"."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


#: The Prometheus names of what workflow-audit exports as metrics (Prometheus 3's OTLP
#: translation: dots become underscores, a counter gains ``_total``, unit ``s`` ``_seconds``).
PROMETHEUS_NAMES = {metric_name(c).replace(".", "_") + "_total" for c in KNOWN_COUNTS} | {
    metric_name(g).replace(".", "_") + ("_seconds" if unit == "s" else "")
    for g, unit in GAUGES.items()
}


def promql_labels(expr: str) -> set[str]:
    """The label names a PromQL expression matches on or groups by."""
    bare = _without_strings(expr)
    names = set()
    for selector in re.findall(r"\{([^{}]*)\}", bare):
        names |= set(re.findall(rf"([A-Za-z_]\w*)\s*{_COMPARISON}", selector))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    return names


# -- LogQL ------------------------------------------------------------------------------------


def _without_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', expr)


def logql_names(expr: str) -> set[str]:
    """Every label or field name a LogQL expression uses: in selectors and filters, in
    ``by``/``without`` groupings and after ``unwrap``."""
    bare = _without_strings(expr)
    names = set(re.findall(rf"\b([A-Za-z_]\w*)\s*{_COMPARISON}", bare))
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", bare):
        names |= {n.strip() for n in group.split(",") if n.strip()}
    names |= set(re.findall(r"\bunwrap\s+([A-Za-z_]\w*)", bare))
    return names


def logql_groups(expr: str) -> set[str]:
    """The names of the outermost ``by (...)`` grouping (what a result's labels are)."""
    found = re.findall(r"\bby\s*\(([^)]*)\)", _without_strings(expr))
    return {n.strip() for n in found[0].split(",")} if found else set()


def logql_events(expr: str) -> set[str]:
    """The event types an expression compares audit_event with (= or =~ alternatives)."""
    events = set()
    for op, value in re.findall(r'audit_event\s*(=~|=)\s*"((?:[^"\\]|\\.)*)"', expr):
        alternatives = value.split("|") if op == "=~" else [value]
        events |= {a.replace("[.]", ".").replace("\\\\.", ".") for a in alternatives}
    return events


def _check_logql(expr: str, emitted: dict[str, set[str]]) -> None:
    assert expr.count("(") == expr.count(")"), expr
    assert expr.count("{") == expr.count("}"), expr
    selectors = re.findall(r"\{([^{}]*)\}", _without_strings(expr))
    assert selectors, f"no stream selector in {expr!r}"
    for selector in selectors:
        used = set(re.findall(rf"([A-Za-z_]\w*)\s*{_COMPARISON}", selector))
        assert used, f"empty stream selector in {expr!r}"
        assert set() == used - emitted["labels"], f"not index labels: {used}"
    assert set() == logql_names(expr) - emitted["names"], expr
    assert set() == logql_events(expr) - emitted["events"], expr


class TestLogqlHelpers:
    """The test's LogQL readers, on known expressions."""

    def test_names(self) -> None:
        """Selectors, filters, by() and unwrap names are found; string contents are not."""
        expr = 'sum by (a, b) (sum_over_time({service_name="x"} | c=~"d=e" | unwrap f [5m])) > 0'
        assert {"a", "b", "c", "f", "service_name"} == logql_names(expr)

    def test_events(self) -> None:
        """Equality and regex alternatives of audit_event are read as event types."""
        expr = '{s="x"} | audit_event=~"task[.]failed|flowrun[.]crashed" | audit_event="a.b"'
        assert {"task.failed", "flowrun.crashed", "a.b"} == logql_events(expr)

    def test_emitted_names(self, emitted: dict[str, set[str]]) -> None:
        """The sample records give the documented names, as Loki spells them."""
        expected = {
            "audit_chain",
            "audit_seq",
            "audit_hash",
            "audit_event",
            "audit_actor_id",
            "audit_subject_dag_id",
            "audit_subject_flow_name",
            "audit_subject_filename",
            "audit_data_model",
            "audit_data_uri",
            "audit_data_rows",
            "audit_data_username",
            "audit_data_client",
            "audit_data_status",
            "audit_data_change",
            "audit_data_target",
            "audit_data_source",
            "service_name",
            "severity_text",
            "trace_id",
        }
        assert set() == expected - emitted["names"]


# -- the three files --------------------------------------------------------------------------


def _env_default(value: str) -> str:
    """``${env:NAME:-default}`` as the Collector expands it with NAME unset."""
    return re.sub(r"\$\{env:\w+:-([^}]*)\}", r"\1", value)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """deploy/otel-collector.yaml, parsed."""
    loaded = yaml.safe_load((DEPLOY / "otel-collector.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """deploy/grafana-dashboard.json, parsed."""
    loaded = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    """Every rule of deploy/loki-alert-rules.yaml (group names checked unique)."""
    loaded = yaml.safe_load((DEPLOY / "loki-alert-rules.yaml").read_text())
    groups = loaded["groups"]
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    return [rule for group in groups for rule in group["rules"]]


class TestCollectorConfig:
    """deploy/otel-collector.yaml."""

    def test_sections(self, config: dict[str, Any]) -> None:
        """The five top-level sections are there."""
        assert {"extensions", "receivers", "processors", "exporters", "service"} <= set(config)

    def test_metrics_go_to_prometheus_otlp(self, config: dict[str, Any]) -> None:
        """A metrics pipeline takes OTLP to Prometheus's native OTLP endpoint (the counters
        and health's verdicts the dashboard's metric panels read)."""
        pipeline = config["service"]["pipelines"]["metrics"]
        assert ["otlp"] == pipeline["receivers"]
        (name,) = pipeline["exporters"]
        assert "otlphttp" == name.split("/")[0]
        assert _env_default(config["exporters"][name]["endpoint"]).endswith("/api/v1/otlp")

    def test_every_pipeline_component_is_defined(self, config: dict[str, Any]) -> None:
        """Each pipeline's receivers, processors and exporters are defined above it."""
        pipelines = config["service"]["pipelines"]
        assert "logs" in pipelines
        for pipeline in pipelines.values():
            for kind in ("receivers", "processors", "exporters"):
                assert set() == set(pipeline.get(kind, [])) - set(config[kind] or {}), kind
            assert pipeline["receivers"]
            assert pipeline["exporters"]

    def test_service_extensions_are_defined(self, config: dict[str, Any]) -> None:
        """Every extension the service enables is configured."""
        assert set() == set(config["service"]["extensions"]) - set(config["extensions"])

    def test_otlp_receiver_speaks_http_and_grpc(self, config: dict[str, Any]) -> None:
        """The OTLP receiver listens for HTTP (the sink) and gRPC."""
        assert {"http", "grpc"} <= set(config["receivers"]["otlp"]["protocols"])

    def test_exporter_queue_is_persistent(self, config: dict[str, Any]) -> None:
        """The logs exporter queues in a file_storage extension that the service enables."""
        (name,) = config["service"]["pipelines"]["logs"]["exporters"]
        exporter = config["exporters"][name]
        storage = exporter["sending_queue"]["storage"]
        assert "file_storage" == storage.split("/")[0]
        assert storage in config["service"]["extensions"]
        assert _env_default(config["extensions"][storage]["directory"]).startswith("/")
        assert exporter["sending_queue"].get("enabled", True) is True

    def test_exporter_never_gives_up(self, config: dict[str, Any]) -> None:
        """Retries are on and unlimited in time (max_elapsed_time 0)."""
        (name,) = config["service"]["pipelines"]["logs"]["exporters"]
        retry = config["exporters"][name]["retry_on_failure"]
        assert (True, 0) == (retry["enabled"], retry["max_elapsed_time"])

    def test_exporter_targets_loki_otlp(self, config: dict[str, Any]) -> None:
        """The exporter is otlphttp to Loki's native OTLP path /otlp."""
        (name,) = config["service"]["pipelines"]["logs"]["exporters"]
        assert "otlphttp" == name.split("/")[0]
        assert _env_default(config["exporters"][name]["endpoint"]).endswith("/otlp")

    def test_no_batch_processor_before_the_queue(self, config: dict[str, Any]) -> None:
        """No batch processor in the logs pipeline: it acknowledges data held only in memory."""
        processors = config["service"]["pipelines"]["logs"].get("processors", [])
        assert [] == [p for p in processors if p.split("/")[0] == "batch"]


class TestDashboard:
    """deploy/grafana-dashboard.json."""

    @staticmethod
    def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
        return [p for p in dashboard["panels"] if p["type"] != "row"]

    @staticmethod
    def _exprs(dashboard: dict[str, Any], kind: str | None = None) -> list[str]:
        """Every query (of panels on data sources of ``kind``: loki or prometheus)."""
        panels = [
            p
            for p in TestDashboard._panels(dashboard)
            if kind is None or p["datasource"]["type"] == kind
        ]
        exprs = [t["expr"] for p in panels for t in p["targets"]]
        notes = dashboard["annotations"]["list"]
        return exprs + [
            a["expr"] for a in notes if "expr" in a and kind in (None, a["datasource"]["type"])
        ]

    def test_top_level(self, dashboard: dict[str, Any]) -> None:
        """Title, uid, an integer schemaVersion and panels."""
        assert ("workflow-audit", "workflow-audit") == (dashboard["title"], dashboard["uid"])
        assert isinstance(dashboard["schemaVersion"], int)
        assert dashboard["panels"]

    def test_panels_have_targets_with_expr(self, dashboard: dict[str, Any]) -> None:
        """Every panel has a type, title, grid position and targets, each with refId and expr."""
        for panel in self._panels(dashboard):
            assert panel["title"]
            assert panel["type"] in {"timeseries", "logs", "stat", "table"}
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
            assert panel["targets"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs)
            assert all(t["expr"].strip() for t in panel["targets"])

    def test_ids_unique_and_no_overlap(self, dashboard: dict[str, Any]) -> None:
        """Panel ids are unique; panels stay within 24 columns and do not overlap."""
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(set(ids)) == len(ids)
        cells: set[tuple[int, int]] = set()
        for panel in dashboard["panels"]:
            g = panel["gridPos"]
            assert g["x"] + g["w"] <= 24
            mine = {
                (x, y)
                for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])
            }
            assert set() == cells & mine, panel["title"]
            cells |= mine

    def test_queries_use_only_emitted_names(
        self, dashboard: dict[str, Any], emitted: dict[str, set[str]]
    ) -> None:
        """Every name and event type in every LogQL query is one the sink sends."""
        for expr in self._exprs(dashboard, "loki"):
            _check_logql(expr, emitted)

    def test_metric_queries_use_only_exported_metrics(self, dashboard: dict[str, Any]) -> None:
        """Every metric a PromQL query names is one workflow-audit exports, as Prometheus
        names it (counters ``_total``, seconds ``_seconds``), and every label it uses is
        job, instance or an attribute the metrics carry."""
        exprs = self._exprs(dashboard, "prometheus")
        assert exprs
        for expr in exprs:
            assert expr.count("(") == expr.count(")"), expr
            names = set(re.findall(r"\bworkflow_audit_\w+", expr))
            assert names, expr
            assert set() == names - PROMETHEUS_NAMES, expr
            assert set() == promql_labels(expr) - {"job", "instance", "chain", "sink"}, expr

    def test_variables_are_defined(self, dashboard: dict[str, Any]) -> None:
        """Every $variable a query uses is a dashboard variable or one of Grafana's."""
        defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_VARIABLES
        used = {v for e in self._exprs(dashboard) for v in re.findall(r"\$(\w+)", e)}
        used |= {p["datasource"]["uid"].strip("${}") for p in self._panels(dashboard)}
        assert set() == used - defined
        datasource = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
        assert ("datasource", "loki") == (datasource["type"], datasource["query"])
        metrics = next(v for v in dashboard["templating"]["list"] if v["name"] == "metrics")
        assert ("datasource", "prometheus") == (metrics["type"], metrics["query"])

    def test_legends_name_grouping_labels(self, dashboard: dict[str, Any]) -> None:
        """A {{label}} in a legend is one its query groups by."""
        for panel in self._panels(dashboard):
            for target in panel["targets"]:
                used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
                assert set() == used - logql_groups(target["expr"]), panel["title"]

    def test_required_views(self, dashboard: dict[str, Any]) -> None:
        """Events over time, failures, retrains, uploads and verification are all shown."""
        exprs = "\n".join(self._exprs(dashboard))
        assert "sum by (audit_event)" in exprs  # events over time
        assert 'severity_text="ERROR"' in exprs  # failures
        assert {"model.retrained", "data.uploaded", "audit.unreadable"} <= logql_events(exprs)
        assert "unwrap audit_seq" in exprs  # chain heads shipped
        assert {"access.login_failed", "permission.changed", "source.gap"} <= logql_events(exprs)
        assert set(_access.CONFIG_EVENTS) <= logql_events(exprs)  # configuration changes
        status = next(p for p in self._panels(dashboard) if p["title"] == "Verification status")
        (target,) = status["targets"]
        assert "prometheus" == status["datasource"]["type"]
        assert "workflow_audit_health_valid{" in target["expr"]  # health --verify's verdict
        counted = "\n".join(self._exprs(dashboard, "prometheus"))
        assert {"hook_failures", "records_abandoned", "records_spooled"} <= set(
            re.findall(r"workflow_audit_(\w+)_total", counted)
        )


class TestAlertRules:
    """deploy/loki-alert-rules.yaml."""

    def test_rule_shape(self, rules: list[dict[str, Any]]) -> None:
        """Each rule has alert, expr, for, labels.severity and a summary and description."""
        alerts = [r["alert"] for r in rules]
        assert len(set(alerts)) == len(alerts)
        for rule in rules:
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(rule["annotations"])

    def test_queries_use_only_emitted_names(
        self, rules: list[dict[str, Any]], emitted: dict[str, set[str]]
    ) -> None:
        """Every name and event type in every rule's LogQL is one the sink sends."""
        for rule in rules:
            _check_logql(rule["expr"], emitted)

    def test_annotations_use_grouping_labels(self, rules: list[dict[str, Any]]) -> None:
        """A $labels.X in an annotation is a label the rule's query groups by."""
        for rule in rules:
            text = " ".join(rule["annotations"].values())
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert set() == used - logql_groups(rule["expr"]), rule["alert"]

    def test_required_alerts(self, rules: list[dict[str, Any]]) -> None:
        """task.failed bursts, access.denied, task.unrecorded, failed logins, permission
        changes and source gaps each have a rule."""
        alerted = set().union(*(logql_events(r["expr"]) for r in rules))
        assert {"task.failed", "access.denied", "task.unrecorded"} <= alerted
        assert {"access.login_failed", "permission.changed", "source.gap"} <= alerted


# -- the rules, evaluated on what a real receiver got ----------------------------------------


@dataclass(frozen=True)
class LokiEntry:
    """A log line as Loki stores an OTLP log record: index labels (service_name) and
    structured metadata (log attributes, other resource attributes, severity, trace ids),
    every value a string, names with dots turned into underscores."""

    time_ns: int
    labels: dict[str, str]
    metadata: dict[str, str]

    @classmethod
    def of(cls, log: ReceivedLog) -> LokiEntry:
        def text(value: object) -> str:
            return str(value).lower() if isinstance(value, bool) else str(value)

        labels = {"service_name": text(log.resource["service.name"])}
        metadata = {_loki_name(k): text(v) for k, v in log.resource.items() if k != "service.name"}
        metadata |= {_loki_name(k): text(v) for k, v in log.attributes.items()}
        fields = {
            "severity_text": log.severity_text,
            "severity_number": str(log.severity_number),
            "trace_id": log.trace_id,
            "span_id": log.span_id,
        }
        metadata |= {k: v for k, v in fields.items() if v}
        return cls(log.time_unix_nano, labels, metadata)

    def value(self, name: str) -> str:
        """What a label filter sees: labels and structured metadata; a missing name is ""."""
        return self.labels.get(name, self.metadata.get(name, ""))


_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_COUNT_RULE = re.compile(
    r"\s*sum\s+by\s*\((?P<by>[^)]*)\)\s*\(\s*count_over_time\(\s*\{(?P<selector>[^}]*)\}"
    r'(?P<stages>(?:[^\["]|"(?:[^"\\]|\\.)*")*)'  # filters; a quoted value may hold [
    r"\[(?P<n>\d+)(?P<unit>[smh])\]\s*\)\s*\)\s*(?P<op>>=|>)\s*(?P<value>\d+)\s*"
)
_UNITS_NS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def _matches(op: str, actual: str, wanted: str) -> bool:
    """A LogQL string matcher; regular expressions are anchored at both ends, as Loki's."""
    if op in ("=~", "!~"):
        return (re.fullmatch(wanted, actual) is not None) == (op == "=~")
    return (actual == wanted) == (op == "=")


def _matchers(text: str, sep: str) -> list[tuple[str, str, str]]:
    """``name op "value"`` items separated by ``sep``; anything else is unsupported syntax."""
    found = []
    for part in re.split(rf"{re.escape(sep)}(?=\s*\w+\s*(?:=~|!~|!=|=)\s*\")", text.strip()):
        if not part.strip():
            continue
        m = _MATCHER.fullmatch(part)
        assert m, f"unsupported LogQL: {part!r}"
        found.append((m[1], m[2], m[3].replace('\\"', '"').replace("\\\\", "\\")))
    return found


def evaluate(expr: str, entries: list[LokiEntry], at_ns: int) -> list[dict[str, str]]:
    """The series of ``sum by (...) (count_over_time({sel} | filters [W])) op N`` that hold at
    ``at_ns``: the window is (at - W, at], the stream selector reads index labels only, label
    filters read labels and structured metadata, and a result drops empty labels (as Loki)."""
    m = _COUNT_RULE.fullmatch(expr)
    assert m, f"not a count_over_time rule: {expr!r}"
    selector = _matchers(m["selector"], ",")
    stages = _matchers(m["stages"], "|")
    window = int(m["n"]) * _UNITS_NS[m["unit"]]
    by = [n.strip() for n in m["by"].split(",")]
    counts: dict[tuple[tuple[str, str], ...], int] = {}
    for e in entries:
        if not at_ns - window < e.time_ns <= at_ns:
            continue
        if not all(_matches(op, e.labels.get(n, ""), v) for n, op, v in selector):
            continue
        if not all(_matches(op, e.value(n), v) for n, op, v in stages):
            continue
        key = tuple((n, e.value(n)) for n in by if e.value(n))
        counts[key] = counts.get(key, 0) + 1
    threshold = int(m["value"])
    held = [k for k, n in counts.items() if (n >= threshold if m["op"] == ">=" else n > threshold)]
    return [dict(k) for k in held]


def fired(rule: dict[str, Any], entries: list[LokiEntry]) -> set[frozenset[tuple[str, str]]]:
    """Every series ``rule`` fires for, evaluated at each entry's time (where a count over a
    window is highest), as frozen label sets."""
    expr = " ".join(rule["expr"].split())
    return {
        frozenset(series.items()) for e in entries for series in evaluate(expr, entries, e.time_ns)
    }


def _scenario() -> list[Event]:
    """Records that should trip each access rule once, and near misses that should not."""
    at = _access.at
    return [
        # brute force: 5 failed logins for alice within 4 minutes, from 5 addresses
        *(_access.login_failed("alice", f"10.1.0.{i}", at(i)) for i in range(5)),
        # 4 for bob from one address: below both thresholds
        *(_access.login_failed("bob", "198.51.100.7", at(i, 30)) for i in range(4)),
        # 6 for carol, 2 minutes apart: never 5 within 5 minutes
        *(_access.login_failed("carol", "10.2.0.1", at(20 + 2 * i)) for i in range(6)),
        # spraying: 5 usernames from one address within a minute
        *(_access.login_failed(f"user{i}", "203.0.113.9", at(40, 10 * i)) for i in range(5)),
        # a scanner: 10 refused requests, not logged in; a viewer's 3 refused writes
        *(
            _access.denied(None, "192.0.2.50", f"/api/v2/p{i}", 401, at(50, 5 * i))
            for i in range(10)
        ),
        *(_access.denied("viewer", "10.0.0.7", "/api/v2/variables", 403, at(51)) for _ in range(3)),
        _access.permission_changed("admin", "user.roles", "bob", ["Viewer"], ["Admin"], at(55)),
        _access.source_gap(100, 149, "purged", at(58)),
        # a policy's denial inside a pipeline: no HTTP status, on the default chain
        Event(
            type="access.denied",
            data={"reason": "policy"},
            subject={"path": "s3://lake/pii"},
            actor=("user", "bob"),
            ts=at(59),
            chain="default",
        ),
        # logins and configuration changes alert nobody
        _access.login("alice", "10.0.0.5", at(60)),
        *_access.config_changes(),
        _access.event_log("cli.command", "cli_dags_list", "alice", {}, 200, at(61)),
    ]


@pytest.fixture(scope="module")
def loki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LokiEntry]]:
    """The scenario written to a ledger, shipped by the OTLP sink to a real OTLP/HTTP
    receiver, and stored as Loki would store what arrived."""
    ledger = tmp_path_factory.mktemp("loki") / "ledger.db"
    config = AuditConfig(ledger_url=f"sqlite:///{ledger}", checkpoint_every=0)
    receiver = OtlpReceiver().start()
    try:
        with AuditTrail(config) as trail:
            stored = trail.record_many(_scenario())
            report = Shipper(trail.ledger, OtlpSink(receiver.endpoint, timeout_s=10)).ship_once()
        assert not report.failed
        assert len(stored) == len(receiver.logs)
        yield [LokiEntry.of(log) for log in receiver.logs]
    finally:
        receiver.stop()


def _series(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


class TestRuleEvaluator:
    """The test's LogQL evaluator, on entries it builds itself."""

    @staticmethod
    def _entries() -> list[LokiEntry]:
        return [
            LokiEntry(i, {"service_name": "s"}, {"audit_event": "e", "audit_data_user": u})
            for i, u in enumerate(["a", "a", "b"])
        ]

    def test_counts_by_group_in_the_window(self) -> None:
        """Counts per group of the entries in (at - W, at]; the threshold is applied."""
        expr = (
            "sum by (audit_data_user)"
            ' (count_over_time({service_name="s"} | audit_event="e" [1s])) >= 2'
        )
        assert [{"audit_data_user": "a"}] == evaluate(expr, self._entries(), 2)
        assert [] == evaluate(expr, self._entries(), -1)

    def test_selector_reads_index_labels_only(self) -> None:
        """A stream selector on structured metadata matches nothing, as in Loki."""
        expr = 'sum by (audit_event) (count_over_time({audit_event="e"} [1s])) > 0'
        assert [] == evaluate(expr, self._entries(), 2)

    def test_missing_name_is_empty(self) -> None:
        """A filter on a name no entry has matches only "" (a misspelt attribute fires
        nothing)."""
        base = 'sum by (audit_event) (count_over_time({service_name="s"} | audit_data_usr'
        assert [] == evaluate(base + '="a" [1s])) > 0', self._entries(), 2)
        assert [{"audit_event": "e"}] == evaluate(base + '="" [1s])) > 0', self._entries(), 2)

    def test_regex_is_anchored(self) -> None:
        """=~ matches the whole value."""
        expr = (
            "sum by (audit_event)"
            ' (count_over_time({service_name="s"} | audit_data_user=~"a|x" [1s])) > 1'
        )
        assert [{"audit_event": "e"}] == evaluate(expr, self._entries(), 2)
        assert [] == evaluate(expr.replace('"a|x"', '"x|"'), self._entries(), 2)


class TestRulesOnShippedRecords:
    """deploy/loki-alert-rules.yaml evaluated on what the OTLP sink sent a real receiver."""

    #: What each rule fires for in _scenario(): each access rule once, nothing else.
    EXPECTED: ClassVar[dict[str, set[frozenset[tuple[str, str]]]]] = {
        "WorkflowAuditFailedLogins": {
            _series(audit_chain=_access.CHAIN, audit_data_username="alice"),
        },
        "WorkflowAuditFailedLoginsFromClient": {
            _series(audit_chain=_access.CHAIN, audit_data_client="203.0.113.9"),
        },
        "WorkflowAuditAccessDeniedBurst": {
            _series(audit_chain=_access.CHAIN, audit_data_client="192.0.2.50"),
        },
        "WorkflowAuditPermissionChanged": {
            _series(
                audit_chain=_access.CHAIN,
                audit_actor_id="admin",
                audit_data_change="user.roles",
                audit_data_target="bob",
            ),
        },
        "WorkflowAuditSourceGap": {
            _series(
                audit_chain=_access.CHAIN,
                audit_data_source="airflow.log",
                audit_data_reason="purged",
            ),
        },
        "WorkflowAuditAccessDenied": {_series(audit_chain="default", audit_actor_id="bob")},
    }

    def test_each_rule_fires_for_exactly_its_records(
        self, rules: list[dict[str, Any]], loki: list[LokiEntry]
    ) -> None:
        """Brute force, spraying, a denial burst, a permission change, a source gap and a
        pipeline's denial each fire their rule, with the labels the annotations use; near
        misses and the other rules fire nothing."""
        counted = [r for r in rules if "count_over_time" in r["expr"]]
        assert set(self.EXPECTED) <= {r["alert"] for r in counted}
        got = {r["alert"]: fired(r, loki) for r in counted}
        assert self.EXPECTED == {alert: series for alert, series in got.items() if series}

    def test_severities_as_stored(self, loki: list[LokiEntry]) -> None:
        """Loki holds WARN for failed logins, denials and permission changes, ERROR for the
        gap, INFO for logins and configuration changes."""
        levels = {(e.value("audit_event"), e.value("severity_text")) for e in loki}
        assert {
            ("access.login_failed", "WARN"),
            ("access.denied", "WARN"),
            ("permission.changed", "WARN"),
            ("source.gap", "ERROR"),
            ("access.login", "INFO"),
            ("variable.deleted", "INFO"),
            ("connection.updated", "INFO"),
            ("pool.deleted", "INFO"),
            ("cli.command", "INFO"),
        } <= levels
