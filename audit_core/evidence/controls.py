"""The evidence pack's controls: which records of the period back which control, and which
facts of the verification (integrity, signatures, retention) back the rest.

>>> tally = ControlTally()
>>> tally.add(Record(chain="airflow", seq=0, ts="2026-12-01T10:00:00.000000Z",
...     event="task.failed", actor={"type": "service", "id": "airflow"},
...     subject={"dag_id": "ml", "task_id": "train", "try_number": 2}, trace=None,
...     data={}, prev="00", hash="11"))
>>> facts = ControlFacts(verified=True, consistent=True, signed_checkpoints=2,
...     verifier_keys=("demo",), retention="NOT CHECKED", retention_detail="No bucket given.",
...     records=1)
>>> [(c["id"], c["status"]) for c in tally.result(facts)][:2]
[('eu-ai-act-12-2-a', 'evidenced'), ('eu-ai-act-12-2-b', 'not evidenced')]
>>> in_full_category("access.denied"), in_full_category("permission.snapshot")
('access', None)

The controls themselves (and the mapping's sources: our reading, not legal advice) are in
:mod:`audit_core.evidence.catalog`; this module says whether this period's records back them.

A control lists fnmatch patterns over event types, a fact of the verification, or both (then
it needs both). :class:`ControlTally` streams the period's records once, keeping per event
type a count, first and last time and the first few records: flat memory for any period,
and the per-control figures are sums over event types at :meth:`ControlTally.result`.
"""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Final

from audit_core._record import Record, is_timestamp
from audit_core.evidence.catalog import (
    CONFIG_CHANGES,
    CONTROLS,
    FAILURES,
    IN_FULL,
    NOT_CHANGES,
    PERMISSIONS,
    REJECTED,
    SUCCESSFUL,
    Control,
    in_full_category,
)

__all__ = [
    "CONFIG_CHANGES", "CONTROLS", "FAILURES", "IN_FULL", "NOT_CHANGES", "PERMISSIONS",
    "Control", "ControlFacts", "ControlTally", "in_full_category", "not_evidenced", "summary",
]  # fmt: skip

_SUMMARY_KEYS: Final = (
    ("dag_id", "flow_name"),
    ("task_id", "task_name"),
    ("run_id", "flow_run_name"),
    ("try_number", "run_count", "attempt"),
)
_MAX_PART: Final = 64


def summary(subject: object) -> str:
    """A record's short text: ``dag/task run <run_id> try <n>``, from its subject only."""
    if not isinstance(subject, dict):
        return "-"
    parts: list[str] = []
    for group in _SUMMARY_KEYS:
        value = next((subject[k] for k in group if k in subject), None)
        if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
            parts.append("")
            continue
        text = " ".join(str(value).split())  # no line breaks in a table cell
        parts.append(text if len(text) <= _MAX_PART else text[: _MAX_PART - 1] + "…")
    where, task, run, attempt = parts
    text = "/".join(p for p in (where, task) if p)
    if run:
        text += f" run {run}"
    if attempt:
        text += f" try {attempt}"
    return text.strip() or "-"


@dataclass(frozen=True, slots=True)
class ControlFacts:
    """What the verification behind the pack established, for the fact controls."""

    verified: bool  # the ledger's chains verified (hash chain, Merkle, checkpoints)
    consistent: bool  # every chain's first->last checkpoint consistency proof verified
    signed_checkpoints: int  # checkpoints in the pack that verified with the verifier keys
    verifier_keys: tuple[str, ...]  # key names (not the key strings)
    retention: str  # "PASS" | "FAIL" | "NOT CHECKED"
    retention_detail: str  # one sentence
    records: int  # records of the period (all chains)


# A listed record: sorted by (ts, chain, seq), as the report lists them.
_Listed = tuple[str, str, int, str, str]


def _keep(listed: list[_Listed], rec: Record, cap: int, ts: str) -> None:
    """Keep ``rec`` (of time ``ts``) among the ``cap`` first records of ``listed`` (sorted)."""
    if len(listed) >= cap:
        if cap <= 0:
            return
        last = listed[-1]
        if ts > last[0] or (ts == last[0] and (rec.chain, rec.seq) >= last[1:3]):
            return
    insort(listed, (ts, rec.chain, rec.seq, rec.event, summary(rec.subject)))
    if len(listed) > cap:
        listed.pop()


class _EventStats:
    """Per event type: count, first and last valid time, the first records."""

    __slots__ = ("count", "first", "last", "listed")

    def __init__(self) -> None:
        self.count = 0
        self.first = ""
        self.last = ""
        self.listed: list[_Listed] = []


