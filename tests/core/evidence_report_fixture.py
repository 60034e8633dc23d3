"""A realistic ``report.json`` (COMMON16 shape) for the evidence report's rendering tests.

Two chains, the thirteen controls of issue 16 (evidenced, not evidenced and failed ones), a
source gap and a checkpoint-cadence gap, retention checked with one problem, a chain (prefect)
whose first checkpoint was signed after its first record, a transcript with PASS and FAIL
lines, and strings holding ``<script>`` and non-ASCII text that the renderer must escape and
keep. Each call returns a new dict, so a test may change it freely.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

from audit_core.evidence.controls import CONTROLS
from audit_core.evidence.retention import not_checked

__all__ = ["HOSTILE", "UNICODE", "big_report", "empty_report", "passing_report", "report"]

#: must come out escaped, never as markup
HOSTILE = "<script>alert('x')</script>"
#: must come out intact in the HTML and as text in the PDF
UNICODE = "Zürich Ünïcødé — Ελληνικά Кириллица"


def _hex(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def _history(chain: str, count: int, listed: int) -> dict[str, Any]:
    """``count`` checkpoints, the first and last ``listed // 2`` of them listed."""
    half = listed // 2
    indices = list(range(count)) if count <= listed else [*range(half), *range(count - half, count)]
    return {
        "count": count,
        "listed": [
            {
                "size": 10 + 30 * i,
                "root": _hex(f"{chain}/{i}")[:16],
                "created": f"2026-12-0{1 + i * 4 // max(count, 1)}T{i % 24:02d}:00:00Z",
            }
            for i in indices
        ],
    }


def _chain(chain: str, origin: str, lo: int, hi: int, size: int) -> dict[str, Any]:
    return {
        "chain": chain,
        "origin": origin,
        "records": hi - lo,
        "lo": lo,
        "hi": hi,
        "first_ts": "2026-12-01T00:03:12.123456Z",
        "last_ts": "2026-12-04T23:58:40.000001Z",
        "size": size,
        "root": _hex(f"{chain}/root"),
        "head": _hex(f"{chain}/head"),
        "first_checkpoint": {
            "size": lo,
            "root": _hex(f"{chain}/first"),
            "created": "2026-12-01T00:00:00Z",
            "file": f"checkpoints/{chain}.first.note",
        },
        "last_checkpoint": {
            "size": size,
            "root": _hex(f"{chain}/root"),
            "created": "2026-12-04T23:59:00Z",
            "file": f"checkpoints/{chain}.last.note",
        },
        "consistency": {
            "old_size": lo,
            "new_size": size,
            "hashes": 11,
            "file": f"proofs/{chain}.consistency.json",
            "result": "PASS",
        },
        "checkpoint_history": _history(chain, 57, 40)
        if chain == "airflow"
        else _history(chain, 5, 40),
        "sample": {
            "requested": 200,
            "count": 200,
            "distinct": 190,
            "file": f"proofs/{chain}.sample.jsonl",
        },
    }


# The controls of audit_core.evidence.controls, so the fixture names exactly those.
_CONTROLS = [(c.id, c.framework, c.ref, c.title, c.requires) for c in CONTROLS]
_NOT_EVIDENCED = {"eu-ai-act-12-2-b", "iso-42001-a-6-2-8"}
_FAILED = {"eu-ai-act-19", "nist-au-11"}


def _records(control: str, n: int) -> list[dict[str, Any]]:
    events = ["task.failed", "task.retry", "dag.run.success", "access.denied"]
    return [
        {
            "chain": "airflow" if i % 3 else "prefect",
            "seq": 100 + 7 * i,
            "ts": f"2026-12-0{1 + i % 4}T{i % 24:02d}:{i % 60:02d}:00Z",
            "event": events[i % len(events)],
            "summary": f"etl/{control} try {i + 1}" + (f" {UNICODE}" if i == 0 else ""),
        }
        for i in range(n)
    ]


