"""The evidence report's HTML and PDF (audit_core.evidence.render): escaping, every section and
control in both, identical bytes across renders and processes, embedded files, edge reports.

The PDF is read back with poppler's pdftotext/pdfdetach (testkit.pdf installs them with apt
when missing), never with a mock.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from audit_core.errors import AuditError, EvidenceError
from audit_core.evidence.render import (
    FONT_PATTERNS,
    SECTIONS,
    render_environment,
    render_html,
    render_pdf,
)
from testkit import pdf as pdftools
from tests.core.evidence_report_fixture import (
    HOSTILE,
    UNICODE,
    big_report,
    empty_report,
    passing_report,
    report,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = b'{"files": {"report.json": "ab12"}, "period": "2026-12"}\n'


def _squash(text: str) -> str:
    """pdftotext's layout text with runs of white space as one space (tables wrap cells)."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def fail_pdf() -> bytes:
    """The FAIL fixture's PDF, with manifest.json attached (rendered once for the module)."""
    return render_pdf(report(), attachments={"manifest.json": MANIFEST})


@pytest.fixture(scope="module")
def fail_text(fail_pdf: bytes) -> str:
    pdftools.ensure_packages()
    return _squash(pdftools.pdftotext(fail_pdf))


class TestRenderHtml:
    def test_escapes_markup_from_the_report(self) -> None:
        """A '<script>' in any string of report.json comes out as text, never as markup."""
        html = render_html(report()).decode("utf-8")
        assert HOSTILE not in html
        assert "<script>" not in html
        assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html

    def test_keeps_non_ascii_text(self) -> None:
        """Non-ASCII text is kept as UTF-8."""
        assert UNICODE in render_html(report()).decode("utf-8")

    def test_has_every_section_and_control(self) -> None:
        """Each section heading, each control id and ref, and the verdict are in the page."""
        data = report()
        html = render_html(data).decode("utf-8")
        for heading in SECTIONS:
            assert heading.replace("'", "&#39;") in html or heading in html, heading
        for control in data["controls"]:
            assert control["id"] in html
            assert control["ref"] in html
        assert '<div class="verdict FAIL">FAIL</div>' in html

    def test_is_deterministic_and_self_contained(self) -> None:
        """Two renders give the same bytes, and the page names no external resource."""
        first = render_html(report())
        assert first == render_html(report())
        html = first.decode("utf-8")
        for reference in ("http://", "https://", "<link", "<img", "@import", "url("):
            assert reference not in html, reference

    def test_holds_no_date_but_the_reports(self) -> None:
        """Every timestamp-looking string of the page comes from report.json (no clock)."""
        data = report()
        html = render_html(data).decode("utf-8")
        source = json.dumps(data)
        for stamp in set(re.findall(r"\d{4}-\d{2}-\d{2}T[0-9:.]+Z", html)):
            assert stamp in source, stamp

    def test_missing_key_is_a_clear_error(self) -> None:
        """A report.json without a key it must have → EvidenceError naming it, no traceback."""
        data = report()
        del data["chains"][0]["head"]
        with pytest.raises(EvidenceError, match="head"):
            render_html(data)

    def test_unknown_not_evidenced_control_is_an_error(self) -> None:
        """'not_evidenced' naming a control the report does not hold → EvidenceError."""
        data = report()
        data["not_evidenced"].append("no-such-control")
        with pytest.raises(EvidenceError, match="no-such-control"):
            render_html(data)

    def test_sections_are_numbered_from_one(self) -> None:
        """The numbered headings run 1, 2, 3 … in SECTIONS order (the title block, SECTIONS[0],
        and the not-evidenced box inside Controls carry no number)."""
        html = render_html(report()).decode("utf-8")
        numbered = re.findall(r"<h2>(\d+)\. ([^<]+)</h2>", html)
        assert [int(n) for n, _ in numbered] == list(range(1, len(numbered) + 1))
        titles = [title.replace("&#39;", "'") for _, title in numbered]
        assert titles == [s for s in SECTIONS[1:] if s in titles]
        assert len(titles) == len(SECTIONS) - 2  # all but the title and the box

    def test_page_one_says_what_the_verdict_does_not_cover(self) -> None:
        """Under the verdict: the PASS sentence and each not-evidenced control's ref; retention
        and reconcile named only when they did not run."""
        data = report()
        summary = _summary(render_html(data))
        assert (
            "PASS means the log verified and the pack's proofs hold; it does not mean every "
            "control is evidenced." in summary
        )
        for name in data["not_evidenced"]:
            control = next(c for c in data["controls"] if c["id"] == name)
            assert f"{control['framework']} {control['ref']}" in summary, name
        assert "Retention NOT CHECKED" not in summary  # report() checked a bucket
        assert "no --reconcile" not in summary  # and reconciled

        empty = _summary(render_html(empty_report()))
        assert "Retention NOT CHECKED (no --s3)" in empty
        assert "Completeness: orchestrator runs not compared (no --reconcile)" in empty

    def test_unanchored_start_is_said_under_consistency(self) -> None:
        """A first checkpoint created after the chain's first record, or of the same size as the
        last, leaves the period's start unanchored: said for that chain, not for the other."""
        sentence = (
            "the start of the period is not anchored by an earlier checkpoint "
            "(none was signed before it)"
        )
        data = report()  # prefect's first checkpoint was created after its first record
        html = render_html(data).decode("utf-8")
        assert html.count(sentence) == 2  # under prefect's Consistency and on page 1
        assert f"Chain prefect: {sentence}" in _summary(html.encode())
        assert "Chain airflow: " not in html

        data["chains"][1]["first_checkpoint"]["created"] = "2026-12-01T00:00:00Z"
        assert sentence not in render_html(data).decode("utf-8")
        size = data["chains"][0]["last_checkpoint"]["size"]
        data["chains"][0]["first_checkpoint"]["size"] = size  # nothing before the period
        html = render_html(data).decode("utf-8")
        assert html.count(sentence) == 2
        assert f"Chain airflow: {sentence}" in html

    def test_cadence_says_what_it_measures(self) -> None:
        """The cadence text names the measured thing: records waiting for a checkpoint."""
        html = render_html(report()).decode("utf-8")
        assert (
            "the spans longer than the threshold in which the period's records waited for a "
            "signed checkpoint" in html
        )

    def test_requested_chains_on_page_one(self) -> None:
        """The chains asked for, 'every chain …' for [], and a report without the key renders."""
        summary = _summary(render_html(report()))
        assert "the 2 asked for: airflow, prefect" in summary
        assert "every chain with records in the period" in _summary(render_html(passing_report()))
        data = report()
        del data["requested_chains"]  # a report.json from before the key
        summary = _summary(render_html(data))
        assert "asked for" not in summary
        assert "every chain with records" not in summary

    def test_evidence_error_is_an_audit_error(self) -> None:
        """EvidenceError derives from the one AuditError base."""
        assert issubclass(EvidenceError, AuditError)