class ControlTally:
    """Streams the period's records once (each chain's in seq order) into control figures.

    Mutable on purpose: one per pack, fed a million records; memory grows with the number
    of event types, never with the records.
    """

    def __init__(self, *, max_listed: int = 20) -> None:
        self.max_listed = max_listed
        self._events: dict[str, _EventStats] = {}
        self._bad_ts: list[_Listed] = []  # AU-8: ts not RFC 3339 UTC
        self._bad_ts_count = 0
        self._bad_content: list[_Listed] = []  # AU-3: no event, actor or subject
        self._bad_content_count = 0
        self._last_ts: dict[str, str] = {}
        self._earlier = 0  # records whose ts precedes the previous one's on their chain
        self._by_user = 0  # records whose actor is a user (27001 "user ids")

    def add(self, rec: Record) -> None:
        """Count one record of the period."""
        stats = self._events.get(rec.event)
        if stats is None:
            stats = self._events[rec.event] = _EventStats()
        stats.count += 1
        ts = rec.ts
        if type(ts) is str and is_timestamp(ts):
            if not stats.first or ts < stats.first:
                stats.first = ts
            if ts > stats.last:
                stats.last = ts
            if ts < self._last_ts.get(rec.chain, ""):
                self._earlier += 1
            self._last_ts[rec.chain] = ts
        else:
            self._bad_ts_count += 1
            ts = str(ts)  # listed as text, whatever it was
            _keep(self._bad_ts, rec, self.max_listed, ts)
        actor = rec.actor
        if not (
            rec.event
            and isinstance(actor, dict)
            and actor.get("type")
            and actor.get("id")
            and isinstance(rec.subject, dict)
        ):
            self._bad_content_count += 1
            _keep(self._bad_content, rec, self.max_listed, ts)
        elif actor["type"] == "user":
            self._by_user += 1
        _keep(stats.listed, rec, self.max_listed, ts)

    def result(self, facts: ControlFacts) -> list[dict[str, Any]]:
        """The report's ``controls`` list, in :data:`CONTROLS` order (docs: COMMON16 shape)."""
        return [self._control(c, facts) for c in CONTROLS]

    def _control(self, control: Control, facts: ControlFacts) -> dict[str, Any]:
        events = sorted(e for e in self._events if control.patterns and control.matches(e))
        stats = [self._events[e] for e in events]
        count = sum(s.count for s in stats)
        firsts = [s.first for s in stats if s.first]
        lasts = [s.last for s in stats if s.last]
        listed = sorted(r for s in stats for r in s.listed)[: self.max_listed]
        status, note = self._judge(control, facts, count, events)
        if control.fact == "timestamps" and self._bad_ts_count:
            listed = self._bad_ts
        elif control.fact == "content" and self._bad_content_count:
            listed = self._bad_content
        return {
            "id": control.id,
            "framework": control.framework,
            "ref": control.ref,
            "title": control.title,
            "requires": control.requires,
            "status": status,
            "count": count,
            "first": min(firsts) if firsts else None,
            "last": max(lasts) if lasts else None,
            "by_event": {e: self._events[e].count for e in events},
            "records": [
                {"chain": c, "seq": q, "ts": t, "event": e, "summary": s}
                for t, c, q, e, s in listed
            ],
            "note": note,
        }

    def _judge(
        self, control: Control, facts: ControlFacts, count: int, events: list[str]
    ) -> tuple[str, str]:
        """(status, note): a fact that failed fails the control; missing evidence is said."""
        fact = control.fact or ""
        failed = self._fact_failure(fact, facts)
        if failed:
            return "failed", failed
        sub_items = self._sub_items_note(events) if control.id == "iso-27001-a-8-15" else ""
        if control.patterns and count == 0:
            name = f"{control.framework} {control.ref}"
            text = f"No {control.what} in this period: this pack does not evidence {name}."
            return "not evidenced", f"{text} {sub_items}".strip()
        missing = _fact_missing(fact, facts)
        if missing:
            return "not evidenced", missing
        if fact in ("content", "timestamps"):
            return "evidenced", self._fact_note(fact, facts)
        notes = [_records_note(count, events, facts)] if control.patterns else []
        notes += [self._fact_note(fact, facts), sub_items]
        return "evidenced", " ".join(n for n in notes if n)

    def _sub_items_note(self, events: list[str]) -> str:
        """ISO/IEC 27002:2022 §8.15's sub-items the period has no records of."""
        have = {
            "user ids": self._by_user > 0,
            "successful access": any(e in SUCCESSFUL for e in events),
            "rejected access": any(e in REJECTED for e in events),
            "configuration changes": any(_is_config(e) for e in events),
            "use of privileges": any(e in PERMISSIONS for e in events),
        }
        missing = _words([k for k, v in have.items() if not v], "or")
        if not missing:
            return (
                "Each sub-item of A.8.15 (user ids, successful and rejected access, "
                "configuration changes, use of privileges) has records in this period."
            )
        return (
            f"No records of {missing} in this period: this pack does not evidence "
            "those sub-items of A.8.15."
        )

    def _fact_failure(self, fact: str, facts: ControlFacts) -> str:
        """Why ``fact`` failed, or ''."""
        if fact in ("integrity", "signatures") and not facts.verified:
            return "The ledger's chains did not verify (hash chain, Merkle tree or checkpoints)."
        if fact == "integrity" and not facts.consistent:
            return "A chain's consistency proof from its first to its last checkpoint failed."
        if fact == "retention" and facts.retention == "FAIL":
            return f"The retention check failed: {_sentence(facts.retention_detail)}"
        bad = {"timestamps": self._bad_ts_count, "content": self._bad_content_count}.get(fact)
        if bad:
            return f"{bad} record(s) have {_BAD[fact]} (the first are listed)."
        return ""

    def _fact_note(self, fact: str, facts: ControlFacts) -> str:
        """How the pack backs an established ``fact``."""
        if fact == "signatures":
            return (
                f"{facts.signed_checkpoints} checkpoint(s) verified with the verifier "
                f"key(s) {', '.join(facts.verifier_keys)}; {self._by_user} record(s) name "
                "a user as their actor."
            )
        if fact == "timestamps":
            return (
                f"All {facts.records} record(s) have an RFC 3339 UTC ts with "
                "microseconds; order is given by seq on the hash chain, not ts, and "
                f"{self._earlier} record(s) carry an event time earlier than the record "
                "before them on their chain."
            )
        if fact == "content":
            return (
                f"All {facts.records} record(s) name their event, time, actor (type and "
                "id) and subject."
            )
        if fact == "retention":
            return f"Object Lock retention was checked: {_sentence(facts.retention_detail)}"
        if fact == "integrity":
            return (
                "The hash chain, Merkle tree and signed checkpoints verified, and so did each "
                "chain's consistency proof from its first to its last checkpoint (proofs/)."
            )
        return ""


