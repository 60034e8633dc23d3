"""The evidence pack's control mapping (audit_core.evidence.controls): categories, per-control
counts and times, statuses from records and from the verification's facts, listed records."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from audit_core import AuditTrail
from audit_core._record import Record
from audit_core.evidence.controls import (
    CONTROLS,
    IN_FULL,
    ControlFacts,
    ControlTally,
    in_full_category,
    not_evidenced,
    summary,
)
from audit_core.ledgers.sqlite import SqliteLedger

SECRET = "sk-live-DO-NOT-LEAK-4242"  # noqa: S105  (a marker the report must not hold)
GOOD = ControlFacts(
    verified=True,
    consistent=True,
    signed_checkpoints=4,
    verifier_keys=("demo",),
    retention="PASS",
    retention_detail="Every segment object is under COMPLIANCE lock for 6 months or more.",
    records=0,
)
IDS = [
    "eu-ai-act-12-2-a",
    "eu-ai-act-12-2-b",
    "eu-ai-act-12-2-c",
    "eu-ai-act-19",
    "iso-42001-a-6-2-8",
    "iso-27001-a-8-15",
    "soc2-cc7-2",
    "soc2-cc7-3",
    "nist-au-3",
    "nist-au-8",
    "nist-au-9-3",
    "nist-au-10",
    "nist-au-11",
]


def rec(
    event: str,
    seq: int = 0,
    *,
    ts: Any = "2026-12-01T10:00:00.000000Z",
    chain: str = "airflow",
    actor: Any = None,
    subject: Any = None,
    data: Any = None,
) -> Record:
    """A parsed record (the tally never reads prev or hash)."""
    return Record(
        chain=chain,
        seq=seq,
        ts=ts,
        event=event,
        actor={"type": "service", "id": "airflow"} if actor is None else actor,
        subject={} if subject is None else subject,
        trace=None,
        data={} if data is None else data,
        prev="0" * 64,
        hash="1" * 64,
    )


def at(minute: int) -> str:
    """A timestamp on 2026-12-01, ``minute`` minutes after 10:00."""
    return f"2026-12-01T{10 + minute // 60:02d}:{minute % 60:02d}:00.000000Z"


def tally_of(records: list[Record], max_listed: int = 20) -> ControlTally:
    """A tally fed ``records``."""
    tally = ControlTally(max_listed=max_listed)
    for r in records:
        tally.add(r)
    return tally


def by_id(tally: ControlTally, facts: ControlFacts = GOOD, **changes: Any) -> dict[str, Any]:
    """The tally's controls by id, for ``facts`` with ``changes``."""
    records = next(c["count"] for c in tally.result(facts) if c["id"] == "nist-au-3")
    fields = {f: getattr(facts, f) for f in ControlFacts.__slots__}
    fields.update({"records": records, **changes})
    return {c["id"]: c for c in tally.result(ControlFacts(**fields))}


class TestCategories:
    """in_full_category(): the records the pack holds in full."""

    @pytest.mark.parametrize(
        ("event", "expected"),
        [
            ("task.failed", "failure"),
            ("task.upstream_failed", "failure"),
            ("dagrun.failed", "failure"),
            ("flowrun.failed", "failure"),
            ("flowrun.crashed", "failure"),
            ("task.unrecorded", "failure"),
            ("flowrun.unrecorded", "failure"),
            ("dag.import_error", "failure"),
            ("acme.job.failed", "failure"),
            ("access.login", "access"),
            ("access.login_failed", "access"),
            ("access.logout", "access"),
            ("access.denied", "access"),
            ("access.token_created", "access"),
            ("permission.changed", "permission"),
            ("user.created", "permission"),
            ("user.updated", "permission"),
            ("user.deleted", "permission"),
            ("user.roles", "permission"),
            ("role.created", "permission"),
            ("role.deleted", "permission"),
            ("role.permissions", "permission"),
            ("privacy.erased", "erasure"),
            ("permission.snapshot", None),
            ("task.succeeded", None),
            ("task.retry_scheduled", None),
            ("model.deployed", None),
            ("variable.set", None),
        ],
    )
    def test_category(self, event: str, expected: str | None) -> None:
        """Each event type falls in its category, or in none."""
        assert expected == in_full_category(event)

    def test_categories_are_in_full(self) -> None:
        """The categories are the pack's records/<category>.jsonl files, in order."""
        assert ("failure", "access", "permission", "erasure") == IN_FULL


