"""prefect_audit.eventmap over events captured from a real Prefect 3.9 server
(tests/prefect/fixtures/events/, fetched with POST /api/events/filter; the two
``prefect-cloud.*`` events were emitted to that server, as Prefect Cloud's audit events are
shaped, since an OSS server makes none), and over malformed input."""

from __future__ import annotations

import copy
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.schemas.objects import FlowRun, State, StateType, TaskRun

from audit_core import AuditConfig, AuditTrail, Event, Record
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from prefect_audit.adapter import flow_subject, task_subject
from prefect_audit.eventmap import FOLLOW_SKIP, SOURCE, to_events
from prefect_audit.history import lifecycle
from prefect_audit.ids import event_key, lifecycle_key, run_trace
from prefect_audit.reconcile import PrefectReconciler

FIXTURES = Path(__file__).parent / "fixtures" / "events"
#: Values the captured events carried (a variable's value before and after its update).
SECRETS = ("s3cr3t-var-7f3a9", "s3cr3t-var-7f3a9-2")


@pytest.fixture(scope="module")
def prefect_server() -> str:
    """No server: the mapping is pure (overrides the session's autouse server here)."""
    return ""


def load(name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())
    return events


def all_events() -> list[dict[str, Any]]:
    return [e for path in sorted(FIXTURES.glob("*.json")) for e in load(path.stem)]


def mapped(raw: dict[str, Any]) -> list[Event]:
    return to_events(raw)