def _control(
    ident: str, framework: str, ref: str, title: str, requires: str, n: int
) -> dict[str, Any]:
    if ident in _NOT_EVIDENCED:
        status, count, records, note = (
            "not evidenced",
            0,
            [],
            "No model or data event in the period.",
        )
    elif ident in _FAILED:
        status, count, records = "failed", 42, _records(ident, min(n, 3))
        note = "One segment object is locked in GOVERNANCE mode, where COMPLIANCE is required."
    else:
        status, count, records = "evidenced", 12 + n, _records(ident, n)
        note = "Every record listed here is in records/ with its inclusion proof."
    by_event: dict[str, int] = {}
    for record in records:
        by_event[record["event"]] = by_event.get(record["event"], 0) + 1
    return {
        "id": ident,
        "framework": framework,
        "ref": ref,
        "title": title,
        "requires": requires,
        "status": status,
        "count": count,
        "first": records[0]["ts"] if records else None,
        "last": records[-1]["ts"] if records else None,
        "by_event": dict(sorted(by_event.items())),
        "records": records,
        "note": note,
    }


def report(*, records_per_control: int = 4, history_listed: int = 40) -> dict[str, Any]:
    """The FAIL report: a failed retention control, a retention problem, a FAIL check."""
    chains = [
        _chain("airflow", "demo/airflow", 10, 1244, 1300),
        _chain("prefect", f"demo/prefect {HOSTILE}", 0, 321, 321),
    ]
    chains[0]["checkpoint_history"] = _history("airflow", 57, history_listed)
    # prefect's first checkpoint was signed after its first record: the start is not anchored
    chains[1]["first_checkpoint"]["created"] = "2026-12-01T06:00:00Z"
    controls = [_control(*spec, records_per_control) for spec in _CONTROLS]
    controls[0]["note"] = f"Backed by failure records; note with {HOSTILE} and {UNICODE}."
    return {
        "format": "workflow-audit/evidence-report/v1",
        "tool": {"name": "workflow-audit", "version": "0.1.0"},
        "versions": {
            "workflow-audit": "0.1.0",
            "python": "3.11.2",
            "weasyprint": "70.0",
            "jinja2": "3.1.6",
        },
        "ledger": "postgresql://audit@db.example/ledger",
        "period": {"since": "2026-12-01T00:00:00Z", "until": "2026-12-05T00:00:00Z", "days": 4.0},
        "verdict": "FAIL",
        "findings": [
            "retention: 1 segment object is locked in GOVERNANCE where COMPLIANCE is required.",
            f"chain 'prefect': the origin holds {HOSTILE}.",
        ],
        "requested_chains": ["airflow", "prefect"],
        "chains": chains,
        "controls": controls,
        "not_evidenced": sorted(_NOT_EVIDENCED),
        "completeness": {
            "reconcile": {
                "ran": True,
                "source": "airflow",
                "expected": 118,
                "missing": 1,
                "listed": [{"dag_id": "etl", "run_id": "manual__2026-12-03", "state": "success"}],
                "error": None,
                "note": "1 orchestrator run has no records.",
            },
            "gaps": {
                "count": 1,
                "listed": [
                    {
                        "chain": "airflow",
                        "seq": 512,
                        "ts": "2026-12-02T04:00:00Z",
                        "source": "airflow.eventlog",
                        "first_id": "8812",
                        "last_id": "8830",
                        "count": 19,
                        "reason": "rows purged before ingest",
                    }
                ],
            },
            "cadence": {
                "threshold_s": 86400,
                "count": 1,
                "listed": [
                    {
                        "chain": "prefect",
                        "from": "2026-12-01T06:00:00Z",
                        "to": "2026-12-02T12:30:00Z",
                        "seconds": 109800,
                    }
                ],
            },
        },
        "retention": {
            "checked": True,
            "verdict": "FAIL",
            "reason": (
                "1 of 42 objects holding the period's records are not locked in COMPLIANCE "
                "mode 184 days past their latest record"
            ),
            "bucket": "s3://audit-trail/prod",
            "versioning": "Enabled",
            "lock_configuration": {
                "enabled": True,
                "mode": "COMPLIANCE",
                "days": 200,
                "years": None,
            },
            "required": {"mode": "COMPLIANCE", "min_days": 184},
            "objects": 42,
            "ok": 41,
            "problem_count": 1,
            "problems": [
                {
                    "key": "prod/airflow/000000000512-000000000767.jsonl.gz",
                    "chain": "airflow",
                    "first": 512,
                    "last": 767,
                    "kind": "segment",
                    "version": "v-0017",
                    "mode": "GOVERNANCE",
                    "retain_until": "2027-06-10T00:00:00Z",
                    "legal_hold": False,
                    "required_until": "2027-06-05T00:00:00Z",
                    "ok": False,
                    "reason": (
                        "GOVERNANCE mode: a user with s3:BypassGovernanceRetention can delete it"
                    ),
                }
            ],
            "uncovered": [{"chain": "prefect", "from": 300, "to": 320}],
            "listed": [
                {
                    "key": f"prod/airflow/{256 * i:012d}-{256 * i + 255:012d}.jsonl.gz",
                    "mode": "GOVERNANCE" if i == 2 else "COMPLIANCE",
                    "retain_until": "2027-06-10T00:00:00Z",
                }
                for i in range(5)
            ],
            "error": None,
        },
        "in_full": [
            {"category": "failure", "count": 3, "file": "records/failure.jsonl"},
            {"category": "access", "count": 27, "file": "records/access.jsonl"},
            {"category": "permission", "count": 2, "file": "records/permission.jsonl"},
            {"category": "erasure", "count": 0, "file": "records/erasure.jsonl"},
        ],
        "transcript": [
            {
                "check": "signature of chain 'airflow' checkpoints",
                "result": "PASS",
                "detail": "2 notes, key demo+1a2b3c4d",
            },
            {
                "check": "consistency of chain 'airflow'",
                "result": "PASS",
                "detail": "size 10 to 1,300",
            },
            {
                "check": "retention of s3://audit-trail/airflow/",
                "result": "FAIL",
                "detail": "1 of 42 objects: GOVERNANCE",
            },
            {"check": "reconcile", "result": "SKIP", "detail": f"detail with {HOSTILE}"},
        ],
        "sample_rule": (
            'index_i = lo + int_be(SHA-256("sample/v1" || root || uint64_be(i))) mod (hi - lo), '
            "i = 0..n-1; root = the last checkpoint's 32-byte RFC 9162 root"
        ),
    }