class TestRenderPdf:
    def test_is_a_pdf_a3(self, fail_pdf: bytes) -> None:
        """The bytes are a PDF declaring PDF/A-3 (part 3) in its XMP metadata."""
        assert fail_pdf.startswith(b"%PDF-")
        meta = " ".join(pdftools.pdfinfo_meta(fail_pdf).split())
        assert 'pdfaid:part="3"' in meta or "<pdfaid:part>3</pdfaid:part>" in meta, meta

    def test_text_has_every_section_verdict_and_control(self, fail_text: str) -> None:
        """pdftotext finds every section heading, the verdict and each control's ref."""
        for heading in SECTIONS:
            assert heading in fail_text, heading
        assert "FAIL" in fail_text
        for control in report()["controls"]:
            assert control["ref"] in fail_text, control["ref"]
        assert UNICODE in fail_text

    def test_fail_report_shows_its_findings(self, fail_text: str) -> None:
        """Each finding of a FAIL report is in the PDF's text."""
        for finding in report()["findings"]:
            assert _squash(finding) in fail_text, finding

    def test_footer_numbers_pages(self, fail_text: str) -> None:
        """The footer says 'page X of Y' (CSS @page counters)."""
        assert "page 1 of " in fail_text

    def test_attachment_is_embedded(self, fail_pdf: bytes) -> None:
        """The attached manifest.json is an embedded file of the PDF (pdfdetach -list)."""
        assert ["manifest.json"] == pdftools.pdfdetach_list(fail_pdf)

    def test_two_renders_are_identical(self, fail_pdf: bytes) -> None:
        """The same report and attachments give the same bytes (no clock, no random id)."""
        assert fail_pdf == render_pdf(report(), attachments={"manifest.json": MANIFEST})

    def test_render_in_another_process_is_identical(self, fail_pdf: bytes) -> None:
        """A render in a fresh interpreter gives the same bytes as this process's."""
        code = (
            "import hashlib, sys\n"
            "from audit_core.evidence.render import render_pdf\n"
            "from tests.core.evidence_report_fixture import report\n"
            f"pdf = render_pdf(report(), attachments={{'manifest.json': {MANIFEST!r}}})\n"
            "sys.stdout.write(hashlib.sha256(pdf).hexdigest())\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert hashlib.sha256(fail_pdf).hexdigest() == done.stdout

    def test_passing_report_says_pass(self) -> None:
        """A PASS report's PDF says PASS and lists no findings; its first page says what the
        PASS does not cover (the not-evidenced controls, retention not checked)."""
        raw = pdftools.pdftotext(render_pdf(passing_report()))
        text = _squash(raw)
        assert "PASS" in text
        assert "Findings" not in text
        assert "NOT CHECKED" in text
        page_one = _squash(raw.split("\f")[0])
        assert "it does not mean every control is evidenced." in page_one
        assert "Retention NOT CHECKED (no --s3)" in page_one
        assert "A.6.2.8" in page_one  # the not-evidenced controls' refs
        assert "Art. 12(2)(b)" in page_one

    def test_empty_report_renders(self) -> None:
        """A report with no chain and no control still renders, every section present."""
        text = _squash(pdftools.pdftotext(render_pdf(empty_report())))
        for heading in SECTIONS:
            assert heading in text, heading
        assert "No chain has records in this period." in text

    def test_bad_period_is_a_clear_error(self) -> None:
        """A period end that is not ISO 8601 → EvidenceError, not a traceback."""
        data = report()
        data["period"]["until"] = "yesterday"
        with pytest.raises(EvidenceError, match=r"period\.until"):
            render_pdf(data)

    def test_without_weasyprint_is_a_clear_error(self) -> None:
        """Where weasyprint cannot be imported, render_pdf raises EvidenceError naming the
        extra and the Debian packages (a fresh interpreter in which the import fails)."""
        code = (
            "import sys\n"
            "sys.modules['weasyprint'] = None  # what Python does for a module it cannot load\n"
            "from audit_core.errors import EvidenceError\n"
            "from audit_core.evidence.render import render_pdf\n"
            "from tests.core.evidence_report_fixture import report\n"
            "try:\n"
            "    render_pdf(report())\n"
            "except EvidenceError as exc:\n"
            "    sys.stdout.write(str(exc))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        assert "pip install 'workflow-audit[evidence]'" in done.stdout
        assert "libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core" in (
            done.stdout
        )

    def test_render_times(self) -> None:
        """Print how long the fixture and a big report take (no limit: machines differ)."""
        for name, data in (("fixture", report()), ("20 records/control, 40 rows", big_report())):
            start = time.perf_counter()
            html = render_html(data)
            middle = time.perf_counter()
            pdf = render_pdf(data, attachments={"manifest.json": MANIFEST})
            end = time.perf_counter()
            pages = _pages(pdf)
            print(
                f"\nrender {name}: html {middle - start:.3f} s ({len(html):,} B), "
                f"pdf {end - middle:.2f} s ({len(pdf):,} B, {pages} pages)"
            )


class TestRenderEnvironment:
    def test_names_pango_and_a_font_digest(self) -> None:
        """{"pango": "1.50.12", "fonts": 16 hex}: this machine has WeasyPrint and fontconfig."""
        env = render_environment()
        assert sorted(env) == ["fonts", "pango"]
        assert re.fullmatch(r"\d+\.\d+\.\d+", env["pango"]), env
        assert re.fullmatch(r"[0-9a-f]{16}", env["fonts"]), env
        assert render_environment() == env

    def test_same_in_another_process_and_differs_with_other_fonts(self, tmp_path: Path) -> None:
        """A fresh interpreter gives the same values; one whose fontconfig resolves DejaVu Sans
        to another face (FONTCONFIG_FILE) gives another font digest and the same pango."""
        conf = tmp_path / "fonts.conf"
        conf.write_text(
            '<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig>'
            "<dir>/usr/share/fonts</dir>"
            f"<cachedir>{tmp_path / 'cache'}</cachedir>"
            '<match target="pattern"><test name="family"><string>DejaVu Sans</string></test>'
            '<edit name="family" mode="assign" binding="strong"><string>DejaVu Serif</string>'
            "</edit></match></fontconfig>\n"
        )
        here = render_environment()
        assert _environment_in_child({}) == here
        other = _environment_in_child({"FONTCONFIG_FILE": str(conf)})
        assert other["pango"] == here["pango"]
        assert re.fullmatch(r"[0-9a-f]{16}", other["fonts"]), other
        assert other["fonts"] != here["fonts"]

    def test_patterns_cover_the_css_fonts(self) -> None:
        """Every font family report.css names is among the hashed patterns."""
        css = (ROOT / "audit_core/evidence/templates/report.css").read_text()
        families = set(re.findall(r'font-family: "([^"]+)"', css))
        assert families <= {pattern.split(":")[0] for pattern in FONT_PATTERNS}


def _environment_in_child(extra: dict[str, str]) -> dict[str, str]:
    """render_environment() of a fresh interpreter with ``extra`` in its environment."""
    code = (
        "import json, sys\n"
        "from audit_core.evidence.render import render_environment\n"
        "sys.stdout.write(json.dumps(render_environment()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **extra},
    )
    result: dict[str, str] = json.loads(done.stdout)
    return result


def _summary(html: bytes) -> str:
    """The title block's HTML (page 1: everything before the Chains section)."""
    text = html.decode("utf-8")
    return text[text.index('id="summary"') : text.index('id="chains"')]


def _pages(pdf: bytes) -> Any:
    """The page count pdftotext's form feeds show."""
    return pdftools.pdftotext(pdf).count("\f")