class TestControls:
    """CONTROLS: the ids, in the report's order, each with a one-sentence requirement."""

    def test_ids_in_order(self) -> None:
        """Thirteen controls, in the order of the brief."""
        assert IDS == [c.id for c in CONTROLS]

    def test_texts(self) -> None:
        """Every control has a framework, a ref, a title and one sentence of requirement."""
        for c in CONTROLS:
            assert all((c.framework, c.ref, c.title)), c.id
            assert c.requires.endswith("."), c.id
            assert re.search(r"[a-z)]\. [A-Z]", c.requires) is None, c.id  # one sentence
            assert c.patterns or c.fact, c.id

    @pytest.mark.parametrize(
        ("control", "event", "expected"),
        [
            ("eu-ai-act-12-2-a", "variable.set", True),
            ("eu-ai-act-12-2-a", "dag.paused", True),
            ("eu-ai-act-12-2-a", "automation.triggered", False),
            ("eu-ai-act-12-2-a", "automation.action.executed", False),
            ("eu-ai-act-12-2-a", "automation.created", True),
            ("eu-ai-act-12-2-a", "permission.snapshot", False),
            ("eu-ai-act-12-2-a", "model.retrained", True),
            ("eu-ai-act-12-2-a", "task.succeeded", False),
            ("eu-ai-act-12-2-b", "dataset.registered", True),
            ("eu-ai-act-12-2-c", "cli.command", True),
            ("eu-ai-act-12-2-c", "variable.set", False),
            ("iso-27001-a-8-15", "connection.created", True),
            ("iso-27001-a-8-15", "task.failed", False),
            ("soc2-cc7-2", "source.gap", True),
            ("soc2-cc7-2", "access.login", False),
            ("soc2-cc7-3", "audit.exported", True),
            ("nist-au-3", "anything.at_all", True),
        ],
    )
    def test_matches(self, control: str, event: str, expected: bool) -> None:
        """A control takes exactly the event types of its reading."""
        assert expected == next(c for c in CONTROLS if c.id == control).matches(event)


class TestRecordControls:
    """Controls evidenced by records: count, first, last, by_event, status and note."""

    def test_counts_and_times(self) -> None:
        """count, first and last span the matching records, whatever order they come in."""
        tally = tally_of(
            [
                rec("task.failed", 0, ts=at(30)),
                rec("model.deployed", 1, ts=at(5)),
                rec("task.succeeded", 2, ts=at(40)),
                rec("task.failed", 3, ts=at(50)),
                rec("variable.set", 0, ts=at(1), chain="airflow-events"),
            ]
        )
        a = by_id(tally)["eu-ai-act-12-2-a"]
        assert (4, at(1), at(50)) == (a["count"], a["first"], a["last"])
        assert {"model.deployed": 1, "task.failed": 2, "variable.set": 1} == a["by_event"]
        assert list(a["by_event"]) == sorted(a["by_event"])
        assert "evidenced" == a["status"]
        assert "records/failure.jsonl" in a["note"]

    def test_not_evidenced(self) -> None:
        """No matching records: "not evidenced", and the note says what is missing."""
        controls = by_id(tally_of([rec("task.succeeded")]))
        b = controls["eu-ai-act-12-2-b"]
        assert ("not evidenced", 0, None, None, {}, []) == (
            b["status"],
            b["count"],
            b["first"],
            b["last"],
            b["by_event"],
            b["records"],
        )
        assert b["note"].startswith("No model, data, dataset, asset or drift events")
        assert "does not evidence EU AI Act Art. 12(2)(b)" in b["note"]
        assert "eu-ai-act-12-2-b" in not_evidenced(list(controls.values()))
        assert "eu-ai-act-12-2-c" not in not_evidenced(list(controls.values()))

    def test_27001_names_missing_sub_items(self) -> None:
        """A.8.15's note names the sub-items the period has no records of."""
        user = {"type": "user", "id": "admin"}
        c = by_id(tally_of([rec("access.login", actor=user), rec("variable.set", 1)]))
        a815 = c["iso-27001-a-8-15"]
        assert "evidenced" == a815["status"]
        assert "No records of rejected access or use of privileges in this period" in a815["note"]
        assert "user ids" not in a815["note"]
        everything = [
            rec("access.login", 0, actor=user),
            rec("access.denied", 1),
            rec("pool.created", 2),
            rec("role.permissions", 3),
        ]
        assert "Each sub-item" in by_id(tally_of(everything))["iso-27001-a-8-15"]["note"]
        none = by_id(tally_of([rec("task.started")]))["iso-27001-a-8-15"]
        assert "not evidenced" == none["status"]
        assert "user ids, successful access, rejected access, configuration" in none["note"]

    def test_listed_capped_and_ordered(self) -> None:
        """At most max_listed records, the first by (ts, chain, seq), with a summary."""
        records = [
            rec("task.failed", 100 - i, ts=at(60 - i), subject={"dag_id": "d", "task_id": "t"})
            for i in range(50)
        ]
        records.append(rec("task.failed", 7, ts=at(11), chain="a-first"))
        listed = by_id(tally_of(records, max_listed=5))["soc2-cc7-2"]["records"]
        keys = [(r["ts"], r["chain"], r["seq"]) for r in listed]
        assert [
            (at(11), "a-first", 7),
            (at(11), "airflow", 51),
            (at(12), "airflow", 52),
            (at(13), "airflow", 53),
            (at(14), "airflow", 54),
        ] == keys
        assert {"chain", "seq", "ts", "event", "summary"} == set(listed[1])
        assert "d/t" == listed[1]["summary"]

    def test_listed_merge_event_types(self) -> None:
        """A control's records come from all its event types, merged in time order."""
        records = [rec("access.denied", i, ts=at(2 * i)) for i in range(10)]
        records += [rec("access.login_failed", 10 + i, ts=at(2 * i + 1)) for i in range(10)]
        listed = by_id(tally_of(records, max_listed=4))["soc2-cc7-3"]["records"]
        assert ["access.denied", "access.login_failed"] * 2 == [r["event"] for r in listed]


