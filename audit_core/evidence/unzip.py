"""Reading an evidence pack's zip without trusting it (:mod:`audit_core.evidence.check`).

A pack comes from whoever holds the signing key, so the zip itself may be hostile: entries
that are encrypted or use a compression method a pack never does are refused before anything
is read (APPNOTE.TXT 4.4.4 bit 0, 4.4.5), the manifest and its signature are read bounded
(16 MiB), every other entry read into memory at most 256 MiB whatever its header says, and
the rest streamed: a zip bomb costs a bounded read, not memory. A name the zip lacks is
"missing from the pack", a bad CRC "damaged in the zip": each an
:class:`~audit_core.errors.EvidenceError` naming the entry.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import orjson

from audit_core.errors import EvidenceError

__all__ = [
    "DAMAGE",
    "MAX_ENTRY_BYTES",
    "MAX_LINE_BYTES",
    "MAX_META_BYTES",
    "MAX_READ_BYTES",
    "carries",
    "embedded_files",
    "entry_names",
    "json_lines",
    "read_entry",
    "stream_sha256",
]

#: The manifest and its signature: a few KiB per chain; more is no pack's.
MAX_META_BYTES = 16 << 20
#: Any other entry read into memory (report.json/html, notes, consistency proofs).
MAX_READ_BYTES = 256 << 20
#: Far above what a pack of a busy year holds; a bigger streamed entry is refused.
MAX_ENTRY_BYTES = 4 << 30
#: A proof or record line: a record with its audit path is a few KiB; more is no pack's.
MAX_LINE_BYTES = 16 << 20
#: A file embedded in report.pdf (its report.json), inflated.
MAX_EMBEDDED_BYTES = 16 << 20
#: What zipfile raises on a damaged entry (a bad CRC is a changed byte).
DAMAGE = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError)


def entry_names(zf: zipfile.ZipFile) -> list[str]:
    """Every entry's name, refusing before anything is read what no pack holds."""
    names = [i.filename for i in zf.infolist()]
    if len(set(names)) != len(names):
        raise EvidenceError("the pack has duplicate entries: a zip edited to hide a file")
    for info in zf.infolist():
        name = info.filename
        if name.startswith("/") or ".." in name.split("/") or "\\" in name:
            raise EvidenceError(f"the pack has an unsafe entry name {name[:80]!r}")
        if info.flag_bits & 0x1:
            raise EvidenceError(f"{name[:80]}: encrypted in the zip (a pack never is)")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise EvidenceError(
                f"{name[:80]}: compression method {info.compress_type} (a pack uses deflate)"
            )
    return names


