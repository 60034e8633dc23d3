"""report.html and report.pdf rendered again from the pack's report.json and compared byte
for byte — each only where this machine renders as the pack's maker did: the same
workflow-audit and Jinja2 for the HTML, and the same WeasyPrint, pango and fonts for the PDF
(report.json's ``versions`` names them; other fonts give other bytes, which is no tampering).
Whatever differs is a SKIP that ``verify-evidence`` always prints; the report.json attached
to the PDF is checked by :mod:`audit_core.evidence.check` in every case.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from audit_core.errors import AuditError, EvidenceError
from audit_core.evidence.pack import versions
from audit_core.evidence.rules import HTML_ENVIRONMENT, PDF_ENVIRONMENT, environment_differs
from audit_core.evidence.unzip import read_entry

__all__ = ["MAX_PDF_RENDERED_BYTES", "rendering_checks"]

#: report.pdf is laid out again only from a report.json up to 1 MiB (~20 s; an honest one is
#: tens of KiB): a bigger one, padded within every cap, would cost minutes (a visible SKIP).
MAX_PDF_RENDERED_BYTES = 1 << 20
_NO_PDF = "WeasyPrint or its libraries do not load here"


def _differs(report: Mapping[str, Any], keys: Sequence[str]) -> str:
    """Which of ``keys`` report.json's ``versions`` state otherwise than here ("" if none)."""
    return environment_differs(report.get("versions"), versions(), keys)


def rendering_checks(
    zf: zipfile.ZipFile,
    report: Mapping[str, Any],
    raw: bytes,
    *,
    pdf: bool = True,
) -> list[tuple[str, str]]:
    """report.html and report.pdf rendered again from report.json and compared, byte for byte,
    each only where this machine's render environment is the one report.json states (other
    templates, pango or fonts give other bytes); every one not re-rendered is a SKIP the CLI
    always prints. Returns (PASS|FAIL|SKIP, what) in order."""
    results: list[tuple[str, str]] = []

    def ok(what: str) -> None:
        results.append(("PASS", what))

    def fail(what: str) -> None:
        results.append(("FAIL", what))

    def skip(what: str) -> None:
        results.append(("SKIP", what))

    other = _differs(report, HTML_ENVIRONMENT)
    if other or versions()["jinja2"] == "not installed":
        skip(f"report.html/pdf not re-rendered: made with {other or 'jinja2, not here'}")
        return results
    from audit_core.evidence.render import pdf_available, render_html, render_pdf

    try:
        html = render_html(report)
    except AuditError as exc:
        fail(f"report.json does not render: {exc}")
        return results
    try:
        if html != read_entry(zf, "report.html"):
            fail("report.html is not the rendering of report.json")
        else:
            ok("report.html is the rendering of report.json")
    except EvidenceError as exc:
        fail(str(exc))
    if not pdf:
        skip("report.pdf not re-rendered (--no-pdf): its SHA-256 and report.json checked")
        return results
    if len(raw) > MAX_PDF_RENDERED_BYTES:
        skip(f"report.pdf not re-rendered: report.json is {len(raw)} bytes (over 1 MiB)")
        return results
    other = _differs(report, PDF_ENVIRONMENT)
    if other or not pdf_available():
        skip(f"report.pdf not re-rendered: {f'made with {other}' if other else _NO_PDF}")
        return results
    try:
        rendered = render_pdf(report, attachments={"report.json": raw})
        same = rendered == read_entry(zf, "report.pdf")
    except AuditError as exc:
        fail(f"report.pdf: {exc}")
        return results
    if not same:
        fail("report.pdf is not the rendering of report.json")
    else:
        ok("report.pdf is the rendering of report.json")
    return results
