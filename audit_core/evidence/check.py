"""Checking an evidence pack with nothing but the pack and the verifier key.

In order, each failure named by the file it is in:

1. the zip reads (no damaged entry, no duplicate or unsafe name);
2. ``manifest.sig`` is a C2SP signed note by the trusted key over the manifest's SHA-256 and
   the manifest's period;
3. every file the manifest lists is there with its SHA-256, and nothing else is;
4. per chain, both checkpoints verify with the key, for the chain's origin, at the manifest's
   sizes and roots, and the RFC 9162 consistency proof connects them;
5. the sample's indices are the ones the rule derives from the last root (recomputed here),
   and every sampled and every in-full record is proven included in the last checkpoint, is
   RFC 8785 canonical, is on its chain, and (in-full) belongs to its file's category;
6. ``report.json`` states the manifest's chains, and ``report.html`` is its rendering;
7. the verdict the pack states: an authentic pack that says FAIL is still a failure.

With a ledger, also (:mod:`audit_core.evidence.rederive`): the ledger still extends every
chain's last checkpoint (a ledger rewritten after the pack was made fails here), and the
period derived again from it is the one the pack states (nothing left out).
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from audit_core._jcs import canonical_bytes
from audit_core._merkle import verify_consistency, verify_inclusion
from audit_core._note import Verifier, open_note
from audit_core._record import leaf_hash
from audit_core.checkpoint import Checkpoint, open_checkpoint
from audit_core.errors import AuditError, EvidenceError, ProofError
from audit_core.evidence.collect import record_ts
from audit_core.evidence.controls import IN_FULL, in_full_category
from audit_core.evidence.pack import MANIFEST_FORMAT, manifest_note_text
from audit_core.evidence.rederive import against_ledger
from audit_core.evidence.sample import sample_indices
from audit_core.ledgers import LedgerReader

__all__ = ["PackCheck", "verify_pack"]

#: Far above what a pack of a busy year holds; a bigger entry is refused, not inflated.
MAX_ENTRY_BYTES = 4 << 30
_META = ("manifest.json", "manifest.sig")


@dataclass(slots=True)
class PackCheck:
    """The checks run and the problems found; valid when there are none."""

    checks: list[tuple[str, str]] = field(default_factory=list)  # (result, what)
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.problems

    def ok(self, what: str) -> None:
        self.checks.append(("PASS", what))

    def fail(self, what: str) -> None:
        self.checks.append(("FAIL", what))
        self.problems.append(what)


def verify_pack(
    path: Path, keys: Sequence[Verifier], *, ledger: LedgerReader | None = None
) -> PackCheck:
    """Check the pack at ``path``; raises :class:`EvidenceError` when it is no pack at all
    (not a zip, no manifest), else returns every problem found."""
    out = PackCheck()
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise EvidenceError(f"{path} is not a readable zip file: {exc}") from exc
    with zf:
        names = _names(zf)
        manifest = _manifest(zf, names, keys, out)
        if manifest is None:
            return out
        out.manifest = manifest
        if not _files(zf, names, manifest, out):
            return out
        roots = _chains(zf, manifest, keys, out)
        held = _records(zf, manifest, roots, out)
        report = _report(zf, manifest, out)
    if ledger is not None:
        for passed, what in against_ledger(ledger, manifest, report, roots, held, keys):
            (out.ok if passed else out.fail)(what)
    if manifest.get("verdict") != "PASS":
        out.fail(
            f"the pack states verdict {manifest.get('verdict')!r}: the ledger failed a check "
            "when the pack was made (report.json findings, transcript.txt)"
        )
    return out


def _names(zf: zipfile.ZipFile) -> list[str]:
    names = [i.filename for i in zf.infolist()]
    if len(set(names)) != len(names):
        raise EvidenceError("the pack has duplicate entries: a zip edited to hide a file")
    for name in names:
        if name.startswith("/") or ".." in name.split("/") or "\\" in name:
            raise EvidenceError(f"the pack has an unsafe entry name {name[:80]!r}")
    return names


def _read(zf: zipfile.ZipFile, name: str) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > MAX_ENTRY_BYTES:
        raise EvidenceError(f"{name}: {info.file_size} bytes is more than a pack holds")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:  # a bad CRC: a changed byte
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc


def _manifest(
    zf: zipfile.ZipFile, names: list[str], keys: Sequence[Verifier], out: PackCheck
) -> dict[str, Any] | None:
    for meta in _META:
        if meta not in names:
            raise EvidenceError(f"the pack has no {meta}: not an evidence pack, or cut short")
    raw = _read(zf, "manifest.json")
    try:
        manifest = orjson.loads(raw)
        period = manifest["period"]
        origin, since, until = manifest["origin"], period["since"], period["until"]
        if manifest["format"] != MANIFEST_FORMAT or not isinstance(manifest["files"], dict):
            raise TypeError("format")
        note = _read(zf, "manifest.sig").decode("utf-8")
    except (orjson.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        out.fail(f"manifest.json / manifest.sig: not a {MANIFEST_FORMAT} manifest ({exc!r})")
        return None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        opened = open_note(note, keys, require_all=False)
    except AuditError as exc:
        out.fail(f"manifest.sig: {exc}")
        return None
    expected = manifest_note_text(str(origin), str(since), str(until), digest)
    if opened.text != expected:
        out.fail(
            "manifest.sig: signed for another manifest or period (expected SHA-256 "
            f"{digest} for {since} to {until}; the note says "
            f"{opened.text.splitlines()[-1][:80]!r})"
        )
        return None
    out.ok(f"manifest.sig signed by {', '.join(v.name for v in opened.verified)}")
    return dict(manifest)


def _files(
    zf: zipfile.ZipFile, names: list[str], manifest: Mapping[str, Any], out: PackCheck
) -> bool:
    listed: dict[str, Any] = manifest["files"]
    extra = sorted(set(names) - set(listed) - set(_META))
    good = True
    for name in extra:
        out.fail(f"{name}: in the pack but not in the manifest (added after signing)")
        good = False
    for name, want in sorted(listed.items()):
        if name not in names:
            out.fail(f"{name}: listed in the manifest but missing from the pack")
            good = False
            continue
        try:
            got = _stream_sha256(zf, name)
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


def _stream_sha256(zf: zipfile.ZipFile, name: str) -> str:
    h = hashlib.sha256()
    try:
        with zf.open(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc
    return h.hexdigest()


def _chains(
    zf: zipfile.ZipFile, manifest: Mapping[str, Any], keys: Sequence[Verifier], out: PackCheck
) -> dict[str, Checkpoint]:
    """Each chain's last checkpoint, opened and connected to its first."""
    lasts: dict[str, Checkpoint] = {}
    for c in manifest.get("chains", ()):
        chain, origin = c["chain"], c["origin"]
        first, last = c.get("first_checkpoint"), c.get("last_checkpoint")
        if c["records"] and (first is None or last is None):
            out.fail(f"chain {chain!r}: no signed checkpoint covers the period's records")
            continue
        if first is None or last is None:
            continue
        try:
            old = _checkpoint(zf, first, origin, keys)
            new = _checkpoint(zf, last, origin, keys)
            name = f"proofs/{_file_of(last['file'])}.consistency.json"
            proof = orjson.loads(_read(zf, name))
            hashes = [bytes.fromhex(h) for h in proof["proof"]]
            if (proof["old_size"], proof["new_size"]) != (old.size, new.size):
                raise ProofError(f"{name} is for sizes {proof['old_size']}->{proof['new_size']}")
            if old.size:
                verify_consistency(old.size, new.size, hashes, old.root, new.root)
        except (AuditError, KeyError, ValueError, TypeError, orjson.JSONDecodeError) as exc:
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
        note = _read(zf, name).decode("utf-8")
    except (KeyError, UnicodeDecodeError) as exc:
        raise EvidenceError(f"{name}: missing or not text") from exc
    cp = open_checkpoint(note, keys) if len(keys) == 1 else _open_any(note, keys)
    if cp.origin != origin or cp.size != entry["size"] or cp.root.hex() != entry["root"]:
        raise EvidenceError(
            f"{name} is {cp.describe()}, the manifest expects origin {origin!r} at size "
            f"{entry['size']} root {str(entry['root'])[:16]}… (another period's checkpoint?)"
        )
    return cp


