"""Filtering, summarizing and rendering records for ``export`` and ``report``: pure functions.

>>> from audit_core._report import pipeline_of, outcome_of
>>> pipeline_of({"dag_id": "ml_pipeline"}), outcome_of("task.retry_scheduled")
('ml_pipeline', 'retry_scheduled')
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from audit_core._chain import ChainHead
from audit_core._index import PIPELINE_KEYS, TASK_KEYS
from audit_core._normalize import JSON, JSONObject, format_timestamp, parse_timestamp
from audit_core._record import Record
from audit_core._report_access import (
    AccessSummary,
    access_csv_rows,
    access_json,
    access_markdown,
)
from audit_core.errors import ConfigError, VerificationError

__all__ = [
    "EXPORT_CSV_COLUMNS",
    "Summary",
    "attempt_of",
    "outcome_of",
    "parse_time",
    "pipeline_of",
    "render_report",
    "summarize",
    "to_csv",
    "to_jsonl",
]

_OUTCOMES = ("succeeded", "failed", "retry_scheduled", "skipped", "unrecorded", "denied")
EXPORT_CSV_COLUMNS = (
    "chain",
    "seq",
    "ts",
    "event",
    "pipeline",
    "task",
    "actor",
    "trace_id",
    "data",
    "hash",
)


def parse_time(text: str) -> str:
    """An RFC 3339 time or a date (``2026-11-28``) as a comparable record timestamp."""
    try:
        when = parse_timestamp(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not an RFC 3339 time or a YYYY-MM-DD date") from exc
    return format_timestamp(when)


def pipeline_of(subject: JSONObject) -> str:
    """The pipeline (DAG, flow) a record's subject names, or ``-``."""
    for key in PIPELINE_KEYS:
        value = subject.get(key)
        if isinstance(value, str) and value:
            return value
    return "-"


def attempt_of(subject: JSONObject) -> JSON:
    """The attempt a record's subject names: Airflow's try_number, Prefect's run_count."""
    value = subject.get("try_number")
    return subject.get("run_count") if value is None else value


def task_of(subject: JSONObject) -> str:
    """The task a record's subject names, or ``-``."""
    for key in TASK_KEYS:
        value = subject.get(key)
        if isinstance(value, str) and value:
            return value
    return "-"


def outcome_of(event: str) -> str | None:
    """``task.failed`` → ``failed``; None for events that are not outcomes (``task.started``)."""
    last = event.rsplit(".", 1)[-1]
    return last if last in _OUTCOMES else None


@dataclass
class Summary:
    """Counts and failures of a set of records, with the verification verdict."""

    records: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    by_event: Counter[str] = field(default_factory=Counter)
    by_pipeline: Counter[str] = field(default_factory=Counter)
    by_outcome: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, JSON]] = field(default_factory=list)
    heads: list[ChainHead] = field(default_factory=list)
    error: VerificationError | None = None
    signatures_checked: bool = False
    access: AccessSummary = field(default_factory=AccessSummary)

    @property
    def verdict(self) -> str:
        return "valid" if self.error is None else "INVALID"


def summarize(records: Iterable[Record], *, max_failures: int = 1000) -> Summary:
    """Count records per event type, pipeline and outcome; list failures; sum up access,
    permission and configuration changes and source gaps."""
    s = Summary(access=AccessSummary(max_listed=max_failures))
    for rec in records:
        s.records += 1
        s.first_ts = rec.ts if s.first_ts is None or rec.ts < s.first_ts else s.first_ts
        s.last_ts = rec.ts if s.last_ts is None or rec.ts > s.last_ts else s.last_ts
        s.by_event[rec.event] += 1
        pipeline = pipeline_of(rec.subject)
        s.by_pipeline[pipeline] += 1
        outcome = outcome_of(rec.event)
        if outcome is not None:
            s.by_outcome[outcome] += 1
        s.access.add(rec)
        # A denial is listed under "Access and changes" with its user, path and status; as a
        # failure it would only repeat there, once per refused request.
        if (
            outcome in ("failed", "unrecorded", "denied")
            and rec.event != "access.denied"
            and len(s.failures) < max_failures
        ):
            s.failures.append(
                {
                    "chain": rec.chain,
                    "seq": rec.seq,
                    "ts": rec.ts,
                    "event": rec.event,
                    "pipeline": pipeline,
                    "task": task_of(rec.subject),
                    "try": attempt_of(rec.subject),
                    "error": _error_text(rec.data),
                }
            )
    return s


def _error_text(data: JSONObject) -> str:
    kind = data.get("error_type")  # the adapters' failure records (audit_core.hooks)
    for key in ("error", "exception", "message", "reason"):
        value = data.get(key)
        if isinstance(value, dict):
            kind, msg = value.get("type"), value.get("message")
            return f"{kind}: {msg}" if kind else str(msg)
        if value is not None:
            return f"{kind}: {value}" if isinstance(kind, str) else str(value)
    failed = data.get("failed_tasks")  # a failed run names its failed tasks
    if isinstance(failed, list) and failed:
        return "failed tasks: " + ", ".join(str(t) for t in failed)
    return ""


