"""The evidence report as HTML and PDF, both from one Jinja2 template over ``report.json``::

    html = render_html(report)                                   # UTF-8 bytes
    pdf = render_pdf(report, attachments={"manifest.json": b"{...}"})

The auditor reads the same document in ``report.html`` and ``report.pdf``: the PDF is
WeasyPrint's rendering of exactly the HTML bytes. Both are deterministic (the pack's manifest
hashes them, so two packs of the same period must agree byte for byte): the template reads
``report.json`` and nothing else (no clock; the only dates are the report's own), the fonts are
named (DejaVu), nothing is fetched (a URL fetcher that allows ``data:`` only), and the PDF's
embedded files carry the period's end as their dates, where WeasyPrint would otherwise write
the current time. The PDF is PDF/A-3b (ISO 19005-3), the archival profile that allows
embedded files, so ``manifest.json`` can travel inside it.

Autoescape is on, and ``StrictUndefined`` turns a missing key of ``report.json`` into an
:class:`~audit_core.errors.EvidenceError` instead of a silently empty cell.

>>> from audit_core.evidence.render import SECTIONS
>>> SECTIONS[0], SECTIONS[-1]
('Audit evidence', 'Verification transcript')
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit_core.errors import EvidenceError

if TYPE_CHECKING:
    import jinja2

__all__ = [
    "FONT_PATTERNS",
    "SECTIONS",
    "TEMPLATE",
    "pdf_available",
    "render_environment",
    "render_html",
    "render_pdf",
]

TEMPLATE = "report.html.j2"
#: The headings of the report, in order: each is text in both the HTML and the PDF.
SECTIONS = (
    "Audit evidence",
    "Chains",
    "Controls",
    "Not evidenced by this period's records",
    "Completeness",
    "Retention",
    "Records in full",
    "Sample",
    "Verification transcript",
)
#: The fontconfig patterns of every face report.css can use (body, bold headings and verdict,
#: italic statuses, monospace hex and rules), in the fixed order their files are hashed.
FONT_PATTERNS = (
    "DejaVu Sans",
    "DejaVu Sans:bold",
    "DejaVu Sans:italic",
    "DejaVu Sans:bold:italic",
    "DejaVu Sans Mono",
    "DejaVu Sans Mono:bold",
)
_INSTALL = (
    "pip install 'workflow-audit[evidence]' (jinja2, weasyprint) and, on Debian, "
    "apt-get install libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core"
)
_NO_ATTACHMENTS: Mapping[str, bytes] = types.MappingProxyType({})


def render_html(report: Mapping[str, Any]) -> bytes:
    """The report as one self-contained UTF-8 HTML page (styles inline, no external resource)."""
    template = _environment().get_template(TEMPLATE)
    import jinja2

    try:
        text = template.render(r=report, v=_derived(report))
    except jinja2.UndefinedError as exc:
        raise EvidenceError(f"report.json lacks a value the report shows: {exc.message}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise EvidenceError(f"report.json is not the shape the report renders: {exc}") from exc
    return text.encode("utf-8")


def pdf_available() -> bool:
    """Whether WeasyPrint and its system libraries (pango, harfbuzz) load here."""
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)  # as in render_pdf
    try:
        import weasyprint  # noqa: F401
    except (ImportError, OSError):  # OSError: cffi cannot load pango or harfbuzz
        return False
    return True


@functools.lru_cache(maxsize=1)
def render_environment() -> dict[str, str]:
    """What, besides ``report.json``, decides the PDF's bytes on this machine:
    ``{"pango": "1.50.12", "fonts": "<16 hex>"}``.

    The PDF is byte-deterministic on one machine, but pango's line breaking and the font files
    fontconfig resolves (their glyphs are subset into the PDF) differ between machines; a
    checker that re-renders ``report.pdf`` and gets other bytes can tell "other pango or
    fonts" from "other report" by comparing these. ``fonts``: SHA-256 (16 hex) over the bytes
    of the file each of :data:`FONT_PATTERNS` resolves to, in order (not the paths). Never
    raises: ``"not installed"`` without WeasyPrint, ``"unknown"`` without fontconfig. Cached
    for the process; do not mutate the dict.
    """
    return {"pango": _pango_version(), "fonts": _fonts_digest()}


def _pango_version() -> str:
    """Pango's version through WeasyPrint's own cffi binding: the library that lays out."""
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)  # as in render_pdf
    try:
        from weasyprint.text.ffi import pango
    except (ImportError, OSError):  # OSError: cffi cannot load pango or harfbuzz
        return "not installed"
    try:
        number = int(pango.pango_version())  # 15012 for 1.50.12 (PANGO_VERSION_ENCODE)
    except (AttributeError, TypeError, ValueError):
        return "unknown"
    return f"{number // 10000}.{number // 100 % 100}.{number % 100}"


def _fonts_digest() -> str:
    """SHA-256 (first 16 hex) over the font files fontconfig resolves for FONT_PATTERNS."""
    fc_match = shutil.which("fc-match")
    if fc_match is None:
        return "unknown"
    digest = hashlib.sha256(b"fonts/v1\0")
    for pattern in FONT_PATTERNS:
        try:
            done = subprocess.run(
                [fc_match, "-f", "%{file}", pattern],
                capture_output=True,
                check=True,
                timeout=30,
            )
            data = Path(os.fsdecode(done.stdout)).read_bytes()
        except (OSError, subprocess.SubprocessError, ValueError):
            return "unknown"
        digest.update(pattern.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def render_pdf(
    report: Mapping[str, Any], *, attachments: Mapping[str, bytes] = _NO_ATTACHMENTS
) -> bytes:
    """The report as PDF/A-3b, with ``attachments`` (name → bytes) embedded as files whose
    dates are the period's end, so that the same report gives the same bytes."""
    html = render_html(report).decode("utf-8")
    fixed = _fixed_time(report)
    # WeasyPrint logs every step at INFO ("Step 5 - Creating layout - Page 7"; its default
    # stylesheets on import); under a host that logs INFO (Airflow's structlog), that would
    # bury the command's own output.
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)
    try:
        import weasyprint
    except (ImportError, OSError) as exc:  # OSError: cffi cannot load pango or harfbuzz
        raise EvidenceError(f"cannot render the PDF ({exc}): {_INSTALL}") from exc
    fetcher = _refusing_fetcher(weasyprint)
    files = [
        weasyprint.Attachment(
            string=data,
            name=name,
            description=f"{name} of the evidence pack",
            created=fixed,
            modified=fixed,
            relationship="Data",
            url_fetcher=fetcher,
        )
        for name, data in sorted(attachments.items())
    ]
    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=fetcher)
    pdf = document.write_pdf(pdf_variant="pdf/a-3b", attachments=files)
    if not isinstance(pdf, bytes):  # write_pdf returns bytes when given no target
        raise EvidenceError("WeasyPrint returned no PDF")
    return pdf


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    try:
        import jinja2
    except ImportError as exc:
        raise EvidenceError(f"cannot render the report ({exc}): {_INSTALL}") from exc
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit_core.evidence", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _num
    env.filters["duration"] = _duration
    return env