def by_name(name: str, events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [e for e in (events if events is not None else all_events()) if e["event"] == name]


def _record_all(path: Path, events: list[Event]) -> int:
    config = AuditConfig(ledger_url=f"sqlite:///{path}", chain="prefect", checkpoint_every=0)
    with AuditTrail(config) as trail:
        return len(trail.record_many(events))


#: Prefect event name -> record types, for every name the fixtures hold.
EXPECTED_TYPES = {
    "prefect.flow-run.Pending": ["flowrun.state"],
    "prefect.flow-run.Scheduled": ["flowrun.state"],
    "prefect.flow-run.Running": ["flowrun.started"],
    "prefect.flow-run.AwaitingRetry": ["flowrun.retry_scheduled"],
    "prefect.flow-run.Completed": ["flowrun.succeeded"],
    "prefect.flow-run.Failed": ["flowrun.failed"],
    "prefect.flow-run.Crashed": ["flowrun.crashed"],
    "prefect.flow-run.Cancelled": ["flowrun.cancelled"],
    "prefect.flow-run.heartbeat": [],
    "prefect.task-run.Pending": ["task.state"],
    "prefect.task-run.Running": ["task.started"],
    "prefect.task-run.AwaitingRetry": ["task.retry_scheduled"],
    "prefect.task-run.Retrying": ["task.retry_scheduled", "task.started"],
    "prefect.task-run.Completed": ["task.succeeded"],
    "prefect.task-run.Failed": ["task.failed"],
    "prefect.flow.created": ["flow.created"],
    "prefect.variable.created": ["variable.created"],
    "prefect.variable.updated": ["variable.updated"],
    "prefect.variable.deleted": ["variable.deleted"],
    "prefect.work-pool.created": ["work_pool.created"],
    "prefect.work-pool.paused": ["work_pool.paused"],
    "prefect.work-pool.not-ready": ["work_pool.not_ready"],
    "prefect.work-queue.created": ["work_queue.created"],
    "prefect.concurrency-limit.created": ["concurrency_limit.created"],
    "prefect.concurrency-limit.deleted": ["concurrency_limit.deleted"],
    "prefect.block-document.created": ["block_document.created"],
    "prefect.block-document.updated": ["block_document.updated"],
    "prefect.block-document.deleted": ["block_document.deleted"],
    "prefect.block.secret.loaded": ["block.loaded"],
    "prefect.deployment.created": ["deployment.created"],
    "prefect.deployment.updated": ["deployment.updated"],
    "prefect.deployment.deleted": ["deployment.deleted"],
    "prefect.automation.created": ["automation.created"],
    "prefect.automation.updated": ["automation.updated"],
    "prefect.automation.triggered": ["automation.triggered"],
    "prefect.automation.action.triggered": ["automation.action.triggered"],
    "prefect.automation.action.executed": ["automation.action.executed"],
    "prefect-cloud.user.logged-in": ["access.login"],
    "prefect-cloud.workspace-role.updated": ["permission.changed"],
    "cap.custom": ["prefect.event"],
}


class TestCapturedEvents:
    """Every captured event maps, to the expected types, keys, subjects and traces."""

    def test_every_fixture_maps(self) -> None:
        """Each event of every fixture gives its expected record types; none is unreadable."""
        events = all_events()
        assert len(events) > 60
        assert {e["event"] for e in events} == set(EXPECTED_TYPES)
        for raw in events:
            assert EXPECTED_TYPES[raw["event"]] == [e.type for e in mapped(raw)], raw["event"]

    def test_heartbeats_are_skipped(self) -> None:
        beats = by_name("prefect.flow-run.heartbeat")
        assert beats
        assert all(e["event"] in FOLLOW_SKIP for e in beats)
        assert all(mapped(e) == [] for e in beats)

    def test_common_fields(self) -> None:
        """ts is occurred; data.prefect keeps the event id, name, time, resource, related;
        every record has a key; no key is shared except retry_scheduled's (AwaitingRetry,
        then Retrying, both end the same attempt: one record)."""
        keys: dict[str, str] = {}
        for raw in all_events():
            for e in mapped(raw):
                assert isinstance(e.ts, dt.datetime)
                assert e.ts.isoformat().replace("+00:00", "Z") == raw["occurred"]
                kept = e.data["prefect"]  # type: ignore[index]
                assert (raw["id"], raw["event"], raw["occurred"]) == (
                    kept["event_id"],
                    kept["event"],
                    kept["occurred"],
                )
                assert (
                    raw["resource"]["prefect.resource.id"]
                    == kept["resource"]["prefect.resource.id"]
                )
                assert [r["prefect.resource.id"] for r in raw["related"]] == [
                    r["prefect.resource.id"] for r in kept["related"]
                ]
                assert e.key is not None
                if e.key in keys:
                    assert "retry_scheduled" in e.key
                    assert keys[e.key] != raw["id"]
                keys[e.key] = raw["id"]

    def test_changes_are_keyed_by_event_id(self) -> None:
        for raw in all_events():
            if not raw["event"].startswith(("prefect.flow-run.", "prefect.task-run.")):
                assert [event_key(raw["id"])] == [e.key for e in mapped(raw)]

    def test_flow_run_subject(self) -> None:
        """A flow run's records have adapter.flow_subject's fields (but the parameters'
        digest, which no event holds), from the resource and the related flow."""
        run = FlowRun(flow_id=uuid.uuid4(), name="n")
        fields = set(flow_subject(None, run)) - {"parameters_sha256"}
        (failed,) = mapped(by_name("prefect.flow-run.Failed")[0])
        assert fields == set(failed.subject or {})
        assert {
            "flow_name": "cap-fail",
            "flow_run_id": "6ee64246-2ea8-446c-a78f-91e0bd0573eb",
            "flow_run_name": "hopeful-jellyfish",
            "deployment_id": None,
            "run_count": 1,
            "tags": [],
        } == failed.subject
        (scheduled,) = mapped(by_name("prefect.flow-run.Scheduled")[0])
        assert "c817f940-1632-4e66-ae82-a6ec03aba47b" == (scheduled.subject or {})["deployment_id"]
        assert ["x"] == (scheduled.subject or {})["tags"]

    def test_task_run_subject(self) -> None:
        """A task run's records have adapter.task_subject's fields: the task's own name,
        its run, key, attempt and tags, and the flow run from the related resources."""
        task = TaskRun(name="flaky-01f", task_key="k", dynamic_key="0")
        fields = set(task_subject(task, 1, None, None))
        first = next(e for e in load("runs_ok") if e["event"] == "prefect.task-run.Running")
        (started,) = mapped(first)
        assert fields == set(started.subject or {})
        assert {
            "flow_name": "cap-ok",
            "flow_run_id": "cd1a69fd-20cd-4057-a8ed-2198a4b4065d",
            "deployment_id": None,
            "task_name": "flaky",
            "task_run_id": "01a24418-f2a2-7e85-867f-561781d47818",
            "task_key": "flaky-a1d65c51",
            "run_count": 1,
            "tags": ["audit-tag"],
        } == started.subject

    def test_traces_follow_the_run(self) -> None:
        """Every record of a flow run, its tasks' included, has the flow run's trace id; a
        task's span id is its run id's; changes that name no run have no trace."""
        run = "cd1a69fd-20cd-4057-a8ed-2198a4b4065d"
        ours = [
            r
            for r in load("runs_ok")
            if run in json.dumps(r["resource"]) + json.dumps(r["related"])
        ]
        assert len(ours) > 10
        for raw in ours:
            for e in mapped(raw):
                subject = e.subject or {}
                expected = run_trace(subject["flow_run_id"], subject.get("task_run_id"))
                assert expected == e.trace
                assert "cd1a69fd20cd4057a8ed2198a4b4065d" == (e.trace or {})["trace_id"]
        assert all(e.trace is None for raw in load("changes_variable") for e in mapped(raw))


def _states(events: list[dict[str, Any]]) -> list[State]:
    """The task run's state history, as Prefect's API would return it."""
    return [
        State(
            type=StateType(e["resource"]["prefect.state-type"]),
            name=e["resource"]["prefect.state-name"],
        )
        for e in events
    ]


class TestSameKeysAsTheFlowProcess:
    """The follower's lifecycle records carry the keys the flow process gives the same
    state and attempt (prefect_audit.history.lifecycle, the hooks): one record each."""

    @pytest.mark.parametrize(
        "task_run_id",
        [
            "01a24418-f2a2-7e85-867f-561781d47818",  # Running, Retrying (no delay), Completed
            "01a24418-f373-7d48-863c-4dd868353a0a",  # Running, AwaitingRetry, Retrying, ...
            "01a24418-fae0-7127-881d-3f3da2b8cb00",  # Running, Failed
        ],
    )
    def test_task_run_keys(self, task_run_id: str) -> None:
        """A task run's records from its events: the same (event, attempt) keys as the
        end-of-run pass derives from its state history."""
        events = [
            e for e in all_events() if e["resource"]["prefect.resource.id"].endswith(task_run_id)
        ]
        assert len(events) >= 3
        followed = {e.key for raw in events for e in mapped(raw) if not e.type.endswith(".state")}
        scanned = {
            lifecycle_key(event, task_run_id, attempt)
            for event, attempt, _, _ in lifecycle(_states(events))
        }
        assert scanned == followed

    def test_retrying_is_two_records(self) -> None:
        """Retrying (run_count 2): retry_scheduled of attempt 1 and started of attempt 2,
        as the hooks' task_running writes them."""
        run = "01a24418-f2a2-7e85-867f-561781d47818"
        raw = next(e for e in load("runs_ok") if e["event"] == "prefect.task-run.Retrying")
        records = mapped(raw)
        assert [
            ("task.retry_scheduled", lifecycle_key("task.retry_scheduled", run, 1), 1),
            ("task.started", lifecycle_key("task.started", run, 2), 2),
        ] == [(e.type, e.key, (e.subject or {})["run_count"]) for e in records]

    def test_flow_retry_keys(self) -> None:
        """A flow run retried after a delay: started 1, retry_scheduled 1, started 2,
        succeeded 2, the attempts adapter.flow_running/flow_finished count."""
        run = "b823d2d5-4b43-40bc-8e4d-e460e0542d42"
        keys = [
            e.key for raw in load("runs_retry") for e in mapped(raw) if e.type != "flowrun.state"
        ]
        assert [
            lifecycle_key("flowrun.started", run, 1),
            lifecycle_key("flowrun.retry_scheduled", run, 1),
            lifecycle_key("flowrun.started", run, 2),
            lifecycle_key("flowrun.succeeded", run, 2),
        ] == keys

    def test_duplicates_are_one_record(self, tmp_path: Path) -> None:
        """Recorded twice (a reconnect's backfill), the fixtures append once; the
        AwaitingRetry + Retrying pair is one retry_scheduled."""
        records = [e for raw in all_events() for e in mapped(raw)]
        unique = len({e.key for e in records})
        assert unique < len(records)
        path = tmp_path / "l.db"
        assert unique == _record_all(path, records)
        assert 0 == _record_all(path, records)


class TestFailures:
    """Failure facts as audit_core.hooks.failure_data gives them, from Prefect's message."""

    def test_task_failed(self) -> None:
        (failed,) = mapped(by_name("prefect.task-run.Failed")[0])
        data = failed.data
        assert isinstance(data, dict)
        assert "RuntimeError" == data["error_type"]
        assert "exception" == data["failure_kind"]
        assert "Task run encountered an exception RuntimeError: task boom" == data["message"]

    def test_flow_failed(self) -> None:
        (failed,) = mapped(by_name("prefect.flow-run.Failed")[0])
        assert isinstance(failed.data, dict)
        assert ("ValueError", "exception", "Failed") == (
            failed.data["error_type"],
            failed.data["failure_kind"],
            failed.data["state"],
        )

    def test_crashed_and_cancelled(self) -> None:
        (crashed,) = mapped(by_name("prefect.flow-run.Crashed")[0])
        (cancelled,) = mapped(by_name("prefect.flow-run.Cancelled")[0])
        assert isinstance(crashed.data, dict)
        assert isinstance(cancelled.data, dict)
        assert "crashed" == crashed.data["failure_kind"]
        assert "error_type" not in crashed.data
        assert "cancelled by cap" == cancelled.data["message"]

    def test_retry_reason(self) -> None:
        """A flow run's AwaitingRetry says why the attempt failed."""
        (retry,) = mapped(by_name("prefect.flow-run.AwaitingRetry")[0])
        assert isinstance(retry.data, dict)
        assert ("ValueError", "exception") == (retry.data["error_type"], retry.data["failure_kind"])

    @pytest.mark.parametrize(
        ("state_type", "name", "kind"),
        [("CRASHED", "Crashed", "crashed"), ("CANCELLED", "Cancelled", "cancelled")],
    )
    def test_task_crashed_is_failed(self, state_type: str, name: str, kind: str) -> None:
        """A task run has no crashed/cancelled record: task.failed with the failure kind."""
        raw = copy.deepcopy(by_name("prefect.task-run.Failed")[0])
        raw["event"] = f"prefect.task-run.{name}"
        raw["resource"]["prefect.state-type"] = state_type
        raw["resource"]["prefect.state-name"] = name
        (failed,) = mapped(raw)
        assert isinstance(failed.data, dict)
        assert ("task.failed", kind) == (failed.type, failed.data["failure_kind"])


def _block_event() -> dict[str, Any]:
    raw = copy.deepcopy(by_name("prefect.block-document.updated")[0])
    raw["payload"]["data"] = {"value": "s3cr3t-block-1", "nested": {"url": "s3cr3t-block-2"}}
    return raw


def _deployment_event() -> dict[str, Any]:
    raw = copy.deepcopy(by_name("prefect.deployment.updated")[0])
    raw["payload"]["updated_fields"] += ["job_variables", "parameters"]
    raw["payload"]["updates"]["job_variables"] = {
        "from": {"env": {"WAREHOUSE": "s3cr3t-env-1"}},
        "to": {"env": {"WAREHOUSE": "s3cr3t-env-2"}},
    }
    raw["payload"]["updates"]["parameters"] = {"from": {}, "to": {"who": "s3cr3t-param"}}
    return raw


class TestSecrets:
    """Values never reach a record: a variable's, a block document's, a deployment's job
    variables; parameters as a digest."""

    def test_variable_values_redacted(self) -> None:
        for raw in load("changes_variable"):
            (e,) = mapped(raw)
            assert isinstance(e.data, dict)
            assert "[REDACTED]" == e.data["prefect"]["payload"]["value"]
            assert "cap_var" == e.data["name"]
            assert not any(s in repr(e) for s in SECRETS)

    def test_block_data_and_job_variables(self) -> None:
        (block,) = mapped(_block_event())
        assert isinstance(block.data, dict)
        assert {"value": "[REDACTED]", "nested": {"url": "[REDACTED]"}} == block.data["prefect"][
            "payload"
        ]["data"]
        (deployment,) = mapped(_deployment_event())
        assert isinstance(deployment.data, dict)
        updates = deployment.data["prefect"]["payload"]["updates"]
        assert {"env": {"WAREHOUSE": "[REDACTED]"}} == updates["job_variables"]["to"]
        assert updates["parameters"]["to"].startswith("sha256:")
        assert {"from": "None", "to": "changed"} == updates["description"]

    def test_no_secret_in_any_ledger_byte(self, tmp_path: Path) -> None:
        """Every fixture plus the secret-bearing block and deployment events, recorded: no
        secret in any byte of the ledger's files."""
        records = [
            e for raw in [*all_events(), _block_event(), _deployment_event()] for e in mapped(raw)
        ]
        assert _record_all(tmp_path / "l.db", records) > 0
        raw_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        assert b"s3cr3t" not in raw_bytes
        assert b"cap_var" in raw_bytes  # the name is kept


def _leaked(records: list[Event], *secrets: str) -> list[str]:
    """The secrets found in any byte of the records' data, subject or actor."""
    text = "".join(
        json.dumps([e.data, e.subject, e.actor], default=str, ensure_ascii=False) + repr(e)
        for e in records
    )
    return [s for s in secrets if s in text]


def _triggered_by(nested: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(by_name("prefect.automation.triggered")[0])
    raw["payload"]["triggering_event"] = nested
    return raw


def _nested(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """An event as Prefect nests it in another's payload (model_dump of the event)."""
    return {
        "event": name,
        "id": "01a24419-9372-7609-b518-9c75972e0999",
        "occurred": "2026-12-05T02:47:36.562795Z",
        "payload": payload,
        "related": [],
        "resource": {"prefect.resource.id": "prefect.variable.1f0e", "prefect.resource.name": "v"},
    }


def _run_deployment_action() -> dict[str, Any]:
    return {
        "type": "run-deployment",
        "source": "selected",
        "deployment_id": "c817f940-1632-4e66-ae82-a6ec03aba47b",
        "parameters": {"who": "PARAMSECRET-1"},
        "job_variables": {"env": {"WAREHOUSE_DSN": "JOBVARSECRET-1"}},
    }


class TestNestedSecrets:
    """The secret rules hold wherever a value people set can sit: an event nested in an
    automation's firing, an automation's actions, a deployment's or work pool's fields."""

    @pytest.mark.parametrize(
        ("name", "payload"),
        [
            ("prefect.variable.updated", {"name": "v", "value": "HUNTER2-SECRET", "tags": []}),
            ("prefect.variable.created", {"name": "v", "value": {"x": ["HUNTER2-SECRET"]}}),
            ("prefect.block-document.updated", {"name": "b", "data": {"v": "HUNTER2-SECRET"}}),
            (
                "prefect.deployment.updated",
                {"updates": {"infra_overrides": {"from": {}, "to": {"K": "HUNTER2-SECRET"}}}},
            ),
        ],
    )
    def test_triggering_event(self, name: str, payload: dict[str, Any]) -> None:
        """An automation reacting to a variable's (a block document's, a deployment's)
        change: its triggering event's payload follows that event's own rules."""
        records = mapped(_triggered_by(_nested(name, payload)))
        assert ["automation.triggered"] == [e.type for e in records]
        assert [] == _leaked(records, "HUNTER2-SECRET")
        kept = records[0].data["prefect"]["payload"]["triggering_event"]  # type: ignore[index]
        assert (name, "prefect.variable.1f0e") == (
            kept["event"],
            kept["resource"]["prefect.resource.id"],
        )

    def test_event_shaped_anywhere(self) -> None:
        """Any event-shaped object (an "event" name with a payload or resource) inside any
        payload, at any depth and in lists, also nested twice."""
        inner = _nested("prefect.variable.updated", {"name": "v", "value": "HUNTER2-SECRET"})
        outer = _nested("prefect.automation.triggered", {"triggering_event": inner})
        for payload in (
            {"events": [inner]},
            {"deep": {"firing": {"triggering_event": inner}}},
            {"triggering_event": outer},
        ):
            raw = copy.deepcopy(by_name("cap.custom")[0])
            raw["payload"] = payload
            records = mapped(raw)
            assert ["prefect.event"] == [e.type for e in records]
            assert [] == _leaked(records, "HUNTER2-SECRET")
        records = mapped(_triggered_by(outer))
        assert [] == _leaked(records, "HUNTER2-SECRET")
        bare = {"event": "prefect.variable.updated", "payload": {"value": "HUNTER2-SECRET"}}
        assert [] == _leaked(mapped(_triggered_by(bare)), "HUNTER2-SECRET")

    @pytest.mark.parametrize("name", ["prefect.automation.created", "prefect.automation.updated"])
    def test_automation_actions(self, name: str) -> None:
        """A run-deployment action's parameters as a digest, its job variables redacted, in
        every list of actions."""
        raw = copy.deepcopy(by_name(name)[0])
        for key in ("actions", "actions_on_trigger", "actions_on_resolve"):
            raw["payload"][key] = [_run_deployment_action()]
        records = mapped(raw)
        assert [] == _leaked(records, "PARAMSECRET", "JOBVARSECRET")
        payload = records[0].data["prefect"]["payload"]  # type: ignore[index]
        for key in ("actions", "actions_on_trigger", "actions_on_resolve"):
            (action,) = payload[key]
            assert action["parameters"].startswith("sha256:")
            assert {"env": {"WAREHOUSE_DSN": "[REDACTED]"}} == action["job_variables"]
            assert "c817f940-1632-4e66-ae82-a6ec03aba47b" == action["deployment_id"]

    def test_deployment_fields(self) -> None:
        """Prefect's deployment.updated names the job variables ``infra_overrides`` (the
        database column); pull steps may carry credentials; the parameter schema holds the
        parameters' defaults."""
        raw = copy.deepcopy(by_name("prefect.deployment.updated")[0])
        clone = {
            "prefect.deployments.steps.git_clone": {
                "repository": "https://github.com/org/repo",
                "credentials": {"username": "u", "pat": "PULLSECRET-1"},
            }
        }
        shell = {"prefect.deployments.steps.run_shell_script": {"env": {"K": "PULLSECRET-2"}}}
        schema = {"properties": {"who": {"default": "SCHEMASECRET"}}}
        raw["payload"]["updates"] = {
            "infra_overrides": {"from": {"env": {"K": "ENVSECRET-1"}}, "to": {"K": "ENVSECRET-2"}},
            "pull_steps": {"from": None, "to": [clone, shell]},
            "parameter_openapi_schema": {"from": {}, "to": schema},
            "parameters": {"from": {}, "to": {"who": "PARAMSECRET"}},
        }
        records = mapped(raw)
        assert [] == _leaked(records, "ENVSECRET", "PULLSECRET", "SCHEMASECRET", "PARAMSECRET")
        updates = records[0].data["prefect"]["payload"]["updates"]  # type: ignore[index]
        assert {"K": "[REDACTED]"} == updates["infra_overrides"]["to"]
        assert updates["parameter_openapi_schema"]["to"].startswith("sha256:")
        steps = updates["pull_steps"]["to"]
        assert "[REDACTED]" == steps[0]["prefect.deployments.steps.git_clone"]["repository"]
        assert updates["pull_steps"]["from"] is None

    def test_work_pool_fields(self) -> None:
        """A work pool's base job template (defaults of its variables: environment, keys)
        and storage configuration (upload steps) are redacted; its description is kept."""
        raw = copy.deepcopy(by_name("prefect.work-pool.created")[0])
        raw["event"] = "prefect.work-pool.updated"
        template = {
            "job_configuration": {"env": "{{ env }}", "command": "run --key POOLSECRET-1"},
            "variables": {"properties": {"env": {"default": {"DB_URL": "POOLSECRET-2"}}}},
        }
        step = {"prefect_aws.upload": {"bucket": "b", "aws_key": "POOLSECRET-3"}}
        raw["payload"] = {
            "updated_fields": ["base_job_template", "storage_configuration", "description"],
            "updates": {
                "base_job_template": {"from": {}, "to": template},
                "storage_configuration": {"from": {}, "to": {"bundle_upload_step": step}},
                "description": {"from": None, "to": "pool for etl"},
            },
        }
        records = mapped(raw)
        assert [] == _leaked(records, "POOLSECRET")
        updates = records[0].data["prefect"]["payload"]["updates"]  # type: ignore[index]
        assert {"from": None, "to": "pool for etl"} == updates["description"]
        assert "[REDACTED]" == updates["base_job_template"]["to"]["job_configuration"]["env"]

    def test_automation_action_failed(self) -> None:
        """A run-deployment action refused: Prefect's validation error echoes the
        parameters; a failed notification's log, the rendered message."""
        raw = copy.deepcopy(by_name("prefect.automation.action.executed")[0])
        raw["event"] = "prefect.automation.action.failed"
        raw["payload"]["validation_error"] = [{"loc": ["who"], "input": "PARAMSECRET"}]
        raw["payload"]["notification_log"] = "sent: PARAMSECRET"
        records = mapped(raw)
        assert ["automation.action.failed"] == [e.type for e in records]
        assert [] == _leaked(records, "PARAMSECRET")

    def test_artifact_data_digested(self) -> None:
        raw = copy.deepcopy(by_name("prefect.flow.created")[0])
        raw["event"] = "prefect.artifact.created"
        raw["resource"]["prefect.resource.id"] = "prefect.artifact-collection.report"
        raw["payload"] = {"key": "report", "type": "table", "data": [{"email": "a@b.example"}]}
        (e,) = mapped(raw)
        payload = e.data["prefect"]["payload"]  # type: ignore[index]
        assert payload["data"].startswith("sha256:")
        assert ("report", "table") == (payload["key"], payload["type"])
        assert [] == _leaked([e], "a@b.example")

    def test_permission_change_before_after(self) -> None:
        """A Prefect Cloud change's before/after pass the same rules as its payload."""
        raw = copy.deepcopy(by_name("prefect-cloud.workspace-role.updated")[0])
        raw["payload"]["before"] = {"job_variables": {"K": "CLOUDSECRET"}}
        raw["payload"]["after"] = {"scopes": ["x"]}
        records = mapped(raw)
        assert [] == _leaked(records, "CLOUDSECRET")
        assert {"scopes": ["x"]} == records[0].data["after"]  # type: ignore[index]

    def test_no_nested_secret_in_any_ledger_byte(self, tmp_path: Path) -> None:
        events = [
            _triggered_by(
                _nested("prefect.variable.updated", {"name": "v", "value": "HUNTER2-SECRET"})
            )
        ]
        automation = copy.deepcopy(by_name("prefect.automation.created")[0])
        automation["payload"]["actions"] = [_run_deployment_action()]
        events.append(automation)
        records = [e for raw in events for e in mapped(raw)]
        assert 2 == _record_all(tmp_path / "l.db", records)
        raw_bytes = b"".join(p.read_bytes() for p in tmp_path.iterdir())
        for secret in (b"HUNTER2-SECRET", b"PARAMSECRET", b"JOBVARSECRET"):
            assert secret not in raw_bytes


def _flow_state(run: str, name: str, state_type: str, count: int, n: int) -> dict[str, Any]:
    raw = copy.deepcopy(by_name("prefect.flow-run.Crashed")[0])
    raw["id"] = f"01a24419-0000-7000-8000-{n:012d}"
    raw["event"] = f"prefect.flow-run.{name}"
    raw["resource"].update(
        {
            "prefect.resource.id": f"prefect.flow-run.{run}",
            "prefect.run-count": str(count),
            "prefect.state-name": name,
            "prefect.state-type": state_type,
            "prefect.state-message": "infrastructure exited 1",
        }
    )
    return raw


class TestBeforeAnyAttempt:
    """A run that ended before any attempt began (run count 0: Pending -> Crashed, an
    infrastructure failure; a Pending run cancelled) is attempt 0: its record does not take
    the key of attempt 1's end."""

    def test_crash_before_and_after_running(self, tmp_path: Path) -> None:
        run = "3c9d7a55-1a8e-4c43-9d2c-6a1f0e6b7d01"
        states = [
            _flow_state(run, "Pending", "PENDING", 0, 1),
            _flow_state(run, "Crashed", "CRASHED", 0, 2),
            _flow_state(run, "Running", "RUNNING", 1, 3),
            _flow_state(run, "Crashed", "CRASHED", 1, 4),
        ]
        records = [e for raw in states for e in mapped(raw)]
        crashes = [e for e in records if e.type == "flowrun.crashed"]
        assert [
            lifecycle_key("flowrun.crashed", run, 0),
            lifecycle_key("flowrun.crashed", run, 1),
        ] == [e.key for e in crashes]
        assert [0, 1] == [(e.subject or {})["run_count"] for e in crashes]
        path = tmp_path / "l.db"
        assert 4 == _record_all(path, records)  # pending, crashed 0, started 1, crashed 1
        assert 0 == _record_all(path, records)

    def test_cancelled_pending_flow_run(self) -> None:
        """The captured cancel: a Pending run cancelled (run count 0)."""
        (cancelled,) = mapped(by_name("prefect.flow-run.Cancelled")[0])
        run = (cancelled.subject or {})["flow_run_id"]
        assert lifecycle_key("flowrun.cancelled", run, 0) == cancelled.key

    @pytest.mark.parametrize(("count", "attempt"), [(0, 0), (1, 1), (2, 2)])
    def test_task_ended(self, count: int, attempt: int) -> None:
        """A task run failed before it ran (an upstream failure: run_count 0) is attempt 0;
        one that ran keeps its run count, as the hooks and the end-of-run pass key it."""
        raw = copy.deepcopy(by_name("prefect.task-run.Failed")[0])
        raw["payload"]["task_run"]["run_count"] = count
        raw["resource"]["prefect.run-count"] = str(count)
        (failed,) = mapped(raw)
        run = (failed.subject or {})["task_run_id"]
        assert lifecycle_key("task.failed", run, attempt) == failed.key

    def test_unknown_count_is_attempt_one(self) -> None:
        """No run count at all (not a state Prefect makes): the first attempt, as before."""
        raw = copy.deepcopy(by_name("prefect.flow-run.Failed")[0])
        del raw["resource"]["prefect.run-count"]
        (failed,) = mapped(raw)
        run = (failed.subject or {})["flow_run_id"]
        assert lifecycle_key("flowrun.failed", run, 1) == failed.key


#: What one oversized payload member becomes (eventmap's limit: 64 KiB serialized).
_LIMIT = 64 * 1024


class TestBoundedPayload:
    """A hostile (huge) event costs bounded memory per record: an oversized payload member
    is kept as its digest and size, never copied whole."""

    def test_huge_member(self) -> None:
        raw = copy.deepcopy(by_name("prefect.flow.created")[0])
        blob = "y" * 5_000_000
        raw["payload"]["blob"] = blob
        raw["payload"]["listed"] = ["z" * 1000] * 2000
        (e,) = mapped(raw)
        payload = e.data["prefect"]["payload"]  # type: ignore[index]
        assert True is payload["blob"]["truncated"]
        assert len(json.dumps(blob)) == payload["blob"]["bytes"]
        assert 64 == len(payload["blob"]["sha256"])
        assert payload["listed"]["truncated"]
        assert [] == payload["tags"]
        assert "cap-ok" == payload["name"]  # small members are kept
        assert len(json.dumps(e.data)) < 4 * _LIMIT

    def test_many_members(self) -> None:
        """Many members each under the limit: still bounded as a whole."""
        raw = copy.deepcopy(by_name("prefect.flow.created")[0])
        raw["payload"].update({f"k{i}": "w" * 60_000 for i in range(100)})
        (e,) = mapped(raw)
        assert len(json.dumps(e.data)) < 8 * _LIMIT
        payload = e.data["prefect"]["payload"]  # type: ignore[index]
        assert payload["truncated"] is True

    def test_digest_after_redaction(self) -> None:
        """An oversized member is digested after the secret rules: the digest of a
        variable's huge value is never taken (its value is redacted first)."""
        raw = copy.deepcopy(by_name("prefect.variable.created")[0])
        raw["payload"]["value"] = "s3cr3t" * 100_000
        (e,) = mapped(raw)
        assert "[REDACTED]" == e.data["prefect"]["payload"]["value"]  # type: ignore[index]

    def test_cloud_fields_bounded(self) -> None:
        raw = copy.deepcopy(by_name("prefect-cloud.workspace-role.updated")[0])
        raw["payload"]["before"] = {"scopes": ["s" * 1000] * 1000}
        raw["payload"]["ip"] = "1" * 5_000_000
        (e,) = mapped(raw)
        assert e.data["before"]["truncated"] is True  # type: ignore[index]
        assert len(json.dumps(e.data)) < 4 * _LIMIT

    def test_task_payload_fields_bounded(self) -> None:
        """A run's subject fields read from the payload (task name, key, tags) are clipped."""
        raw = copy.deepcopy(by_name("prefect.task-run.Retrying")[0])
        raw["payload"]["task_run"]["name"] = "n" * 5_000_000
        raw["payload"]["task_run"]["task_key"] = "k" * 5_000_000
        raw["payload"]["task_run"]["tags"] = ["t" * 100_000] * 100
        records = mapped(raw)
        assert 2 == len(records)
        for e in records:
            assert len(json.dumps([e.subject, e.data])) < 4 * _LIMIT


class TestCloudAndOthers:
    """Prefect Cloud's audit events: accesses and permission changes by the person."""

    def test_login(self) -> None:
        (login,) = mapped(by_name("prefect-cloud.user.logged-in")[0])
        assert ("access.login", ("user", "alice")) == (login.type, login.actor)
        assert isinstance(login.data, dict)
        assert "alice" == login.data["user"]

    def test_permission_change(self) -> None:
        (change,) = mapped(by_name("prefect-cloud.workspace-role.updated")[0])
        assert ("permission.changed", ("user", "alice")) == (change.type, change.actor)
        assert isinstance(change.data, dict)
        assert ("workspace-role.updated", "Runner") == (
            change.data["change"],
            change.data["target"],
        )

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("prefect-cloud.user.logged-out", "access.logout"),
            ("prefect-cloud.request.access-denied.ip-allowlist", "access.denied"),
            ("prefect-cloud.account-membership.updated", "permission.changed"),
            ("prefect-cloud.api-key.rotated", "permission.changed"),
            ("prefect-cloud.webhook.received", "prefect_cloud.webhook.received"),
            ("prefect-cloud.workspace.transferred-in", "prefect_cloud.workspace.transferred_in"),
            ("prefect-cloud.Odd Name.x", "prefect.event"),
            ("prefect.worker.process.started", "prefect.event"),
        ],
    )
    def test_types(self, name: str, expected: str) -> None:
        raw = copy.deepcopy(by_name("prefect-cloud.user.logged-in")[0])
        raw["event"] = name
        assert [expected] == [e.type for e in mapped(raw)]

    def test_actor_is_a_person_only_when_named(self) -> None:
        """A service account acting; the run's creator a deployment (no person): Prefect."""
        raw = copy.deepcopy(by_name("prefect-cloud.workspace-role.updated")[0])
        raw["related"][0] = {
            "prefect.resource.id": "prefect-cloud.service-account.9b",
            "prefect.resource.role": "actor",
            "prefect.resource.name": "ci-bot",
        }
        assert ("service_account", "ci-bot") == mapped(raw)[0].actor
        run = copy.deepcopy(by_name("prefect.flow-run.Scheduled")[0])
        run["related"].append(
            {
                "prefect.resource.id": "prefect.deployment.c817f940-1632-4e66-ae82-a6ec03aba47b",
                "prefect.resource.role": "creator",
                "prefect.resource.name": "cap-dep",
            }
        )
        assert ("process", "prefect") == mapped(run)[0].actor
        run["related"][-1] = {
            "prefect.resource.id": "prefect-cloud.user.7a0c",
            "prefect.resource.role": "creator",
            "prefect.resource.name": "carol",
        }
        assert ("user", "carol") == mapped(run)[0].actor

    def test_block_loaded(self) -> None:
        (loaded,) = mapped(by_name("prefect.block.secret.loaded")[0])
        assert isinstance(loaded.data, dict)
        assert ("cap-secret", "secret") == (loaded.data["name"], loaded.data["block_type"])
        # loaded inside a flow run: the run's trace
        assert run_trace("cd1a69fd-20cd-4057-a8ed-2198a4b4065d") == loaded.trace


def _good() -> dict[str, Any]:
    return copy.deepcopy(by_name("prefect.task-run.Failed")[0])


def _with(**changes: Any) -> dict[str, Any]:
    raw = _good()
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key)
        else:
            raw[key] = value
    return raw