def _record_row(rec: Record) -> dict[str, object]:
    trace = rec.trace or {}
    return {
        "chain": rec.chain,
        "seq": rec.seq,
        "ts": rec.ts,
        "event": rec.event,
        "pipeline": pipeline_of(rec.subject),
        "task": task_of(rec.subject),
        "actor": f"{rec.actor.get('type')}:{rec.actor.get('id')}",
        "trace_id": trace.get("trace_id", ""),
        "data": orjson.dumps(rec.data, option=orjson.OPT_SORT_KEYS).decode(),
        "hash": rec.hash,
    }


def to_jsonl(records: Iterable[Record]) -> Iterator[bytes]:
    """One JSON object a line: the record's fields plus ``hash``."""
    for rec in records:
        yield orjson.dumps(rec.to_json(), option=orjson.OPT_SORT_KEYS) + b"\n"


def to_csv(records: Iterable[Record]) -> Iterator[str]:
    """A header, then one row a record (``data`` as a JSON string)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(_record_row(rec))
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    yield buf.getvalue()


def render_report(s: Summary, fmt: str, *, ledger: str, period: str) -> str:
    """The report as Markdown, CSV or JSON; it carries the verdict and each chain's head."""
    verification: dict[str, JSON] = {
        "verdict": s.verdict,
        "signatures_checked": s.signatures_checked,
        "chains": [h.to_json() for h in s.heads],  # type: ignore[misc]  # list invariance: dict[str, str | int] is JSON
        "error": None if s.error is None else str(s.error),
    }
    if fmt == "json":
        doc: dict[str, JSON] = {
            "ledger": ledger,
            "period": period,
            "generated": format_timestamp(dt.datetime.now(dt.timezone.utc)),
            "verification": verification,
            "records": s.records,
            "first_ts": s.first_ts,
            "last_ts": s.last_ts,
            "by_event": dict(sorted(s.by_event.items())),
            "by_pipeline": dict(sorted(s.by_pipeline.items())),
            "by_outcome": dict(sorted(s.by_outcome.items())),
            "failures": list(s.failures),
            "access": access_json(s.access),
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
    if fmt == "csv":
        return _report_csv(s, verification)
    if fmt == "md":
        return _report_md(s, ledger=ledger, period=period)
    raise ConfigError(f"unknown report format {fmt!r}; use md, csv or json")


def _report_csv(s: Summary, verification: dict[str, JSON]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "key", "value"])
    w.writerow(["verification", "verdict", verification["verdict"]])
    for h in s.heads:
        w.writerow(["head", h.chain, f"{h.size} {h.head}"])
        w.writerow(["merkle_root", h.chain, f"{h.size} {h.root} ({h.checkpoints} checkpoints)"])
    if s.error is not None:
        w.writerow(["verification", "error", str(s.error)])
    w.writerow(["total", "records", s.records])
    for section, counts in (
        ("event", s.by_event),
        ("pipeline", s.by_pipeline),
        ("outcome", s.by_outcome),
    ):
        for key, n in sorted(counts.items()):
            w.writerow([section, key, n])
    for f in s.failures:
        w.writerow(
            [
                "failure",
                f"{f['chain']}#{f['seq']}",
                f"{f['ts']} {f['pipeline']}.{f['task']} try {f['try']}: {f['error']}",
            ]
        )
    w.writerows(access_csv_rows(s.access))
    return buf.getvalue()


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _report_md(s: Summary, *, ledger: str, period: str) -> str:
    lines = [
        "# workflow-audit report",
        "",
        f"- Ledger: `{ledger}`",
        f"- Period: {period}",
        f"- Records in period: {s.records} ({s.first_ts or '-'} … {s.last_ts or '-'})",
        f"- Verification: **{s.verdict}**" + ("" if s.error is None else f" — {s.error}"),
        "- Checkpoint signatures: "
        + ("checked" if s.signatures_checked else "not checked (run with --key)"),
        "",
        "Keep this report where the ledger's writers cannot reach it: head hash and Merkle root"
        " pin each chain at its size (`workflow-audit verify --chain C --expect-size N"
        " --expect-head H` while it has not grown; `--checkpoint` with a signed checkpoint"
        " after).",
        "",
        "| chain | records | head hash | Merkle root | checkpoints |",
        "|---|---:|---|---|---:|",
        *(
            f"| {_md_escape(h.chain)} | {h.size} | `{h.head}` | `{h.root}` | {h.checkpoints} |"
            for h in s.heads
        ),
        "",
    ]
    for title, counts in (
        ("Events by type", s.by_event),
        ("Events by pipeline", s.by_pipeline),
        ("Outcomes", s.by_outcome),
    ):
        lines += [f"## {title}", "", "| name | count |", "|---|---:|"]
        lines += [f"| {_md_escape(k)} | {n} |" for k, n in sorted(counts.items())]
        lines.append("")
    lines += [f"## Failures ({len(s.failures)})", ""]
    if s.failures:
        lines += [
            "| chain#seq | time | pipeline | task | try | error |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {_md_escape(f['chain'])}#{f['seq']} | {f['ts']} | {_md_escape(f['pipeline'])} "
            f"| {_md_escape(f['task'])} | {f['try'] if f['try'] is not None else '-'} "
            f"| {_md_escape(f['error'])[:200]} |"
            for f in s.failures
        ]
    else:
        lines.append("None.")
    lines += ["", *access_markdown(s.access)]
    return "\n".join(lines).rstrip("\n") + "\n"