def _num(value: object) -> str:
    """``1234567`` → ``1,234,567``; anything else as it is (``None`` as a dash)."""
    if value is None:
        return "—"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _duration(seconds: object) -> str:
    """Seconds as an auditor reads them: ``86400`` → ``1 d``, ``109800`` → ``1 d 6 h 30 min``."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return _num(seconds)
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    return " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"


def _derived(report: Mapping[str, Any]) -> dict[str, Any]:
    """The few values the template shows that are not a plain key of ``report.json``."""
    controls: Sequence[Mapping[str, Any]] = report["controls"]
    by_id = {control["id"]: control for control in controls}
    missing = [name for name in report["not_evidenced"] if name not in by_id]
    if missing:
        raise EvidenceError(f"report.json lists unknown controls as not evidenced: {missing}")
    statuses = [control["status"] for control in controls]
    not_evidenced = [by_id[name] for name in report["not_evidenced"]]
    unanchored = [c["chain"] for c in report["chains"] if _unanchored(c)]
    return {
        "controls": {
            "evidenced": statuses.count("evidenced"),
            "not_evidenced": statuses.count("not evidenced"),
            "failed": statuses.count("failed"),
        },
        "not_evidenced": not_evidenced,
        "retention": _retention(report["retention"]),
        "unanchored": unanchored,
        "not_covered": _not_covered(report, not_evidenced, unanchored),
    }


def _not_covered(
    report: Mapping[str, Any],
    not_evidenced: Sequence[Mapping[str, Any]],
    unanchored: Sequence[str],
) -> list[str]:
    """Page 1's list of what the verdict does not cover, so that a PASS is not read as "every
    control is evidenced" (second hostile review of issue 16): the controls without records,
    retention when no bucket was checked, completeness when no orchestrator was compared, and
    chains whose period start no earlier checkpoint anchors."""
    lines: list[str] = []
    if not_evidenced:
        refs = ", ".join(f"{k['framework']} {k['ref']}" for k in not_evidenced)
        lines.append(f"Controls not evidenced by this period's records: {refs}")
    if not report["retention"]["checked"]:
        lines.append("Retention NOT CHECKED (no --s3)")
    if not report["completeness"]["reconcile"]["ran"]:
        lines.append("Completeness: orchestrator runs not compared (no --reconcile)")
    lines += [
        f"Chain {chain}: the start of the period is not anchored by an earlier checkpoint "
        "(none was signed before it)"
        for chain in unanchored
    ]
    return lines


def _unanchored(chain: Mapping[str, Any]) -> bool:
    """Whether no checkpoint signed before the period's first record anchors the period's
    start: no first checkpoint, a first checkpoint of the last one's size (the consistency
    proof then spans nothing), or one created after the chain's first record of the period."""
    first, last = chain["first_checkpoint"], chain["last_checkpoint"]
    if first is None:
        return True
    if last is not None and first["size"] == last["size"]:
        return True
    created, first_ts = _instant(first.get("created")), _instant(chain.get("first_ts"))
    return created is not None and first_ts is not None and created > first_ts