_DROP = object()


class TestMalformed:
    """Malformed input never raises: one source.unreadable record, or a readable one."""

    @pytest.mark.parametrize(
        ("raw", "error"),
        [
            (None, "JSON object"),
            ([1, 2], "JSON object"),
            ("prefect.flow-run.Running", "JSON object"),
            ({}, "no event name"),
            (_with(id=_DROP), "no event id"),
            (_with(id=7), "no event id"),
            (_with(occurred=_DROP), "no occurred"),
            (_with(occurred="yesterday"), "not a time"),
            (_with(occurred=1764900000), "no occurred"),
            (_with(resource="prefect.task-run.x"), "resource is not an object"),
            (_with(resource=None), "resource is not an object"),
            (_with(related="flow"), "related is not a list"),
            (_with(resource={"prefect.resource.id": "prefect.flow.x"}), "task-run resource"),
        ],
    )
    def test_unreadable(self, raw: Any, error: str) -> None:
        (e,) = to_events(raw)
        assert "source.unreadable" == e.type
        assert isinstance(e.data, dict)
        assert SOURCE == e.data["source"]
        assert error in e.data["error"]
        event_id = raw.get("id") if isinstance(raw, dict) else None
        assert (event_id if isinstance(event_id, str) else None) == e.data["id"]

    def test_unreadable_with_id_keyed_by_it(self) -> None:
        """So a redelivery is recorded once; without an id, by the content."""
        raw = _with(occurred="yesterday")
        assert event_key(raw["id"]) == to_events(raw)[0].key
        assert to_events({"x": 1})[0].key == to_events({"x": 1})[0].key

    def test_odd_but_readable(self, tmp_path: Path) -> None:
        """Non-object related entries are ignored; a huge message is clipped; lone
        surrogates, a non-ASCII id and a bad run count do not stop the record; the trail
        accepts every record made."""
        related = _with(related=[None, "x", *_good()["related"]])
        huge = _good()
        huge["resource"]["prefect.state-message"] = "x" * 5_000_000
        surrogate = _good()
        surrogate["resource"]["prefect.resource.name"] = "bad-\udcff"
        surrogate["resource"]["prefect.state-message"] = "\ud800 boom"
        odd_id = _with(id="ü" * 400)
        count = _good()
        count["resource"]["prefect.run-count"] = "many"
        count["payload"]["task_run"]["run_count"] = None
        variable = copy.deepcopy(by_name("prefect.variable.created")[0])
        variable["event"] = "prefect.variable.Ünïcode"
        records = []
        for raw in (related, huge, surrogate, odd_id, count, variable):
            out = to_events(raw)
            assert out, raw["event"]
            assert all(e.type != "source.unreadable" for e in out), raw["event"]
            records += out
        assert len(str(to_events(huge)[0].data)) < 100_000
        assert "prefect.event" == to_events(variable)[0].type
        assert all(e.key is not None and len(e.key) <= 256 for e in records)
        # variants of one event share its key: one record each key, and none refused
        assert len({e.key for e in records}) == _record_all(tmp_path / "l.db", records)

    def test_deep_payload(self) -> None:
        """A payload nested past any recursion limit is not a crash."""
        raw = copy.deepcopy(by_name("prefect.variable.created")[0])
        deep: dict[str, Any] = {}
        node = deep
        for _ in range(5000):
            node["n"] = {}
            node = node["n"]
        raw["payload"]["tags"] = deep
        (e,) = to_events(raw)
        assert "variable.created" == e.type  # the depth past any use is cut, not a crash
        assert "[REDACTED]" == e.data["prefect"]["payload"]["value"]  # type: ignore[index]