def _open_any(note: str, keys: Sequence[Verifier]) -> Checkpoint:
    return Checkpoint.parse(open_note(note, keys, require_all=False).text)


def _lines(zf: zipfile.ZipFile, name: str) -> Iterator[dict[str, Any]]:
    try:
        with zf.open(name) as f:
            stream: IO[bytes] = f
            for line in stream:
                yield orjson.loads(line)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc
    except orjson.JSONDecodeError as exc:
        raise EvidenceError(f"{name}: a line is not JSON ({exc})") from exc


def _proven(line: Mapping[str, Any], chain: str, root: Checkpoint) -> dict[str, Any]:
    """Check one proof line against ``root``; return the record's value."""
    body = str(line["record"]).encode("utf-8")
    value = orjson.loads(body)
    if not isinstance(value, dict) or canonical_bytes(value) != body:
        raise ProofError("the record is not RFC 8785 canonical JSON")
    seq, size = line["leaf_index"], line["tree_size"]
    if value.get("chain") != chain or value.get("seq") != seq or size != root.size:
        raise ProofError(f"the record is chain {value.get('chain')!r} seq {value.get('seq')}")
    hashes = [bytes.fromhex(h) for h in line["audit_path"]]
    verify_inclusion(leaf_hash(body), seq, size, hashes, root.root)
    return value


