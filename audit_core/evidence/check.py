"""Checking an evidence pack with nothing but the pack and the verifier key.

The operator holds the signing key and can re-sign anything: every check below holds for a
re-signed pack too. In order, each failure named by the file it is in:

1. the zip reads: no damaged, encrypted, duplicate or unsafely named entry, no compression but
   stored/deflated; the manifest and its signature are read bounded (16 MiB), every other
   entry read into memory at most 256 MiB, the rest streamed (a zip bomb costs nothing);
2. ``manifest.sig`` is a C2SP signed note by the trusted key over the manifest's SHA-256 and
   the manifest's period, and the manifest is the shape a pack writes
   (:func:`~audit_core.evidence.rules.manifest_problems`, one problem per field);
3. every file the manifest lists is there with its SHA-256, and nothing else is;
4. per chain, both checkpoints verify with the key, for the chain's origin, at the manifest's
   sizes and roots, and the RFC 9162 consistency proof connects them;
5. the sample's indices are the ones the rule derives from the last root (recomputed here),
   and every sampled, in-full and bounds record is proven included in the last checkpoint, is
   RFC 8785 canonical and on its chain; each in-full file holds its category's records once,
   in seq order, inside the range, every sampled record of its category among them; the
   records just outside the range are outside the period, its first and last inside;
6. ``report.json`` is of bounded size (before anything renders it) and states the manifest's
   period, chains and verdict (FAIL exactly when it has findings), the in-full counts, each
   chain's sample as proven, controls whose listed in-full records are in the in-full files;
   ``report.pdf`` carries it (PDF/A-3 attachment, on any machine); ``transcript.txt``,
   ``report.html`` and ``report.pdf`` are its renderings, re-rendered where the render
   environment report.json states (workflow-audit, jinja2; weasyprint, pango, fonts for the
   PDF) is this machine's, else a SKIP in :attr:`PackCheck.skipped`;
7. the verdict the pack states: an authentic pack that says FAIL is still a failure.

With a ledger, also (:mod:`audit_core.evidence.rederive`): the ledger still extends every
chain's last checkpoint (a ledger rewritten after the pack was made fails here), and the
period derived again from it is the one the pack states (nothing left out).
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from audit_core._merkle import verify_consistency
from audit_core._note import Verifier, open_note
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.errors import AuditError, EvidenceError, ProofError
from audit_core.evidence.controls import IN_FULL, in_full_category
from audit_core.evidence.pack import MANIFEST_FORMAT, manifest_note_text, transcript_text
from audit_core.evidence.rederive import against_ledger
from audit_core.evidence.renderings import rendering_checks
from audit_core.evidence.rules import (
    bounds_problems,
    in_full_problems,
    in_period,
    left_out,
    manifest_problems,
    proven,
    report_problems,
    report_size_problems,
    sample_stream,
)
from audit_core.evidence.unzip import (
    MAX_META_BYTES,
    carries,
    entry_names,
    json_lines,
    read_entry,
    stream_sha256,
)
from audit_core.ledgers import LedgerReader

__all__ = ["PackCheck", "verify_pack"]

#: An honest report.json is small (every list in it is capped): a bigger one is not rendered.
MAX_RENDERED_BYTES = 16 << 20
_META = ("manifest.json", "manifest.sig")
_SHAPE = (KeyError, TypeError, ValueError, AttributeError)


@dataclass(slots=True)
class PackCheck:
    """The checks run and the problems found; valid when there are none."""

    checks: list[tuple[str, str]] = field(default_factory=list)  # (result, what)
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def skipped(self) -> list[str]:
        """What was not checked and why (the CLI prints these whatever its verbosity)."""
        return [what for result, what in self.checks if result == "SKIP"]

    def ok(self, what: str) -> None:
        self.checks.append(("PASS", what))

    def skip(self, what: str) -> None:
        self.checks.append(("SKIP", what))

    def fail(self, what: str) -> None:
        self.checks.append(("FAIL", what))
        self.problems.append(what)


def verify_pack(
    path: Path,
    keys: Sequence[Verifier],
    *,
    ledger: LedgerReader | None = None,
    pdf: bool = True,
) -> PackCheck:
    """Check the pack at ``path``; raises :class:`EvidenceError` when it is no pack at all
    (not a zip, no manifest, an entry no pack has), else returns every problem found.
    ``pdf=False`` does not render report.pdf again (its SHA-256 is still checked: ~1.5 s
    less)."""
    out = PackCheck()
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EvidenceError(f"{path} is not a readable zip file: {exc}") from exc
    with zf:
        names = entry_names(zf)
        manifest = _manifest(zf, names, keys, out)
        if manifest is None:
            return out
        out.manifest = manifest
        if not _files(zf, names, manifest, out):
            return out
        roots = _chains(zf, manifest, keys, out)
        held, counts, samples = _records(zf, manifest, roots, out)
        _bounds(zf, manifest, roots, out)
        proven_in_full = {c: held[c] for c in counts}
        report = _report(zf, manifest, (counts, samples, proven_in_full), out, pdf=pdf)
    if ledger is not None:
        for passed, what in against_ledger(ledger, manifest, report, roots, held, keys):
            (out.ok if passed else out.fail)(what)
    if manifest["verdict"] != "PASS":
        out.fail(
            f"the pack states verdict {manifest['verdict']!r}: the ledger failed a check "
            "when the pack was made (report.json findings, transcript.txt)"
        )
    return out


def _manifest(
    zf: zipfile.ZipFile, names: list[str], keys: Sequence[Verifier], out: PackCheck
) -> dict[str, Any] | None:
    for meta in _META:
        if meta not in names:
            raise EvidenceError(f"the pack has no {meta}: not an evidence pack, or cut short")
    raw = read_entry(zf, "manifest.json", MAX_META_BYTES)
    note = read_entry(zf, "manifest.sig", MAX_META_BYTES)
    try:
        manifest = orjson.loads(raw)
        period = manifest["period"]
        origin, since, until = manifest["origin"], period["since"], period["until"]
        if manifest["format"] != MANIFEST_FORMAT:
            raise ValueError(f"format {str(manifest['format'])[:80]!r}")
        opened = open_note(note.decode("utf-8"), keys, require_all=False)
    except AuditError as exc:
        out.fail(f"manifest.sig: {exc}")
        return None
    except (orjson.JSONDecodeError, UnicodeDecodeError, *_SHAPE) as exc:
        out.fail(f"manifest.json / manifest.sig: not a {MANIFEST_FORMAT} manifest ({exc!r})")
        return None
    digest = hashlib.sha256(raw).hexdigest()
    expected = manifest_note_text(str(origin), str(since), str(until), digest)
    if opened.text != expected:
        out.fail(
            "manifest.sig: signed for another manifest or period (expected SHA-256 "
            f"{digest} for {since} to {until}; the note says "
            f"{opened.text.splitlines()[-1][:80]!r})"
        )
        return None
    out.ok(f"manifest.sig signed by {', '.join(v.name for v in opened.verified)}")
    problems = manifest_problems(manifest)
    for problem in problems[:50]:
        out.fail(problem)
    return None if problems else dict(manifest)


def _files(
    zf: zipfile.ZipFile, names: list[str], manifest: Mapping[str, Any], out: PackCheck
) -> bool:
    listed: dict[str, str] = manifest["files"]
    extra = sorted(set(names) - set(listed) - set(_META))
    for name in extra:
        out.fail(f"{name}: in the pack but not in the manifest (added after signing)")
    good = not extra
    for name, want in sorted(listed.items()):
        if name not in names:
            out.fail(f"{name}: listed in the manifest but missing from the pack")
            good = False
            continue
        try:
            got = stream_sha256(zf, name)
        except EvidenceError as exc:
            out.fail(str(exc))
            good = False
            continue
        if got != want:
            out.fail(f"{name}: SHA-256 {got}, the manifest says {want} (the file was changed)")
            good = False
    if good:
        out.ok(f"{len(listed)} files match the manifest's SHA-256")
    return good


def _chains(
    zf: zipfile.ZipFile, manifest: Mapping[str, Any], keys: Sequence[Verifier], out: PackCheck
) -> dict[str, Checkpoint]:
    """Each chain's last checkpoint, opened and connected to its first."""
    lasts: dict[str, Checkpoint] = {}
    for c in manifest["chains"]:
        chain, origin = c["chain"], c["origin"]
        first, last = c["first_checkpoint"], c["last_checkpoint"]
        if c["records"] and (first is None or last is None):
            out.fail(f"chain {chain!r}: no signed checkpoint covers the period's records")
            continue
        if first is None or last is None:
            continue
        try:
            old = _checkpoint(zf, first, origin, keys)
            new = _checkpoint(zf, last, origin, keys)
            name = f"proofs/{_file_of(last['file'])}.consistency.json"
            proof = orjson.loads(read_entry(zf, name))
            hashes = [bytes.fromhex(h) for h in proof["proof"]]
            if (proof["old_size"], proof["new_size"]) != (old.size, new.size):
                raise ProofError(f"{name} is for sizes {proof['old_size']}->{proof['new_size']}")
            if old.size:
                verify_consistency(old.size, new.size, hashes, old.root, new.root)
        except EvidenceError as exc:  # names its file
            out.fail(str(exc))
            continue
        except (AuditError, orjson.JSONDecodeError, *_SHAPE) as exc:
            out.fail(f"chain {chain!r}: {exc}")
            continue
        lasts[chain] = new
        out.ok(f"chain {chain!r}: checkpoints {old.size} and {new.size} verify and are consistent")
    return lasts