class TestSummary:
    """summary(): the subject's run identifiers, never a data value."""

    def test_airflow_and_prefect(self) -> None:
        """dag/task run <id> try <n>, and Prefect's flow/task names and attempt."""
        airflow = {"dag_id": "ml", "task_id": "train", "run_id": "manual__1", "try_number": 2}
        assert "ml/train run manual__1 try 2" == summary(airflow)
        prefect = {"flow_name": "etl", "task_name": "load", "run_count": 3}
        assert "etl/load try 3" == summary(prefect)
        assert "-" == summary({})
        assert "-" == summary(None)
        assert "a b/t" == summary({"dag_id": "a\nb", "task_id": "t", "try_number": True})
        assert "x" * 63 + "…" == summary({"dag_id": "x" * 300})

    def test_no_data_values(self) -> None:
        """A secret in data (or an unknown subject key) never reaches the report."""
        tally = tally_of(
            [
                rec(
                    "access.denied",
                    subject={"dag_id": "ml", "token": SECRET},
                    data={"password": SECRET, "message": SECRET},
                ),
                rec("task.failed", 1, data={"error": SECRET}, subject={"task_id": "t"}),
            ]
        )
        text = json.dumps(tally.result(GOOD))
        assert SECRET not in text
        assert '"summary": "ml"' in text