class TestReport:
    """The captured changes, recorded and reported: by kind and by actor, listed by name."""

    def test_report_counts_prefect_changes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "l.db"
        _record_all(path, [e for raw in all_events() for e in mapped(raw)])
        capsys.readouterr()
        assert 0 == main(["report", "--ledger", str(path), "--format", "json"])
        changes = json.loads(capsys.readouterr().out)["access"]["config_changes"]
        assert {
            "automation": 3,  # created, paused (updated), resumed (updated); not its firing
            "block_document": 3,
            "concurrency_limit": 5,
            "deployment": 4,
            "flow": 5,
            "variable": 3,
            "work_pool": 4,
            "work_queue": 1,
        } == changes["by_kind"]
        assert {"process:prefect": 28} == changes["by_actor"]
        targets = {(c["event"], c["target"]) for c in changes["items"]}
        assert {
            ("variable.updated", "cap_var"),
            ("work_pool.paused", "cap-pool"),
            ("deployment.deleted", "cap-dep"),
            ("block_document.created", "cap-secret"),
            ("concurrency_limit.created", "tag:cap-tag"),
        } <= targets
        assert 0 == main(["report", "--ledger", str(path), "--format", "json"])
        doc = json.loads(capsys.readouterr().out)["access"]
        assert {"alice": 1} == doc["logins"]["by_user"]
        assert 1 == doc["permission_changes"]["count"]


