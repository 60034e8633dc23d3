"""The offline pack checker against packs the operator forged and re-signed with the key.

The key holder can sign anything: each pack here is re-signed after the change, so the
signature passes and the checker must find what is wrong from the pack's own content (or
refuse a hostile zip outright) — exit 1 with the file named, never a traceback or a hang.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest

from audit_core._note import Signer, sign_note
from audit_core.checkpoint import load_verifiers
from audit_core.cli import main
from audit_core.errors import EvidenceError
from audit_core.evidence.check import verify_pack
from audit_core.evidence.collect import proof_lines
from audit_core.evidence.pack import manifest_note_text, transcript_text
from audit_core.evidence.render import render_html, render_pdf
from audit_core.evidence.rules import (
    MAX_CHAINS,
    bounds_expected,
    bounds_problems,
    in_full_problems,
    manifest_problems,
    report_size_problems,
    sample_stream,
)
from audit_core.evidence.sample import sample_indices
from audit_core.evidence.unzip import MAX_LINE_BYTES, carries, embedded_files, json_lines
from audit_core.ledgers.sqlite import SqliteLedger
from tests.core._cli import Run
from tests.core._evidence import SINCE, UNTIL
from tests.core._evidence import entry as _entry
from tests.core._evidence import fill as _fill

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The ledger and its pack of the period, every record of the range sampled (60 < 100),
    so every failure record is in the sample too."""
    root = tmp_path_factory.mktemp("evidence-check")
    ledger, pack = root / "ledger.db", root / "pack.zip"
    _fill(ledger)
    args = ["evidence", "--ledger", f"sqlite:///{ledger}", "--since", SINCE, "--until", UNTIL]
    assert main([*args, "--sample", "100", "-o", str(pack)]) == 0
    return ledger, pack


@pytest.fixture
def ledger(made: tuple[Path, Path]) -> Path:
    return made[0]


@pytest.fixture
def pack(made: tuple[Path, Path]) -> Path:
    return made[1]


def _json(pack: Path, name: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(_entry(pack, name))
    return value


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2) + b"\n"


def _resign(
    pack: Path,
    ledger: Path,
    out: Path,
    change: Mapping[str, bytes | None] | None = None,
    manifest: Edit | None = None,
) -> Path:
    """A copy of ``pack`` with entries replaced (bytes) or removed (None), the manifest's
    hashes made to match, ``manifest`` applied, and the manifest signed again with the
    operator's key."""
    changed = dict(change or {})
    m = _json(pack, "manifest.json")
    for name, body in changed.items():
        if body is None:
            m["files"].pop(name, None)
        else:
            m["files"][name] = hashlib.sha256(body).hexdigest()
    if manifest is not None:
        manifest(m)
    raw = _dumps(m)
    signer = Signer.parse(ledger.with_name(ledger.name + ".key").read_text())
    period: dict[str, Any] = m["period"] if isinstance(m.get("period"), dict) else {}
    text = manifest_note_text(
        str(m.get("origin")),
        str(period.get("since")),
        str(period.get("until")),
        hashlib.sha256(raw).hexdigest(),
    )
    changed["manifest.json"] = raw
    changed["manifest.sig"] = sign_note(text, [signer]).encode()
    with zipfile.ZipFile(pack) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in changed:
                body = changed.pop(info.filename)
                if body is not None:
                    dst.writestr(info, body)
            else:
                dst.writestr(info, src.read(info))
        for name, body in changed.items():  # new entries
            if body is not None:
                dst.writestr(name, body)
    return out


def _verify(cli: Any, pack: Path, ledger: Path, *extra: str, pdf: bool = False) -> Run:
    """verify-evidence; without ``pdf``, with --no-pdf (1.5 s less: only the PDF tests need
    it rendered again)."""
    flags = () if pdf else ("--no-pdf",)
    run: Run = cli("verify-evidence", pack, "--key", ledger.with_name(ledger.name + ".key.pub"),
                   *flags, *extra)  # fmt: skip
    assert "Traceback" not in run.err + run.out
    return run


def _invalid(cli: Any, pack: Path, ledger: Path, *, pdf: bool = False) -> str:
    run = _verify(cli, pack, ledger, pdf=pdf)
    assert run.code == 1, run.out
    return run.err


