"""The bytes of c2sp.org/tlog-witness ``add-checkpoint``: request body, conflict body.

>>> note = "o\\n1\\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\\n\\n— o x\\n"
>>> body = encode_add_checkpoint(0, [], note)
>>> parse_add_checkpoint(body).old_size
0

Request (tlog-witness, "add-checkpoint"): ``old <size>\\n``, zero to 63 base64 hash lines
(an RFC 6962 §2.1.2 consistency proof from the old size), an empty line, then the signed
checkpoint note. A 409 Conflict answers ``<latest cosigned size>\\n`` with Content-Type
``text/x.tlog.size``; a 200 answers one or more cosignature lines.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from audit_core.errors import WitnessError

__all__ = [
    "ADD_CHECKPOINT",
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "encode_add_checkpoint",
    "parse_add_checkpoint",
    "parse_size_body",
]

ADD_CHECKPOINT = "add-checkpoint"
SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_PROOF_LINES = 63  # "The client MUST NOT send more than 63 consistency proof lines."
#: A checkpoint note carries at most 100 signatures (audit_core._note): a generous bound.
MAX_REQUEST_BYTES = 64 * 1024
_SIZE = re.compile(r"0|[1-9][0-9]{0,19}", re.ASCII)


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """A parsed add-checkpoint request: the note is not yet verified."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


def encode_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body for ``note`` (a signed checkpoint) with ``proof`` from ``old_size``."""
    if len(proof) > MAX_PROOF_LINES:
        raise WitnessError(f"a consistency proof of {len(proof)} hashes is over 63")
    lines = [f"old {old_size}\n"] + [base64.b64encode(h).decode() + "\n" for h in proof]
    return ("".join(lines) + "\n" + note).encode()


def _size(text: str, what: str) -> int:
    if not _SIZE.fullmatch(text) or int(text) > 2**64 - 1:
        raise WitnessError(f"{what} {text[:24]!r} is not a decimal uint64 without leading zeroes")
    return int(text)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse a request body; :class:`WitnessError` (a 400) when it is malformed."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessError(f"request body over {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WitnessError("request body is not UTF-8") from exc
    head, sep, note = text.partition("\n\n")
    if not sep or not note:
        raise WitnessError("request body needs an old size line, proof lines, an empty line")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise WitnessError("request body must start with 'old <size>'")
    old_size = _size(lines[0][4:], "old size")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessError("more than 63 consistency proof lines")
    proof = []
    for line in lines[1:]:
        try:
            digest = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WitnessError("a consistency proof line is not base64") from exc
        if len(digest) != 32:
            raise WitnessError("a consistency proof line is not a SHA-256 hash")
        proof.append(digest)
    # A proof with old size 0 is well-formed but wrong: the witness answers 422, not 400
    # (tlog-witness: "The proof MUST be empty if the old size is zero").
    return AddCheckpoint(old_size, tuple(proof), note)


def parse_size_body(body: bytes) -> int:
    """The latest cosigned size a 409 Conflict reports (``<size>\\n``)."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        raise WitnessError("a conflict body is not ASCII") from exc
    if not text.endswith("\n"):
        raise WitnessError("a conflict body is '<size>\\n'")
    return _size(text[:-1], "conflict size")
