"""Making an evidence pack: collect, render, sign the manifest, write one deterministic zip.

The pack holds no wall-clock time (only the period and the checkpoints' own times) and its zip
entries carry a fixed date, so two packs of one period of an unchanged ledger are
byte-identical: an auditor can compare hashes. ``manifest.json`` lists the SHA-256 of every
other file; ``manifest.sig`` is a C2SP signed note (c2sp.org/signed-note) over the manifest's
SHA-256 by the key that signs the ledger's checkpoints.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import orjson

from audit_core._note import Signer, Verifier, sign_note
from audit_core.errors import ConfigError
from audit_core.evidence import render
from audit_core.evidence.collect import (
    ChainEvidence,
    LatestTs,
    PackRequest,
    Transcript,
    bounds,
    cadence_gaps,
    chain_file,
    collect_chain,
    latest_ts,
    period_days,
    proof_lines,
    prove_chain,
    verify_chains,
    write_lines,
)
from audit_core.evidence.controls import IN_FULL, ControlFacts, ControlTally, not_evidenced
from audit_core.evidence.render import render_html, render_pdf
from audit_core.evidence.retention import ChainSpan, RetentionResult, not_checked
from audit_core.evidence.sample import SAMPLE_RULE
from audit_core.ledgers import LedgerReader

__all__ = [
    "MANIFEST_FORMAT",
    "NOTE_FORMAT",
    "PackResult",
    "make_pack",
    "manifest_note_text",
    "transcript_text",
    "zip_entries",
]

MANIFEST_FORMAT = "workflow-audit/evidence/v1"
REPORT_FORMAT = "workflow-audit/evidence-report/v1"
#: The signed note's second line; its first names the signer's origin (``ORIGIN/evidence``).
NOTE_FORMAT = MANIFEST_FORMAT
#: Every zip entry's date: ZIP's earliest (MS-DOS time starts in 1980), never the clock.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

#: Runs the orchestrator ran with no record: a callable of (since, until) giving the report's
#: ``completeness.reconcile`` section (the CLI builds it from an installed reconciler).
Reconcile = Callable[[str, str], dict[str, Any]]
#: The bucket's Object Lock of the period's segments (the CLI builds it from ``--s3``).
Retention = Callable[[Sequence[ChainSpan], LatestTs], RetentionResult]


@dataclass(frozen=True, slots=True)
class PackResult:
    """What was written: the pack, its manifest's SHA-256 and the verdict it states."""

    path: Path
    manifest_sha256: str
    verdict: str
    findings: tuple[str, ...]
    records: int
    chains: tuple[str, ...]


def manifest_note_text(origin: str, since: str, until: str, digest: str) -> str:
    """The signed note's text: ``ORIGIN/evidence``, the format, the period, the digest.

    >>> print(manifest_note_text("acme", "a", "b", "00"), end="")
    acme/evidence
    workflow-audit/evidence/v1
    period a b
    sha256 00
    """
    return f"{origin}/evidence\n{NOTE_FORMAT}\nperiod {since} {until}\nsha256 {digest}\n"