def _file_of(note_file: str) -> str:
    """``checkpoints/NAME.last.note`` -> ``NAME``."""
    return note_file.rsplit("/", 1)[-1].rsplit(".", 2)[0]


def _checkpoint(
    zf: zipfile.ZipFile, entry: Mapping[str, Any], origin: str, keys: Sequence[Verifier]
) -> Checkpoint:
    name = entry["file"]
    try:
        note = read_entry(zf, name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EvidenceError(f"{name}: not text") from exc
    cp = open_checkpoint(note, keys) if len(keys) == 1 else _open_any(note, keys)
    if cp.origin != origin or cp.size != entry["size"] or cp.root.hex() != entry["root"]:
        raise EvidenceError(
            f"{name} is {cp.describe()}, the manifest expects origin {origin!r} at size "
            f"{entry['size']} root {str(entry['root'])[:16]}… (another period's checkpoint?)"
        )
    return cp


def _open_any(note: str, keys: Sequence[Verifier]) -> Checkpoint:
    return Checkpoint.parse(open_note(note, keys, require_all=False).text)


def _records(
    zf: zipfile.ZipFile,
    manifest: Mapping[str, Any],
    roots: Mapping[str, Checkpoint],
    out: PackCheck,
) -> tuple[dict[str, set[tuple[str, int]]], dict[str, int], dict[str, tuple[int, int]]]:
    """Check the sample and the in-full files; returns the in-full records' (chain, seq),
    the line count of each in-full file that checked out and each chain's sample (lines,
    distinct seqs) that did."""
    held: dict[str, set[tuple[str, int]]] = {c: set() for c in IN_FULL}
    sampled: dict[str, list[tuple[str, int]]] = {c: [] for c in IN_FULL}
    by_chain = {c["chain"]: c for c in manifest["chains"]}
    period = (manifest["period"]["since"], manifest["period"]["until"])
    samples: dict[str, tuple[int, int]] = {}
    for chain, root in roots.items():
        c = by_chain[chain]
        name = f"proofs/{_file_of(c['last_checkpoint']['file'])}.sample.jsonl"
        want = sample_stream(root.root, c["lo"], c["hi"], c["sample"]["n"])
        got: list[int] = []
        try:
            for line in json_lines(zf, name):
                if line["leaf_index"] != next(want, None):
                    break
                value = proven(line, chain, root)
                got.append(line["leaf_index"])
                category = in_full_category(str(value.get("event")))
                if category is not None and in_period(value, period):
                    sampled[category].append((chain, value["seq"]))
            else:
                if next(want, None) is None:
                    samples[chain] = (len(got), len(set(got)))
                    out.ok(
                        f"chain {chain!r}: {len(got)} sampled records proven (indices recomputed)"
                    )
                    continue
        except (AuditError, *_SHAPE) as exc:
            out.fail(f"{name} line {len(got)}: {exc}")
            continue
        out.fail(
            f"{name}: sampled seqs are not the rule's for root {root.root.hex()[:16]}… "
            f"(first difference at item {len(got)} of {c['sample']['n']} requested): the "
            "sample was chosen, not derived"
        )
    ranges = {c["chain"]: (c["lo"], c["hi"]) for c in manifest["chains"]}
    counts: dict[str, int] = {}
    for category in IN_FULL:
        name = f"records/{category}.jsonl"
        seen: list[tuple[str, int]] = []
        try:
            for line in json_lines(zf, name):
                chain = line["chain"]
                if chain not in roots:
                    raise ProofError(f"chain {chain!r} has no verified checkpoint in the pack")
                value = proven(line, chain, roots[chain])
                if in_full_category(str(value.get("event"))) != category:
                    raise ProofError(f"a {value.get('event')!r} record is not a {category} record")
                if not in_period(value, period):
                    raise ProofError(f"record time {value.get('ts')} is outside the period")
                seen.append((chain, value["seq"]))
        except (AuditError, *_SHAPE) as exc:
            out.fail(f"{name} line {len(seen)}: {exc}")
            continue
        held[category] = set(seen)
        problems = in_full_problems(name, seen, ranges) + left_out(
            name, held[category], sampled[category]
        )
        for problem in problems[:20]:
            out.fail(problem)
        if not problems:
            counts[category] = len(seen)
            out.ok(f"{name}: {len(seen)} records proven included, in order, in the range")
    return held, counts, samples


def _bounds(
    zf: zipfile.ZipFile,
    manifest: Mapping[str, Any],
    roots: Mapping[str, Checkpoint],
    out: PackCheck,
) -> None:
    """The records just outside each chain's range, and its first and last, proven."""
    period = (manifest["period"]["since"], manifest["period"]["until"])
    for c in manifest["chains"]:
        chain, root = c["chain"], roots.get(c["chain"])
        if root is None:
            continue
        name = f"proofs/{_file_of(c['last_checkpoint']['file'])}.bounds.jsonl"
        lines: list[tuple[str, int, str | None]] = []
        try:
            for line in json_lines(zf, name):
                value = proven(line, chain, root)
                ts = value.get("ts")
                lines.append((str(line["side"]), value["seq"], ts if isinstance(ts, str) else None))
                if len(lines) > 4:
                    break
        except (AuditError, *_SHAPE) as exc:
            out.fail(f"{name} line {len(lines)}: {exc}")
            continue
        problems = bounds_problems(name, lines, c["lo"], c["hi"], root.size, period)
        for problem in problems:
            out.fail(problem)
        if not problems:
            out.ok(f"chain {chain!r}: the records around [{c['lo']}, {c['hi']}) are proven")


def _report(
    zf: zipfile.ZipFile,
    manifest: Mapping[str, Any],
    found: tuple[
        Mapping[str, int], Mapping[str, tuple[int, int]], Mapping[str, set[tuple[str, int]]]
    ],
    out: PackCheck,
    *,
    pdf: bool = True,
) -> dict[str, Any]:
    """report.json against the manifest and what the pack's files hold (in-full counts,
    samples, in-full records), then its renderings ({} when unreadable or oversized)."""
    counts, samples, held = found
    try:
        raw = read_entry(zf, "report.json", MAX_RENDERED_BYTES)
        report = orjson.loads(raw)
        if not isinstance(report, dict):
            raise TypeError("not a JSON object")
        oversized = report_size_problems(report)
        problems = oversized or report_problems(
            report, manifest, counts, samples=samples, held=held
        )
        transcript = b"" if oversized else transcript_text(report).encode("utf-8")
    except EvidenceError as exc:
        out.fail(str(exc))
        return {}
    except (orjson.JSONDecodeError, *_SHAPE) as exc:
        out.fail(f"report.json: not the shape a pack writes ({exc!r})")
        return {}
    for problem in problems:
        out.fail(problem)
    if oversized:  # rendering it would cost minutes and GBs: nothing more is read
        return {}
    try:
        if read_entry(zf, "transcript.txt") != transcript:
            out.fail("transcript.txt is not the transcript report.json states")
        carried, what = carries(read_entry(zf, "report.pdf"), raw, "report.json")
        (out.ok if carried else out.fail)(what)
    except EvidenceError as exc:
        out.fail(str(exc))
    if not problems:
        out.ok(
            "report.json states the manifest's period, chains, verdict, samples and in-full "
            "counts, and its controls' records are in the in-full files"
        )
    apply = {"PASS": out.ok, "FAIL": out.fail, "SKIP": out.skip}
    for result, what in rendering_checks(zf, report, raw, pdf=pdf):
        apply[result](what)
    return report
