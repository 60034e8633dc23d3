"""``workflow-audit report``'s "Access and changes" section (Markdown, CSV, JSON) and
``show --event 'access.*'``, on records of the issue #13 taxonomy written to a real ledger."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditTrail
from audit_core._report_access import config_target
from tests.core import _access
from tests.core._access import CHAIN, DESCRIPTION

#: The events _access.period() writes, in order.
PERIOD = [e.type for e in _access.period()]


@pytest.fixture
def people(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger holding a pipeline failure on ``default`` and _access.period() on
    the events chain."""
    trail.record("task.failed", {"error": "boom"}, subject={"dag_id": "ml", "task_id": "t"})
    trail.record_many(_access.period())
    trail.close()
    return ledger_file


@pytest.fixture
def quiet(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger with pipeline records only: no access records at all."""
    trail.record("task.succeeded", subject={"dag_id": "etl", "task_id": "load"})
    trail.close()
    return ledger_file


def _seq(event: str, nth: int = 0) -> int:
    """The seq of the ``nth`` record of type ``event`` on the events chain."""
    return [i for i, e in enumerate(PERIOD) if e == event][nth]


class TestConfigTarget:
    """config_target(): the key or id a configuration change names, never a value."""

    @pytest.mark.parametrize(
        ("data", "expected"),
        [
            ({"extra": {"key": "k", "value": "***", "description": "d"}}, "k"),
            ({"extra": {"variable_key": "k", "method": "DELETE"}}, "k"),
            ({"extra": {"connection_id": "c", "password": "***"}}, "c"),
            ({"extra": {"pool_name": "p", "method": "DELETE"}}, "p"),
            ({"extra": {"name": "p", "slots": 4}}, "p"),
            ({"key": "top", "extra": {"key": "inner"}}, "top"),
            # `airflow variables set k v` as airflow_audit.eventmap records it (variable.set)
            ({"key": "k", "command": "variables_set", "extra": {"full_command": ["x"]}}, "k"),
            ({"extra": {"actions": [{"entities": [{"key": "a", "value": "x"}, "b"]}]}}, "a, b"),
            ({"extra": {"method": "POST"}}, "-"),
            ({"extra": "not an object"}, "-"),
            ({}, "-"),
        ],
    )
    def test_names_only_the_key(self, data: dict[str, Any], expected: str) -> None:
        """A variable key, connection id or pool name, from data or extra; bulk ids joined."""
        assert expected == config_target(data)


class TestMarkdown:
    """The Markdown report's section."""

    def test_counts_and_lists(self, cli: Any, people: Path) -> None:
        """Logins by user, failed logins by username and client, denials, permission and
        configuration changes and the gap are each there with their counts."""
        run = cli("report", "--ledger", people)
        assert 0 == run.code
        out = run.out
        for line in (
            "## Access and changes",
            "### Logins (3)",
            "| alice | 2 |",
            "| bob | 1 |",
            "Logouts: 1.",
            "### Failed logins (5)\n\n| username | count |\n|---|---:|\n"
            "| admin | 4 |\n| carol | 1 |\n",
            "| client | count |\n|---|---:|\n| 203.0.113.9 | 3 |\n",
            "### Access denied (3)",
            "| viewer | 2 |",
            "| - | 1 |",
            "| /api/v2/variables | 2 |",
            "| 403 | 2 |",
            "| 401 | 1 |",
            "### Permission changes (2)",
            f"| {CHAIN}#{_seq('permission.changed')} | {_access.at(8)} | user:admin | user.roles"
            " | bob | [Viewer] → [Admin, Viewer] |",
            "### Configuration changes (4)",
            f"| {CHAIN}#{_seq('variable.updated')} | {_access.at(10)} | user:admin"
            " | variable.updated | api_token |",
            "| connection.created | warehouse |",
            "| pool.deleted | gpu |",
            "| variable.deleted | old_a, old_b |",
            "### Source gaps: source rows never recorded (1)",
            f"| {CHAIN}#{_seq('source.gap')} | {_access.at(16)} | airflow.log | 100-149 | 50"
            " | purged |",
        ):
            assert line in out, line

    def test_most_failed_username_first(self, cli: Any, people: Path) -> None:
        """Failed logins list the most attacked username first."""
        out = cli("report", "--ledger", people).out
        assert out.index("| admin | 4 |") < out.index("| carol | 1 |")

    def test_no_value_reaches_the_report(self, cli: Any, people: Path) -> None:
        """Configuration changes show keys only: the description in the masked body does not
        appear in any format."""
        for fmt in ("md", "csv", "json"):
            assert DESCRIPTION not in cli("report", "--ledger", people, "--format", fmt).out

    def test_none_in_this_period(self, cli: Any, quiet: Path) -> None:
        """Without access records the section is there and says so for each part."""
        out = cli("report", "--ledger", quiet).out
        section = out[out.index("## Access and changes") :]
        assert 6 == section.count("None in this period.")
        assert "### Permission changes (0)" in section
        assert "### Source gaps: source rows never recorded (0)" in section
        assert "Logouts: 0." in section

    def test_section_comes_last(self, cli: Any, quiet: Path) -> None:
        """The section follows the failures, so the report above it is unchanged."""
        out = cli("report", "--ledger", quiet).out
        assert out.index("## Failures (0)\n\nNone.\n\n## Access and changes\n") > 0
        assert out.endswith("None in this period.\n")

    def test_denials_are_not_pipeline_failures(self, cli: Any, people: Path) -> None:
        """Denials are counted in the section, not listed as failures; the pipeline failure
        still is."""
        out = cli("report", "--ledger", people).out
        assert "## Failures (1)" in out
        assert "| denied | 3 |" in out  # still an outcome in the counts

    def test_filters_apply(self, cli: Any, people: Path) -> None:
        """--since/--until narrow the section like the rest of the report."""
        run = cli("report", "--ledger", people, "--since", _access.at(8), "--until", _access.at(12))
        assert "### Logins (0)" in run.out
        assert "### Permission changes (2)" in run.out
        assert "### Configuration changes (2)" in run.out
        assert "### Source gaps: source rows never recorded (0)" in run.out


class TestCsv:
    """The CSV report's rows."""

    def test_rows(self, cli: Any, people: Path) -> None:
        """Totals, counts by key and one row per change and gap."""
        run = cli("report", "--ledger", people, "--format", "csv")
        assert 0 == run.code
        rows = list(csv.reader(io.StringIO(run.out)))
        for row in (
            ["access", "logins", "3"],
            ["access", "logouts", "1"],
            ["access", "failed_logins", "5"],
            ["access", "denials", "3"],
            ["access", "permission_changes", "2"],
            ["access", "config_changes", "4"],
            ["access", "source_gaps", "1"],
            ["login_user", "alice", "2"],
            ["failed_login_username", "admin", "4"],
            ["failed_login_client", "203.0.113.9", "3"],
            ["denied_user", "viewer", "2"],
            ["denied_path", "/api/v2/dags", "1"],
            ["denied_status", "403", "2"],
            [
                "permission_change",
                f"{CHAIN}#{_seq('permission.changed')}",
                f"{_access.at(8)} user:admin user.roles bob: [Viewer] → [Admin, Viewer]",
            ],
            [
                "config_change",
                f"{CHAIN}#{_seq('connection.created')}",
                f"{_access.at(11)} user:admin connection.created warehouse",
            ],
            [
                "source_gap",
                f"{CHAIN}#{_seq('source.gap')}",
                f"{_access.at(16)} airflow.log ids 100-149 (50): purged",
            ],
        ):
            assert row in rows, row

    def test_zero_totals_without_access_records(self, cli: Any, quiet: Path) -> None:
        """Without access records every total is a row saying 0, after the other rows."""
        rows = list(
            csv.reader(io.StringIO(cli("report", "--ledger", quiet, "--format", "csv").out))
        )
        access = [r for r in rows if r[0] == "access"]
        assert 7 == len(access)
        assert {"0"} == {r[2] for r in access}
        assert rows[-7:] == access


class TestJson:
    """The JSON report's ``access`` object."""

    def test_access_object(self, cli: Any, people: Path) -> None:
        """Counts by user, username, client, path and status; changes and gaps listed."""
        doc = json.loads(cli("report", "--ledger", people, "--format", "json").out)
        access = doc["access"]
        assert {"count": 3, "by_user": {"alice": 2, "bob": 1}} == access["logins"]
        assert {"count": 1} == access["logouts"]
        assert {
            "count": 5,
            "by_username": {"admin": 4, "carol": 1},
            "by_client": {"10.0.0.8": 1, "198.51.100.2": 1, "203.0.113.9": 3},
        } == access["failed_logins"]
        assert {
            "count": 3,
            "by_user": {"-": 1, "viewer": 2},
            "by_path": {"/api/v2/dags": 1, "/api/v2/variables": 2},
            "by_status": {"401": 1, "403": 2},
        } == access["denials"]
        first = access["permission_changes"]["items"][0]
        assert {
            "chain": CHAIN,
            "seq": _seq("permission.changed"),
            "ts": _access.at(8),
            "actor": "user:admin",
            "change": "user.roles",
            "target": "bob",
            "before": ["Viewer"],
            "after": ["Admin", "Viewer"],
        } == first
        assert 2 == access["permission_changes"]["count"]
        assert ["api_token", "warehouse", "gpu", "old_a, old_b"] == [
            c["target"] for c in access["config_changes"]["items"]
        ]
        assert [
            {
                "chain": CHAIN,
                "seq": _seq("source.gap"),
                "ts": _access.at(16),
                "source": "airflow.log",
                "first_id": 100,
                "last_id": 149,
                "count": 50,
                "reason": "purged",
            }
        ] == access["source_gaps"]["items"]

    def test_empty_access_object(self, cli: Any, quiet: Path) -> None:
        """Without access records every count is 0 and every list empty; it is the last key."""
        doc = json.loads(cli("report", "--ledger", quiet, "--format", "json").out)
        assert "access" == list(doc)[-1]
        assert 0 == doc["access"]["failed_logins"]["count"]
        assert [] == doc["access"]["source_gaps"]["items"]


class TestShowEvents:
    """``show --event`` with the access and permission patterns."""

    def test_access_pattern(self, cli: Any, people: Path) -> None:
        """--event 'access.*' shows the logins, failed logins, logout and denials only."""
        run = cli("show", "--ledger", people, "--json", "--event", "access.*", "--limit", "100")
        assert 0 == run.code
        events = [json.loads(line)["event"] for line in run.out.splitlines()]
        assert [e for e in PERIOD if e.startswith("access.")] == events

    def test_permission_pattern(self, cli: Any, people: Path) -> None:
        """--event 'permission.*' shows the two permission changes, in the table too."""
        run = cli("show", "--ledger", people, "--json", "--event", "permission.*")
        assert [_seq("permission.changed", 0), _seq("permission.changed", 1)] == [
            json.loads(line)["seq"] for line in run.out.splitlines()
        ]
        table = cli("show", "--ledger", people, "--event", "permission.*", "--chain", CHAIN)
        assert (0, 2) == (table.code, table.out.count("permission.changed"))
        assert "task.failed" not in table.out

    def test_patterns_combine(self, cli: Any, people: Path) -> None:
        """Two --event patterns show the records of either."""
        run = cli(
            "show", "--ledger", people, "--json", "--event", "access.login_failed",
            "--event", "source.*", "--limit", "100",
        )  # fmt: skip
        events = [json.loads(line)["event"] for line in run.out.splitlines()]
        assert ["access.login_failed"] * 5 + ["source.gap"] == events


#: A Prefect chain's records as prefect_audit.eventmap makes them from Prefect's events: the
#: configuration changes, plus records under the same prefixes that are no change (an
#: automation firing) and run records. (type, name, actor)
PREFECT = [
    ("variable.created", "cap_var", ("process", "prefect")),
    ("variable.deleted", "cap_var", ("process", "prefect")),
    ("work_pool.paused", "cap-pool", ("process", "prefect")),
    ("work_pool.not_ready", "cap-pool", ("process", "prefect")),
    ("deployment.updated", "cap-dep", ("user", "alice")),
    ("deployment.deleted", "cap-dep", ("user", "alice")),
    ("work_queue.created", "default", ("process", "prefect")),
    ("block_document.updated", "cap-secret", ("user", "bob")),
    ("automation.created", "cap-auto", ("user", "alice")),
    ("automation.triggered", "cap-auto", ("process", "prefect")),
    ("automation.action.executed", "cap-auto", ("process", "prefect")),
    ("concurrency_limit.created", "tag:gpu", ("process", "prefect")),
    ("flow.created", "etl", ("process", "prefect")),
    ("flowrun.succeeded", None, ("process", "prefect")),
    ("artifact.created", "report", ("process", "prefect")),
]
#: A variable's value as Prefect's event holds it: the mapping redacts it before recording.
PREFECT_VALUE = "s3cr3t-never-in-report"


@pytest.fixture
def prefect_changes(trail: AuditTrail, ledger_file: Path) -> Path:
    """A closed ledger holding PREFECT on the ``prefect`` chain and _access.period()."""
    for i, (event, name, actor) in enumerate(PREFECT):
        data: dict[str, Any] = {
            "prefect": {
                "event_id": f"01a2441{i}-0000-7000-8000-000000000000",
                "event": f"prefect.{event}",
                "resource": {"prefect.resource.name": name},
                "payload": {"name": name, "value": "[REDACTED]", "description": PREFECT_VALUE},
            }
        }
        if name is not None:
            data["name"] = name
        trail.record(event, data, actor=actor, ts=_access.at(20 + i), chain="prefect")
    trail.record_many(_access.period())
    trail.close()
    return ledger_file


#: The record types of PREFECT the report counts as configuration changes.
PREFECT_CHANGES = {e for e, _, _ in PREFECT if not e.startswith(("automation.t", "automation.a"))}
PREFECT_CHANGES -= {"flowrun.succeeded", "artifact.created"}


class TestPrefectChanges:
    """Prefect's configuration changes join Airflow's, counted by kind and by actor."""

    def test_markdown_by_kind_and_actor(self, cli: Any, prefect_changes: Path) -> None:
        """One section for both orchestrators: 11 Prefect changes + Airflow's 4, counted by
        kind and by actor, each listed by the name it changed."""
        out = cli("report", "--ledger", prefect_changes).out
        part = out[out.index("### Configuration changes (") : out.index("### Source gaps")]
        assert part.startswith("### Configuration changes (15)\n")
        for line in (
            "| variable | 4 |",  # 2 Prefect + 2 Airflow
            "| work_pool | 2 |",
            "| deployment | 2 |",
            "| automation | 1 |",  # created; the firing is not a change
            "| block_document | 1 |",
            "| work_queue | 1 |",
            "| concurrency_limit | 1 |",
            "| flow | 1 |",
            "| connection | 1 |",
            "| pool | 1 |",
            "| actor | count |\n|---|---:|\n| process:prefect | 7 |\n| user:admin | 4 |\n"
            "| user:alice | 3 |\n| user:bob | 1 |\n",
            f"| prefect#2 | {_access.at(22)} | process:prefect | work_pool.paused | cap-pool |",
            f"| prefect#4 | {_access.at(24)} | user:alice | deployment.updated | cap-dep |",
            "| block_document.updated | cap-secret |",
            "| concurrency_limit.created | tag:gpu |",
        ):
            assert line in part, line
        for absent in ("automation.triggered", "automation.action", "flowrun", "artifact"):
            assert absent not in part, absent
        assert out.index("| variable | 4 |") < out.index("| flow | 1 |")  # most first

    def test_json_by_kind_and_actor(self, cli: Any, prefect_changes: Path) -> None:
        """by_kind and by_actor count every change; items name what changed, in order."""
        doc = json.loads(cli("report", "--ledger", prefect_changes, "--format", "json").out)
        changes = doc["access"]["config_changes"]
        assert 15 == changes["count"]
        assert {
            "automation": 1,
            "block_document": 1,
            "concurrency_limit": 1,
            "connection": 1,
            "deployment": 2,
            "flow": 1,
            "pool": 1,
            "variable": 4,
            "work_pool": 2,
            "work_queue": 1,
        } == changes["by_kind"]
        assert {
            "process:prefect": 7,
            "user:admin": 4,
            "user:alice": 3,
            "user:bob": 1,
        } == changes["by_actor"]
        prefect = [(c["event"], c["target"]) for c in changes["items"] if c["chain"] == "prefect"]
        expected = [(e, n) for e, n, _ in PREFECT if e in PREFECT_CHANGES]
        assert expected == prefect

    def test_csv_rows(self, cli: Any, prefect_changes: Path) -> None:
        """Counts by kind and actor are rows, most first; one row per change."""
        rows = list(
            csv.reader(
                io.StringIO(cli("report", "--ledger", prefect_changes, "--format", "csv").out)
            )
        )
        assert ["access", "config_changes", "15"] in rows
        kinds = [r[1:] for r in rows if r[0] == "config_change_kind"]
        assert ["variable", "4"] == kinds[0]
        assert ["work_queue", "1"] == kinds[-1]
        assert [
            ["process:prefect", "7"],
            ["user:admin", "4"],
            ["user:alice", "3"],
            ["user:bob", "1"],
        ] == [r[1:] for r in rows if r[0] == "config_change_actor"]
        assert [
            "config_change",
            "prefect#3",
            f"{_access.at(23)} process:prefect work_pool.not_ready cap-pool",
        ] in rows

    def test_no_value_reaches_the_report(self, cli: Any, prefect_changes: Path) -> None:
        """Names only: nothing of a change's payload is in any format."""
        for fmt in ("md", "csv", "json"):
            assert (
                PREFECT_VALUE not in cli("report", "--ledger", prefect_changes, "--format", fmt).out
            )

    def test_airflow_counts(self, cli: Any, people: Path) -> None:
        """Airflow's changes alone are counted the same way."""
        doc = json.loads(cli("report", "--ledger", people, "--format", "json").out)
        changes = doc["access"]["config_changes"]
        assert {"connection": 1, "pool": 1, "variable": 2} == changes["by_kind"]
        assert {"user:admin": 4} == changes["by_actor"]