def _instant(value: object) -> dt.datetime | None:
    """An RFC 3339 time of report.json as an aware datetime (the fraction made six digits, as
    Python 3.10 wants; the ledger may write nanoseconds); ``None`` when absent or not a time."""
    if not isinstance(value, str):
        return None
    fraction = re.sub(r"\.(\d+)", lambda m: "." + f"{m.group(1):0<6}"[:6], value.strip())
    text = fraction.replace("Z", "+00:00")
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.timezone.utc)


def _retention(retention: Mapping[str, Any]) -> dict[str, Any]:
    """The retention section's rows (the shape of :mod:`audit_core.evidence.retention`): one
    plain sentence per setting, so the template only lays them out."""
    checked = bool(retention["checked"])
    rows: list[tuple[str, str]] = []
    if checked:
        lock = retention.get("lock_configuration") or {}
        required = retention.get("required") or {}
        rows += [
            ("Bucket", str(retention.get("bucket") or "—")),
            ("Versioning", str(retention.get("versioning") or "—")),
            ("Bucket lock configuration", _lock_sentence(lock)),
            (
                "Required",
                f"{required.get('mode', '—')} mode, retained at least "
                f"{required.get('min_days', '—')} days past each record of the period",
            ),
            (
                "Objects checked",
                f"{_num(retention.get('objects', 0))}: {_num(retention.get('ok', 0))} meet "
                f"the requirement, {_num(retention.get('problem_count', 0))} do not "
                "(all of them in retention/objects.jsonl)",
            ),
        ]
        if retention.get("error") is not None:
            rows.append(("Error", str(retention["error"])))
        uncovered = retention.get("uncovered") or []
        rows.append(
            (
                "Records never shipped",
                "; ".join(
                    f"chain {u['chain']}, seqs {_num(u['from'])} to {_num(u['to'])}"
                    for u in uncovered
                )
                or "none: a segment object holds every record of the period",
            )
        )
    problems: Sequence[Mapping[str, Any]] = retention.get("problems") or []
    total = int(retention.get("problem_count", len(problems)))
    return {
        "checked": checked,
        "verdict": str(retention["verdict"]),
        "reason": retention.get("reason"),
        "rows": rows,
        "problems": problems,
        "problems_hidden": max(total - len(problems), 0),
        "listed": retention.get("listed") or [],
        "objects": retention.get("objects", 0),
    }


def _lock_sentence(lock: Mapping[str, Any]) -> str:
    """``{"enabled": True, "mode": "COMPLIANCE", "days": 200, "years": None}`` → a sentence."""
    if not lock.get("enabled"):
        return "Object Lock is not enabled on the bucket"
    mode = lock.get("mode")
    if mode is None:
        return "Object Lock enabled, no default retention (each object sets its own)"
    span = (
        f"{lock['days']} days"
        if lock.get("days") is not None
        else f"{lock.get('years')} years"
        if lock.get("years") is not None
        else "no period"
    )
    return f"Object Lock enabled, default retention {mode} for {span}"


def _fixed_time(report: Mapping[str, Any]) -> dt.datetime:
    """The period's end as an aware UTC datetime: the dates of the PDF's embedded files."""
    try:
        until = report["period"]["until"]
    except (KeyError, TypeError) as exc:
        raise EvidenceError("report.json has no period.until") from exc
    try:
        parsed = dt.datetime.fromisoformat(str(until).replace("Z", "+00:00"))
    except ValueError as exc:
        raise EvidenceError(f"report.json period.until is not an ISO 8601 time: {until!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.astimezone(dt.timezone.utc)


def _refusing_fetcher(weasyprint: Any) -> Any:
    """A URL fetcher that fetches ``data:`` URLs only: the report loads nothing, and a URL
    that slipped into ``report.json`` must not make the renderer reach the network or disk."""
    fetcher_class = getattr(weasyprint, "URLFetcher", None)
    if fetcher_class is not None:  # WeasyPrint 68+
        return fetcher_class(allowed_protocols={"data"})

    def fetch(url: str) -> Any:  # WeasyPrint 66-67: a plain callable
        if not url.startswith("data:"):
            raise ValueError(f"the evidence report fetches no URL: {url[:60]}")
        return weasyprint.default_url_fetcher(url)

    return fetch