#: What a record lacks to fail the fact of AU-8 or AU-3.
_BAD: Final = {
    "timestamps": "a ts that is not RFC 3339 UTC with microseconds and Z",
    "content": "no event, no actor type and id, or no subject",
}


def _sentence(text: str) -> str:
    """``text`` as a sentence: a capital first letter and a final full stop."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if not text or text.endswith(".") else ".")


def _words(items: list[str], last: str) -> str:
    """``a, b and c``."""
    return f"{', '.join(items[:-1])} {last} {items[-1]}" if len(items) > 1 else "".join(items)


def _is_config(event: str) -> bool:
    return any(fnmatchcase(event, p) for p in CONFIG_CHANGES) and not any(
        fnmatchcase(event, x) for x in NOT_CHANGES
    )


def _records_note(count: int, events: list[str], facts: ControlFacts) -> str:
    """Where the pack holds a control's records."""
    chains = "a verified chain" if facts.verified else "chains that did NOT verify"
    text = f"{count} record(s) of the period back this control, each on {chains}"
    full = sorted({c for e in events if (c := in_full_category(e)) is not None})
    if full:
        files = _words([f"records/{c}.jsonl" for c in full], "and")
        return f"{text}; the {_words(full, 'and')} records are in the pack in full ({files})."
    return (
        f"{text} under the signed checkpoints; the pack proves a sample of the period's "
        "records by inclusion."
    )


def _fact_missing(fact: str, facts: ControlFacts) -> str:
    """Why ``fact`` is not evidenced (nothing to show), or ''."""
    if fact == "retention" and facts.retention != "PASS":
        return (
            "Retention was not checked: pass --s3 s3://BUCKET/PREFIX to check Object "
            f"Lock retention. {_sentence(facts.retention_detail)}".strip()
        )
    if fact == "signatures" and (facts.signed_checkpoints == 0 or not facts.verifier_keys):
        return "No checkpoint of the period verified with a named verifier key."
    if fact in ("content", "timestamps") and facts.records == 0:
        return "No records in this period: this pack does not evidence their content or time."
    return ""


def not_evidenced(controls: list[dict[str, Any]]) -> list[str]:
    """Ids of the controls with status "not evidenced", in order."""
    return [c["id"] for c in controls if c["status"] == "not evidenced"]