def _chain(m: dict[str, Any], name: str = "airflow") -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in m["chains"] if c["chain"] == name)
    return found


def _size(pack: Path) -> int:
    size: int = _chain(_json(pack, "manifest.json"))["last_checkpoint"]["size"]
    return size


def _lines(pack: Path, name: str) -> list[bytes]:
    return _entry(pack, name).splitlines(keepends=True)


def test_the_honest_pack_passes_every_check_and_pdf_time_is_measured(
    cli: Any, pack: Path, ledger: Path
) -> None:
    started = time.perf_counter()
    run = _verify(cli, pack, ledger, "-v", pdf=True)
    took = time.perf_counter() - started
    assert run.code == 0, run.err
    for check in (
        "report.html is the rendering",
        "report.pdf is the rendering",
        "the records around [30, 90) are proven",
        "records/failure.jsonl: 6 records proven included, in order",
    ):
        assert check in run.out
    print(f"verify-evidence with report.html/pdf re-rendered: {took:.2f} s")


class TestInFull:
    def test_a_repeated_line(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        lines = _lines(pack, "records/failure.jsonl")
        body = b"".join([lines[0], *lines])
        err = _invalid(
            cli, _resign(pack, ledger, tmp_path / "f.zip", {"records/failure.jsonl": body}), ledger
        )
        assert "records/failure.jsonl line 1: chain 'airflow' seq 33 repeats" in err
        assert "report.json: 6 failure records in full" not in err  # the file failed first

    def test_lines_out_of_order(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        lines = _lines(pack, "records/failure.jsonl")
        body = b"".join([lines[1], lines[0], *lines[2:]])
        err = _invalid(
            cli, _resign(pack, ledger, tmp_path / "f.zip", {"records/failure.jsonl": body}), ledger
        )
        assert "records/failure.jsonl line 1: chain 'airflow' seq 33 comes after seq 43" in err

    def test_a_seq_outside_the_stated_range(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def later_lo(m: dict[str, Any]) -> None:
            c = _chain(m)
            c["lo"], c["records"] = 40, 50

        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", manifest=later_lo), ledger)
        assert (
            "records/failure.jsonl line 0: chain 'airflow' seq 33 is outside the period's "
            "range [40, 90)" in err
        )

    def test_a_sampled_failure_left_out_and_the_count_kept(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        lines = _lines(pack, "records/failure.jsonl")
        body = b"".join(lines[:2] + lines[3:])
        err = _invalid(
            cli, _resign(pack, ledger, tmp_path / "f.zip", {"records/failure.jsonl": body}), ledger
        )
        assert (
            "records/failure.jsonl leaves out chain 'airflow' seq 53, which the sample holds" in err
        )

    def test_the_report_states_another_count(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        report = _json(pack, "report.json")
        next(x for x in report["in_full"] if x["category"] == "access")["count"] = 1
        change = {"report.json": _dumps(report), "report.html": render_html(report)}
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", change), ledger)
        assert "report.json: 1 access records in full, records/access.jsonl holds 2" in err


class TestReport:
    def _forged(self, pack: Path, ledger: Path, out: Path, edit: Edit, html: bool = True) -> Path:
        report = _json(pack, "report.json")
        edit(report)
        change = {"report.json": _dumps(report)}
        if html:
            change["report.html"] = render_html(report)
        return _resign(pack, ledger, out, change)

    def test_another_period(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["period"]["since"] = "2026-11-01T00:00:00.000000Z"

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: period 2026-11-01T00:00:00.000000Z to" in err
        assert "transcript.txt is not the transcript report.json states" in err

    def test_another_range(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        def edit(r: dict[str, Any]) -> None:
            _chain(r)["hi"] = 80

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: chain 'airflow' differs from the manifest's" in err

    def test_pass_with_a_finding(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["findings"] = ["chain 'airflow': record 40 does not hash to its stored hash"]

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: verdict 'PASS', the manifest's 'PASS'; its findings and" in err

    def test_pass_with_a_failed_transcript_line(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        transcript = _entry(pack, "transcript.txt").replace(
            b"PASS verification", b"FAIL verification", 1
        )

        def edit(r: dict[str, Any]) -> None:
            r["transcript"][0]["result"] = "FAIL"

        forged = self._forged(pack, ledger, tmp_path / "f.zip", edit)
        forged = _resign(forged, ledger, tmp_path / "g.zip", {"transcript.txt": transcript})
        err = _invalid(cli, forged, ledger)
        assert "its findings and transcript make it FAIL" in err
        assert "transcript.txt" not in err  # it is the report's

    def test_findings_that_are_not_the_transcripts(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["findings"] = ["all records verified"]
            r["verdict"] = "FAIL"

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: its findings are not its transcript's FAIL lines" in err

    def test_another_root_stated(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        def edit(r: dict[str, Any]) -> None:
            _chain(r)["root"] = "00" * 32

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: chain 'airflow' states another size or root" in err

    def test_an_in_full_category_not_stated(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["in_full"] = [x for x in r["in_full"] if x["category"] != "failure"]

        err = _invalid(cli, self._forged(pack, ledger, tmp_path / "f.zip", edit), ledger)
        assert "report.json: in_full does not list each of failure, " in err

    def test_transcript_changed(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        body = _entry(pack, "transcript.txt").replace(b"VERDICT PASS", b"VERDICT PASS!")
        err = _invalid(
            cli, _resign(pack, ledger, tmp_path / "f.zip", {"transcript.txt": body}), ledger
        )
        assert "transcript.txt is not the transcript report.json states" in err

    def test_html_changed(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        body = _entry(pack, "report.html").replace(b"</body>", b"<p>all fine</p></body>")
        err = _invalid(
            cli, _resign(pack, ledger, tmp_path / "f.zip", {"report.html": body}), ledger
        )
        assert "report.html is not the rendering of report.json" in err

    def test_a_report_that_does_not_render(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["not_evidenced"] = ["no-such-control"]

        err = _invalid(
            cli, self._forged(pack, ledger, tmp_path / "f.zip", edit, html=False), ledger
        )
        assert "report.json does not render: " in err

    def test_pdf_changed(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        body = _entry(pack, "report.pdf").replace(b"%%EOF", b"%%EOF\n%", 1)
        forged = _resign(pack, ledger, tmp_path / "f.zip", {"report.pdf": body})
        err = _invalid(cli, forged, ledger, pdf=True)
        assert "report.pdf is not the rendering of report.json" in err

    def test_the_manifest_tool_version_does_not_switch_re_rendering_off(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        """#3: the manifest's tool.version is the operator's to write: it decides nothing."""
        body = _entry(pack, "report.html").replace(b"</body>", b"<p>other template</p></body>")

        def edit(m: dict[str, Any]) -> None:
            m["tool"]["version"] = "0.0.1"

        forged = _resign(pack, ledger, tmp_path / "f.zip", {"report.html": body}, edit)
        assert "report.html is not the rendering of report.json" in _invalid(cli, forged, ledger)


def _rendered(pack: Path, ledger: Path, out: Path, edit: Edit, *, pdf: bool = True) -> Path:
    """The pack with report.json edited and everything rendered from it again (transcript,
    HTML, and the PDF carrying it), re-signed: what an operator with the key can make."""
    report = _json(pack, "report.json")
    edit(report)
    raw = _dumps(report)
    change = {
        "report.json": raw,
        "report.html": render_html(report),
        "transcript.txt": transcript_text(report).encode(),
    }
    if pdf:
        change["report.pdf"] = render_pdf(report, attachments={"report.json": raw})
    return _resign(pack, ledger, out, change)


class TestPdf:
    """report.pdf carries report.json, checked everywhere; re-rendered only where the render
    environment is the pack's, and every rendering not checked is printed without -v."""

    def test_the_pdf_carries_the_report_json(self, pack: Path) -> None:
        assert embedded_files(_entry(pack, "report.pdf")) == [_entry(pack, "report.json")]

    def test_a_pdf_of_another_report_fails_even_with_no_pdf(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        other = _json(pack, "report.json")
        other["findings"] = []
        pdf = render_pdf(other, attachments={"report.json": _dumps(other) + b" "})
        forged = _resign(pack, ledger, tmp_path / "f.zip", {"report.pdf": pdf})
        err = _invalid(cli, forged, ledger)  # --no-pdf: not re-rendered, still compared
        assert "report.pdf does not carry the pack's report.json" in err

    def test_a_pdf_without_attachment(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        pdf = render_pdf(_json(pack, "report.json"))
        forged = _resign(pack, ledger, tmp_path / "f.zip", {"report.pdf": pdf})
        assert "report.pdf carries no report.json" in _invalid(cli, forged, ledger)

    def test_another_render_environment_is_a_skip_printed_without_verbose(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        """#4: a pack made where the fonts differ is not re-rendered here, and says so."""

        def edit(r: dict[str, Any]) -> None:
            r["versions"]["fonts"] = "0" * 16

        forged = _rendered(pack, ledger, tmp_path / "f.zip", edit)
        run = _verify(cli, forged, ledger, pdf=True)
        assert run.code == 0, run.err
        assert "NOT CHECKED report.pdf not re-rendered: made with fonts 0000000000000000" in run.out
        checked = verify_pack(forged, _keys(ledger))
        assert ("PASS", "report.html is the rendering of report.json") in checked.checks
        assert ("PASS", "report.pdf carries the pack's report.json") in checked.checks
        assert checked.skipped == [
            f"report.pdf not re-rendered: made with fonts {'0' * 16} (here "
            f"{_json(pack, 'report.json')['versions']['fonts']})"
        ]

    def test_a_report_json_over_1_mib_is_not_laid_out_again(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        """#10: within every list cap, 1.2 MB of transcript would take ~20 s to lay out."""

        def edit(r: dict[str, Any]) -> None:
            r["transcript"] += [{"check": f"c{i}", "result": "PASS", "detail": "d" * 2000}
                                for i in range(600)]  # fmt: skip

        forged = _rendered(pack, ledger, tmp_path / "f.zip", edit, pdf=False)
        checked = verify_pack(forged, _keys(ledger))
        assert checked.problems == ["report.pdf does not carry the pack's report.json"]
        assert len(checked.skipped) == 1
        assert checked.skipped[0].startswith("report.pdf not re-rendered: report.json is 12")
        assert checked.skipped[0].endswith(" bytes (over 1 MiB)")

    def test_another_jinja2_skips_html_and_pdf_visibly(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["versions"]["jinja2"] = "2.0"

        forged = _rendered(pack, ledger, tmp_path / "f.zip", edit, pdf=False)
        run = _verify(cli, forged, ledger)
        assert "report.pdf does not carry the pack's report.json" in run.err  # the old PDF
        checked = verify_pack(forged, _keys(ledger), pdf=False)
        assert checked.skipped[0].startswith(
            "report.html/pdf not re-rendered: made with jinja2 2.0"
        )


def _keys(ledger: Path) -> Any:
    return load_verifiers([str(ledger.with_name(ledger.name + ".key.pub"))])


class TestStatements:
    """#5/#6: what report.json states besides the manifest's figures (the HTML/PDF show it)."""

    def _problems(self, pack: Path, ledger: Path, out: Path, edit: Edit) -> list[str]:
        forged = _rendered(pack, ledger, out, edit, pdf=False)
        return verify_pack(forged, _keys(ledger), pdf=False).problems

    def test_not_evidenced_that_is_not_the_controls(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["not_evidenced"] = r["not_evidenced"][1:]

        problems = self._problems(pack, ledger, tmp_path / "f.zip", edit)
        assert "report.json: not_evidenced is not the controls whose status is so" in problems

    def test_a_control_counting_fewer_than_it_lists(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            r["controls"][0]["count"] = 1

        problems = self._problems(pack, ledger, tmp_path / "f.zip", edit)
        assert "report.json: control 'eu-ai-act-12-2-a' counts fewer than it lists" in problems

    def test_a_control_listing_a_failure_the_pack_does_not_hold(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            listed = next(x for x in r["controls"][0]["records"] if x["chain"] == "airflow")
            listed["seq"] = 31

        problems = self._problems(pack, ledger, tmp_path / "f.zip", edit)
        assert any(
            "lists chain 'airflow' seq 31, which records/failure.jsonl does not hold" in p
            for p in problems
        ), problems

    def test_sample_figures_that_are_not_the_packs(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(r: dict[str, Any]) -> None:
            _chain(r)["sample"].update(requested=200, count=61, distinct=59)

        problems = self._problems(pack, ledger, tmp_path / "f.zip", edit)
        assert (
            "report.json: chain 'airflow' states sample 200 requested, 61 proven, 59 distinct; "
            "the pack's is 100, 60, 60" in problems
        )

    def test_a_manifest_sample_n_the_report_does_not_state(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(m: dict[str, Any]) -> None:
            _chain(m)["sample"]["n"] = 0

        forged = _resign(pack, ledger, tmp_path / "f.zip", manifest=edit)
        problems = verify_pack(forged, _keys(ledger), pdf=False).problems
        assert any("sampled seqs are not the rule's" in p for p in problems), problems
        assert any("states sample 100 requested" in p for p in problems), problems


class TestCosts:
    """#10/#11/#13/#14: a signed pack made to cost time or memory is refused first."""

    def test_oversized_lists_are_refused_before_rendering(
        self, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        report = _json(pack, "report.json")
        report["controls"] += [report["controls"][1]] * 60
        report["controls"][0]["by_event"] = {f"e{i}": 1 for i in range(10_001)}
        forged = _resign(pack, ledger, tmp_path / "f.zip", {"report.json": _dumps(report)})
        checked = verify_pack(forged, _keys(ledger))
        assert checked.problems == [
            "report.json: controls holds 73 items, more than 64",
            "report.json: controls[0].by_event holds 10001 items, more than 10000",
        ]
        assert not any("report.html" in what or "report.pdf" in what for _, what in checked.checks)

    def test_a_huge_string_is_refused(self) -> None:
        assert report_size_problems({"findings": ["x" * (65 << 10)]}) == [
            "report.json: a string of 66560 characters, more than a report holds"
        ]

    def test_too_many_chains_and_samples(self, pack: Path) -> None:
        m = _json(pack, "manifest.json")
        chain = _chain(m)
        m["chains"] = [{**chain, "chain": f"c{i}"} for i in range(MAX_CHAINS + 1)]
        assert manifest_problems(m) == [f"manifest.json: {MAX_CHAINS + 1} chains, more than 10000"]
        m["chains"] = [{**chain, "chain": f"c{i}", "sample": {"n": 100_000}} for i in range(11)]
        assert manifest_problems(m) == [
            "manifest.json: 1100000 sampled proofs in all, more than 1000000"
        ]

    def test_a_pack_without_records(self, pack: Path) -> None:
        m = _json(pack, "manifest.json")
        for c in m["chains"]:
            c["records"] = 0
        assert manifest_problems(m) == [
            "the pack evidences no records (no chain of the manifest has one)"
        ]

    def test_the_sample_is_derived_lazily_as_the_rule_says(self) -> None:
        root = hashlib.sha256(b"r").digest()
        for lo, hi, n in ((0, 10, 3), (5, 5, 3), (3, 8, 10), (0, 1 << 40, 50), (2, 9, 0)):
            assert list(sample_stream(root, lo, hi, n)) == sample_indices(root, lo, hi, n)

    def test_a_json_line_over_16_mib(self, tmp_path: Path) -> None:
        path = tmp_path / "z.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("proofs/a.sample.jsonl", b'{"a": "' + b"x" * MAX_LINE_BYTES + b'"}\n')
        with zipfile.ZipFile(path) as zf, pytest.raises(EvidenceError, match="a line of more"):
            list(json_lines(zf, "proofs/a.sample.jsonl"))


def _patch_central(path: Path, name: str, offset: int, value: bytes) -> None:
    """Overwrite bytes of ``name``'s central directory header (APPNOTE 4.3.12), which is
    what a reader trusts: +8 the flags, +24 the uncompressed size."""
    raw = bytearray(path.read_bytes())
    at = raw.find(b"PK\x01\x02")
    while at >= 0:
        length = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + length] == name.encode():
            raw[at + offset : at + offset + len(value)] = value
            path.write_bytes(bytes(raw))
            return
        at = raw.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"no {name} in {path}")


class TestZip:
    def test_an_encrypted_entry(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        bad = Path(shutil.copy(pack, tmp_path / "f.zip"))
        with zipfile.ZipFile(bad) as zf:
            flags = zf.getinfo("report.json").flag_bits
        _patch_central(bad, "report.json", 8, (flags | 0x1).to_bytes(2, "little"))
        err = _invalid(cli, bad, ledger)
        assert "report.json: encrypted in the zip" in err

    def test_another_compression(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        bad = tmp_path / "f.zip"
        with zipfile.ZipFile(pack) as src, zipfile.ZipFile(bad, "w") as dst:
            for info in src.infolist():
                body = src.read(info)
                if info.filename == "report.json":
                    info.compress_type = zipfile.ZIP_BZIP2
                dst.writestr(info, body)
        err = _invalid(cli, bad, ledger)
        assert "report.json: compression method 12" in err

    def _bomb(self, pack: Path, out: Path, name: str) -> Path:
        with zipfile.ZipFile(pack) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                body = b" " * (17 << 20) if info.filename == name else src.read(info)
                dst.writestr(info, body, zipfile.ZIP_DEFLATED)
        assert out.stat().st_size < 1 << 20
        return out

    @pytest.mark.parametrize("name", ["manifest.json", "manifest.sig"])
    def test_a_manifest_bomb(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, name: str
    ) -> None:
        err = _invalid(cli, self._bomb(pack, tmp_path / "bomb.zip", name), ledger)
        assert f"{name}: 17825792 bytes is more than a pack holds" in err

    @pytest.mark.parametrize("size", [100, 16 << 20])
    def test_a_size_the_header_hides(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, size: int
    ) -> None:
        """The central directory understates the size: the read stops at 16 MiB + 1 byte
        (refused) or at the stated size (the CRC fails): never inflated in full."""
        bomb = self._bomb(pack, tmp_path / "bomb.zip", "manifest.json")
        _patch_central(bomb, "manifest.json", 24, size.to_bytes(4, "little"))
        err = _invalid(cli, bomb, ledger)
        assert "INVALID evidence pack" in err
        assert "manifest.json" in err


class TestManifestSchema:
    @pytest.mark.parametrize(
        ("edit", "message"),
        [
            (
                lambda m: _chain(m, "airflow-events").update(lo="2"),
                "chains[1].lo is not an integer",
            ),
            (lambda m: _chain(m).update(lo=95), "chains[0]: lo 95 and hi 90 are not 0 <= lo <= hi"),
            (lambda m: _chain(m).update(hi=10**6), "chains[0].hi 1000000 is beyond its last"),
            (
                lambda m: _chain(m).update(sample={"n": 10**12}),
                "chains[0].sample.n is not an integer",
            ),
            (lambda m: _chain(m).update(records=True), "chains[0].records is not an integer"),
            (lambda m: _chain(m).update(chain=None), "chains[0].chain is not a string"),
            (
                lambda m: _chain(m)["last_checkpoint"].update(root="zz"),
                "chains[0].last_checkpoint.root is not 64",
            ),
            (
                lambda m: _chain(m)["first_checkpoint"].update(size=-1),
                "chains[0].first_checkpoint.size is not an integer >= 0",
            ),
            (
                lambda m: _chain(m)["last_checkpoint"].update(file="../x"),
                "chains[0].last_checkpoint.file is not a name under checkpoints/",
            ),
            (
                lambda m: _chain(m).update(first_checkpoint=[]),
                "chains[0].first_checkpoint is neither null nor an object",
            ),
            (
                lambda m: m["chains"].append(m["chains"][0]),
                "chains[2].chain 'airflow' is listed twice",
            ),
            (lambda m: m["chains"].append(7), "chains[2] is not an object"),
            (lambda m: m.update(chains={}), "chains is not a list"),
            (lambda m: m.update(verdict="MAYBE"), "verdict is not 'PASS' or 'FAIL'"),
            (
                lambda m: m["files"].update({"report.pdf": 5}),
                "files['report.pdf'] is not a SHA-256",
            ),
            (lambda m: m.update(files=[]), "files is not an object"),
        ],
        ids=lambda x: x if isinstance(x, str) else "",
    )
    def test_a_signed_malformed_manifest(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, edit: Edit, message: str
    ) -> None:
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", manifest=edit), ledger)
        assert f"manifest.json: {message}" in err

    def test_period_not_strings(self) -> None:
        assert manifest_problems({"period": {"since": 1, "until": None}, "chains": []})[:2] == [
            "manifest.json: period.since is not a string",
            "manifest.json: period.until is not a string",
        ]
        assert manifest_problems([]) == ["manifest.json: not a JSON object"]


class TestMissing:
    def test_a_referenced_file_left_out(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        name = "proofs/airflow.consistency.json"
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", {name: None}), ledger)
        assert f"{name}: missing from the pack" in err
        assert "There is no item" not in err

    @pytest.mark.parametrize(
        "name", ["proofs/airflow.bounds.jsonl", "proofs/airflow.sample.jsonl", "report.json"]
    )
    def test_others_left_out(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path, name: str
    ) -> None:
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", {name: None}), ledger)
        assert f"{name}: missing from the pack" in err


class TestBounds:
    NAME = "proofs/airflow.bounds.jsonl"

    def _bounds(self, ledger: Path, pack: Path, pinned: list[tuple[str, int]]) -> bytes:
        size = _size(pack)
        reader = SqliteLedger(ledger, read_only=True)
        try:
            seqs, sides = [s for _, s in pinned], [d for d, _ in pinned]
            return b"".join(proof_lines(reader, "airflow", seqs, size, sides))
        finally:
            reader.close()

    def test_the_pack_writes_them(self, pack: Path) -> None:
        lines = [orjson.loads(x) for x in _lines(pack, self.NAME)]
        size = _size(pack)
        assert [(x["side"], x["leaf_index"]) for x in lines] == bounds_expected(30, 90, size)

    def test_a_range_that_starts_too_late(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(m: dict[str, Any]) -> None:
            _chain(m).update(lo=31, records=59)

        body = self._bounds(ledger, pack, bounds_expected(31, 90, _size(pack)))
        forged = _resign(pack, ledger, tmp_path / "f.zip", {self.NAME: body}, edit)
        err = _invalid(cli, forged, ledger)
        assert (
            f"{self.NAME}: seq 30 (before) is in the period: the pack's range starts too late"
            in err
        )

    def test_a_range_that_ends_too_early(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(m: dict[str, Any]) -> None:
            _chain(m).update(hi=89, records=59)

        body = self._bounds(ledger, pack, bounds_expected(30, 89, _size(pack)))
        forged = _resign(pack, ledger, tmp_path / "f.zip", {self.NAME: body}, edit)
        err = _invalid(cli, forged, ledger)
        assert (
            f"{self.NAME}: seq 89 (after) is in the period: the pack's range ends too early" in err
        )

    def test_a_range_that_starts_too_early(
        self, cli: Any, pack: Path, ledger: Path, tmp_path: Path
    ) -> None:
        def edit(m: dict[str, Any]) -> None:
            _chain(m).update(lo=29, records=61)

        body = self._bounds(ledger, pack, bounds_expected(29, 90, _size(pack)))
        forged = _resign(pack, ledger, tmp_path / "f.zip", {self.NAME: body}, edit)
        err = _invalid(cli, forged, ledger)
        assert f"{self.NAME}: seq 29 (first) is outside the period" in err

    def test_a_line_left_out(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        body = b"".join(_lines(pack, self.NAME)[1:])
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", {self.NAME: body}), ledger)
        assert f"{self.NAME}: holds [('first', 30)" in err

    def test_a_line_not_proven(self, cli: Any, pack: Path, ledger: Path, tmp_path: Path) -> None:
        lines = _lines(pack, self.NAME)
        first = orjson.loads(lines[1])
        first["audit_path"] = first["audit_path"][1:]
        body = b"".join([lines[0], orjson.dumps(first) + b"\n", *lines[2:]])
        err = _invalid(cli, _resign(pack, ledger, tmp_path / "f.zip", {self.NAME: body}), ledger)
        assert f"{self.NAME} line 1: " in err


def test_the_honest_pack_copied_elsewhere_still_verifies(
    cli: Any, pack: Path, ledger: Path, tmp_path: Path
) -> None:
    copy = Path(shutil.copy(pack, tmp_path / "p.zip"))
    assert _verify(cli, copy, ledger).code == 0


class TestRules:
    """The pure rules, on cases a real ledger cannot produce cheaply."""

    def test_in_full_chains_in_the_manifest_order(self) -> None:
        ranges = {"a": (0, 10), "b": (0, 10)}
        assert in_full_problems("f", [("a", 1), ("a", 2), ("b", 0)], ranges) == []
        assert in_full_problems("f", [("a", 1), ("b", 0), ("a", 2)], ranges) == [
            "f line 2: chain 'a' after a later chain of the manifest"
        ]
        assert in_full_problems("f", [("b", 0), ("a", 1)], ranges) == [
            "f line 1: chain 'a' after a later chain of the manifest"
        ]

    def test_bounds_of_a_one_record_range_and_a_whole_tree(self) -> None:
        assert bounds_expected(0, 1, 1) == [("first", 0), ("last", 0)]
        lines = [("first", 0, "2026-01-01"), ("last", 0, "2026-01-01")]
        assert bounds_problems("b", lines, 0, 1, 1, ("2026-01-01", "2026-01-02")) == []
        assert bounds_problems("b", lines, 0, 1, 1, ("2026-01-02", "2026-01-03")) == [
            "b: seq 0 (first) is outside the period (ts 2026-01-01): the pack's range starts "
            "too early",
            "b: seq 0 (last) is outside the period (ts 2026-01-01): the pack's range ends too late",
        ]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    return [path]


def _set(m: dict[str, Any], *, path: tuple[Any, ...], value: Any) -> None:
    at: Any = m
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value


def test_every_manifest_field_garbled_and_signed(pack: Path, ledger: Path, tmp_path: Path) -> None:
    """Each field of the first chain's entry and the checked top-level ones, set to a value
    of another type and signed: problems, never an exception (and no file-hash loop)."""
    m = _json(pack, "manifest.json")
    paths = [("chains", 0, *p) for p in _leaves(m["chains"][0])]
    paths += [("period", "since"), ("period", "until"), ("verdict",), ("files",), ("tool",)]
    keys = load_verifiers([str(ledger.with_name(ledger.name + ".key.pub"))])
    for path in paths:
        for value in (None, "x", -1, [1]):
            forged = _resign(
                pack, ledger, tmp_path / "f.zip", manifest=partial(_set, path=path, value=value)
            )
            try:
                checked = verify_pack(forged, keys, pdf=False)
            except EvidenceError:
                continue
            assert checked.problems or path == ("tool",), (path, value)


def test_checking_prints_nothing(
    pack: Path, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI prints; verify_pack only returns what it found."""
    assert verify_pack(pack, _keys(ledger), pdf=False).valid
    assert capsys.readouterr() == ("", "")


def test_an_unreadable_pdf_attachment_is_named() -> None:
    pdf = b"1 0 obj\n<</Type /EmbeddedFile/Filter /FlateDecode/Length 3>>\nstream\nabc\nendstream"
    assert carries(pdf, b"{}", "report.json") == (
        False,
        "report.pdf carries no readable report.json (report.pdf: an embedded file does not "
        "inflate (Error -3 while decompressing data: incorrect header check))",
    )
    indirect = b"<</Type /EmbeddedFile/Length 12 0 R>>\nstream\n{}\nendstream"
    assert "without a direct /Length" in carries(indirect, b"{}", "report.json")[1]
    plain = b"<</Type /EmbeddedFile/Length 2>>\nstream\n{}\nendstream"
    assert carries(plain, b"{}", "report.json") == (
        True,
        "report.pdf carries the pack's report.json",
    )
    bomb = zlib.compress(b" " * (17 << 20))
    pdf = b"<</Type /EmbeddedFile/Filter /FlateDecode/Length %d>>\nstream\n%b\nendstream" % (
        len(bomb),
        bomb,
    )
    assert "an embedded file of more than 16777216 bytes" in carries(pdf, b"", "report.json")[1]


def test_an_honest_pack_where_the_fonts_differ_is_valid_and_says_what_it_skipped(
    pack: Path, ledger: Path, tmp_path: Path
) -> None:
    """#4: an auditor whose fontconfig resolves other fonts (here: none) gets "valid" and a
    NOT CHECKED line for report.pdf, never a false INVALID. A subprocess: the fonts are
    read once per process."""
    (tmp_path / "fonts").mkdir()
    conf = tmp_path / "fonts.conf"
    conf.write_text(
        '<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
        f"<dir>{tmp_path / 'fonts'}</dir><cachedir>{tmp_path / 'cache'}</cachedir></fontconfig>"
    )
    key = ledger.with_name(ledger.name + ".key.pub")
    run = subprocess.run(
        [sys.executable, "-m", "audit_core.cli", "verify-evidence", str(pack), "--key", str(key)],
        capture_output=True,
        text=True,
        env={**os.environ, "FONTCONFIG_FILE": str(conf)},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "valid evidence pack" in run.stdout
    assert "NOT CHECKED report.pdf not re-rendered: made with fonts " in run.stdout