def versions() -> dict[str, str]:
    """The versions the pack was made with (the transcript's last lines)."""
    out = {"python": platform.python_version()}
    for name in ("workflow-audit", "jinja2", "weasyprint"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    # the template, pango and the fonts: what else makes report.html's and report.pdf's bytes
    # (verify-evidence renders them again only where they are the same)
    out["template"] = template_digest()
    out.update(render.render_environment())
    return out


def template_digest() -> str:
    """SHA-256 (16 hex) of the report's template files: a development build changes them
    under one version number."""
    h = hashlib.sha256()
    for path in sorted((Path(render.__file__).parent / "templates").iterdir()):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def make_pack(
    ledger: LedgerReader,
    request: PackRequest,
    output: Path,
    *,
    signer: Signer,
    origin: str,
    keys: Sequence[Verifier],
    ledger_name: str,
    reconcile: Reconcile | None = None,
    retention: Retention | None = None,
    redaction_digest: str | None = None,
) -> PackResult:
    """Write the pack of ``request``'s period to ``output`` (atomically) and return it.

    ``origin`` is the checkpoints' origin without ``/CHAIN``; ``keys`` the verifier keys the
    ledger's checkpoints must verify with. A failed check does not stop the pack: it is the
    evidence, stated as FAIL with its findings."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".evidence-", dir=output.parent) as tmp:
        work = Path(tmp)
        report = _collect(ledger, request, work, origin, keys, ledger_name, reconcile, retention)
        report_bytes = orjson.dumps(report, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
        (work / "report.json").write_bytes(report_bytes + b"\n")
        (work / "report.html").write_bytes(render_html(report))
        (work / "report.pdf").write_bytes(
            render_pdf(report, attachments={"report.json": report_bytes + b"\n"})
        )
        (work / "transcript.txt").write_text(transcript_text(report), encoding="utf-8")
        manifest = _manifest(report, work, origin, keys, redaction_digest, request)
        manifest_bytes = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
        (work / "manifest.json").write_bytes(manifest_bytes + b"\n")
        digest = hashlib.sha256(manifest_bytes + b"\n").hexdigest()
        note = sign_note(manifest_note_text(origin, request.since, request.until, digest), [signer])
        (work / "manifest.sig").write_text(note, encoding="utf-8")
        partial_zip = work / "pack.zip"
        _write_zip(work, partial_zip)
        os.replace(partial_zip, output)
    return PackResult(
        path=output,
        manifest_sha256=digest,
        verdict=report["verdict"],
        findings=tuple(report["findings"]),
        records=sum(c["records"] for c in report["chains"]),
        chains=tuple(c["chain"] for c in report["chains"]),
    )


def _collect(
    ledger: LedgerReader,
    request: PackRequest,
    work: Path,
    origin: str,
    keys: Sequence[Verifier],
    ledger_name: str,
    reconcile: Reconcile | None,
    retention: Retention | None,
) -> dict[str, Any]:
    t = Transcript()
    tally = ControlTally(max_listed=request.max_listed)
    with ledger.snapshot() as view:
        names = list(request.chains) or view.chains()
        evs = [collect_chain(view, chain, request, tally) for chain in names]
        if not request.chains:  # every chain: those the period has records of
            evs = [ev for ev in evs if ev.records]
        if not any(ev.records for ev in evs):  # a pack of nothing would still say PASS
            raise ConfigError(
                f"no records from {request.since} to {request.until}"
                + (f" on chain(s) {', '.join(request.chains)}" if request.chains else "")
                + ": nothing to evidence"
            )
        for ev in evs:
            if ev.records:
                prove_chain(view, ev, f"{origin}/{ev.chain}", keys, request, t)
            _write_chain_files(view, ev, work)
        verification = Transcript()
        heads = verify_chains(view, evs, keys, verification)
        t.lines[:0] = verification.lines  # verification first, as the auditor reads it
        in_full = _write_in_full(view, evs, work)
        spans = [ChainSpan(ev.chain, ev.lo, ev.hi) for ev in evs if ev.records]
        retained = retention(spans, latest_ts(view)) if retention is not None else None
    if retained is None:
        section = not_checked("no --s3 bucket given: Object Lock retention was not checked")
        t.add("retention (S3 Object Lock)", "SKIP", section["reason"])
    else:
        section = retained.section
        t.add("retention (S3 Object Lock)", section["verdict"], section["reason"])
        write_lines(
            work / "retention" / "objects.jsonl",
            (orjson.dumps(o, option=orjson.OPT_SORT_KEYS) + b"\n" for o in retained.objects),
        )
    completeness = _completeness(evs, request, reconcile, t)
    signed = sum(2 for ev in evs if ev.consistency is not None)
    facts = ControlFacts(
        verified=not verification.findings and all(ev.last for ev in evs if ev.records),
        consistent=all(ev.consistency is not None for ev in evs if ev.records),
        signed_checkpoints=signed,
        verifier_keys=tuple(sorted({k.name for k in keys})),
        retention=str(section["verdict"]),
        retention_detail=str(section["reason"]),
        records=sum(ev.records for ev in evs),
    )
    controls = tally.result(facts)
    findings = t.findings
    return {
        "format": REPORT_FORMAT,
        "tool": {"name": "workflow-audit", "version": versions()["workflow-audit"]},
        "versions": versions(),
        "ledger": ledger_name,
        "period": {
            "since": request.since,
            "until": request.until,
            "days": period_days(request.since, request.until),
        },
        "verdict": "FAIL" if findings else "PASS",
        "findings": findings,
        "requested_chains": list(request.chains),
        "chains": [
            ev.report(f"{origin}/{ev.chain}", heads.get(ev.chain), request.sample) for ev in evs
        ],
        "controls": controls,
        "not_evidenced": not_evidenced(controls),
        "completeness": completeness,
        "retention": section,
        "in_full": in_full,
        "transcript": t.lines,
        "sample_rule": SAMPLE_RULE,
    }


def _write_chain_files(view: LedgerReader, ev: ChainEvidence, work: Path) -> None:
    name = chain_file(ev.chain)
    for which, cp in (("first", ev.first), ("last", ev.last)):
        if cp is not None:
            path = work / "checkpoints" / f"{name}.{which}.note"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(cp.note, encoding="utf-8")
    if ev.first is not None and ev.last is not None and ev.consistency is not None:
        proof = {
            "chain": ev.chain,
            "old_size": ev.first.size,
            "new_size": ev.last.size,
            "proof": [h.hex() for h in ev.consistency],
        }
        path = work / "proofs" / f"{name}.consistency.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(proof, option=orjson.OPT_SORT_KEYS) + b"\n")
    if ev.last is not None and ev.consistency is not None:
        write_lines(
            work / "proofs" / f"{name}.sample.jsonl",
            proof_lines(view, ev.chain, ev.sample, ev.last.size),
        )
        pinned = bounds(ev)
        write_lines(
            work / "proofs" / f"{name}.bounds.jsonl",
            proof_lines(
                view, ev.chain, [s for _, s in pinned], ev.last.size, [d for d, _ in pinned]
            ),
        )


def _write_in_full(
    view: LedgerReader, evs: Sequence[ChainEvidence], work: Path
) -> list[dict[str, Any]]:
    out = []
    for category in IN_FULL:
        path = work / "records" / f"{category}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        count = 0
        for ev in evs:
            if ev.last is None or ev.consistency is None:
                continue
            seqs = ev.in_full[category]
            count += write_lines(path, proof_lines(view, ev.chain, seqs, ev.last.size))
        out.append({"category": category, "count": count, "file": f"records/{category}.jsonl"})
    return out


def _completeness(
    evs: Sequence[ChainEvidence],
    request: PackRequest,
    reconcile: Reconcile | None,
    t: Transcript,
) -> dict[str, Any]:
    if reconcile is None:
        rec: dict[str, Any] = {
            "ran": False,
            "source": None,
            "expected": 0,
            "missing": 0,
            "listed": [],
            "error": None,
            "note": "not run: pass --reconcile airflow|prefect to compare with the orchestrator",
        }
        t.add("completeness: orchestrator runs without records", "SKIP", rec["note"])
    else:
        rec = reconcile(request.since, request.until)
        if rec.get("error"):
            t.add("completeness: orchestrator runs without records", "FAIL", str(rec["error"]))
        else:
            result = "FAIL" if rec["missing"] else "PASS"
            t.add(
                "completeness: orchestrator runs without records",
                result,
                f"{rec['expected']} task or flow run(s) ended in the period, "
                f"{rec['missing']} without a record",
            )
    gap_count = sum(ev.gap_count for ev in evs)
    gaps = [g for ev in evs for g in ev.gaps][: request.max_listed]
    t.add(
        "completeness: source gaps",
        "WARN" if gap_count else "PASS",
        f"{gap_count} source.gap record(s): events the orchestrator dropped before they were read"
        if gap_count
        else "no source.gap records in the period",
    )
    cadence = [g for ev in evs for g in cadence_gaps(ev, request.until, request.cadence_s)]
    t.add(
        "completeness: checkpoint cadence",
        "WARN" if cadence else "PASS",
        f"{len(cadence)} span(s) of records unsigned for more than {request.cadence_s} s"
        if cadence
        else f"no records waited more than {request.cadence_s} s for a signed checkpoint",
    )
    return {
        "reconcile": rec,
        "gaps": {"count": gap_count, "listed": gaps},
        "cadence": {
            "threshold_s": request.cadence_s,
            "count": len(cadence),
            "listed": cadence[: request.max_listed],
        },
    }


def transcript_text(report: Mapping[str, Any]) -> str:
    """``transcript.txt``: the report's checks one a line, the verdict, the versions (pure:
    ``verify-evidence`` renders it again from ``report.json`` and compares)."""
    lines = [f"workflow-audit evidence pack: period {report['period']['since']} to "]
    lines[0] += f"{report['period']['until']}, ledger {report['ledger']}"
    lines += [f"{x['result']:<4} {x['check']}: {x['detail']}" for x in report["transcript"]]
    lines.append(f"VERDICT {report['verdict']}")
    lines += [f"version {k} {v}" for k, v in sorted(report["versions"].items())]
    return "\n".join(lines) + "\n"


def _manifest(
    report: Mapping[str, Any],
    work: Path,
    origin: str,
    keys: Sequence[Verifier],
    redaction_digest: str | None,
    request: PackRequest,
) -> dict[str, Any]:
    files = {
        path.relative_to(work).as_posix(): _sha256(path)
        for path in sorted(work.rglob("*"))
        if path.is_file()
    }
    chains = [
        {
            "chain": c["chain"],
            "origin": c["origin"],
            "records": c["records"],
            "lo": c["lo"],
            "hi": c["hi"],
            "first_checkpoint": _brief(c["first_checkpoint"]),
            "last_checkpoint": _brief(c["last_checkpoint"]),
            "sample": {"n": request.sample},
        }
        for c in report["chains"]
    ]
    return {
        "format": MANIFEST_FORMAT,
        "tool": report["tool"],
        "period": {"since": request.since, "until": request.until},
        "origin": origin,
        "origins": sorted(c["origin"] for c in chains),
        # [] = every chain with records in the period (`verify-evidence --ledger` checks that
        # none was left out); else the chains asked for with --chain.
        "requested_chains": list(request.chains),
        "chains": chains,
        "verifier_keys": sorted(str(k) for k in keys),
        "redaction_policy_digest": redaction_digest,
        "sample_rule": SAMPLE_RULE,
        "verdict": report["verdict"],
        "files": files,
    }


def _brief(cp: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if cp is None else {"size": cp["size"], "root": cp["root"], "file": cp["file"]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def zip_entries(work: Path) -> list[str]:
    """The pack's entries in zip order: the manifest and its signature first, then by name."""
    names = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    head = [n for n in ("manifest.json", "manifest.sig") if n in names]
    return head + [n for n in names if n not in head and n != "pack.zip"]


def _write_zip(work: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        for name in zip_entries(work):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # Unix: the mode above means what it says
            with (work / name).open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