class TestReconcile:
    """``reconcile prefect`` counts the follower's terminal records as recorded."""

    def test_follower_records_are_recorded(self, tmp_path: Path) -> None:
        path = tmp_path / "l.db"
        _record_all(path, [e for raw in all_events() for e in mapped(raw)])
        db = SqliteLedger(path, create=False)
        try:
            stored = [Record.from_stored(s) for s in db.read("prefect")]
        finally:
            db.close()
        reconciler = PrefectReconciler()
        found = {reconciler.recorded_key(r) for r in stored} - {None}
        assert {
            ("task", "01a24418-f2a2-7e85-867f-561781d47818"),  # succeeded after a retry
            ("task", "01a24418-fae0-7127-881d-3f3da2b8cb00"),  # failed
            ("flow", "cd1a69fd-20cd-4057-a8ed-2198a4b4065d"),  # succeeded
            ("flow", "6ee64246-2ea8-446c-a78f-91e0bd0573eb"),  # failed
            ("flow", "b5ede027-dc65-414f-ba39-1063c9bd8d76"),  # crashed
            ("flow", "6fcc03ba-b3ec-4f12-893a-b5da64708f31"),  # cancelled
        } <= found
        # a run merely started or scheduled is not recorded as ended
        assert ("flow", "c79a749f-68ab-42f5-b2ee-d30dad3c226d") not in found