def _records(
    zf: zipfile.ZipFile,
    manifest: Mapping[str, Any],
    roots: Mapping[str, Checkpoint],
    out: PackCheck,
) -> dict[str, set[tuple[str, int]]]:
    """Check the sample and the in-full files; returns the in-full records' (chain, seq)."""
    held: dict[str, set[tuple[str, int]]] = {c: set() for c in IN_FULL}
    by_chain = {c["chain"]: c for c in manifest.get("chains", ())}
    since, until = manifest["period"]["since"], manifest["period"]["until"]
    for chain, root in roots.items():
        c = by_chain[chain]
        name = f"proofs/{_file_of(c['last_checkpoint']['file'])}.sample.jsonl"
        want = sample_indices(root.root, c["lo"], c["hi"], c["sample"]["n"])
        got: list[int] = []
        try:
            for _i, line in enumerate(_lines(zf, name)):
                got.append(line["leaf_index"])
                _proven(line, chain, root)
        except (AuditError, KeyError, ValueError, TypeError) as exc:
            out.fail(f"{name} line {len(got)}: {exc}")
            continue
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
            out.fail(
                f"{name}: sampled seqs are not the rule's for root {root.root.hex()[:16]}… "
                f"(first difference at item {at if at is not None else min(len(got), len(want))}; "
                f"{len(got)} given, {len(want)} expected): the sample was chosen, not derived"
            )
            continue
        out.ok(f"chain {chain!r}: {len(got)} sampled records proven (indices recomputed)")
    for category in IN_FULL:
        name = f"records/{category}.jsonl"
        n = 0
        try:
            for line in _lines(zf, name):
                n += 1
                chain = line["chain"]
                if chain not in roots:
                    raise ProofError(f"chain {chain!r} has no verified checkpoint in the pack")
                value = _proven(line, chain, roots[chain])
                if in_full_category(str(value.get("event"))) != category:
                    raise ProofError(f"a {value.get('event')!r} record is not a {category} record")
                ts = record_ts(str(line["record"]).encode())
                if ts is None or not since <= ts < until:
                    raise ProofError(f"record time {ts} is outside the period")
                held[category].add((chain, line["leaf_index"]))
        except (AuditError, KeyError, ValueError, TypeError) as exc:
            out.fail(f"{name} line {n}: {exc}")
            continue
        out.ok(f"{name}: {n} records proven included")
    return held


def _report(zf: zipfile.ZipFile, manifest: Mapping[str, Any], out: PackCheck) -> dict[str, Any]:
    """report.json, checked against the manifest and report.html ({} when unreadable)."""
    report: dict[str, Any] = {}
    try:
        report = orjson.loads(_read(zf, "report.json"))
        stated = {(c["chain"], c["size"], c["root"]) for c in report["chains"]}
    except (KeyError, TypeError, orjson.JSONDecodeError) as exc:
        out.fail(f"report.json: unreadable ({exc!r})")
        return {}
    signed = {
        (c["chain"], c["last_checkpoint"]["size"], c["last_checkpoint"]["root"])
        for c in manifest.get("chains", ())
        if c.get("last_checkpoint")
    }
    if not signed <= stated or report.get("verdict") != manifest.get("verdict"):
        out.fail("report.json: its chains or verdict differ from the signed manifest's")
        return report
    try:
        from audit_core.evidence.render import render_html

        same = render_html(report) == _read(zf, "report.html")
    except (ImportError, AuditError):  # jinja2 missing: the hashes above still bind the file
        out.checks.append(("SKIP", "report.html re-rendered (jinja2 not installed)"))
        return report
    if not same:
        out.fail("report.html is not the rendering of report.json")
        return report
    out.ok("report.json matches the manifest; report.html is its rendering")
    return report
