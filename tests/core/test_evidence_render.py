"""The evidence report's HTML and PDF (audit_core.evidence.render): escaping, every section and
control in both, identical bytes across renders and processes, embedded files, edge reports.

The PDF is read back with poppler's pdftotext/pdfdetach (testkit.pdf installs them with apt
when missing), never with a mock.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from audit_core.errors import AuditError, EvidenceError
from audit_core.evidence.render import SECTIONS, render_html, render_pdf
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
        import re

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
        """A PASS report's PDF says PASS and lists no findings."""
        text = _squash(pdftools.pdftotext(render_pdf(passing_report())))
        assert "PASS" in text
        assert "Findings" not in text
        assert "NOT CHECKED" in text

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


def _pages(pdf: bytes) -> Any:
    """The page count pdftotext's form feeds show."""
    return pdftools.pdftotext(pdf).count("\f")