def read_entry(zf: zipfile.ZipFile, name: str, cap: int = MAX_READ_BYTES) -> bytes:
    """The entry's bytes, reading at most ``cap`` + 1 of them whatever its header says."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise EvidenceError(f"{name}: missing from the pack") from None
    if info.file_size > cap:
        raise EvidenceError(f"{name}: {info.file_size} bytes is more than a pack holds")
    try:
        with zf.open(info) as f:
            body = f.read(cap + 1)
    except DAMAGE as exc:  # a bad CRC: a changed byte
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc
    if len(body) > cap:
        raise EvidenceError(f"{name}: more than {cap} bytes inflated, more than a pack holds")
    return body


def stream_sha256(zf: zipfile.ZipFile, name: str) -> str:
    """The entry's SHA-256, streamed; refused past 4 GiB, stated or inflated."""
    if zf.getinfo(name).file_size > MAX_ENTRY_BYTES:
        raise EvidenceError(f"{name}: more than {MAX_ENTRY_BYTES} bytes, more than a pack holds")
    h, n = hashlib.sha256(), 0
    try:
        with zf.open(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                n += len(block)
                if n > MAX_ENTRY_BYTES:
                    raise EvidenceError(f"{name}: more than {MAX_ENTRY_BYTES} bytes inflated")
    except DAMAGE as exc:
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc
    return h.hexdigest()


def json_lines(zf: zipfile.ZipFile, name: str) -> Iterator[dict[str, Any]]:
    """The JSON lines of entry ``name``, streamed (each line at most 16 MiB)."""
    if name not in zf.NameToInfo:
        raise EvidenceError(f"{name}: missing from the pack")
    try:
        with zf.open(name) as f:
            while line := f.readline(MAX_LINE_BYTES + 1):
                if len(line) > MAX_LINE_BYTES:
                    raise EvidenceError(f"{name}: a line of more than {MAX_LINE_BYTES} bytes")
                value = orjson.loads(line)
                if not isinstance(value, dict):
                    raise EvidenceError(f"{name}: a line is not a JSON object")
                yield value
    except DAMAGE as exc:
        raise EvidenceError(f"{name} is damaged in the zip ({exc})") from exc
    except orjson.JSONDecodeError as exc:
        raise EvidenceError(f"{name}: a line is not JSON ({exc})") from exc


_EMBEDDED = re.compile(rb"/Type\s*/EmbeddedFile(?![A-Za-z0-9#])")
_STREAM = re.compile(rb">>\s*stream\r?\n")
_LENGTH = re.compile(rb"/Length\s+(\d{1,12})(?![0-9])(?!\s+\d+\s+R)")


def embedded_files(pdf: bytes) -> list[bytes]:
    """The bytes of each ``/Type /EmbeddedFile`` stream of ``pdf`` (ISO 32000-1 7.11.4: a
    PDF/A-3 attachment; WeasyPrint writes report.json so), inflated when ``/FlateDecode``,
    each at most 16 MiB. A reader of the PDF needs nothing but this to see the report.json
    it carries; raises :class:`EvidenceError` on an attachment this cannot read."""
    out: list[bytes] = []
    for found in _EMBEDDED.finditer(pdf):
        start = pdf.rfind(b"obj", 0, found.start())
        stream = _STREAM.search(pdf, found.end())
        if stream is None:
            raise EvidenceError("report.pdf: an embedded file without a stream")
        head = pdf[max(start, 0) : stream.start()]
        length = _LENGTH.search(head)
        if length is None:
            raise EvidenceError("report.pdf: an embedded file without a direct /Length")
        body = pdf[stream.end() : stream.end() + int(length.group(1))]
        if not pdf.startswith(b"endstream", _skip_eol(pdf, stream.end() + len(body))):
            raise EvidenceError("report.pdf: an embedded file's /Length is not its stream's")
        if b"/Filter" in head:
            if re.search(rb"/Filter\s*/FlateDecode(?![A-Za-z0-9#])", head) is None:
                raise EvidenceError("report.pdf: an embedded file filtered other than Flate")
            body = _inflate(body)
        out.append(body)
        if len(out) > 16:
            raise EvidenceError("report.pdf: more embedded files than a pack's PDF carries")
    return out


def carries(pdf: bytes, attached: bytes, name: str) -> tuple[bool, str]:
    """Whether ``pdf`` carries ``attached`` as its one embedded file, and that as a sentence
    naming the attachment ``name``."""
    try:
        files = embedded_files(pdf)
    except EvidenceError as exc:
        return False, f"report.pdf carries no readable {name} ({exc})"
    if not files:
        return False, f"report.pdf carries no {name}"
    if files != [attached]:
        return False, f"report.pdf does not carry the pack's {name}"
    return True, f"report.pdf carries the pack's {name}"


def _skip_eol(pdf: bytes, at: int) -> int:
    while at < len(pdf) and pdf[at] in b"\r\n":
        at += 1
    return at


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(body, MAX_EMBEDDED_BYTES + 1)
    except zlib.error as exc:
        raise EvidenceError(f"report.pdf: an embedded file does not inflate ({exc})") from exc
    if len(data) > MAX_EMBEDDED_BYTES or inflater.unconsumed_tail:
        raise EvidenceError(f"report.pdf: an embedded file of more than {MAX_EMBEDDED_BYTES} bytes")
    return data