def passing_report() -> dict[str, Any]:
    """The same period with nothing wrong: PASS, no findings, retention not checked."""
    data = report()
    data["verdict"] = "PASS"
    data["findings"] = []
    data["retention"] = not_checked("no --s3 bucket given: Object Lock retention was not checked")
    for control in data["controls"]:
        if control["status"] == "failed":
            control["status"] = "evidenced"
    data["transcript"] = [row for row in data["transcript"] if row["result"] != "FAIL"]
    data["requested_chains"] = []
    return data


def empty_report() -> dict[str, Any]:
    """A period with no chain and no control: everything empty, still a valid report."""
    data = copy.deepcopy(passing_report())
    data["chains"] = []
    data["controls"] = []
    data["not_evidenced"] = []
    data["transcript"] = []
    data["completeness"]["reconcile"] = {
        "ran": False,
        "source": None,
        "expected": 0,
        "missing": 0,
        "listed": [],
        "error": None,
        "note": "not run: pass --reconcile airflow|prefect",
    }
    data["completeness"]["gaps"] = {"count": 0, "listed": []}
    data["completeness"]["cadence"] = {"threshold_s": 86400, "count": 0, "listed": []}
    data["in_full"] = [{**row, "count": 0} for row in data["in_full"]]
    return data


def big_report() -> dict[str, Any]:
    """Every control lists 20 records and a chain's checkpoint history lists 40 rows."""
    return report(records_per_control=20, history_listed=40)