class TestFactControls:
    """Controls evidenced by the verification's facts: integrity, signatures, retention,
    timestamps and content."""

    def test_all_good(self) -> None:
        """Verified, consistent, signed, retained: every fact control is evidenced."""
        c = by_id(tally_of([rec("task.started")]))
        for name in ("eu-ai-act-19", "nist-au-9-3", "nist-au-10", "nist-au-11", "nist-au-3"):
            assert "evidenced" == c[name]["status"], name
        assert "evidenced" == c["nist-au-8"]["status"]
        assert "iso-42001-a-6-2-8" not in not_evidenced(list(c.values()))
        assert "demo" in c["nist-au-10"]["note"]
        assert "COMPLIANCE" in c["nist-au-11"]["note"]

    def test_integrity_failed(self) -> None:
        """Chains that did not verify fail AU-9(3), AU-10 and A.6.2.8 (which has records)."""
        c = by_id(tally_of([rec("task.started")]), verified=False)
        for name in ("nist-au-9-3", "nist-au-10", "iso-42001-a-6-2-8"):
            assert "failed" == c[name]["status"], name
        inconsistent = by_id(tally_of([rec("task.started")]), consistent=False)
        assert "failed" == inconsistent["nist-au-9-3"]["status"]
        assert "consistency proof" in inconsistent["nist-au-9-3"]["note"]

    def test_unverified_chains_are_said(self) -> None:
        """Record controls on chains that did not verify say so in their note."""
        c = by_id(tally_of([rec("task.failed")]), verified=False)
        assert "each on chains that did NOT verify" in c["soc2-cc7-2"]["note"]
        assert all("  " not in x["note"] for x in c.values())

    def test_patterns_and_fact_need_both(self) -> None:
        """A.6.2.8 with integrity but no model or run records is not evidenced."""
        c = by_id(tally_of([rec("access.login")]))
        assert "not evidenced" == c["iso-42001-a-6-2-8"]["status"]

    def test_no_signatures(self) -> None:
        """No checkpoint verified with a verifier key: AU-10 not evidenced."""
        c = by_id(tally_of([rec("task.started")]), signed_checkpoints=0)
        assert "not evidenced" == c["nist-au-10"]["status"]

    @pytest.mark.parametrize(
        ("retention", "status"),
        [("PASS", "evidenced"), ("FAIL", "failed"), ("NOT CHECKED", "not evidenced")],
    )
    def test_retention(self, retention: str, status: str) -> None:
        """Art. 19 and AU-11 follow the retention verdict; unchecked says how to check."""
        c = by_id(tally_of([rec("task.started")]), retention=retention)
        for name in ("eu-ai-act-19", "nist-au-11"):
            assert status == c[name]["status"], name
            assert (retention == "NOT CHECKED") == ("--s3 s3://BUCKET/PREFIX" in c[name]["note"])
        unchecked = by_id(tally_of([]), retention="NOT CHECKED", retention_detail="no bucket")
        assert unchecked["nist-au-11"]["note"].endswith("retention. No bucket.")

    def test_bad_timestamps(self) -> None:
        """A ts that is not RFC 3339 UTC fails AU-8, and the offending records are listed."""
        records = [
            rec("task.started", 0),
            rec("task.started", 1, ts="2026-12-01T10:00:00.000000+01:00"),
            rec("task.started", 2, ts="yesterday"),
        ]
        au8 = by_id(tally_of(records))["nist-au-8"]
        assert "failed" == au8["status"]
        assert au8["note"].startswith("2 record(s)")
        assert [1, 2] == [r["seq"] for r in au8["records"]]

    def test_timestamp_of_any_type(self) -> None:
        """A ts that is not even a string is listed as text, and nothing is listed at 0."""
        au8 = by_id(tally_of([rec("task.started", ts=None), rec("task.started", 1)]))["nist-au-8"]
        assert ("failed", ["None"]) == (au8["status"], [r["ts"] for r in au8["records"]])
        none = by_id(tally_of([rec("task.failed"), rec("task.failed", 1)], max_listed=0))
        assert ([], 2) == (none["soc2-cc7-2"]["records"], none["soc2-cc7-2"]["count"])

    def test_earlier_event_time_is_not_a_failure(self) -> None:
        """Order is seq's: a record with an earlier event time is counted, not failed."""
        au8 = by_id(tally_of([rec("task.started", 0, ts=at(5)), rec("task.started", 1)]))[
            "nist-au-8"
        ]
        assert "evidenced" == au8["status"]
        assert "and 1 record(s) carry an event time earlier" in au8["note"]

    def test_bad_content(self) -> None:
        """A record without an actor id fails AU-3."""
        records = [rec("task.started"), rec("task.started", 1, actor={"type": "user", "id": ""})]
        au3 = by_id(tally_of(records))["nist-au-3"]
        assert ("failed", [1]) == (au3["status"], [r["seq"] for r in au3["records"]])

    def test_empty_period(self) -> None:
        """No records: every record control is not evidenced, integrity still stands."""
        c = by_id(tally_of([]))
        assert "not evidenced" == c["nist-au-3"]["status"]
        assert "not evidenced" == c["nist-au-8"]["status"]
        assert "evidenced" == c["nist-au-9-3"]["status"]
        assert {"count": 0, "first": None, "last": None} == {
            k: c["nist-au-9-3"][k] for k in ("count", "first", "last")
        }


class TestRealRecords:
    """Records appended to a real ledger and read back."""

    def test_from_ledger(self, trail: AuditTrail, ledger_file: Path) -> None:
        """A ledger's records tally and the result is JSON with every key of the report."""
        trail.record("task.failed", {"error": SECRET}, subject={"dag_id": "ml", "task_id": "t"})
        trail.record("model.deployed", {"version": 8}, subject={"dag_id": "ml"})
        trail.record("access.denied", {"path": "/api"})
        trail.close()
        tally = ControlTally()
        for stored in SqliteLedger(ledger_file).read("default"):
            tally.add(Record.from_stored(stored))
        controls = tally.result(GOOD)
        assert IDS == [c["id"] for c in controls]
        keys = {"id", "framework", "ref", "title", "requires", "status", "count", "first"}
        keys |= {"last", "by_event", "records", "note"}
        assert all(keys == set(c) for c in controls)
        text = json.dumps(controls, sort_keys=True)
        assert SECRET not in text
        assert 3 == {c["id"]: c for c in controls}["nist-au-3"]["count"]


class TestSpeed:
    """add() stays cheap: it runs once per record of a million-record period."""

    def test_rate(self) -> None:
        """200,000 add() calls over a realistic mix (rate printed, not asserted)."""
        events = ["task.started", "task.succeeded", "task.failed", "dagrun.started"]
        events += ["access.login", "variable.set", "model.deployed", "audit.viewed"]
        subject = {"dag_id": "ml", "task_id": "train", "run_id": "r1", "try_number": 1}
        records = [
            rec(events[i % len(events)], i, ts=f"2026-12-01T10:00:00.{i:06d}Z", subject=subject)
            for i in range(200_000)
        ]
        tally = ControlTally()
        start = time.perf_counter()
        for r in records:
            tally.add(r)
        elapsed = time.perf_counter() - start
        print(f"\nControlTally.add: {len(records) / elapsed:,.0f} records/s")
        assert 200_000 == by_id(tally)["nist-au-3"]["count"]
