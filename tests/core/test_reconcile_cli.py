"""``workflow-audit reconcile``'s report: what it appended, and which gaps another writer
recorded first (their keys were on the chain by the time of the append)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from pathlib import Path

import orjson
import pytest

from audit_core import AuditConfig, AuditTrail, Event, Record, verify_chain
from audit_core.cli import main
from audit_core.ledgers.sqlite import SqliteLedger
from audit_core.reconcile import Expected


class RacedReconciler:
    """Two runs ended unrecorded; while this reconciler reads the chain, a racing one appends
    the gap record of run ``a`` (same key), after the read and before the append."""

    name = "toy"

    def __init__(self, ledger_url: str) -> None:
        self.ledger_url = ledger_url
        self.raced = False

    def config(self, ledger_url: str | None, chain: str | None) -> AuditConfig:
        return AuditConfig(ledger_url=ledger_url or self.ledger_url, chain=chain or "c")

    def expected(self, since: str, until: str | None) -> Iterable[Expected]:
        return [Expected(run, _gap(run)) for run in ("a", "b")]

    def recorded_key(self, record: Record) -> Hashable | None:
        if not self.raced:  # the racing reconciler commits while this one reads
            self.raced = True
            with AuditTrail(self.config(None, None)) as other:
                other.record_many([_gap("a")])
        return str(record.subject.get("task")) if record.event == "task.unrecorded" else None


def _gap(run: str) -> Event:
    return Event(type="task.unrecorded", subject={"task": run}, key=f"gap:{run}")


@pytest.fixture
def raced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A ledger with one unrelated record, and the raced reconciler installed as ``toy``."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with AuditTrail(AuditConfig(ledger_url=url, chain="c")) as trail:
        trail.record("test.unrelated")
    monkeypatch.setattr("audit_core.reconcile.load", lambda name: RacedReconciler(url))
    return url


def _gaps(url: str) -> list[str]:
    ledger = SqliteLedger(url.removeprefix("sqlite:///"), create=False)
    try:
        assert 3 == verify_chain(ledger, "c").size
        records = [Record.from_stored(s) for s in ledger.read("c")]
    finally:
        ledger.close()
    return [str(r.subject["task"]) for r in records if r.event == "task.unrecorded"]


ARGV = ["reconcile", "toy", "--since", "2026-01-01"]


class TestReconcileReport:
    """Appended versus already recorded, in the text and the JSON outcome."""

    def test_text_reports_what_was_appended(
        self, raced: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Two gaps, one appended by a racing reconciler first: 'appended 1', '1 already
        recorded', one line for each gap saying which."""
        assert 0 == main(ARGV)
        out, err = capsys.readouterr()
        assert [
            "already recorded task.unrecorded: task=a",
            "appended task.unrecorded: task=b",
        ] == out.splitlines()
        assert "2 without a record; appended 1 to chain 'c'" in err
        assert "; 1 already recorded by another writer" in err
        assert ["a", "b"] == _gaps(raced)  # a once: the racer's

    def test_json_reports_what_was_appended(
        self, raced: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json: one object with checked, missing, appended and already_recorded counts
        and each gap's outcome."""
        assert 0 == main([*ARGV, "--json"])
        out = orjson.loads(capsys.readouterr().out)
        assert (2, 2, 1, 1) == (
            out["checked"],
            out["missing"],
            out["appended"],
            out["already_recorded"],
        )
        assert [
            {"outcome": "already recorded", "type": "task.unrecorded", "subject": {"task": "a"}},
            {"outcome": "appended", "type": "task.unrecorded", "subject": {"task": "b"}},
        ] == out["gaps"]
        assert ["a", "b"] == _gaps(raced)

    def test_dry_run_and_nothing_missing(
        self, raced: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run says what it would append; after the append nothing is missing."""
        assert 0 == main([*ARGV, "--dry-run", "--json"])
        dry = orjson.loads(capsys.readouterr().out)
        assert (True, 2, 0, 0) == (
            dry["dry_run"],
            dry["missing"],
            dry["appended"],
            dry["already_recorded"],
        )
        assert ["would append"] * 2 == [g["outcome"] for g in dry["gaps"]]
        assert 0 == main(ARGV)
        capsys.readouterr()
        assert 0 == main([*ARGV, "--json"])
        again = orjson.loads(capsys.readouterr().out)
        assert (0, 0, []) == (again["missing"], again["appended"], again["gaps"])
